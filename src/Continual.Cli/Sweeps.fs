/// `continual sweep`: a grid of runs (a YAML or JSON spec) expanded into one run folder per point, run as
/// local processes or as a Slurm job array, resumed by skipping finished points, aggregated by
/// `continual compare --from` and used to choose hyper-parameters on held-out seeds (docs/sweeps.md).
module Continual.Cli.Sweeps

open System
open System.Diagnostics
open System.Globalization
open System.IO
open System.Text.Json
open Argu
open Microsoft.FSharp.Reflection
open Continual
open Continual.Cli.Arguments
open Continual.Cli.SweepSpec
open Continual.Methods
open Spectre.Console

/// The sweep's description in its folder: the expanded points, their arguments and hashes.
[<Literal>]
let SweepFileName = "sweep.json"

/// A point's configuration, in its run folder (written when the sweep is expanded).
[<Literal>]
let PointFileName = "point.json"

/// A point's last error, in its run folder (removed when the point runs again).
[<Literal>]
let FailedFileName = "failed.json"

/// The held-out selection, in the sweep's folder.
[<Literal>]
let SelectionFileName = "selection.json"

/// One point of an expanded sweep.
type Point =
    { /// Numbered from 0 in grid order (the Slurm array index).
      Index: int
      /// Its run folder's name under points/ (from the values that vary).
      Name: string
      /// The arguments of `continual run` that make it (without --out).
      Args: string list
      /// The hash of its configuration: results.json with this hash means the point is finished.
      ConfigHash: string
      Seed: int64
      /// Its method (and penalty), as compare names rows: "derpp", "sgd+si".
      Strategy: string
      Buffer: int
      /// The options that vary across the grid besides strategy, penalty, buffer and seed (the
      /// hyper-parameters), as (option, value), in grid order.
      Varying: (string * string) list }

/// An expanded sweep: its folder, its spec and its points.
type Plan =
    { Folder: string
      SpecPath: string
      /// libtorch threads per point (the spec's `threads`, else chosen when the sweep was first expanded).
      Threads: int
      Slurm: string list
      Points: Point list }

/// Where a point stands.
[<RequireQualifiedAccess>]
type PointStatus =
    /// results.json holds this point's configuration: final Class-IL and Task-IL average accuracy, wall seconds.
    | Finished of classIl: float * taskIl: float * wallSeconds: float
    /// The last attempt failed with this error.
    | Failed of error: string
    /// Not run yet (or its folder holds another configuration's results).
    | Missing

/// A point's Context: its hyper-parameters as one text ("lr=0.03 alpha=0.1"), "" when none vary.
let contextOf (point: Point) = point.Varying |> List.map (fun (o, v) -> sprintf "%s=%s" o v) |> String.concat " "

/// A point's row label in the comparison table.
let labelOf (point: Point) = match contextOf point with "" -> point.Strategy | c -> point.Strategy + " " + c

/// The run folder of a point.
let pointFolder (plan: Plan) (point: Point) = Path.Combine(plan.Folder, "points", point.Name)

/// Writes JSON to a file atomically.
let private writeJson (path: string) (write: Utf8JsonWriter -> unit) =
    use stream = new MemoryStream()
    (use w = new Utf8JsonWriter(stream, JsonWriterOptions(Indented = true))
     write w)
    Files.writeAtomically path (stream.ToArray())

/// sweep.json as written.
let private planJson (plan: Plan) (w: Utf8JsonWriter) =
    w.WriteStartObject()
    w.WriteString("tool", "continual")
    w.WriteString("spec", plan.SpecPath)
    w.WriteNumber("threads", plan.Threads)
    w.WriteStartArray "slurm"
    for s in plan.Slurm do w.WriteStringValue s
    w.WriteEndArray()
    w.WriteStartArray "points"
    for p in plan.Points do
        w.WriteStartObject()
        w.WriteNumber("index", p.Index)
        w.WriteString("name", p.Name)
        w.WriteString("configHash", p.ConfigHash)
        w.WriteNumber("seed", p.Seed)
        w.WriteString("strategy", p.Strategy)
        w.WriteNumber("buffer", p.Buffer)
        w.WriteStartObject "varying"
        for (o, v) in p.Varying do w.WriteString(o, v)
        w.WriteEndObject()
        w.WriteStartArray "args"
        for a in p.Args do w.WriteStringValue a
        w.WriteEndArray()
        w.WriteEndObject()
    w.WriteEndArray()
    w.WriteEndObject()

/// Reads a sweep folder's sweep.json. Raises SweepUsageError when the folder holds no sweep.
let readPlan (folder: string) : Plan =
    let full = Path.GetFullPath folder
    let file = Path.Combine(full, SweepFileName)
    if not (File.Exists file) then
        raise (SweepUsageError(sprintf "%s: no %s here; expand a sweep into it first: continual sweep SPEC --out %s" folder SweepFileName folder))
    try
        use doc = JsonDocument.Parse(File.ReadAllBytes file)
        let root = doc.RootElement
        { Folder = full
          SpecPath = root.GetProperty("spec").GetString()
          Threads = root.GetProperty("threads").GetInt32()
          Slurm = [ for s in root.GetProperty("slurm").EnumerateArray() -> s.GetString() ]
          Points =
            [ for p in root.GetProperty("points").EnumerateArray() ->
                { Index = p.GetProperty("index").GetInt32()
                  Name = p.GetProperty("name").GetString()
                  ConfigHash = p.GetProperty("configHash").GetString()
                  Seed = p.GetProperty("seed").GetInt64()
                  Strategy = p.GetProperty("strategy").GetString()
                  Buffer = p.GetProperty("buffer").GetInt32()
                  Varying = [ for v in p.GetProperty("varying").EnumerateObject() -> v.Name, v.Value.GetString() ]
                  Args = [ for a in p.GetProperty("args").EnumerateArray() -> a.GetString() ] } ] }
    with
    | :? JsonException
    | :? InvalidOperationException
    | :? Collections.Generic.KeyNotFoundException as e ->
        raise (SweepFailure(sprintf "%s: not a sweep file continual wrote (%s)" file (e.Message.Split('\n').[0])))

