/// The page of `continual report`: one self-contained HTML file with a run's or a comparison's tables
/// (configuration, final metrics, accuracy matrices) and its pictures embedded as data: URIs.
[<RequireQualifiedAccess>]
module Continual.Cli.HtmlReport

open System
open System.Globalization
open System.Text
open System.Text.Json.Nodes

let private encode (s: string) = Net.WebUtility.HtmlEncode s

let private f2 (v: float) = v.ToString("0.00", CultureInfo.InvariantCulture)

/// A figure of results.json as the tables show it: numbers with two decimals, null as "-", arrays of
/// numbers joined with " / ", anything else as its JSON text.
let private figure (node: JsonNode) : string =
    match node with
    | null -> "-"
    | :? JsonValue as v ->
        match v.TryGetValue<float>() with
        | true, x -> f2 x
        | _ -> v.ToString()
    | :? JsonArray as a -> String.Join(" / ", [ for x in a -> match x with :? JsonValue as n -> (match n.TryGetValue<float>() with | true, f -> f2 f | _ -> n.ToString()) | null -> "-" | other -> other.ToJsonString() ])
    | other -> other.ToJsonString()

/// A configuration section flattened to ("run.learningRate", "0.03") rows, in the file's order.
let rec private flatten (prefix: string) (node: JsonNode) : (string * string) list =
    match node with
    | :? JsonObject as o -> [ for KeyValue(k, v) in o do yield! flatten (if prefix = "" then k else prefix + "." + k) v ]
    | :? JsonArray as a when a.Count > 0 && (a |> Seq.forall (fun x -> x :? JsonObject)) ->
        [ for i, x in Seq.indexed a do yield! flatten (sprintf "%s[%d]" prefix i) x ]
    | null -> [ prefix, "null" ]
    | :? JsonArray as a when a.Count = 0 -> [ prefix, "[]" ]
    | other -> [ prefix, (match other with :? JsonValue as v when v.GetValueKind() = Text.Json.JsonValueKind.String -> v.GetValue<string>() | _ -> other.ToJsonString()) ]

let private table (sb: StringBuilder) (caption: string option) (header: string list) (rows: string list list) =
    sb.Append("<table>") |> ignore
    caption |> Option.iter (fun c -> sb.Append("<caption>").Append(encode c).Append("</caption>") |> ignore)
    sb.Append("<thead><tr>") |> ignore
    for h in header do sb.Append("<th>").Append(encode h).Append("</th>") |> ignore
    sb.Append("</tr></thead><tbody>") |> ignore
    for row in rows do
        sb.Append("<tr>") |> ignore
        for cell in row do sb.Append("<td>").Append(encode cell).Append("</td>") |> ignore
        sb.Append("</tr>") |> ignore
    sb.AppendLine("</tbody></table>") |> ignore

let private matrixRows (m: float[][]) =
    let tasks = m |> Array.map Array.length |> Array.max
    [ for i, row in Array.indexed m ->
          [ yield (if m.Length = 1 && tasks > 1 then "all (joint)" else string (i + 1))
            for j in 0 .. tasks - 1 -> if j < row.Length then f2 row.[j] else "-"
            yield f2 (Array.average row.[.. min i (row.Length - 1)]) ] ]

let private style = """
body { font-family: "DejaVu Sans", "Liberation Sans", Arial, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; } h3 { margin-top: 1.4em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
caption { text-align: left; font-weight: bold; padding: 0.3em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.9em; color: #555; }
.note { color: #8a5a00; }
"""

/// Records in the page whether every picture loaded (body's data-images: "loaded" or "failed") and
/// counts errors (data-errors), so that a browser test can read both from the page's DOM.
let private script = """
(function () {
  var errors = 0;
  window.addEventListener('error', function () { errors += 1; document.documentElement.setAttribute('data-errors', String(errors)); }, true);
  document.documentElement.setAttribute('data-errors', '0');
  window.addEventListener('load', function () {
    var images = Array.prototype.slice.call(document.images);
    var ok = images.every(function (i) { return i.complete && i.naturalWidth > 0; });
    document.body.setAttribute('data-image-count', String(images.length));
    document.body.setAttribute('data-images', ok ? 'loaded' : 'failed');
  });
})();
"""

