/// The start of a process that will need libtorch: its load (about 0.4 s of dynamic linking and
/// static initialisers) begins on a thread of its own before the argument parse, and overlaps the
/// parse, the checks and reading the data (docs/performance.md, "Third round").
module Continual.Cli.Startup

open System
open System.IO
open System.IO.Compression
open System.Reflection
open System.Runtime.InteropServices
open System.Threading.Tasks
open Continual
open TorchSharp

type private Marker = class end

[<UnmanagedFunctionPointer(CallingConvention.Cdecl)>]
type private ExitProcess = delegate of status: int -> unit

[<UnmanagedFunctionPointer(CallingConvention.Cdecl)>]
type private SetEnvironment = delegate of name: string * value: string * overwrite: int -> int

/// The first calls after libtorch's load, on a thread of their own (see `warmUp`).
let mutable private warming: Task option = None

/// glibc's `_exit`, looked up at the start (see `finish`).
let mutable private exitProcess: ExitProcess option = None

/// The commands that train or evaluate: each loads libtorch whatever its options (a sweep's points
/// run as processes of their own; export copies files).
let private needLibtorch = set [ "run"; "resume"; "learn"; "bench"; "bench-penalties"; "compare"; "verify" ]

/// Calls once each native function that this thread reaches before it waits for libtorch, on
/// throwaway inputs. The dynamic loader holds its lock while it loads libtorch, and the first call of a
/// P/Invoke looks its function up under the same lock (each precompiled call site on its own, so
/// `Marshal.Prelink` does not help): a function first called during the load would stop this thread
/// until the load ends, and the parse, the checks and the decompression of the data would no longer
/// overlap it. What is listed here was found with LD_DEBUG=bindings (docs/performance.md); a function
/// missed costs time, never a result. About 5 ms.
let private bindNatives () =
    // Clocks (the local time zone included), the process's start time and random identifiers.
    DateTime.Now |> ignore
    Environment.TickCount64 |> ignore
    Diagnostics.Process.GetCurrentProcess().StartTime |> ignore
    Guid.NewGuid() |> ignore
    // The terminal, as the console, Argu (its usage width) and Spectre.Console ask about it; the width
    // reads the terminal's terminfo entry.
    Console.IsOutputRedirected |> ignore
    Console.IsErrorRedirected |> ignore
    Console.IsInputRedirected |> ignore
    (try Console.WindowWidth |> ignore with _ -> ())
    // The console's own write (System.Console's Interop.Sys.Write), which the first line on stdout or
    // stderr calls, on /dev/null: there is no public way to reach it without writing to the terminal.
    (try
        match Type.GetType("Interop+Sys, System.Console", false) with
        | null -> ()
        | interop ->
            let bytePointer = typeof<byte>.MakePointerType()
            match interop.GetMethod("Write", BindingFlags.Static ||| BindingFlags.NonPublic, [| typeof<SafeHandle>; bytePointer; typeof<int> |]) with
            | null -> ()
            | write ->
                use devNull = File.OpenHandle("/dev/null", FileMode.Open, FileAccess.Write)
                let buffer = NativeMemory.Alloc 1un
                try
                    write.Invoke(null, [| box devNull; Pointer.Box(buffer, bytePointer); box 1 |]) |> ignore
                finally
                    NativeMemory.Free buffer
     with _ -> ())
    // Files and folders: look-ups and reads (the data files) ...
    let self = typeof<Marker>.Assembly.Location
    File.Exists self |> ignore
    Directory.Exists(Path.GetDirectoryName self) |> ignore
    FileInfo(self).Length |> ignore
    (use file = new FileStream(self, FileMode.Open, FileAccess.Read, FileShare.Read, 1 <<< 16)
     file.Read(Array.zeroCreate 16, 0, 16) |> ignore)
    // ... and the writes of the checks before any work (an output folder's probe file and lock).
    (try
        let folder = Directory.CreateTempSubdirectory "continual-start-"
        try
            let probe = Path.Combine(Directory.CreateDirectory(Path.Combine(folder.FullName, "sub")).FullName, "probe")
            (use file = new FileStream(probe, FileMode.CreateNew, FileAccess.ReadWrite, FileShare.None)
             file.Write([| 0uy |], 0, 1)
             file.SetLength 2L
             file.Flush false)
            // fsync, bound on /dev/null: a real file's would wait for the disk (10-40 ms here), and
            // .NET ignores the EINVAL of a device that has nothing to flush.
            (use devNull = new FileStream("/dev/null", FileMode.Open, FileAccess.Write)
             devNull.Flush true)
            File.Move(probe, probe + ".moved")
            DriveInfo(folder.FullName).AvailableFreeSpace |> ignore
        finally
            folder.Delete true
     with _ -> ())
    // gzip, both ways (IDX files, and gzip-compressed writes).
    (use packed = new MemoryStream()
     (use gz = new GZipStream(packed, CompressionLevel.Fastest, true)
      gz.Write([| 1uy |], 0, 1))
     packed.Position <- 0L
     use gz = new GZipStream(packed, CompressionMode.Decompress)
     gz.ReadByte() |> ignore)
    Malloc.bind ()
    Paging.bind ()
    exitProcess <- Libc.tryFunction<ExitProcess> "_exit"
    // The first exception thrown sets up the runtime's exception handling (a usage error is reported
    // through one).
    (try raise (InvalidOperationException "bind") with _ -> ())
    // The thread pool's first work item starts its worker and gate threads, which bind natives of their own.
    Task.Run(fun () -> ()).Wait()

