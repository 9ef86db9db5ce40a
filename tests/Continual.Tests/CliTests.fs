module Continual.Tests.CliTests

open System.IO
open System.Text.Json
open Expecto
open Continual.Tests.TestData

[<Tests>]
let tests =
    testSequenced <| testList "command line" [
        test "the argument types are well formed" {
            // The tool skips Argu's structure check at start-up for speed; it runs here instead, so a
            // malformed option (a clash of names, a bad attribute) fails the tests, not a user's run.
            for create in [ (fun () -> Argu.ArgumentParser.Create<Continual.Cli.Arguments.Command>(programName = "continual", checkStructure = true) :> Argu.ArgumentParser)
                            (fun () -> Argu.ArgumentParser.Create<Continual.Cli.Arguments.SavedRunArgs>(programName = "continual", checkStructure = true)) ] do
                let parser = create ()
                Expect.isNonEmpty (parser.PrintUsage()) "the parser prints its usage"
        }

        test "libtorch starts loading at process start for the commands that train or evaluate, and for no other" {
            for args in [ [| "run" |]; [| "run"; "--strategy"; "derpp" |]; [| "resume"; "runs/x" |]; [| "learn"; "--from"; "runs/x" |]
                          [| "bench" |]; [| "bench-penalties" |]; [| "compare"; "--strategies"; "sgd,er" |]; [| "verify"; "task-1.onnx" |] ] do
                Expect.isTrue (Continual.Cli.Startup.needsLibtorch args) (sprintf "%A loads libtorch early" args)
            for args in [ [||]; [| "--version" |]; [| "--help" |]; [| "plot"; "runs/x" |]; [| "report"; "runs/x" |]; [| "export"; "runs/x" |]
                          [| "sweep"; "grid.json" |]; [| "run"; "--help" |]; [| "bench"; "-h" |]; [| "runs" |] ] do
                Expect.isFalse (Continual.Cli.Startup.needsLibtorch args) (sprintf "%A does not" args)
        }

        test "the loading thread's heap is grown in one piece and advised huge pages, and the run's thresholds apply at the load's end" {
            // The process's mappings from /proc/self/smaps: start, end, permissions and VmFlags.
            let mappings () =
                File.ReadAllLines "/proc/self/smaps"
                |> Array.fold (fun (acc: (int64 * int64 * string * string) list) line ->
                    let parts = line.Split(' ', System.StringSplitOptions.RemoveEmptyEntries)
                    if parts.Length >= 2 && parts.[1].Length = 4 && parts.[0].Split('-').Length = 2 then
                        let range = parts.[0].Split('-')
                        (System.Convert.ToInt64(range.[0], 16), System.Convert.ToInt64(range.[1], 16), parts.[1], "") :: acc
                    elif line.StartsWith "VmFlags:" then
                        match acc with
                        | (a, b, perms, _) :: rest -> (a, b, perms, line) :: rest
                        | [] -> acc
                    else acc) []
            // A block of 4 MiB in a mapping of its own (above the mmap threshold) or in a heap (below it).
            let blockHasOwnMapping () =
                // AllocHGlobal is malloc on Linux.
                let block = System.Runtime.InteropServices.Marshal.AllocHGlobal 4194304
                // glibc's mapped block starts 16 bytes (its header) into a mapping of its own.
                try mappings () |> List.exists (fun (a, _, _, _) -> a = int64 block - 16L)
                finally System.Runtime.InteropServices.Marshal.FreeHGlobal block
            // A thread of its own, as the load has; a thread that happens to share the main arena is left
            // alone, so a few threads are tried.
            let readyOnFreshThread () =
                let mutable readied = None
                let thread = System.Threading.Thread(fun () -> readied <- Continual.Cli.Malloc.readyLoadingHeap ())
                thread.Start()
                thread.Join()
                readied
            let readied = Seq.init 8 (fun _ -> readyOnFreshThread ()) |> Seq.tryPick id
            let mutable ended = false
            try
                let heap, length = Expect.wantSome readied "a fresh thread's own heap is readied"
                let inside = mappings () |> List.filter (fun (a, b, _, _) -> a >= int64 heap && b <= int64 heap + length)
                Expect.isNonEmpty inside "the heap's mappings are found"
                for (_, _, _, flags) in inside do
                    Expect.stringContains flags " hg" "every part of the heap's mapping is advised huge pages"
                let writable = inside |> List.sumBy (fun (a, b, perms, _) -> if perms.StartsWith "rw" then b - a else 0L)
                // At least the first 28 MiB block was taken from it in one step (a heap grown a page at a
                // time is a few hundred KiB here). A thread of the test process may reuse an arena that
                // holds other blocks already, where the second block no longer fits, so not both.
                Expect.isGreaterThanOrEqual writable (28L <<< 20) "the heap was made writable in one piece, not page by page"
                // The MLP's thresholds (8 MiB mmap threshold), chosen while the load runs, apply at its end.
                // (Whether a block above glibc's threshold meanwhile gets a mapping of its own depends on
                // the free space at the top of the arena, so it is not asserted.)
                Continual.Cli.Malloc.tuneFor "mlp"
                Continual.Cli.Malloc.endLoad ()
                ended <- true
                Expect.isFalse (blockHasOwnMapping ()) "the MLP's threshold applies once the load has ended"
            finally
                if not ended then Continual.Cli.Malloc.endLoad ()
        }

        test "bad options exit 2 before any work and write nothing" {
            use tmp = new TempFolder()
            let out = Path.Combine(tmp.Path, "out")
            for args in [ [| "run"; "--strategy"; "nope" |]
                          [| "run"; "--buffer"; "-5" |]
                          [| "run"; "--lr"; "0" |]
                          [| "run"; "--strategy"; "er"; "--buffer"; "0" |]
                          [| "run"; "--data"; Path.Combine(tmp.Path, "missing") |]
                          [| "run"; "--no-such-option" |]
                          [| "run"; "--seeds"; "1,2" |]
                          // Each command has its own options: compare takes --strategies, not --strategy ...
                          [| "compare"; "--strategy"; "sgd" |]
                          [| "bench"; "--seeds"; "1,2" |]
                          // ... and a method option that sets nothing in the run is refused.
                          [| "run"; "--strategy"; "derpp"; "--xi"; "0.3" |]
                          [| "run"; "--strategy"; "sgd"; "--fisher"; "true" |]
                          [| "run"; "--strategy"; "ewc"; "--fisher"; "sometimes" |] ] do
                let code = Continual.Cli.Program.run (Array.append args [| "--out"; out; "--quiet" |])
                Expect.equal code 2 (sprintf "exit code of %A" args)
                Expect.isFalse (Directory.Exists out) "nothing written"
        }

        test "bench-penalties takes only the data and SGD options" {
            use tmp = new TempFolder()
            Expect.equal (Continual.Cli.Program.run [| "bench-penalties"; "--buffer"; "3"; "--out"; tmp.Path |]) 2 "--buffer is not one of its options"
        }

        test "a corrupt data file exits 1, names the file and writes nothing" {
            use tmp = new TempFolder()
            writeSyntheticFolder tmp.Path 5 2
            File.WriteAllBytes(Path.Combine(tmp.Path, "train-labels-idx1-ubyte.gz"), [| 0x1fuy; 0x8buy; 1uy; 2uy |])
            let out = Path.Combine(tmp.Path, "out")
            let code = Continual.Cli.Program.run [| "run"; "--data"; tmp.Path; "--out"; out; "--quiet" |]
            Expect.equal code 1 "exit code"
            Expect.isFalse (Directory.Exists out) "nothing written"
        }

        test "run --growing-head grows the head to every class, records class names, and exports task models of growing width that verify" {
            use tmp = new TempFolder()
            writeSyntheticFolder tmp.Path 20 5
            let out = Path.Combine(tmp.Path, "out")
            let code = Continual.Cli.Program.run [| "run"; "--data"; tmp.Path; "--strategy"; "derpp"; "--buffer"; "40"; "--growing-head"; "--out"; out; "--quiet" |]
            Expect.equal code 0 "exit code"
            use doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(out, "results.json")))
            let root = doc.RootElement
            Expect.equal (root.GetProperty("config").GetProperty("head").GetString()) "growing" "the head recorded in the configuration"
            let benchmark = root.GetProperty "benchmark"
            Expect.equal (benchmark.GetProperty("headClasses").GetInt32()) 10 "the head grew to every class"
            Expect.equal (benchmark.GetProperty("classNames").GetArrayLength()) 10 "class names"
            Expect.equal (benchmark.GetProperty("classToTask").[9].GetInt32()) 4 "class-to-task map"
            for task in 1 .. 5 do
                let code = Continual.Cli.Program.run [| "verify"; Path.Combine(out, sprintf "task-%d.onnx" task); "--data"; tmp.Path |]
                Expect.equal code 0 (sprintf "task-%d.onnx (%d outputs) verifies on its own" task (2 * task))
        }

        test "run writes results.json and results.csv with configuration, matrices, metrics, timings and versions" {
            use tmp = new TempFolder()
            writeSyntheticFolder tmp.Path 20 5
            let out = Path.Combine(tmp.Path, "out")
            let code = Continual.Cli.Program.run [| "run"; "--data"; tmp.Path; "--strategy"; "der"; "--buffer"; "40"; "--seed"; "5"; "--out"; out; "--quiet" |]
            Expect.equal code 0 "exit code"
            use doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(out, "results.json")))
            let root = doc.RootElement
            let config = root.GetProperty "config"
            Expect.equal (config.GetProperty("version").GetInt32()) 2 "configuration version"
            Expect.equal (config.GetProperty("method").GetProperty("name").GetString()) "der" "strategy recorded"
            Expect.equal (config.GetProperty("method").GetProperty("buffer").GetInt32()) 40 "buffer recorded"
            Expect.equal (config.GetProperty("method").GetProperty("alpha").GetDouble()) 0.2 "reference α for DER (nearest buffer 200)"
            Expect.equal (config.GetProperty("run").GetProperty("seed").GetInt64()) 5L "seed recorded"
            Expect.equal (config.GetProperty("run").GetProperty("learningRate").GetDouble()) 0.03 "reference lr for DER (nearest buffer 200)"
            Expect.equal (root.GetProperty("classIl").GetArrayLength()) 5 "Class-IL matrix rows"
            Expect.equal (root.GetProperty("taskIl").[4].GetArrayLength()) 5 "Task-IL matrix columns"
            let metrics = root.GetProperty "metrics"
            Expect.isTrue (metrics.GetProperty("classIl").GetProperty("averageAccuracy").GetDouble() >= 0.0) "metrics"
            Expect.isTrue (metrics.GetProperty("taskIl").TryGetProperty("forgetting") |> fst) "forgetting"
            Expect.isGreaterThan (root.GetProperty("timings").GetProperty("steps").GetInt64()) 0L "timings"
            Expect.isTrue (root.GetProperty("versions").TryGetProperty("torchsharp") |> fst) "versions"
            let csv = File.ReadAllLines(Path.Combine(out, "results.csv"))
            Expect.equal csv.[0] "scenario,after_task,task,accuracy" "CSV header"
            Expect.equal csv.Length (1 + 2 * 25) "one line per scenario, row and task"
            Expect.isEmpty (Directory.GetFiles(out, "*.tmp")) "no temporary files left"
        }

        test "continual bench (a real process) writes bench.json with every phase, the peak RSS and, with the bare loop built, its ratio" {
            use tmp = new TempFolder()
            writeSyntheticFolder tmp.Path 20 5
            let out = Path.Combine(tmp.Path, "bench")
            let code, _, errors = CliProcess.execute [ "bench"; "--data"; tmp.Path; "--strategy"; "derpp"; "--buffer"; "20"; "--out"; out ] []
            Expect.equal code 0 (sprintf "bench exit code (%s)" errors)
            use bench = JsonDocument.Parse(File.ReadAllText(Path.Combine(out, "bench.json")))
            let root = bench.RootElement
            Expect.isGreaterThan (root.GetProperty("peakRssMiB").GetDouble()) 0.0 "peak RSS"
            let run = root.GetProperty("runs").[0]
            Expect.sequenceEqual
                [ for p in run.GetProperty("phases").EnumerateObject() -> p.Name ]
                [ "startUp"; "data"; "train"; "evaluation"; "onnx"; "checkpoint"; "other" ]
                "every phase"
            Expect.isGreaterThan (run.GetProperty("peakRssMiB").GetDouble()) 0.0 "peak RSS of the run"
            match Continual.Cli.BareLoop.locate None with
            | Some _ ->
                Expect.isGreaterThan (run.GetProperty("ratio").GetDouble()) 0.0 "the ratio, with the bare loop built"
                Expect.equal (run.GetProperty("bareLoop").GetProperty("steps").GetInt64()) (run.GetProperty("steps").GetInt64()) "the bare loop takes as many steps"
            | None ->
                Expect.isTrue (root.TryGetProperty("bareLoopSkipped") |> fst) "without the bare loop, why there is no ratio"
        }

        test "bench writes bench.json, and with --distill all distill-costs.json: one object per run" {
            use tmp = new TempFolder()
            writeSyntheticFolder tmp.Path 20 5
            let out = Path.Combine(tmp.Path, "bench")
            Expect.equal (Continual.Cli.Program.run [| "bench"; "--data"; tmp.Path; "--strategy"; "sgd"; "--repeat"; "2"; "--out"; out; "--quiet" |]) 0 "bench exit code"
            let rounded (digits: int) (v: JsonElement) = v.GetDouble() = System.Math.Round(v.GetDouble(), digits)
            use bench = JsonDocument.Parse(File.ReadAllText(Path.Combine(out, "bench.json")))
            let runs = [ for r in bench.RootElement.GetProperty("runs").EnumerateArray() -> r ]
            Expect.equal runs.Length 2 "one object per repeat"
            for r in runs do
                Expect.sequenceEqual
                    ([ for p in r.EnumerateObject() -> p.Name ] |> List.truncate 10)
                    [ "wallSeconds"; "trainSeconds"; "evalSeconds"; "checkpointSeconds"; "checkpointShareOfWall"; "checkpointLoadSeconds"; "checkpointMiB"; "steps"; "peakRssMiB"; "phases" ]
                    "fields (then the bare loop's, where it is built)"
                Expect.isGreaterThan (r.GetProperty("steps").GetInt64()) 0L "steps"
                // Checkpoints after every task are part of the run: their time is within the wall time.
                let share = r.GetProperty("checkpointShareOfWall").GetDouble()
                Expect.isTrue (share > 0.0 && share < 1.0) "checkpoints take a share of the wall time"
                Expect.isGreaterThan (r.GetProperty("checkpointMiB").GetDouble()) 0.0 "the learner file's size"
                Expect.isTrue (File.Exists(Path.Combine(out, Continual.Learner.FileName))) "the last checkpoint is in --out"
                for name in [ "wallSeconds"; "trainSeconds"; "evalSeconds" ] do
                    Expect.isTrue (rounded 3 (r.GetProperty name)) (sprintf "%s to the millisecond" name)
                Expect.isTrue (rounded 0 (r.GetProperty "peakRssMiB")) "whole MiB"
            Expect.equal (Continual.Cli.Program.run [| "bench"; "--distill"; "all"; "--data"; tmp.Path; "--strategy"; "der"; "--buffer"; "20"; "--out"; out; "--quiet" |]) 0 "bench --distill all exit code"
            use costs = JsonDocument.Parse(File.ReadAllText(Path.Combine(out, "distill-costs.json")))
            let rows = [ for r in costs.RootElement.EnumerateArray() -> r ]
            Expect.sequenceEqual
                [ for r in rows -> r.GetProperty("run").GetString() ]
                ([ "sgd"; "der" ] @ [ for n in Continual.Methods.DistillationKind.names -> "der + " + n ])
                "SGD, the strategy, then the strategy with each term"
            for r in rows do
                Expect.sequenceEqual [ for p in r.EnumerateObject() -> p.Name ] [ "run"; "steps"; "trainSeconds"; "msPerStep" ] "fields"
                Expect.isTrue (rounded 3 (r.GetProperty "trainSeconds") && rounded 4 (r.GetProperty "msPerStep")) "rounded as before"
            Expect.isEmpty (Directory.GetFiles(out, "*.tmp")) "no temporary files left"
        }

        test "compare writes compare.json: each run's figures per seed and the paired Task-IL gain over SGD" {
            use tmp = new TempFolder()
            writeSyntheticFolder tmp.Path 20 5
            let out = Path.Combine(tmp.Path, "cmp")
            let code = Continual.Cli.Program.run [| "compare"; "--data"; tmp.Path; "--strategies"; "sgd,ewc-online"; "--seeds"; "3,4"; "--out"; out; "--quiet" |]
            Expect.equal code 0 "exit code"
            use doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(out, "compare.json")))
            let root = doc.RootElement
            Expect.sequenceEqual [ for s in root.GetProperty("seeds").EnumerateArray() -> s.GetInt64() ] [ 3L; 4L ] "seeds"
            let rows = [ for r in root.GetProperty("strategies").EnumerateArray() -> r ]
            Expect.sequenceEqual [ for r in rows -> r.GetProperty("strategy").GetString() ] [ "sgd"; "ewc-online" ] "strategies in order"
            // Every per-seed figure is that run's own results.json average accuracy.
            let fromRun (strategy: string) (seed: int) (scenario: string) =
                use run = JsonDocument.Parse(File.ReadAllText(Path.Combine(out, sprintf "split-fmnist-%s-s%d" strategy seed, "results.json")))
                run.RootElement.GetProperty("metrics").GetProperty(scenario).GetProperty("averageAccuracy").GetDouble()
            let perSeed (row: JsonElement) (scenario: string) = [ for v in row.GetProperty(scenario).GetProperty("perSeed").EnumerateArray() -> v.GetDouble() ]
            for row in rows do
                let name = row.GetProperty("strategy").GetString()
                for scenario in [ "classIl"; "taskIl" ] do
                    Expect.sequenceEqual (perSeed row scenario) [ fromRun name 3 scenario; fromRun name 4 scenario ] (sprintf "%s %s per seed" name scenario)
            Expect.isFalse (rows.[0].TryGetProperty("taskIlOverSgd") |> fst) "no gain of SGD over itself"
            let gain = rows.[1].GetProperty("taskIlOverSgd")
            let expected, _ = Continual.Metrics.pairedDifference (perSeed rows.[1] "taskIl") (perSeed rows.[0] "taskIl")
            Expect.floatClose Accuracy.veryHigh (gain.GetProperty("mean").GetDouble()) expected "paired gain"
            // The state each run keeps (its results.json footprint after the last task: EWC's importance
            // and anchors, nothing for SGD) and the lecture's metrics per seed, read back from the runs.
            let runFile (strategy: string) (seed: int) = Path.Combine(out, sprintf "split-fmnist-%s-s%d" strategy seed, "results.json")
            for row in rows do
                let name = row.GetProperty("strategy").GetString()
                let footprints = [ for v in row.GetProperty("footprintBytes").EnumerateArray() -> v.GetInt64() ]
                let expectedFootprints =
                    [ for seed in [ 3; 4 ] ->
                        use run = JsonDocument.Parse(File.ReadAllText(runFile name seed))
                        let f = run.RootElement.GetProperty("footprint")
                        f.[f.GetArrayLength() - 1].GetProperty("totalBytes").GetInt64() ]
                Expect.sequenceEqual footprints expectedFootprints (sprintf "%s footprint per seed" name)
                let newTask = [ for v in row.GetProperty("metrics").GetProperty("taskIl").GetProperty("newTaskAccuracy").EnumerateArray() -> v.GetDouble() ]
                let expectedNew =
                    [ for seed in [ 3; 4 ] ->
                        use run = JsonDocument.Parse(File.ReadAllText(runFile name seed))
                        run.RootElement.GetProperty("metrics").GetProperty("taskIl").GetProperty("newTaskAccuracy").GetDouble() ]
                Expect.sequenceEqual newTask expectedNew (sprintf "%s new-task accuracy per seed" name)
            Expect.equal (rows.[0].GetProperty("footprintBytes").[0].GetInt64()) 0L "SGD keeps no state"
            // EWC (online) keeps an importance vector and an anchor of the model's 89,610 parameters.
            Expect.isGreaterThanOrEqual (rows.[1].GetProperty("footprintBytes").[0].GetInt64()) (2L * 89610L * 4L) "online EWC's importance and anchor"
            Expect.isEmpty (Directory.GetFiles(out, "*.tmp")) "no temporary files left"
        }
    ]
