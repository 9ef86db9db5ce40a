/// The pictures of `continual plot` (ScottPlot): accuracy matrices as heat maps, average accuracy after
/// each task, forgetting per task, final accuracy per method and footprint against accuracy, each a PNG.
[<RequireQualifiedAccess>]
module Continual.Cli.Plots

open System
open System.IO
open ScottPlot

/// One picture: its file name, a title and what it shows (the report's caption), and its PNG bytes.
type Picture =
    { FileName: string
      Title: string
      Caption: string
      Png: byte[] }

/// The pictures of a result set, and a line for each picture that could not be drawn (and why).
type Pictures =
    { Pictures: Picture list
      Notes: string list }

/// The scenarios a run is measured in: results.json's key, and the name people read.
let scenarios = [ "classIl", "Class-IL"; "taskIl", "Task-IL" ]

let private width, height = 900, 560

/// Mean accuracy over the tasks seen after each training step: mean over j ≤ i of R[i][j]. A matrix
/// of one row over several tasks (JOINT, trained once on everything) gives its row's mean.
let averageAfterEach (r: float[][]) : float[] =
    if r.Length = 1 && r.[0].Length > 1 then [| Array.average r.[0] |]
    else r |> Array.mapi (fun i row -> Array.average row.[.. min i (row.Length - 1)])

/// Forgetting of each task but the last: (max over i < T of R[i][j]) - R[T][j], as Metrics.forgetting
/// averages it. None where that is undefined (a single row, or rows that do not cover the tasks).
let forgettingPerTask (r: float[][]) : float[] option =
    let t = r.Length
    if t < 2 || r.[t - 1].Length <> t || r |> Array.indexed |> Array.exists (fun (i, row) -> row.Length < i + 1 || row.Length > t) then None
    else
        Some
            [| for j in 0 .. t - 2 ->
                 let best = [| for i in 0 .. t - 2 do if j < r.[i].Length then yield r.[i].[j] |] |> Array.max
                 best - r.[t - 1].[j] |]

/// Mean and sample standard deviation (0 for one value).
let private meanSd (values: float list) =
    match values with
    | [] -> nan, 0.0
    | [ v ] -> v, 0.0
    | _ -> Continual.Metrics.meanAndSpread values

/// The matrix of a scenario.
let private matrixOf (scenario: string) (run: ResultFiles.RunResults) = if scenario = "classIl" then run.ClassIl else run.TaskIl

/// The element-wise mean of the runs' matrices (shapes agree for runs of one method; a cell missing
/// from some run is averaged over those that have it).
let meanMatrix (matrices: float[][] list) : float[][] =
    let rows = matrices |> List.map Array.length |> List.max
    [| for i in 0 .. rows - 1 ->
           let cols = matrices |> List.map (fun m -> if i < m.Length then m.[i].Length else 0) |> List.max
           [| for j in 0 .. cols - 1 ->
                  matrices |> List.choose (fun m -> if i < m.Length && j < m.[i].Length then Some m.[i].[j] else None) |> List.average |] |]

/// Text rendering needs a typeface. The NoDependencies build of Skia has no font manager, so ScottPlot
/// finds no system font: the first of a few common TrueType files is registered as the default (Debian:
/// fonts-dejavu-core, which Chromium and most desktops bring).
let private ensureFont =
    lazy
        (let candidates =
            [ "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
              "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf"
              "/usr/share/fonts/TTF/DejaVuSans.ttf"
              "/usr/share/fonts/dejavu/DejaVuSans.ttf" ]
         match candidates |> List.tryFind File.Exists with
         | Some path ->
             let bold = path.Replace("DejaVuSans.ttf", "DejaVuSans-Bold.ttf").Replace("Regular.ttf", "Bold.ttf")
             Fonts.AddFontFile("Continual Sans", path, false, false)
             if File.Exists bold && bold <> path then Fonts.AddFontFile("Continual Sans", bold, true, false)
             Fonts.Default <- "Continual Sans"
         | None -> ())

let private render (plot: Plot) (w: int) (h: int) : byte[] =
    try plot.GetImageBytes(w, h, ImageFormat.Png)
    finally plot.Dispose()

let private newPlot (title: string) (xLabel: string) (yLabel: string) =
    ensureFont.Force()
    let plot = new Plot()
    plot.Title(title) |> ignore
    plot.XLabel(xLabel) |> ignore
    plot.YLabel(yLabel) |> ignore
    plot

