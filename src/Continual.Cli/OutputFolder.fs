/// A run's output folder: one writer at a time, never two runs' files mixed, an incomplete run marked.
module Continual.Cli.OutputFolder

open System
open System.IO

/// An output folder that cannot be used: the message names it and says why.
exception OutputFolderError of path: string * reason: string
    with
        override this.Message = sprintf "%s: %s" this.path this.reason

/// The lock file: held open with an exclusive lock (flock) for as long as a process writes the folder.
/// The operating system drops the lock when the process ends, however it ends.
[<Literal>]
let LockName = ".continual.lock"

/// Present while a run writes the folder, removed when its results are published: a folder with it is
/// incomplete (a stopped or killed run, which `continual resume` continues).
[<Literal>]
let MarkerName = Continual.RunFolder.IncompleteMarker

/// The folder inside a run's folder where the run writes its files (task models, checkpoints, results)
/// until it publishes them all into the run's folder at its end.
[<Literal>]
let StagingName = Continual.RunFolder.Staging

/// The files a run or a comparison writes into its folder, results.json first: removing it first turns
/// an old run into an incomplete one before anything else of it goes. A comparison's runs are folders
/// holding results files.
let private ownedFiles (folder: string) =
    let exists name = File.Exists(Path.Combine(folder, name))
    let comparedRuns =
        Directory.GetDirectories folder
        |> Array.filter (fun d -> [ "results.json"; "results.csv" ] |> List.exists (fun n -> File.Exists(Path.Combine(d, n))))
        |> Array.map Path.GetFileName
        |> Array.sort
        |> List.ofArray
    let tasks =
        Directory.GetFiles(folder, "task-*.onnx")
        |> Array.map Path.GetFileName
        |> Array.sortDescending
        |> List.ofArray
    [ yield! [ "results.json"; "compare.json" ] |> List.filter exists
      yield! [ "results.csv" ] |> List.filter exists
      yield! comparedRuns
      yield! tasks
      yield! [ "learner.safetensors" ] |> List.filter exists
      if Directory.Exists(Path.Combine(folder, StagingName)) then yield StagingName
      yield! [ MarkerName ] |> List.filter exists ]

/// The order in which staged files are published: task models, the learner, the CSV, results.json last.
let private publishOrder (name: string) =
    match name with
    | "results.json" -> 3
    | "results.csv" -> 2
    | n when n = Continual.Learner.FileName -> 1
    | _ -> 0

/// A process's hold on an output folder (dispose to let go).
type Hold(path: string, lock: FileStream, created: bool) =
    /// The folder.
    member _.Path = path
    /// Whether the folder holds a run's or a comparison's files.
    member _.HoldsResults = not (ownedFiles path).IsEmpty
    /// Whether the folder holds a run that has not published its results.
    member _.Incomplete = Continual.RunFolder.isIncomplete path
    /// Removes the files of the run the folder holds (results.json first), so that a new run starts
    /// in a folder with nothing of the old one: a kill half-way leaves part of the old run and no
    /// results.json, which readers take as incomplete.
    member _.Clear() =
        for name in ownedFiles path do
            let full = Path.Combine(path, name)
            if Directory.Exists full then Directory.Delete(full, true) else File.Delete full
    /// Where the run writes until it publishes (created on first use).
    member _.Staging =
        let staging = Path.Combine(path, StagingName)
        Directory.CreateDirectory staging |> ignore
        staging
    /// Marks the folder as holding an incomplete run of a configuration (its hash).
    member _.MarkIncomplete(configHash: string) =
        Continual.Files.writeAtomically (Path.Combine(path, MarkerName)) (Text.Encoding.UTF8.GetBytes(sprintf "{\"configHash\": \"%s\"}\n" configHash))
    /// Refuses a folder whose file system has less free space than a run's outputs need (an estimate).
    member _.EnsureSpace(bytes: int64) =
        let free = DriveInfo(path).AvailableFreeSpace
        if free < bytes then
            raise (OutputFolderError(path, sprintf "has %.1f MiB free; the run's files need about %.1f MiB (checkpoints, task models, results)" (float free / 1048576.0) (float bytes / 1048576.0)))
    /// Publishes the run: every staged file moves into the folder (results.json last), then the staging
    /// folder and the marker go. A kill half-way leaves the marker: `resume` publishes the rest.
    member _.Publish() =
        let staging = Path.Combine(path, StagingName)
        if Directory.Exists staging then
            for file in Directory.GetFiles staging |> Array.filter (fun f -> not ((Path.GetFileName f).StartsWith ".")) |> Array.sortBy (fun f -> publishOrder (Path.GetFileName f), Path.GetFileName f) do
                File.Move(file, Path.Combine(path, Path.GetFileName file), true)
            Directory.Delete(staging, true)
        File.Delete(Path.Combine(path, MarkerName))
    /// Undoes taking the folder for a run that failed before writing anything: the marker goes, and a
    /// folder this hold created goes too when nothing but the lock is in it.
    member _.Abandon() =
        File.Delete(Path.Combine(path, MarkerName))
        lock.Dispose()
        if created && Directory.GetFileSystemEntries path |> Array.forall (fun e -> Path.GetFileName e = LockName) then
            try Directory.Delete(path, true) with _ -> ()
    interface IDisposable with
        member _.Dispose() = lock.Dispose()

