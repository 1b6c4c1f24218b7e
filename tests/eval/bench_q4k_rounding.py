"""Rounding float weights to Q4_K: the C search (`quantize_q4.h`, what a first load runs) beside torch's
reference (`quantize.quantize_int4_kquant`), on a real-shaped Gaussian weight (Gemma 3n E2B's q_proj,
2048 x 2048, bfloat16 as stored).

    python tests/eval/bench_q4k_rounding.py [--rows 2048] [--cols 2048] [--threads 1] [--rounds 3]

Prints per path: ns a weight (median of `rounds`, the two paths alternating), relative RMS error of
the weight held, and how many codes and 6-bit scales the two paths agree on. For the whole first load
of E2B (2.42 billion weights rounded): tests/eval/bench_gemma3n.py with an empty MMSDK_CACHE.
"""
import argparse
import statistics
import time

import torch


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=2048)
    ap.add_argument("--cols", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from mmsdk._bench_run import cpu_model
    from mmsdk.decoder import native
    from mmsdk.decoder.quantize import Int4Linear, dequantize_int4, quantize_int4_kquant, unpack_int4

    if not native.available("quantize_q4k"):
        raise SystemExit("the C kernels are not available here (see the log): nothing to compare")
    w = (torch.randn(a.rows, a.cols, generator=torch.Generator().manual_seed(0)) * 0.02).bfloat16()
    paths = {"C (quantize_q4.h)": lambda: Int4Linear.from_float(w, 32, "kquant"),
             "torch reference": lambda: Int4Linear.from_kquant(*quantize_int4_kquant(w))}
    times, made = {k: [] for k in paths}, {}
    for _ in range(a.rounds):
        for name, run in paths.items():
            t = time.perf_counter()
            made[name] = run()
            times[name].append(time.perf_counter() - t)
    print(f"CPU: {cpu_model()}, {a.threads} thread(s); {a.rows} x {a.cols} bfloat16 Gaussian weight")
    wf = w.float()
    for name, m in made.items():
        held = dequantize_int4(unpack_int4(m.weight, torch.arange(a.rows)), *m.scale_zero())
        rel = float((held - wf).norm() / wf.norm())
        print(f"{name:20s} {statistics.median(times[name]) / w.numel() * 1e9:8.1f} ns a weight   "
              f"relative RMS error {rel:.6f}")
    c, ref = made.values()
    print(f"codes equal {float((c.weight == ref.weight).float().mean()):.7f} (bytes of two codes), "
          f"6-bit sc/m equal {float((c.sub_scales == ref.sub_scales).float().mean()):.7f}, "
          f"d/dmin equal {float((c.super_scales == ref.super_scales).float().mean()):.7f}")


if __name__ == "__main__":
    main()
