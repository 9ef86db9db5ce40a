namespace Continual

open TorchSharp

/// One named term of a training loss, e.g. "ce" or "der.logits".
type LossTerm =
    { Name: string
      Value: Tensor }

/// Loss functions shared by strategies. Each is a pure function of its tensors.
[<RequireQualifiedAccess>]
module Losses =

    /// Mean cross-entropy of logits [n, classes] against int64 labels [n].
    let crossEntropy (logits: Tensor) (labels: Tensor) : Tensor =
        torch.nn.functional.cross_entropy(logits, labels)

    /// DER's logit-matching term: the mean over samples and logit entries of the squared difference
    /// between current logits and the logits stored at insertion (PyTorch's mse_loss scale).
    let derLogitMatching (logits: Tensor) (storedLogits: Tensor) : Tensor =
        torch.nn.functional.mse_loss(logits, storedLogits)

    /// DER's logit-matching term where only some stored logits hold a value (`valid`, bool, the shape of
    /// the logits: a head that grew after the examples were stored): the mean over the valid entries of
    /// the squared difference. With every entry valid it equals `derLogitMatching`.
    let derLogitMatchingValid (logits: Tensor) (storedLogits: Tensor) (valid: Tensor) : Tensor =
        use difference = logits.sub storedLogits
        use squared = difference.square ()
        use zeros = torch.zeros_like squared
        use kept = torch.where(valid, squared, zeros)
        use sum = kept.sum ()
        use count = valid.sum().to_type(sum.dtype).clamp_min(Scalars.cached 1.0)
        sum.div count

    /// Logits with every class outside `classes` set to -infinity (Task-IL masking).
    let maskToClasses (classes: int list) (logits: Tensor) : Tensor =
        let numClasses = logits.shape.[logits.shape.Length - 1]
        let keep = Array.create (int numClasses) false
        // Classes beyond the logits (a growing head that has not reached them) have no column to keep.
        for c in classes do if c < keep.Length then keep.[c] <- true
        use mask = torch.tensor(keep |> Array.map not, dtype = torch.ScalarType.Bool)
        logits.masked_fill(mask, Scalars.negativeInfinity)

    /// The sum of named terms.
    let total (terms: LossTerm list) : Tensor =
        match terms with
        | [] -> invalidArg (nameof terms) "a step needs at least one loss term"
        | first :: rest -> rest |> List.fold (fun (acc: Tensor) t -> Scalars.add acc t.Value) first.Value
