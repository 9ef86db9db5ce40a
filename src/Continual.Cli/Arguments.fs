module Continual.Cli.Arguments

open Argu

/// Options shared by every command that trains.
type RunArgs =
    | Benchmark of name: string
    | Data of folder: string
    | Strategy of name: string
    | Buffer of size: int
    | Seed of seed: int64
    | Lr of rate: float
    | Batch_Size of size: int
    | Minibatch of size: int
    | Alpha of weight: float
    | Beta of weight: float
    | Epochs of count: int
    | Weight_Decay of decay: float
    | Device of name: string
    | Threads of count: int
    | Train_Per_Class of count: int
    | Test_Per_Class of count: int
    | Distill of name: string
    | Distill_Weight of weight: float
    | Temperature of t: float
    | Lwf_Balance
    | Subspace_Dim of m: int
    | Backbone of name: string
    | Out of folder: string
    | Quiet
    | Repeat of count: int
    | Strategies of names: string
    | Seeds of seeds: string

    interface IArgParserTemplate with
        member this.Usage =
            match this with
            | Benchmark _ -> "benchmark: split-fmnist (default), split-mnist or split-cifar10 (binary batches, --data FOLDER)."
            | Data _ -> "folder with the four IDX files (default /usr/share/datasets/fashion-mnist), or CIFAR-10's binary batches."
            | Strategy _ -> "sgd, joint, er, der, derpp, lwf or icarl (default derpp)."
            | Buffer _ -> "replay buffer size, iCaRL's memory (default 500; the reference settings exist for 200, 500, 5120)."
            | Seed _ -> "random seed (default 0)."
            | Lr _ -> "learning rate (default: the reference setting of the strategy and buffer)."
            | Batch_Size _ -> "batch size (default 10)."
            | Minibatch _ -> "buffer samples drawn per step (default: reference setting)."
            | Alpha _ -> "DER/DER++ logit-matching weight (default: reference setting)."
            | Beta _ -> "DER++ label weight (default: reference setting)."
            | Epochs _ -> "epochs per task (default 1)."
            | Weight_Decay _ -> "weight decay (default 0)."
            | Device _ -> "cpu (default) or cuda (needs the CUDA build, see README)."
            | Threads _ -> "libtorch intra-op threads (default 1, the fastest for batch 10)."
            | Train_Per_Class _ -> "use at most this many training images per class."
            | Test_Per_Class _ -> "use at most this many test images per class."
            | Distill _ -> "extra distillation term on any strategy: kd, fitnets, nst, at, rkd, pod, sd, relation (default none); bench --distill all times each term per step against plain SGD."
            | Distill_Weight _ -> "weight of the --distill term (default 1)."
            | Temperature _ -> "temperature of LwF's soft targets and of --distill kd (default 2)."
            | Lwf_Balance -> "LwF: weight old and new terms by λ = |Y_old|/|Y_seen| (the lecture's balancing)."
            | Subspace_Dim _ -> "subspace dimension of --distill sd (default 2)."
            | Backbone _ -> "mlp (default, the reference MLP 100-100), cnn (small CNN) or resnet18 (reduced, 20 base filters)."
            | Out _ -> "folder for results.json and results.csv (default runs/<benchmark>-<strategy>-<buffer>-s<seed>)."
            | Quiet -> "no progress bars."
            | Repeat _ -> "bench only: number of whole runs to time (default 1)."
            | Strategies _ -> "compare only: comma-separated strategies (default sgd,joint,er,der,derpp)."
            | Seeds _ -> "compare only: comma-separated seeds (default 0,1,2)."

/// The commands of the tool.
[<RequireSubcommand>]
type Command =
    | [<CliPrefix(CliPrefix.None)>] Run of ParseResults<RunArgs>
    | [<CliPrefix(CliPrefix.None)>] Bench of ParseResults<RunArgs>
    | [<CliPrefix(CliPrefix.None)>] Compare of ParseResults<RunArgs>
    | Version

    interface IArgParserTemplate with
        member this.Usage =
            match this with
            | Run _ -> "train a strategy on a benchmark, print the accuracy matrices and write results."
            | Bench _ -> "time a whole run: wall time, steps per second, peak memory."
            | Compare _ -> "run several strategies over several seeds and print mean and spread (--strategies, --seeds)."
            | Version -> "print the version."
