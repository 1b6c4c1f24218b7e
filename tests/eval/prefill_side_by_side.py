"""A prompt's prefill beside llama-bench's pp on the same GGUF, alternating round by round, medians.

    python tests/eval/prefill_side_by_side.py /work/realsize/gemma-3-1b-q4_0.gguf [--rounds 5] [--threads 2]

On a shared host one run of each is mostly noise; alternating the two and taking medians compares
them under the same load. Ours: the model loaded once (weight cache: `MMSDK_CACHE`), a warm prompt of
`--tokens` ids (BOS + the bench corpus, as `mmsdk bench`) prefilled into fresh caches and its last
position's logits taken, wall time (and this process's CPU seconds beside it: two threads busy
throughout give CPU ~ 2 x wall). Peer: llama-bench -p TOKENS -n 0 -r 1 -t THREADS per round.
Issue 16's target: ours >= 2 x llama-bench's pp512 (1B and 4B Q4_0).
"""
import argparse
import statistics
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--llama-bin", default=None, help="llama.cpp's build/bin (default: $MMSDK_LLAMA_BIN, the native build)")
    a = ap.parse_args()

    import torch
    from mmsdk.decoder.generate import prefill
    from mmsdk.decoder.kv_cache import make_cache
    from mmsdk.decoder.loader import load_text

    from mmsdk._bench_llama import llama_bench
    from mmsdk._bench_run import cpu_model, kernel_summary, prepare_ids

    ids = [2, *prepare_ids(a.model, a.threads, "stored")[:a.tokens - 1]]
    model = load_text(a.model, None, quantize="stored", threads=a.threads).model
    torch.set_num_threads(a.threads)
    print(f"CPU: {cpu_model()}, {a.threads} threads; {kernel_summary()}", flush=True)

    def ours() -> tuple[float, float]:
        with torch.inference_mode():
            t, c = time.perf_counter(), time.process_time()
            model.logits(prefill(model, ids, make_cache(model.config), 0))
            return len(ids) / (time.perf_counter() - t), time.process_time() - c

    ours()  # the first prompt maps its pages and fills the scratch buffers
    rows = []
    for r in range(a.rounds):
        peer = llama_bench(a.model, a.threads, len(ids), 0, 1, a.llama_bin)
        if "error" in peer:
            print(peer["error"], file=sys.stderr)
            return 1
        tps, cpu = ours()
        rows.append((tps, peer["prefill_tps"], cpu))
        print(f"round {r + 1}: ours {tps:6.1f} tok/s (CPU {cpu:.2f} s)  llama-bench pp{len(ids)} "
              f"{peer['prefill_tps']:6.1f} tok/s  ratio {tps / peer['prefill_tps']:.2f}", flush=True)
    med = [statistics.median(v) for v in zip(*rows)]
    print(f"median: ours {med[0]:.1f} tok/s (CPU {med[2]:.2f} s)  llama-bench {med[1]:.1f} tok/s  "
          f"ratio of medians {med[0] / med[1]:.2f}  median of ratios {statistics.median(o / p for o, p, _ in rows):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
