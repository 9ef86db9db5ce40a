/// Shared pieces of the method properties (tests/Continual.Properties/Methods/): small random logit
/// blocks and draws, hand-built step views, plain-array references of the losses the methods combine.
module Continual.Properties.Methods.Support

open Expecto
open FsCheck
open FsCheck.FSharp
open Continual
open Continual.Data
open Continual.Methods
open Continual.Models
open Continual.Penalties
open Continual.Replay
open Continual.Properties
open TorchSharp

module F = Continual.Properties.PenaltiesFixtures

/// A property over a generator with the project's fixed seed and `cases` cases, run in its own
/// dispose scope so that the tensors a case makes die with it.
let property (cases: int) (name: string) (g: Gen<'a>) (p: 'a -> unit) =
    testPropertyWithConfig (PropertyConfig.fixedSeed cases) name (Prop.forAll (Arb.fromGen g) (fun x ->
        use _ = torch.NewDisposeScope()
        p x
        true))

/// A float32-exact value in [-2, 2] on a 1e-3 grid.
let value : Gen<float32> = Gen.choose (-2000, 2000) |> Gen.map (fun i -> float32 i / 1000.0f)

/// A rows × cols block of values, row-major.
type Block =
    { Rows: int
      Cols: int
      Values: float32[] }
    /// The block as a float32 [rows, cols] tensor.
    member b.Tensor = torch.tensor(b.Values, dtype = torch.ScalarType.Float32).reshape(int64 b.Rows, int64 b.Cols)
    /// The block's rows as doubles.
    member b.Matrix = Array.init b.Rows (fun r -> Array.init b.Cols (fun c -> float b.Values.[r * b.Cols + c]))
    /// The block with `delta` added at flat position `at` (modulo its size).
    member b.Bumped (at: int) (delta: float32) =
        let v = Array.copy b.Values
        let i = at % v.Length
        v.[i] <- v.[i] + delta
        { b with Values = v }

let block (rows: int) (cols: int) : Gen<Block> =
    Gen.arrayOfLength (rows * cols) value |> Gen.map (fun v -> { Rows = rows; Cols = cols; Values = v })

/// Labels of `rows` examples among `classes`.
let labels (rows: int) (classes: int list) : Gen<int[]> = Gen.arrayOfLength rows (Gen.elements classes)

/// An int64 label tensor.
let labelTensor (ls: int[]) = torch.tensor(ls |> Array.map int64, dtype = torch.ScalarType.Int64)

/// A tensor's values as doubles, row-major.
let floats (t: Tensor) : float[] =
    use d = t.detach().cpu().to_type(torch.ScalarType.Float64).contiguous()
    d.data<float>().ToArray()

/// A [rows, cols] tensor's rows as doubles.
let rowsOf (t: Tensor) : float[][] =
    let cols = int t.shape.[1]
    floats t |> Array.chunkBySize cols

/// A scalar tensor's value.
let scalar (t: Tensor) = (floats t).[0]

/// The columns `classes` of each row.
let columns (classes: int list) (m: float[][]) = m |> Array.map (fun row -> [| for c in classes -> row.[c] |])

let private logSumExp (row: float[]) =
    let m = Array.max row
    m + log (row |> Array.sumBy (fun v -> exp (v - m)))

/// Mean cross-entropy of rows of logits against labels (a column index of each row).
let crossEntropyRef (logits: float[][]) (ls: int[]) =
    Array.map2 (fun (row: float[]) (y: int) -> logSumExp row - row.[y]) logits ls |> Array.average

/// Mean cross-entropy over the columns `classes` only (Task-IL / seen-class masking).
let maskedCrossEntropyRef (classes: int list) (logits: float[][]) (ls: int[]) =
    Array.map2 (fun (row: float[]) (y: int) -> logSumExp [| for c in classes -> row.[c] |] - row.[y]) logits ls |> Array.average

/// Mean of squared differences over all entries.
let mseRef (a: float[][]) (b: float[][]) =
    Array.map2 (Array.map2 (fun (x: float) y -> (x - y) * (x - y))) a b |> Array.concat |> Array.average

/// Relative-and-absolute closeness.
let near (tolerance: float) (expected: float) (actual: float) = abs (expected - actual) <= tolerance * (1.0 + abs expected)

/// Fails unless two doubles are near.
let expectNear (tolerance: float) (what: string) (expected: float) (actual: float) =
    if not (near tolerance expected actual) then failtestf "%s: %.9g, expected %.9g" what actual expected

