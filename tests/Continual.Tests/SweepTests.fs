/// `continual sweep` through the real program: malformed specs refused before any run, a failing point
/// recorded while the sweep goes on, a killed sweep resumed with only its missing points, the held-out
/// selection, and a 12-point sweep run as a real Slurm job array (scripts/slurm-local.sh) whose
/// `compare --from` table is the one of a local --jobs 2 sweep and of `continual compare`.
module Continual.Tests.SweepTests

open System
open System.IO
open System.Text.Json
open System.Text.Json.Nodes
open Expecto
open Continual.Tests.TestData

let private lines (text: string) =
    text.Split('\n') |> Array.map (fun l -> l.TrimEnd '\r') |> Array.filter (fun l -> l.Trim() <> "")

let private execute (args: string list) = CliProcess.execute args [ "NO_COLOR", "1" ]

/// A fresh folder under the temporary folder, removed after `body`.
let private withFolder (body: string -> unit) =
    let root = Path.Combine(Path.GetTempPath(), "continual-sweep-" + Guid.NewGuid().ToString "N")
    Directory.CreateDirectory root |> ignore
    try body root
    finally try Directory.Delete(root, true) with _ -> ()

/// The options that keep every point tiny: 20 training and 10 test images per class of Fashion-MNIST.
let private tiny = "train-per-class: 20\ntest-per-class: 10\nno-onnx: true\nthreads: 1\n"

/// The points whose results.json exists, by folder name.
let private finished (sweep: string) =
    Directory.GetDirectories(Path.Combine(sweep, "points"))
    |> Array.filter (fun d -> File.Exists(Path.Combine(d, "results.json")))
    |> Array.map Path.GetFileName
    |> Array.sort
    |> List.ofArray

/// The points a sweep's output says it ran ("[k/n] NAME ...").
let private ranIn (output: string) =
    lines output
    |> Array.filter (fun l -> l.StartsWith "[")
    |> Array.map (fun l -> l.Substring(l.IndexOf(']') + 1).Trim().Split(' ').[0])
    |> Array.sort
    |> List.ofArray

/// compare.json without the wall times (which differ between any two runs).
let private figures (file: string) =
    let node = JsonNode.Parse(File.ReadAllText file)
    for s in node.["strategies"].AsArray() do s.AsObject().Remove "wallSecondsPerRun" |> ignore
    node.ToJsonString()

/// The rows of the printed comparison table without their last column (the wall time).
let private tableRows (output: string) =
    lines output
    |> Array.filter (fun l -> l.StartsWith "│" || l.Contains "mean ± sample s.d.")
    |> Array.map (fun l ->
        if l.StartsWith "│" then
            let cells = l.Split '│'
            String.Join("│", cells.[0 .. cells.Length - 3]).TrimEnd()
        else l.Trim())
    |> List.ofArray

let private expectUsageError (label: string) (fragments: string list) (code: int, output: string, errors: string) =
    Expect.equal code 2 (sprintf "%s: exit code 2 (stdout: %s; stderr: %s)" label output errors)
    let errorLines = lines errors
    Expect.equal errorLines.Length 1 (sprintf "%s: one line on stderr, got:\n%s" label errors)
    Expect.stringStarts errorLines.[0] "error: " label
    for f in fragments do Expect.stringContains errorLines.[0] f (sprintf "%s: the message names the line and the reason" label)
    Expect.isFalse (errors.Contains "   at ") (sprintf "%s: no stack trace" label)

/// Slurm's programs, installed with apt-get where they are missing and apt can install them: None, or
/// the reason they are not there.
let private slurmMissing () =
    let installed () = File.Exists "/usr/sbin/slurmctld" && File.Exists "/usr/sbin/slurmd" && File.Exists "/usr/sbin/munged" && File.Exists "/usr/bin/sbatch"
    if installed () then None
    elif not (File.Exists "/usr/bin/apt-get") then Some "slurm-wlm and munge are not installed and there is no apt-get here"
    elif Environment.UserName <> "root" then Some "slurm-wlm and munge are not installed and apt-get needs root"
    else
        let code, output, errors =
            CliProcess.executeProgram "/bin/sh" [ "-c"; "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge" ] []
        if installed () then None
        else Some(sprintf "slurm-wlm and munge are not installed and apt-get cannot install them (exit %d: %s)" code ((output + errors).Trim().Split('\n') |> Array.last))

