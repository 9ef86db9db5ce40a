namespace Continual

open System
open System.Collections.Generic
open System.Text.Json.Nodes
open Microsoft.FSharp.Reflection
open Continual.Models
open TorchSharp

/// A state value that cannot be saved or restored; the message names the path inside the state.
exception StateCodecError of path: string * reason: string
    with
        override this.Message = sprintf "%s: %s" this.path this.reason

/// Where the tensors of a state go when it is saved, and where they come from when it is restored.
/// A tensor met twice (or one of the model's own parameters) is stored once and comes back as the
/// same object, so states that share tensors still share them after a restore.
type TensorTable() =
    let byName = Dictionary<string, Tensor>()
    let names = Dictionary<Tensor, string>(HashIdentity.Reference)
    let order = ResizeArray<string>()
    /// Registers a tensor that lives elsewhere (a model parameter): a state that holds it refers to it
    /// by this name and is given the same object back.
    member _.Alias(name: string, t: Tensor) =
        byName.[name] <- t
        names.[t] <- name
    /// The name a tensor is stored under, storing it under `name` when it is new.
    member _.Store(name: string, t: Tensor) =
        match names.TryGetValue t with
        | true, existing -> existing
        | _ ->
            if byName.ContainsKey name then invalidOp (sprintf "two tensors named %s" name)
            byName.[name] <- t
            names.[t] <- name
            order.Add name
            name
    /// Adds a tensor read from a file.
    member _.Add(name: string, t: Tensor) =
        byName.[name] <- t
        order.Add name
    member _.TryFind(name: string) =
        match byName.TryGetValue name with
        | true, t -> Some t
        | _ -> None
    /// The stored tensors in the order they were stored (aliases left out).
    member _.Stored = [ for n in order -> n, byName.[n] ]

/// What restoring a state needs besides the JSON and the tensors.
type RestoreContext =
    { Device: Device }

