namespace Continual.Methods

/// Feature extraction (a baseline of LwF's comparison): the first task trains the whole network; from
/// the second task on the backbone is frozen and only the classifier trains, on the features the first
/// task learned. With `--heads multi` the old tasks' heads get no gradient either, which is the paper's
/// form (old tasks' outputs unchanged).
[<RequireQualifiedAccess>]
module FeatureExtraction =

    /// What a task freezes: nothing in the first task, the backbone afterwards.
    let frozen (task: int) : Frozen = if task = 0 then Frozen.Nothing else { Frozen.Nothing with Backbone = true }

    /// Feature extraction as a method: cross-entropy, the backbone frozen after the first task.
    let method : Method<unit> =
        { Method.empty "feature-extraction" with
            Terms = fun () view -> [ Sgd.crossEntropy view ]
            Freeze = fun context () -> frozen context.Task }

    /// Feature extraction as a strategy.
    let strategy () : Strategy = Method.strategy "feature-extraction" (Method.pack method ())