/// The final average accuracies in a results.json, if it holds the configuration `hash`.
let private readFinished (hash: string option) (file: string) : (JsonElement * (float * float * float)) option =
    try
        use doc = JsonDocument.Parse(File.ReadAllBytes file)
        let root = doc.RootElement
        let matches = match hash with Some h -> root.GetProperty("configHash").GetString() = h | None -> true
        if not matches then None
        else
            let matrix name = [| for row in root.GetProperty(name: string).EnumerateArray() -> [| for v in row.EnumerateArray() -> v.GetDouble() |] |]
            let figures = Metrics.averageAccuracy (matrix "classIl"), Metrics.averageAccuracy (matrix "taskIl"), root.GetProperty("timings").GetProperty("wallSeconds").GetDouble()
            Some(root.Clone(), figures)
    with _ -> None

/// Where a point stands: finished (its results.json holds its configuration), failed, or missing.
let status (plan: Plan) (point: Point) : PointStatus =
    let folder = pointFolder plan point
    match readFinished (Some point.ConfigHash) (Path.Combine(folder, "results.json")) with
    | Some(_, (c, t, w)) -> PointStatus.Finished(c, t, w)
    | None ->
        let failed = Path.Combine(folder, FailedFileName)
        if File.Exists failed then
            try
                use doc = JsonDocument.Parse(File.ReadAllBytes failed)
                PointStatus.Failed(doc.RootElement.GetProperty("error").GetString())
            with _ -> PointStatus.Failed "(failed.json cannot be read)"
        else PointStatus.Missing

/// Records a point's failure in its folder (atomically).
let recordFailure (folder: string) (index: int) (error: string) (exitCode: int option) =
    Directory.CreateDirectory folder |> ignore
    writeJson (Path.Combine(folder, FailedFileName)) (fun w ->
        w.WriteStartObject()
        w.WriteNumber("index", index)
        w.WriteString("error", error)
        exitCode |> Option.iter (fun c -> w.WriteNumber("exitCode", c))
        w.WriteString("time", DateTime.UtcNow.ToString("o"))
        w.WriteEndObject())

/// A point's arguments checked against the command line's rules, before any work: its configuration,
/// or the problems the command line would report.
type PointCheck = GivenOptions -> Result<Config, string list>

/// The options of the registry (method, penalty, distillation settings) a run's arguments give.
let private registryOptions =
    [ for e in Registry.methods do for s in e.Settings -> s.Option
      for e in Registry.importance do for s in e.Settings -> s.Option
      for s in Registry.distillationSettings -> s.Option ]
    |> List.distinct
    |> List.filter (fun o -> o <> "buffer")
    |> set

let private runParser = lazy (ArgumentParser.Create<RunArgs>(programName = "continual", checkStructure = false))

/// The command-line arguments of (option, value) pairs: a flag appears alone when true, not at all when false.
let private argsOf (options: (string * string) list) =
    [ for (o, v) in options do
          match optionKinds.TryFind o with
          | Some ValueKind.Flag -> if v = "true" then yield "--" + o
          | _ ->
              yield "--" + o
              yield v ]

/// A folder name from text: letters, digits and . _ = + - kept, anything else _.
let private safeName (text: string) =
    String(text.ToCharArray() |> Array.map (fun c -> if Char.IsAsciiLetterOrDigit c || ".-_=+".Contains c then c else '_'))

