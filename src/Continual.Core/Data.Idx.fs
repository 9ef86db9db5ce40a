namespace Continual.Data

open System
open System.IO
open System.IO.Compression

/// A data file that cannot be used, with the file's path and what is wrong with it.
exception DataFileError of path: string * reason: string
    with
        override this.Message = sprintf "%s: %s" this.path this.reason

/// Checks on data folders and files before they are read.
[<RequireQualifiedAccess>]
module DataFiles =

    /// Fails with a DataFileError unless the folder is an existing folder ("is a file, not a folder"
    /// for a file given in its place).
    let checkFolder (folder: string) =
        if File.Exists folder then raise (DataFileError(folder, "is a file, not a folder; --data takes the folder that holds the data files"))
        if not (Directory.Exists folder) then raise (DataFileError(folder, "data folder not found"))

    /// Whether something (a file, a folder or a link, even a dangling one) is at the path.
    let exists (path: string) =
        File.Exists path || Directory.Exists path || not (isNull (FileInfo(path).LinkTarget))

    /// Fails with a DataFileError unless the path is a regular file (or a link to one) that this
    /// process can open for reading: a dangling link, a folder in a file's place and an unreadable
    /// file each get their own message.
    let checkReadable (path: string) =
        let info = FileInfo path
        if Directory.Exists path then raise (DataFileError(path, "is a folder, not a data file"))
        match info.LinkTarget with
        | null -> if not info.Exists then raise (DataFileError(path, "file not found"))
        | target ->
            let final = try info.ResolveLinkTarget true with :? IOException -> null
            if isNull final || not final.Exists then
                raise (DataFileError(path, sprintf "is a symbolic link to %s, which does not exist (a dangling link)" target))
        try
            use _ = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read)
            ()
        with
        | :? UnauthorizedAccessException -> raise (DataFileError(path, "cannot be read: permission denied"))
        | :? IOException as e -> raise (DataFileError(path, sprintf "cannot be read: %s" e.Message))

/// Images from an IDX file: `count` images of rows x cols unsigned bytes, row-major, one after another.
type IdxImages =
    { Count: int
      Rows: int
      Cols: int
      Pixels: byte[] }

