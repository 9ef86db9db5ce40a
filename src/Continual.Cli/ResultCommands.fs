/// `continual plot` and `continual report`: pictures and a page of finished runs and comparisons.
module Continual.Cli.ResultCommands

open System.IO
open Argu
open Continual
open Continual.Cli.Arguments
open Spectre.Console

/// `continual plot DIR [--out DIR]`: one PNG per picture (Plots.draw), each written atomically; a
/// picture that cannot be drawn (no footprint recorded) is skipped with one line saying why.
let plotCommand (args: ParseResults<PlotArgs>) : int =
    let folder = args.GetResult PlotArgs.Results_Folder
    let set = ResultFiles.read folder
    let out = args.GetResult(PlotArgs.Out, defaultValue = Path.Combine(set.Folder, "plots"))
    let drawn = Plots.draw set
    for p in drawn.Pictures do
        Files.writeAtomically (Path.Combine(out, p.FileName)) p.Png
        AnsiConsole.MarkupLine("wrote {0}", Markup.Escape(Path.Combine(out, p.FileName)))
    for n in drawn.Notes do
        AnsiConsole.MarkupLine("note: {0}", Markup.Escape n)
    0

/// `continual report DIR [--out FILE]`: one self-contained HTML page (HtmlReport.render), written atomically.
let reportCommand (args: ParseResults<ReportArgs>) : int =
    let folder = args.GetResult ReportArgs.Results_Folder
    let set = ResultFiles.read folder
    let out = args.GetResult(ReportArgs.Out, defaultValue = Path.Combine(set.Folder, "report.html"))
    if Directory.Exists out then raise (ResultFiles.ResultFileError(Path.GetFullPath out, "--out is a folder; give the HTML file to write"))
    let drawn = Plots.draw set
    Files.writeAtomically out (HtmlReport.render set drawn)
    for n in drawn.Notes do
        AnsiConsole.MarkupLine("note: {0}", Markup.Escape n)
    AnsiConsole.MarkupLine("wrote {0} ({1} pictures)", Markup.Escape(Path.GetFullPath out), drawn.Pictures.Length)
    0