/// Expands a spec into points: every combination, each checked as `continual run` would check it (its
/// data files too); options that do not apply to a point (--alpha for sgd, --buffer without a buffer)
/// are dropped from it and points that come out the same are merged. Raises SweepUsageError naming the
/// spec's line for anything a run would refuse.
let expand (check: PointCheck) (spec: Spec) (threads: int) : Point list =
    let pinned = spec.Axes |> List.exists (fun a -> a.Option = "threads")
    let varyingAxes = spec.Axes |> List.filter (fun a -> a.Values.Length > 1) |> List.map (fun a -> a.Option) |> set
    let lineOf (problem: string) (combination: (string * SpecValue) list) =
        combination
        |> List.tryFind (fun (o, v) -> problem.Contains("--" + o) || problem.Contains(sprintf "'%s'" v.Text))
        |> Option.orElse (combination |> List.tryFind (fun (_, v) -> v.Text.Length >= 3 && problem.Contains v.Text))
        |> Option.map (fun (_, v) -> v.Line)
        |> Option.defaultValue (spec.Axes |> List.map (fun a -> a.Line) |> List.min)
    let used = Collections.Generic.HashSet<string>()
    let points =
        [ for combination in Spec.combinations spec do
              let options = [ for (o, v) in combination -> o, v.Text ] @ (if pinned then [] else [ "threads", string threads ])
              let given =
                  try GivenOptions.ofResults ((runParser.Force().ParseCommandLine(Array.ofList (argsOf options), raiseOnUsage = true)).GetAllResults())
                  with :? ArguParseException as e ->
                      let first = e.Message.Split([| '\n'; '\r' |], StringSplitOptions.RemoveEmptyEntries) |> Array.tryHead |> Option.defaultValue "bad value"
                      raise (SweepUsageError(sprintf "%s:%d: %s" spec.Path (lineOf first combination) (first.Replace("ERROR: ", "").Trim())))
              match check given with
              | Error(problem :: _) -> raise (SweepUsageError(sprintf "%s:%d: %s" spec.Path (lineOf problem combination) problem))
              | Error [] -> raise (SweepUsageError(sprintf "%s: a point cannot run" spec.Path))
              | Ok config ->
                  // What the point's configuration does not use is not part of it.
                  let applies (o: string, v: string) =
                      if o = "buffer" then Config.bufferSize config > 0
                      elif registryOptions.Contains o then (Experiment.setOption o v config).IsSome
                      else true
                  let effective = options |> List.filter applies
                  for (o, _) in effective do used.Add o |> ignore
                  yield config, effective ]
    // An option of the spec that applies to no point is a mistake (lambda without a penalty).
    for axis in spec.Axes do
        if not (used.Contains axis.Option) then
            let strategies = points |> List.map (fun (c, _) -> Config.methodName c) |> List.distinct |> String.concat ", "
            raise (SweepUsageError(sprintf "%s:%d: %s does not apply to any point (%s)" spec.Path axis.Line axis.Option strategies))
    let seen = Collections.Generic.HashSet<string>()
    let names = Collections.Generic.HashSet<string>()
    [ for (config, effective) in points do
          let hash = Config.hash config
          if seen.Add hash then
              let index = seen.Count - 1
              let varying = effective |> List.filter (fun (o, _) -> varyingAxes.Contains o)
              let part (o: string, v: string) =
                  match o, optionKinds.TryFind o with
                  | "strategy", _ -> v
                  | "buffer", _ -> "b" + v
                  | "seed", _ -> "s" + v
                  | _, Some ValueKind.Flag -> if v = "true" then o else "no-" + o
                  | _ -> o + "=" + v
              let name = match varying with [] -> "point" | vs -> vs |> List.map part |> String.concat "-" |> safeName
              let name = if names.Add name then name else (let n = sprintf "%s-%d" name index in names.Add n |> ignore; n)
              let strategy = match Config.penaltyName config with Some p -> Config.methodName config + "+" + p | None -> Config.methodName config
              yield
                  { Index = index
                    Name = name
                    Args = argsOf effective
                    ConfigHash = hash
                    Seed = config.Run.Seed
                    Strategy = strategy
                    Buffer = Config.bufferSize config
                    Varying = varying |> List.filter (fun (o, _) -> not (List.contains o [ "strategy"; "penalty"; "buffer"; "seed"; "threads" ])) } ]

/// Writes sweep.json and each point's point.json (its arguments and configuration), each atomically.
let private writePlan (plan: Plan) (configs: Map<int, Config>) =
    Directory.CreateDirectory plan.Folder |> ignore
    writeJson (Path.Combine(plan.Folder, SweepFileName)) (planJson plan)
    for p in plan.Points do
        let folder = pointFolder plan p
        Directory.CreateDirectory folder |> ignore
        writeJson (Path.Combine(folder, PointFileName)) (fun w ->
            w.WriteStartObject()
            w.WriteNumber("index", p.Index)
            w.WriteString("name", p.Name)
            w.WriteStartArray "args"
            for a in p.Args do w.WriteStringValue a
            w.WriteEndArray()
            w.WriteString("configHash", p.ConfigHash)
            w.WritePropertyName "config"
            Config.write w configs.[p.Index]
            w.WriteEndObject())

/// The program that runs a point: this one (with its assembly when it runs under `dotnet`).
let private self () : string * string list =
    let exe = Environment.ProcessPath
    if Path.GetFileNameWithoutExtension exe = "dotnet" then exe, [ typeof<Point>.Assembly.Location ] else exe, []

/// Seeds as "0,1,2", "10-19" or both ("0-4,7").
let parseSeeds (option: string) (text: string) : int64 list =
    let bad () = raise (SweepUsageError(sprintf "--%s: '%s' is not a list of seeds such as 10-19 or 0,1,2" option text))
    let seeds =
        text.Split(',', StringSplitOptions.RemoveEmptyEntries ||| StringSplitOptions.TrimEntries)
        |> List.ofArray
        |> List.collect (fun part ->
            match part.Split '-' with
            | [| one |] -> (match Int64.TryParse one with | true, v -> [ v ] | _ -> bad ())
            | [| a; b |] ->
                match Int64.TryParse a, Int64.TryParse b with
                | (true, first), (true, last) when first <= last && last - first < 100000L -> [ first .. last ]
                | _ -> bad ()
            | _ -> bad ())
    if seeds.IsEmpty then bad ()
    List.distinct seeds

/// `continual run --sweep DIR --index I`: the point's own arguments (with its --out); None when the point
/// is finished already (nothing to do). Errors of the run are recorded in the point's failed.json.
let pointArguments (results: ParseResults<RunArgs>) : ParseResults<RunArgs> option =
    match results.TryGetResult RunArgs.Sweep, results.TryGetResult RunArgs.Index with
    | None, None -> Some results
    | None, Some _ -> raise (SweepUsageError "--index needs --sweep DIR (the sweep's folder)")
    | Some _, None -> raise (SweepUsageError "--sweep needs --index I (the point to run, from 0)")
    | Some folder, Some index ->
        let others =
            results.GetAllResults()
            |> List.filter (function RunArgs.Sweep _ | RunArgs.Index _ | RunArgs.Quiet -> false | _ -> true)
        if not others.IsEmpty then
            let names = others |> List.map (fun r -> "--" + Help.optionName ((fst (FSharpValue.GetUnionFields(r, typeof<RunArgs>))).Name)) |> List.distinct
            raise (SweepUsageError(sprintf "%s: a sweep's point takes its options from the sweep; give only --quiet with --sweep and --index" (String.concat ", " names)))
        let plan = readPlan folder
        match plan.Points |> List.tryFind (fun p -> p.Index = index) with
        | None -> raise (SweepUsageError(sprintf "--index %d: the sweep in %s has %d points (0-%d)" index folder plan.Points.Length (plan.Points.Length - 1)))
        | Some point ->
            let out = pointFolder plan point
            match status plan point with
            | PointStatus.Finished _ ->
                AnsiConsole.MarkupLine("point {0} ({1}) is finished: {2}", index, Markup.Escape point.Name, Markup.Escape(Path.Combine(out, "results.json")))
                None
            | _ ->
                Directory.CreateDirectory out |> ignore
                File.Delete(Path.Combine(out, FailedFileName))
                Report.errorRecorder.Value <- fun line -> (try recordFailure out index line None with _ -> ())
                let argv = point.Args @ [ "--out"; out; "--overwrite" ] @ (if results.Contains RunArgs.Quiet then [ "--quiet" ] else [])
                Some(runParser.Force().ParseCommandLine(Array.ofList argv, raiseOnUsage = true))