let private colour (i: int) = Palettes.Category10().GetColor(i)

let private f1 (v: float) = v.ToString("0.0", Globalization.CultureInfo.InvariantCulture)

/// A file name part for a method's label ("derpp+ewc" -> "derpp+ewc"; anything but letters, digits,
/// '+' and '-' becomes '_').
let private slug (label: string) = String(label.ToCharArray() |> Array.map (fun c -> if Char.IsLetterOrDigit c || c = '+' || c = '-' then c else '_'))

/// A heat map of an accuracy matrix (percent, 0 to 100 on one colour scale), each cell labelled with its
/// value; rows are "after task i", columns "task j", task 1 at the top left.
let heatmap (title: string) (r: float[][]) : byte[] =
    let rows = r.Length
    let cols = r |> Array.map Array.length |> Array.max
    let data = Array2D.init rows cols (fun i j -> if j < r.[i].Length then r.[i].[j] else nan)
    let plot = newPlot title "evaluated on task" "after training task"
    let map = plot.Add.Heatmap(data)
    map.Colormap <- Colormaps.Viridis()
    map.ManualRange <- Nullable(Range(0.0, 100.0))
    plot.Add.ColorBar(map) |> ignore
    // Cells are centred on integer positions; the first row of the data is drawn at the top.
    for i in 0 .. rows - 1 do
        for j in 0 .. r.[i].Length - 1 do
            let text = plot.Add.Text(f1 r.[i].[j], float j, float (rows - 1 - i))
            text.LabelAlignment <- Alignment.MiddleCenter
            text.LabelFontSize <- 14.0f
            text.LabelFontColor <- if r.[i].[j] > 60.0 then Colors.Black else Colors.White
    plot.Axes.Bottom.SetTicks([| for j in 0 .. cols - 1 -> float j |], [| for j in 0 .. cols - 1 -> string (j + 1) |])
    let rowLabel i = if rows = 1 && cols > 1 then "all (joint)" else string (i + 1)
    plot.Axes.Left.SetTicks([| for i in 0 .. rows - 1 -> float (rows - 1 - i) |], [| for i in 0 .. rows - 1 -> rowLabel i |])
    render plot 720 600

/// Lines of a figure per method over the tasks, each point the mean over seeds with whiskers of one
/// sample standard deviation.
let private linesOverTasks (title: string) (yLabel: string) (series: (string * float[] list) list) : byte[] =
    let plot = newPlot title "after training task" yLabel
    let mutable maxTasks = 1
    series |> List.iteri (fun k (label, perSeed) ->
        let n = perSeed |> List.map Array.length |> List.max
        let values = [| for i in 0 .. n - 1 -> meanSd [ for s in perSeed do if i < s.Length then yield s.[i] ] |]
        // A single figure (JOINT) stands at the last task of the others.
        let xs = if n = 1 then [| float (max 1 maxTasks) |] else Array.init n (fun i -> float (i + 1))
        maxTasks <- max maxTasks n
        let ys = values |> Array.map fst
        let scatter = plot.Add.Scatter(xs, ys)
        scatter.LegendText <- label
        scatter.Color <- colour k
        scatter.MarkerSize <- 8.0f
        scatter.LineWidth <- 2.0f
        if perSeed.Length > 1 then
            let bars = plot.Add.ErrorBar(xs, ys, values |> Array.map snd)
            bars.Color <- colour k)
    plot.Axes.Bottom.SetTicks([| for i in 1 .. maxTasks -> float i |], [| for i in 1 .. maxTasks -> string i |])
    plot.Axes.SetLimitsY(0.0, 105.0)
    plot.ShowLegend(Alignment.LowerLeft) |> ignore
    render plot width height

