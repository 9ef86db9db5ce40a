/// The tool's own JSON files (bench.json, distill-costs.json, bench-penalties.json), written with
/// System.Text.Json.
[<RequireQualifiedAccess>]
module Continual.Cli.Json

open System
open System.Globalization
open System.IO
open System.Text.Encodings.Web
open System.Text.Json

/// A JSON document as indented UTF-8 bytes ending in a newline. Names such as "ewc++" stay as they
/// are (no \u002B escapes): the files are read by people and tools, never embedded in HTML.
let toBytes (write: Utf8JsonWriter -> unit) : byte[] =
    use stream = new MemoryStream()
    (use w = new Utf8JsonWriter(stream, JsonWriterOptions(Indented = true, Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping))
     write w)
    stream.WriteByte(byte '\n')
    stream.ToArray()

/// A value rounded to `decimals` places exactly as fixed-point text ("%.3f") rounds it, so that the
/// files carry the values they carried when they were written by hand.
let fixedPoint (decimals: int) (value: float) : float =
    Double.Parse(value.ToString("F" + string decimals, CultureInfo.InvariantCulture), CultureInfo.InvariantCulture)
