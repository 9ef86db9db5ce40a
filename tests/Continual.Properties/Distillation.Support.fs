/// Generators, tensor conversions and plain float[] reference implementations of the distillation
/// losses (DESIGN principle 5): the properties compare the tensor code against these.
module Continual.Properties.DistillationSupport

open Expecto
open FsCheck
open FsCheck.FSharp
open TorchSharp
open Continual

/// The project's fixed replay seed (PropertyConfig), 60 cases a property.
let config = PropertyConfig.fixedSeed 60

/// Values in [-2, 2] on a 1e-3 grid (finite, bounded float32-friendly).
let value : Gen<float> = Gen.choose (-2000, 2000) |> Gen.map (fun i -> float i / 1000.0)

/// A positive factor in [0.25, 4].
let positive : Gen<float> = Gen.choose (250, 4000) |> Gen.map (fun i -> float i / 1000.0)

/// A rows × cols matrix of values.
let matrix (rows: int) (cols: int) : Gen<float[][]> = Gen.arrayOfLength rows (Gen.arrayOfLength cols value)

/// A feature map: shape [n, C, H, W] (or [n, D] when `rank2`) and its values in row-major order.
type FeatureMap = { Shape: int list; Values: float[] }

/// Feature maps with n in 1..3, C in 1..4, H and W in 1..3, or [n, D] with D in 2..6.
let featureMapOfShape (shape: int list) : Gen<FeatureMap> =
    Gen.arrayOfLength (List.reduce (*) shape) value |> Gen.map (fun v -> { Shape = shape; Values = v })

let mapShape : Gen<int list> =
    gen {
        let! rank2 = Gen.elements [ true; false ]
        let! n = Gen.choose (1, 3)
        if rank2 then
            let! d = Gen.choose (2, 6)
            return [ n; d ]
        else
            let! c = Gen.choose (1, 4)
            let! h = Gen.choose (1, 3)
            let! w = Gen.choose (1, 3)
            return [ n; c; h; w ]
    }

/// A float32 tensor of a shape from row-major values.
let tensorOf (shape: int list) (values: float[]) : Tensor =
    let data : float32[] = values |> Array.map float32
    torch.tensor(data, dimensions = System.ReadOnlySpan<int64>(shape |> List.map int64 |> Array.ofList))

/// A float32 [rows, cols] tensor of a matrix.
let tensor2 (m: float[][]) : Tensor = tensorOf [ m.Length; m.[0].Length ] (Array.concat m)

let mapTensor (f: FeatureMap) = tensorOf f.Shape f.Values

/// The values of a tensor as doubles, row-major.
let floats (t: Tensor) : float[] =
    use d = t.detach().cpu().to_type(torch.ScalarType.Float64).contiguous()
    d.data<float>().ToArray()

/// A scalar tensor's value.
let scalarOf (t: Tensor) : float = (floats t).[0]

/// |a − b| within an absolute tolerance plus a relative one.
let close (tolerance: float) (a: float) (b: float) =
    abs (a - b) <= tolerance * (1.0 + max (abs a) (abs b))

