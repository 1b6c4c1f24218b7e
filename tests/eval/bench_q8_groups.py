"""The conformer's int8 product (`decoder/q8_groups.h` through `encoders.accelerate.Q8GroupLinear`: int8
weights x 8-bit inputs, a scale per 32 inputs on both sides) against torch's float32 GEMM (MKL) and oneDNN's
int8 (`Int8LinearBias`, rotate=False: per-row 7-bit inputs on AVX2), on the conformer's FFN shapes. One
thread, the three alternating, medians; the kernel's correctness is `tests/test_audio_gemma3n.py`'s.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python tests/eval/bench_q8_groups.py [--rounds 7]

Measured (AMD EPYC Zen 3, 1 thread, machine loaded by other jobs), ms, median of 7, three runs:
    750 x 1536 -> 6144: float32 246-442, oneDNN int8 123-178, q8_groups 187-298: 1.32-1.49x float32
    750 x 6144 -> 1536: float32 276-389, oneDNN int8 117-177, q8_groups 199-312: 1.25-1.45x float32
"""
import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch  # noqa: E402
from torch import nn  # noqa: E402

from mmsdk.encoders.accelerate import Int8LinearBias, Q8GroupLinear  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    for m, k, n in ((750, 1536, 6144), (750, 6144, 1536)):
        x = torch.randn(m, k)
        linear = nn.Linear(k, n, bias=False)
        linear.weight.data = torch.randn(n, k) * 0.02
        w = linear.weight.data
        onednn, q8g = Int8LinearBias(linear, rotate=False), Q8GroupLinear(linear)
        runs = {"float32": lambda: x @ w.T, "oneDNN int8": lambda: onednn(x), "q8_groups": lambda: q8g(x)}
        times = {name: [] for name in runs}
        with torch.inference_mode():
            for _ in range(args.rounds):
                for name, run in runs.items():
                    t = time.perf_counter()
                    run()
                    times[name].append(time.perf_counter() - t)
        med = {name: statistics.median(v) * 1000 for name, v in times.items()}
        print(f"{m}x{k}->{n}: " + ", ".join(f"{name} {t:.1f} ms" for name, t in med.items())
              + f"; q8_groups {med['float32'] / med['q8_groups']:.2f}x float32, "
              f"oneDNN {med['float32'] / med['oneDNN int8']:.2f}x")


if __name__ == "__main__":
    main()
