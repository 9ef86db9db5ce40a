/// TensorBoard event files for `--tensorboard DIR`: every named loss term at every step and the accuracy
/// on every task after every task, as scalar summaries.
///
/// The file is TensorFlow's TFRecord framing of `Event` protocol buffers: per record the data's length
/// (uint64, little-endian), the masked CRC-32C of those 8 bytes, the data, and the masked CRC-32C of the
/// data. The few Event fields are written with Google.Protobuf's CodedOutputStream (the library the ONNX
/// export already uses) rather than classes generated from TensorFlow's .proto files: the build would
/// need protoc and the .proto sources for five fields. Event: wall_time = 1 (double), step = 2 (int64),
/// file_version = 3 (string), summary = 5; Summary: value = 1 (repeated); Summary.Value: tag = 1
/// (string), simple_value = 2 (float).
[<RequireQualifiedAccess>]
module Continual.Cli.TensorBoard

open System
open System.IO
open System.Numerics
open Google.Protobuf
open Continual

/// CRC-32C (Castagnoli) of bytes, as TFRecord uses it (the processor's CRC32 instruction where there is one).
let crc32c (data: ReadOnlySpan<byte>) : uint32 =
    let mutable crc = 0xFFFFFFFFu
    for b in data do
        crc <- BitOperations.Crc32C(crc, b)
    ~~~crc

/// TFRecord's masked CRC: rotated right by 15 bits plus a constant, so that a CRC stored inside the data
/// it covers does not weaken the check.
let maskedCrc (data: ReadOnlySpan<byte>) : uint32 =
    let crc = crc32c data
    ((crc >>> 15) ||| (crc <<< 17)) + 0xa282ead8u

/// One record in TFRecord framing.
let frame (data: byte[]) : byte[] =
    let record = Array.zeroCreate<byte> (data.Length + 16)
    Buffers.Binary.BinaryPrimitives.WriteUInt64LittleEndian(Span(record, 0, 8), uint64 data.Length)
    Buffers.Binary.BinaryPrimitives.WriteUInt32LittleEndian(Span(record, 8, 4), maskedCrc (ReadOnlySpan(record, 0, 8)))
    Buffer.BlockCopy(data, 0, record, 12, data.Length)
    Buffers.Binary.BinaryPrimitives.WriteUInt32LittleEndian(Span(record, 12 + data.Length, 4), maskedCrc (ReadOnlySpan data))
    record

let private message (write: CodedOutputStream -> unit) : byte[] =
    use stream = new MemoryStream()
    (use output = new CodedOutputStream(stream, true)
     write output)
    stream.ToArray()

/// An Event holding the file's version ("brain.Event:2"), TensorBoard's first record.
let versionEvent (wallTime: float) : byte[] =
    message (fun o ->
        o.WriteTag(1, WireFormat.WireType.Fixed64)
        o.WriteDouble wallTime
        o.WriteTag(3, WireFormat.WireType.LengthDelimited)
        o.WriteString "brain.Event:2")

/// An Event holding scalar summaries (tag, value) at a step.
let scalarEvent (wallTime: float) (step: int64) (scalars: (string * float32) list) : byte[] =
    let summary =
        message (fun o ->
            for tag, value in scalars do
                let v =
                    message (fun vo ->
                        vo.WriteTag(1, WireFormat.WireType.LengthDelimited)
                        vo.WriteString tag
                        vo.WriteTag(2, WireFormat.WireType.Fixed32)
                        vo.WriteFloat value)
                o.WriteTag(1, WireFormat.WireType.LengthDelimited)
                o.WriteBytes(ByteString.CopyFrom v))
    message (fun o ->
        o.WriteTag(1, WireFormat.WireType.Fixed64)
        o.WriteDouble wallTime
        o.WriteTag(2, WireFormat.WireType.Varint)
        o.WriteInt64 step
        o.WriteTag(5, WireFormat.WireType.LengthDelimited)
        o.WriteBytes(ByteString.CopyFrom summary))

/// The tag of a loss term: "loss/<name>" (e.g. loss/ce, loss/der.logits); the step's sum is "loss/total".
let lossTag (name: string) = "loss/" + name

