/// The learner file read outside .NET: scripts/read-learner.py (numpy, json, hashlib, struct) against
/// a file Learner.save wrote, and docs/checkpoints.md showing that script verbatim.
module Continual.Tests.LearnerFileTests

open System
open System.IO
open System.IO.Compression
open System.Security.Cryptography
open System.Text
open System.Text.Json
open System.Threading
open Expecto
open Continual
open Continual.Data
open Continual.Tests.TestData
open TorchSharp

/// Debian's Python, which has numpy through python3-numpy (scripts/setup.sh installs it); the pyenv
/// python3 first on PATH may lack it.
let private python = "/usr/bin/python3"

let private script () = Path.Combine(repositoryRoot.Force(), "scripts", "read-learner.py")

/// Runs a program to its end: exit code, standard output, standard error.
let private run (exe: string) (args: string list) = CliProcess.executeProgram exe args []

let private hasNumpy =
    lazy
        (try
            let code, _, _ = run python [ "-c"; "import numpy" ]
            code = 0
         with _ -> false)

let private sha256 (bytes: byte[]) = Convert.ToHexString(SHA256.HashData bytes).ToLowerInvariant()

/// A tensor's bytes as the file holds them (host, contiguous, little-endian).
let private bytesOf (t: torch.Tensor) =
    use host = t.detach().cpu().contiguous()
    host.bytes.ToArray()

/// The numpy type of a TorchSharp type, as an .npy header writes it.
let private numpyType (t: torch.ScalarType) =
    match t with
    | torch.ScalarType.Float32 -> "<f4"
    | torch.ScalarType.Float64 -> "<f8"
    | torch.ScalarType.Int64 -> "<i8"
    | torch.ScalarType.Int32 -> "<i4"
    | other -> failtestf "the test expects no %A tensor in the model" other

/// The entries of an .npz (numpy.savez: a zip of .npy files): name -> (descr, shape, data bytes).
let private readNpz (path: string) =
    use zip = ZipFile.OpenRead path
    [ for entry in zip.Entries ->
          use stream = entry.Open()
          use memory = new MemoryStream()
          stream.CopyTo memory
          let bytes = memory.ToArray()
          // .npy: \x93NUMPY, major, minor, header length (2 bytes in version 1, 4 in 2 and 3), header, data.
          Expect.equal (Encoding.ASCII.GetString(bytes, 1, 5)) "NUMPY" $"{entry.Name} is an .npy file"
          let headerLength, headerStart =
              if bytes.[6] = 1uy then int (BitConverter.ToUInt16(bytes, 8)), 10 else int (BitConverter.ToUInt32(bytes, 8)), 12
          let header = Encoding.Latin1.GetString(bytes, headerStart, headerLength)
          let field (key: string) =
              let i = header.IndexOf($"'{key}': ") + key.Length + 4
              header.Substring(i, header.IndexOfAny([| ','; '}' |], if header.[i] = '(' then header.IndexOf(')', i) else i) - i).Trim()
          let name = entry.Name.Substring(0, entry.Name.Length - ".npy".Length)
          Expect.equal (field "fortran_order") "False" $"{name} is in C order"
          let shape =
              (field "shape").Trim('(', ')').Split(',', StringSplitOptions.RemoveEmptyEntries ||| StringSplitOptions.TrimEntries)
              |> Array.map int64
          name, ((field "descr").Trim('\''), shape, bytes.[headerStart + headerLength ..]) ]
    |> Map.ofList

/// A small DER++ learner on real Fashion-MNIST that has learned two tasks, saved to `file`.
let private learnedTwoTasks (file: string) =
    let d = Experiment.defaults "derpp" 50
    let config =
        { d with
            Data = { d.Data with Folder = fashionMnist; TrainPerClass = Some 30; TestPerClass = Some 20 }
            Run = { d.Run with Epochs = 1 } }
    let benchmark = Experiment.loadBenchmark config
    let learner =
        try Learner.createOn benchmark config |> Learner.learnUntil RunHooks.none CancellationToken.None (Some 1)
        with _ ->
            Benchmarks.dispose benchmark
            reraise ()
    Learner.save file learner
    learner, benchmark

/// The code block that follows `marker` in a Markdown text.
let private codeBlockAfter (marker: string) (markdown: string) =
    let start = markdown.IndexOf marker
    if start < 0 then failtestf "no '%s' in the document" marker
    let opening = markdown.IndexOf("```python\n", start)
    let body = opening + "```python\n".Length
    markdown.Substring(body, markdown.IndexOf("\n```\n", body) + 1 - body)