/// The commands that tune glibc's allocator for their backbone (their checks call Malloc.tuneFor).
let private tunesAllocator = set [ "run"; "resume"; "learn"; "bench" ]

/// True when the arguments name a command that loads libtorch and do not ask for help.
let needsLibtorch (argv: string[]) =
    argv.Length > 0
    && needLibtorch.Contains argv.[0]
    && not (argv |> Array.exists (fun a -> a = "--help" || a = "-h" || a = "/?" || a = "--version"))

/// True when libtorch's load runs on a heap readied for it (Malloc.readyLoadingHeap): for a command
/// that tunes the allocator; the others keep glibc's own thresholds. CONTINUAL_LOAD_HEAP=0 leaves the
/// heap as it is, for comparison (docs/performance.md).
let private readiesHeap (argv: string[]) =
    Environment.GetEnvironmentVariable "CONTINUAL_LOAD_HEAP" <> "0" && tunesAllocator.Contains argv.[0]

/// Asks libtorch's CPU allocator for transparent huge pages, for a command that loads libtorch and
/// unless THP_MEM_ALLOC_ENABLE is set already. libtorch reads the variable once, at its first
/// allocation, with `getenv`, which does not see .NET's own environment block: it is set in glibc's,
/// before any other thread could read it, and in .NET's, for the processes the tool starts (the bare
/// loop). A tensor of 2 MiB or more is then advised MADV_HUGEPAGE before it is written, and a task's
/// 9.4 MB of pixel rows faults in a few huge pages instead of 2,300 small ones (about 13 µs a fault
/// on these machines). Every allocation is then aligned to a page rather than to 64 bytes, which is
/// still a multiple of 64: no kernel takes another path and no result changes.
let askHugePageTensors (argv: string[]) =
    let name = "THP_MEM_ALLOC_ENABLE"
    if OperatingSystem.IsLinux() && needsLibtorch argv && isNull (Environment.GetEnvironmentVariable name) then
        match Libc.tryFunction<SetEnvironment> "setenv" with
        | Some setenv when setenv.Invoke(name, "1", 0) = 0 -> Environment.SetEnvironmentVariable(name, "1")
        | _ -> ()

