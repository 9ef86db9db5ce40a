/// `continual plot`, `continual report` and `--tensorboard` on real runs of the real program: every PNG
/// decoded and looked at, the report opened in headless Chromium, the event files read back with their
/// checksums checked.
module Continual.Tests.ResultsTests

open System
open System.IO
open System.Text.Json.Nodes
open System.Threading
open Continual
open Continual.Tests.TestData
open Expecto
open SkiaSharp

/// Two small real runs (SGD; DER++ with SI, which has autograd terms and a closed-form penalty) with
/// TensorBoard logs, and a real comparison (SGD and DER++ over seeds 0 and 1), made once for the list.
type private Runs =
    { Root: string
      Sgd: string
      Derpp: string
      SgdLog: string
      DerppLog: string
      Comparison: string }

let private small = [ "--train-per-class"; "30"; "--test-per-class"; "20"; "--no-onnx"; "--quiet" ]

let private runs =
    lazy
        (let root = Path.Combine(Path.GetTempPath(), "continual-results-tests-" + Guid.NewGuid().ToString "N")
         Directory.CreateDirectory root |> ignore
         AppDomain.CurrentDomain.ProcessExit.Add(fun _ -> try Directory.Delete(root, true) with _ -> ())
         let r =
             { Root = root
               Sgd = Path.Combine(root, "sgd")
               Derpp = Path.Combine(root, "derpp")
               SgdLog = Path.Combine(root, "tb-sgd")
               DerppLog = Path.Combine(root, "tb-derpp")
               Comparison = Path.Combine(root, "compare") }
         let check (args: string list) =
             let code, out, err = CliProcess.execute args []
             if code <> 0 then failwithf "continual %s: exit %d\n%s\n%s" (String.Join(" ", args)) code out err
         check ([ "run"; "--strategy"; "sgd"; "--out"; r.Sgd; "--tensorboard"; r.SgdLog ] @ small)
         check ([ "run"; "--strategy"; "derpp"; "--buffer"; "50"; "--penalty"; "si"; "--out"; r.Derpp; "--tensorboard"; r.DerppLog ] @ small)
         // compare never writes ONNX models: it takes no --no-onnx.
         check ([ "compare"; "--strategies"; "sgd,derpp"; "--seeds"; "0,1"; "--buffer"; "50"; "--out"; r.Comparison ] @ List.filter ((<>) "--no-onnx") small)
         r)

/// A picture decoded by SkiaSharp: its size, its pixels, and how many distinct colours it has.
type private Decoded =
    { Width: int
      Height: int
      Pixels: uint32[]
      Colours: int
      /// The share of the pixels taken by the most common colour.
      TopShare: float }

let private decode (path: string) : Decoded =
    use bitmap = SKBitmap.Decode path
    Expect.isNotNull bitmap (sprintf "%s decodes as an image" path)
    let pixels = bitmap.Pixels |> Array.map (fun c -> (uint32 c.Alpha <<< 24) ||| (uint32 c.Red <<< 16) ||| (uint32 c.Green <<< 8) ||| uint32 c.Blue)
    let counts = pixels |> Array.countBy id
    { Width = bitmap.Width
      Height = bitmap.Height
      Pixels = pixels
      Colours = counts.Length
      TopShare = float (counts |> Array.map snd |> Array.max) / float pixels.Length }

/// A PNG that decodes, has the expected size, and is a picture: many colours, none covering nearly all.
let private expectPicture (path: string) (width: int) (height: int) =
    Expect.isTrue (File.Exists path) (sprintf "%s is written" path)
    let bytes = File.ReadAllBytes path
    Expect.sequenceEqual bytes.[0..7] [| 137uy; 80uy; 78uy; 71uy; 13uy; 10uy; 26uy; 10uy |] (sprintf "%s starts with PNG's signature" path)
    let d = decode path
    Expect.equal (d.Width, d.Height) (width, height) (sprintf "%s: size" path)
    Expect.isGreaterThan d.Colours 50 (sprintf "%s: distinct colours (a blank or flat picture has a few)" path)
    Expect.isLessThan d.TopShare 0.95 (sprintf "%s: the most common colour's share of the pixels" path)
    d

