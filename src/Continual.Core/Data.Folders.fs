namespace Continual.Data

open System
open System.IO

/// Image folders in the one-subfolder-per-class layout: `DIR/train/<class>/*.png|jpg` and
/// `DIR/test/<class>/*.png|jpg`; the class names are the subfolder names.
[<RequireQualifiedAccess>]
module ImageFolders =

    /// The subfolders of an image folder.
    let trainFolder, testFolder = "train", "test"

    let private visible (path: string) = not (Path.GetFileName(path).StartsWith ".")

    /// The class subfolders of a split folder (name, path), in sorted name order (numerically when
    /// every name is an integer). Hidden folders are skipped.
    let classFolders (split: string) : (string * string) list =
        DataFiles.checkFolder split
        let folders = Directory.GetDirectories split |> Array.filter visible |> Array.map (fun p -> Path.GetFileName p, p) |> dict
        if folders.Count = 0 then raise (DataFileError(split, "holds no class folder (the layout is train/<class>/*.png and test/<class>/*.png)"))
        Examples.sortNames folders.Keys |> List.map (fun name -> name, folders.[name])

    /// The image files of a class folder, in sorted name order; other files are skipped. A folder
    /// without an image is a DataFileError.
    let imageFiles (classFolder: string) : string[] =
        let files =
            Directory.GetFiles classFolder
            |> Array.filter (fun f -> visible f && Images.isImageFile f)
            |> Array.sortWith (fun a b -> String.CompareOrdinal(a, b))
        if files.Length = 0 then
            raise (DataFileError(classFolder, sprintf "is an empty class folder: it holds no image (%s)" (String.concat ", " Images.extensions)))
        files

    /// Reads an image folder's train and test images (a size or colour that differs from the first
    /// training image names its image): train examples, test examples, the input shape and the class names in
    /// sorted order. A test class without a training folder is a DataFileError naming it.
    let read (options: ImageOptions) (folder: string) : Examples * Examples * (int * int * int) * string list =
        DataFiles.checkFolder folder
        let trainRoot = Path.Combine(folder, trainFolder)
        let testRoot = Path.Combine(folder, testFolder)
        if not (Directory.Exists trainRoot) then
            raise (DataFileError(trainRoot, "folder not found: an image folder holds train/<class>/ and test/<class>/ subfolders of images"))
        if not (Directory.Exists testRoot) then
            raise (DataFileError(testRoot, "folder not found: an image folder holds train/<class>/ and test/<class>/ subfolders of images"))
        let trainClasses = classFolders trainRoot
        let testClasses = classFolders testRoot
        let known = trainClasses |> List.map fst |> Set.ofList
        match testClasses |> List.tryFind (fun (name, _) -> not (known.Contains name)) with
        | Some(name, path) ->
            raise (DataFileError(path, sprintf "class '%s' has test images but no training folder (%s)" name (Path.Combine(trainRoot, name))))
        | None -> ()
        let files classes = [| for (name, path) in classes do for f in imageFiles path -> f, name |]
        let trainFiles = files trainClasses
        let testFiles = files testClasses
        let train, shape = Images.readExamples options trainRoot None trainFiles
        let test, _ = Images.readExamples options testRoot (Some(fst trainFiles.[0], shape)) testFiles
        train, test, shape, List.map fst trainClasses

    /// An image folder as a benchmark: its classes in sorted name order, cut into tasks of
    /// `classesPerTask` (the last task takes what is left).
    let benchmark (options: ImageOptions) (classesPerTask: int) (folder: string) : Benchmark =
        let train, test, shape, classes = read options folder
        Examples.benchmark "folder" shape classes (Examples.chunkTasks classesPerTask classes) train test

    /// One image folder as ONE task (what `learn --task DIR` adds): a one-task benchmark whose class
    /// names are the folder's class subfolders, in sorted order.
    let task (options: ImageOptions) (folder: string) : Benchmark =
        let train, test, shape, classes = read options folder
        Examples.benchmark (Path.GetFileName(Path.TrimEndingDirectorySeparator(Path.GetFullPath folder))) shape classes [ classes ] train test
