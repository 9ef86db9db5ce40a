namespace Continual.Data

open System
open System.IO
open System.IO.Compression

/// A data file that cannot be used, with the file's path and what is wrong with it.
exception DataFileError of path: string * reason: string
    with
        override this.Message = sprintf "%s: %s" this.path this.reason

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
        if not (File.Exists path) then fail path "file not found"
        let raw = File.ReadAllBytes path
        if raw.Length >= 2 && raw.[0] = 0x1fuy && raw.[1] = 0x8buy then
            try
                use input = new GZipStream(new MemoryStream(raw), CompressionMode.Decompress)
                use output = new MemoryStream()
                input.CopyTo output
                output.ToArray()
            with
            | :? InvalidDataException
            | :? EndOfStreamException as e -> fail path (sprintf "corrupt or truncated gzip stream (%s)" e.Message)
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
