namespace Continual.Data

open System
open System.IO

/// Tiny ImageNet in its own layout: `wnids.txt` (one WordNet id a line: the classes, in order),
/// `train/<wnid>/images/*.JPEG`, `val/images/*.JPEG` with `val/val_annotations.txt` (tab-separated:
/// file, wnid, box) and, optionally, `words.txt` (wnid, tab, readable names).
[<RequireQualifiedAccess>]
module TinyImageNet =

    /// Classes per task of Split Tiny ImageNet (200 classes make 10 tasks).
    [<Literal>]
    let ClassesPerTask = 20

    /// Tiny ImageNet's image size.
    let imageSize = 64, 64

    /// The images' options: 64 × 64 RGB unless the caller sets a size (grayscale files, which Tiny
    /// ImageNet has a few of, are repeated in each channel; a colour mode other than auto is kept).
    let options (given: ImageOptions) =
        { Size = Some(defaultArg given.Size imageSize)
          Colour = (match given.Colour with ColourMode.Auto -> ColourMode.Rgb | c -> c) }

    let private lines (path: string) =
        DataFiles.checkReadable path
        File.ReadAllLines path |> Array.mapi (fun i l -> i + 1, l.Trim()) |> Array.filter (fun (_, l) -> l <> "")

    /// The class ids of wnids.txt, in order; duplicates and a count that is not a positive multiple of
    /// 20 are refused.
    let readWnids (folder: string) : string list =
        let path = Path.Combine(folder, "wnids.txt")
        let wnids = lines path
        if wnids.Length = 0 then raise (DataFileError(path, "lists no class"))
        let seen = Collections.Generic.HashSet<string>()
        for (line, w) in wnids do
            if not (seen.Add w) then raise (DataFileError(path, sprintf "line %d: class %s is listed twice" line w))
        if wnids.Length % ClassesPerTask <> 0 then
            raise (DataFileError(path, sprintf "lists %d classes; Split Tiny ImageNet takes tasks of %d classes, so the count must be a multiple of %d (Tiny ImageNet has 200)" wnids.Length ClassesPerTask ClassesPerTask))
        wnids |> Array.map snd |> List.ofArray

    /// Readable class names from words.txt where it is there (the wnids otherwise); a name two classes
    /// share gets its wnid added.
    let classNames (folder: string) (wnids: string list) : string list =
        let path = Path.Combine(folder, "words.txt")
        if not (File.Exists path) then wnids
        else
            let words =
                lines path
                |> Array.choose (fun (_, l) ->
                    match l.Split('\t', 2) with
                    | [| w; name |] when name.Trim() <> "" -> Some(w.Trim(), name.Trim())
                    | _ -> None)
                |> dict
            let named = wnids |> List.map (fun w -> match words.TryGetValue w with | true, n -> n | _ -> w)
            let counts = named |> List.countBy id |> dict
            List.map2 (fun w n -> if counts.[n] > 1 then sprintf "%s (%s)" n w else n) wnids named

    /// Split Tiny ImageNet from a folder in Tiny ImageNet's layout: classes in wnids.txt order, tasks of
    /// 20, 64 × 64 × 3, the validation images as the test set.
    let splitTinyImageNet (given: ImageOptions) (folder: string) : Benchmark =
        DataFiles.checkFolder folder
        let wnids = readWnids folder
        let names = classNames folder wnids
        let nameOf = List.zip wnids names |> dict
        let trainFiles =
            [| for w in wnids do
                   let images = Path.Combine(folder, "train", w, "images")
                   if not (Directory.Exists images) then
                       raise (DataFileError(images, sprintf "folder not found: class %s of wnids.txt needs its training images in train/%s/images/" w w))
                   for f in ImageFolders.imageFiles images -> f, nameOf.[w] |]
        let annotations = Path.Combine(folder, "val", "val_annotations.txt")
        let testFiles =
            [| for (line, l) in lines annotations do
                   let cells = l.Split '\t'
                   if cells.Length < 2 then
                       raise (DataFileError(annotations, sprintf "line %d: expected a file name and a wnid separated by a tab" line))
                   let file, w = cells.[0].Trim(), cells.[1].Trim()
                   match nameOf.TryGetValue w with
                   | true, name -> Path.Combine(folder, "val", "images", file), name
                   | _ -> raise (DataFileError(annotations, sprintf "line %d: %s has class %s, which is not in wnids.txt (a test label never seen in training)" line file w)) |]
        if testFiles.Length = 0 then raise (DataFileError(annotations, "lists no validation image"))
        let imageOptions = options given
        let train, shape = Images.readExamples imageOptions (Path.Combine(folder, "train")) None trainFiles
        let test, _ = Images.readExamples imageOptions annotations (Some(fst trainFiles.[0], shape)) testFiles
        Examples.benchmark "split-tinyimagenet" shape names (Examples.chunkTasks ClassesPerTask names) train test
