namespace Continual

open System
open System.Globalization
open System.Text.Json
open Continual.Methods
open Continual.Penalties

/// Settings of the optimisation loop and of the run itself.
type RunSettings =
    { LearningRate: float
      BatchSize: int
      Epochs: int
      WeightDecay: float
      Seed: int64
      /// "cpu" or "cuda[:k]".
      Device: string
      /// libtorch's intra-op threads (1 by default, the fastest measured for every backbone at batch 10).
      /// A run is deterministic for a given thread count; another count changes its results bit for bit.
      Threads: int
      /// Clip every gradient element to [-c, c] before the step (SI's protocol), None for no clipping.
      ClipGrad: float option }

/// A problem with a configuration: where it is (a path such as "run.learningRate" or
/// "method.alpha") and what is wrong, in the domain's words. Front ends name their own options.
type ConfigError =
    { Path: string
      /// The command-line option that sets the value, where there is one (without "--").
      Option: string option
      Message: string }
    override this.ToString() = this.Message

/// One hyper-parameter of a settings record 'S: its name (the JSON key and the C# escape hatch's
/// option name), the command-line option it is set by, a description, and how it is read, written,
/// parsed from text and checked.
type Setting<'S> =
    { Name: string
      /// The command-line option (without "--").
      Option: string
      Help: string
      Write: Utf8JsonWriter -> 'S -> unit
      Read: JsonElement -> 'S -> 'S
      Parse: string -> 'S -> Result<'S, string>
      /// The domain message when the setting's value is invalid.
      Check: 'S -> string option }

/// Building settings.
[<RequireQualifiedAccess>]
module Setting =

    let private invariant = CultureInfo.InvariantCulture

    /// A numeric setting written, read and parsed by the given functions.
    let private number
        (name: string) (option: string) (help: string) (kind: string)
        (write: Utf8JsonWriter -> string -> 'V -> unit) (read: JsonElement -> 'V) (tryParse: string -> 'V option)
        (get: 'S -> 'V) (set: 'V -> 'S -> 'S) (check: 'V -> string option) : Setting<'S> =
        { Name = name
          Option = option
          Help = help
          Write = fun w s -> write w name (get s)
          Read = fun e s -> set (read e) s
          Parse =
            fun text s ->
                match tryParse text with
                | Some v -> Ok(set v s)
                | None -> Error(sprintf "%s must be %s (got '%s')" help kind text)
          Check = fun s -> check (get s) }

    /// A floating-point setting; `check` returns a domain message for an invalid value.
    let float (name: string) (option: string) (help: string) (get: 'S -> float) (set: float -> 'S -> 'S) (check: float -> string option) : Setting<'S> =
        let tryParse (text: string) =
            match Double.TryParse(text, NumberStyles.Float, invariant) with
            | true, v -> Some v
            | _ -> None
        number name option help "a number" (fun w n (v: float) -> w.WriteNumber(n, v)) (fun e -> e.GetDouble()) tryParse get set check

    /// An integer setting.
    let int (name: string) (option: string) (help: string) (get: 'S -> int) (set: int -> 'S -> 'S) (check: int -> string option) : Setting<'S> =
        let tryParse (text: string) =
            match Int32.TryParse(text, NumberStyles.Integer, invariant) with
            | true, v -> Some v
            | _ -> None
        number name option help "a whole number" (fun w n (v: int) -> w.WriteNumber(n, v)) (fun e -> e.GetInt32()) tryParse get set check

    /// A yes/no setting.
    let bool (name: string) (option: string) (help: string) (get: 'S -> bool) (set: bool -> 'S -> 'S) : Setting<'S> =
        { Name = name
          Option = option
          Help = help
          Write = fun w s -> w.WriteBoolean(name, get s)
          Read = fun e s -> set (e.GetBoolean()) s
          Parse =
            fun text s ->
                match text.Trim().ToLowerInvariant() with
                | "true" | "yes" | "1" -> Ok(set true s)
                | "false" | "no" | "0" -> Ok(set false s)
                | _ -> Error(sprintf "%s must be true or false (got '%s')" help text)
          Check = fun _ -> None }

    /// The Fisher's labels, by name ("true", "empirical", "weighted").
    let fisher (get: 'S -> FisherKind) (set: FisherKind -> 'S -> 'S) : Setting<'S> =
        { Name = "fisher"
          Option = "fisher"
          Help = "the Fisher's labels"
          Write = fun w s -> w.WriteString("fisher", FisherKind.name (get s))
          Read = fun e s -> set (FisherKind.parse (e.GetString())) s
          Parse =
            fun text s ->
                if List.contains (text.Trim().ToLowerInvariant()) (FisherKind.names @ [ "sampled" ]) then Ok(set (FisherKind.parse text) s)
                else Error(sprintf "unknown Fisher kind '%s' (expected one of: %s)" text (String.concat ", " FisherKind.names))
          Check = fun _ -> None }

    /// The same setting on a larger record that may hold 'S (a union case): reading and writing go
    /// through `unwrap`, which is None where the record holds something else.
    let lift (unwrap: 'T -> 'S option) (wrap: 'S -> 'T) (setting: Setting<'S>) : Setting<'T> =
        let onInner (f: 'S -> 'S) (t: 'T) = match unwrap t with Some s -> wrap (f s) | None -> t
        { Name = setting.Name
          Option = setting.Option
          Help = setting.Help
          Write = fun w t -> unwrap t |> Option.iter (setting.Write w)
          Read = fun e t -> onInner (setting.Read e) t
          Parse =
            fun text t ->
                match unwrap t with
                | Some s -> setting.Parse text s |> Result.map wrap
                | None -> Ok t
          Check = fun t -> unwrap t |> Option.bind setting.Check }

    // Common checks, in the domain's words.

    /// A positive, finite number.
    let positive (what: string) (v: float) =
        if v > 0.0 && not (Double.IsInfinity v) then None else Some(sprintf "%s must be a positive number (got %g)" what v)

    /// A non-negative, finite number.
    let nonNegative (what: string) (v: float) =
        if v >= 0.0 && not (Double.IsInfinity v) then None else Some(sprintf "%s must be a non-negative number (got %g)" what v)

    /// A number in [0, 1].
    let unitInterval (what: string) (v: float) =
        if v >= 0.0 && v <= 1.0 then None else Some(sprintf "%s must be in [0, 1] (got %g)" what v)

    /// A number in [0, 1).
    let belowOne (what: string) (v: float) =
        if v >= 0.0 && v < 1.0 then None else Some(sprintf "%s must be in [0, 1) (got %g)" what v)

    /// A positive whole number.
    let positiveCount (what: string) (v: int) =
        if v > 0 then None else Some(sprintf "%s must be positive (got %d)" what v)
