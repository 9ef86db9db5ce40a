module Continual.Cli.Arguments

open Argu
open Microsoft.FSharp.Reflection

/// The help of every training option, by its command-line name (one text, whichever command shows it).
[<RequireQualifiedAccess>]
module Help =

    /// An option's command-line name from its case name, as Argu writes it: "Batch_Size" -> "batch-size".
    let optionName (caseName: string) = caseName.ToLowerInvariant().Replace('_', '-')

    let private texts =
        dict [
          "benchmark", "benchmark: split-fmnist (default), split-mnist, split-cifar10 (binary batches, --data FOLDER), split-tinyimagenet (Tiny ImageNet's layout), folder (train/<class>/, test/<class>/ images), csv (train.csv, test.csv), npy (x_train.npy ...) or manifest (--data FILE.yaml); docs/data.md."
          "data", "folder with the four IDX files (default /usr/share/datasets/fashion-mnist), CIFAR-10's binary batches, Tiny ImageNet, an image folder or a table folder; the manifest file for --benchmark manifest."
          "image-size", "bring every image to HxW (e.g. 64x64, or 64): scaled to cover it, then centre-cropped (default: the files' own size, which must agree; 64x64 for split-tinyimagenet)."
          "colour", "image colour: auto (default, as the files are), gray or rgb."
          "classes-per-task", "classes per task, in class order (label order for split-fmnist, split-mnist and split-cifar10, sorted class names for folder, csv and npy; default 2; the last task takes what is left)."
          "label-column", "the label column of csv files (default label)."
          "feature-scale", "divide every feature of a csv or npy table by this (e.g. 255 for pixel values; with 255 and integer values 0-255 the table is read exactly as IDX images)."
          "normalise", "per-channel normalisation of images: none (default), train (each channel's mean and standard deviation over the training set) or MEAN,.../STD,... on the [0, 1] scale, e.g. 0.286/0.353."
          "strategy", sprintf "%s (default derpp)." (String.concat ", " Continual.Methods.Registry.methodNames)
          "buffer", "replay buffer size, iCaRL's memory (default 500; the reference settings exist for 200, 500, 5120)."
          "seed", "random seed (default 0)."
          "lr", "learning rate (default: the reference setting of the strategy and buffer)."
          "batch-size", "batch size (default 10)."
          "minibatch", "buffer samples drawn per step (default: reference setting)."
          "alpha", "DER/DER++ logit-matching weight, LwF's distillation weight (default: reference setting)."
          "beta", "DER++ label weight (default: reference setting)."
          "epochs", "epochs per task (default 1)."
          "weight-decay", "weight decay (default 0)."
          "device", "cpu (default) or cuda (needs the CUDA build, see README)."
          "threads", "libtorch intra-op threads (default 1 for every backbone: the fastest measured for the MLP, the CNN and the ResNet-18 at batch 10; docs/performance.md). Results are deterministic for a given thread count, but another thread count changes them bit for bit (libtorch splits its sums differently)."
          "train-per-class", "use at most this many training images per class."
          "test-per-class", "use at most this many test images per class."
          "allow-missing-classes", "run even when some class has no training example (refused otherwise)."
          "growing-head", "start the classifier with the first task's classes and grow it before every task that brings new ones (default: one output per class of the benchmark from the start; docs/growing-head.md)."
          "heads", "single (default: one head over every class) or multi (one head per task, each over its task's classes, for Task-IL as in LwF's original form; der, derpp, icarl and --distill refuse it; docs/baselines.md)."
          "distill", "extra distillation term on any strategy: kd, fitnets, nst, at, rkd, pod, sd, relation (default none); bench --distill all times each term per step against plain SGD."
          "distill-weight", "weight of the --distill term (default 1)."
          "temperature", "temperature of LwF's soft targets and of --distill kd (default 2)."
          "lwf-balance", "LwF: weight old and new terms by λ = |Y_old|/|Y_seen| (the lecture's balancing)."
          "subspace-dim", "subspace dimension of --distill sd (default 2)."
          "backbone", "mlp (default, the reference MLP 100-100), cnn (small CNN) or resnet18 (reduced, 20 base filters)."
          "out", "folder for results.json and results.csv (default runs/<benchmark>-<strategy>-<buffer>-s<seed>); compare: for one such folder per run and compare.json (default runs/compare)."
          "quiet", "no progress bars (compare shows one line per run either way)."
          "repeat", "number of whole runs to time (default 1)."
          "bare-loop", "the bare-loop program (bench/BareLoop) to time next to each run (default: BareLoop next to continual, else bench/BareLoop's build in the source tree above it)."
          "strategies", "comma-separated strategies (default sgd,joint,er,der,derpp)."
          "seeds", "comma-separated seeds (default 0,1,2)."
          "penalty", sprintf "add an importance penalty to the strategy: %s (e.g. derpp with si)." (String.concat ", " Continual.Methods.Registry.importanceNames)
          "lambda", "importance penalty strength λ, SI's c, LFL's feature weight (default: the method's, see docs/importance.md; 0.1 for lfl)."
          "gamma", "online EWC's Fisher decay γ (default 1)."
          "xi", "SI's damping ξ (default 0.9)."
          "fisher-alpha", "EWC++/RWalk: weight α of the batch Fisher in the running average (default 0.001 for ewc++, 0.9 for rwalk)."
          "score-every", "RWalk: steps per path-score window (default 10)."
          "epsilon", "RWalk's ε in the score's denominator (default 1.19e-7)."
          "slices", "SCP: random slices per batch (default 50)."
          "scp-alpha", "SCP: weight α of the old Γ across tasks (default 0.9)."
          "scp-batch", "SCP: samples per batch mean (default 100)."
          "fisher", "Fisher labels: true (sampled), empirical or weighted (default: the method's)."
          "clip-grad", "clip every gradient element to [-c, c] before the step (default: 1 for si and scp, also when added with --penalty; none otherwise)."
          "no-onnx", "skip the ONNX export and verification after each task."
          "checkpoint-every", "also save the learner every this many steps (it is saved after every task and on Ctrl-C either way; docs/checkpoints.md)."
          "overwrite", "replace the results of another run in --out (by default a folder that holds them is refused)."
          "sweep", "run one point of a sweep: the sweep's folder (continual sweep SPEC --out DIR); the point's options and --out come from it (docs/sweeps.md)."
          "index", "with --sweep: the point to run, numbered from 0 (a Slurm job array passes $SLURM_ARRAY_TASK_ID)."
          "tensorboard", "also write TensorBoard event files into this folder: every named loss term at every step, the accuracy on every task after every task (docs/results.md)."
          "tasks", "the tasks to learn, numbered from 1: 1-3 stops after task 3 and leaves a learner that `continual learn --from` continues (default: all)." ]

    /// The help of an argument case (looked up by its command-line name).
    let of' (case: obj) : string =
        let info, _ = FSharpValue.GetUnionFields(case, case.GetType())
        match texts.TryGetValue(optionName info.Name) with
        | true, text -> text
        | _ -> ""

