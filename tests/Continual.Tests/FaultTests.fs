/// Faults a hostile but realistic user meets, run through the real `continual` program: each case
/// checks the exit code, one line "error: ..." on stderr without a stack trace, and what is left on disk.
module Continual.Tests.FaultTests

open System
open System.Diagnostics
open System.IO
open Expecto
open Continual.Data
open Continual.Tests.TestData

/// Runs `continual` to its end: exit code, standard output, standard error.
let private execute (args: string list) = CliProcess.execute args []

let private lines (text: string) =
    text.Split('\n') |> Array.map (fun l -> l.TrimEnd '\r') |> Array.filter (fun l -> l.Trim() <> "")

/// Runs a case that must fail: the exit code, exactly one line on stderr starting "error:" (holding
/// `fragment`), no stack trace, and no `out` folder afterwards (the case fails before any work).
let private expectFault (label: string) (code: int) (fragment: string) (out: string option) (args: string list) =
    let actual, output, errors = execute args
    Expect.equal actual code (sprintf "%s: exit code (stdout: %s; stderr: %s)" label output errors)
    let errorLines = lines errors
    Expect.equal errorLines.Length 1 (sprintf "%s: one line on stderr, got:\n%s" label errors)
    Expect.isTrue (errorLines.[0].StartsWith "error: ") (sprintf "%s: the line starts with 'error: ': %s" label errorLines.[0])
    Expect.stringContains errorLines.[0] fragment (sprintf "%s: the message says what is wrong" label)
    Expect.isFalse (errors.Contains "   at ") (sprintf "%s: no stack trace" label)
    Expect.isFalse (output.Contains "error") (sprintf "%s: nothing about the error on stdout: %s" label output)
    match out with
    | Some folder -> Expect.isFalse (Directory.Exists folder) (sprintf "%s: nothing written to %s" label folder)
    | None -> ()

/// Small runs: 20 training and 10 test images per class, no progress bars, no ONNX files.
let private small = [ "--train-per-class"; "20"; "--test-per-class"; "10"; "--quiet" ]

/// Writes an MNIST-style folder with the given training and test labels (synthetic images).
let private writeFolder (folder: string) (trainLabels: byte[]) (testLabels: byte[]) =
    Directory.CreateDirectory folder |> ignore
    Idx.writeImages (Path.Combine(folder, "train-images-idx3-ubyte.gz")) (syntheticImages 1 trainLabels)
    Idx.writeLabels (Path.Combine(folder, "train-labels-idx1-ubyte.gz")) trainLabels
    Idx.writeImages (Path.Combine(folder, "t10k-images-idx3-ubyte.gz")) (syntheticImages 2 testLabels)
    Idx.writeLabels (Path.Combine(folder, "t10k-labels-idx1-ubyte.gz")) testLabels

/// Small CIFAR-10 batches in the real format: 20 records in each of the six batches.
let private writeCifar (folder: string) =
    Directory.CreateDirectory folder |> ignore
    let rng = Random 3
    for name in Cifar.fileNames do
        let count = 20
        let labels = Array.init count (fun i -> byte (i % 10))
        Cifar.writeBatch (Path.Combine(folder, name)) labels (Array.init (count * 3072) (fun _ -> byte (rng.Next 256)))

