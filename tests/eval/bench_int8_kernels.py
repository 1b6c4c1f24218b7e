"""One int8 product, our kernel (`decoder/native.py`: AVX-512 VNNI or AVX2, whichever this CPU
runs) against fbgemm's dynamic int8 linear (the kernel it replaces; 7-bit inputs on CPUs without
VNNI), on Gemma 3 270M's weight shapes, for one row (decode) and 512 rows (prefill); then the 4-bit
products (group 32), ours in float32 against torch's int4 kernel in bfloat16.

    python tests/eval/bench_int8_kernels.py [--threads 2] [--calls 300]

Both kernels alternate in one process on the same codes and inputs (hot caches: the kernels'
own cost, not the model's memory traffic); medians in microseconds.
"""
import argparse
import statistics
import time

import torch

from mmsdk.decoder import native
from mmsdk.decoder.quantize import ACT_DTYPE, Int4Linear, dynamic_int8_linear, fbgemm_pack, quantize_int8

SHAPES = {"qkv": (1536, 640), "o": (640, 1024), "gate_up": (4096, 640), "down": (640, 2048), "head": (262144, 640)}


def timed(f, calls: int) -> float:
    f()
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e6


def cpu_model() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calls", type=int, default=300)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if not native.available("int8_linear", "int4_linear"):
        raise SystemExit("our kernels are not available here (no AVX2 + FMA or AVX-512 VNNI, no C compiler, "
                         "or MMSDK_NATIVE=0)")
    print(f"CPU: {cpu_model()}; our kernels: {native.kernel_name()}; torch's int4 layout: blocks of "
          f"{native.int4_block()}; fbgemm inputs: {7 if native.pairs_saturate() else 8} bits")
    print(f"{'weight':>8} {'N x K':>12} {'rows':>5} {'ours us':>9} {'fbgemm us':>10} {'ratio':>6}")
    for name, (n, k) in SHAPES.items():
        q, s = quantize_int8(torch.randn(n, k))
        ours, theirs = native.pack(q, s), fbgemm_pack(q, s)
        for rows in (1, 512):
            if name == "head" and rows > 1:
                continue  # a prompt's head runs on its last row only
            x = torch.randn(rows, k)
            calls = a.calls if n * k * rows < 1e9 else max(10, a.calls // 20)
            t_ours, t_fb = [], []
            for _ in range(3):  # alternate, so machine noise hits both alike
                t_ours.append(timed(lambda: native.linear(x, ours), calls))
                t_fb.append(timed(lambda: dynamic_int8_linear(x, theirs), calls))
            mo, mf = statistics.median(t_ours), statistics.median(t_fb)
            print(f"{name:>8} {f'{n}x{k}':>12} {rows:>5} {mo:>9.0f} {mf:>10.0f} {mf / mo:>6.2f}")
    print(f"{'weight':>8} {'N x K':>12} {'rows':>5} {'ours us':>9} {'torch int4 us':>14} {'ratio':>6}  (4-bit, group 32)")
    for name, (n, k) in SHAPES.items():
        if name == "head":
            continue  # the head stays 8-bit at every precision
        m = Int4Linear.from_float(torch.randn(n, k), 32)
        for rows in (1, 512):
            x = torch.randn(rows, k)
            xb = x.to(ACT_DTYPE)
            t_ours, t_torch = [], []
            for _ in range(3):
                t_ours.append(timed(lambda: native.int4_linear(x, m.weight, m.scales_and_zeros, 32), a.calls // 10 + 3))
                t_torch.append(timed(lambda: torch._weight_int4pack_mm_for_cpu(xb, m.weight, 32, m.scales_and_zeros),
                                     a.calls // 10 + 3))
            mo, mt = statistics.median(t_ours), statistics.median(t_torch)
            print(f"{name:>8} {f'{n}x{k}':>12} {rows:>5} {mo:>9.0f} {mt:>14.0f} {mt / mo:>6.2f}")


if __name__ == "__main__":
    main()