[<Runtime.InteropServices.DllImport("libc", SetLastError = true)>]
extern int private flock(int fd, int operation)

/// An exclusive, non-blocking flock on an open file (LOCK_EX | LOCK_NB): false while another process holds it.
let private tryLockExclusive (stream: FileStream) =
    let fd = int (stream.SafeFileHandle.DangerousGetHandle())
    flock (fd, 2 ||| 4) = 0

/// Takes the folder for this process: creates it, takes its lock (refused while another process holds
/// it), and removes temporary files a killed writer left. Raises OutputFolderError.
let acquire (path: string) : Hold =
    let full = Path.GetFullPath path
    if File.Exists full then raise (OutputFolderError(path, "is a file, not a folder"))
    let created = not (Directory.Exists full)
    try Directory.CreateDirectory full |> ignore
    with
    | :? UnauthorizedAccessException
    | :? IOException as e -> raise (OutputFolderError(path, sprintf "cannot be created (%s)" e.Message))
    let lockPath = Path.Combine(full, LockName)
    let lock =
        try
            let stream = new FileStream(lockPath, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.ReadWrite)
            if not (tryLockExclusive stream) then
                stream.Dispose()
                raise (IOException "locked")
            stream.SetLength 0L
            let pid = Text.Encoding.ASCII.GetBytes(sprintf "%d\n" Environment.ProcessId)
            stream.Write(pid, 0, pid.Length)
            stream.Flush()
            stream
        with
        | :? UnauthorizedAccessException as e -> raise (OutputFolderError(path, sprintf "is not writable (%s)" e.Message))
        | :? IOException ->
            // .NET locks every file it opens, so the holder's pid (in the lock file) is for people: `cat` shows it.
            raise (OutputFolderError(path, sprintf "is in use by another continual process (its pid is in %s); wait for it or choose another --out" LockName))
    // Nothing else writes here now: temporary files are a killed writer's.
    for folder in [ full; Path.Combine(full, StagingName) ] do
        if Directory.Exists folder then
            for stale in Directory.GetFiles(folder, ".*.tmp") do
                try File.Delete stale with _ -> ()
    new Hold(full, lock, created)

/// Takes a folder for a new run or comparison: refuses one that holds another's results unless
/// `overwrite`, which clears it first.
let acquireFresh (path: string) (overwrite: bool) : Hold =
    let hold = acquire path
    if hold.HoldsResults then
        if overwrite then hold.Clear()
        else
            let reason =
                if hold.Incomplete
                   && (File.Exists(Path.Combine(hold.Path, Continual.Learner.FileName))
                       || File.Exists(Path.Combine(hold.Path, StagingName, Continual.Learner.FileName))) then
                    sprintf "holds a run that did not finish; continue it with `continual resume %s`, or start again with --overwrite" path
                else "holds the results of another run; choose another --out, or replace them with --overwrite"
            (hold :> IDisposable).Dispose()
            raise (OutputFolderError(path, reason))
    hold
