"""Every common GGUF type at its stored precision: the bundled Gemma 3 270M requantized by llama.cpp's
`llama-quantize --allow-requantize` to each type, then `Assistant.score` perplexity against
`llama-perplexity` on the same file, text and windows (`eval_perplexity.py`, one process per file).

    python tests/eval/eval_gguf_types.py [--out DIR] [--types Q4_0,Q8_0,...] [--tokens 8192] [--threads 2]

Prints one row per type: file size, the layout mmsdk keeps the file's linear layers in ("4-bit" where
the codes map onto our 4-bit layout, "8-bit" for 5- to 8-bit types, "float"), both perplexities and
their relative difference (issue 21's target: within 1%). Requantized files are kept in --out.
"""
import argparse
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BIN = Path.home() / ".cache/llama-cpp-tools/native/src/vendor/llama.cpp/build/bin"
TYPES = ("F16", "BF16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_0", "Q5_1", "Q4_0", "Q4_1", "Q4_K_M", "IQ4_NL", "IQ4_XS",
         "Q3_K_M", "Q2_K")


def requantize(src: Path, out: Path, kind: str, threads: int) -> Path:
    dst = out / f"gemma3-270m-{kind}.gguf"
    if not dst.is_file():
        tmp = dst.with_suffix(".part")
        p = subprocess.run([str(BIN / "llama-quantize"), "--allow-requantize", str(src), str(tmp), kind, str(threads)],
                           capture_output=True, text=True)
        if p.returncode:
            raise RuntimeError(f"llama-quantize {kind} failed:\n{p.stdout[-1500:]}{p.stderr[-1500:]}")
        tmp.rename(dst)
    return dst


def layouts(path: Path) -> str:
    """The GGML types of the file's layer weights and the layout each becomes under "stored"."""
    from mmsdk.decoder.gguf_file import GGUFFile
    from mmsdk.decoder.quant_plan import GGUF_4BIT, GGUF_FLOAT

    kinds = sorted({t.kind for n, t in GGUFFile(path).tensors.items() if n.startswith("blk.") and len(t.shape) == 2})
    return " ".join(f"{k}->{'float' if k in GGUF_FLOAT else '4-bit' if k in GGUF_4BIT else '8-bit'}" for k in kinds)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path.home() / ".cache/mmsdk-eval/gguf-types")
    ap.add_argument("--types", default=",".join(TYPES))
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    from mmsdk.bundled import bundled_gguf

    args.out.mkdir(parents=True, exist_ok=True)
    src = bundled_gguf()
    print(f"source {src.name}; text pydoc_data.topics, {args.tokens} tokens in 512-token windows; threads {args.threads}")
    print(f"{'type':8} {'MB':>6}  {'mmsdk PPL':>10} {'llama PPL':>10} {'diff':>8}  layer weights -> mmsdk layout")
    for kind in args.types.split(","):
        f = src if kind == "Q4_K_M_bundled" else requantize(src, args.out, kind, args.threads)
        p = subprocess.run([sys.executable, str(HERE / "eval_perplexity.py"), "--model", str(f), "--precisions", "stored",
                            "--tokens", str(args.tokens), "--threads", str(args.threads)], capture_output=True, text=True)
        ours = re.search(r"mmsdk score \(stored\)\s+PPL\s+([0-9.]+)", p.stdout)
        ref = re.search(r"llama-perplexity\s+PPL\s+([0-9.]+)", p.stdout)
        if p.returncode or not (ours and ref):
            print(f"{kind:8} failed: {(p.stdout + p.stderr)[-600:]}")
            continue
        a, b = float(ours[1]), float(ref[1])
        print(f"{kind:8} {f.stat().st_size / 1e6:6.0f}  {a:10.4f} {b:10.4f} {a / b - 1:+8.3%}  {layouts(f)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
