"""A prompt's prefill (and with --decode N, N decoded tokens) beside llama-bench's pp (tgN) on the same
GGUF, alternating round by round, medians.

    python tests/eval/prefill_side_by_side.py /work/realsize/gemma-3-1b-q4_0.gguf [--rounds 5] [--threads 2] [--decode 128]

On a shared host one run of each is mostly noise; alternating the two and taking medians compares
them under the same load. Ours: the model loaded once (weight cache: `MMSDK_CACHE`), a warm prompt of
`--tokens` ids (BOS + the bench corpus, as `mmsdk bench`) prefilled into fresh caches and its last
position's logits taken, wall time (and this process's CPU seconds beside it: two threads busy
throughout give CPU ~ 2 x wall). Peer: llama-bench -p TOKENS -n 0 -r 1 -t THREADS per round.
Decode: greedy tokens after a 16-token prompt, each step's logits and argmax included, as llama-bench's
tg times its tokens. Issue 16's targets: ours >= 2 x llama-bench's pp512, >= 1.0 x its tg128 (1B and 4B Q4_0).
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
    ap.add_argument("--decode", type=int, default=0, metavar="N", help="also N decoded tokens beside llama-bench's tgN")
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

    def decode() -> float:
        with torch.inference_mode():
            caches = make_cache(model.config)
            token = int(model.logits(prefill(model, ids[:16], caches, 0))[0, -1].argmax())
            t = time.perf_counter()
            for pos in range(16, 16 + a.decode):
                token = int(model.logits(model(torch.tensor([[token]]), caches, torch.tensor([pos])))[0, -1].argmax())
            return a.decode / (time.perf_counter() - t)

    ours()  # the first prompt maps its pages and fills the scratch buffers
    rows, decoded = [], []
    for r in range(a.rounds):
        if a.decode:
            peer = llama_bench(a.model, a.threads, 0, a.decode, 1, a.llama_bin)
            if "error" in peer:
                print(peer["error"], file=sys.stderr)
                return 1
            decoded.append((decode(), peer["decode_tps"]))
            print(f"round {r + 1}: ours {decoded[-1][0]:6.2f} tok/s  llama-bench tg{a.decode} {decoded[-1][1]:6.2f} tok/s  "
                  f"ratio {decoded[-1][0] / decoded[-1][1]:.2f}", flush=True)
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
    if decoded:
        o, p = (statistics.median(v) for v in zip(*decoded))
        print(f"decode median: ours {o:.2f} tok/s  llama-bench tg{a.decode} {p:.2f} tok/s  ratio of medians {o / p:.2f}  "
              f"median of ratios {statistics.median(x / y for x, y in decoded):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
