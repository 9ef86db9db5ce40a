/// glibc's allocator, tuned once at start-up (docs/performance.md, "What changed").
module Continual.Cli.Malloc

open System
open System.Runtime.InteropServices

[<DllImport("libc.so.6", EntryPoint = "mallopt")>]
extern int private mallopt(int parameter, int value)

/// M_MMAP_THRESHOLD in glibc's malloc.h.
let private mmapThreshold = -3

/// Blocks of 8 MiB or more get their own mapping, returned to the system when freed. By default glibc
/// raises this threshold (up to 32 MiB) each time such a block is freed, after which evaluation,
/// estimation and export tensors come from the heap and their pages stay in the process: an MLP run
/// peaked 30–80 MB higher. Smaller blocks (a step's tensors, even a reduced ResNet-18's flat
/// gradients) stay in the heap, where they are reused without new page faults. Without glibc (another
/// C library) nothing changes.
let fixMmapThreshold () =
    try mallopt (mmapThreshold, 8 * 1024 * 1024) |> ignore
    with :? DllNotFoundException | :? EntryPointNotFoundException -> ()