/// The pictures of one run, with their sizes.
let private runPictures =
    [ "matrix-class-il.png", 720, 600
      "matrix-task-il.png", 720, 600
      "average-accuracy-class-il.png", 900, 560
      "average-accuracy-task-il.png", 900, 560
      "forgetting-class-il.png", 900, 560
      "forgetting-task-il.png", 900, 560
      "final-accuracy.png", 900, 560
      // Every run records its state footprint (results.json "footprint").
      "footprint.png", 900, 560 ]

let private plot (folder: string) (out: string) =
    let code, stdout, stderr = CliProcess.execute [ "plot"; folder; "--out"; out ] []
    Expect.equal code 0 (sprintf "plot exits 0: %s %s" stdout stderr)
    stdout

/// Copies a run folder (its results files) to a new one.
let private copyRun (from: string) (into: string) =
    Directory.CreateDirectory into |> ignore
    for f in [ "results.json"; "results.csv" ] do
        File.Copy(Path.Combine(from, f), Path.Combine(into, f))

/// Edits a run folder's results.json.
let private editResults (folder: string) (edit: JsonObject -> unit) =
    let path = Path.Combine(folder, "results.json")
    let doc = JsonNode.Parse(File.ReadAllText path).AsObject()
    edit doc
    File.WriteAllText(path, doc.ToJsonString())

// ---- TensorBoard event files, read without the writer's code ----

/// CRC-32C from its definition (reflected polynomial 0x82F63B78, bit by bit), independent of the
/// writer's (which uses the processor's instruction through BitOperations).
let private crc32cReference (data: byte[]) (offset: int) (count: int) =
    let mutable crc = 0xFFFFFFFFu
    for i in offset .. offset + count - 1 do
        crc <- crc ^^^ uint32 data.[i]
        for _ in 1 .. 8 do
            crc <- if crc &&& 1u <> 0u then (crc >>> 1) ^^^ 0x82F63B78u else crc >>> 1
    ~~~crc

let private masked (crc: uint32) = ((crc >>> 15) ||| (crc <<< 17)) + 0xa282ead8u

/// The records of a TFRecord file, each length and data checked against its masked CRC-32C.
let private readRecords (bytes: byte[]) : byte[] list =
    let mutable at = 0
    [ while at < bytes.Length do
          if bytes.Length - at < 12 then failwithf "a truncated record header at byte %d" at
          let length = int (BitConverter.ToUInt64(bytes, at))
          if masked (crc32cReference bytes at 8) <> BitConverter.ToUInt32(bytes, at + 8) then failwithf "the length's CRC at byte %d does not match" at
          if bytes.Length - at < 16 + length then failwithf "a truncated record at byte %d" at
          if masked (crc32cReference bytes (at + 12) length) <> BitConverter.ToUInt32(bytes, at + 12 + length) then failwithf "the data's CRC at byte %d does not match" at
          yield bytes.[at + 12 .. at + 11 + length]
          at <- at + 16 + length ]

/// An Event record: wall time, step, file version (the first record's), and its summary's scalars.
type private Event =
    { WallTime: float
      Step: int64
      FileVersion: string option
      Scalars: (string * float32) list }

let private decodeEvent (data: byte[]) : Event =
    let input = new Google.Protobuf.CodedInputStream(data)
    let mutable event = { WallTime = 0.0; Step = 0L; FileVersion = None; Scalars = [] }
    let mutable tag = input.ReadTag()
    while tag <> 0u do
        match tag >>> 3, tag &&& 7u with
        | 1u, 1u -> event <- { event with WallTime = input.ReadDouble() }
        | 2u, 0u -> event <- { event with Step = input.ReadInt64() }
        | 3u, 2u -> event <- { event with FileVersion = Some(input.ReadString()) }
        | 5u, 2u ->
            let summary = new Google.Protobuf.CodedInputStream(input.ReadBytes().ToByteArray())
            let mutable t = summary.ReadTag()
            while t <> 0u do
                if t >>> 3 = 1u && t &&& 7u = 2u then
                    let value = new Google.Protobuf.CodedInputStream(summary.ReadBytes().ToByteArray())
                    let mutable name = ""
                    let mutable v = nanf
                    let mutable vt = value.ReadTag()
                    while vt <> 0u do
                        match vt >>> 3, vt &&& 7u with
                        | 1u, 2u -> name <- value.ReadString()
                        | 2u, 5u -> v <- value.ReadFloat()
                        | _ -> value.SkipLastField()
                        vt <- value.ReadTag()
                    event <- { event with Scalars = event.Scalars @ [ name, v ] }
                else summary.SkipLastField()
                t <- summary.ReadTag()
        | _ -> input.SkipLastField()
        tag <- input.ReadTag()
    event

