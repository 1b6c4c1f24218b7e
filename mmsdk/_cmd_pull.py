"""`mmsdk pull NAME`: the one command that downloads a model (into the Hugging Face cache)."""
import sys


def register(sub) -> None:
    p = sub.add_parser("pull", help="download a model from the Hugging Face Hub into its local cache (needs the network)")
    p.add_argument("name", help="model id, 'org/name', or 'org/name:TAG' for one quantization of a GGUF repository")
    p.set_defaults(func=cmd_pull)


def cmd_pull(args) -> int:
    from .models import pull

    print(f"downloading {args.name} from the Hugging Face Hub (this uses the network) ...", file=sys.stderr)
    path = pull(args.name)
    print(f"{args.name}: {path}\nload it offline with mmsdk.load({args.name!r}) or --model {args.name}", file=sys.stderr)
    return 0