module private Native =
    [<Runtime.InteropServices.DllImport("libc", SetLastError = true)>]
    extern int kill(int pid, int signal)

/// What a local sweep did: the points that finished, failed (with their error) or were stopped by a
/// signal, and the signal.
type private LocalOutcome =
    { Ran: string list
      Failed: (string * string) list
      Stopped: string list
      Signal: Runtime.InteropServices.PosixSignal option }

/// Runs the points that are not finished as `continual run --sweep DIR --index I` processes, `jobs` at a
/// time; each one's output goes to logs/<name>.log. A point that fails is recorded and the others go on.
/// Returns (ran, failed) names.
let private runLocal (plan: Plan) (pending: Point list) (jobs: int) : LocalOutcome =
    let logs = Path.Combine(plan.Folder, "logs")
    Directory.CreateDirectory logs |> ignore
    let program, prefix = self ()
    let gate = obj ()
    let queue = Collections.Concurrent.ConcurrentQueue<Point>(pending)
    let ran = Collections.Generic.List<string>()
    let failed = Collections.Generic.List<string * string>()
    let stopped = Collections.Generic.List<string>()
    let total = pending.Length
    let mutable done' = 0
    // SIGINT (Ctrl-C, which a terminal also sends to the points' processes) and SIGTERM (sent to this
    // process alone, so passed on to the points) stop the sweep: no new point starts, running ones stop
    // at their next step boundary, and nothing stopped is recorded as failed.
    let mutable signal: Runtime.InteropServices.PosixSignal option = None
    let children = Collections.Concurrent.ConcurrentDictionary<int, int>()
    let onSignal (context: Runtime.InteropServices.PosixSignalContext) =
        context.Cancel <- true
        if signal.IsNone then
            signal <- Some context.Signal
            if context.Signal = Runtime.InteropServices.PosixSignal.SIGTERM then
                for pid in children.Keys do Native.kill (pid, 15) |> ignore
    use _interrupt = Runtime.InteropServices.PosixSignalRegistration.Create(Runtime.InteropServices.PosixSignal.SIGINT, onSignal)
    use _terminate = Runtime.InteropServices.PosixSignalRegistration.Create(Runtime.InteropServices.PosixSignal.SIGTERM, onSignal)
    let runOne (point: Point) =
        let clock = Stopwatch.StartNew()
        let psi = ProcessStartInfo(program, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false)
        for a in prefix @ [ "run"; "--sweep"; plan.Folder; "--index"; string point.Index; "--quiet" ] do psi.ArgumentList.Add a
        psi.Environment.["NO_COLOR"] <- "1"
        use log = new StreamWriter(Path.Combine(logs, point.Name + ".log"), true)
        let logGate = obj ()
        let mutable lastError = None
        let write (line: string) =
            if not (isNull line) then
                lock logGate (fun () ->
                    log.WriteLine line
                    if line.StartsWith "error: " then lastError <- Some(line.Substring 7))
        use p = new Process(StartInfo = psi)
        p.OutputDataReceived.Add(fun e -> write e.Data)
        p.ErrorDataReceived.Add(fun e -> write e.Data)
        p.Start() |> ignore
        children.[p.Id] <- p.Id
        // A SIGTERM that came while the process started.
        if signal = Some Runtime.InteropServices.PosixSignal.SIGTERM then Native.kill (p.Id, 15) |> ignore
        p.BeginOutputReadLine()
        p.BeginErrorReadLine()
        p.WaitForExit()
        children.TryRemove p.Id |> ignore
        let code = p.ExitCode
        let folder = pointFolder plan point
        let outcome =
            match status plan point with
            | PointStatus.Finished(_, t, _) -> Ok(Some t)
            | _ when signal.IsSome && (code = 130 || code = 143) -> Ok None
            | PointStatus.Failed error when code <> 0 -> Error error
            | _ ->
                let error =
                    match lastError with
                    | Some e -> e
                    | None when code > 128 -> sprintf "the run ended on signal %d (exit code %d)" (code - 128) code
                    | None -> sprintf "the run ended with exit code %d and no results" code
                recordFailure folder point.Index error (Some code)
                Error error
        lock gate (fun () ->
            done' <- done' + 1
            match outcome with
            | Ok None ->
                stopped.Add point.Name
                AnsiConsole.MarkupLine("[[{0}/{1}]] {2}  stopped", done', total, Markup.Escape point.Name)
            | Ok(Some taskIl) ->
                ran.Add point.Name
                AnsiConsole.MarkupLine("[[{0}/{1}]] {2}  Task-IL {3:0.00}  ({4:0.0} s)", done', total, Markup.Escape point.Name, taskIl, clock.Elapsed.TotalSeconds)
            | Error error ->
                failed.Add((point.Name, error))
                AnsiConsole.MarkupLine("[[{0}/{1}]] {2}  [red]failed[/]: {3}", done', total, Markup.Escape point.Name, Markup.Escape error)
            Console.Out.Flush()
            // A fault-injection moment: tests kill the sweep here, between points, to check that it resumes.
            Faults.tick "sweep-point")
    let worker () =
        let mutable point = Unchecked.defaultof<Point>
        while signal.IsNone && queue.TryDequeue(&point) do
            runOne point
    let threads = [ for _ in 1 .. max 1 (min jobs total) -> Threading.Thread(worker, IsBackground = true) ]
    for t in threads do t.Start()
    for t in threads do t.Join()
    { Ran = List.ofSeq ran; Failed = List.ofSeq failed; Stopped = List.ofSeq stopped; Signal = signal }

/// Index ranges as Slurm's --array writes them: 0-11, or 1,4-6,9.
let arrayRanges (indices: int list) =
    let rec go acc (run: (int * int) option) rest =
        match run, rest with
        | None, [] -> List.rev acc
        | Some r, [] -> List.rev (r :: acc)
        | None, i :: tail -> go acc (Some(i, i)) tail
        | Some(a, b), i :: tail when i = b + 1 -> go acc (Some(a, i)) tail
        | Some r, i :: tail -> go (r :: acc) (Some(i, i)) tail
    go [] None (List.sort indices)
    |> List.map (fun (a, b) -> if a = b then string a else sprintf "%d-%d" a b)
    |> String.concat ","

/// A text quoted for bash.
let private quote (text: string) = "'" + text.Replace("'", "'\\''") + "'"

/// The Slurm job-array script of the points that are not finished: element i runs point i.
let slurmScript (plan: Plan) (pending: Point list) : string =
    let program, prefix = self ()
    let command = (program :: prefix) |> List.map quote |> String.concat " "
    let lines =
        [ "#!/bin/bash"
          "# A Slurm job array over a continual sweep: element I runs point I of sweep.json into"
          sprintf "# %s/points/<name>/. Submit with: sbatch %s" plan.Folder (Path.Combine(plan.Folder, "sweep.sbatch"))
          "# Then aggregate the finished points (missing and failed ones are listed):"
          sprintf "#   continual compare --from %s" plan.Folder
          "#SBATCH --job-name=continual-sweep"
          sprintf "#SBATCH --array=%s" (arrayRanges [ for p in pending -> p.Index ])
          "#SBATCH --ntasks=1"
          sprintf "#SBATCH --cpus-per-task=%d" plan.Threads
          sprintf "#SBATCH --output=%s" (Path.Combine(plan.Folder, "logs", "slurm-%A_%a.out"))
          yield! plan.Slurm |> List.map (fun s -> "#SBATCH " + s)
          "set -euo pipefail"
          sprintf "exec %s run --sweep %s --index \"$SLURM_ARRAY_TASK_ID\" --quiet" command (quote plan.Folder) ]
    String.concat "\n" lines + "\n"

/// The threads per point a sweep already recorded, if its folder has one.
let private recordedThreads (folder: string) =
    try
        use doc = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(folder, SweepFileName)))
        Some(doc.RootElement.GetProperty("threads").GetInt32())
    with _ -> None

/// `continual sweep SPEC`: expands the grid into DIR (checked before anything runs), then runs the points
/// not finished yet (--jobs N at a time) or writes a Slurm job array for them (--emit slurm).
let private sweepCommand (check: PointCheck) (results: ParseResults<SweepArgs>) : int =
    let specPath =
        match results.TryGetResult SweepArgs.Spec with
        | Some s -> s
        | None -> raise (SweepUsageError "give the sweep's spec file: continual sweep SPEC.yaml [--out DIR] [--jobs N | --emit slurm] (docs/sweeps.md)")
    for o, present in [ "--on-seeds", results.Contains SweepArgs.On_Seeds; "--metric", results.Contains SweepArgs.Metric ] do
        if present then raise (SweepUsageError(sprintf "%s goes with --select (continual sweep --select best --on-seeds 10-19 --out DIR)" o))
    let jobs = results.GetResult(SweepArgs.Jobs, 1)
    if jobs < 1 then raise (SweepUsageError(sprintf "--jobs must be at least 1 (got %d)" jobs))
    let emit = results.TryGetResult SweepArgs.Emit |> Option.map (fun e -> e.Trim().ToLowerInvariant())
    match emit with
    | Some e when e <> "slurm" -> raise (SweepUsageError(sprintf "--emit: '%s' is not a job script this build writes (expected slurm)" e))
    | Some _ when results.Contains SweepArgs.Jobs -> raise (SweepUsageError "--jobs runs points here; --emit slurm leaves them to Slurm: give one of them")
    | _ -> ()
    let folder = Path.GetFullPath(results.GetResult(SweepArgs.Out, Path.Combine("runs", "sweep")))
    if File.Exists folder then raise (SweepUsageError(sprintf "%s: --out is a file, not a folder" folder))
    let spec = Spec.read specPath
    let size = Spec.size spec
    if size > bigint PointLimit && not (results.Contains SweepArgs.Force) then
        raise (SweepUsageError(sprintf "%s:%d: the grid has %s points, more than the limit of %d (give --force to expand it)" specPath (spec.Axes |> List.map (fun a -> a.Line) |> List.min) (string size) PointLimit))
    let threads =
        match recordedThreads folder with
        | Some t -> t
        // One thread per point, as `run`: the fastest on every backbone measured (docs/performance.md),
        // never more threads than cores while --jobs stays at most the cores, and a point's results
        // equal those of the same `continual run` (another thread count changes them bit for bit).
        | None -> 1
    let points = expand check spec threads
    // The configurations once more, for point.json (the checks passed: this cannot fail now).
    let configs =
        points
        |> List.map (fun p ->
            let given = GivenOptions.ofResults ((runParser.Force().ParseCommandLine(Array.ofList p.Args, raiseOnUsage = true)).GetAllResults())
            match check given with
            | Ok c -> p.Index, c
            | Error es -> raise (SweepUsageError(String.concat "; " es)))
        |> Map.ofList
    let plan = { Folder = folder; SpecPath = Path.GetFullPath specPath; Threads = threads; Slurm = spec.Slurm; Points = points }
    use hold =
        try OutputFolder.acquire folder
        with OutputFolder.OutputFolderError(_, reason) -> raise (SweepFailure(sprintf "%s: %s" folder reason))
    writePlan plan configs
    let statuses = points |> List.map (fun p -> p, status plan p)
    let finished = statuses |> List.filter (fun (_, s) -> match s with PointStatus.Finished _ -> true | _ -> false)
    let pending = statuses |> List.filter (fun (_, s) -> match s with PointStatus.Finished _ -> false | _ -> true) |> List.map fst
    match emit with
    | Some _ ->
        if pending.IsEmpty then
            AnsiConsole.MarkupLine("{0} points, all finished: nothing to submit (continual compare --from {1})", points.Length, Markup.Escape folder)
            0
        else
            Directory.CreateDirectory(Path.Combine(folder, "logs")) |> ignore
            let script = Path.Combine(folder, "sweep.sbatch")
            Files.writeAtomically script (Text.Encoding.UTF8.GetBytes(slurmScript plan pending))
            File.SetUnixFileMode(script, UnixFileMode.UserRead ||| UnixFileMode.UserWrite ||| UnixFileMode.UserExecute ||| UnixFileMode.GroupRead ||| UnixFileMode.OtherRead)
            AnsiConsole.MarkupLine("{0} points, {1} finished: wrote a job array of the {2} to run", points.Length, finished.Length, pending.Length)
            Console.WriteLine("submit it with: sbatch " + script)
            0
    | None ->
        AnsiConsole.MarkupLine(
            "{0} points in {1}: {2} finished, {3} to run ({4} at a time, {5} libtorch thread(s) each)",
            points.Length, Markup.Escape folder, finished.Length, pending.Length, min jobs (max 1 pending.Length),
            (match spec.Axes |> List.tryFind (fun a -> a.Option = "threads") with
             | Some a -> a.Values |> List.map (fun v -> v.Text) |> String.concat " or "
             | None -> string threads))
        for (p, _) in finished do AnsiConsole.MarkupLine("skipped {0} (finished)", Markup.Escape p.Name)
        Console.Out.Flush()
        let outcome = runLocal plan pending jobs
        let ran, failed = outcome.Ran, outcome.Failed
        AnsiConsole.MarkupLine("ran {0} points, {1} failed, {2} skipped (finished); aggregate with: continual compare --from {3}", ran.Length + failed.Length, failed.Length, finished.Length, Markup.Escape folder)
        match outcome.Signal, failed with
        | Some signal, _ ->
            let name, code = if signal = Runtime.InteropServices.PosixSignal.SIGTERM then "SIGTERM", 143 else "SIGINT", 130
            let left = pending.Length - ran.Length - failed.Length
            Console.Out.Flush()
            eprintfn "stopped by %s: %d of %d points finished, %d not; run the same command again to run them" name (finished.Length + ran.Length) points.Length left
            code
        | None, [] -> 0
        | None, (name, error) :: _ ->
            raise (SweepFailure(sprintf "%d of %d points failed (%s: %s); each one's error is in %s/points/<name>/%s, and the sweep runs them again when started again" failed.Length points.Length name error folder FailedFileName))

/// One row of a sweep's comparison: its points (finished ones with figures) grouped by everything but seed.
type private Group =
    { Strategy: string
      Context: string
      Buffer: int
      Varying: (string * string) list
      Points: (Point * PointStatus) list }

let private groupsOf (plan: Plan) (seeds: int64 list option) : Group list =
    plan.Points
    |> List.filter (fun p -> match seeds with Some s -> List.contains p.Seed s | None -> true)
    |> List.map (fun p -> p, status plan p)
    |> List.groupBy (fun (p, _) -> p.Strategy, contextOf p, p.Buffer)
    |> List.map (fun ((strategy, context, buffer), points) ->
        { Strategy = strategy; Context = context; Buffer = buffer; Varying = (fst points.Head).Varying; Points = points })

let private finishedOf (group: Group) =
    group.Points |> List.choose (fun (p, s) -> match s with PointStatus.Finished(c, t, w) -> Some(p, c, t, w) | _ -> None)

let private rowOf (plan: Plan) (group: Group) : CompareTable.Row option =
    match finishedOf group with
    | [] -> None
    | done' ->
        Some
            { Label = (match group.Context with "" -> group.Strategy | c -> group.Strategy + " " + c)
              Strategy = group.Strategy
              Context = group.Context
              Buffer = group.Buffer
              Seeds = done' |> List.map (fun (p, _, _, _) -> p.Seed)
              ClassIl = done' |> List.map (fun (_, c, _, _) -> c)
              TaskIl = done' |> List.map (fun (_, _, t, _) -> t)
              WallSeconds = done' |> List.averageBy (fun (_, _, _, w) -> w)
              Runs = done' |> List.map (fun (p, _, _, _) -> Path.Combine(pointFolder plan p, "results.json")) }

/// Rows of the finished runs in a folder that holds no sweep (a comparison's --out): one per
/// configuration but seed, in compare.json's order where there is one.
let private plainRows (folder: string) (seeds: int64 list option) : CompareTable.Row list =
    let runs =
        Directory.GetDirectories folder
        |> Array.sort
        |> Array.choose (fun d ->
            readFinished None (Path.Combine(d, "results.json"))
            |> Option.bind (fun (root, figures) ->
                try Some(Config.ofJson (root.GetProperty "config"), figures, Path.Combine(d, "results.json")) with _ -> None))
        |> Array.filter (fun (c, _, _) -> match seeds with Some s -> List.contains c.Run.Seed s | None -> true)
        |> List.ofArray
    let order =
        try
            use doc = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(folder, "compare.json")))
            [ for s in doc.RootElement.GetProperty("strategies").EnumerateArray() -> s.GetProperty("strategy").GetString() ]
        with _ -> []
    let label (c: Config) = match Config.penaltyName c with Some p -> Config.methodName c + "+" + p | None -> Config.methodName c
    let groups =
        runs
        |> List.groupBy (fun (c, _, _) -> Config.hash { c with Run = { c.Run with Seed = 0L } })
        |> List.map snd
    let first (c, _, _) = c
    let clash = groups |> List.countBy (fun g -> label (first g.Head), Config.bufferSize (first g.Head)) |> List.filter (fun (_, n) -> n > 1) |> List.map fst |> set
    groups
    |> List.map (fun runs ->
        let head = first runs.Head
        let runs = runs |> List.sortBy (fun (c, _, _) -> c.Run.Seed)
        let context = if clash.Contains(label head, Config.bufferSize head) then "config " + Config.hash { head with Run = { head.Run with Seed = 0L } } else ""
        ({ Label = (match context with "" -> label head | c -> label head + " " + c)
           Strategy = label head
           Context = context
           Buffer = Config.bufferSize head
           Seeds = runs |> List.map (fun (c, _, _) -> c.Run.Seed)
           ClassIl = runs |> List.map (fun (_, (c, _, _), _) -> c)
           TaskIl = runs |> List.map (fun (_, (_, t, _), _) -> t)
           WallSeconds = runs |> List.averageBy (fun (_, (_, _, w), _) -> w)
           Runs = runs |> List.map (fun (_, _, path) -> path) } : CompareTable.Row))
    |> List.sortBy (fun r -> match List.tryFindIndex ((=) r.Label) order with Some i -> i | None -> Int32.MaxValue)

