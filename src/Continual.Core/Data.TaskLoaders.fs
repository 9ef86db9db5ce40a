namespace Continual.Data

open System
open System.Globalization
open System.IO

/// Reading one task for a learner (`continual learn --from RUN --task PATH`, C#'s `TaskData`): where a
/// task is, as a `TaskSource`, and its data as a one-task benchmark (labels 0..k-1, its own class names).
/// The kinds: "folder" (an image folder, train/<class>/ and test/<class>/), "csv" (a folder with
/// train.csv and test.csv), "npy" (a folder with x_train.npy, y_train.npy, x_test.npy, y_test.npy) and
/// "manifest" (one entry of a task-stream manifest, counted from 1).
[<RequireQualifiedAccess>]
module TaskLoaders =

    /// The kinds of task source this module reads.
    let kinds = [ "folder"; "csv"; "npy"; "manifest" ]

    /// The option names a source records (all optional): imageSize (HxW), colour (auto, gray, rgb),
    /// labelColumn, featureScale, and entry (a manifest's task, from 1).
    let private optionNames = [ "imageSize"; "colour"; "labelColumn"; "featureScale"; "entry" ]

    let private fail (path: string) (reason: string) = raise (DataFileError(path, reason))

    /// The kind of task a folder holds, from the files in it.
    let private kindOfFolder (folder: string) =
        if Directory.Exists(Path.Combine(folder, "train")) then "folder"
        elif File.Exists(Path.Combine(folder, Tables.csvTrainFile)) then "csv"
        elif File.Exists(Path.Combine(folder, "x_train.npy")) then "npy"
        else
            fail folder "holds no task: expected train/<class>/ image folders, train.csv and test.csv, or x_train.npy and the other .npy files"

    /// Where a task given on the command line is: a folder (an image folder, a CSV or an .npy folder,
    /// told apart by its files) or MANIFEST#N (the manifest's task N, counted from 1), with the options
    /// its data are read with. Fails with a DataFileError naming the path when there is no such task.
    let sourceOf (options: Map<string, string>) (given: string) : TaskSource =
        match options |> Map.toList |> List.tryFind (fun (k, _) -> not (List.contains k optionNames)) with
        | Some(k, _) -> invalidArg (nameof options) (sprintf "unknown task source option '%s' (expected one of: %s)" k (String.concat ", " optionNames))
        | None -> ()
        let hash = given.LastIndexOf '#'
        if hash > 0 then
            let path = Path.GetFullPath(given.Substring(0, hash))
            let entry = given.Substring(hash + 1)
            match Int32.TryParse(entry, NumberStyles.None, CultureInfo.InvariantCulture) with
            | true, n when n >= 1 ->
                DataFiles.checkReadable path
                { Kind = "manifest"; Path = path; Options = options.Add("entry", string n) }
            | _ -> fail given (sprintf "'%s' after # is not a task number (MANIFEST#N takes the manifest's task N, from 1)" entry)
        else
            let path = Path.GetFullPath given
            if File.Exists path then
                let extension = Path.GetExtension(path).ToLowerInvariant()
                if List.contains extension [ ".yaml"; ".yml"; ".json" ] then
                    fail given "is a manifest: name one of its tasks as MANIFEST#N (N counted from 1)"
                else fail given "is a file: a task is a folder (images, train.csv and test.csv, or .npy files) or MANIFEST#N"
            DataFiles.checkFolder path
            { Kind = kindOfFolder path; Path = path; Options = options }

    let private imageOptions (source: TaskSource) : ImageOptions =
        { Size =
            source.Options.TryFind "imageSize"
            |> Option.map (fun text ->
                match ImageOptions.tryParseSize text with
                | Some s -> s
                | None -> fail source.Path (sprintf "the task's image size '%s' is not HxW" text))
          Colour =
            match source.Options.TryFind "colour" with
            | None -> ColourMode.Auto
            | Some text ->
                match ImageOptions.tryParseColour text with
                | Some c -> c
                | None -> fail source.Path (sprintf "the task's colour '%s' is not one of %s" text (String.concat ", " ImageOptions.colourNames)) }

    let private tableOptions (source: TaskSource) : TableOptions =
        { LabelColumn = defaultArg (source.Options.TryFind "labelColumn") Tables.defaults.LabelColumn
          Scale =
            source.Options.TryFind "featureScale"
            |> Option.map (fun text ->
                match Double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture) with
                | true, s when s > 0.0 && Double.IsFinite s -> s
                | _ -> fail source.Path (sprintf "the task's feature scale '%s' is not a positive number" text)) }

    /// A one-task benchmark holding all of a benchmark's classes as its one task.
    let private asOneTask (benchmark: Benchmark) =
        { benchmark with Tasks = [ { Index = 0; Classes = [ 0 .. benchmark.NumClasses - 1 ] } ] }

    /// Reads a task's data: a one-task benchmark (the caller frees it).
    let load (source: TaskSource) : Benchmark =
        match source.Kind with
        | "folder" -> ImageFolders.task (imageOptions source) source.Path
        | "csv" -> Tables.csvBenchmark (tableOptions source) Int32.MaxValue source.Path |> asOneTask
        | "npy" -> Tables.npyBenchmark (tableOptions source).Scale Int32.MaxValue source.Path |> asOneTask
        | "manifest" ->
            let manifest = Manifest.read source.Path
            let entry =
                match source.Options.TryFind "entry" |> Option.map Int32.TryParse with
                | Some(true, n) -> n
                | _ -> fail source.Path "a manifest task needs its entry number"
            if entry > manifest.Tasks.Length then
                fail source.Path (sprintf "has %d tasks: there is no task %d" manifest.Tasks.Length entry)
            Manifest.load (imageOptions source) (tableOptions source) { manifest with Tasks = [ manifest.Tasks.[entry - 1] ] }
        | other -> fail source.Path (sprintf "unknown kind of task source '%s' (expected one of: %s)" other (String.concat ", " kinds))
