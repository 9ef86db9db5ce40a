/// Sweep specifications: a YAML or JSON grid of options of `continual run`, read and checked with the
/// line of every problem (docs/sweeps.md).
module Continual.Cli.SweepSpec

open System
open System.Globalization
open System.IO
open Microsoft.FSharp.Reflection
open YamlDotNet.RepresentationModel
open Continual.Cli.Arguments

/// Bad usage of a sweep (a malformed spec, a folder without a sweep): one line on stderr, exit 2.
exception SweepUsageError of string

/// A sweep's work failed (points that failed, nothing to aggregate): one line on stderr, exit 1.
exception SweepFailure of string

/// The most points a grid may expand to without --force.
[<Literal>]
let PointLimit = 1000

/// The type of an option's value in a spec.
[<RequireQualifiedAccess>]
type ValueKind =
    | Flag
    | Int
    | Int64
    | Float
    | Text

/// Options of run that are not a point's settings: the sweep owns a point's output and its folder.
let private notInSpec = set [ "out"; "quiet"; "overwrite"; "tasks"; "sweep"; "index" ]

/// The options a spec may set, by their command-line name: every option of `continual run` but the
/// output ones, with the type of its value.
let optionKinds : Map<string, ValueKind> =
    FSharpType.GetUnionCases typeof<RunArgs>
    |> Array.choose (fun case ->
        let name = Help.optionName case.Name
        if notInSpec.Contains name then None
        else
            let kind =
                match case.GetFields() with
                | [||] -> ValueKind.Flag
                | [| f |] when f.PropertyType = typeof<int> -> ValueKind.Int
                | [| f |] when f.PropertyType = typeof<int64> -> ValueKind.Int64
                | [| f |] when f.PropertyType = typeof<float> -> ValueKind.Float
                | _ -> ValueKind.Text
            Some(name, kind))
    |> Map.ofArray

/// Plural keys a spec may use for the three usual axes.
let private aliases = Map [ "strategies", "strategy"; "buffers", "buffer"; "seeds", "seed" ]

/// One value of a spec, as text for the command line, with the line it is on.
type SpecValue = { Text: string; Line: int }

/// One option of a spec with its values (one value: the same for every point; several: an axis of the grid).
type SpecAxis =
    { Option: string
      Line: int
      Values: SpecValue list }

/// A sweep specification, read and checked.
type Spec =
    { Path: string
      /// In grid order: strategy, buffer, the other options as written, seed last (the innermost).
      Axes: SpecAxis list
      /// Extra lines for the Slurm script (`slurm: ["--partition=short", "--time=00:10:00"]`).
      Slurm: string list }

