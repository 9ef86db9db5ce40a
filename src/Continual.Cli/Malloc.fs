/// glibc's allocator, tuned once at start-up (docs/performance.md, "What changed").
module Continual.Cli.Malloc

open System
open System.Runtime.InteropServices

[<DllImport("libc.so.6", EntryPoint = "mallopt")>]
extern int private mallopt(int parameter, int value)

/// M_MMAP_THRESHOLD in glibc's malloc.h.
let private mmapThreshold = -3

/// For the MLP, blocks of 8 MiB or more get their own mapping, returned to the system when freed. By
/// default glibc raises this threshold (up to 32 MiB) each time such a block is freed, after which the
/// MLP's evaluation, estimation and export tensors come from the heap and their pages stay in the
/// process: an MLP run peaked 30-80 MB higher. Its steps' tensors (even the flat gradients) are far
/// smaller and stay in the heap. The convolutional backbones are left to glibc's default: their
/// evaluation passes make blocks of tens of MB, and mapping each anew tripled a CNN run's system time.
/// A threshold the user set (MALLOC_MMAP_THRESHOLD_, or glibc.malloc tunables in GLIBC_TUNABLES) is
/// left as it is; without glibc (another C library) nothing changes.
let tuneFor (backbone: string) =
    let given (name: string) = not (String.IsNullOrEmpty(Environment.GetEnvironmentVariable name))
    let tunables = Environment.GetEnvironmentVariable "GLIBC_TUNABLES"
    let userSet = given "MALLOC_MMAP_THRESHOLD_" || (not (isNull tunables) && tunables.Contains "glibc.malloc")
    if backbone = "mlp" && not userSet then
        try mallopt (mmapThreshold, 8 * 1024 * 1024) |> ignore
        with :? DllNotFoundException | :? EntryPointNotFoundException -> ()
