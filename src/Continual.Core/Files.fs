namespace Continual

open System
open System.IO

/// Writing files so that a reader never sees a half-written one.
[<RequireQualifiedAccess>]
module Files =

    /// Writes bytes to a path atomically: a temporary file in the same folder, then a rename over the
    /// target. The folder is created when missing; the temporary file never outlives a failure.
    let writeAtomically (path: string) (content: byte[]) =
        let full = Path.GetFullPath path
        let directory = Path.GetDirectoryName full
        Directory.CreateDirectory directory |> ignore
        let temporary = Path.Combine(directory, sprintf ".%s.%s.tmp" (Path.GetFileName full) (Guid.NewGuid().ToString "N"))
        try
            File.WriteAllBytes(temporary, content)
            File.Move(temporary, full, true)
        finally
            if File.Exists temporary then File.Delete temporary

    /// Writes a file atomically through a stream: a temporary file in the same folder, written by
    /// `write`, flushed to the disk, then renamed over the target. A process killed at any instant
    /// leaves the previous file or the new one, never a mix, and at most a hidden temporary file
    /// (`.NAME.*.tmp`), which the next write of the same file removes.
    let writeAtomicallyWith (path: string) (write: Stream -> unit) =
        let full = Path.GetFullPath path
        let directory = Path.GetDirectoryName full
        Directory.CreateDirectory directory |> ignore
        let name = Path.GetFileName full
        for stale in Directory.EnumerateFiles(directory, sprintf ".%s.*.tmp" name) do
            try File.Delete stale with _ -> ()
        let temporary = Path.Combine(directory, sprintf ".%s.%s.tmp" name (Guid.NewGuid().ToString "N"))
        try
            (use stream = new FileStream(temporary, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 <<< 16)
             write stream
             stream.Flush true)
            File.Move(temporary, full, true)
        finally
            if File.Exists temporary then File.Delete temporary

/// The names a run folder's writers and readers share (the command line writes run folders; `export`
/// and `verify` read them).
[<RequireQualifiedAccess>]
module RunFolder =

    /// Present while a run writes its folder, removed when it publishes its results: a folder with it
    /// holds a run that did not finish.
    [<Literal>]
    let IncompleteMarker = ".continual-incomplete"

    /// The folder inside a run's folder where the run writes until it publishes.
    [<Literal>]
    let Staging = ".staging"

    /// Whether a folder holds a run that did not finish.
    let isIncomplete (folder: string) = File.Exists(Path.Combine(folder, IncompleteMarker))

/// Fault injection for crash tests: with CONTINUAL_KILL_AT=MOMENT:N in the environment, the process
/// kills itself with SIGKILL the N-th time it reaches MOMENT (e.g. `step:37`, the run's 37th step;
/// `task-end:2`, right after the 2nd task-end checkpoint of the process; `compare-run:1`, right after
/// `compare` wrote its 1st run's results; `checkpoint-write:3`, halfway
/// through writing the 3rd checkpoint; `checkpoint-rename:3`, after writing it and before the rename).
/// MOMENT:N:INT or MOMENT:N:TERM sends SIGINT or SIGTERM instead, through the process's own handlers.
/// Without the variable it does nothing.
///
/// With CONTINUAL_FILL_DISK_AT=MOMENT (test-only; e.g. `results`, right before a run writes its results)
/// the process fills the file system of the folder it is about to write with a filler file
/// (`.continual-disk-filler` in that folder) when it reaches MOMENT, so that the write that follows
/// meets a real "no space left on device". It refuses to fill more than 256 MiB of free space, so it
/// only ever fills a small file system a test mounted for it (a tmpfs).
[<RequireQualifiedAccess>]
module Faults =

    [<Runtime.InteropServices.DllImport("libc", EntryPoint = "kill", SetLastError = true)>]
    extern int private sendSignal(int pid, int signal)

    let private target =
        match Environment.GetEnvironmentVariable "CONTINUAL_KILL_AT" with
        | null | "" -> None
        | spec ->
            let parts = spec.Split ':'
            let signal = if parts.Length = 3 then parts.[2].Trim().ToUpperInvariant() else "KILL"
            if parts.Length < 2 || parts.Length > 3 then None
            else
                match Int64.TryParse parts.[1] with
                | true, n -> Some(parts.[0].Trim(), n, signal)
                | _ -> None

    let private counts = Collections.Generic.Dictionary<string, int64>()

    /// True when fault injection is on (a cheap check for hot paths).
    let enabled = target.IsSome

    /// Marks a moment by its own count: the process is signalled when it is the one asked for.
    let reached (moment: string) (count: int64) =
        match target with
        | Some(m, n, signal) when m = moment && n = count ->
            Console.Out.Flush()
            match signal with
            | "INT" -> sendSignal (Environment.ProcessId, 2) |> ignore
            | "TERM" -> sendSignal (Environment.ProcessId, 15) |> ignore
            | _ ->
                Diagnostics.Process.GetCurrentProcess().Kill()
                Threading.Thread.Sleep Threading.Timeout.Infinite
        | _ -> ()

    /// Marks a moment counted per process (1 the first time).
    let tick (moment: string) =
        if enabled then
            let n = (match counts.TryGetValue moment with | true, c -> c | _ -> 0L) + 1L
            counts.[moment] <- n
            reached moment n

    /// The filler file that `fillDisk` leaves in the folder it fills.
    [<Literal>]
    let DiskFillerName = ".continual-disk-filler"

    /// The most free space `fillDisk` fills: more means the file system is not a test's small one.
    let private maxFill = 256L * 1024L * 1024L

    /// Fills the file system of `folder` when CONTINUAL_FILL_DISK_AT names `moment` (see above):
    /// zeros are written to a filler file in ever smaller chunks until none fits.
    let fillDisk (moment: string) (folder: string) =
        match Environment.GetEnvironmentVariable "CONTINUAL_FILL_DISK_AT" with
        | m when not (isNull m) && m.Trim() = moment && DriveInfo(folder).AvailableFreeSpace <= maxFill ->
            use filler = new FileStream(Path.Combine(folder, DiskFillerName), FileMode.Create, FileAccess.Write, FileShare.None, 1)
            for chunk in [ 1 <<< 20; 1 <<< 12; 1 ] do
                let zeros = Array.zeroCreate<byte> chunk
                let mutable room = true
                while room do
                    try
                        filler.Write(zeros, 0, chunk)
                        filler.Flush true
                    with :? IOException ->
                        room <- false
        | _ -> ()
