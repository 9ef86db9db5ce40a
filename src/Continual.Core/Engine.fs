namespace Continual

open TorchSharp

/// Where tensors live and how libtorch is set up for this process.
[<RequireQualifiedAccess>]
module Engine =

    let mutable private configured = false

    /// Sets libtorch's intra-op threads once per process (one is fastest for the small batches of the
    /// reference protocol on a few cores). Inter-op threads are never changed: doing so after any
    /// parallel work has started aborts the process.
    let configureThreads (intraOpThreads: int) =
        if not configured then
            torch.set_num_threads (max 1 intraOpThreads)
            configured <- true

    /// Whether libtorch sees a CUDA device (false on the CPU build).
    let cudaAvailable () : bool = torch.cuda.is_available ()

    /// Parses a device name ("cpu", "cuda", "cuda:1"), failing clearly when CUDA is asked for but absent.
    let device (name: string) : torch.Device =
        match name.Trim().ToLowerInvariant() with
        | "cpu" -> torch.CPU
        | n when n.StartsWith "cuda" ->
            if not (torch.cuda.is_available ()) then
                failwithf "--device %s was asked for, but CUDA is not available: this build uses the CPU build of libtorch (see README, 'GPU machines')" name
            torch.device n
        | other -> failwithf "unknown device '%s' (expected cpu or cuda)" other

    /// The TorchSharp and libtorch versions in use, for result files.
    let versions () : (string * string) list =
        let torchSharp = typeof<torch.Tensor>.Assembly.GetName().Version
        [ "torchsharp", string torchSharp
          "dotnet", System.Environment.Version.ToString()
          "os", System.Runtime.InteropServices.RuntimeInformation.OSDescription ]
