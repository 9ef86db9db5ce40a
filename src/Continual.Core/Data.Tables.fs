namespace Continual.Data

open System
open System.Globalization
open System.IO
open System.Text
open System.Text.RegularExpressions

/// How a feature table is read.
type TableOptions =
    { /// The CSV column holding the labels (class names); the other columns are features.
      LabelColumn: string
      /// Every feature is divided by this (e.g. 255 for pixel values 0-255). With 255 and only integer
      /// values 0-255 the table is kept as bytes and scaled exactly as IDX images are, so a CSV of
      /// pixels gives the very same inputs as the IDX files.
      Scale: float option }

/// Feature tables: CSV files and NumPy .npy arrays.
[<RequireQualifiedAccess>]
module Tables =

    /// The label column "label", values as written.
    let defaults = { LabelColumn = "label"; Scale = None }

    /// The file names of a CSV folder.
    let csvTrainFile, csvTestFile = "train.csv", "test.csv"

    /// The file names of an .npy folder (Keras's names): features x_*, labels y_*.
    let npyFileNames = [ "x_train.npy"; "y_train.npy"; "x_test.npy"; "y_test.npy" ]

    /// The fields of one CSV line: commas separate, double quotes enclose fields with commas or quotes
    /// ("" is a quote). Fields are trimmed.
    let splitCsvLine (line: string) : string[] =
        if not (line.Contains '"') then line.Split ',' |> Array.map (fun f -> f.Trim())
        else
            let fields = ResizeArray<string>()
            let field = StringBuilder()
            let mutable quoted = false
            let mutable i = 0
            while i < line.Length do
                let c = line.[i]
                if quoted then
                    if c = '"' && i + 1 < line.Length && line.[i + 1] = '"' then
                        field.Append '"' |> ignore
                        i <- i + 1
                    elif c = '"' then quoted <- false
                    else field.Append c |> ignore
                elif c = '"' then quoted <- true
                elif c = ',' then
                    fields.Add(field.ToString().Trim())
                    field.Clear() |> ignore
                else field.Append c |> ignore
                i <- i + 1
            fields.Add(field.ToString().Trim())
            fields.ToArray()

    let private scaleFloats (scale: float option) (values: float32[]) =
        match scale with
        | Some s -> values |> Array.map (fun v -> v / float32 s)
        | None -> values

    /// Features as examples' values: bytes when the scale is 255 and every value is an integer 0-255
    /// (the IDX path, bit for bit), floats divided by the scale otherwise.
    let private valuesOf (scale: float option) (values: float32[]) =
        let byteValued = values |> Array.forall (fun v -> v >= 0.0f && v <= 255.0f && v = MathF.Round v)
        match scale with
        | Some 255.0 when byteValued -> ExampleValues.Bytes(values |> Array.map byte)
        | _ -> ExampleValues.Floats(scaleFloats scale values)

    /// Reads a CSV file: a header row, one example a line, the label column by name, every other cell a
    /// number (invariant culture). A non-numeric cell or a ragged row is a DataFileError naming the
    /// line and the column.
    let readCsv (options: TableOptions) (path: string) : Examples =
        DataFiles.checkReadable path
        use reader = new StreamReader(path, Encoding.UTF8, true)
        let header =
            match reader.ReadLine() with
            | null -> raise (DataFileError(path, "is empty: a CSV file starts with a header row naming its columns"))
            | line -> splitCsvLine line
        let labelIndex =
            match header |> Array.tryFindIndex (fun h -> h = options.LabelColumn) with
            | Some i -> i
            | None ->
                raise (DataFileError(path, sprintf "line 1: no column named '%s' for the labels (the header names %s); choose it with --label-column" options.LabelColumn
                                               (header |> Array.truncate 8 |> Array.map (sprintf "'%s'") |> String.concat ", " |> fun s -> if header.Length > 8 then s + ", ..." else s)))
        let featureCount = header.Length - 1
        if featureCount = 0 then raise (DataFileError(path, "line 1: the header names only the label column; a feature table needs at least one feature column"))
        let values = ResizeArray<float32>()
        let classes = ResizeArray<string>()
        let mutable lineNumber = 1
        let mutable line = reader.ReadLine()
        while not (isNull line) do
            lineNumber <- lineNumber + 1
            if not (String.IsNullOrWhiteSpace line) then
                let cells = splitCsvLine line
                if cells.Length <> header.Length then
                    raise (DataFileError(path, sprintf "line %d has %d cells where the header has %d columns (a ragged row)" lineNumber cells.Length header.Length))
                for column in 0 .. cells.Length - 1 do
                    if column = labelIndex then
                        if cells.[column] = "" then raise (DataFileError(path, sprintf "line %d, column %d ('%s'): the label is empty" lineNumber (column + 1) header.[column]))
                        classes.Add cells.[column]
                    else
                        match Single.TryParse(cells.[column], NumberStyles.Float, CultureInfo.InvariantCulture) with
                        | true, v when Single.IsFinite v -> values.Add v
                        | _ -> raise (DataFileError(path, sprintf "line %d, column %d ('%s'): '%s' is not a number" lineNumber (column + 1) header.[column] cells.[column]))
            line <- reader.ReadLine()
        if classes.Count = 0 then raise (DataFileError(path, "holds a header but no example"))
        { Values = valuesOf options.Scale (values.ToArray()); Features = featureCount; Classes = classes.ToArray(); Origin = path }

    /// An .npy array: its element type (NumPy's descr, e.g. "<f4"), shape and raw little-endian data.
    type NpyArray =
        { Descr: string
          Shape: int list
          Data: byte[] }

    let private headerPattern =
        Regex(@"^\{\s*'descr'\s*:\s*'(?<descr>[^']+)'\s*,\s*'fortran_order'\s*:\s*(?<fortran>True|False)\s*,\s*'shape'\s*:\s*\((?<shape>[0-9,\s]*)\)\s*,?\s*\}\s*$", RegexOptions.CultureInvariant)

    /// Reads an .npy file (format versions 1-3, C order). Whether its element type fits is the caller's
    /// question; a bad header or a wrong size is a DataFileError.
    let readNpy (path: string) : NpyArray =
        DataFiles.checkReadable path
        let bytes = File.ReadAllBytes path
        let magic = [| 0x93uy; byte 'N'; byte 'U'; byte 'M'; byte 'P'; byte 'Y' |]
        if bytes.Length < 10 || bytes.[0..5] <> magic then raise (DataFileError(path, "is not a NumPy .npy file (no \\x93NUMPY magic)"))
        let major = bytes.[6]
        let headerLength, headerStart =
            match major with
            | 1uy -> int (BitConverter.ToUInt16(bytes, 8)), 10
            | 2uy | 3uy when bytes.Length >= 12 -> int (BitConverter.ToUInt32(bytes, 8)), 12
            | v -> raise (DataFileError(path, sprintf ".npy format version %d is not supported (1, 2 and 3 are)" v))
        if headerStart + headerLength > bytes.Length then raise (DataFileError(path, "the .npy header is cut"))
        let header = Encoding.Latin1.GetString(bytes, headerStart, headerLength).Trim()
        let m = headerPattern.Match header
        if not m.Success then raise (DataFileError(path, sprintf "the .npy header cannot be read: %s" header))
        if m.Groups.["fortran"].Value = "True" then
            raise (DataFileError(path, "holds an array in Fortran order; save it in C order (numpy.ascontiguousarray)"))
        let shape =
            m.Groups.["shape"].Value.Split(',', StringSplitOptions.RemoveEmptyEntries ||| StringSplitOptions.TrimEntries)
            |> Array.map int
            |> List.ofArray
        let descr = m.Groups.["descr"].Value
        let itemSize =
            match descr.Substring 1 with
            | "f4" | "i4" | "u4" -> 4
            | "f8" | "i8" | "u8" -> 8
            | "u1" | "i1" | "b1" -> 1
            | "f2" | "i2" | "u2" -> 2
            | _ -> 0
        let dataStart = headerStart + headerLength
        let expected = (shape |> List.fold (fun a d -> a * int64 d) 1L) * int64 itemSize
        if itemSize > 0 && int64 (bytes.Length - dataStart) <> expected then
            raise (DataFileError(path, sprintf "holds %d data bytes where a %s array of shape (%s) needs %d: the file is cut or damaged" (bytes.Length - dataStart) descr (shape |> List.map string |> String.concat ", ") expected))
        { Descr = descr; Shape = shape; Data = bytes.[dataStart..] }

    /// Writes an .npy file (version 1, C order) atomically: descr as NumPy names it ("<f4", "|u1",
    /// "<i8"), the shape and the raw little-endian data.
    let writeNpy (path: string) (descr: string) (shape: int list) (data: byte[]) =
        let shapeText =
            match shape with
            | [ one ] -> sprintf "(%d,)" one
            | dims -> "(" + (dims |> List.map string |> String.concat ", ") + ")"
        let dict = sprintf "{'descr': '%s', 'fortran_order': False, 'shape': %s, }" descr shapeText
        // The header is padded with spaces to a multiple of 64 bytes, ending in a newline.
        let unpadded = 10 + dict.Length + 1
        let padding = (64 - unpadded % 64) % 64
        let header = Encoding.Latin1.GetBytes(dict + String(' ', padding) + "\n")
        let bytes =
            [| yield! [| 0x93uy; byte 'N'; byte 'U'; byte 'M'; byte 'P'; byte 'Y'; 1uy; 0uy |]
               yield! BitConverter.GetBytes(uint16 header.Length)
               yield! header
               yield! data |]
        Continual.Files.writeAtomically path bytes

    let private littleEndian (path: string) (descr: string) =
        if descr.StartsWith ">" then raise (DataFileError(path, sprintf "holds big-endian %s values; save it little-endian (array.astype('<%s'))" descr (descr.Substring 1)))

    /// Reads an .npy features array ([n, d] or [n, h, w] or [n, c, h, w]; float32, float64 or uint8):
    /// uint8 values are scaled to [0, 1] as images are, floats kept (divided by the scale when one is
    /// set). Returns the values, the feature count and the input shape.
    let readNpyFeatures (scale: float option) (path: string) : ExampleValues * int * int list * (int * int * int) =
        let a = readNpy path
        littleEndian path a.Descr
        let n, shape =
            match a.Shape with
            | [ n; d ] -> n, (1, 1, d)
            | [ n; h; w ] -> n, (1, h, w)
            | [ n; c; h; w ] -> n, (c, h, w)
            | dims -> raise (DataFileError(path, sprintf "features must be [n, d], [n, h, w] or [n, c, h, w]; this array has shape (%s)" (dims |> List.map string |> String.concat ", ")))
        let c, h, w = shape
        let features = c * h * w
        let values =
            match a.Descr.Substring 1 with
            | "u1" ->
                match scale with
                | None | Some 255.0 -> ExampleValues.Bytes a.Data
                | Some s -> ExampleValues.Floats(a.Data |> Array.map (fun b -> float32 b / float32 s))
            | "f4" ->
                let f = Array.zeroCreate<float32> (a.Data.Length / 4)
                Buffer.BlockCopy(a.Data, 0, f, 0, a.Data.Length)
                ExampleValues.Floats(scaleFloats scale f)
            | "f8" ->
                let d = Array.zeroCreate<float> (a.Data.Length / 8)
                Buffer.BlockCopy(a.Data, 0, d, 0, a.Data.Length)
                ExampleValues.Floats(scaleFloats scale (d |> Array.map float32))
            | _ -> raise (DataFileError(path, sprintf "features of type %s are not supported (float32 '<f4', float64 '<f8' or uint8 '|u1' are)" a.Descr))
        values, features, [ n ], shape

    /// Reads an .npy labels array ([n]; int32, int64 or uint8) as class names ("0", "1", ...).
    let readNpyLabels (path: string) : string[] =
        let a = readNpy path
        littleEndian path a.Descr
        let n =
            match a.Shape with
            | [ n ] -> n
            | [ n; 1 ] -> n
            | dims -> raise (DataFileError(path, sprintf "labels must be a vector [n]; this array has shape (%s)" (dims |> List.map string |> String.concat ", ")))
        let labels : int64[] =
            match a.Descr.Substring 1 with
            | "u1" -> a.Data |> Array.map int64
            | "i4" -> Array.init n (fun i -> int64 (BitConverter.ToInt32(a.Data, 4 * i)))
            | "i8" -> Array.init n (fun i -> BitConverter.ToInt64(a.Data, 8 * i))
            | _ -> raise (DataFileError(path, sprintf "labels of type %s are not supported (int32 '<i4', int64 '<i8' or uint8 '|u1' are)" a.Descr))
        match labels |> Array.tryFindIndex (fun l -> l < 0L) with
        | Some i -> raise (DataFileError(path, sprintf "label %d at index %d is negative" labels.[i] i))
        | None -> ()
        labels |> Array.map (fun l -> l.ToString CultureInfo.InvariantCulture)

    /// Reads a features file and its labels file as examples, checking that their counts agree.
    let readNpyPair (scale: float option) (featuresPath: string) (labelsPath: string) : Examples * (int * int * int) =
        let values, features, _, shape = readNpyFeatures scale featuresPath
        let classes = readNpyLabels labelsPath
        let count =
            match values with
            | ExampleValues.Bytes b -> b.Length / max 1 features
            | ExampleValues.Floats f -> f.Length / max 1 features
        if count <> classes.Length then
            raise (DataFileError(labelsPath, sprintf "holds %d labels but %s holds %d examples" classes.Length (Path.GetFileName featuresPath) count))
        if count = 0 then raise (DataFileError(featuresPath, "holds no example"))
        { Values = values; Features = features; Classes = classes; Origin = featuresPath }, shape

    /// A table benchmark from train and test examples: classes in sorted name order (numerically when
    /// all are integers), tasks of `classesPerTask` (the last takes what is left), shape (1, 1, d) unless
    /// given.
    let benchmarkOf (name: string) (shape: int * int * int) (classesPerTask: int) (train: Examples) (test: Examples) : Benchmark =
        Examples.checkTestClasses train test
        let order = Examples.sortNames (Examples.classNames train)
        Examples.benchmark name shape order (Examples.chunkTasks classesPerTask order) train test

    /// The CSV benchmark of a folder holding train.csv and test.csv.
    let csvBenchmark (options: TableOptions) (classesPerTask: int) (folder: string) : Benchmark =
        DataFiles.checkFolder folder
        let train = readCsv options (Path.Combine(folder, csvTrainFile))
        let test = readCsv options (Path.Combine(folder, csvTestFile))
        if test.Features <> train.Features then
            raise (DataFileError(test.Origin, sprintf "has %d feature columns but %s has %d" test.Features train.Origin train.Features))
        benchmarkOf "csv" (1, 1, train.Features) classesPerTask train test

    /// The .npy benchmark of a folder holding x_train.npy, y_train.npy, x_test.npy and y_test.npy.
    let npyBenchmark (scale: float option) (classesPerTask: int) (folder: string) : Benchmark =
        DataFiles.checkFolder folder
        let file name = Path.Combine(folder, name)
        let train, shape = readNpyPair scale (file "x_train.npy") (file "y_train.npy")
        let test, testShape = readNpyPair scale (file "x_test.npy") (file "y_test.npy")
        if testShape <> shape then
            raise (DataFileError(test.Origin, sprintf "examples have shape %A but the training examples have %A" testShape shape))
        benchmarkOf "npy" shape classesPerTask train test
