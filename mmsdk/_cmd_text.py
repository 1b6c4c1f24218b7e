"""`mmsdk generate`, `mmsdk chat` and `mmsdk demo`."""
import sys
import time


def _add_sampling(p):
    p.add_argument("--model", help="HF checkpoint folder or .gguf file (default: the bundled Gemma 3 270M)")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--min-p", type=float)
    p.add_argument("--repetition-penalty", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--threads", type=int)


def _sampling(args) -> dict:
    from .options import SAMPLING_KEYS

    return {k: getattr(args, k) for k in SAMPLING_KEYS if getattr(args, k) is not None}


def _load(args):
    import mmsdk

    from .options import check_sampling

    check_sampling(_sampling(args), args.max_tokens)  # a bad option fails before the model loads
    print(f"loading {args.model or 'the bundled Gemma 3 270M'} ...", file=sys.stderr)
    return mmsdk.load(args.model, threads=args.threads)


def register(sub) -> None:
    p = sub.add_parser("generate", help="continue a prompt (raw, no chat template)")
    p.add_argument("prompt")
    _add_sampling(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("chat", help="interactive chat in the terminal (a session keeps the context)")
    p.add_argument("--system", help="system prompt")
    _add_sampling(p)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("demo", help="a tour of what the bundled models do, offline")
    _add_sampling(p)
    p.set_defaults(func=cmd_demo)


def cmd_generate(args) -> int:
    asst = _load(args)
    for piece in asst.stream(args.prompt, max_tokens=args.max_tokens, **_sampling(args)):
        print(piece, end="", flush=True)
    print()
    return 0


def cmd_chat(args) -> int:
    asst = _load(args)
    session = asst.session(system=args.system)
    print("Type a message; an empty line or Ctrl-D ends the chat.", file=sys.stderr)
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            break
        if not line:
            break
        reply = session.send(line, max_tokens=args.max_tokens, **_sampling(args))
        print(f"model> {reply.text.strip()}")
    return 0


def cmd_demo(args) -> int:
    from . import _demo

    t0 = time.perf_counter()
    asst = _load(args)
    print(f"model: {asst.info.name} ({asst.info.parameters / 1e6:.0f}M parameters, {asst.info.quantization}), "
          f"loaded in {time.perf_counter() - t0:.1f} s")
    return 1 if _demo.run(asst) else 0
