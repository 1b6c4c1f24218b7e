"""Gemma 4 E2B loaded from llama.cpp's Q4_K_M GGUF (its Q4_K codes as stored, the per-layer table
mapped from the file) beside the same model's HF folder at int4 (`quantize="int4", offload="ple"`),
decoding in one process, alternating rounds; medians. Load time and memory of the GGUF load first.

    python tests/eval/bench_gemma4_gguf.py /work/realsize/gguf4/gemma-4-E2B-Q4_K_M.gguf \
        --folder /work/realsize/gemma-4-E2B-it --rounds 5

Run it twice: the first load converts into the weight cache (the Q6_K layers and embedding rounded to
int8), the second maps it. `bench_gemma4.py` sets the folder load beside llama-bench.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gemma3n import memory


def decode_rate(asst, prompt: str, n: int = 16) -> float:
    t = time.perf_counter()
    asst.generate(prompt, max_tokens=1, temperature=0)
    first = time.perf_counter() - t
    t = time.perf_counter()
    asst.generate(prompt, max_tokens=n + 1, temperature=0)
    return n / (time.perf_counter() - t - first)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("gguf")
    ap.add_argument("--folder", help="the same model's HF folder, loaded int4 + ple beside it")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    t0 = time.perf_counter()
    import mmsdk
    from mmsdk._bench_run import cpu_model

    print(f"CPU: {cpu_model()}, {a.threads} threads")
    t1 = time.perf_counter()
    models = {"gguf Q4_K_M as stored + ple": mmsdk.load(a.gguf, offload="ple", threads=a.threads)}
    print(f"GGUF load {time.perf_counter() - t1:.1f} s ({time.perf_counter() - t0:.1f} s with the imports): "
          f"{memory()} MB")
    if a.folder:
        models["folder int4 + ple"] = mmsdk.load(a.folder, quantize="int4", offload="ple", threads=a.threads)
    prompt = "The history of the city"
    for asst in models.values():
        asst.generate(prompt, max_tokens=4, temperature=0)
    rates = {name: [] for name in models}
    for r in range(a.rounds):
        for name, asst in models.items():
            rates[name].append(decode_rate(asst, prompt))
        print(f"round {r + 1}: " + ", ".join(f"{n} {v[-1]:.2f}" for n, v in rates.items()) + " tok/s", flush=True)
    for name, v in rates.items():
        print(f"decode {name}: {statistics.median(v):.2f} tok/s (min {min(v):.2f}, max {max(v):.2f})")
    print(f"after decoding: {memory()} MB")


if __name__ == "__main__":
    main()