/// The tiny model the hand-built views carry (the loss terms read only the tensors).
let private tinyModel = lazy (Backbones.create F.architecture)

/// One buffer draw: its stored inputs, labels and logits, and the current model's logits on it.
type Draw =
    { Inputs: Block
      Labels: int[]
      Stored: Block
      Current: Block }

let draw (rows: int) (classes: int) : Gen<Draw> =
    gen {
        let! x = block rows 4
        let! y = labels rows [ 0 .. classes - 1 ]
        let! stored = block rows classes
        let! current = block rows classes
        return { Inputs = x; Labels = y; Stored = stored; Current = current }
    }

/// A step view built by hand from the batch's inputs, labels and current logits, and the draws (None:
/// an empty buffer). Its tensors belong to the caller's dispose scope.
let viewOf (inputs: Block) (batchLabels: int[]) (logits: Block) (draws: Draw option list) : StepView =
    let model = tinyModel.Force()
    { Batch = { Inputs = inputs.Tensor; Labels = labelTensor batchLabels; LabelArray = batchLabels; Task = 0 }
      Output = { Logits = logits.Tensor; Features = [] }
      Replay =
        draws
        |> List.map (Option.map (fun d ->
            { Draw = { Inputs = d.Inputs.Tensor; Labels = labelTensor d.Labels; Logits = d.Stored.Tensor; Valid = None }
              Logits = d.Current.Tensor
              Features = [] }))
      Model = model
      Parameters = [ for p in model.parameters () -> p :> Tensor ]; Heads = None }

/// A method's terms on a view as (name, value) pairs, in order.
let termValues (terms: LossTerm list) = terms |> List.map (fun t -> t.Name, scalar t.Value)

/// The tolerance of "unchanged": float32 kernels may sum in another order on differently aligned
/// copies of the same values (a unit in the last place); a term that reads a perturbed input moves by
/// orders of magnitude more.
let unchanged = 1e-6

/// Fails unless two lists of terms have the same names and values within `unchanged`.
let expectSameTerms (what: string) (before: (string * float) list) (after: (string * float) list) =
    Expect.equal (List.map fst after) (List.map fst before) (what + ": the terms' names")
    List.iter2 (fun (name, b) (_, a) -> if not (near unchanged b a) then failtestf "%s: %s changed from %.9g to %.9g" what name b a) before after

/// Three tasks' training data on the tiny architecture (12 examples each, classes {0,1}, {2,3}, {0,3}).
let threeTasks (seed: int) : LabelledSet list =
    [ F.synthetic seed 12 [ 0; 1 ]
      F.synthetic (seed + 7) 12 [ 2; 3 ]
      F.synthetic (seed + 13) 12 [ 0; 3 ] ]

/// Moves every parameter of a model by Gaussian noise of deviation `scale` (torch's generator), as
/// training between two task ends would.
let moveModel (scale: float) (model: Backbone) =
    use _ = torch.no_grad ()
    for p in model.parameters () do
        use noise = torch.randn_like p
        p.add_(noise, Scalars.cached scale) |> ignore

/// A model's parameters, flat.
let parametersOf (model: Backbone) = F.flatValues [ for p in model.parameters () -> p :> Tensor ]

/// A task's context for task `task` on the tiny architecture.
let contextFor (task: int) (model: Backbone) (data: LabelledSet) : TaskContext =
    { F.contextOf model data with Task = task }

/// Runs a packed method's EndTask on each task's data in turn, the model moved between the task ends,
/// calling `reference` with each task's index and data first (at the same model). The shell's
/// `Training.phase` frees what each transition drops.
let endTasks (model: Backbone) (tasks: LabelledSet list) (reference: int -> LabelledSet -> unit) (instance: MethodInstance) =
    tasks
    |> List.indexed
    |> List.fold (fun m (t, data) ->
        if t > 0 then moveModel 0.3 model
        reference t data
        Training.phase (fun m -> m.EndTask(contextFor t model data)) m) instance

/// Flat values of per-parameter tensors, which are then freed (estimates that live outside scopes).
let takeFlat (ts: Tensor list) =
    let v = F.flatValues ts
    ts |> List.iter (fun t -> t.Dispose())
    v

/// `Σ_k w_k x_k` elementwise.
let weightedSum (terms: (float * float[]) list) =
    terms |> List.map (fun (w, x) -> Array.map ((*) w) x) |> List.reduce (Array.map2 (+))

