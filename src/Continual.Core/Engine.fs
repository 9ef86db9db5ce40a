namespace Continual

open System.Runtime.InteropServices
open TorchSharp

/// libtorch's global switch for oneDNN (`at::globalContext().setUserEnabledMkldnn`), which TorchSharp
/// does not expose; the entry points are the Itanium-mangled names of libtorch_cpu on Linux.
module private LibTorchContext =
    [<DllImport("torch_cpu", EntryPoint = "_ZN2at13globalContextEv")>]
    extern nativeint globalContext()

    [<DllImport("torch_cpu", EntryPoint = "_ZN2at7Context20setUserEnabledMkldnnEb")>]
    extern void setUserEnabledMkldnn(nativeint context, [<MarshalAs(UnmanagedType.U1)>] bool enabled)

/// What the check of libtorch's CPU convolutions found (`Engine.checkConvolutions`).
type ConvolutionCheck =
    /// oneDNN's convolutions agree with libtorch's reference convolution.
    | Sound
    /// They did not (the largest difference, relative to the largest output), and libtorch's own
    /// convolutions are used from then on, in this process.
    | FellBack of relativeError: float
    /// They did not, and oneDNN could not be switched off here (the reason).
    | Unsound of relativeError: float * reason: string

/// Where tensors live and how libtorch is set up for this process.
[<RequireQualifiedAccess>]
module Engine =

    let mutable private configured = false

    /// The load started by startLoadingLibraries, if one was.
    let mutable private loading: System.Threading.Tasks.Task = null

    /// Starts loading libtorch's native libraries on a thread of its own and returns at once, so that
    /// a program's start (its argument parse, its checks, reading its data) overlaps the load; a later
    /// loadLibraries waits for it. The dynamic loader holds its lock for the whole load and `dlsym`
    /// takes the same lock, so until the load ends the calling thread should call no native function it
    /// has not called before (the first call of each P/Invoke binds it): the caller binds those first.
    /// `around` runs on the loading thread and is handed the load to call (the tool readies that
    /// thread's heap for it). A second call does nothing.
    let startLoadingLibrariesAround (around: (unit -> unit) -> unit) =
        if isNull loading then
            loading <-
                System.Threading.Tasks.Task.Factory.StartNew(
                    (fun () -> around (fun () -> torch.InitializeDeviceType DeviceType.CPU)),
                    System.Threading.Tasks.TaskCreationOptions.LongRunning)

    /// startLoadingLibrariesAround with nothing around the load.
    let startLoadingLibraries () = startLoadingLibrariesAround (fun load -> load ())

    /// Loads libtorch's native libraries now, on this thread, if nothing has yet (about half a second
    /// of dynamic linking and static initialisers), or waits for the load startLoadingLibraries began
    /// (raising what it raised). A caller overlaps it with work on another thread that needs neither
    /// tensors nor a native function it has not called before, since the dynamic loader's lock is held
    /// throughout.
    let loadLibraries () =
        if isNull loading then torch.InitializeDeviceType DeviceType.CPU
        else loading.GetAwaiter().GetResult()

    /// True while a load that startLoadingLibraries began has not ended.
    let librariesLoading () = not (isNull loading) && not loading.IsCompleted

    /// Sets libtorch's intra-op threads once per process (one is fastest for the small batches of the
    /// reference protocol on a few cores). Inter-op threads are never changed: doing so after any
    /// parallel work has started aborts the process.
    let configureThreads (intraOpThreads: int) =
        if not configured then
            torch.set_num_threads (max 1 intraOpThreads)
            configured <- true

    let private convolutionProbe () : float =
        use _ = torch.NewDisposeScope()
        use _ = torch.no_grad ()
        // 20 channels (not a multiple of oneDNN's vector block) over 64×64 maps: large enough that
        // libtorch hands a float32 convolution to oneDNN, while float64 takes libtorch's own kernel.
        let generator = new torch.Generator(20261201UL)
        let weight = torch.randn([| 20L; 20L; 3L; 3L |], generator = generator).mul_(Scalars.cached 0.1)
        let input = torch.randn([| 2L; 20L; 64L; 64L |], generator = generator)
        generator.Dispose()
        let fast = torch.nn.functional.conv2d(input, weight, padding = [| 1L; 1L |])
        let reference =
            torch.nn.functional.conv2d(input.to_type torch.ScalarType.Float64, weight.to_type torch.ScalarType.Float64, padding = [| 1L; 1L |])
        let error = fast.to_type(torch.ScalarType.Float64).sub(reference).abs().max().item<float>()
        let scale = reference.abs().max().item<float>()
        if System.Double.IsNaN error then infinity else error / scale

    let mutable private convolutionCheck : ConvolutionCheck option = None

    /// Checks once per process that libtorch's CPU convolutions compute what they should, and where
    /// they do not, switches oneDNN off for the rest of the process. On an AMD EPYC (AVX-512) machine,
    /// libtorch 2.10's oneDNN 3.7.1 gave float32 convolutions over channel counts such as the
    /// ResNet-18's 20 that were wrong by a third of their scale at 64×64 maps, and NaN now and then at
    /// 28×28 (it left the padding channels of its blocked copies unset), under every vector ISA it offers
    /// but SSE4.1. libtorch's own convolutions are right there, and slower (the ResNet-18's step about 4×).
    /// Where the check passes nothing changes, so results stay those of oneDNN, bit for bit. The
    /// ResNet-18 calls this when it is built; the CNN's channel counts are multiples of oneDNN's
    /// block (right on that machine too), and the MLP has no convolution.
    let checkConvolutions () : ConvolutionCheck =
        match convolutionCheck with
        | Some found -> found
        | None ->
            let error = convolutionProbe ()
            let found =
                if error <= 1e-4 then Sound
                else
                    try
                        LibTorchContext.setUserEnabledMkldnn (LibTorchContext.globalContext (), false)
                        let after = convolutionProbe ()
                        if after <= 1e-4 then FellBack error
                        else Unsound(error, sprintf "libtorch's own convolution is off by %.3g too" after)
                    with
                    | :? System.EntryPointNotFoundException
                    | :? System.DllNotFoundException as e -> Unsound(error, e.Message)
            convolutionCheck <- Some found
            found

    /// What `checkConvolutions` found in this process, or None where nothing has called it yet.
    let convolutionsChecked () : ConvolutionCheck option = convolutionCheck

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
