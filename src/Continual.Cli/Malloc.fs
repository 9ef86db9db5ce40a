/// glibc's allocator, tuned once per process for the run's backbone (docs/performance.md, "What changed").
module Continual.Cli.Malloc

open System
open System.Runtime.InteropServices
open Continual

[<UnmanagedFunctionPointer(CallingConvention.Cdecl)>]
type private Mallopt = delegate of parameter: int * value: int -> int

/// glibc's `mallopt`, looked up once (None without glibc), through `Libc` rather than a DllImport so
/// that `bind` can look it up at process start (Startup).
let private mallopt = lazy (Libc.tryFunction<Mallopt> "mallopt")

/// Looks `mallopt` up now (see Startup).
let bind () = mallopt.Force() |> ignore

/// M_TRIM_THRESHOLD and M_MMAP_THRESHOLD in glibc's malloc.h.
let private trimThreshold = -1
let private mmapThreshold = -3

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
let tuneFor (backbone: string) =
    let given (name: string) = not (String.IsNullOrEmpty(Environment.GetEnvironmentVariable name))
    let tunables = Environment.GetEnvironmentVariable "GLIBC_TUNABLES"
    let userSet =
        given "MALLOC_MMAP_THRESHOLD_" || given "MALLOC_TRIM_THRESHOLD_" || (not (isNull tunables) && tunables.Contains "glibc.malloc")
    match mallopt.Force() with
    | Some set when not userSet ->
        if backbone = "mlp" then
            set.Invoke(mmapThreshold, 8 * 1024 * 1024) |> ignore
            set.Invoke(trimThreshold, 16 * 1024 * 1024) |> ignore
        else
            set.Invoke(mmapThreshold, 32 * 1024 * 1024) |> ignore
            set.Invoke(trimThreshold, 256 * 1024 * 1024) |> ignore
    | _ -> ()
