"""`mmsdk serve`: the OpenAI-compatible HTTP server (see `mmsdk.serve`)."""
import sys


def register(sub) -> None:
    p = sub.add_parser("serve", help="an OpenAI-compatible HTTP server (/v1/chat/completions and more)")
    p.add_argument("--model", help="HF checkpoint folder or .gguf file (default: the bundled Gemma 3 270M)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-concurrency", type=int, default=4, help="requests generating at once (default 4)")
    p.add_argument("--max-queue", type=int, default=16,
                   help="requests waiting beyond those; more are refused with 503 (default 16)")
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /v1 (default: no key)")
    p.add_argument("--allow-files", metavar="DIR",
                   help="let image_url parts name local files under DIR (default: data URLs only)")
    p.add_argument("--max-body-mb", type=float, default=32,
                   help="largest request body in MiB (default 32); a larger one gets 413")
    p.add_argument("--prefix-cache-mb", type=float, default=256,
                   help="memory for KV caches of prompt prefixes, reused by prompts that start alike (0: off)")
    p.add_argument("--threads", type=int)
    p.set_defaults(func=cmd_serve)


def cmd_serve(args) -> int:
    from .errors import InputError

    for name in ("max_concurrency", "max_queue"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.prefix_cache_mb < 0:
        raise InputError(f"--prefix-cache-mb must be >= 0, got {args.prefix_cache_mb}")
    if args.max_body_mb <= 0:
        raise InputError(f"--max-body-mb must be > 0, got {args.max_body_mb}")
    if not 0 <= args.port <= 65535:
        raise InputError(f"--port must be from 0 to 65535, got {args.port}")
    if args.allow_files and not __import__("os").path.isdir(args.allow_files):
        raise InputError(f"--allow-files {args.allow_files}: no such folder")
    try:
        from .serve import serve
    except ImportError as e:
        raise InputError(f"mmsdk serve needs the server's packages: pip install 'mmsdk[serve]' ({e})") from e
    import mmsdk

    print(f"loading {args.model or 'the bundled Gemma 3 270M'} ...", file=sys.stderr)
    asst = mmsdk.load(args.model, threads=args.threads)
    serve(asst, host=args.host, port=args.port, api_key=args.api_key, max_concurrency=args.max_concurrency,
          max_queue=args.max_queue, allow_files=args.allow_files, max_body=int(args.max_body_mb * 2**20),
          prefix_cache_bytes=int(args.prefix_cache_mb * 2**20))
    return 0
