/// Shared pieces of the method properties (tests/Continual.Properties/Methods/): small random logit
/// blocks and draws, hand-built step views, plain-array references of the losses the methods combine.
module Continual.Properties.Methods.Support

open Expecto
open FsCheck
open FsCheck.FSharp
open Continual
open Continual.Methods
open Continual.Models
open Continual.Replay
open Continual.Properties
open TorchSharp

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
let private tinyModel = lazy (Backbones.create Continual.Properties.PenaltiesFixtures.architecture)

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
            { Draw = { Inputs = d.Inputs.Tensor; Labels = labelTensor d.Labels; Logits = d.Stored.Tensor }
              Logits = d.Current.Tensor
              Features = [] }))
      Model = model
      Parameters = [ for p in model.parameters () -> p :> Tensor ] }

/// A method's terms on a view as (name, value) pairs, in order.
let termValues (terms: LossTerm list) = terms |> List.map (fun t -> t.Name, scalar t.Value)
