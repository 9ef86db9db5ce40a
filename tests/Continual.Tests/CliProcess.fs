/// The real `continual` program (copied next to the test binary) run as a child process, for tests of
/// exit codes, standard error, signals and kills.
module Continual.Tests.CliProcess

open System
open System.Diagnostics
open System.IO

/// The `continual` program.
let path = Path.Combine(AppContext.BaseDirectory, "continual")

/// Starts a program with arguments and extra environment variables: the process, and its standard
/// output and error as they will read at its end.
let startProgram (program: string) (args: string list) (environment: (string * string) list) =
    let psi = ProcessStartInfo(program, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false)
    for a in args do psi.ArgumentList.Add a
    for (k, v) in environment do psi.Environment.[k] <- v
    let p = Process.Start psi
    p, p.StandardOutput.ReadToEndAsync(), p.StandardError.ReadToEndAsync()

/// Runs a program to its end: exit code, standard output, standard error.
let executeProgram (program: string) (args: string list) (environment: (string * string) list) =
    let p, output, errors = startProgram program args environment
    p.WaitForExit()
    let code = p.ExitCode
    p.Dispose()
    code, output.Result, errors.Result

/// Starts `continual`.
let start (args: string list) (environment: (string * string) list) = startProgram path args environment

/// Runs `continual` to its end: exit code, standard output, standard error.
let execute (args: string list) (environment: (string * string) list) = executeProgram path args environment
