"""`mmsdk bench`: prefill and decode speed, load time and peak memory of mmsdk against llama.cpp
and transformers on the same model and threads; with `--quality`, perplexity and top-1 agreement; with
`--image` or `--audio`, the encoder's time per view or per 30 s of audio (`_bench_media`)."""
import json
import sys
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("bench", help="measure speed, load time and memory (and quality with --quality)")
    p.add_argument("--model", help="GGUF file or HF checkpoint folder (default: the bundled Gemma 3 270M)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompt-tokens", type=int, default=512)
    p.add_argument("--gen-tokens", type=int, default=128)
    p.add_argument("--precisions", default=None,
                   help="mmsdk precisions to measure, comma-separated: float, bfloat16, int8, int4, stored "
                        "(default float,int8,int4); with --image/--audio float, int8 (default both)")
    p.add_argument("--peers", default="", help="comma-separated peers: llama.cpp (its own llama-bench, or "
                   "llama-cpp-python where llama-bench is not built), transformers")
    p.add_argument("--llama-bin", default=None,
                   help="llama.cpp's build/bin holding llama-bench and llama-perplexity (default: $MMSDK_LLAMA_BIN, "
                        "else the native build in ~/.cache/llama-cpp-tools, else PATH)")
    p.add_argument("--rounds", type=int, default=3, help="rounds; each runs every engine once, in rotating order")
    p.add_argument("--cold", action="store_true", help="also time a first load with an empty cache folder")
    p.add_argument("--quality", action="store_true",
                   help="perplexity on the CPython docs text and top-1 agreement with float, instead of speed")
    p.add_argument("--quality-tokens", type=int, default=16384,
                   help="corpus tokens scored (default 16384: at 2048 a quantized model's perplexity swings by ~1%%)")
    media = p.add_mutually_exclusive_group()
    media.add_argument("--image", action="store_true",
                       help="time the image encoder (one view, a 3:1 pan-and-scan image) and describe_image's first "
                            "token; peers: transformers (a checkpoint folder), llama.cpp (llama-mtmd-cli, a .gguf "
                            "model and its mmproj)")
    media.add_argument("--audio", action="store_true",
                       help="time the audio encoder on 30 s of audio and an audio chat's first token; peer: transformers")
    p.add_argument("--mmproj", help="llama.cpp's vision projector for a .gguf model (default: mmproj*.gguf beside it)")
    p.add_argument("--repeats", type=int, default=3, help="--image/--audio: timed runs of each engine after a warm-up")
    p.add_argument("--json", nargs="?", const="-", metavar="FILE", help="write JSON (to FILE, or stdout)")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    from ._bench_run import bench_quality, bench_speed
    from .errors import InputError

    if args.model:
        model = Path(args.model)
        if not model.exists():
            raise InputError(f"--model {args.model}: no such file or folder")
    else:
        from .bundled import bundled_gguf

        model = bundled_gguf()
    for name in ("threads", "prompt_tokens", "gen_tokens", "rounds", "quality_tokens", "repeats"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be at least 1")
    if args.image or args.audio:
        return cmd_bench_media(args, model)
    precisions = _listed("--precisions", args.precisions or "float,int8,int4",
                         ("float", "bfloat16", "int8", "int4", "stored"))
    peers = _listed("--peers", args.peers, ("llama.cpp", "transformers"))
    if "llama.cpp" in peers:
        from ._bench_llama import tool

        if tool("llama-bench", args.llama_bin) is None:
            try:
                import llama_cpp  # noqa: F401
            except ImportError as e:
                raise InputError("--peers llama.cpp needs llama.cpp's llama-bench (--llama-bin DIR) or "
                                 "llama-cpp-python (pip install 'mmsdk[bench]')") from e
    progress = _progress_bar()
    if args.quality:
        if "float" not in precisions:
            precisions = ["float", *precisions]
        res = bench_quality(str(model), threads=args.threads, tokens=args.quality_tokens,
                            precisions=precisions, progress=progress)
        table = quality_table(res)
    else:
        res = bench_speed(str(model), threads=args.threads, prompt_tokens=args.prompt_tokens,
                          gen_tokens=args.gen_tokens, precisions=precisions, peers=peers,
                          rounds=args.rounds, cold=args.cold, progress=progress, llama_bin=args.llama_bin)
        table = speed_table(res)
    progress(None, None)
    return _report(args.json, res, table)


def cmd_bench_media(args, model: Path) -> int:
    """`--image` / `--audio`: the encoder's own time against transformers and llama-mtmd-cli."""
    from ._bench_media import PRECISIONS, bench_media, media_table
    from .errors import InputError

    kind = "image" if args.image else "audio"
    precisions = _listed(f"--precisions with --{kind}", args.precisions or ",".join(PRECISIONS), PRECISIONS)
    peers = _listed("--peers", args.peers, ("llama.cpp", "transformers"))
    if "transformers" in peers and not model.is_dir():
        raise InputError(f"--peers transformers needs a checkpoint folder as --model, got {model}")
    mmproj = args.mmproj
    if mmproj and not Path(mmproj).is_file():
        raise InputError(f"--mmproj {mmproj}: no such file")
    if "llama.cpp" in peers:
        from ._bench_llama import tool

        if kind == "audio":
            raise InputError("--peers llama.cpp: llama-mtmd-cli is measured for --image only")
        if model.suffix != ".gguf":
            raise InputError(f"--peers llama.cpp needs a .gguf --model (and its mmproj), got {model}")
        mmproj = mmproj or next((str(f) for f in sorted(model.parent.glob("mmproj*.gguf"))), None)
        if mmproj is None:
            raise InputError(f"--peers llama.cpp: no mmproj*.gguf beside {model}; name it with --mmproj")
        if tool("llama-mtmd-cli", args.llama_bin) is None:
            raise InputError("--peers llama.cpp needs llama.cpp's llama-mtmd-cli (--llama-bin DIR or $MMSDK_LLAMA_BIN)")
    progress = _progress_bar()
    res = bench_media(kind, str(model), threads=args.threads, repeats=args.repeats, precisions=precisions,
                      peers=peers, mmproj=mmproj, llama_model=str(model), llama_bin=args.llama_bin, progress=progress)
    progress(None, None)
    ok = [r for name, r in res["results"].items() if name.startswith("mmsdk:") and "error" not in r]
    if not ok:  # the model itself could not encode: say why in one line, as for any bad input
        first = next(iter(res["results"].values()))
        raise InputError(f"--{kind}: {first.get('error', 'no result')}")
    return _report(args.json, res, media_table(res))


def _report(json_to: str | None, res: dict, table: str) -> int:
    """`--json -`: the results as JSON on stdout, no table; `--json FILE`: written there, and the table."""
    if json_to == "-":
        print(json.dumps(res, indent=2))
        return 0
    if json_to:
        Path(json_to).write_text(json.dumps(res, indent=2))
    print(table)
    return 0


def _listed(option: str, value: str, known) -> list[str]:
    """A comma-separated option's names, each one of `known`, else an InputError naming it."""
    from .errors import InputError

    names = [n for n in value.split(",") if n]
    bad = [n for n in names if n not in known]
    if bad:
        raise InputError(f"{option}: unknown {bad[0]!r} (known: {', '.join(known)})")
    return names


def _progress_bar():
    """A tqdm bar on stderr, advanced as measurements finish; called with None to close it."""
    from tqdm import tqdm

    bar = None

    def update(done, total):
        nonlocal bar
        if done is None:
            if bar is not None:
                bar.close()
            return
        if bar is None:
            bar = tqdm(total=total, desc="bench", unit="run", file=sys.stderr)
        bar.total = total
        bar.update(done - bar.n)

    return update


def _mm(s: dict, fmt: str) -> str:
    return f"{s['median']:{fmt}} ({s['min']:{fmt}}-{s['max']:{fmt}})"


def speed_table(res: dict) -> str:
    lines = [f"CPU {res.get('cpu', '?')}; kernels: {res.get('kernels', '?')}",
             f"model {res['model']}  threads {res['threads']}  prompt {res['prompt_tokens']} tok  "
             f"decode {res['gen_tokens']} tok  rounds {res['rounds']}  memory read {res['bandwidth_gbs']:.1f} GB/s",
             "median (min-max) over rounds, each run in its own process; the prompt is timed on its second run "
             "(as llama-bench does), the first is '1st prompt'",
             f"{'engine':26} {'prefill tok/s':>20} {'decode tok/s':>18} {'TTFT s':>18} {'1st prompt s':>18} "
             f"{'load s':>18} {'peak RSS MB':>18} {'MB/token':>9} {'roofline':>14}"]
    for name, e in res["results"].items():
        if not e["runs"]:
            lines.append(f"{name:26} failed: {e['errors'][0] if e['errors'] else 'no runs'}")
            continue
        load = _mm(e["load_s"], ".2f") + (f" cold {e['cold_load_s']:.1f}" if "cold_load_s" in e else "")
        lines.append(f"{name:26} {_mm(e['prefill_tps'], '.0f'):>20} {_mm(e['decode_tps'], '.1f'):>18} "
                     f"{_mm(e['ttft_s'], '.2f'):>18} {_mm(e['first_prompt_s'], '.2f'):>18}"
                     f" {load:>18} {_mm(e['peak_rss_mb'], '.0f'):>18} "
                     f"{e['bytes_per_token'] / 1e6:>9.0f} {e['roofline_tps']:>6.0f} ({e['roofline_share']:.0%})")
    return "\n".join(lines)


def quality_table(res: dict) -> str:
    lines = [f"model {res['model']}  corpus {res['corpus']}  {res['tokens']} tokens",
             f"{'precision':10} {'perplexity':>11} {'vs float':>9} {'top-1 agreement':>16}"]
    for p, e in res["results"].items():
        if "error" in e:
            lines.append(f"{p:10} failed: {e['error']}")
            continue
        vs = f"{e['ppl_vs_float']:+.2%}" if "ppl_vs_float" in e else ""
        agree = f"{e['top1_agreement']:.2%}" if "top1_agreement" in e else ""
        lines.append(f"{p:10} {e['perplexity']:>11.3f} {vs:>9} {agree:>16}")
    return "\n".join(lines)