/// Grouped bars: one group per position (with its tick label), one bar per series in it, each the mean
/// over seeds with whiskers of one sample standard deviation.
let private groupedBars (title: string) (xLabel: string) (yLabel: string) (groupLabels: string[]) (series: (string * (float list)[]) list) : byte[] =
    let plot = newPlot title xLabel yLabel
    let k = List.length series
    let size = 0.8 / float k
    let bars =
        [| for s, (_, perGroup) in List.indexed series do
               for g in 0 .. perGroup.Length - 1 do
                   if not perGroup.[g].IsEmpty then
                       let mean, sd = meanSd perGroup.[g]
                       yield Bar(Position = float g - 0.4 + size * (float s + 0.5), Value = mean, Error = sd, Size = size * 0.9,
                                 FillColor = colour s, ErrorSize = size * 0.4) |]
    plot.Add.Bars(bars) |> ignore
    for s, (label, _) in List.indexed series do
        let item = LegendItem(LabelText = label, FillColor = colour s)
        plot.Legend.ManualItems.Add item
    plot.ShowLegend(Alignment.UpperRight) |> ignore
    plot.Axes.Bottom.SetTicks([| for g in 0 .. groupLabels.Length - 1 -> float g |], groupLabels)
    // Room above the tallest whisker for the legend.
    let top = bars |> Array.map (fun b -> b.Value + b.Error) |> Array.fold max 1.0
    let bottom = bars |> Array.map (fun b -> b.Value - b.Error) |> Array.fold min 0.0
    plot.Axes.SetLimitsY(bottom, top * 1.2)
    render plot width height

/// Average accuracy over the tasks seen after each task, per method (mean ± s.d. over seeds).
let averageAccuracy (scenario: string) (scenarioName: string) (methods: (string * ResultFiles.RunResults list) list) : byte[] =
    linesOverTasks
        (sprintf "%s average accuracy after each task" scenarioName)
        "accuracy over the tasks seen (%)"
        [ for label, runs in methods -> label, [ for r in runs -> averageAfterEach (matrixOf scenario r) ] ]

/// Forgetting of each task at the end, per method (mean ± s.d. over seeds): results.json's
/// forgettingPerTask where the run recorded it, else computed from the matrix. Methods without
/// forgetting (JOINT) are left out; None when no method has any.
let forgetting (scenario: string) (scenarioName: string) (methods: (string * ResultFiles.RunResults list) list) : byte[] option =
    let perMethod =
        [ for label, runs in methods do
              let perSeed =
                  runs |> List.choose (fun r ->
                      match ResultFiles.metricArray scenario "forgettingPerTask" r with
                      | Some values when values.Length > 0 -> Some values
                      | _ -> forgettingPerTask (matrixOf scenario r))
              if not perSeed.IsEmpty then yield label, perSeed ]
    if perMethod.IsEmpty then None
    else
        let tasks = perMethod |> List.collect snd |> List.map Array.length |> List.max
        Some(
            groupedBars
                (sprintf "%s forgetting per task (at the end)" scenarioName)
                "task" "forgetting (percentage points)"
                [| for j in 1 .. tasks -> string j |]
                [ for label, perSeed in perMethod -> label, [| for j in 0 .. tasks - 1 -> [ for s in perSeed do if j < s.Length then yield s.[j] ] |] ])

/// Final average accuracy per method in both scenarios (mean ± s.d. over seeds).
let finalAccuracy (methods: (string * ResultFiles.RunResults list) list) : byte[] =
    groupedBars
        "final average accuracy"
        "method" "average accuracy over all tasks (%)"
        [| for label, _ in methods -> label |]
        [ for scenario, name in scenarios ->
              name, [| for _, runs in methods -> [ for r in runs -> Continual.Metrics.averageAccuracy (matrixOf scenario r) ] |] ]