/// Options of `continual run`.
type RunArgs =
    | Benchmark of name: string
    | Data of folder: string
    | Strategy of name: string
    | Buffer of size: int
    | Seed of seed: int64
    | Lr of rate: float
    | Batch_Size of size: int
    | Epochs of count: int
    | Weight_Decay of decay: float
    | Device of name: string
    | Threads of count: int
    | Train_Per_Class of count: int
    | Test_Per_Class of count: int
    | Allow_Missing_Classes
    | Image_Size of size: string
    | Colour of mode: string
    | Classes_Per_Task of count: int
    | Label_Column of name: string
    | Feature_Scale of scale: float
    | Normalise of values: string
    | Growing_Head
    | Heads of kind: string
    | Backbone of name: string
    | Penalty of name: string
    | Distill of name: string
    | Clip_Grad of value: float
    | Minibatch of size: int
    | Alpha of weight: float
    | Beta of weight: float
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
    | Temperature of t: float
    | Lwf_Balance
    | Distill_Weight of weight: float
    | Subspace_Dim of m: int
    | Out of folder: string
    | Quiet
    | No_Onnx
    | Checkpoint_Every of steps: int
    | Tasks of range: string
    | Overwrite
    | Sweep of folder: string
    | Index of index: int
    | Tensorboard of folder: string

    interface IArgParserTemplate with
        member this.Usage = Help.of' this

