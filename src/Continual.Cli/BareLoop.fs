/// The bare-loop reference of `continual bench` (bench/BareLoop): where its program is, which runs it
/// can stand next to, running it, and the peak resident memory of this process.
module Continual.Cli.BareLoop

open System
open System.Diagnostics
open System.IO
open System.Text.Json
open Continual
open Continual.Methods

/// What one bare-loop run printed.
type Figures =
    { Steps: int64
      TrainSeconds: float
      /// From its process start to its end (start-up and data reading included).
      WallSeconds: float
      PeakRssMiB: float }

/// The program's file name.
let programName = "BareLoop"

/// The bare-loop program: `given` when set (None when that file is not there), else next to this
/// program, else the build output of bench/BareLoop in a source tree above this program (Release, then Debug).
let locate (given: string option) : string option =
    match given with
    | Some path -> if File.Exists path then Some(Path.GetFullPath path) else None
    | None ->
        let beside = Path.Combine(AppContext.BaseDirectory, programName)
        if File.Exists beside then Some beside
        else
            let rec up (folder: DirectoryInfo) =
                if isNull folder then None
                else
                    [ "Release"; "Debug" ]
                    |> List.map (fun c -> Path.Combine(folder.FullName, "bench", "BareLoop", "bin", c, "net10.0", "linux-x64", programName))
                    |> List.tryFind File.Exists
                    |> Option.orElse (up folder.Parent)
            up (DirectoryInfo AppContext.BaseDirectory)

/// The bare loop's command-line arguments for a configuration, or why it has no counterpart
/// (it trains only SGD and DER++ with the MLP on Split Fashion-MNIST or Split MNIST, on the CPU).
let argumentsFor (config: Config) : Result<string list, string> =
    let invariant (v: float) = v.ToString("R", Globalization.CultureInfo.InvariantCulture)
    let strategy =
        match config.Method with
        | MethodConfig.Sgd -> Some [ "--strategy"; "sgd" ]
        | MethodConfig.Derpp s ->
            Some [ "--strategy"; "derpp"; "--buffer"; string s.BufferSize; "--minibatch"; string s.Minibatch
                   "--alpha"; invariant s.Alpha; "--beta"; invariant s.Beta ]
        | _ -> None
    match strategy with
    | None -> Error(sprintf "the bare loop trains sgd and derpp only, not %s" (Config.methodName config))
    | Some _ when config.Data.Benchmark <> "split-fmnist" && config.Data.Benchmark <> "split-mnist" ->
        Error(sprintf "the bare loop reads split-fmnist and split-mnist only, not %s" config.Data.Benchmark)
    | Some _ when config.Backbone <> "mlp" -> Error(sprintf "the bare loop trains the MLP only, not %s" config.Backbone)
    | Some _ when config.Run.Device <> "cpu" -> Error(sprintf "the bare loop runs on the CPU only, not %s" config.Run.Device)
    | Some _ when config.Penalty.IsSome || not config.Distillation.IsEmpty -> Error "the bare loop has no penalties or distillation terms"
    | Some s ->
        Ok(
            [ "--data"; config.Data.Folder
              "--lr"; invariant config.Run.LearningRate
              "--batch-size"; string config.Run.BatchSize
              "--epochs"; string config.Run.Epochs
              "--seed"; string config.Run.Seed
              "--threads"; string config.Run.Threads
              "--classes-per-task"; string (defaultArg config.Data.Source.ClassesPerTask 2) ]
            @ (match config.Data.TrainPerClass with Some n -> [ "--train-per-class"; string n ] | None -> [])
            @ s)

/// Runs the bare loop to its end and reads the JSON line it prints.
let run (program: string) (arguments: string list) : Figures =
    let psi = ProcessStartInfo(program, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false)
    for a in arguments do psi.ArgumentList.Add a
    use p = Process.Start psi
    let output = p.StandardOutput.ReadToEndAsync()
    let errors = p.StandardError.ReadToEndAsync()
    p.WaitForExit()
    if p.ExitCode <> 0 then
        failwithf "%s exited with code %d: %s" program p.ExitCode (errors.Result.Trim())
    let line = output.Result.Split('\n', StringSplitOptions.RemoveEmptyEntries) |> Array.last
    use json = JsonDocument.Parse line
    let root = json.RootElement
    { Steps = root.GetProperty("steps").GetInt64()
      TrainSeconds = root.GetProperty("trainSeconds").GetDouble()
      WallSeconds = root.GetProperty("wallSeconds").GetDouble()
      PeakRssMiB = root.GetProperty("peakRssMiB").GetDouble() }

/// This process's peak resident set size in MiB (VmHWM of /proc/self/status; the peak working set
/// where there is no /proc).
let peakRssMiB () : float =
    let fromProc =
        try
            File.ReadLines "/proc/self/status"
            |> Seq.tryFind (fun l -> l.StartsWith "VmHWM:")
            |> Option.map (fun l -> float (l.Split(' ', StringSplitOptions.RemoveEmptyEntries).[1]) / 1024.0)
        with _ -> None
    match fromProc with
    | Some mib -> mib
    | None ->
        use me = Process.GetCurrentProcess()
        float me.PeakWorkingSet64 / 1048576.0