/// The page as UTF-8 bytes: the title, a comparison's summary, each method's configuration, the final
/// metrics of every run, every run's matrices, and the pictures (PNG data: URIs, nothing external:
/// the page's content security policy refuses anything else).
let render (set: ResultFiles.ResultSet) (pictures: Plots.Pictures) : byte[] =
    let sb = StringBuilder()
    let methods = ResultFiles.groups set
    let title =
        if set.IsComparison then sprintf "Comparison: %s" (IO.Path.GetFileName set.Folder)
        else sprintf "Run: %s" (IO.Path.GetFileName set.Folder)
    sb.AppendLine("<!DOCTYPE html>")
      .AppendLine("<html lang=\"en\"><head><meta charset=\"utf-8\">")
      .AppendLine("<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'\">")
      .Append("<title>").Append(encode title).AppendLine("</title>")
      .Append("<style>").Append(style).AppendLine("</style>")
      .Append("<script>").Append(script).AppendLine("</script>")
      .AppendLine("</head><body>")
      .Append("<h1>").Append(encode title).AppendLine("</h1>") |> ignore
    let first = set.Runs.Head
    sb.Append("<p>").Append(encode (sprintf "%s, %s; %d run(s) of %d method(s); folder %s" first.Benchmark first.Architecture set.Runs.Length methods.Length set.Folder)).AppendLine("</p>") |> ignore

    // Final metrics: a comparison's summary (mean ± s.d. over seeds), then every run's figures.
    sb.AppendLine("<h2>Final metrics</h2>") |> ignore
    if set.IsComparison then
        table sb (Some "mean ± sample s.d. over seeds (percent)") [ "method"; "seeds"; "Class-IL"; "Task-IL"; "Class-IL per seed"; "Task-IL per seed" ]
            [ for label, runs in methods ->
                  let finals scenario = [ for r in runs -> Continual.Metrics.averageAccuracy (if scenario = "classIl" then r.ClassIl else r.TaskIl) ]
                  let meanSd (v: float list) = if v.Length > 1 then (let m, s = Continual.Metrics.meanAndSpread v in sprintf "%s ± %s" (f2 m) (f2 s)) else f2 v.Head
                  [ label
                    String.Join(", ", runs |> List.map (fun r -> string r.Seed))
                    meanSd (finals "classIl")
                    meanSd (finals "taskIl")
                    String.Join(" / ", finals "classIl" |> List.map f2)
                    String.Join(" / ", finals "taskIl" |> List.map f2) ] ]
    for scenario, name in Plots.scenarios do
        let names = set.Runs |> List.collect (fun r -> r.Metrics |> List.filter (fun (s, _) -> s = scenario) |> List.collect (snd >> List.map fst)) |> List.distinct
        table sb (Some(sprintf "%s (percent)" name)) ("method" :: "seed" :: names)
            [ for r in set.Runs ->
                  let figures = r.Metrics |> List.tryFind (fun (s, _) -> s = scenario) |> Option.map snd |> Option.defaultValue []
                  [ yield r.Label
                    yield string r.Seed
                    for n in names -> match figures |> List.tryFind (fun (k, _) -> k = n) with Some(_, v) -> figure v | None -> "-" ] ]

    // The pictures.
    sb.AppendLine("<h2>Pictures</h2>") |> ignore
    for p in pictures.Pictures do
        sb.Append("<figure><img alt=\"").Append(encode p.Title).Append("\" src=\"data:image/png;base64,")
          .Append(Convert.ToBase64String p.Png).Append("\"><figcaption><b>").Append(encode p.Title).Append(".</b> ")
          .Append(encode p.Caption).AppendLine("</figcaption></figure>") |> ignore
    for n in pictures.Notes do
        sb.Append("<p class=\"note\">").Append(encode n).AppendLine("</p>") |> ignore

    // Configuration: one table per method (its first run's; seeds differ between runs).
    sb.AppendLine("<h2>Configuration</h2>") |> ignore
    for label, runs in methods do
        let r = runs.Head
        table sb (Some(sprintf "%s (configuration hash %s)" label (match r.Document.["configHash"] with null -> "-" | h -> h.ToString())))
            [ "setting"; "value" ] [ for k, v in flatten "" r.Config -> [ k; v ] ]

    // Every run's matrices.
    sb.AppendLine("<h2>Accuracy matrices</h2>") |> ignore
    for r in set.Runs do
        sb.Append("<h3>").Append(encode (sprintf "%s, seed %d" r.Label r.Seed)).AppendLine("</h3>") |> ignore
        for scenario, name in Plots.scenarios do
            let m = if scenario = "classIl" then r.ClassIl else r.TaskIl
            let tasks = m |> Array.map Array.length |> Array.max
            table sb (Some(sprintf "%s accuracy (percent): row = after task, column = task" name))
                ([ "after task" ] @ [ for j in 1 .. tasks -> sprintf "task %d" j ] @ [ "mean seen" ]) (matrixRows m)
    sb.AppendLine("</body></html>") |> ignore
    Encoding.UTF8.GetBytes(sb.ToString())