/// The configuration options of run, which resume and learn accept only as checks: each must agree with
/// the saved configuration.
type SavedRunArgs =
    | Benchmark of name: string
    | Data of folder: string
    | Strategy of name: string
    | Buffer of size: int
    | Seed of seed: int64
    | Lr of rate: float
    | Batch_Size of size: int
    | Epochs of count: int
    | Weight_Decay of decay: float
    | Device of name: string
    | Threads of count: int
    | Train_Per_Class of count: int
    | Test_Per_Class of count: int
    | Allow_Missing_Classes
    | Image_Size of size: string
    | Colour of mode: string
    | Classes_Per_Task of count: int
    | Label_Column of name: string
    | Feature_Scale of scale: float
    | Normalise of values: string
    | Growing_Head
    | Heads of kind: string
    | Backbone of name: string
    | Penalty of name: string
    | Distill of name: string
    | Clip_Grad of value: float
    | Minibatch of size: int
    | Alpha of weight: float
    | Beta of weight: float
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
    | Temperature of t: float
    | Lwf_Balance
    | Distill_Weight of weight: float
    | Subspace_Dim of m: int

    interface IArgParserTemplate with
        member this.Usage = Help.of' this

/// Options of `continual resume`.
type ResumeArgs =
    | [<MainCommand; ExactlyOnce>] Run_Folder of folder: string
    | Checkpoint_Every of steps: int
    | Quiet
    | Tensorboard of folder: string
    | [<GatherUnrecognized; Hidden>] Saved of string

    interface IArgParserTemplate with
        member this.Usage =
            match this with
            | Run_Folder _ -> "the --out folder of a run that stopped (it holds learner.safetensors). Options of run may follow (e.g. --seed 0): each must agree with the saved configuration."
            | Saved _ -> "any option of run, checked against the saved configuration."
            | other -> Help.of' other

/// Options of `continual learn`.
type LearnArgs =
    | [<Mandatory>] From of folder: string
    | Tasks of range: string
    | Task of path: string
    | Checkpoint_Every of steps: int
    | Quiet
    | Tensorboard of folder: string
    | [<GatherUnrecognized; Hidden>] Saved of string

    interface IArgParserTemplate with
        member this.Usage =
            match this with
            | From _ -> "the --out folder of a run whose learner continues (learner.safetensors); results and task models are added there. Options of run may follow (e.g. --seed 0): each must agree with the saved configuration."
            | Tasks _ -> "the tasks to learn, numbered from 1 and starting at the next one, e.g. 4-5 (default: every remaining task)."
            | Task _ -> "add ONE new task to the learner and learn it: a folder (train/<class>/ and test/<class>/ images, train.csv and test.csv, or .npy files) or MANIFEST#N (the manifest's task N, from 1). The head grows for its classes; every task seen so far is evaluated; docs/data.md."
            | Saved _ -> "any option of run, checked against the saved configuration."
            | other -> Help.of' other

/// Options of `continual bench`: those of run, without the ONNX export, plus --repeat.
type BenchArgs =
    | Benchmark of name: string
    | Data of folder: string
    | Strategy of name: string
    | Buffer of size: int
    | Seed of seed: int64
    | Lr of rate: float
    | Batch_Size of size: int
    | Epochs of count: int
    | Weight_Decay of decay: float
    | Device of name: string
    | Threads of count: int
    | Train_Per_Class of count: int
    | Test_Per_Class of count: int
    | Allow_Missing_Classes
    | Image_Size of size: string
    | Colour of mode: string
    | Classes_Per_Task of count: int
    | Label_Column of name: string
    | Feature_Scale of scale: float
    | Normalise of values: string
    | Growing_Head
    | Heads of kind: string
    | Backbone of name: string
    | Penalty of name: string
    | Distill of name: string
    | Clip_Grad of value: float
    | Minibatch of size: int
    | Alpha of weight: float
    | Beta of weight: float
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
    | Temperature of t: float
    | Lwf_Balance
    | Distill_Weight of weight: float
    | Subspace_Dim of m: int
    | Out of folder: string
    | Quiet
    | Repeat of count: int
    | No_Onnx
    | Bare_Loop of path: string

    interface IArgParserTemplate with
        member this.Usage = Help.of' this