[<Tests>]
let tests =
    testSequenced <| testList "learner file" [
        testCase "scripts/read-learner.py reads a saved learner: its checksum, Class-IL matrix, model tensors and weights" <| fun () ->
            if not (hasFashionMnist ()) then skiptest "Fashion-MNIST is not installed"
            if not (hasNumpy.Force()) then skiptest "/usr/bin/python3 lacks numpy (Debian: apt-get install python3-numpy; scripts/setup.sh does)"
            use folder = new TempFolder()
            let file = Path.Combine(folder.Path, Learner.FileName)
            let npz = Path.Combine(folder.Path, "weights.npz")
            let learner, benchmark = learnedTwoTasks file
            try
                let code, output, errors = run python [ script (); file; "--json"; "--weights-out"; npz ]
                Expect.equal code 0 $"the script succeeds (stderr: {errors})"
                use summary = JsonDocument.Parse output
                let root = summary.RootElement
                Expect.equal (root.GetProperty("formatVersion").GetInt32()) Learner.FormatVersion "format version"
                Expect.equal (root.GetProperty("tasksLearned").GetInt32()) 2 "two tasks learned"
                Expect.equal (root.GetProperty("configHash").GetString()) (Config.hash learner.Config) "configuration hash"
                let classIl =
                    [| for row in root.GetProperty("classIl").EnumerateArray() -> [| for v in row.EnumerateArray() -> v.GetDouble() |] |]
                Expect.equal classIl.Length 2 "one Class-IL row per learned task"
                Expect.equal classIl learner.Point.Record.ClassIl "the Class-IL matrix, exactly"
                let stateDict = learner.Point.State.Model.state_dict ()
                let listed = [ for m in root.GetProperty("model").EnumerateArray() -> m ]
                Expect.equal [ for m in listed -> m.GetProperty("name").GetString() ] [ for KeyValue(name, _) in stateDict -> name ] "the model's tensor names, in order"
                let weights = readNpz npz
                Expect.equal (Set.ofSeq weights.Keys) (Set.ofSeq stateDict.Keys) "the .npz holds every model tensor"
                for m in listed do
                    let name = m.GetProperty("name").GetString()
                    let t = stateDict.[name]
                    let shape = [| for d in m.GetProperty("shape").EnumerateArray() -> d.GetInt64() |]
                    Expect.equal shape t.shape $"{name}: shape"
                    let bytes = bytesOf t
                    Expect.equal (m.GetProperty("sha256").GetString()) (sha256 bytes) $"{name}: SHA-256 of its bytes"
                    let descr, npzShape, data = weights.[name]
                    Expect.equal npzShape t.shape $"{name}: shape in the .npz"
                    Expect.equal descr (numpyType t.dtype) $"{name}: its type in the .npz"
                    Expect.isTrue (data = bytes) $"{name}: the .npz holds the model's values exactly"
            finally
                Learner.dispose learner
                Benchmarks.dispose benchmark

        testCase "a byte flipped in the data section: the script and Learner.read both refuse the file for its checksum" <| fun () ->
            if not (hasFashionMnist ()) then skiptest "Fashion-MNIST is not installed"
            if not (hasNumpy.Force()) then skiptest "/usr/bin/python3 lacks numpy (Debian: apt-get install python3-numpy; scripts/setup.sh does)"
            use folder = new TempFolder()
            let file = Path.Combine(folder.Path, Learner.FileName)
            let learner, benchmark = learnedTwoTasks file
            Learner.dispose learner
            Benchmarks.dispose benchmark
            let bytes = File.ReadAllBytes file
            let dataStart = 8 + int (BitConverter.ToUInt64(bytes, 0))
            Expect.isLessThan dataStart bytes.Length "the file has a data section"
            let flipped = Path.Combine(folder.Path, "flipped.safetensors")
            let i = dataStart + (bytes.Length - dataStart) / 2
            bytes.[i] <- bytes.[i] ^^^ 0x10uy
            File.WriteAllBytes(flipped, bytes)
            let code, output, errors = run python [ script (); flipped; "--json" ]
            Expect.notEqual code 0 "the script fails"
            Expect.equal output "" "the script prints no summary"
            Expect.stringContains errors "checksum" "the script says why"
            Expect.equal (errors.Trim().Split('\n').Length) 1 "in one line"
            Expect.throwsC (fun () -> Learner.read flipped |> Learner.discard) (function
                | LearnerFileError(_, reason) -> Expect.stringContains reason "checksum" "Learner.read says why"
                | e -> raise e)
            // A truncated copy: refused too, in one line.
            let truncated = Path.Combine(folder.Path, "truncated.safetensors")
            File.WriteAllBytes(truncated, bytes.[.. bytes.Length - 5])
            let code, _, errors = run python [ script (); truncated ]
            Expect.notEqual code 0 "the script fails on a truncated file"
            Expect.stringContains errors "truncated" "and says so"
            Expect.equal (errors.Trim().Split('\n').Length) 1 "in one line"

        testCase "docs/checkpoints.md shows scripts/read-learner.py verbatim" <| fun () ->
            let root = repositoryRoot.Force()
            let shown = codeBlockAfter "<!-- scripts/read-learner.py -->" (File.ReadAllText(Path.Combine(root, "docs", "checkpoints.md")))
            Expect.equal shown (File.ReadAllText(script ())) "the document's copy of the script"
    ]
