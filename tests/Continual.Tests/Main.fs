module Continual.Tests.Main

open Expecto

[<EntryPoint>]
let main argv =
    Continual.Engine.configureThreads 1
    Tests.runTestsInAssemblyWithCLIArgs [] argv