/// Options of `continual compare`: those of run, with several strategies and seeds instead of one.
type CompareArgs =
    | Benchmark of name: string
    | Data of folder: string
    | Strategies of names: string
    | Seeds of seeds: string
    | Buffer of size: int
    | Lr of rate: float
    | Batch_Size of size: int
    | Epochs of count: int
    | Weight_Decay of decay: float
    | Device of name: string
    | Threads of count: int
    | Train_Per_Class of count: int
    | Test_Per_Class of count: int
    | Allow_Missing_Classes
    | Image_Size of size: string
    | Colour of mode: string
    | Classes_Per_Task of count: int
    | Label_Column of name: string
    | Feature_Scale of scale: float
    | Normalise of values: string
    | Growing_Head
    | Heads of kind: string
    | Backbone of name: string
    | Penalty of name: string
    | Distill of name: string
    | Clip_Grad of value: float
    | Minibatch of size: int
    | Alpha of weight: float
    | Beta of weight: float
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
    | Temperature of t: float
    | Lwf_Balance
    | Distill_Weight of weight: float
    | Subspace_Dim of m: int
    | Out of folder: string
    | Quiet
    | Overwrite
    | From of folder: string
    | Tensorboard of folder: string

    interface IArgParserTemplate with
        member this.Usage =
            match this with
            | From _ -> "aggregate the finished runs in a folder instead of running: a sweep's folder (its missing and failed points are listed) or a comparison's --out (docs/sweeps.md)."
            | other -> Help.of' other

/// Options of `continual bench-penalties`: the data and the SGD settings every method is timed on.
type BenchPenaltiesArgs =
    | Benchmark of name: string
    | Data of folder: string
    | Seed of seed: int64
    | Lr of rate: float
    | Batch_Size of size: int
    | Device of name: string
    | Threads of count: int
    | Train_Per_Class of count: int
    | Test_Per_Class of count: int
    | Out of folder: string

    interface IArgParserTemplate with
        member this.Usage = Help.of' this

/// The options given to a training command, whichever command parsed them: each option's command-line
/// name (without "--") with its typed value (unit for a flag). One reading of them serves every command.
type GivenOptions =
    { Values: Map<string, obj> }

/// Reading given options.
[<RequireQualifiedAccess>]
module GivenOptions =

    /// The options a command's parse results hold.
    let ofResults (results: 'T list) : GivenOptions =
        { Values =
            results
            |> List.map (fun r ->
                let info, fields = FSharpValue.GetUnionFields(r, typeof<'T>)
                Help.optionName info.Name, (if fields.Length = 0 then box () else fields.[0]))
            |> Map.ofList }

    /// The value of an option, if given.
    let tryGet<'V> (name: string) (given: GivenOptions) : 'V option = given.Values |> Map.tryFind name |> Option.map unbox<'V>

    /// The value of an option, or a default.
    let get<'V> (name: string) (fallback: 'V) (given: GivenOptions) : 'V = defaultArg (tryGet<'V> name given) fallback

    /// Whether an option (or flag) was given.
    let contains (name: string) (given: GivenOptions) = given.Values.ContainsKey name

    /// The options without one.
    let without (name: string) (given: GivenOptions) = { Values = given.Values.Remove name }

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

/// Options of `continual sweep`.
type SweepArgs =
    | [<MainCommand>] Spec of file: string
    | Out of folder: string
    | Jobs of count: int
    | Emit of kind: string
    | Force
    | Select of rule: string
    | On_Seeds of seeds: string
    | Metric of name: string

    interface IArgParserTemplate with
        member this.Usage =
            match this with
            | Spec _ -> "the grid, a YAML or JSON file: strategies, buffers, seeds and a value or a list of values for any option of run (docs/sweeps.md)."
            | Out _ -> "the sweep's folder: one run folder per point under points/, sweep.json, logs/ (default runs/sweep)."
            | Jobs _ -> "points run at once, each as its own `continual run` process with one libtorch thread unless the spec sets threads (default 1; keep it at most the cores)."
            | Emit _ -> "write a job script instead of running: slurm (a job array, DIR/sweep.sbatch; submit it with sbatch)."
            | Force -> "expand a grid larger than the limit of 1000 points."
            | Select _ -> "pick hyper-parameters from the sweep's finished points: best (the highest mean of --metric over --on-seeds); writes DIR/selection.json."
            | On_Seeds _ -> "with --select: the held-out seeds to choose on, e.g. 10-19 or 10,11,12."
            | Metric _ -> "with --select: task-il (default) or class-il, the final average accuracy."

