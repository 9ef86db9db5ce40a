namespace Continual

open System
open System.Runtime.InteropServices

/// glibc's functions that the tool calls directly, each looked up once through NativeLibrary and
/// called through a delegate. Unlike a DllImport, which is bound at its first call (and binding waits
/// for the dynamic loader while it loads libtorch: Startup in the tool), a lookup happens when asked.
[<RequireQualifiedAccess>]
module Libc =

    /// The function `name` of glibc as a delegate of type 'F, None without glibc or the function.
    let tryFunction<'F when 'F :> Delegate> (name: string) : 'F option =
        match NativeLibrary.TryLoad "libc.so.6" with
        | true, libc ->
            match NativeLibrary.TryGetExport(libc, name) with
            | true, address -> Some(Marshal.GetDelegateForFunctionPointer<'F> address)
            | _ -> None
        | _ -> None

[<UnmanagedFunctionPointer(CallingConvention.Cdecl)>]
type private Madvise = delegate of address: nativeint * length: unativeint * advice: int -> int

/// Page-level advice for large buffers (docs/performance.md, "Third round").
[<RequireQualifiedAccess>]
module Paging =

    /// MADV_HUGEPAGE in Linux's mman.h.
    let private hugePageAdvice = 14

    let private hugePage = 2L * 1024L * 1024L

    let private madvise = lazy (if OperatingSystem.IsLinux() then Libc.tryFunction<Madvise> "madvise" else None)

    /// Asks Linux to back the 2 MiB-aligned pages inside a buffer (its address and length) with
    /// transparent huge pages, before anything is written to it. Where huge pages are on only for memory
    /// that asks (transparent_hugepage "madvise", as on these machines), a large buffer written once is
    /// otherwise faulted in 4 KiB at a time, and on a virtual machine each fault costs microseconds: the
    /// 47 MB of Fashion-MNIST's training pixels took 11,500 faults and about 0.1 s more to decompress.
    /// Changes no byte of the buffer; does nothing off Linux, for a buffer without a whole aligned huge
    /// page, or where the advice is refused.
    let adviseHugePages (address: nativeint) (length: int64) =
        let first = (int64 address + hugePage - 1L) / hugePage * hugePage
        let last = (int64 address + length) / hugePage * hugePage
        match madvise.Force() with
        | Some advise when last > first -> advise.Invoke(nativeint first, unativeint (last - first), hugePageAdvice) |> ignore
        | _ -> ()

    /// Looks `madvise` up now, so that a thread that advises later does not look it up while the
    /// dynamic loader is busy (Startup in the tool).
    let bind () = madvise.Force() |> ignore
