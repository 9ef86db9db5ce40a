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
    | Penalty of name: string
    | Lambda of strength: float
    | Gamma of decay: float
    | Xi of damping: float
    | Fisher_Alpha of weight: float
    | Score_Every of steps: int
    | Epsilon of epsilon: float
    | Slices of count: int
    | Scp_Alpha of weight: float
    | Scp_Batch of size: int
    | Fisher of kind: string
    | Clip_Grad of value: float
    | No_Onnx

    interface IArgParserTemplate with
        member this.Usage =
            match this with
            | Benchmark _ -> "benchmark: split-fmnist (default), split-mnist or split-cifar10 (binary batches, --data FOLDER)."
            | Data _ -> "folder with the four IDX files (default /usr/share/datasets/fashion-mnist), or CIFAR-10's binary batches."
            | Strategy _ -> sprintf "%s (default derpp)." (String.concat ", " Continual.Methods.Registry.methodNames)
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
            | Out _ -> "folder for results.json and results.csv (default runs/<benchmark>-<strategy>-<buffer>-s<seed>); compare: for one such folder per run and compare.json (default runs/compare)."
            | Quiet -> "no progress bars."
            | Repeat _ -> "bench only: number of whole runs to time (default 1)."
            | Strategies _ -> "compare only: comma-separated strategies (default sgd,joint,er,der,derpp)."
            | Seeds _ -> "compare only: comma-separated seeds (default 0,1,2)."
            | Penalty _ -> sprintf "add an importance penalty to the strategy: %s (e.g. derpp with si)." (String.concat ", " Continual.Methods.Registry.importanceNames)
            | Lambda _ -> "importance penalty strength λ, SI's c (default: the method's, see docs/importance.md)."
            | Gamma _ -> "online EWC's Fisher decay γ (default 1)."
            | Xi _ -> "SI's damping ξ (default 0.9)."
            | Fisher_Alpha _ -> "EWC++/RWalk: weight α of the batch Fisher in the running average (default 0.001 for ewc++, 0.9 for rwalk)."
            | Score_Every _ -> "RWalk: steps per path-score window (default 10)."
            | Epsilon _ -> "RWalk's ε in the score's denominator (default 1.19e-7)."
            | Slices _ -> "SCP: random slices per batch (default 50)."
            | Scp_Alpha _ -> "SCP: weight α of the old Γ across tasks (default 0.9)."
            | Scp_Batch _ -> "SCP: samples per batch mean (default 100)."
            | Fisher _ -> "Fisher labels: true (sampled), empirical or weighted (default: the method's)."
            | Clip_Grad _ -> "clip every gradient element to [-c, c] before the step (default: 1 for si and scp, also when added with --penalty; none otherwise)."
            | No_Onnx -> "run only: skip the ONNX export and verification after each task."

/// Options of `continual verify`.
type VerifyArgs =
    | [<MainCommand; ExactlyOnce>] Model_File of model: string
    | [<CustomCommandLine("--data")>] Test_Data of folder: string
    | Provider of name: string

    interface IArgParserTemplate with
        member this.Usage =
            match this with
            | Model_File _ -> "a task-<k>.onnx file written by continual run."
            | Test_Data _ -> "folder with the run's data: the IDX files, or CIFAR-10's binary batches for split-cifar10 (default /usr/share/datasets/fashion-mnist)."
            | Provider _ -> "ONNX Runtime execution provider: auto (default: CUDA where it runs, else CPU), cpu or cuda."

/// Options of `continual export`.
type ExportArgs =
    | [<MainCommand; ExactlyOnce>] Run_Folder of folder: string
    | [<Mandatory; CustomCommandLine("--layout")>] Repository_Layout of name: string
    | [<Mandatory; CustomCommandLine("--to")>] Repository_Folder of folder: string
    | [<CustomCommandLine("--name")>] Model_Name of name: string

    interface IArgParserTemplate with
        member this.Usage =
            match this with
            | Run_Folder _ -> "a run's --out folder holding task-<k>.onnx files."
            | Repository_Layout _ -> "repository layout: triton (Triton Inference Server and KServe)."
            | Repository_Folder _ -> "the model repository folder; the model goes to REPO/<name>/<k>/model.onnx."
            | Model_Name _ -> "model name in the repository (default: the run folder's name)."

/// The commands of the tool.
[<RequireSubcommand>]
type Command =
    | [<CliPrefix(CliPrefix.None)>] Run of ParseResults<RunArgs>
    | [<CliPrefix(CliPrefix.None)>] Bench of ParseResults<RunArgs>
    | [<CliPrefix(CliPrefix.None)>] Compare of ParseResults<RunArgs>
    | [<CliPrefix(CliPrefix.None)>] Bench_Penalties of ParseResults<RunArgs>
    | [<CliPrefix(CliPrefix.None)>] Verify of ParseResults<VerifyArgs>
    | [<CliPrefix(CliPrefix.None)>] Export of ParseResults<ExportArgs>
    | Version

    interface IArgParserTemplate with
        member this.Usage =
            match this with
            | Run _ -> "train a strategy on a benchmark, print the accuracy matrices and write results."
            | Bench _ -> "time a whole run: wall time, steps per second, peak memory."
            | Compare _ -> "run several strategies over several seeds: mean, spread, per-seed figures and each one's paired Task-IL gain over sgd (--strategies, --seeds); writes compare.json."
            | Bench_Penalties _ -> "time each importance estimator on a 12,000-image task and each penalty's step overhead against plain SGD."
            | Verify _ -> "re-check an exported task-<k>.onnx under ONNX Runtime against the accuracy it records."
            | Export _ -> "lay a run's task models out as a model repository (--layout triton --to REPO)."
            | Version -> "print the version."
