namespace Continual

/// Short names for TorchSharp's types, shared by every module of the core. (Opening `torch` as a type
/// would shadow F#'s conversion functions such as int64 and float32.)
type Tensor = TorchSharp.torch.Tensor

/// A TorchSharp device (CPU or a CUDA device).
type Device = TorchSharp.torch.Device

/// TorchSharp operations whose scalar argument is kept alive for the whole native call. A TorchSharp
/// `Scalar` is a managed object over a native value and frees it in its finaliser; a temporary one
/// (`t.mul(x.ToScalar())`, an implicit conversion, or the alpha of 1 that TorchSharp's own `add(Tensor)`
/// makes) is unreachable once its handle is passed, so a collection on another thread during the call
/// could free it while libtorch reads it: a rare "Expected false to be true" from `Scalar::toFloat`
/// mid-run, or a wrong factor. Here each scalar lives in a binding until the call has returned, and
/// the alpha of 1 is one process-wide scalar.
[<RequireQualifiedAccess>]
module Scalars =

    /// The integer 1, the alpha TorchSharp's `add(Tensor)` and `add_(Tensor)` pass (never freed).
    let one : TorchSharp.Scalar = TorchSharp.ScalarExtensionMethods.ToScalar(1)

    /// Single-precision −∞, the fill of masked logits (never freed).
    let negativeInfinity : TorchSharp.Scalar = TorchSharp.ScalarExtensionMethods.ToScalar(System.Single.NegativeInfinity)

    let private byValue = System.Collections.Concurrent.ConcurrentDictionary<int64, TorchSharp.Scalar>()

    /// The float64 scalar `v`, made once per process and never freed: for the values a run passes again
    /// and again (settings, constants), not for values that change from step to step.
    let cached (v: float) : TorchSharp.Scalar =
        byValue.GetOrAdd(System.BitConverter.DoubleToInt64Bits v, fun _ -> TorchSharp.ScalarExtensionMethods.ToScalar(v))

    /// `a + b`.
    let add (a: Tensor) (b: Tensor) : Tensor = a.add(b, one)

    /// `a += b`, in place; returns `a`.
    let addInPlace (a: Tensor) (b: Tensor) : Tensor = a.add_(b, one)

    /// `a + alpha · b`.
    let addScaled (a: Tensor) (b: Tensor) (alpha: float) : Tensor =
        use s = TorchSharp.ScalarExtensionMethods.ToScalar(alpha)
        a.add(b, s)

    /// `t · v`.
    let mul (t: Tensor) (v: float) : Tensor =
        use s = TorchSharp.ScalarExtensionMethods.ToScalar(v)
        t.mul s

    /// `t / v`.
    let div (t: Tensor) (v: float) : Tensor =
        use s = TorchSharp.ScalarExtensionMethods.ToScalar(v)
        t.div s

    /// The value of a one-element tensor as a float. TorchSharp's own `ToDouble()` reads it through a
    /// temporary Scalar that a collection on another thread may free while libtorch reads it (an
    /// abort, "Expected false to be true" from `Scalar::toDouble`); here the Scalar lives until the
    /// read has returned.
    let toFloat (t: Tensor) : float =
        use s = t.ToScalar()
        TorchSharp.ScalarExtensionMethods.ToDouble s

    /// The value of a one-element tensor as a float32 (see `toFloat`).
    let toFloat32 (t: Tensor) : float32 =
        use s = t.ToScalar()
        TorchSharp.ScalarExtensionMethods.ToSingle s

    /// The value of a one-element tensor as an int64 (see `toFloat`).
    let toInt64 (t: Tensor) : int64 =
        use s = t.ToScalar()
        TorchSharp.ScalarExtensionMethods.ToInt64 s

    /// The value of a one-element tensor as a bool (see `toFloat`).
    let toBool (t: Tensor) : bool =
        use s = t.ToScalar()
        TorchSharp.ScalarExtensionMethods.ToBoolean s
