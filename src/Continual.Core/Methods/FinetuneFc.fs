namespace Continual.Methods

/// Fine-tuning the classifier only: every task trains the last layer alone, the backbone stays as it
/// was initialised (a linear read-out of random features). One of the baselines of the lecture's table
/// (LwF's comparison); see docs/baselines.md for how it differs from the paper's "fine-tune FC", which
/// starts from pre-trained features and also tunes the top fully connected layers.
[<RequireQualifiedAccess>]
module FinetuneFc =

    /// Everything outside the classifier, in every task.
    let frozen : Frozen = { Frozen.Nothing with Backbone = true }

    /// The classifier-only baseline as a method: cross-entropy, the backbone frozen.
    let method : Method<unit> =
        { Method.empty "finetune-fc" with
            Terms = fun () view -> [ Sgd.crossEntropy view ]
            Freeze = fun _ () -> frozen }

    /// The classifier-only baseline as a strategy.
    let strategy () : Strategy = Method.strategy "finetune-fc" (Method.pack method ())