/// The tag of an accuracy: "accuracy/class-il/task-3", or "accuracy/class-il/average" for the mean over
/// the tasks seen.
let accuracyTag (scenario: string) (task: string) = sprintf "accuracy/%s/%s" scenario task

/// An event file in a folder, named as TensorBoard expects (events.out.tfevents.<unix seconds>.<host>),
/// appended to as a run goes (TensorBoard reads a growing file) and flushed after every task. A name
/// already taken (two runs in the same second) gets a numeric suffix.
type EventWriter(folder: string) =
    let now () = float (DateTimeOffset.UtcNow.ToUnixTimeMilliseconds()) / 1000.0
    let path =
        Directory.CreateDirectory folder |> ignore
        let stem = Path.Combine(folder, sprintf "events.out.tfevents.%d.%s" (DateTimeOffset.UtcNow.ToUnixTimeSeconds()) (Net.Dns.GetHostName()))
        Seq.initInfinite (fun i -> if i = 0 then stem else sprintf "%s.%d" stem i) |> Seq.find (fun p -> not (File.Exists p))
    let stream = new FileStream(path, FileMode.CreateNew, FileAccess.Write, FileShare.Read)
    let write (data: byte[]) =
        let record = frame data
        stream.Write(record, 0, record.Length)
    do write (versionEvent (now ()))

    /// The event file's path.
    member _.Path = path

    /// Writes scalars at a step.
    member _.Scalars(step: int64, scalars: (string * float32) list) = if not scalars.IsEmpty then write (scalarEvent (now ()) step scalars)

    /// Pushes what was written to the file.
    member _.Flush() = stream.Flush(true)

    interface IDisposable with
        member _.Dispose() = stream.Dispose()

/// A run's TensorBoard log: the hooks that feed it (every step's named terms, every task's accuracies)
/// and the writer behind them.
type RunLog(folder: string) =
    let writer = new EventWriter(folder)
    // JOINT learns everything as one unit: its average covers every task.
    let mutable units = 0

    /// The event file's path.
    member _.Path = writer.Path

    /// Every named term of a step at the run's step count, and their sum as loss/total. Two terms of one
    /// name (two methods that name a term alike) are told apart as name#2, name#3, ...
    member _.OnStepTerms(terms: StepTerms) =
        let named =
            terms.Terms
            |> List.mapi (fun i (name, _) -> name, i)
            |> List.map (fun (name, i) ->
                let earlier = terms.Terms |> List.take i |> List.filter (fun (n, _) -> n = name) |> List.length
                if earlier = 0 then name else sprintf "%s#%d" name (earlier + 1))
        let values = terms.Terms |> List.map snd
        writer.Scalars(
            terms.Step,
            [ for name, v in List.zip named values -> lossTag name, float32 v
              yield lossTag "total", float32 (List.sum values) ])

    /// After each task: the accuracy on every task (and the mean over the tasks seen) in both scenarios,
    /// at step = the number of the task just learned (1 for the first); then the file is flushed.
    member _.OnEvent(event: TrainingEvent) =
        match event with
        | RunStarted n -> units <- n
        | TaskFinished(task, accuracies, _) ->
            let seen (row: float[]) = if units = 1 then row else row.[.. min task (row.Length - 1)]
            let scalars scenario (row: float[]) =
                [ for j, a in Array.indexed row -> accuracyTag scenario (sprintf "task-%d" (j + 1)), float32 a
                  yield accuracyTag scenario "average", float32 (Array.average (seen row)) ]
            writer.Scalars(int64 (task + 1), scalars "class-il" accuracies.ClassIl @ scalars "task-il" accuracies.TaskIl)
            writer.Flush()
        | _ -> ()

    /// The hooks with this log added: events go to both, step terms to this log.
    member this.Attach(hooks: RunHooks) : RunHooks =
        { hooks with
            OnEvent = fun e -> hooks.OnEvent e; this.OnEvent e
            OnStepTerms = Some this.OnStepTerms }

    interface IDisposable with
        member _.Dispose() =
            (try writer.Flush() with _ -> ())
            (writer :> IDisposable).Dispose()
