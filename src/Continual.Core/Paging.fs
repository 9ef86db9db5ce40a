namespace Continual

open System
open System.Runtime.InteropServices

/// Page-level advice for large buffers (docs/performance.md, "Third round").
[<RequireQualifiedAccess>]
module Paging =

    [<DllImport("libc", EntryPoint = "madvise")>]
    extern int private madvise(nativeint address, unativeint length, int advice)

    /// MADV_HUGEPAGE in Linux's mman.h.
    let private hugePageAdvice = 14

    let private hugePage = 2L * 1024L * 1024L

    /// Asks Linux to back the 2 MiB-aligned pages inside a buffer (its address and length) with
    /// transparent huge pages, before anything is written to it. Where huge pages are on only for memory
    /// that asks (transparent_hugepage "madvise", as on these machines), a large buffer written once is
    /// otherwise faulted in 4 KiB at a time, and on a virtual machine each fault costs microseconds: the
    /// 47 MB of Fashion-MNIST's training pixels took 11,500 faults and about 0.1 s more to decompress.
    /// Changes no byte of the buffer; does nothing off Linux, for a buffer without a whole aligned huge
    /// page, or where the advice is refused.
    let adviseHugePages (address: nativeint) (length: int64) =
        if OperatingSystem.IsLinux() then
            let first = (int64 address + hugePage - 1L) / hugePage * hugePage
            let last = (int64 address + length) / hugePage * hugePage
            if last > first then
                try madvise (nativeint first, unativeint (last - first), hugePageAdvice) |> ignore
                with :? DllNotFoundException | :? EntryPointNotFoundException -> ()

    /// Binds `madvise` now (a call with no pages), so that a thread that advises later does not look it
    /// up while the dynamic loader is busy (Startup in the tool).
    let bind () =
        if OperatingSystem.IsLinux() then
            try madvise (0n, 0un, hugePageAdvice) |> ignore
            with :? DllNotFoundException | :? EntryPointNotFoundException -> ()
