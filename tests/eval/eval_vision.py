"""Image encode time for Gemma 3's vision tower at the real size (SigLIP 27 layers, width 1152, 896 px,
projector into width 2560), random weights, float32 and dynamic int8, on N threads (default 2).

Two workloads: one 896 x 896 image (1 view), and a 3:1 wide image with pan-and-scan, whose whole
image and crops are encoded as one batch (1 + 3 views). Preprocessing time is reported apart.
Prints medians; int8 also reports its deviation from float32 on the same weights.

    HF_HUB_OFFLINE=1 python tests/eval/eval_vision.py [--threads 2] [--repeats 3] [--warmup 1]
        [--workloads square,wide_pan_and_scan] [--json out.json]
"""
import argparse
import json
import statistics
import time
import warnings

import numpy as np
import torch
from PIL import Image

from mmsdk.encoders.gemma3_vision import Gemma3VisionConfig, Gemma3VisionTower
from mmsdk.encoders.hf_config import empty_module
from mmsdk.encoders.image_preprocess import preprocess


def random_tower(seed: int = 0) -> Gemma3VisionTower:
    """The real-size tower with random weights of a realistic scale (initialized in place, no download)."""
    tower = empty_module(Gemma3VisionTower, Gemma3VisionConfig())
    g = torch.Generator().manual_seed(seed)
    for name, p in tower.named_parameters():
        if "norm" in name and name.endswith("weight"):
            p.data.fill_(1.0 if "projector" not in name else 0.0)
        elif name.endswith("bias"):
            p.data.zero_()
        else:
            p.data.normal_(0.0, 0.02, generator=g)
    return tower.eval()


def quantize_int8(tower: torch.nn.Module) -> torch.nn.Module:
    """Dynamic int8 (weights int8 per tensor, activations quantized per batch) on every nn.Linear."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(tower, {torch.nn.Linear}, dtype=torch.qint8)


def time_it(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per workload")
    ap.add_argument("--warmup", type=int, choices=(0, 1), default=1,
                    help="1: one untimed run first; 0: the first run is timed too (for slow, shared machines)")
    ap.add_argument("--workloads", default="square,wide_pan_and_scan", help="comma-separated subset")
    ap.add_argument("--json", help="write the figures here too")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    rng = np.random.default_rng(0)
    square = Image.fromarray(rng.integers(0, 256, (896, 896, 3), dtype=np.uint8))
    wide = Image.fromarray(rng.integers(0, 256, (600, 1800, 3), dtype=np.uint8))
    prep = {"square": time_it(lambda: preprocess(square), args.repeats),
            "wide_pan_and_scan": time_it(lambda: preprocess(wide), args.repeats)}
    batches = {"square": preprocess(square).pixel_values, "wide_pan_and_scan": preprocess(wide).pixel_values}
    batches = {k: v for k, v in batches.items() if k in args.workloads.split(",")}

    results = {"threads": args.threads, "repeats": args.repeats,
               "preprocess_median_s": {k: statistics.median(v) for k, v in prep.items()}}
    f32 = random_tower()
    n_params = sum(p.numel() for p in f32.parameters())
    results["params"] = n_params
    towers = {"float32": f32, "int8": quantize_int8(random_tower())}
    reference = {}
    for dtype, tower in towers.items():
        for workload, pixels in batches.items():
            with torch.inference_mode():
                t = time.perf_counter()
                out = tower(pixels)  # warm-up (or first timed run), and the output compared below
                first = time.perf_counter() - t
                times = time_it(lambda: tower(pixels), args.repeats - (args.warmup == 0))
                times = times if args.warmup else [first, *times]
            key = f"{dtype}/{workload}"
            results[key] = {"views": pixels.shape[0], "median_s": statistics.median(times),
                            "per_view_s": statistics.median(times) / pixels.shape[0], "runs_s": times}
            if dtype == "float32":
                reference[workload] = out
            else:
                ref = reference[workload]
                results[key]["max_abs_diff_vs_float32"] = (out - ref).abs().max().item()
                results[key]["cosine_vs_float32"] = torch.nn.functional.cosine_similarity(
                    out.flatten(1), ref.flatten(1)).min().item()
            print(f"{key:32s} views={pixels.shape[0]}  median {results[key]['median_s']:.2f} s"
                  f"  ({results[key]['per_view_s']:.2f} s/view)", flush=True)

    print(f"vision tower params: {n_params / 1e6:.0f} M, threads: {args.threads}")
    for k, v in results["preprocess_median_s"].items():
        print(f"preprocess {k:22s} median {v * 1000:.0f} ms")
    for workload in batches:
        r = results[f"int8/{workload}"]
        print(f"int8 vs float32 {workload}: max|diff| {r['max_abs_diff_vs_float32']:.3g}, "
              f"min cosine {r['cosine_vs_float32']:.5f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
