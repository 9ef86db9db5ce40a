namespace Continual.Data

open System
open System.IO
open YamlDotNet.RepresentationModel

/// Where a manifest's named classes come from.
[<RequireQualifiedAccess>]
type ManifestSource =
    /// An image folder (train/<class>/, test/<class>/).
    | Images of folder: string
    /// A folder with train.csv and test.csv.
    | Csv of folder: string
    /// A folder with x_train.npy, y_train.npy, x_test.npy, y_test.npy.
    | Npy of folder: string

/// One task of a manifest: a list of class names of the source, or one image folder of its own.
[<RequireQualifiedAccess>]
type ManifestTask =
    | Classes of names: string list
    | Folder of path: string

/// A task-stream manifest, read and checked (paths made absolute, relative to the manifest's folder).
type Manifest =
    { Path: string
      Name: string
      Source: ManifestSource option
      Image: ImageOptions
      Table: TableOptions
      /// The tasks in order, with the line each starts on.
      Tasks: (ManifestTask * int) list }

/// Task-stream manifests in YAML or JSON (JSON is YAML, so one reader takes both):
///
/// ```yaml
/// name: my-stream          # optional (default: the file's name)
/// source:                  # where the classes of `classes:` tasks come from; exactly one of
///   images: data/pets      #   an image folder, train/<class>/ and test/<class>/
///   # csv: data/table      #   a folder with train.csv and test.csv
///   # npy: data/arrays     #   a folder with x_train.npy, y_train.npy, x_test.npy, y_test.npy
///   label: label           # csv: the label column (default label)
///   scale: 255             # csv, npy: divide every feature by this
/// image: { size: 64x64, colour: rgb }   # optional: target size, colour (auto, gray, rgb)
/// tasks:
///   - classes: [cat, dog]  # a task as class names of the source, in the order given
///   - classes: [bird]      # tasks may differ in size
///   - folder: week3        # a task as an image folder of its own (its classes: its subfolders)
/// ```
[<RequireQualifiedAccess>]
module Manifest =

    let private fail (path: string) (node: YamlNode) (message: string) =
        raise (DataFileError(path, sprintf "line %d: %s" node.Start.Line message))

    let private checkKeys (path: string) (where: string) (allowed: string list) (mapping: YamlMappingNode) =
        for KeyValue(key, _) in mapping.Children do
            let name = match key with :? YamlScalarNode as s -> s.Value | _ -> "?"
            if not (List.contains name allowed) then
                fail path key (sprintf "%sunknown key '%s' (expected %s)" where name (allowed |> List.map (sprintf "'%s'") |> String.concat ", "))

    let private tryChild (mapping: YamlMappingNode) (key: string) : YamlNode option =
        match mapping.Children.TryGetValue(YamlScalarNode key) with
        | true, v -> Some v
        | _ -> None

    let private scalar (path: string) (what: string) (node: YamlNode) : string =
        match node with
        | :? YamlScalarNode as s when not (String.IsNullOrWhiteSpace s.Value) -> s.Value.Trim()
        | _ -> fail path node (sprintf "%s must be a text or a number" what)

    let private mappingOf (path: string) (what: string) (node: YamlNode) : YamlMappingNode =
        match node with
        | :? YamlMappingNode as m -> m
        | _ -> fail path node (sprintf "%s must be a mapping (key: value lines, or {...} in JSON)" what)

    /// Reads and checks a manifest: its keys, its source, its image options and its tasks (non-empty,
    /// no class named twice). Whether the named classes exist is checked by `load`, which reads the data.
    let read (path: string) : Manifest =
        DataFiles.checkReadable path
        let full = Path.GetFullPath path
        let folder = Path.GetDirectoryName full
        let resolve (p: string) = Path.GetFullPath(Path.Combine(folder, p))
        let stream = YamlStream()
        try
            use reader = new StreamReader(full)
            stream.Load reader
        with :? YamlDotNet.Core.YamlException as e ->
            raise (DataFileError(full, sprintf "line %d: not valid YAML or JSON: %s" e.Start.Line e.Message))
        if stream.Documents.Count = 0 then raise (DataFileError(full, "is empty: a manifest names its tasks (tasks: ...)"))
        let root = mappingOf full "the manifest" stream.Documents.[0].RootNode
        checkKeys full "" [ "name"; "source"; "image"; "tasks" ] root
        let name =
            match tryChild root "name" with
            | Some n -> scalar full "name" n
            | None -> Path.GetFileNameWithoutExtension full
        let mutable table = Tables.defaults
        let source =
            tryChild root "source"
            |> Option.map (fun node ->
                let m = mappingOf full "source" node
                checkKeys full "source: " [ "images"; "csv"; "npy"; "label"; "scale" ] m
                let kinds = [ "images"; "csv"; "npy" ] |> List.choose (fun k -> tryChild m k |> Option.map (fun v -> k, v))
                let source =
                    match kinds with
                    | [ "images", v ] -> ManifestSource.Images(resolve (scalar full "source.images" v))
                    | [ "csv", v ] -> ManifestSource.Csv(resolve (scalar full "source.csv" v))
                    | [ "npy", v ] -> ManifestSource.Npy(resolve (scalar full "source.npy" v))
                    | [] -> fail full node "source: name one of images, csv or npy (a folder)"
                    | _ -> fail full node "source: name only one of images, csv or npy"
                match tryChild m "label" with
                | Some v -> table <- { table with LabelColumn = scalar full "source.label" v }
                | None -> ()
                match tryChild m "scale" with
                | Some v ->
                    match Double.TryParse(scalar full "source.scale" v, Globalization.NumberStyles.Float, Globalization.CultureInfo.InvariantCulture) with
                    | true, s when s > 0.0 && Double.IsFinite s -> table <- { table with Scale = Some s }
                    | _ -> fail full v "source.scale must be a positive number (e.g. 255)"
                | None -> ()
                source)
        let image =
            match tryChild root "image" with
            | None -> ImageOptions.defaults
            | Some node ->
                let m = mappingOf full "image" node
                checkKeys full "image: " [ "size"; "colour"; "color" ] m
                { Size =
                    tryChild m "size"
                    |> Option.map (fun v ->
                        match ImageOptions.tryParseSize (scalar full "image.size" v) with
                        | Some s -> s
                        | None -> fail full v "image.size must be HxW or one number, each 1 to 4096 (e.g. 64x64)")
                  Colour =
                    match (match tryChild m "colour" with Some c -> Some c | None -> tryChild m "color") with
                    | Some v ->
                        match ImageOptions.tryParseColour (scalar full "image.colour" v) with
                        | Some c -> c
                        | None -> fail full v (sprintf "image.colour must be one of %s" (String.concat ", " ImageOptions.colourNames))
                    | None -> ColourMode.Auto }
        let tasksNode =
            match tryChild root "tasks" with
            | Some(:? YamlSequenceNode as s) -> s
            | Some other -> fail full other "tasks must be a list (one '- classes: [...]' or '- folder: DIR' a task)"
            | None -> raise (DataFileError(full, "has no 'tasks' list: a manifest names its tasks (tasks: - classes: [a, b])"))
        if tasksNode.Children.Count = 0 then fail full tasksNode "tasks is empty: a stream has at least one task"
        let firstTask = Collections.Generic.Dictionary<string, int>()
        let tasks =
            [ for (i, node) in Seq.indexed tasksNode.Children do
                  let where = sprintf "task %d: " (i + 1)
                  let m = mappingOf full (sprintf "task %d" (i + 1)) node
                  checkKeys full where [ "classes"; "folder" ] m
                  match tryChild m "classes", tryChild m "folder" with
                  | Some(:? YamlSequenceNode as s), None ->
                      if s.Children.Count = 0 then fail full s (where + "the task is empty (classes: [])")
                      let names = [ for c in s.Children -> scalar full (where + "a class name") c ]
                      for (c, cNode) in Seq.zip names s.Children do
                          match firstTask.TryGetValue c with
                          | true, t when t = i + 1 -> fail full cNode (sprintf "%sclass '%s' is named twice in the task" where c)
                          | true, t -> fail full cNode (sprintf "%sclass '%s' is already in task %d (a class belongs to one task)" where c t)
                          | _ -> firstTask.[c] <- i + 1
                      if source.IsNone then fail full node (where + "a task of class names needs a source (source: images: DIR, csv: DIR or npy: DIR)")
                      ManifestTask.Classes names, int node.Start.Line
                  | Some other, None -> fail full other (where + "classes must be a list of class names ([a, b])")
                  | None, Some f -> ManifestTask.Folder(resolve (scalar full (where + "folder") f)), int node.Start.Line
                  | Some _, Some _ -> fail full node (where + "give either classes or folder, not both")
                  | None, None -> fail full node (where + "the task is empty: give classes: [...] or folder: DIR") ]
        { Path = full; Name = name; Source = source; Image = image; Table = table; Tasks = tasks }

    /// The train and test examples of a manifest's source, their input shape and the source's folder.
    let private readSource (imageOptions: ImageOptions) (tableOptions: TableOptions) (source: ManifestSource) : Examples * Examples * (int * int * int) * string =
        match source with
        | ManifestSource.Images folder ->
            let train, test, shape, _ = ImageFolders.read imageOptions folder
            train, test, shape, folder
        | ManifestSource.Csv folder ->
            DataFiles.checkFolder folder
            let train = Tables.readCsv tableOptions (Path.Combine(folder, Tables.csvTrainFile))
            let test = Tables.readCsv tableOptions (Path.Combine(folder, Tables.csvTestFile))
            train, test, (1, 1, train.Features), folder
        | ManifestSource.Npy folder ->
            DataFiles.checkFolder folder
            let train, shape = Tables.readNpyPair tableOptions.Scale (Path.Combine(folder, "x_train.npy")) (Path.Combine(folder, "y_train.npy"))
            let test, _ = Tables.readNpyPair tableOptions.Scale (Path.Combine(folder, "x_test.npy")) (Path.Combine(folder, "y_test.npy"))
            train, test, shape, folder

    /// Reads a manifest's data and builds its benchmark: classes in task order, examples of source
    /// classes that no task names left out. Image and table options in the manifest win over the given
    /// ones. A class missing from the source, or a folder task bringing a class another task has, is a
    /// DataFileError naming the manifest, the line and the task.
    let load (image: ImageOptions) (table: TableOptions) (manifest: Manifest) : Benchmark =
        let path = manifest.Path
        let imageOptions =
            { Size = (match manifest.Image.Size with Some s -> Some s | None -> image.Size)
              Colour = (match manifest.Image.Colour with ColourMode.Auto -> image.Colour | c -> c) }
        let tableOptions =
            { LabelColumn = (if manifest.Table.LabelColumn <> Tables.defaults.LabelColumn then manifest.Table.LabelColumn else table.LabelColumn)
              Scale = (match manifest.Table.Scale with Some s -> Some s | None -> table.Scale) }
        // The examples of every part (the source, then each folder task), with their input shapes.
        let trains = ResizeArray<Examples>()
        let tests = ResizeArray<Examples>()
        let shapes = ResizeArray<int * int * int>()
        let usesSource = manifest.Tasks |> List.exists (fun (t, _) -> match t with ManifestTask.Classes _ -> true | ManifestTask.Folder _ -> false)
        let mutable present = Set.empty<string>
        let mutable origin = path
        match manifest.Source with
        | Some s when usesSource ->
            let train, test, shape, where = readSource imageOptions tableOptions s
            Examples.checkTestClasses train test
            trains.Add train
            tests.Add test
            shapes.Add shape
            present <- Set.ofArray train.Classes
            origin <- where
        | _ -> ()
        let owner = Collections.Generic.Dictionary<string, int>()
        let tasks = ResizeArray<string list>()
        manifest.Tasks
        |> List.iteri (fun i (task, line) ->
            let where = sprintf "line %d: task %d" line (i + 1)
            match task with
            | ManifestTask.Classes names ->
                for c in names do
                    if not (present.Contains c) then
                        let known = present |> Seq.truncate 12 |> Seq.map (sprintf "'%s'") |> String.concat ", "
                        raise (DataFileError(path, sprintf "%s: class '%s' is not in %s (it has %s%s)" where c origin known (if present.Count > 12 then ", ..." else "")))
                    owner.[c] <- i + 1
                tasks.Add names
            | ManifestTask.Folder folder ->
                let train, test, shape, classes = ImageFolders.read imageOptions folder
                for c in classes do
                    match owner.TryGetValue c with
                    | true, t -> raise (DataFileError(path, sprintf "%s (folder %s): class '%s' is already in task %d (a class belongs to one task)" where folder c t))
                    | _ -> owner.[c] <- i + 1
                trains.Add train
                tests.Add test
                shapes.Add shape
                tasks.Add classes)
        let shape = shapes.[0]
        for k in 1 .. shapes.Count - 1 do
            if shapes.[k] <> shape then
                let c, h, w = shapes.[k]
                let c0, h0, w0 = shape
                raise (DataFileError(trains.[k].Origin, sprintf "holds %dx%dx%d inputs where %s holds %dx%dx%d (set image: size: in %s so that every task agrees)" c h w trains.[0].Origin c0 h0 w0 path))
        let train = Examples.concat path (List.ofSeq trains)
        let test = Examples.concat path (List.ofSeq tests)
        let tasks = List.ofSeq tasks
        Examples.benchmark manifest.Name shape (List.concat tasks) tasks train test

    /// Reads a manifest file and builds its benchmark.
    let benchmark (image: ImageOptions) (table: TableOptions) (path: string) : Benchmark =
        load image table (read path)