/// `continual compare --from DIR [--seeds S]`: the comparison table of the finished runs in DIR (a
/// sweep's folder, or a comparison's --out), without running anything; a sweep's missing and failed
/// points are listed beside it. Writes DIR/compare.json.
let compareFrom (folder: string) (seeds: int64 list option) : int =
    if not (Directory.Exists folder) then raise (SweepUsageError(sprintf "%s: --from: no such folder" folder))
    let isSweep = File.Exists(Path.Combine(folder, SweepFileName))
    let rows, missing, failed, total =
        if isSweep then
            let plan = readPlan folder
            let groups = groupsOf plan seeds
            let all = groups |> List.collect (fun g -> g.Points)
            let missing = all |> List.filter (fun (_, s) -> s = PointStatus.Missing) |> List.map (fun (p, _) -> p.Name)
            let failed = all |> List.choose (fun (p, s) -> match s with PointStatus.Failed e -> Some(p.Name, e) | _ -> None)
            groups |> List.choose (rowOf plan), missing, failed, all.Length
        else
            let rows = plainRows folder seeds
            rows, [], [], rows |> List.sumBy (fun r -> r.Seeds.Length)
    if rows.IsEmpty then
        raise (SweepFailure(sprintf "%s: no finished runs to compare (%d of %d points missing, %d failed)" folder missing.Length total failed.Length))
    CompareTable.print rows
    CompareTable.printMetrics rows
    if not missing.IsEmpty then
        AnsiConsole.MarkupLine("missing: {0} of {1} points: {2}", missing.Length, total, Markup.Escape(String.concat ", " missing))
    for (name, error) in failed do
        AnsiConsole.MarkupLine("failed: {0}: {1}", Markup.Escape name, Markup.Escape error)
    if missing.IsEmpty && failed.IsEmpty && isSweep then AnsiConsole.MarkupLine("all {0} points finished", total)
    let summary = Path.Combine(folder, "compare.json")
    let extra (w: Utf8JsonWriter) =
        if not missing.IsEmpty then
            w.WriteStartArray "missing"
            for m in missing do w.WriteStringValue m
            w.WriteEndArray()
        if not failed.IsEmpty then
            w.WriteStartArray "failed"
            for (name, error) in failed do
                w.WriteStartObject()
                w.WriteString("point", name)
                w.WriteString("error", error)
                w.WriteEndObject()
            w.WriteEndArray()
    Files.writeAtomically summary (CompareTable.json rows extra)
    AnsiConsole.MarkupLine("summary: {0}", Markup.Escape summary)
    0