[<Tests>]
let tests =
    testSequenced <| testList "sweeps" [
        testCase "Slurm array ranges and seed lists" <| fun () ->
            Expect.equal (Continual.Cli.Sweeps.arrayRanges [ 0 .. 11 ]) "0-11" "a whole array"
            Expect.equal (Continual.Cli.Sweeps.arrayRanges [ 9; 1; 4; 5; 6 ]) "1,4-6,9" "the points left"
            Expect.equal (Continual.Cli.Sweeps.parseSeeds "on-seeds" "10-13") [ 10L; 11L; 12L; 13L ] "a range"
            Expect.equal (Continual.Cli.Sweeps.parseSeeds "on-seeds" "0,2-3") [ 0L; 2L; 3L ] "a list with a range"

        testCase "a malformed spec is refused before any run: the line and the reason, exit 2, nothing written" <| fun () ->
            withFolder (fun root ->
                let spec = Path.Combine(root, "spec.yaml")
                let out = Path.Combine(root, "sweep")
                let case label (text: string) (extra: string list) (fragments: string list) =
                    File.WriteAllText(spec, text)
                    expectUsageError label fragments (execute ([ "sweep"; spec; "--out"; out ] @ extra))
                    Expect.isFalse (Directory.Exists out) (sprintf "%s: no sweep folder" label)
                case "unknown option" "strategies: [sgd]\nseeds: [0]\nlamda: [1, 2]\n" [] [ "spec.yaml:3:"; "unknown option 'lamda'"; "lambda" ]
                case "empty list" "strategies: [sgd]\nlr: []\n" [] [ "spec.yaml:2:"; "lr: an empty list" ]
                case "wrong type" "strategies: [sgd]\nseeds: [0]\nepochs: [1, two]\n" [] [ "spec.yaml:3:"; "'two' is not a whole number" ]
                case "a flag's value" "strategies: [sgd]\nno-onnx: maybe\n" [] [ "spec.yaml:2:"; "not true or false" ]
                case "a mapping" "strategies:\n  a: 1\n" [] [ "spec.yaml:2:"; "not a mapping" ]
                case "unknown strategy" "seeds: [0]\nstrategies: [sgd, dreampp]\n" [] [ "spec.yaml:2:"; "unknown strategy 'dreampp'" ]
                case "an option no point uses" "strategies: [sgd, er]\nlambda: [1, 10]\n" [] [ "spec.yaml:2:"; "lambda does not apply to any point" ]
                case "malformed YAML" "strategies: [sgd\nseeds: [0]\n" [] [ "spec.yaml:"; "not valid YAML or JSON" ]
                case "the sweep owns --out" "strategies: [sgd]\nout: runs/x\n" [] [ "spec.yaml:2:"; "out is not a setting of a point" ]
                case "a JSON spec" "{\"strategies\": [\"sgd\"],\n \"lr\": [0.1, \"fast\"]}\n" [] [ "spec.yaml:2:"; "'fast' is not a number" ]
                case "a grid over the limit" "strategies: [sgd, er]\nseeds: 0-999\n" [] [ "spec.yaml:1:"; "2000 points, more than the limit of 1000"; "--force" ]
                case "--jobs and --emit" "strategies: [sgd]\n" [ "--jobs"; "2"; "--emit"; "slurm" ] [ "give one of them" ]
                // Over the limit with --force: expanded (here into a job array, so that nothing runs).
                File.WriteAllText(spec, "strategies: [sgd]\nseeds: 0-1000\n" + tiny)
                let code, output, errors = execute [ "sweep"; spec; "--out"; out; "--emit"; "slurm"; "--force" ]
                Expect.equal code 0 (sprintf "--force expands a large grid (stdout: %s; stderr: %s)" output errors)
                Expect.stringContains (File.ReadAllText(Path.Combine(out, "sweep.sbatch"))) "#SBATCH --array=0-1000" "every point in the array")

        testCase "a failing point is recorded and the sweep goes on; compare --from lists it; --select best chooses on held-out seeds" <| fun () ->
            if not (hasFashionMnist ()) then skiptest "Fashion-MNIST is not installed"
            withFolder (fun root ->
                let spec = Path.Combine(root, "spec.yaml")
                let out = Path.Combine(root, "sweep")
                // lr 1e30 diverges at once: a point that passes every check and fails when it runs.
                File.WriteAllText(spec, "strategies: [sgd]\nlr: [0.03, 0.1, 1e30]\nseeds: 10-11\n" + tiny)
                let code, output, errors = execute [ "sweep"; spec; "--out"; out; "--jobs"; "2" ]
                Expect.equal code 1 (sprintf "failed points end the sweep with exit 1 (stdout: %s; stderr: %s)" output errors)
                Expect.equal (lines errors).Length 1 "one error line"
                Expect.stringContains errors "2 of 6 points failed" "the count of failed points"
                Expect.equal (finished out) [ "lr=0.03-s10"; "lr=0.03-s11"; "lr=0.1-s10"; "lr=0.1-s11" ] "the other points finished"
                for s in [ 10; 11 ] do
                    let failed = Path.Combine(out, "points", sprintf "lr=1E+30-s%d" s, "failed.json")
                    Expect.isTrue (File.Exists failed) "the failure is recorded in the point's folder"
                    Expect.stringContains (File.ReadAllText failed) "diverged" "with its error"
                let code, output, errors = execute [ "compare"; "--from"; out ]
                Expect.equal code 0 (sprintf "compare --from (stderr: %s)" errors)
                Expect.stringContains output "failed: lr=1E+30-s10: training diverged" "failed points are listed next to the table"
                Expect.stringContains output "sgd lr=0.03" "a row per hyper-parameter setting"
                let code, output, errors = execute [ "sweep"; "--select"; "best"; "--on-seeds"; "10-11"; "--metric"; "task-il"; "--out"; out ]
                Expect.equal code 0 (sprintf "select (stdout: %s; stderr: %s)" output errors)
                // The choice, worked out from the results files.
                let taskIl lr =
                    [ for s in [ 10; 11 ] ->
                        use doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(out, "points", sprintf "lr=%s-s%d" lr s, "results.json")))
                        let last = doc.RootElement.GetProperty("taskIl").EnumerateArray() |> Seq.last
                        last.EnumerateArray() |> Seq.averageBy (fun v -> v.GetDouble()) ]
                    |> List.average
                let best = if taskIl "0.1" > taskIl "0.03" then "0.1" else "0.03"
                use selection = JsonDocument.Parse(File.ReadAllText(Path.Combine(out, "selection.json")))
                let choice = selection.RootElement.GetProperty("choices").[0]
                Expect.equal (choice.GetProperty("options").GetProperty("lr").GetString()) best "the lr with the higher mean Task-IL on the held-out seeds"
                Expect.floatClose Accuracy.high (choice.GetProperty("mean").GetDouble()) (taskIl best) "its mean"
                Expect.equal (selection.RootElement.GetProperty("candidates").GetArrayLength()) 3 "every setting is a candidate"
                expectUsageError "a seed outside the sweep" [ "--on-seeds"; "no point with seed 3" ] (execute [ "sweep"; "--select"; "best"; "--on-seeds"; "3"; "--out"; out ]))

        testCase "a sweep killed half-way and started again runs only its missing points" <| fun () ->
            if not (hasFashionMnist ()) then skiptest "Fashion-MNIST is not installed"
            withFolder (fun root ->
                let spec = Path.Combine(root, "spec.yaml")
                let out = Path.Combine(root, "sweep")
                File.WriteAllText(spec, "strategies: [sgd, er]\nbuffers: [50]\nseeds: [0, 1]\n" + tiny)
                // Killed (SIGKILL) right after its second point finished.
                let code, output, errors = CliProcess.execute [ "sweep"; spec; "--out"; out ] [ "CONTINUAL_KILL_AT", "sweep-point:2"; "NO_COLOR", "1" ]
                Expect.equal code 137 (sprintf "the sweep was killed (stdout: %s; stderr: %s)" output errors)
                let before = finished out
                Expect.equal before.Length 2 "two points finished before the kill"
                let stamps = before |> List.map (fun p -> p, File.ReadAllText(Path.Combine(out, "points", p, "results.json"))) |> Map.ofList
                let code, output, _ = execute [ "compare"; "--from"; out ]
                Expect.equal code 0 "compare --from a stopped sweep"
                Expect.stringContains output "missing: 2 of 4 points" "says which points are missing"
                let code, output, errors = execute [ "sweep"; spec; "--out"; out ]
                Expect.equal code 0 (sprintf "the sweep resumed (stdout: %s; stderr: %s)" output errors)
                let all = [ "er-s0"; "er-s1"; "sgd-s0"; "sgd-s1" ]
                Expect.equal (finished out) all "every point finished"
                Expect.equal (ranIn output) (all |> List.filter (fun p -> not (List.contains p before))) "only the missing points ran"
                for p in before do
                    Expect.stringContains output (sprintf "skipped %s (finished)" p) "finished points are skipped"
                    Expect.equal (File.ReadAllText(Path.Combine(out, "points", p, "results.json"))) stamps.[p] "and left as they were")

        testCase "SIGTERM stops a local sweep: no new point starts, the running one stops, nothing is recorded as failed" <| fun () ->
            if not (hasFashionMnist ()) then skiptest "Fashion-MNIST is not installed"
            withFolder (fun root ->
                let spec = Path.Combine(root, "spec.yaml")
                let out = Path.Combine(root, "sweep")
                File.WriteAllText(spec, "strategies: [sgd]\nseeds: [0, 1, 2]\n" + tiny)
                let p, output, errors = CliProcess.start [ "sweep"; spec; "--out"; out ] [ "NO_COLOR", "1" ]
                // Signalled once its first point has finished.
                while not p.HasExited && (not (Directory.Exists(Path.Combine(out, "points"))) || (finished out).IsEmpty) do
                    Threading.Thread.Sleep 100
                CliProcess.executeProgram "kill" [ "-TERM"; string p.Id ] [] |> ignore
                p.WaitForExit()
                Expect.equal p.ExitCode 143 (sprintf "stopped by SIGTERM (stdout: %s; stderr: %s)" output.Result errors.Result)
                Expect.stringContains errors.Result "stopped by SIGTERM" "says so on stderr"
                Expect.isLessThan (finished out).Length 3 "not every point ran"
                let failed = Directory.GetFiles(out, "failed.json", SearchOption.AllDirectories)
                Expect.isEmpty failed "a stopped point is not a failed one"
                let code, output, _ = execute [ "sweep"; spec; "--out"; out ]
                Expect.equal code 0 (sprintf "the sweep finishes when started again: %s" output)
                Expect.equal (finished out).Length 3 "every point")

        testCase "a 12-point sweep as a real Slurm job array: compare --from gives the table of a local --jobs 2 sweep and of continual compare" <| fun () ->
            if not (hasFashionMnist ()) then skiptest "Fashion-MNIST is not installed"
            match slurmMissing () with
            | Some reason -> skiptest reason
            | None -> ()
            withFolder (fun root ->
                let script = Path.Combine(repositoryRoot.Force(), "scripts", "slurm-local.sh")
                let conf = "/var/tmp/continual-slurm/slurm.conf"
                let alreadyRunning = (CliProcess.executeProgram "/bin/sh" [ "-c"; sprintf "SLURM_CONF=%s sinfo -h -o %%T 2>/dev/null | grep -q ." conf ] [] |> fun (c, _, _) -> c = 0)
                let code, output, errors = CliProcess.executeProgram "bash" [ script; "start" ] []
                Expect.equal code 0 (sprintf "scripts/slurm-local.sh start (stdout: %s; stderr: %s)" output errors)
                try
                    let spec = Path.Combine(root, "spec.yaml")
                    File.WriteAllText(spec, "strategies: [sgd, er, der, derpp]\nbuffers: [200]\nseeds: [0, 1, 2]\n" + tiny)
                    let slurm = Path.Combine(root, "slurm")
                    let code, output, errors = execute [ "sweep"; spec; "--out"; slurm; "--emit"; "slurm" ]
                    Expect.equal code 0 (sprintf "--emit slurm (stdout: %s; stderr: %s)" output errors)
                    let sbatch = Path.Combine(slurm, "sweep.sbatch")
                    Expect.stringContains (File.ReadAllText sbatch) "#SBATCH --array=0-11" "a job array of the 12 points"
                    let slurmEnvironment = [ "SLURM_CONF", conf ]
                    let code, output, errors = CliProcess.executeProgram "sbatch" [ "--parsable"; sbatch ] slurmEnvironment
                    Expect.equal code 0 (sprintf "sbatch (stdout: %s; stderr: %s)" output errors)
                    let job = output.Trim().Split(';').[0]
                    // Polled every half second: `sbatch --wait` sleeps ever longer between its polls, and
                    // waited some 20 s after the last element had ended.
                    let clock = Diagnostics.Stopwatch.StartNew()
                    let rec waitForJob () =
                        let code, queued, errors = CliProcess.executeProgram "squeue" [ "-h"; "-j"; job; "-o"; "%T" ] slurmEnvironment
                        Expect.equal code 0 (sprintf "squeue (stderr: %s)" errors)
                        if queued.Trim() <> "" then
                            if clock.Elapsed.TotalSeconds > 600.0 then failtestf "the job array %s was still queued or running after 600 s: %s" job queued
                            Threading.Thread.Sleep 500
                            waitForJob ()
                    waitForJob ()
                    // Finished elements stay known to slurmctld (MinJobAge, 300 s by default): each must have completed.
                    let code, shown, errors = CliProcess.executeProgram "scontrol" [ "show"; "job"; job ] slurmEnvironment
                    Expect.equal code 0 (sprintf "scontrol show job (stderr: %s)" errors)
                    let states = Text.RegularExpressions.Regex.Matches(shown, @"JobState=(\S+)") |> Seq.map (fun m -> m.Groups.[1].Value) |> List.ofSeq
                    Expect.equal states (List.replicate 12 "COMPLETED") (sprintf "every element of the array completed:\n%s" shown)
                    Expect.equal (finished slurm).Length 12 "every element wrote its point's results"
                    let code, slurmTable, errors = execute [ "compare"; "--from"; slurm ]
                    Expect.equal code 0 (sprintf "compare --from the Slurm sweep (stderr: %s)" errors)
                    Expect.stringContains slurmTable "all 12 points finished" "nothing missing"
                    let local = Path.Combine(root, "local")
                    let code, _, errors = execute [ "sweep"; spec; "--out"; local; "--jobs"; "2" ]
                    Expect.equal code 0 (sprintf "the local sweep (stderr: %s)" errors)
                    let code, localTable, _ = execute [ "compare"; "--from"; local ]
                    Expect.equal code 0 "compare --from the local sweep"
                    let compared = Path.Combine(root, "compare")
                    let code, compareTable, errors =
                        execute [ "compare"; "--strategies"; "sgd,er,der,derpp"; "--seeds"; "0,1,2"; "--buffer"; "200"; "--train-per-class"; "20"; "--test-per-class"; "10"; "--threads"; "1"; "--out"; compared ]
                    Expect.equal code 0 (sprintf "continual compare (stderr: %s)" errors)
                    // Two tables: the figures (title, header, four rows) and the lecture's metrics (a row per strategy too).
                    let rows = tableRows slurmTable
                    Expect.equal (rows |> List.filter (fun l -> l.Contains "mean ± sample s.d.")).Length 1 "the figures' table"
                    for strategy in [ "sgd"; "er"; "der"; "derpp" ] do
                        Expect.equal (rows |> List.filter (fun l -> l.StartsWith(sprintf "│ %s " strategy))).Length 2 (sprintf "%s has a row in both tables" strategy)
                    Expect.equal (tableRows slurmTable) (tableRows localTable) "Slurm and a local --jobs 2 sweep give the same table"
                    Expect.equal (tableRows slurmTable) (tableRows compareTable) "and continual compare over the same points"
                    Expect.equal (figures (Path.Combine(slurm, "compare.json"))) (figures (Path.Combine(compared, "compare.json"))) "compare.json too, but for wall times"
                    Expect.equal (figures (Path.Combine(local, "compare.json"))) (figures (Path.Combine(compared, "compare.json"))) "compare.json of the local sweep"
                finally
                    if not alreadyRunning then CliProcess.executeProgram "bash" [ script; "stop" ] [] |> ignore) ]