/// The first calls a run makes once libtorch is loaded, made on a thread of their own as soon as the
/// load ends, while this thread still reads the data: SHA-256 (the configuration's hash loads OpenSSL)
/// and the tensor operations of the data's and the model's set-up on throwaway tensors and a module
/// on the meta device, so that their code is compiled, their native functions bound and libtorch's
/// kernels initialised before the run gets there. Nothing here draws a random number (the run's
/// generator stays where the seed put it) or keeps a tensor.
let private warmUp (latency: Runtime.GCLatencyMode) =
    try Engine.loadLibraries () finally Runtime.GCSettings.LatencyMode <- latency
    Security.Cryptography.SHA256.HashData([| 0uy |]) |> ignore
    use scope = torch.NewDisposeScope()
    let t = torch.ScalarType.Float32
    let bytes = torch.zeros([| 4L; 8L |], dtype = torch.ScalarType.Byte)
    let index = torch.tensor([| 0L; 2L |], dtype = torch.ScalarType.Int64)
    let rows = bytes.index_select(0L, index).narrow(0L, 0L, 1L)
    let x = rows.to_type(t).div(torch.tensor(255.0f))
    let w = torch.zeros([| 3L; 8L |], dtype = t)
    let b = torch.zeros([| 3L |], dtype = t)
    let logits = torch.nn.functional.relu(torch.nn.functional.linear(x, w, b))
    let all = torch.cat([| logits; logits |], 0L)
    all.argmax(1L).eq(index).sum() |> ignore
    // A module's making (its fields' reflection, parameters, initialisation) on the meta device, whose
    // random initialisation is a no-op that leaves the CPU's generator untouched.
    use linear = torch.nn.Linear(8L, 3L, true, device = torch.device "meta")
    ()

/// Starts loading libtorch now, beside the rest of the start, for a command that needs it
/// (Engine.startLoadingLibraries), and the first calls after it (`warmUp`); nothing otherwise.
let beginLoadingLibtorch (argv: string[]) =
    if needsLibtorch argv then
        bindNatives ()
        // No background collection until the load ends (collections stay blocking meanwhile): with
        // one, the data's decompression, which allocates 55 MB beside the load, stopped until the
        // load's end, and so did every thread that allocated. (DOTNET_gcConcurrent=0 does the same;
        // the collector's background thread, made at the first background collection, is the likely
        // waiter: a thread's start takes the dynamic loader's lock.) `warmUp` puts the mode back once
        // the load has ended.
        let latency = Runtime.GCSettings.LatencyMode
        Runtime.GCSettings.LatencyMode <- Runtime.GCLatencyMode.Batch
        // A thread of its own, made before the load: a pool thread waiting for the load would hold back
        // the pool's other work (the data's decompression) on two cores.
        let loaded = new TaskCompletionSource()
        warming <- Some(Task.Factory.StartNew((fun () -> loaded.Task.Wait(); try warmUp latency with _ -> ()), TaskCreationOptions.LongRunning))
        if readiesHeap argv then
            // The main thread waits the millisecond the heap takes: tuneFor must not run beside it.
            use readied = new Threading.ManualResetEventSlim()
            Engine.startLoadingLibrariesAround (fun load ->
                (try (try Malloc.readyLoadingHeap () |> ignore with _ -> ()) finally readied.Set())
                try load () finally Malloc.endLoad ())
            readied.Wait()
        else
            Engine.startLoadingLibraries ()
        loaded.SetResult()

/// Ends the process with the command's exit code. When the command ended before libtorch's load did
/// (a usage error, a missing file: nothing of libtorch was used), the process ends at once with its
/// output flushed (`_exit`): the usual exit runs every library's finalisers, which waits for the
/// dynamic loader to finish libtorch (half a second on a usage error) and would then tear libtorch
/// down beside the thread still returning from its load. Otherwise returns the code for `main` to return.
let finish (code: int) : int =
    match exitProcess with
    | Some exitNow when Engine.librariesLoading () ->
        Console.Out.Flush()
        Console.Error.Flush()
        exitNow.Invoke code
        code
    | _ ->
        // A process must not exit while the warm-up runs in native code (a few milliseconds).
        warming |> Option.iter (fun w -> try w.Wait() with _ -> ())
        code
