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

    /// The decompressed content of an IDX file as a stream (gzip or plain), read once from the start:
    /// nothing is held in memory but the stream's buffers. `Recorded` is the uncompressed size (mod
    /// 2^32) that a gzip trailer records.
    type private Content =
        { Stream: Stream
          Recorded: uint32 option }
        interface IDisposable with
            member this.Dispose() = this.Stream.Dispose()

    let private openContent (path: string) : Content =
        DataFiles.checkReadable path
        let file = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 <<< 16)
        try
            let start = Array.zeroCreate<byte> 3
            let got = file.ReadAtLeast(Span start, 3, false)
            if got >= 2 && start.[0] = 0x1fuy && start.[1] = 0x8buy then
                if file.Length < 18L then fail path (sprintf "corrupt gzip stream: %d bytes, shorter than a gzip header and trailer" file.Length)
                if start.[2] <> 8uy then fail path (sprintf "corrupt gzip stream: compression method %d in the header (gzip uses 8, deflate)" start.[2])
                let trailer = Array.zeroCreate<byte> 4
                file.Seek(-4L, SeekOrigin.End) |> ignore
                file.ReadExactly(Span trailer)
                file.Seek(0L, SeekOrigin.Begin) |> ignore
                { Stream = new GZipStream(file, CompressionMode.Decompress)
                  Recorded = Some(BitConverter.ToUInt32(trailer, 0)) }
            elif path.EndsWith(".gz", StringComparison.OrdinalIgnoreCase) then
                fail path (sprintf "corrupt gzip stream: the file is named .gz but does not start with the gzip signature 1f 8b (it starts with %s)"
                               (start |> Array.truncate (min got 2) |> Array.map (sprintf "%02x") |> String.concat " "))
            else
                file.Seek(0L, SeekOrigin.Begin) |> ignore
                { Stream = file; Recorded = None }
        with _ ->
            file.Dispose()
            reraise ()

    /// Runs a read of the content, turning a damaged gzip stream into a DataFileError.
    let private guarded (path: string) (content: Content) (read: unit -> 'a) : 'a =
        try
            read ()
        with
        | :? InvalidDataException when content.Recorded.IsSome -> fail path "corrupt gzip stream: the compressed data is damaged"
        | :? EndOfStreamException when content.Recorded.IsSome -> fail path "corrupt gzip stream: truncated"

    let private bigEndianInt (bytes: byte[]) (offset: int) =
        (int bytes.[offset] <<< 24) ||| (int bytes.[offset + 1] <<< 16) ||| (int bytes.[offset + 2] <<< 8) ||| int bytes.[offset + 3]

    /// Reads and checks the header; returns the dimensions and the header's length in bytes.
    let private header (path: string) (content: Content) (expectedMagic: int) (what: string) (dims: int) =
        let headerLength = 4 + 4 * dims
        let bytes = Array.zeroCreate<byte> headerLength
        let got = content.Stream.ReadAtLeast(Span bytes, headerLength, false)
        if got < 4 then
            fail path (sprintf "truncated: %d bytes, too short for an IDX magic number" got)
        let magic = bigEndianInt bytes 0
        if magic <> expectedMagic then
            fail path (sprintf "wrong magic number 0x%08X (expected 0x%08X for IDX %s)" magic expectedMagic what)
        if got < headerLength then
            fail path (sprintf "truncated: %d bytes, shorter than the %d-byte IDX header of %s" got headerLength what)
        let sizes = Array.init dims (fun d -> bigEndianInt bytes (4 + 4 * d))
        if sizes |> Array.exists (fun s -> s < 0) then fail path "negative dimension in the IDX header"
        sizes, headerLength

    /// The payload length in bytes that the header's dimensions promise.
    let private payloadLength (sizes: int[]) =
        sizes |> Array.fold (fun acc s -> acc * int64 s) 1L

    /// Reads the next `destination.Length` payload bytes; `before` bytes of the content came earlier.
    let private readPayload (path: string) (content: Content) (expected: int64) (before: int64) (destination: Span<byte>) =
        let got = content.Stream.ReadAtLeast(destination, destination.Length, false)
        if got < destination.Length then
            fail path (sprintf "truncated: the header promises %d bytes, the file holds %d" expected (before + int64 got))

    /// Checks that the content ends where the header says, and that a gzip trailer agrees.
    let private checkEnd (path: string) (content: Content) (expected: int64) =
        let scratch = Array.zeroCreate<byte> 4096
        let mutable extra = 0L
        let mutable n = content.Stream.Read(scratch, 0, scratch.Length)
        while n > 0 do
            extra <- extra + int64 n
            n <- content.Stream.Read(scratch, 0, scratch.Length)
        if extra > 0L then
            fail path (sprintf "%d unexpected bytes after the %d the header promises" extra expected)
        match content.Recorded with
        | Some recorded when uint32 (expected % 4294967296L) <> recorded ->
            fail path (sprintf "corrupt gzip stream: truncated (%d bytes decompressed, the trailer records %d)" expected recorded)
        | _ -> ()

    /// Reads a one-dimensional or image payload into a new array; Error with the promised length, and
    /// nothing decompressed, when the header promises more bytes than one array holds.
    let private tryReadArray (path: string) (expectedMagic: int) (what: string) (dims: int) : Result<int[] * byte[], int64> =
        use content = openContent path
        guarded path content (fun () ->
            let sizes, headerLength = header path content expectedMagic what dims
            let length = payloadLength sizes
            if length > int64 Array.MaxLength then Error length
            else
                // Pinned, so that the huge pages asked for its untouched memory stay under it.
                let payload = GC.AllocateUninitializedArray<byte>(int length, pinned = true)
                if length > 0L then Continual.Paging.adviseHugePages (Runtime.InteropServices.Marshal.UnsafeAddrOfPinnedArrayElement(payload, 0)) length
                let expected = int64 headerLength + length
                readPayload path content expected (int64 headerLength) (Span payload)
                checkEnd path content expected
                Ok(sizes, payload))

    /// Reads a one-dimensional or image payload into a new array.
    let private readArray (path: string) (expectedMagic: int) (what: string) (dims: int) : int[] * byte[] =
        match tryReadArray path expectedMagic what dims with
        | Ok read -> read
        | Error length -> fail path (sprintf "the header promises %d bytes, more than one array holds" length)

    let private images (sizes: int[], pixels: byte[]) : IdxImages =
        { Count = sizes.[0]
          Rows = sizes.[1]
          Cols = sizes.[2]
          Pixels = pixels }

    /// Reads an IDX image file (magic 0x00000803), gzip or plain.
    let readImages (path: string) : IdxImages =
        images (readArray path ImagesMagic "images" 3)

    /// Reads an IDX image file (gzip or plain) into memory with every check of `readImages`, or None,
    /// with nothing decompressed, when its pixels are more than one array holds (over 2 GiB; read
    /// those with `readImageTensor`). Needs no libtorch call.
    let tryReadImages (path: string) : IdxImages option =
        match tryReadArray path ImagesMagic "images" 3 with
        | Ok read -> Some(images read)
        | Error _ -> None

    /// A uint8 tensor [count, rows * cols] on the CPU over the pixels of `images`, sharing their array
    /// (no copy: the array stays pinned while the tensor's storage lives).
    let tensorOf (images: IdxImages) : TorchSharp.torch.Tensor =
        let features = int64 images.Rows * int64 images.Cols
        if images.Pixels.Length = 0 then
            TorchSharp.torch.empty([| int64 images.Count; features |], dtype = TorchSharp.torch.ScalarType.Byte)
        else
            use flat = TorchSharp.torch.frombuffer(images.Pixels, TorchSharp.torch.ScalarType.Byte)
            flat.view(int64 images.Count, features)

    /// Rows decompressed per chunk when images too large for one array are read into a tensor.
    let private rowsPerChunk = 4096

    /// Decompresses images straight into a new tensor, chunk by chunk (files of over 2 GiB).
    let private readImageTensorInChunks (path: string) : TorchSharp.torch.Tensor * int * int =
        use content = openContent path
        guarded path content (fun () ->
            let sizes, headerLength = header path content ImagesMagic "images" 3
            let count, rows, cols = sizes.[0], sizes.[1], sizes.[2]
            let features = int64 rows * int64 cols
            let expected = int64 headerLength + payloadLength sizes
            let pixels = TorchSharp.torch.empty([| int64 count; features |], dtype = TorchSharp.torch.ScalarType.Byte)
            try
                let mutable start = 0
                while start < count do
                    let n = min rowsPerChunk (count - start)
                    if int64 n * features > int64 Int32.MaxValue then fail path "an image is too large to read"
                    use chunk = pixels.narrow(0L, int64 start, int64 n)
                    readPayload path content expected (int64 headerLength + int64 start * features) chunk.bytes
                    start <- start + n
                checkEnd path content expected
                pixels, rows, cols
            with _ ->
                pixels.Dispose()
                reraise ())

    /// The uint8 tensor [count, rows * cols] of an image file, with its rows and columns, from what
    /// `tryReadImages` gave for it: the array shared (`tensorOf`), or, for None, the file read again
    /// by chunks straight into the tensor.
    let imageTensorOf (path: string) (read: IdxImages option) : TorchSharp.torch.Tensor * int * int =
        match read with
        | Some images -> tensorOf images, images.Rows, images.Cols
        | None -> readImageTensorInChunks path

    /// Reads an IDX image file (gzip or plain) into a new uint8 tensor of shape [count, rows * cols] on
    /// the CPU, with its rows and columns: one byte a pixel, read with every check of `readImages`.
    /// The pixels are decompressed into an array the tensor then shares (`tryReadImages`, `tensorOf`),
    /// or, over 2 GiB, straight into the tensor.
    let readImageTensor (path: string) : TorchSharp.torch.Tensor * int * int =
        imageTensorOf path (tryReadImages path)

    /// Reads an IDX label file (magic 0x00000801), gzip or plain.
    let readLabels (path: string) : byte[] =
        readArray path LabelsMagic "labels" 1 |> snd

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
