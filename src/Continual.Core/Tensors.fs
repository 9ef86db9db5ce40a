namespace Continual

/// Short names for TorchSharp's types, shared by every module of the core. (Opening `torch` as a type
/// would shadow F#'s conversion functions such as int64 and float32.)
type Tensor = TorchSharp.torch.Tensor

/// A TorchSharp device (CPU or a CUDA device).
type Device = TorchSharp.torch.Device
