namespace Continual.Data

open System
open System.IO
open System.Threading.Tasks
open SkiaSharp

/// The colour of the images a source yields.
[<RequireQualifiedAccess>]
type ColourMode =
    /// As the files are: one channel for grayscale files, three for colour ones (all must agree).
    | Auto
    /// One channel (colour files converted with the ITU-R BT.601 luma weights).
    | Gray
    /// Three channels, red, green, blue (grayscale files repeated in each).
    | Rgb

/// How image files become inputs: an optional target size and the colour mode.
type ImageOptions =
    { /// Height and width every image is brought to (scaled to cover it, then centre-cropped); None
      /// keeps the files' own size, which must then be the same for all.
      Size: (int * int) option
      Colour: ColourMode }

/// One decoded image: channel-major bytes (C × H × W, each channel row-major).
type DecodedImage =
    { Channels: int
      Height: int
      Width: int
      Pixels: byte[] }

/// Image options: defaults and their command-line and manifest forms.
[<RequireQualifiedAccess>]
module ImageOptions =

    /// The files' own size and colour.
    let defaults = { Size = None; Colour = ColourMode.Auto }

    /// The colour modes by name.
    let colourNames = [ "auto"; "gray"; "rgb" ]

    /// A colour mode from its name (auto, gray or grey, rgb).
    let tryParseColour (text: string) =
        match text.Trim().ToLowerInvariant() with
        | "auto" -> Some ColourMode.Auto
        | "gray" | "grey" | "grayscale" -> Some ColourMode.Gray
        | "rgb" | "color" | "colour" -> Some ColourMode.Rgb
        | _ -> None

    /// A colour mode's name.
    let colourName (mode: ColourMode) =
        match mode with
        | ColourMode.Auto -> "auto"
        | ColourMode.Gray -> "gray"
        | ColourMode.Rgb -> "rgb"

    /// A size from "64" (square) or "64x48" (height x width); None unless both are 1 .. 4096.
    let tryParseSize (text: string) : (int * int) option =
        let parse (s: string) =
            match Int32.TryParse(s.Trim(), Globalization.NumberStyles.None, Globalization.CultureInfo.InvariantCulture) with
            | true, v when v >= 1 && v <= 4096 -> Some v
            | _ -> None
        match text.Trim().ToLowerInvariant().Split('x') with
        | [| one |] -> parse one |> Option.map (fun v -> v, v)
        | [| h; w |] -> Option.map2 (fun h w -> h, w) (parse h) (parse w)
        | _ -> None

    /// A size as "HxW".
    let sizeText (height: int, width: int) = sprintf "%dx%d" height width