[<Tests>]
let faults =
    testSequenced <| testList "faults" [
        test "errors go to stderr as one line; --version exits 0; --verbose adds the stack trace" {
            use tmp = new TempFolder()
            let out = Path.Combine(tmp.Path, "out")
            expectFault "run --lr 0" 2 "learning rate" (Some out) [ "run"; "--lr"; "0"; "--out"; out ]
            expectFault "an unknown option" 2 "--no-such-option" (Some out) [ "run"; "--no-such-option"; "--out"; out ]
            let code, output, errors = execute [ "--version" ]
            Expect.equal code 0 (sprintf "--version exits 0 (stderr: %s)" errors)
            Expect.isTrue (output.StartsWith "continual ") (sprintf "--version prints the version: %s" output)
            let link = Path.Combine(tmp.Path, "data")
            writeFolder link (balancedLabels 20) (balancedLabels 10)
            File.Delete(Path.Combine(link, "train-images-idx3-ubyte.gz"))
            File.CreateSymbolicLink(Path.Combine(link, "train-images-idx3-ubyte.gz"), "/nonexistent/file") |> ignore
            let code, _, errors = execute ([ "run"; "--data"; link; "--buffer"; "50"; "--out"; out; "--verbose" ] @ small)
            Expect.equal code 1 "a dangling link with --verbose: exit 1"
            Expect.isTrue ((lines errors).[0].StartsWith "error: ") "the error line comes first"
            Expect.stringContains errors "   at " "--verbose prints the stack trace"
            Expect.isFalse (Directory.Exists out) "nothing written"
        }

        test "the data files are checked before any work: dangling link, folder in a file's place, --data FILE, unreadable" {
            use tmp = new TempFolder()
            let out = Path.Combine(tmp.Path, "out")
            let data = Path.Combine(tmp.Path, "data")
            writeFolder data (balancedLabels 20) (balancedLabels 10)
            let labels = Path.Combine(data, "train-labels-idx1-ubyte.gz")
            let saved = File.ReadAllBytes labels
            File.Delete labels
            File.CreateSymbolicLink(labels, Path.Combine(tmp.Path, "gone")) |> ignore
            expectFault "a dangling link" 1 "dangling link" (Some out) ([ "run"; "--data"; data; "--buffer"; "50"; "--out"; out ] @ small)
            File.Delete labels
            Directory.CreateDirectory labels |> ignore
            expectFault "a folder in a file's place" 1 "is a folder, not a data file" (Some out) ([ "run"; "--data"; data; "--buffer"; "50"; "--out"; out ] @ small)
            Directory.Delete labels
            File.WriteAllBytes(labels, saved)
            let file = Path.Combine(data, "t10k-labels-idx1-ubyte.gz")
            expectFault "--data FILE" 2 "is a file, not a folder" (Some out) ([ "run"; "--data"; file; "--buffer"; "50"; "--out"; out ] @ small)
            // Root reads any file whatever its mode: the unreadable case is checked only as another user.
            if Environment.UserName = "root" then
                printfn "skipped: an unreadable data file (the tests run as root, whom file modes do not stop; 'faults (real processes)' runs it as nobody)"
            else
                File.SetUnixFileMode(labels, UnixFileMode.None)
                expectFault "an unreadable file" 1 "permission denied" (Some out) ([ "run"; "--data"; data; "--buffer"; "50"; "--out"; out ] @ small)
        }

        test "the device and the sizes are checked before any work" {
            use tmp = new TempFolder()
            let out = Path.Combine(tmp.Path, "out")
            if Continual.Engine.cudaAvailable () then printfn "skipped: --device cuda on the CPU build (this machine has CUDA)"
            else expectFault "--device cuda on the CPU build" 2 "needs the CUDA build" (Some out) ([ "run"; "--device"; "cuda"; "--buffer"; "50"; "--out"; out ] @ small)
            expectFault "--threads 100000" 2 "more than 4 per core" (Some out) ([ "run"; "--threads"; "100000"; "--buffer"; "50"; "--out"; out ] @ small)
            expectFault "--buffer 2147483647" 2 "larger than the training set" (Some out) ([ "run"; "--buffer"; "2147483647"; "--out"; out ] @ small)
            expectFault "iCaRL's memory over --train-per-class" 2 "larger than the training set" (Some out) ([ "run"; "--strategy"; "icarl"; "--buffer"; "201"; "--out"; out ] @ small)
            // Over the training set actually in the folder (200 images), known once it is read.
            let data = Path.Combine(tmp.Path, "data")
            writeFolder data (balancedLabels 20) (balancedLabels 10)
            expectFault "a buffer over the folder's training set" 2 "larger than the training set" (Some out) [ "run"; "--data"; data; "--buffer"; "300"; "--out"; out; "--quiet"; "--no-onnx" ]
        }

        test "an --out that is a file or cannot be written is refused before training" {
            use tmp = new TempFolder()
            let file = Path.Combine(tmp.Path, "a-file")
            File.WriteAllText(file, "mine")
            expectFault "--out FILE" 1 "is a file, not a folder" None ([ "run"; "--buffer"; "50"; "--out"; file ] @ small)
            Expect.equal (File.ReadAllText file) "mine" "the file is untouched"
            expectFault "--out under a file" 1 "cannot be written" None ([ "run"; "--buffer"; "50"; "--out"; Path.Combine(file, "sub") ] @ small)
            expectFault "--out under /proc" 1 "cannot be written" None ([ "run"; "--buffer"; "50"; "--out"; "/proc/continual-out" ] @ small)
            // A read-only folder: root ignores modes, an immutable folder (chattr +i) stops it too.
            let locked = Path.Combine(tmp.Path, "locked")
            Directory.CreateDirectory locked |> ignore
            let chattr (flag: string) =
                try
                    use p = Process.Start(ProcessStartInfo("chattr", $"{flag} {locked}", RedirectStandardError = true, UseShellExecute = false))
                    p.WaitForExit()
                    p.ExitCode = 0
                with _ -> false
            if chattr "+i" then
                try expectFault "a read-only --out" 1 "cannot be written" None ([ "run"; "--buffer"; "50"; "--out"; locked ] @ small)
                finally chattr "-i" |> ignore
                Expect.isEmpty (Directory.GetFileSystemEntries locked) "nothing written to the read-only folder"
            else
                printfn "skipped: a read-only --out (chattr +i is refused here, and root ignores file modes)"
        }

        test "meaningless data is refused: empty sets, a class without examples, cut CIFAR batches, corrupt gzip" {
            use tmp = new TempFolder()
            let out = Path.Combine(tmp.Path, "out")
            let folder name = Path.Combine(tmp.Path, name)
            let runOn data extra = [ "run"; "--data"; data; "--strategy"; "sgd"; "--out"; out; "--quiet"; "--no-onnx" ] @ extra
            writeFolder (folder "empty-test") (balancedLabels 20) [||]
            expectFault "a test set with 0 images" 1 "holds 0 images" (Some out) (runOn (folder "empty-test") [])
            writeFolder (folder "empty-train") [||] (balancedLabels 10)
            expectFault "an empty training set" 1 "holds 0 images" (Some out) (runOn (folder "empty-train") [])
            let withoutSeven = balancedLabels 20 |> Array.filter (fun l -> l <> 7uy)
            writeFolder (folder "no-seven") withoutSeven (balancedLabels 10)
            expectFault "a class without training examples" 1 "no example of class 7" (Some out) (runOn (folder "no-seven") [])
            let code, output, errors = execute (runOn (folder "no-seven") [ "--allow-missing-classes" ])
            Expect.equal code 0 (sprintf "--allow-missing-classes runs anyway (stdout: %s; stderr: %s)" output errors)
            Directory.Delete(out, true)
            // CIFAR-10: a batch cut inside a record, and one cut at a record boundary.
            let cifar = folder "cifar"
            writeCifar cifar
            let batch = Path.Combine(cifar, "data_batch_2.bin")
            let whole = File.ReadAllBytes batch
            let cifarRun = [ "run"; "--benchmark"; "split-cifar10"; "--data"; cifar; "--strategy"; "sgd"; "--out"; out; "--quiet"; "--no-onnx" ]
            File.WriteAllBytes(batch, whole.[.. whole.Length - 100])
            expectFault "a CIFAR batch cut inside a record" 1 "not a whole number of 3073-byte records" (Some out) cifarRun
            File.WriteAllBytes(batch, whole.[.. whole.Length - 3073 - 1])
            expectFault "a CIFAR batch cut at a record boundary" 1 "holds 19 records where the other training batches hold 20" (Some out) cifarRun
            File.WriteAllBytes(batch, whole)
            let testBatch = Path.Combine(cifar, Cifar.testFileName)
            let wholeTest = File.ReadAllBytes testBatch
            File.WriteAllBytes(testBatch, wholeTest.[.. wholeTest.Length - 3073 - 1])
            expectFault "a CIFAR test batch cut at a record boundary" 1 "holds 19 records where each training batch holds 20" (Some out) cifarRun
            File.WriteAllBytes(testBatch, wholeTest)
            // gzip: an unknown compression method, damaged deflate data, and a .gz file without the signature.
            let gz = folder "gzip"
            writeFolder gz (balancedLabels 20) (balancedLabels 10)
            let labels = Path.Combine(gz, "train-labels-idx1-ubyte.gz")
            let original = File.ReadAllBytes labels
            let damaged (f: byte[] -> unit) =
                let b = Array.copy original
                f b
                File.WriteAllBytes(labels, b)
            damaged (fun b -> b.[2] <- 9uy)
            expectFault "gzip with an unknown method" 1 "corrupt gzip stream" (Some out) (runOn gz [])
            damaged (fun b -> for i in 10 .. b.Length - 9 do b.[i] <- 0xffuy)
            expectFault "damaged deflate data" 1 "corrupt gzip stream" (Some out) (runOn gz [])
            damaged (fun b -> b.[0] <- 0x92uy; b.[1] <- 0x73uy)
            expectFault "a .gz without the gzip signature" 1 "corrupt gzip stream" (Some out) (runOn gz [])
        }

        test "conflicting or ignored options get exit 2 with the reason" {
            use tmp = new TempFolder()
            let out = Path.Combine(tmp.Path, "out")
            expectFault "--buffer on sgd" 2 "--buffer does not apply to sgd" (Some out) ([ "run"; "--strategy"; "sgd"; "--buffer"; "20"; "--out"; out ] @ small)
            expectFault "--buffer on ewc" 2 "--buffer does not apply to ewc" (Some out) ([ "run"; "--strategy"; "ewc"; "--buffer"; "20"; "--out"; out ] @ small)
            expectFault "--distill on joint" 2 "no effect on joint" (Some out) ([ "run"; "--strategy"; "joint"; "--distill"; "kd"; "--out"; out ] @ small)
            expectFault "an option given twice" 2 "--seed is given more than once" (Some out) ([ "run"; "--strategy"; "sgd"; "--seed"; "1"; "--seed"; "2"; "--out"; out ] @ small)
            expectFault "compare --seeds ," 2 "--seeds: no seed given" (Some out) ([ "compare"; "--seeds"; ","; "--out"; out ] @ small)
        }
    ]