/// Options of `continual plot`.
type PlotArgs =
    | [<MainCommand; ExactlyOnce>] Results_Folder of folder: string
    | Out of folder: string

    interface IArgParserTemplate with
        member this.Usage =
            match this with
            | Results_Folder _ -> "a run's --out folder (results.json) or a comparison's (compare.json and its run folders)."
            | Out _ -> "folder for the PNG files (default: RUN_DIR/plots)."

/// Options of `continual report`.
type ReportArgs =
    | [<MainCommand; ExactlyOnce>] Results_Folder of folder: string
    | Out of file: string

    interface IArgParserTemplate with
        member this.Usage =
            match this with
            | Results_Folder _ -> "a run's --out folder (results.json) or a comparison's (compare.json and its run folders)."
            | Out _ -> "the HTML file to write (default: RUN_DIR/report.html)."

/// The commands of the tool.
[<RequireSubcommand>]
type Command =
    | [<CliPrefix(CliPrefix.None)>] Run of ParseResults<RunArgs>
    | [<CliPrefix(CliPrefix.None)>] Bench of ParseResults<BenchArgs>
    | [<CliPrefix(CliPrefix.None)>] Resume of ParseResults<ResumeArgs>
    | [<CliPrefix(CliPrefix.None)>] Learn of ParseResults<LearnArgs>
    | [<CliPrefix(CliPrefix.None)>] Compare of ParseResults<CompareArgs>
    | [<CliPrefix(CliPrefix.None)>] Sweep of ParseResults<SweepArgs>
    | [<CliPrefix(CliPrefix.None)>] Bench_Penalties of ParseResults<BenchPenaltiesArgs>
    | [<CliPrefix(CliPrefix.None)>] Verify of ParseResults<VerifyArgs>
    | [<CliPrefix(CliPrefix.None)>] Export of ParseResults<ExportArgs>
    | [<CliPrefix(CliPrefix.None)>] Plot of ParseResults<PlotArgs>
    | [<CliPrefix(CliPrefix.None)>] Report of ParseResults<ReportArgs>
    | Version
    | Verbose

    interface IArgParserTemplate with
        member this.Usage =
            match this with
            | Run _ -> "train a strategy on a benchmark, print the accuracy matrices and write results."
            | Resume _ -> "continue a stopped run from its last checkpoint (RUN_DIR/learner.safetensors) to the end it was given."
            | Learn _ -> "continue a saved learner with more tasks in a new process (--from RUN_DIR --tasks 4-5)."
            | Bench _ -> "time a whole run: wall time, steps per second, peak memory."
            | Compare _ -> "run several strategies over several seeds: mean, spread, per-seed figures and each one's paired Task-IL gain over sgd (--strategies, --seeds); writes compare.json."
            | Sweep _ -> "run a grid of runs (SPEC: strategies, buffers, seeds, any option's values) as local processes (--jobs N) or a Slurm job array (--emit slurm); finished points are skipped; --select best picks hyper-parameters on held-out seeds."
            | Bench_Penalties _ -> "time each importance estimator on a 12,000-image task and each penalty's step overhead against plain SGD."
            | Verify _ -> "re-check an exported task-<k>.onnx under ONNX Runtime against the accuracy it records."
            | Plot _ -> "draw a run's or a comparison's results as PNG pictures (accuracy matrices, accuracy after each task, forgetting, final accuracy, footprint)."
            | Report _ -> "write one self-contained HTML page of a run's or a comparison's tables and pictures."
            | Export _ -> "lay a run's task models out as a model repository (--layout triton --to REPO)."
            | Version -> "print the version."
            | Verbose -> "with an error, also print the .NET stack trace (works with every command, anywhere on the line)."