/// Reading and expanding sweep specifications.
[<RequireQualifiedAccess>]
module Spec =

    let private fail (path: string) (line: int) (reason: string) =
        raise (SweepUsageError(sprintf "%s:%d: %s" path line reason))

    let private line (node: YamlNode) = int node.Start.Line

    let private distance (a: string) (b: string) =
        let d = Array2D.init (a.Length + 1) (b.Length + 1) (fun i j -> if i = 0 then j elif j = 0 then i else 0)
        for i in 1 .. a.Length do
            for j in 1 .. b.Length do
                let cost = if a.[i - 1] = b.[j - 1] then 0 else 1
                d.[i, j] <- min (min (d.[i - 1, j] + 1) (d.[i, j - 1] + 1)) (d.[i - 1, j - 1] + cost)
        d.[a.Length, b.Length]

    let private suggestion (name: string) =
        let known = [ yield! optionKinds |> Map.keys; yield! aliases |> Map.keys; "slurm" ]
        match known |> List.map (fun k -> k, distance name k) |> List.filter (fun (_, d) -> d <= 2) |> List.sortBy snd with
        | (k, _) :: _ -> sprintf " (did you mean %s?)" k
        | [] -> " (expected an option of `continual run`, e.g. strategies, buffers, seeds, lr, lambda; `continual run --help` lists them)"

    /// The texts of a seed value: a number, or a range A-B.
    let private seedTexts (text: string) : string list option =
        match Int64.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture) with
        | true, v -> Some [ string v ]
        | _ ->
            match text.Split '-' with
            | [| a; b |] ->
                match Int64.TryParse(a.Trim()), Int64.TryParse(b.Trim()) with
                | (true, first), (true, last) when first <= last && last - first < 1000000L -> Some [ for s in first .. last -> string s ]
                | _ -> None
            | _ -> None

    /// The command-line texts of one scalar of an option (a seed range gives several).
    let private valuesOf (path: string) (option: string) (kind: ValueKind) (node: YamlScalarNode) : SpecValue list =
        let text = (if isNull node.Value then "" else node.Value).Trim()
        let at = line node
        let quoted = node.Style = YamlDotNet.Core.ScalarStyle.SingleQuoted || node.Style = YamlDotNet.Core.ScalarStyle.DoubleQuoted
        if text = "" && not quoted then fail path at (sprintf "%s: no value (give a value or a list of values)" option)
        let one t = [ { Text = t; Line = at } ]
        match kind with
        | ValueKind.Flag ->
            match text.ToLowerInvariant() with
            | "true" | "yes" | "on" -> one "true"
            | "false" | "no" | "off" -> one "false"
            | _ -> fail path at (sprintf "%s: '%s' is not true or false (%s is a flag)" option text option)
        | ValueKind.Int ->
            match Int32.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture) with
            | true, v -> one (string v)
            | _ -> fail path at (sprintf "%s: '%s' is not a whole number" option text)
        | ValueKind.Int64 ->
            match seedTexts text with
            | Some texts -> texts |> List.map (fun t -> { Text = t; Line = at })
            | None -> fail path at (sprintf "%s: '%s' is not a whole number or a range such as 10-19" option text)
        | ValueKind.Float ->
            match Double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture) with
            | true, v when Double.IsFinite v -> one (v.ToString("R", CultureInfo.InvariantCulture))
            | _ -> fail path at (sprintf "%s: '%s' is not a number" option text)
        | ValueKind.Text ->
            if text = "" then fail path at (sprintf "%s: an empty text" option)
            one text

    /// Reads and checks a spec: every key an option of run (or `slurm`), every value of the option's
    /// type, no empty list, no value twice. Raises SweepUsageError naming the line and the reason.
    let read (path: string) : Spec =
        let text =
            try File.ReadAllText path
            with
            | :? FileNotFoundException
            | :? DirectoryNotFoundException -> raise (SweepUsageError(sprintf "%s: no such spec file" path))
            | :? UnauthorizedAccessException -> raise (SweepUsageError(sprintf "%s: the spec cannot be read: permission denied" path))
            | :? IOException as e -> raise (SweepUsageError(sprintf "%s: the spec cannot be read: %s" path e.Message))
        let stream = YamlStream()
        try stream.Load(new StringReader(text))
        with
        | :? YamlDotNet.Core.YamlException as e ->
            let reason = (e.InnerException |> Option.ofObj |> Option.map (fun i -> i.Message) |> Option.defaultValue e.Message)
            let reason = reason.Split([| '\n'; '\r' |], StringSplitOptions.RemoveEmptyEntries) |> Array.tryHead |> Option.defaultValue "malformed"
            let reason = match reason.IndexOf("): ") with -1 -> reason | i when reason.StartsWith "(" -> reason.Substring(i + 3) | _ -> reason
            fail path (int e.Start.Line) (sprintf "not valid YAML or JSON: %s" (reason.Trim()))
        | :? InvalidOperationException
        | :? ArgumentException ->
            // YamlDotNet's scanner fails without a position on some unclosed flow lists: the first line
            // that opens more brackets than it closes is the likely place.
            let lines = text.Split('\n')
            let unbalanced =
                lines
                |> Array.tryFindIndex (fun l ->
                    let count (c: char) = l |> Seq.filter ((=) c) |> Seq.length
                    count '[' > count ']' || count '{' > count '}')
            match unbalanced with
            | Some i -> fail path (i + 1) "not valid YAML or JSON: a [ or { that is not closed on its line"
            | None -> fail path 1 "not valid YAML or JSON"
        let root =
            match stream.Documents |> Seq.tryHead with
            | Some d ->
                match d.RootNode with
                | :? YamlMappingNode as m when m.Children.Count > 0 -> m
                | node -> fail path (line node) "a spec is a mapping of options to values (strategies: [sgd, derpp], seeds: [0, 1, 2], lr: [0.01, 0.03], ...)"
            | None -> fail path 1 "the spec is empty (give strategies, seeds and the options to vary; docs/sweeps.md)"
        let mutable slurm = []
        let axes =
            [ for KeyValue(key, value) in root.Children do
                  let keyText = match key with :? YamlScalarNode as s -> s.Value.Trim() | _ -> fail path (line key) "a key must be an option name"
                  let name = defaultArg (aliases.TryFind keyText) keyText
                  if keyText = "slurm" then
                      slurm <-
                          match value with
                          | :? YamlSequenceNode as items ->
                              [ for item in items ->
                                  match item with
                                  | :? YamlScalarNode as s when not (String.IsNullOrWhiteSpace s.Value) -> s.Value.Trim()
                                  | other -> fail path (line other) "slurm: each item is one sbatch option, e.g. --time=00:10:00" ]
                          | other -> fail path (line other) "slurm: a list of sbatch options, e.g. [--partition=short, --time=00:10:00]"
                  elif notInSpec.Contains name then
                      fail path (line key) (sprintf "%s is not a setting of a point: the sweep gives each point its own folder under --out" name)
                  else
                      match optionKinds.TryFind name with
                      | None -> fail path (line key) (sprintf "unknown option '%s'%s" keyText (suggestion keyText))
                      | Some kind ->
                          let values =
                              match value with
                              | :? YamlScalarNode as s -> valuesOf path name kind s
                              | :? YamlSequenceNode as items ->
                                  if items.Children.Count = 0 then fail path (line value) (sprintf "%s: an empty list (give at least one value)" keyText)
                                  [ for item in items do
                                        match item with
                                        | :? YamlScalarNode as s -> yield! valuesOf path name kind s
                                        | other -> fail path (line other) (sprintf "%s: each value must be a single %s, not a list or a mapping" keyText (match kind with ValueKind.Flag -> "true or false" | ValueKind.Text -> "text" | _ -> "number")) ]
                              | other -> fail path (line other) (sprintf "%s: a value or a list of values, not a mapping" keyText)
                          match values |> List.countBy (fun v -> v.Text) |> List.tryFind (fun (_, n) -> n > 1) with
                          | Some(v, _) -> fail path (line value) (sprintf "%s: %s is given twice" keyText v)
                          | None -> ()
                          yield { Option = name; Line = line key; Values = values } ]
        match axes |> List.countBy (fun a -> a.Option) |> List.tryFind (fun (_, n) -> n > 1) with
        | Some(o, _) ->
            let second = axes |> List.filter (fun a -> a.Option = o) |> List.item 1
            fail path second.Line (sprintf "%s is given twice (as %s and its plural, say)" o o)
        | None -> ()
        let rank (a: SpecAxis) =
            match a.Option with
            | "strategy" -> 0
            | "buffer" -> 1
            | "seed" -> 3
            | _ -> 2
        { Path = path; Axes = axes |> List.sortBy rank; Slurm = slurm }

    /// How many points the grid has before points that come out the same are merged.
    let size (spec: Spec) : bigint = spec.Axes |> List.fold (fun n a -> n * bigint a.Values.Length) 1I

    /// Every combination of values, first axis outermost, seed innermost: (option, value) per axis.
    let combinations (spec: Spec) : (string * SpecValue) list list =
        spec.Axes
        |> List.rev
        |> List.fold (fun rest axis -> [ for v in axis.Values do for r in rest -> (axis.Option, v) :: r ]) [ [] ]