/// Runs f in its own dispose scope so properties leave no tensors behind.
let scoped (f: unit -> 'a) : 'a =
    use _ = torch.NewDisposeScope()
    f ()

// ----- plain reference implementations -----

let softmaxRef (t: float) (z: float[]) =
    let m = Array.max z
    let e = z |> Array.map (fun v -> exp ((v - m) / t))
    let s = Array.sum e
    e |> Array.map (fun v -> v / s)

let kdRef (t: float) (teacher: float[][]) (student: float[][]) =
    Array.map2 (fun (a: float[]) (b: float[]) ->
        let p, q = softmaxRef t a, softmaxRef t b
        Array.map2 (fun pi qi -> if pi = 0.0 then 0.0 else pi * (log pi - log qi)) p q |> Array.sum) teacher student
    |> Array.average
    |> (*) (t * t)

let softTargetRef (t: float) (teacher: float[][]) (student: float[][]) =
    Array.map2 (fun (a: float[]) (b: float[]) ->
        Array.map2 (fun pi qi -> pi * log qi) (softmaxRef t a) (softmaxRef t b) |> Array.sum) teacher student
    |> Array.average
    |> (~-)

let norm (v: float[]) = sqrt (v |> Array.sumBy (fun x -> x * x))

let normalise (v: float[]) =
    let n = max (norm v) 1e-12
    v |> Array.map (fun x -> x / n)

let sub (a: float[]) (b: float[]) = Array.map2 (-) a b
let dot (a: float[]) (b: float[]) = Array.fold2 (fun s x y -> s + x * y) 0.0 a b

/// One example's channels of a map: C rows of H·W positions ([n, D] gives one row of D).
let channels (f: FeatureMap) (example: int) : float[][] =
    match f.Shape with
    | [ _; d ] -> [| Array.sub f.Values (example * d) d |]
    | [ _; c; h; w ] -> Array.init c (fun ch -> Array.sub f.Values ((example * c + ch) * h * w) (h * w))
    | _ -> failwith "bad shape"

let nstRef (degree: int) (c: float) (teacher: FeatureMap) (student: FeatureMap) =
    let n = teacher.Shape.Head
    [| for e in 0 .. n - 1 ->
           let t = channels teacher e |> Array.map normalise
           let s = channels student e |> Array.map normalise
           let k (a: float[][]) (b: float[][]) =
               [| for x in a do for y in b -> (dot x y + c) ** float degree |] |> Array.average
           k s s + k t t - 2.0 * k s t |]
    |> Array.average

let attentionRef (p: float) (f: FeatureMap) (example: int) =
    let ch = channels f example
    Array.init ch.[0].Length (fun i -> ch |> Array.sumBy (fun row -> abs row.[i] ** p))

let atRef (p: float) (layers: (FeatureMap * FeatureMap) list) =
    layers
    |> List.sumBy (fun (t, s) ->
        [| for e in 0 .. t.Shape.Head - 1 -> norm (sub (normalise (attentionRef p s e)) (normalise (attentionRef p t e))) |]
        |> Array.average)

let distanceRelationsRef (x: float[][]) =
    let n = x.Length
    let d = Array.init n (fun i -> Array.init n (fun j -> if i = j then 0.0 else norm (sub x.[i] x.[j])))
    let mu = (d |> Array.sumBy Array.sum) / float (n * (n - 1))
    d |> Array.map (Array.map (fun v -> v / mu))

/// [j][i][k] = ⟨e_ij, e_kj⟩, zero when i = j or k = j.
let angleRelationsRef (x: float[][]) =
    let n = x.Length
    let e i j = if i = j then Array.zeroCreate x.[0].Length else normalise (sub x.[i] x.[j])
    Array.init n (fun j -> Array.init n (fun i -> Array.init n (fun k -> dot (e i j) (e k j))))

let huber (x: float) = if abs x < 1.0 then 0.5 * x * x else abs x - 0.5

let rkdDistanceRef (teacher: float[][]) (student: float[][]) =
    Array.map2 (Array.map2 (fun s t -> huber (s - t))) (distanceRelationsRef student) (distanceRelationsRef teacher)
    |> Array.concat
    |> Array.average

let rkdAngleRef (teacher: float[][]) (student: float[][]) =
    let a, b = angleRelationsRef student, angleRelationsRef teacher
    [| for j in 0 .. a.Length - 1 do
         for i in 0 .. a.Length - 1 do
             for k in 0 .. a.Length - 1 -> huber (a.[j].[i].[k] - b.[j].[i].[k]) |]
    |> Array.average

let podPoolRef (f: FeatureMap) (example: int) =
    let c, h, w =
        match f.Shape with
        | [ _; d ] -> d, 1, 1
        | [ _; c; h; w ] -> c, h, w
        | _ -> failwith "bad shape"
    let at ch y x = f.Values.[((example * c + ch) * h + y) * w + x]
    let width = [| for ch in 0 .. c - 1 do for y in 0 .. h - 1 -> Seq.sum (seq { for x in 0 .. w - 1 -> at ch y x }) |]
    let height = [| for ch in 0 .. c - 1 do for x in 0 .. w - 1 -> Seq.sum (seq { for y in 0 .. h - 1 -> at ch y x }) |]
    normalise (Array.append width height)

let podSpatialRef (stages: (FeatureMap * FeatureMap) list) =
    stages
    |> List.sumBy (fun (t, s) ->
        [| for e in 0 .. t.Shape.Head - 1 -> norm (sub (podPoolRef s e) (podPoolRef t e)) |] |> Array.average)

let podFlatRef (teacher: float[][]) (student: float[][]) =
    Array.map2 (fun t s -> norm (sub (normalise s) (normalise t))) teacher student |> Array.average

/// Eigenvalues and eigenvectors (as columns, sorted by decreasing eigenvalue) of a symmetric matrix
/// by cyclic Jacobi rotations.
let symmetricEigen (a: float[][]) : float[] * float[][] =
    let n = a.Length
    let m = a |> Array.map Array.copy
    let v = Array.init n (fun i -> Array.init n (fun j -> if i = j then 1.0 else 0.0))
    for _ in 1 .. 100 do
        for p in 0 .. n - 2 do
            for q in p + 1 .. n - 1 do
                if abs m.[p].[q] > 1e-300 then
                    let theta = (m.[q].[q] - m.[p].[p]) / (2.0 * m.[p].[q])
                    let t = (if theta >= 0.0 then 1.0 else -1.0) / (abs theta + sqrt (theta * theta + 1.0))
                    let c = 1.0 / sqrt (t * t + 1.0)
                    let s = t * c
                    for k in 0 .. n - 1 do
                        let mkp, mkq = m.[k].[p], m.[k].[q]
                        m.[k].[p] <- c * mkp - s * mkq
                        m.[k].[q] <- s * mkp + c * mkq
                    for k in 0 .. n - 1 do
                        let mpk, mqk = m.[p].[k], m.[q].[k]
                        m.[p].[k] <- c * mpk - s * mqk
                        m.[q].[k] <- s * mpk + c * mqk
                    for k in 0 .. n - 1 do
                        let vkp, vkq = v.[k].[p], v.[k].[q]
                        v.[k].[p] <- c * vkp - s * vkq
                        v.[k].[q] <- s * vkp + c * vkq
    let order = Array.init n id |> Array.sortByDescending (fun i -> m.[i].[i])
    order |> Array.map (fun i -> m.[i].[i]), order |> Array.map (fun i -> Array.init n (fun k -> v.[k].[i]))

/// The top-m left singular vectors of the class's features laid out as columns, i.e. the top-m
/// eigenvectors of FᵀF, as m vectors of length D.
let subspaceBasisRef (m: int) (features: float[][]) =
    let d = features.[0].Length
    let gram = Array.init d (fun i -> Array.init d (fun j -> features |> Array.sumBy (fun f -> f.[i] * f.[j])))
    let _, vectors = symmetricEigen gram
    Array.sub vectors 0 m

/// The relative gap between the m-th and the (m+1)-th eigenvalue of FᵀF (infinite when m = D).
let spectralGap (m: int) (features: float[][]) =
    let d = features.[0].Length
    let gram = Array.init d (fun i -> Array.init d (fun j -> features |> Array.sumBy (fun f -> f.[i] * f.[j])))
    let values, _ = symmetricEigen gram
    if m >= d then infinity else (values.[m - 1] - values.[m]) / (abs values.[0] + 1e-300)

let projectionDistanceRef (a: float[][]) (b: float[][]) =
    let m = float a.Length
    2.0 * m - 2.0 * (a |> Array.sumBy (fun x -> b |> Array.sumBy (fun y -> (dot x y) ** 2.0)))

let classGroups (labels: int[]) (rows: float[][]) =
    Array.zip labels rows |> Array.groupBy fst |> Array.sortBy fst |> Array.map (fun (c, xs) -> c, Array.map snd xs)

let sdRef (m: int) (labels: int[]) (teacher: float[][]) (student: float[][]) =
    let t, s = classGroups labels teacher, classGroups labels student
    Array.map2 (fun (_, tf: float[][]) (_, sf: float[][]) ->
        let mk = min m (min tf.Length tf.[0].Length)
        projectionDistanceRef (subspaceBasisRef mk sf) (subspaceBasisRef mk tf)) t s
    |> Array.average

let relationGraphRef (p: float) (teacher: float[][]) (student: float[][]) =
    let a, b = angleRelationsRef student, angleRelationsRef teacher
    let diffs =
        [| for j in 0 .. a.Length - 1 do
             for i in 0 .. a.Length - 1 do
                 for k in 0 .. a.Length - 1 -> abs (a.[j].[i].[k] - b.[j].[i].[k]) ** p |]
    (Array.average diffs) ** (1.0 / p)

/// A random orthogonal d × d matrix (Gram-Schmidt on random vectors; rows are orthonormal).
let orthogonal (d: int) : Gen<float[][]> =
    matrix d d
    |> Gen.map (fun raw ->
        let basis = ResizeArray<float[]>()
        for v in raw do
            let mutable u = Array.copy v
            for b in basis do
                let p = dot u b
                u <- Array.map2 (fun x y -> x - p * y) u b
            if norm u > 1e-3 then basis.Add(normalise u)
        basis.ToArray())
    |> Gen.filter (fun q -> q.Length = d)

/// x ↦ s·Qx + t for each row.
let similarity (q: float[][]) (scale: float) (shift: float[]) (x: float[][]) =
    x |> Array.map (fun v -> Array.init q.Length (fun i -> scale * dot q.[i] v + shift.[i]))

/// The smallest distance between two distinct rows.
let minSeparation (x: float[][]) =
    [ for i in 0 .. x.Length - 1 do
        for j in i + 1 .. x.Length - 1 -> norm (sub x.[i] x.[j]) ]
    |> List.fold min infinity

/// A property over a generator with the fixed configuration.
let property name (g: Gen<'a>) (p: 'a -> bool) =
    testPropertyWithConfig config name (Prop.forAll (Arb.fromGen g) (fun x -> scoped (fun () -> p x)))