/// Memory footprint against Class-IL accuracy: for every run a line through its tasks, each point the
/// bytes it kept after task i (MiB, results.json's footprint) against its average accuracy over the tasks
/// seen then, the last point (after the last task) drawn larger; one colour per method. None when no run
/// recorded a footprint.
let footprint (methods: (string * ResultFiles.RunResults list) list) : byte[] option =
    let withFootprint =
        [ for label, runs in methods do
              let traces =
                  runs |> List.choose (fun r ->
                      match r.Footprint with
                      | Some entries when not entries.IsEmpty ->
                          let averages = averageAfterEach r.ClassIl
                          let points =
                              entries
                              |> List.sortBy (fun e -> e.Task)
                              |> List.choose (fun e ->
                                  // Entries are numbered from 1; JOINT's single row stands for its last entry.
                                  let row = if averages.Length = 1 then 0 else e.Task - 1
                                  if row >= 0 && row < averages.Length && (averages.Length > 1 || e = List.last entries) then
                                      Some(float e.TotalBytes / 1048576.0, averages.[row])
                                  else None)
                          if points.IsEmpty then None else Some points
                      | _ -> None)
              if not traces.IsEmpty then yield label, traces ]
    if withFootprint.IsEmpty then None
    else
        let plot = newPlot "footprint against accuracy" "footprint after each task (MiB)" "Class-IL accuracy over the tasks seen (%)"
        withFootprint |> List.iteri (fun k (label, traces) ->
            for t, points in List.indexed traces do
                let xs = points |> List.map fst |> Array.ofList
                let ys = points |> List.map snd |> Array.ofList
                let line = plot.Add.Scatter(xs, ys)
                line.Color <- colour k
                line.MarkerSize <- 6.0f
                line.LineWidth <- 1.5f
                let last = plot.Add.ScatterPoints([| Array.last xs |], [| Array.last ys |])
                last.Color <- colour k
                last.MarkerSize <- 14.0f
                if t = 0 then last.LegendText <- label + " (after the last task)")
        let maxX = withFootprint |> List.collect snd |> List.concat |> List.map fst |> List.max
        plot.Axes.SetLimits(0.0, maxX * 1.15, 0.0, 105.0)
        plot.ShowLegend(Alignment.LowerRight) |> ignore
        Some(render plot width height)

/// Every picture of a result set: the heat maps (one pair per method, its matrices averaged over seeds),
/// average accuracy after each task, forgetting per task (both scenarios), final accuracy and, where the
/// runs recorded one, footprint against accuracy.
let draw (set: ResultFiles.ResultSet) : Pictures =
    let methods = ResultFiles.groups set
    let several = methods.Length > 1
    let notes = ResizeArray<string>()
    let pictures =
        [ for label, runs in methods do
              for scenario, name in scenarios do
                  let seeds = if runs.Length > 1 then sprintf ", mean of %d seeds" runs.Length else sprintf ", seed %d" runs.Head.Seed
                  let suffix = if several then "-" + slug label else ""
                  yield
                      { FileName = sprintf "matrix-%s%s.png" (if scenario = "classIl" then "class-il" else "task-il") suffix
                        Title = sprintf "%s accuracy matrix, %s%s" name label seeds
                        Caption = "Accuracy (%) on each task (column) after training each task (row); the diagonal is each task just learned, the cells below it what is left of it later."
                        Png = heatmap (sprintf "%s accuracy (%%): %s%s" name label seeds) (meanMatrix [ for r in runs -> matrixOf scenario r ]) }
          for scenario, name in scenarios do
              yield
                  { FileName = sprintf "average-accuracy-%s.png" (if scenario = "classIl" then "class-il" else "task-il")
                    Title = sprintf "%s average accuracy after each task" name
                    Caption = "Mean accuracy over the tasks seen so far after each task, per method; whiskers: one sample standard deviation over seeds."
                    Png = averageAccuracy scenario name methods }
          for scenario, name in scenarios do
              match forgetting scenario name methods with
              | Some png ->
                  yield
                      { FileName = sprintf "forgetting-%s.png" (if scenario = "classIl" then "class-il" else "task-il")
                        Title = sprintf "%s forgetting per task" name
                        Caption = "How far each task's accuracy fell from its best before the last task to the end (percentage points), per method; whiskers: one sample standard deviation over seeds."
                        Png = png }
              | None -> notes.Add(sprintf "forgetting-%s.png skipped: no run has more than one task" (if scenario = "classIl" then "class-il" else "task-il"))
          yield
              { FileName = "final-accuracy.png"
                Title = "Final average accuracy"
                Caption = "Average accuracy over all tasks after the last one, per method and scenario; whiskers: one sample standard deviation over seeds."
                Png = finalAccuracy methods }
          match footprint methods with
          | Some png ->
              yield
                  { FileName = "footprint.png"
                    Title = "Footprint against accuracy"
                    Caption = "Bytes each run kept after each task (model, memory, importance: results.json's footprint) against its Class-IL accuracy over the tasks seen then; one line per run, the large marker after the last task."
                    Png = png }
          | None -> notes.Add "footprint.png skipped: the results record no footprint (runs written before footprints were recorded)" ]
    { Pictures = pictures; Notes = List.ofSeq notes }