let private eventFile (folder: string) =
    let files = Directory.GetFiles(folder, "events.out.tfevents.*")
    Expect.equal files.Length 1 (sprintf "one event file in %s" folder)
    let name = Path.GetFileName files.[0]
    let parts = name.Split('.')
    Expect.isTrue (parts.Length >= 5 && fst (Int64.TryParse parts.[3]) && parts.[4] <> "") (sprintf "%s is events.out.tfevents.<unix seconds>.<host>" name)
    files.[0]

/// Every scalar of an event file by (tag, step), after checking the first record is the file version.
let private scalarsOf (path: string) =
    let events = File.ReadAllBytes path |> readRecords |> List.map decodeEvent
    Expect.equal events.Head.FileVersion (Some "brain.Event:2") "the first record gives the file version"
    Expect.isTrue (events |> List.forall (fun e -> e.WallTime > 1.6e9)) "every event has a wall time (Unix seconds)"
    [ for e in events.Tail do for tag, v in e.Scalars -> (tag, e.Step), v ]

let private matrixOf (doc: JsonObject) (name: string) =
    [| for row in doc.[name].AsArray() -> [| for v in row.AsArray() -> v.GetValue<float>() |] |]

/// Checks a run's event file against its results.json: a loss/ce and a loss/total at every step 1..N
/// (N the run's steps), each loss/total the sum of the step's terms, the named terms expected of the
/// method, and every accuracy of both matrices after every task.
let private expectLog (logFolder: string) (runFolder: string) (expectedTerms: string list) =
    let scalars = scalarsOf (eventFile logFolder)
    let table = dict scalars
    Expect.equal table.Count scalars.Length "no tag is written twice at one step"
    let doc = JsonNode.Parse(File.ReadAllText(Path.Combine(runFolder, "results.json"))).AsObject()
    let steps = doc.["timings"].["steps"].GetValue<int64>()
    let lossSteps = scalars |> List.filter (fun ((tag, _), _) -> tag.StartsWith "loss/") |> List.map (fst >> snd) |> List.distinct |> List.sort
    Expect.equal lossSteps [ 1L .. steps ] "loss scalars at every step of the run, and only there"
    for step in 1L .. steps do
        Expect.isTrue (table.ContainsKey(("loss/ce", step))) (sprintf "loss/ce at step %d" step)
        let terms = scalars |> List.filter (fun ((tag, s), _) -> s = step && tag.StartsWith "loss/" && tag <> "loss/total") |> List.sumBy (fun (_, v) -> float v)
        let total = float table.[("loss/total", step)]
        Expect.floatClose { absolute = 1e-4; relative = 1e-5 } total terms (sprintf "loss/total is the sum of the terms at step %d" step)
    let names = scalars |> List.map (fst >> fst) |> List.filter (fun t -> t.StartsWith "loss/") |> List.distinct |> List.sort
    Expect.equal names (("loss/total" :: [ for t in expectedTerms -> "loss/" + t ]) |> List.sort) "the named terms"
    for name, scenario in [ "classIl", "class-il"; "taskIl", "task-il" ] do
        let m = matrixOf doc name
        for i, row in Array.indexed m do
            for j, expected in Array.indexed row do
                let tag = sprintf "accuracy/%s/task-%d" scenario (j + 1)
                match table.TryGetValue((tag, int64 (i + 1))) with
                | true, v -> Expect.floatClose { absolute = 1e-3; relative = 0.0 } (float v) expected (sprintf "%s after task %d" tag (i + 1))
                | _ -> failtestf "%s after task %d is missing" tag (i + 1)
            let average = table.[(sprintf "accuracy/%s/average" scenario, int64 (i + 1))]
            Expect.floatClose { absolute = 1e-3; relative = 0.0 } (float average) (Array.average row.[.. i]) (sprintf "%s average after task %d" scenario (i + 1))