/// An importance-method case: the seed of the model and the data, a decay in (0, 1), λ, the Fisher's
/// labels and a displacement from the last anchor at which to read the penalty.
type DecayCase =
    { Seed: int
      Decay: float
      Lambda: float
      Kind: FisherKind
      Displacement: float[] }

let decayCase : Gen<DecayCase> =
    gen {
        let! seed = Gen.choose (0, 10000)
        let! decay = Gen.choose (5, 95) |> Gen.map (fun i -> float i / 100.0)
        let! lambda = Gen.elements [ 0.5; 2.0; 7.0 ]
        let! kind = Gen.elements [ Sampled; Empirical; LabelWeighted ]
        let! d = F.displacement
        return { Seed = seed; Decay = decay; Lambda = lambda; Kind = kind; Displacement = d }
    }

/// Checks a packed method's one penalty at `anchor + displacement` against the plain `c Σ Ω (θ − θ*)²`
/// over (Ω, θ*) pairs: its value and the gradient the shell adds (this sets the model's parameters).
let expectPenalty (coefficient: float) (pairs: (float[] * float[]) list) (anchor: float[]) (displacement: float[]) (model: Backbone) (instance: MethodInstance) =
    let r : F.Reference = { Name = instance.Name; Coefficient = coefficient; Pairs = pairs }
    let theta = Array.map2 (+) anchor displacement
    let value, gradient = F.termAt instance model theta
    expectNear 1e-4 "penalty value" (F.referenceValue r theta) value
    F.arraysClose 1e-4 "penalty gradient" (F.referenceGradient r theta) gradient

/// A two-parameter quadratic per task, `L_t(θ) = ½ Σ a_i (θ_i − b_t,i)²`, walked by plain SGD.
type Walk =
    { A: float[]
      /// The minimum b_t of each task.
      B: float[] list
      Start: float[]
      LearningRate: float
      /// Steps per task.
      Steps: int list }

let walk (tasks: int) : Gen<Walk> =
    let v lo hi = Gen.choose (lo, hi) |> Gen.map (fun i -> float (float32 i / 100.0f))
    gen {
        let! a = Gen.arrayOfLength 2 (v 10 400)
        let! b = Gen.listOfLength tasks (Gen.arrayOfLength 2 (v -300 300))
        let! start = Gen.arrayOfLength 2 (v -300 300)
        let! lr = Gen.elements [ 0.05; 0.1; 0.3 ]
        let! steps = Gen.listOfLength tasks (Gen.choose (1, 6))
        // lr · a ≤ 0.8: the walk contracts without landing on b (float32 round-off would then dominate).
        let a = a |> Array.map (fun x -> min x (float (float32 (0.8 / lr))))
        return { A = a; B = b; Start = start; LearningRate = lr; Steps = steps }
    }

/// The walk's gradient at θ in task t.
let walkGradient (w: Walk) (t: int) (theta: float[]) = Array.init 2 (fun i -> w.A.[i] * (theta.[i] - w.B.[t].[i]))

/// A float32 vector.
let vector (xs: float[]) = torch.tensor(xs |> Array.map float32, dtype = torch.ScalarType.Float32)

/// One backward of task t's quadratic into p.grad (zeroed first), clipped to [-1, 1] when asked.
let walkBackward (w: Walk) (t: int) (clip: bool) (p: Tensor) =
    if not (isNull p.grad) then p.grad.zero_() |> ignore
    use a = vector w.A
    use b = vector w.B.[t]
    use d = p - b
    use loss = (d.square() * a).sum() * 0.5
    loss.backward ()
    if clip then p.grad.clamp_(Scalars.cached (-1.0), Scalars.cached 1.0) |> ignore

/// The SGD update `p ← p − lr p.grad`.
let sgdUpdate (lr: float) (p: Tensor) =
    use _ = torch.no_grad ()
    p.add_(p.grad, Scalars.cached (-lr)) |> ignore

/// Applies a transition of a method's own state and frees what it dropped (the shell's `Training.phase`
/// for callers of the module functions).
let transition (owned: 'State -> System.IDisposable list) (f: 'State -> 'State) (state: 'State) : 'State =
    let next = f state
    let kept = System.Collections.Generic.HashSet<System.IDisposable>(owned next, HashIdentity.Reference)
    for d in owned state do
        if not (kept.Contains d) then d.Dispose()
    next
