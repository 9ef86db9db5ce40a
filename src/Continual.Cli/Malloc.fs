/// glibc's allocator, tuned once per process for the run's backbone (docs/performance.md, "What changed").
module Continual.Cli.Malloc

open System
open System.Runtime.InteropServices
open Continual

[<UnmanagedFunctionPointer(CallingConvention.Cdecl)>]
type private Mallopt = delegate of parameter: int * value: int -> int

[<UnmanagedFunctionPointer(CallingConvention.Cdecl)>]
type private Allocate = delegate of size: unativeint -> nativeint

[<UnmanagedFunctionPointer(CallingConvention.Cdecl)>]
type private Release = delegate of address: nativeint -> unit

[<UnmanagedFunctionPointer(CallingConvention.Cdecl)>]
type private BreakEnd = delegate of increment: nativeint -> nativeint

/// glibc's `mallopt`, `malloc`, `free` and `sbrk`, looked up once (None without glibc), through `Libc`
/// rather than a DllImport so that `bind` can look them up at process start (Startup).
let private mallopt = lazy (Libc.tryFunction<Mallopt> "mallopt")
let private allocate = lazy (Libc.tryFunction<Allocate> "malloc")
let private release = lazy (Libc.tryFunction<Release> "free")
let private breakEnd = lazy (Libc.tryFunction<BreakEnd> "sbrk")

/// Looks glibc's allocator functions up now (see Startup).
let bind () =
    mallopt.Force() |> ignore
    allocate.Force() |> ignore
    release.Force() |> ignore
    breakEnd.Force() |> ignore

/// M_TRIM_THRESHOLD and M_MMAP_THRESHOLD in glibc's malloc.h, and glibc's default for both.
let private trimThreshold = -1
let private mmapThreshold = -3
let private glibcDefault = 128 * 1024

/// glibc's largest heap of a thread's arena on 64-bit (HEAP_MAX_SIZE): each is a mapping of this size,
/// aligned to it, made readable and writable as the arena grows.
let private heapMax = 64L <<< 20

let private userSet () =
    let given (name: string) = not (String.IsNullOrEmpty(Environment.GetEnvironmentVariable name))
    let tunables = Environment.GetEnvironmentVariable "GLIBC_TUNABLES"
    given "MALLOC_MMAP_THRESHOLD_" || given "MALLOC_TRIM_THRESHOLD_" || given "MALLOC_TOP_PAD_"
    || (not (isNull tunables) && tunables.Contains "glibc.malloc")

/// Serialises the thresholds between the loading thread (readyLoadingHeap, endLoad) and tuneFor.
let private gate = obj ()

/// True from readyLoadingHeap until endLoad: the heap readied for the load must not be trimmed.
let mutable private loadHeld = false

/// The thresholds tuneFor chose while the load held them (mmap, trim).
let mutable private chosen: (int * int) option = None

let private apply (set: Mallopt) (mmap: int, trim: int) =
    set.Invoke(mmapThreshold, mmap) |> ignore
    set.Invoke(trimThreshold, trim) |> ignore

/// Readies the calling thread's malloc heap for libtorch's load, called on the loading thread before
/// the load; returns the heap's mapping (its address and length) where it was readied. The load's
/// static initialisers allocate about 50 MB in thousands of small blocks, and each 4 KiB page of it
/// faults in at its first write: on these virtual machines a fault costs about 13 µs, and the 14,000
/// of them were a third of the load. glibc backs a thread's arena with huge pages only when asked at
/// process start (GLIBC_TUNABLES=glibc.malloc.hugetlb=1), and then only where the heap was made
/// writable in one piece. So: grow the arena's heap in one step (two blocks taken from it and given
/// back, with trimming held off so that it stays grown), and advise its whole mapping MADV_HUGEPAGE;
/// the load then faults in 2 MiB at a time. Trimming stays off until endLoad. Nothing happens (None)
/// where the thread shares the main arena, without glibc, or where the user set glibc's thresholds.
/// Changes where memory comes from, never a value.
let readyLoadingHeap () : (nativeint * int64) option =
    if OperatingSystem.IsLinux() && not (userSet ()) then
        match mallopt.Force(), allocate.Force(), release.Force(), breakEnd.Force() with
        | Some set, Some alloc, Some free, Some sbrk ->
            lock gate (fun () ->
                let probe = alloc.Invoke 64un
                try
                    // The main arena lies below the program break; a thread's arena is a mapping of its own.
                    if probe = 0n || probe < sbrk.Invoke 0n then None
                    else
                        loadHeld <- true
                        set.Invoke(trimThreshold, Int32.MaxValue) |> ignore
                        // Blocks below the mmap threshold come from the heap (at most half a heap each).
                        set.Invoke(mmapThreshold, int (heapMax / 2L)) |> ignore
                        let block = unativeint (heapMax * 7L / 16L)
                        let first = alloc.Invoke block
                        let second = alloc.Invoke block
                        let heap = nativeint (int64 probe &&& ~~~(heapMax - 1L))
                        Paging.adviseHugePages heap heapMax
                        if first <> 0n then free.Invoke first
                        if second <> 0n then free.Invoke second
                        set.Invoke(mmapThreshold, glibcDefault) |> ignore
                        Some(heap, heapMax)
                finally
                    free.Invoke probe)
        | _ -> None
    else None

/// Ends what readyLoadingHeap held, on the loading thread once the load has ended: the thresholds
/// become those tuneFor chose meanwhile, or glibc's defaults.
let endLoad () =
    lock gate (fun () ->
        if loadHeld then
            loadHeld <- false
            match mallopt.Force() with
            | Some set -> apply set (defaultArg chosen (glibcDefault, glibcDefault))
            | None -> ())

/// Sets glibc's thresholds for a run's backbone (measured in docs/performance.md; no result changes).
/// The MLP: blocks of 8 MiB or more get their own mapping, returned to the system when freed. By
/// default glibc raises this threshold (up to 32 MiB) each time such a block is freed, after which the
/// MLP's evaluation, estimation and export tensors come from the heap and their pages stay in the
/// process: an MLP run peaked 30-80 MB higher. Its steps' tensors (even the flat gradients) are far
/// smaller and stay in the heap. Setting the mmap threshold leaves the trim threshold at 128 KiB,
/// which handed the top of the heap back after nearly every large free and faulted it in again at the
/// next allocation (each task's 6 MB of test inputs for ONNX verification, the evaluation passes): a
/// 16 MiB trim threshold halved a full run's system time, with the same peak within about 10 MB. The
/// convolutional backbones: their feature maps are tens of MB, and
/// glibc's default handed them back to the system and faulted them in again at every pass; a 32 MiB
/// mmap threshold and a 256 MiB trim threshold keep them in the heap (a CNN run's system time fell
/// about ninefold). A threshold the user set (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_, or
/// glibc.malloc tunables in GLIBC_TUNABLES) is left as it is; without glibc nothing changes.
/// While libtorch's load holds the thresholds (readyLoadingHeap), they take effect at its end.
let tuneFor (backbone: string) =
    match mallopt.Force() with
    | Some set when not (userSet ()) ->
        let thresholds = if backbone = "mlp" then (8 * 1024 * 1024, 16 * 1024 * 1024) else (32 * 1024 * 1024, 256 * 1024 * 1024)
        lock gate (fun () -> if loadHeld then chosen <- Some thresholds else apply set thresholds)
    | _ -> ()