// ---- Chromium ----

let private chromium () =
    [ "chromium"; "chromium-browser"; "google-chrome" ]
    |> List.tryPick (fun name ->
        (Environment.GetEnvironmentVariable "PATH").Split(':')
        |> Array.map (fun dir -> Path.Combine(dir, name))
        |> Array.tryFind File.Exists)

/// Runs headless Chromium on a page with extra arguments: exit code, standard output, standard error.
let private browse (browser: string) (page: string) (args: string list) =
    let profile = Path.Combine(Path.GetTempPath(), "continual-chromium-" + Guid.NewGuid().ToString "N")
    try
        CliProcess.executeProgram browser
            ([ "--headless"; "--no-sandbox"; "--disable-gpu"; "--no-first-run"; "--user-data-dir=" + profile
               "--enable-logging=stderr"; "--v=0"; "--virtual-time-budget=10000" ] @ args @ [ Uri(page).AbsoluteUri ]) []
    finally
        try Directory.Delete(profile, true) with _ -> ()

[<Tests>]
let tests =
    testSequenced <| testList "results (plots, report, tensorboard)" [
        test "every picture of two real runs decodes, has its size, is not blank, and the runs' pictures differ" {
            if not (hasFashionMnist ()) then skiptest "Fashion-MNIST is not installed"
            let r = runs.Force()
            let outA, outB = Path.Combine(r.Root, "plots-sgd"), Path.Combine(r.Root, "plots-derpp")
            let stdout = plot r.Sgd outA
            plot r.Derpp outB |> ignore
            Expect.isFalse (stdout.Contains "skipped") "every picture of a run that records its footprint is drawn"
            // A run folder whose results.json records no footprint (an older run's): that one picture is skipped, with a note.
            let older = Path.Combine(r.Root, "run-without-footprint")
            Directory.CreateDirectory older |> ignore
            let node = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(r.Sgd, "results.json")))
            node.AsObject().Remove "footprint" |> ignore
            File.WriteAllText(Path.Combine(older, "results.json"), node.ToJsonString())
            let olderOut = Path.Combine(r.Root, "plots-older")
            Expect.stringContains (plot older olderOut) "footprint.png skipped" "a run without a footprint says that its footprint plot is skipped"
            Expect.isFalse (File.Exists(Path.Combine(olderOut, "footprint.png"))) "and draws no footprint picture"
            Expect.equal (Directory.GetFiles outA |> Array.map Path.GetFileName |> Array.sort) (runPictures |> List.map (fun (n, _, _) -> n) |> List.sort |> Array.ofList) "the pictures of a run, and no temporary file"
            for name, w, h in runPictures do
                let a = expectPicture (Path.Combine(outA, name)) w h
                let b = expectPicture (Path.Combine(outB, name)) w h
                let differing = Array.fold2 (fun n (x: uint32) y -> if x <> y then n + 1 else n) 0 a.Pixels b.Pixels
                Expect.isGreaterThan differing 500 (sprintf "%s: SGD's and DER++'s pictures differ (%d pixels)" name differing)
            // The pictures follow the figures, not only the labels: SGD's run given DER++'s matrices (same
            // label, same seed) draws every picture anew.
            let edited = Path.Combine(r.Root, "sgd-edited")
            copyRun r.Sgd edited
            let derpp = JsonNode.Parse(File.ReadAllText(Path.Combine(r.Derpp, "results.json"))).AsObject()
            editResults edited (fun doc ->
                // The figures the pictures are drawn from: the matrices and what results.json derives
                // from them (metrics, read for the forgetting per task) and the footprint.
                for key in [ "classIl"; "taskIl"; "metrics"; "footprint" ] do
                    doc.[key] <- derpp.[key].DeepClone())
            let outC = Path.Combine(r.Root, "plots-sgd-edited")
            plot edited outC |> ignore
            for name, w, h in runPictures do
                let a = decode (Path.Combine(outA, name))
                let c = expectPicture (Path.Combine(outC, name)) w h
                let differing = Array.fold2 (fun n (x: uint32) y -> if x <> y then n + 1 else n) 0 a.Pixels c.Pixels
                Expect.isGreaterThan differing 500 (sprintf "%s: other matrices under the same label, another picture (%d pixels differ)" name differing)
        }

        test "a comparison's pictures: one heat-map pair per method and the spread over seeds" {
            if not (hasFashionMnist ()) then skiptest "Fashion-MNIST is not installed"
            let r = runs.Force()
            let out = Path.Combine(r.Root, "plots-compare")
            plot r.Comparison out |> ignore
            let expected =
                [ for m in [ "sgd"; "derpp" ] do
                      yield sprintf "matrix-class-il-%s.png" m, 720, 600
                      yield sprintf "matrix-task-il-%s.png" m, 720, 600 ]
                @ (runPictures |> List.filter (fun (n, _, _) -> not (n.StartsWith "matrix-")))
            Expect.equal (Directory.GetFiles out |> Array.map Path.GetFileName |> Array.sort) (expected |> List.map (fun (n, _, _) -> n) |> List.sort |> Array.ofList) "the comparison's pictures"
            let decoded = [ for name, w, h in expected -> name, expectPicture (Path.Combine(out, name)) w h ]
            let pixels name = (decoded |> List.find (fun (n, _) -> n = name) |> snd).Pixels
            Expect.notEqual (pixels "matrix-class-il-sgd.png") (pixels "matrix-class-il-derpp.png") "the methods' heat maps differ"
        }

        test "footprint and forgettingPerTask are read from results.json where present" {
            if not (hasFashionMnist ()) then skiptest "Fashion-MNIST is not installed"
            let r = runs.Force()
            // The shape the results gain with footprints: one entry per task, bytes by part and their total.
            let withFootprint (folder: string) (scale: int64) (forgetting: float) =
                copyRun r.Derpp folder
                editResults folder (fun doc ->
                    let entries = JsonArray()
                    for task in 1 .. 5 do
                        let parameters, buffer = 89610L * 4L, int64 task * 10L * 784L * 4L * scale
                        let bytes = JsonObject()
                        bytes.["parameters"] <- JsonValue.Create parameters
                        bytes.["buffer"] <- JsonValue.Create buffer
                        let e = JsonObject()
                        e.["task"] <- JsonValue.Create task
                        e.["bytes"] <- bytes
                        e.["totalBytes"] <- JsonValue.Create(parameters + buffer)
                        entries.Add e
                    doc.["footprint"] <- entries
                    let metrics = doc.["metrics"].["classIl"].AsObject()
                    metrics.["forgettingPerTask"] <- JsonArray([| for _ in 1 .. 4 -> JsonValue.Create forgetting :> JsonNode |])
                    metrics.["forwardTransfer"] <- JsonValue.Create 1.5
                    metrics.["intransigence"] <- JsonValue.Create 2.5)
            let a, b = Path.Combine(r.Root, "footprint-a"), Path.Combine(r.Root, "footprint-b")
            withFootprint a 1L 50.0
            withFootprint b 8L 10.0
            let stdoutA = plot a (Path.Combine(a, "plots"))
            plot b (Path.Combine(b, "plots")) |> ignore
            Expect.isFalse (stdoutA.Contains "skipped") "nothing is skipped when the footprint is there"
            let fa = expectPicture (Path.Combine(a, "plots", "footprint.png")) 900 560
            let fb = expectPicture (Path.Combine(b, "plots", "footprint.png")) 900 560
            Expect.notEqual fa.Pixels fb.Pixels "different footprints, different pictures"
            // forgettingPerTask as recorded (50 and 10 for every task), not as computed from the matrix.
            let ga = decode (Path.Combine(a, "plots", "forgetting-class-il.png"))
            let gb = decode (Path.Combine(b, "plots", "forgetting-class-il.png"))
            let original = decode (Path.Combine(r.Root, "plots-derpp", "forgetting-class-il.png"))
            Expect.notEqual ga.Pixels gb.Pixels "the recorded forgetting is drawn"
            Expect.notEqual ga.Pixels original.Pixels "the recorded forgetting replaces the computed one"
            // The report's metrics table shows the new figures.
            let code, _, err = CliProcess.execute [ "report"; a ] []
            Expect.equal code 0 err
            let html = File.ReadAllText(Path.Combine(a, "report.html"))
            for text in [ "forwardTransfer"; "intransigence"; "50.00 / 50.00 / 50.00 / 50.00"; "Footprint against accuracy" ] do
                Expect.stringContains html text (sprintf "the report shows %s" text)
        }

        test "the report opens in headless Chromium: every picture loads, no console error" {
            if not (hasFashionMnist ()) then skiptest "Fashion-MNIST is not installed"
            let browser =
                match chromium () with
                | Some b -> b
                | None -> skiptest "Chromium is not installed (Debian: apt-get install chromium; scripts/setup.sh installs it)"
            let r = runs.Force()
            let code, stdout, stderr = CliProcess.execute [ "report"; r.Comparison ] []
            Expect.equal code 0 (stdout + stderr)
            let page = Path.Combine(r.Comparison, "report.html")
            let html = File.ReadAllText page
            let images = html.Split("<img ").Length - 1
            Expect.equal images 10 "ten pictures in the page (two heat maps per method, six others)"
            Expect.equal (html.Split("src=\"").Length - 1) (html.Split("src=\"data:image/png;base64,").Length - 1) "every source is a data: URI"
            for external in [ "http://"; "https://"; "<link"; "@import"; "url(" ] do
                Expect.isFalse (html.Contains external) (sprintf "nothing external (%s)" external)
            for text in [ "Final metrics"; "Configuration"; "Accuracy matrices"; "derpp"; "sgd"; "learningRate" ] do
                Expect.stringContains html text (sprintf "the page has %s" text)
            let code, dom, log = browse browser page [ "--dump-dom" ]
            Expect.equal code 0 (sprintf "chromium --dump-dom exits 0: %s" log)
            Expect.stringContains dom "data-images=\"loaded\"" "every image is complete with a natural width"
            Expect.stringContains dom (sprintf "data-image-count=\"%d\"" images) "the page counted every image"
            Expect.stringContains dom "data-errors=\"0\"" "no error event in the page"
            let console = log.Split('\n') |> Array.filter (fun l -> l.Contains ":CONSOLE")
            Expect.isEmpty console "no console message"
            let shot = Path.Combine(r.Root, "report.png")
            let code, _, log = browse browser page [ "--hide-scrollbars"; "--window-size=1200,2000"; "--screenshot=" + shot ]
            Expect.equal code 0 (sprintf "chromium --screenshot exits 0: %s" log)
            let d = decode shot
            Expect.equal (d.Width, d.Height) (1200, 2000) "the screenshot's size"
            Expect.isGreaterThan d.Colours 50 "the screenshot shows more than a blank page"
        }

        test "the TensorBoard event files hold every loss term at every step and every accuracy after every task" {
            if not (hasFashionMnist ()) then skiptest "Fashion-MNIST is not installed"
            let r = runs.Force()
            expectLog r.SgdLog r.Sgd [ "ce" ]
            expectLog r.DerppLog r.Derpp [ "ce"; "der.logits"; "derpp.labels"; "si" ]
        }

        test "event files: CRC-32C as TFRecord defines it, a corrupted record is refused" {
            // The standard check value of CRC-32C.
            let digits = Text.Encoding.ASCII.GetBytes "123456789"
            Expect.equal (crc32cReference digits 0 digits.Length) 0xE3069283u "the reference CRC-32C"
            Expect.equal (Continual.Cli.TensorBoard.crc32c (ReadOnlySpan digits)) 0xE3069283u "the writer's CRC-32C"
            let record = Continual.Cli.TensorBoard.frame (Continual.Cli.TensorBoard.scalarEvent 1.7e9 3L [ "loss/ce", 0.5f ])
            let events = readRecords record |> List.map decodeEvent
            Expect.equal events [ { WallTime = 1.7e9; Step = 3L; FileVersion = None; Scalars = [ "loss/ce", 0.5f ] } ] "one record read back"
            let corrupt = Array.copy record
            corrupt.[20] <- corrupt.[20] ^^^ 1uy
            Expect.throws (fun () -> readRecords corrupt |> ignore) "a flipped bit fails the data's CRC"
        }

        test "reading each step's terms changes no training result" {
            if not (hasFashionMnist ()) then skiptest "Fashion-MNIST is not installed"
            let config =
                { (Experiment.defaults "derpp" 50 |> Experiment.withPenalty (Some "si")) with
                    Data.Folder = fashionMnist
                    Data.TrainPerClass = Some 30
                    Data.TestPerClass = Some 20 }
            let plain = Experiment.run config RunHooks.none CancellationToken.None
            let seen = Collections.Generic.List<StepTerms>()
            let logged = Experiment.run config { RunHooks.none with OnStepTerms = Some seen.Add } CancellationToken.None
            Expect.equal logged.Outcome.ClassIl plain.Outcome.ClassIl "the same Class-IL matrix"
            Expect.equal logged.Outcome.TaskIl plain.Outcome.TaskIl "the same Task-IL matrix"
            Expect.equal (int64 seen.Count) logged.Outcome.Steps "one report per step"
            Expect.equal [ for s in seen -> s.Step ] [ 1L .. logged.Outcome.Steps ] "steps in order"
            Expect.isTrue (seen |> Seq.exists (fun s -> s.Terms |> List.exists (fun (n, _) -> n = "si"))) "the closed-form penalty is among the terms"
            Experiment.release plain
            Experiment.release logged
        }

        test "plot and report: a missing or non-run folder exits 1 with one line naming it; bad options exit 2" {
            use temp = new TempFolder()
            let missing = Path.Combine(temp.Path, "missing")
            let incomplete = Path.Combine(temp.Path, "incomplete")
            Directory.CreateDirectory incomplete |> ignore
            File.WriteAllText(Path.Combine(incomplete, RunFolder.IncompleteMarker), "x")
            let notJson = Path.Combine(temp.Path, "broken")
            Directory.CreateDirectory notJson |> ignore
            File.WriteAllText(Path.Combine(notJson, "results.json"), "{ not json")
            for command in [ "plot"; "report" ] do
                for folder, says in [ missing, "no such folder"; temp.Path, "not a run folder"; incomplete, "did not finish"; notJson, "not valid JSON" ] do
                    let code, _, stderr = CliProcess.execute [ command; folder ] []
                    Expect.equal code 1 (sprintf "%s %s: exit 1 (%s)" command folder stderr)
                    let lines = stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries)
                    Expect.equal lines.Length 1 (sprintf "one line: %s" stderr)
                    Expect.stringContains lines.[0] (Path.GetFullPath folder) "the line names the folder"
                    Expect.stringContains lines.[0] says "and says what is wrong"
                for args in [ [ command ]; [ command; temp.Path; "--bogus" ]; [ command; temp.Path; "--out" ] ] do
                    let code, _, stderr = CliProcess.execute args []
                    Expect.equal code 2 (sprintf "%s: exit 2 (%s)" (String.Join(" ", args)) stderr)
                    Expect.equal (stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries).Length) 1 (sprintf "one line: %s" stderr)
            Expect.isFalse (Directory.Exists missing) "nothing was created"
            if hasFashionMnist () then
              let file = Path.Combine(temp.Path, "a-file")
              File.WriteAllText(file, "")
              let code, _, stderr = CliProcess.execute [ "run"; "--strategy"; "sgd"; "--tensorboard"; file; "--out"; Path.Combine(temp.Path, "run") ] []
              Expect.equal code 1 (sprintf "--tensorboard naming a file: exit 1 (%s)" stderr)
              Expect.stringContains stderr "--tensorboard is a file" "says why"
        }
    ]
