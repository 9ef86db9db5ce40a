module Continual.Tests.Main

open System
open Expecto

/// Splitting the tests over processes: `--shard K/N` keeps every N-th test case from the K-th (0-based),
/// in the order the assembly lists them, so N processes with K = 0..N-1 run each test exactly once.
/// test.sh runs two shards side by side: the tests are sequenced within a process, and a separate
/// process shares no native thread pool with the other.
module Shards =

    /// `--shard K/N` taken out of the arguments: Some(K, N) and the rest, or None and the arguments.
    let parse (argv: string[]) : ((int * int) option * string[]) =
        match Array.tryFindIndex ((=) "--shard") argv with
        | None -> None, argv
        | Some i ->
            let fail () = failwithf "--shard needs K/N with 0 <= K < N (got %s)" (if i + 1 < argv.Length then argv.[i + 1] else "nothing")
            if i + 1 >= argv.Length then fail ()
            match argv.[i + 1].Split '/' with
            | [| k; n |] ->
                match Int32.TryParse k, Int32.TryParse n with
                | (true, k), (true, n) when n > 0 && k >= 0 && k < n -> Some(k, n), Array.append argv.[.. i - 1] argv.[i + 2 ..]
                | _ -> fail ()
            | _ -> fail ()

    /// The test cases of shard `k` of `n` (lists that keep none are dropped).
    let keep (k: int) (n: int) (tests: Test) : Test =
        let mutable index = -1
        let rec walk (test: Test) : Test option =
            match test with
            | TestCase _ ->
                index <- index + 1
                if index % n = k then Some test else None
            | TestList(children, state) ->
                match children |> List.choose walk with
                | [] -> None
                | kept -> Some(TestList(kept, state))
            | TestLabel(label, child, state) -> walk child |> Option.map (fun c -> TestLabel(label, c, state))
            | Test.Sequenced(how, child) -> walk child |> Option.map (fun c -> Test.Sequenced(how, c))
        walk tests |> Option.defaultValue (TestList([], Normal))

[<EntryPoint>]
let main argv =
    Continual.Engine.configureThreads 1
    let shard, rest = Shards.parse argv
    let tests = Impl.testFromThisAssembly () |> Option.defaultValue (TestList([], Normal))
    let selected = match shard with Some(k, n) -> Shards.keep k n tests | None -> tests
    Tests.runTestsWithCLIArgs [] rest selected
