namespace Continual

open System
open System.IO

/// Writing files so that a reader never sees a half-written one.
[<RequireQualifiedAccess>]
module Files =

    /// Writes bytes to a path atomically: a temporary file in the same folder, then a rename over the
    /// target. The folder is created when missing; the temporary file never outlives a failure.
    let writeAtomically (path: string) (content: byte[]) =
        let full = Path.GetFullPath path
        let directory = Path.GetDirectoryName full
        Directory.CreateDirectory directory |> ignore
        let temporary = Path.Combine(directory, sprintf ".%s.%s.tmp" (Path.GetFileName full) (Guid.NewGuid().ToString "N"))
        try
            File.WriteAllBytes(temporary, content)
            File.Move(temporary, full, true)
        finally
            if File.Exists temporary then File.Delete temporary
