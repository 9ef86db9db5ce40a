namespace Continual

open System
open System.Buffers.Binary
open System.IO
open System.Text
open System.Text.Json
open System.Text.Json.Nodes
open TorchSharp

/// A safetensors file that cannot be read: the message says what is wrong with it.
exception SafetensorsError of path: string * reason: string
    with
        override this.Message = sprintf "%s: %s" this.path this.reason

/// The contents of a safetensors file: its string metadata and its tensors (CPU, in file order).
type SafetensorsContent =
    { Metadata: Map<string, string>
      Tensors: (string * Tensor) list
      /// SHA-256 over the metadata (sorted by key, `checksum` left out), the tensor entries and the data
      /// section, as written in the `checksum` metadata entry by `Safetensors.write`.
      ComputedChecksum: string }

/// The safetensors format (Hugging Face): an 8-byte little-endian header length N, N bytes of JSON
/// header (`{"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}`, padded
/// with spaces to a multiple of 8), then the tensors' raw little-endian bytes back to back. Readable
/// with numpy and json alone (docs/checkpoints.md).
[<RequireQualifiedAccess>]
module Safetensors =

    /// The metadata key that holds the checksum.
    [<Literal>]
    let ChecksumKey = "checksum"

    let private dtypes =
        [ torch.ScalarType.Float32, "F32"
          torch.ScalarType.Float64, "F64"
          torch.ScalarType.Float16, "F16"
          torch.ScalarType.BFloat16, "BF16"
          torch.ScalarType.Int64, "I64"
          torch.ScalarType.Int32, "I32"
          torch.ScalarType.Int16, "I16"
          torch.ScalarType.Int8, "I8"
          torch.ScalarType.Byte, "U8"
          torch.ScalarType.Bool, "BOOL" ]

    let private nameOf (t: torch.ScalarType) =
        match dtypes |> List.tryFind (fun (d, _) -> d = t) with
        | Some(_, n) -> n
        | None -> invalidArg "tensor" (sprintf "safetensors cannot hold tensors of type %A" t)

    let private typeOf (name: string) = dtypes |> List.tryFind (fun (_, n) -> n = name) |> Option.map fst

    /// The checksum of metadata, tensor entries and data: SHA-256 over each metadata entry but the
    /// checksum (sorted by key, as key, NUL, value, NUL in UTF-8), then each tensor's entry in data order
    /// (name, NUL, dtype, NUL, its dimensions joined by commas, NUL, its begin and end offsets joined by a
    /// comma, NUL), then the data section.
    let private checksum (metadata: Map<string, string>) (entries: (string * string * int64[] * int64 * int64) list) (appendData: Security.Cryptography.IncrementalHash -> unit) =
        use hash = Security.Cryptography.IncrementalHash.CreateHash(Security.Cryptography.HashAlgorithmName.SHA256)
        let text (s: string) =
            hash.AppendData(Encoding.UTF8.GetBytes s)
            hash.AppendData [| 0uy |]
        for KeyValue(k, v) in metadata do
            if k <> ChecksumKey then
                text k
                text v
        for (name, dtype, shape, b, e) in entries do
            text name
            text dtype
            text (String.Join(",", shape))
            text (sprintf "%d,%d" b e)
        appendData hash
        Convert.ToHexString(hash.GetHashAndReset()).ToLowerInvariant()

    /// A tensor's bytes on the host, contiguous and little-endian (the machines .NET runs on are).
    let private bytesOf (t: Tensor) : byte[] =
        use detached = t.detach()
        use host = detached.cpu()
        use contiguous = host.contiguous()
        contiguous.bytes.ToArray()

    /// Writes tensors and metadata to a stream in the safetensors format, adding a `checksum` entry
    /// (see SafetensorsContent.ComputedChecksum). Names must be unique.
    let write (stream: Stream) (metadata: (string * string) list) (tensors: (string * Tensor) list) =
        let names = tensors |> List.map fst
        if List.length (List.distinct names) <> List.length names then invalidArg (nameof tensors) "tensor names must be unique"
        let data = tensors |> List.map (fun (name, t) -> name, t, bytesOf t)
        let metadata = Map.ofList metadata |> Map.remove ChecksumKey
        let entries =
            data
            |> List.mapFold (fun offset (name, t: Tensor, b: byte[]) -> (name, nameOf t.dtype, t.shape, offset, offset + int64 b.Length), offset + int64 b.Length) 0L
            |> fst
        let sum = checksum metadata entries (fun hash -> for (_, _, b) in data do hash.AppendData b)
        let header = JsonObject()
        let meta = JsonObject()
        for KeyValue(k, v) in metadata.Add(ChecksumKey, sum) do
            meta.[k] <- JsonValue.Create v
        header.["__metadata__"] <- meta
        let mutable offset = 0L
        for (name, t, b) in data do
            let entry = JsonObject()
            entry.["dtype"] <- JsonValue.Create(nameOf t.dtype)
            entry.["shape"] <- JsonArray([| for d in t.shape -> JsonValue.Create d :> JsonNode |])
            entry.["data_offsets"] <- JsonArray([| JsonValue.Create offset :> JsonNode; JsonValue.Create(offset + int64 b.Length) |])
            header.[name] <- entry
            offset <- offset + int64 b.Length
        let json = Encoding.UTF8.GetBytes(header.ToJsonString())
        let padded = (json.Length + 7) / 8 * 8
        let length = Array.zeroCreate<byte> 8
        BinaryPrimitives.WriteUInt64LittleEndian(Span length, uint64 padded)
        stream.Write(length, 0, 8)
        stream.Write(json, 0, json.Length)
        for _ in json.Length .. padded - 1 do stream.WriteByte(byte ' ')
        for (_, _, b) in data do stream.Write(b, 0, b.Length)

    /// Reads a safetensors file: checks its header, that the data section is exactly as long as the
    /// header says (a truncated file is refused) and computes its checksum. Raises SafetensorsError.
    let read (path: string) : SafetensorsContent =
        let fail reason = raise (SafetensorsError(path, reason))
        let bytes =
            try File.ReadAllBytes path
            with
            | :? FileNotFoundException | :? DirectoryNotFoundException -> fail "no such file"
            | :? UnauthorizedAccessException -> fail "permission denied"
            | :? IOException as e -> fail e.Message
        if bytes.Length < 8 then fail (sprintf "truncated: %d bytes, not even a header length" bytes.Length)
        let headerLength = BinaryPrimitives.ReadUInt64LittleEndian(ReadOnlySpan(bytes, 0, 8))
        if headerLength > uint64 (bytes.Length - 8) then
            fail (sprintf "truncated or not a safetensors file: the header claims %d bytes, the file has %d after the length" headerLength (bytes.Length - 8))
        let dataStart = 8 + int headerLength
        let header =
            try JsonNode.Parse(ReadOnlySpan(bytes, 8, int headerLength)).AsObject()
            with _ -> fail "corrupted: the header is not a JSON object"
        let metadata =
            match header.["__metadata__"] with
            | null -> Map.empty
            | m ->
                try m.AsObject() |> Seq.map (fun kv -> kv.Key, kv.Value.GetValue<string>()) |> Map.ofSeq
                with _ -> fail "corrupted: __metadata__ is not a map of strings"
        let dataLength = int64 bytes.Length - int64 dataStart
        let entries =
            [ for kv in header do
                  if kv.Key <> "__metadata__" then
                      try
                          let e = kv.Value.AsObject()
                          let dtype = e.["dtype"].GetValue<string>()
                          let shape = e.["shape"].AsArray() |> Seq.map (fun d -> d.GetValue<int64>()) |> Array.ofSeq
                          let offsets = e.["data_offsets"].AsArray() |> Seq.map (fun d -> d.GetValue<int64>()) |> Array.ofSeq
                          yield kv.Key, dtype, shape, offsets.[0], offsets.[1]
                      with _ -> fail (sprintf "corrupted: the header entry of '%s' is malformed" kv.Key) ]
        let ordered = entries |> List.sortBy (fun (_, _, _, b, _) -> b)
        let mutable expected = 0L
        for (name, _, _, b, e) in ordered do
            if b <> expected || e < b then fail (sprintf "corrupted: the data of '%s' is not where the header says" name)
            expected <- e
        if expected > dataLength then fail (sprintf "truncated: the data section has %d of %d bytes" dataLength expected)
        if expected < dataLength then fail (sprintf "corrupted: %d bytes follow the last tensor" (dataLength - expected))
        let tensors =
            [ for (name, dtype, shape, b, e) in ordered ->
                  let scalar = match typeOf dtype with Some t -> t | None -> fail (sprintf "'%s' has the unsupported dtype %s" name dtype)
                  let t = torch.empty(shape, dtype = scalar)
                  if t.NumberOfElements * int64 t.ElementSize <> e - b then
                      t.Dispose()
                      fail (sprintf "corrupted: '%s' has %d bytes for shape [%s] of %s" name (e - b) (String.Join(", ", shape)) dtype)
                  t.bytes <- Span(bytes, dataStart + int b, int (e - b))
                  name, t ]
        { Metadata = metadata; Tensors = tensors; ComputedChecksum = checksum metadata ordered (fun hash -> hash.AppendData(bytes, dataStart, int dataLength)) }