/// Saves any method state (records, unions, options, lists, arrays, tuples, numbers, strings, tensors,
/// model snapshots) as JSON with its tensors stored apart by name, and restores it to the same type.
/// States are plain values (issue 10), so one codec serves every method, including ones added later.
/// Auxiliary modules (FitNets' regressor) are the shell's: they are saved with it and left out here.
[<RequireQualifiedAccess>]
module StateCodec =

    let private isModule (t: Type) = typeof<torch.nn.Module>.IsAssignableFrom t && not (typeof<Backbone>.IsAssignableFrom t)

    /// The JSON form of a value of type `ty`; tensors go to `table` under names that start with `path`.
    let rec encode (table: TensorTable) (path: string) (ty: Type) (value: obj) : JsonNode =
        let fail reason = raise (StateCodecError(path, reason))
        if ty = typeof<unit> then null
        elif typeof<Tensor>.IsAssignableFrom ty then
            if isNull value then null
            else
                let o = JsonObject()
                o.["tensor"] <- JsonValue.Create(table.Store(path, value :?> Tensor))
                o :> JsonNode
        elif typeof<Backbone>.IsAssignableFrom ty then
            let model = value :?> Backbone
            let o = JsonObject()
            o.["architecture"] <- encode table (path + ".architecture") typeof<Architecture> (box model.Architecture)
            let tensors = JsonObject()
            for KeyValue(name, t) in model.state_dict () do
                tensors.[name] <- JsonValue.Create(table.Store(path + "." + name, t))
            o.["module"] <- tensors
            o :> JsonNode
        elif isModule ty then null
        elif ty = typeof<string> then JsonValue.Create(value :?> string)
        elif ty = typeof<bool> then JsonValue.Create(value :?> bool)
        elif ty = typeof<int> then JsonValue.Create(value :?> int)
        elif ty = typeof<int64> then JsonValue.Create(value :?> int64)
        // Generator states use all 64 bits: text keeps them exact for any JSON reader.
        elif ty = typeof<uint64> then JsonValue.Create((value :?> uint64).ToString())
        elif ty = typeof<float> then
            let v = value :?> float
            if Double.IsFinite v then JsonValue.Create v else JsonValue.Create(v.ToString("R", Globalization.CultureInfo.InvariantCulture))
        elif ty = typeof<float32> then
            let v = value :?> float32
            if Single.IsFinite v then JsonValue.Create v else JsonValue.Create(v.ToString("R", Globalization.CultureInfo.InvariantCulture))
        elif ty.IsArray then
            let e = ty.GetElementType()
            let items = value :?> Array
            JsonArray([| for i in 0 .. items.Length - 1 -> encode table (sprintf "%s.%d" path i) e (items.GetValue i) |]) :> JsonNode
        elif ty.IsGenericType && ty.GetGenericTypeDefinition() = typedefof<list<_>> then
            let e = ty.GetGenericArguments().[0]
            let items = value :?> Collections.IEnumerable |> Seq.cast<obj> |> Array.ofSeq
            JsonArray([| for i in 0 .. items.Length - 1 -> encode table (sprintf "%s.%d" path i) e items.[i] |]) :> JsonNode
        elif ty.IsGenericType && ty.GetGenericTypeDefinition() = typedefof<option<_>> then
            if isNull value then null
            else
                let case, fields = FSharpValue.GetUnionFields(value, ty)
                let o = JsonObject()
                o.["some"] <- encode table path (case.GetFields().[0].PropertyType) fields.[0]
                o :> JsonNode
        elif FSharpType.IsTuple ty then
            let types = FSharpType.GetTupleElements ty
            let items = FSharpValue.GetTupleFields value
            JsonArray([| for i in 0 .. items.Length - 1 -> encode table (sprintf "%s.%d" path i) types.[i] items.[i] |]) :> JsonNode
        elif FSharpType.IsRecord(ty, true) then
            let o = JsonObject()
            for f in FSharpType.GetRecordFields(ty, true) do
                o.[f.Name] <- encode table (path + "." + f.Name) f.PropertyType (f.GetValue value)
            o :> JsonNode
        elif FSharpType.IsUnion(ty, true) then
            let case, fields = FSharpValue.GetUnionFields(value, ty, true)
            let o = JsonObject()
            o.["case"] <- JsonValue.Create case.Name
            let infos = case.GetFields()
            o.["fields"] <- JsonArray([| for i in 0 .. fields.Length - 1 -> encode table (sprintf "%s.%s.%d" path case.Name i) infos.[i].PropertyType fields.[i] |])
            o :> JsonNode
        else fail (sprintf "values of type %s cannot be saved" ty.Name)

    /// A frozen backbone (as Backbones.snapshot makes it) rebuilt from its architecture and tensors,
    /// leaving torch's global generator as it was.
    let private restoreBackbone (context: RestoreContext) (architecture: Architecture) (tensors: (string * Tensor) list) (path: string) =
        let generator = torch.get_rng_state ()
        let model =
            try Backbones.create architecture
            finally
                torch.set_rng_state generator
                generator.Dispose()
        let expected = model.state_dict ()
        for (name, saved) in tensors do
            match expected.TryGetValue name with
            | true, target when target.shape = saved.shape -> ()
            | true, target ->
                raise (StateCodecError(path + "." + name, sprintf "shape [%s] where the architecture has [%s]" (String.Join(", ", saved.shape)) (String.Join(", ", target.shape))))
            | _ -> raise (StateCodecError(path + "." + name, "not a tensor of the architecture"))
        if expected.Count <> List.length tensors then raise (StateCodecError(path, sprintf "%d tensors where the architecture has %d" (List.length tensors) expected.Count))
        model.``to`` context.Device |> ignore
        use _ = torch.no_grad ()
        let current = model.state_dict ()
        for (name, saved) in tensors do
            current.[name].copy_ saved |> ignore
        for p in model.parameters () do
            p.requires_grad <- false
        model.eval ()
        model

    /// Restores a value of type `ty` from its JSON form and the table's tensors (moved to the device;
    /// tensors met twice come back as one object).
    let rec decode (context: RestoreContext) (table: TensorTable) (moved: Dictionary<string, Tensor>) (path: string) (ty: Type) (node: JsonNode) : obj =
        let fail reason = raise (StateCodecError(path, reason))
        let tensorNamed (name: string) =
            match moved.TryGetValue name with
            | true, t -> t
            | _ ->
                match table.TryFind name with
                | Some t ->
                    // `to` makes a new handle even on the same device: it is freed once detached.
                    let onDevice = t.``to`` context.Device
                    let m = onDevice.detach().DetachFromDisposeScope()
                    if not (obj.ReferenceEquals(onDevice, t)) then onDevice.Dispose()
                    moved.[name] <- m
                    m
                | None -> fail (sprintf "the tensor %s is missing from the file" name)
        try
            if ty = typeof<unit> then box ()
            elif typeof<Tensor>.IsAssignableFrom ty then
                if isNull node then null else box (tensorNamed (node.["tensor"].GetValue<string>()))
            elif typeof<Backbone>.IsAssignableFrom ty then
                let architecture = decode context table moved (path + ".architecture") typeof<Architecture> node.["architecture"] :?> Architecture
                let tensors = [ for kv in node.["module"].AsObject() -> kv.Key, (match table.TryFind(kv.Value.GetValue<string>()) with Some t -> t | None -> fail (sprintf "the tensor %s is missing" (kv.Value.GetValue<string>()))) ]
                box (restoreBackbone context architecture tensors path)
            elif isModule ty then null
            elif ty = typeof<string> then box (node.GetValue<string>())
            elif ty = typeof<bool> then box (node.GetValue<bool>())
            elif ty = typeof<int> then box (node.GetValue<int>())
            elif ty = typeof<int64> then box (node.GetValue<int64>())
            elif ty = typeof<uint64> then box (UInt64.Parse(node.GetValue<string>()))
            elif ty = typeof<float> then
                match node.GetValueKind() with
                | Text.Json.JsonValueKind.String -> box (Double.Parse(node.GetValue<string>(), Globalization.CultureInfo.InvariantCulture))
                | _ -> box (node.GetValue<float>())
            elif ty = typeof<float32> then
                match node.GetValueKind() with
                | Text.Json.JsonValueKind.String -> box (Single.Parse(node.GetValue<string>(), Globalization.CultureInfo.InvariantCulture))
                | _ -> box (node.GetValue<float32>())
            elif ty.IsArray then
                let e = ty.GetElementType()
                let items = node.AsArray()
                let result = Array.CreateInstance(e, items.Count)
                for i in 0 .. items.Count - 1 do
                    result.SetValue(decode context table moved (sprintf "%s.%d" path i) e items.[i], i)
                box result
            elif ty.IsGenericType && ty.GetGenericTypeDefinition() = typedefof<list<_>> then
                let e = ty.GetGenericArguments().[0]
                let items = node.AsArray()
                let cases = FSharpType.GetUnionCases ty
                let empty = FSharpValue.MakeUnion(cases.[0], [||])
                let cons = cases.[1]
                [ for i in items.Count - 1 .. -1 .. 0 -> decode context table moved (sprintf "%s.%d" path i) e items.[i] ]
                |> List.fold (fun tail head -> FSharpValue.MakeUnion(cons, [| head; tail |])) empty
            elif ty.IsGenericType && ty.GetGenericTypeDefinition() = typedefof<option<_>> then
                let cases = FSharpType.GetUnionCases ty
                if isNull node then FSharpValue.MakeUnion(cases.[0], [||])
                else FSharpValue.MakeUnion(cases.[1], [| decode context table moved path (ty.GetGenericArguments().[0]) node.["some"] |])
            elif FSharpType.IsTuple ty then
                let types = FSharpType.GetTupleElements ty
                let items = node.AsArray()
                if items.Count <> types.Length then fail (sprintf "%d items where the tuple has %d" items.Count types.Length)
                FSharpValue.MakeTuple([| for i in 0 .. types.Length - 1 -> decode context table moved (sprintf "%s.%d" path i) types.[i] items.[i] |], ty)
            elif FSharpType.IsRecord(ty, true) then
                let o = node.AsObject()
                let fields =
                    [| for f in FSharpType.GetRecordFields(ty, true) ->
                           if o.ContainsKey f.Name then decode context table moved (path + "." + f.Name) f.PropertyType o.[f.Name]
                           else fail (sprintf "the field %s is missing" f.Name) |]
                FSharpValue.MakeRecord(ty, fields, true)
            elif FSharpType.IsUnion(ty, true) then
                let name = node.["case"].GetValue<string>()
                match FSharpType.GetUnionCases(ty, true) |> Array.tryFind (fun c -> c.Name = name) with
                | Some case ->
                    let infos = case.GetFields()
                    let items = node.["fields"].AsArray()
                    if items.Count <> infos.Length then fail (sprintf "%d fields where %s has %d" items.Count name infos.Length)
                    FSharpValue.MakeUnion(case, [| for i in 0 .. infos.Length - 1 -> decode context table moved (sprintf "%s.%s.%d" path name i) infos.[i].PropertyType items.[i] |], true)
                | None -> fail (sprintf "%s has no case %s" ty.Name name)
            else fail (sprintf "values of type %s cannot be restored" ty.Name)
        with
        | :? StateCodecError -> reraise ()
        | :? InvalidOperationException | :? FormatException | :? NullReferenceException | :? KeyNotFoundException as e ->
            fail (sprintf "does not hold a %s (%s)" ty.Name e.Message)
