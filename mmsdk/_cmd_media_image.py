"""`mmsdk describe IMAGE`."""
import sys


def register(sub) -> None:
    p = sub.add_parser("describe", help="describe an image (needs a model with vision: Gemma 3 4B+ or Gemma 3n)")
    p.add_argument("image")
    p.add_argument("--prompt", default="Describe this image.")
    p.add_argument("--model", help="HF checkpoint folder with a vision tower (default: the bundled model, text only)")
    p.add_argument("--no-pan-and-scan", action="store_true", help="encode only the whole image, no crops")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--threads", type=int)
    p.set_defaults(func=cmd_describe)


def cmd_describe(args) -> int:
    import mmsdk

    from .encoders.image_io import open_image

    open_image(args.image)  # a bad image fails fast, before the model loads
    print(f"loading {args.model or 'the bundled model'} ...", file=sys.stderr)
    asst = mmsdk.load(args.model, threads=args.threads)
    print(asst.describe_image(args.image, args.prompt, pan_and_scan=not args.no_pan_and_scan,
                              max_tokens=args.max_tokens))
    return 0