/// Reading and writing the IDX format (LeCun's MNIST format; plain or gzip-compressed).
[<RequireQualifiedAccess>]
module Idx =

    /// Magic number of an IDX file of unsigned bytes with three dimensions (images).
    [<Literal>]
    let ImagesMagic = 0x00000803

    /// Magic number of an IDX file of unsigned bytes with one dimension (labels).
    [<Literal>]
    let LabelsMagic = 0x00000801

    let private fail path reason = raise (DataFileError(path, reason))

    let private readAllBytes (path: string) : byte[] =
        DataFiles.checkReadable path
        let raw = File.ReadAllBytes path
        if raw.Length >= 2 && raw.[0] = 0x1fuy && raw.[1] = 0x8buy then
            if raw.Length < 18 then fail path (sprintf "corrupt gzip stream: %d bytes, shorter than a gzip header and trailer" raw.Length)
            if raw.[2] <> 8uy then fail path (sprintf "corrupt gzip stream: compression method %d in the header (gzip uses 8, deflate)" raw.[2])
            try
                use input = new GZipStream(new MemoryStream(raw), CompressionMode.Decompress)
                use output = new MemoryStream()
                input.CopyTo output
                // The trailer records the uncompressed size (mod 2^32); fewer bytes mean a cut stream.
                let recorded = BitConverter.ToUInt32(raw, raw.Length - 4)
                if uint32 (output.Length % 4294967296L) < recorded then
                    fail path (sprintf "corrupt gzip stream: truncated (%d bytes decompressed, the trailer records %d)" output.Length recorded)
                output.ToArray()
            with
            | :? InvalidDataException -> fail path "corrupt gzip stream: the compressed data is damaged"
            | :? EndOfStreamException -> fail path "corrupt gzip stream: truncated"
        elif path.EndsWith(".gz", StringComparison.OrdinalIgnoreCase) then
            fail path (sprintf "corrupt gzip stream: the file is named .gz but does not start with the gzip signature 1f 8b (it starts with %s)"
                           (raw |> Array.truncate 2 |> Array.map (sprintf "%02x") |> String.concat " "))
        else
            raw

    let private bigEndianInt (bytes: byte[]) (offset: int) =
        (int bytes.[offset] <<< 24) ||| (int bytes.[offset + 1] <<< 16) ||| (int bytes.[offset + 2] <<< 8) ||| int bytes.[offset + 3]

    let private header (path: string) (bytes: byte[]) (expectedMagic: int) (what: string) (dims: int) =
        let headerLength = 4 + 4 * dims
        if bytes.Length < 4 then
            fail path (sprintf "truncated: %d bytes, too short for an IDX magic number" bytes.Length)
        let magic = bigEndianInt bytes 0
        if magic <> expectedMagic then
            fail path (sprintf "wrong magic number 0x%08X (expected 0x%08X for IDX %s)" magic expectedMagic what)
        if bytes.Length < headerLength then
            fail path (sprintf "truncated: %d bytes, shorter than the %d-byte IDX header of %s" bytes.Length headerLength what)
        let sizes = Array.init dims (fun d -> bigEndianInt bytes (4 + 4 * d))
        if sizes |> Array.exists (fun s -> s < 0) then fail path "negative dimension in the IDX header"
        let expected = int64 headerLength + (sizes |> Array.fold (fun acc s -> acc * int64 s) 1L)
        if int64 bytes.Length < expected then
            fail path (sprintf "truncated: the header promises %d bytes, the file holds %d" expected bytes.Length)
        if int64 bytes.Length > expected then
            fail path (sprintf "%d unexpected bytes after the %d the header promises" (int64 bytes.Length - expected) expected)
        sizes, headerLength

    /// Reads an IDX image file (magic 0x00000803), gzip or plain.
    let readImages (path: string) : IdxImages =
        let bytes = readAllBytes path
        let sizes, offset = header path bytes ImagesMagic "images" 3
        { Count = sizes.[0]
          Rows = sizes.[1]
          Cols = sizes.[2]
          Pixels = bytes.AsSpan(offset).ToArray() }

    /// Reads an IDX label file (magic 0x00000801), gzip or plain.
    let readLabels (path: string) : byte[] =
        let bytes = readAllBytes path
        let _, offset = header path bytes LabelsMagic "labels" 1
        bytes.AsSpan(offset).ToArray()

    let private writeAtomically (path: string) (content: byte[]) =
        let bytes =
            if path.EndsWith(".gz", StringComparison.OrdinalIgnoreCase) then
                use output = new MemoryStream()
                (use gz = new GZipStream(output, CompressionLevel.Fastest, true)
                 gz.Write(content, 0, content.Length))
                output.ToArray()
            else
                content
        Continual.Files.writeAtomically path bytes

    let private bigEndianBytes (v: int) =
        [| byte (v >>> 24); byte (v >>> 16); byte (v >>> 8); byte v |]

    /// Writes images in the IDX format (gzip when the path ends in .gz), atomically.
    let writeImages (path: string) (images: IdxImages) =
        if images.Pixels.Length <> images.Count * images.Rows * images.Cols then
            invalidArg (nameof images) "pixel count does not match count x rows x cols"
        let content =
            Array.concat [ bigEndianBytes ImagesMagic
                           bigEndianBytes images.Count
                           bigEndianBytes images.Rows
                           bigEndianBytes images.Cols
                           images.Pixels ]
        writeAtomically path content

    /// Writes labels in the IDX format (gzip when the path ends in .gz), atomically.
    let writeLabels (path: string) (labels: byte[]) =
        writeAtomically path (Array.concat [ bigEndianBytes LabelsMagic; bigEndianBytes labels.Length; labels ])