/// `continual sweep --select best --on-seeds S --metric M --out DIR`: for each strategy and buffer, the
/// hyper-parameters whose mean of M over the held-out seeds S is highest (only groups finished on every
/// seed of S compete), recorded in DIR/selection.json.
let private selectCommand (results: ParseResults<SweepArgs>) : int =
    let rule = (results.GetResult SweepArgs.Select).Trim().ToLowerInvariant()
    if rule <> "best" then raise (SweepUsageError(sprintf "--select: '%s' is not a rule this build knows (expected best)" rule))
    if results.Contains SweepArgs.Spec || results.Contains SweepArgs.Jobs || results.Contains SweepArgs.Emit then
        raise (SweepUsageError "--select reads a sweep's finished points; give it without SPEC, --jobs and --emit (continual sweep --select best --on-seeds 10-19 --out DIR)")
    let seeds =
        match results.TryGetResult SweepArgs.On_Seeds with
        | Some text -> parseSeeds "on-seeds" text
        | None -> raise (SweepUsageError "--select needs --on-seeds (the held-out seeds to choose on, e.g. 10-19)")
    let metric = results.GetResult(SweepArgs.Metric, "task-il").Trim().ToLowerInvariant()
    let pick =
        match metric with
        | "task-il" -> fun (_, t) -> t
        | "class-il" -> fun (c, _) -> c
        | other -> raise (SweepUsageError(sprintf "--metric: '%s' is not a metric (expected task-il or class-il)" other))
    let folder = results.GetResult(SweepArgs.Out, Path.Combine("runs", "sweep"))
    let plan = readPlan folder
    let known = plan.Points |> List.map (fun p -> p.Seed) |> set
    match seeds |> List.filter (fun s -> not (known.Contains s)) with
    | [] -> ()
    | absent -> raise (SweepUsageError(sprintf "--on-seeds: the sweep in %s has no point with seed %s (its seeds: %s)" folder (absent |> List.map string |> String.concat ", ") (known |> Seq.map string |> String.concat ", ")))
    let groups = groupsOf plan (Some seeds)
    let scored =
        [ for g in groups ->
              let done' = finishedOf g
              let values = done' |> List.map (fun (_, c, t, _) -> pick (c, t))
              let complete = done'.Length = seeds.Length
              g, values, complete ]
    let choices =
        scored
        |> List.groupBy (fun (g, _, _) -> g.Strategy, g.Buffer)
        |> List.choose (fun (key, candidates) ->
            candidates
            |> List.filter (fun (_, _, complete) -> complete)
            |> List.sortByDescending (fun (_, values, _) -> fst (Metrics.meanAndSpread values))
            |> List.tryHead
            |> Option.map (fun best -> key, best))
    let table = Table(Title = TableTitle(sprintf "%s over held-out seeds %s (mean ± sample s.d.)" metric (arrayRanges (seeds |> List.map int))))
    for c in [ "strategy"; "buffer"; "hyper-parameters"; metric; "seeds finished"; "chosen" ] do table.AddColumn(c) |> ignore
    for (g, values, complete) in scored do
        let chosen = choices |> List.exists (fun (_, (b, _, _)) -> obj.ReferenceEquals(b, g))
        let figure = if values.IsEmpty then "—" else (let m, s = Metrics.meanAndSpread values in sprintf "%.2f ± %.2f" m s)
        table.AddRow(g.Strategy, string g.Buffer, (if g.Context = "" then "—" else g.Context), figure, sprintf "%d of %d" values.Length seeds.Length, (if chosen then "✓" elif complete then "" else "incomplete")) |> ignore
    AnsiConsole.Write table
    if choices.IsEmpty then
        raise (SweepFailure(sprintf "%s: no group of points has finished on every held-out seed (%s); run the sweep first" folder (arrayRanges (seeds |> List.map int))))
    let file = Path.Combine(plan.Folder, SelectionFileName)
    writeJson file (fun w ->
        w.WriteStartObject()
        w.WriteString("rule", rule)
        w.WriteString("metric", metric)
        w.WriteStartArray "seeds"
        for s in seeds do w.WriteNumberValue s
        w.WriteEndArray()
        w.WriteStartArray "choices"
        for ((strategy, buffer), (g, values, _)) in choices do
            let mean, spread = Metrics.meanAndSpread values
            w.WriteStartObject()
            w.WriteString("strategy", strategy)
            w.WriteNumber("buffer", buffer)
            w.WriteStartObject "options"
            for (o, v) in g.Varying do w.WriteString(o, v)
            w.WriteEndObject()
            w.WriteNumber("mean", mean)
            w.WriteNumber("spread", spread)
            w.WriteStartArray "perSeed"
            for v in values do w.WriteNumberValue v
            w.WriteEndArray()
            w.WriteStartArray "points"
            for (p, _) in g.Points do w.WriteStringValue p.Name
            w.WriteEndArray()
            w.WriteEndObject()
        w.WriteEndArray()
        w.WriteStartArray "candidates"
        for (g, values, complete) in scored do
            w.WriteStartObject()
            w.WriteString("strategy", g.Strategy)
            w.WriteNumber("buffer", g.Buffer)
            w.WriteStartObject "options"
            for (o, v) in g.Varying do w.WriteString(o, v)
            w.WriteEndObject()
            w.WriteBoolean("complete", complete)
            if not values.IsEmpty then
                let mean, spread = Metrics.meanAndSpread values
                w.WriteNumber("mean", mean)
                w.WriteNumber("spread", spread)
            w.WriteEndObject()
        w.WriteEndArray()
        w.WriteEndObject())
    for ((strategy, buffer), (g, values, _)) in choices do
        let mean, _ = Metrics.meanAndSpread values
        AnsiConsole.MarkupLine("chose for {0} (buffer {1}): {2}  ({3} {4:0.00})", Markup.Escape strategy, buffer, Markup.Escape(if g.Context = "" then "(nothing varies)" else g.Context), metric, mean)
    AnsiConsole.MarkupLine("wrote {0}", Markup.Escape file)
    0

/// `continual sweep`: expand and run (or emit) a grid, or select hyper-parameters (--select).
let command (check: PointCheck) (results: ParseResults<SweepArgs>) : int =
    if results.Contains SweepArgs.Select then selectCommand results else sweepCommand check results
