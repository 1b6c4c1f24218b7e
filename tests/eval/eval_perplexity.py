"""`Assistant.score` against llama.cpp's `llama-perplexity` on the same GGUF, text and token windows.

llama-perplexity cuts the tokenized text (BOS first) into non-overlapping windows of `--ctx` tokens,
puts BOS in place of each window's first token and scores the second half of each window. Here
each window is given to `asst.score` as token ids (it prepends BOS itself) and the same second
half of its log-probabilities is kept, so both sides average the same tokens with the same context.

    python tests/eval/eval_perplexity.py [--model GGUF] [--tokens 8192] [--ctx 512] [--threads 2]
           [--precisions stored,float32] [--llama-perplexity PATH]

The text is the CPython documentation topics shipped with Python (`pydoc_data.topics`), as in
`mmsdk bench --quality`. Prints one line per engine and the relative difference (target: < 1%).
"""
import argparse
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LLAMA_PERPLEXITY = Path.home() / ".cache/llama-cpp-tools/native/src/vendor/llama.cpp/build/bin/llama-perplexity"


def corpus_text() -> str:
    from mmsdk._bench_worker import corpus_text

    return corpus_text()


def mmsdk_perplexity(model: str, text: str, n_tokens: int, ctx: int, precision: str, threads: int):
    """(perplexity, per-window running perplexities, seconds) over llama-perplexity's windows."""
    import torch

    import mmsdk

    torch.set_num_threads(threads)
    dtype = None if precision == "stored" else precision
    asst = mmsdk.load(model, dtype=dtype, threads=threads)
    tokens = asst.tokenizer.encode(text)  # BOS first, as llama-perplexity tokenizes
    n_chunks = min(n_tokens, len(tokens)) // ctx
    first = ctx // 2
    nll, count, running = 0.0, 0, []
    t = time.perf_counter()
    for i in range(n_chunks):
        window = tokens[i * ctx + 1:(i + 1) * ctx]  # its first token becomes BOS, as there
        lp = asst.score(window, window=ctx).logprobs  # log p of window positions 1 .. ctx-1
        kept = lp[first:]  # positions first+1 .. ctx-1: llama-perplexity's second half
        nll -= sum(kept)
        count += len(kept)
        running.append(math.exp(nll / count))
    return math.exp(nll / count), running, time.perf_counter() - t, n_chunks


def llama_perplexity(binary: Path, model: str, text: str, n_chunks: int, ctx: int, threads: int):
    """(perplexity, per-window running perplexities, seconds) from llama-perplexity's output."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write(text)
    try:
        t = time.perf_counter()
        p = subprocess.run([str(binary), "-m", model, "-f", f.name, "-c", str(ctx), "-b", str(ctx),
                            "--chunks", str(n_chunks), "-t", str(threads)], capture_output=True, text=True)
        seconds = time.perf_counter() - t
    finally:
        os.unlink(f.name)
    out = p.stdout + p.stderr
    final = re.search(r"Final estimate: PPL = ([0-9.]+)", out)
    if p.returncode or not final:
        raise RuntimeError(f"llama-perplexity failed ({p.returncode}):\n{out[-2000:]}")
    running = [float(x) for x in re.findall(r"\[\d+\]([0-9.]+),", out)]
    return float(final[1]), running, seconds


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="GGUF file (default: the bundled Gemma 3 270M Q4_K_M)")
    ap.add_argument("--tokens", type=int, default=8192, help="text tokens scored (whole windows of --ctx)")
    ap.add_argument("--ctx", type=int, default=512, help="window length, llama-perplexity's -c")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precisions", default="stored,float32",
                    help="mmsdk precisions: stored (the default load) and/or float32 (the file dequantized)")
    ap.add_argument("--llama-perplexity", type=Path, default=LLAMA_PERPLEXITY)
    args = ap.parse_args(argv)
    if args.model is None:
        from mmsdk.bundled import bundled_gguf

        args.model = str(bundled_gguf())
    if not args.llama_perplexity.is_file():
        sys.exit(f"no llama-perplexity at {args.llama_perplexity} (build llama.cpp's tools, or pass --llama-perplexity)")
    text = corpus_text()
    rows = []
    n_chunks = None
    for prec in args.precisions.split(","):
        ppl, running, secs, n_chunks = mmsdk_perplexity(args.model, text, args.tokens, args.ctx, prec, args.threads)
        rows.append((f"mmsdk score ({prec})", ppl, running, secs))
    ppl, running, secs = llama_perplexity(args.llama_perplexity, args.model, text, n_chunks, args.ctx, args.threads)
    rows.append(("llama-perplexity", ppl, running, secs))
    ref = ppl
    print(f"model {args.model}\ntext pydoc_data.topics, {n_chunks} windows x {args.ctx} tokens "
          f"({n_chunks * (args.ctx - 1 - args.ctx // 2)} scored), threads {args.threads}")
    print("(worst window: the largest difference of the running per-window PPL from llama.cpp's)")
    for name, p, run, secs in rows:
        worst = max(abs(a / b - 1) for a, b in zip(run, rows[-1][2]))
        print(f"{name:24} PPL {p:9.4f}  vs llama.cpp {p / ref - 1:+.3%}  worst window {worst:.3%}  ({secs:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