/// Decoding, converting and encoding image files with SkiaSharp (PNG, JPEG, and whatever else Skia
/// decodes: BMP, GIF, WebP).
[<RequireQualifiedAccess>]
module Images =

    /// The file extensions image folders read (compared without case).
    let extensions = [ ".png"; ".jpg"; ".jpeg"; ".bmp"; ".gif"; ".webp" ]

    /// Whether a file name has an image extension.
    let isImageFile (path: string) =
        List.contains (Path.GetExtension(path).ToLowerInvariant()) extensions

    let private corrupt (path: string) (why: string) = DataFileError(path, sprintf "cannot be decoded as an image: %s" why)

    /// Decodes an image file, converted to the colour mode and brought to the target size. A missing,
    /// unreadable, truncated or corrupt file is a DataFileError naming it.
    let read (options: ImageOptions) (path: string) : DecodedImage =
        DataFiles.checkReadable path
        let bytes = File.ReadAllBytes path
        if bytes.Length = 0 then raise (corrupt path "the file is empty")
        use memory = new MemoryStream(bytes)
        let mutable result = SKCodecResult.Success
        use codec = SKCodec.Create(memory, &result)
        if isNull codec then raise (corrupt path (sprintf "not a known image format (%O)" result))
        let info = codec.Info
        if info.Width <= 0 || info.Height <= 0 then raise (corrupt path "it has no pixels")
        let nativeChannels = if info.ColorType = SKColorType.Gray8 then 1 else 3
        let channels =
            match options.Colour with
            | ColourMode.Auto -> nativeChannels
            | ColourMode.Gray -> 1
            | ColourMode.Rgb -> 3
        // Decoded as premultiplied RGBA without a colour space (no colour conversion): grayscale files
        // give R = G = B, so their bytes come back exactly; transparency ends up over black.
        let full = SKImageInfo(info.Width, info.Height, SKColorType.Rgba8888, SKAlphaType.Premul)
        use decoded = new SKBitmap(full)
        let status = codec.GetPixels(full, decoded.GetPixels())
        if status <> SKCodecResult.Success then raise (corrupt path (sprintf "%O (the file is cut or damaged)" status))
        let height, width = defaultArg options.Size (info.Height, info.Width)
        let sized =
            if (height, width) = (info.Height, info.Width) then decoded
            else
                // Scale so that the image covers the target, then cut the centre (aspect ratio kept).
                let scale = max (float width / float info.Width) (float height / float info.Height)
                let cropWidth = min info.Width (max 1 (int (Math.Round(float width / scale))))
                let cropHeight = min info.Height (max 1 (int (Math.Round(float height / scale))))
                let left = (info.Width - cropWidth) / 2
                let top = (info.Height - cropHeight) / 2
                use subset = new SKBitmap()
                if not (decoded.ExtractSubset(subset, SKRectI(left, top, left + cropWidth, top + cropHeight))) then
                    raise (corrupt path "its centre could not be cropped")
                let target = new SKBitmap(SKImageInfo(width, height, SKColorType.Rgba8888, SKAlphaType.Premul))
                if not (subset.ScalePixels(target, SKSamplingOptions(SKFilterMode.Linear, SKMipmapMode.Linear))) then
                    raise (corrupt path (sprintf "it could not be resized to %dx%d" height width))
                target
        try
            let rgba = sized.Bytes
            let plane = height * width
            let pixels = Array.zeroCreate<byte> (channels * plane)
            if channels = 1 then
                for i in 0 .. plane - 1 do
                    let r = int rgba.[4 * i]
                    let g = int rgba.[4 * i + 1]
                    let b = int rgba.[4 * i + 2]
                    pixels.[i] <- byte ((299 * r + 587 * g + 114 * b + 500) / 1000)
            else
                for i in 0 .. plane - 1 do
                    pixels.[i] <- rgba.[4 * i]
                    pixels.[plane + i] <- rgba.[4 * i + 1]
                    pixels.[2 * plane + i] <- rgba.[4 * i + 2]
            { Channels = channels; Height = height; Width = width; Pixels = pixels }
        finally
            if not (obj.ReferenceEquals(sized, decoded)) then sized.Dispose()

    /// Encodes an image as PNG (lossless) or JPEG (quality 1-100), by format.
    let encode (format: SKEncodedImageFormat) (quality: int) (image: DecodedImage) : byte[] =
        if image.Channels <> 1 && image.Channels <> 3 then invalidArg (nameof image) (sprintf "%d channels: only 1 and 3 can be encoded" image.Channels)
        let plane = image.Height * image.Width
        if image.Pixels.Length <> image.Channels * plane then invalidArg (nameof image) "the pixels do not match the shape"
        let info, bytes =
            if image.Channels = 1 then
                SKImageInfo(image.Width, image.Height, SKColorType.Gray8, SKAlphaType.Opaque), image.Pixels
            else
                let rgba = Array.zeroCreate<byte> (4 * plane)
                for i in 0 .. plane - 1 do
                    rgba.[4 * i] <- image.Pixels.[i]
                    rgba.[4 * i + 1] <- image.Pixels.[plane + i]
                    rgba.[4 * i + 2] <- image.Pixels.[2 * plane + i]
                    rgba.[4 * i + 3] <- 255uy
                SKImageInfo(image.Width, image.Height, SKColorType.Rgba8888, SKAlphaType.Opaque), rgba
        use bitmap = new SKBitmap(info)
        Runtime.InteropServices.Marshal.Copy(bytes, 0, bitmap.GetPixels(), bytes.Length)
        use encoded = bitmap.Encode(format, quality)
        if isNull encoded then invalidOp (sprintf "SkiaSharp could not encode a %dx%d image as %O" image.Height image.Width format)
        encoded.ToArray()

    /// Writes an image file atomically, PNG or JPEG (quality 95) by the path's extension.
    let write (path: string) (image: DecodedImage) =
        let format =
            match Path.GetExtension(path).ToLowerInvariant() with
            | ".png" -> SKEncodedImageFormat.Png
            | ".jpg" | ".jpeg" -> SKEncodedImageFormat.Jpeg
            | other -> invalidArg (nameof path) (sprintf "cannot write '%s' images (write .png or .jpg)" other)
        Continual.Files.writeAtomically path (encode format 95 image)

    /// Labelled image files as examples, decoded in parallel straight into one byte array (so memory
    /// holds the pixels once). Every image must agree in size and channel count with the reference
    /// image (path and shape) when given, else with the first file: a DataFileError names the first
    /// image, in file order, that differs or cannot be decoded. Returns the examples and their input
    /// shape (channels, height, width).
    let readExamples (options: ImageOptions) (origin: string) (reference: (string * (int * int * int)) option) (files: (string * string)[]) : Examples * (int * int * int) =
        if files.Length = 0 then raise (DataFileError(origin, "holds no image"))
        let referencePath, shape =
            match reference with
            | Some r -> r
            | None ->
                let first = read options (fst files.[0])
                fst files.[0], (first.Channels, first.Height, first.Width)
        let channels, height, width = shape
        let features = channels * height * width
        let pixels = Array.zeroCreate<byte> (files.Length * features)
        let errors = Array.zeroCreate<exn> files.Length
        Parallel.For(0, files.Length, ParallelOptions(MaxDegreeOfParallelism = Environment.ProcessorCount), fun i ->
            try
                let path = fst files.[i]
                let image = read options path
                if (image.Height, image.Width) <> (height, width) then
                    raise (DataFileError(path, sprintf "is %dx%d but %s is %dx%d: images of mixed sizes need a target size (--image-size HxW, or size: in a manifest)" image.Height image.Width referencePath height width))
                if image.Channels <> channels then
                    raise (DataFileError(path, sprintf "has %d channel%s but %s has %d: images of mixed colour need a colour mode (--colour gray or rgb)" image.Channels (if image.Channels = 1 then "" else "s") referencePath channels))
                Buffer.BlockCopy(image.Pixels, 0, pixels, i * features, features)
            with e -> errors.[i] <- e)
        |> ignore
        match errors |> Array.tryFind (isNull >> not) with
        | Some e -> raise e
        | None -> ()
        { Values = ExampleValues.Bytes pixels; Features = features; Classes = files |> Array.map snd; Origin = origin }, shape
