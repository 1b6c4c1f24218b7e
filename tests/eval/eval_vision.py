"""Image encode time and int8 quality for Gemma 3's vision tower at the real size (SigLIP 27 layers,
width 1152, 896 px, projector into width 2560), float32 and mmsdk's int8 swap
(`encoders.accelerate.accelerate_siglip_`), on N threads (default 2).

Weights: random ones initialized in place, or `--folder` (e.g. /work/realsize/gemma3 from
`make_real_size_encoders.py`, transformers' own init). Two workloads: one 896 x 896 image (1 view),
and a 3:1 wide image with pan-and-scan, whose whole image and crops are encoded as one batch (1 + 3
views). Preprocessing time is reported apart. Prints medians; int8 also reports the per-token cosine
similarity of its projected embeddings to float32's (the quality gate: >= 0.999 for every token).

    HF_HUB_OFFLINE=1 python tests/eval/eval_vision.py [--folder DIR] [--layers N] [--threads 2] [--repeats 3]
        [--warmup 1] [--workloads square,wide_pan_and_scan] [--int8-attention] [--keep-float 0,26] [--json out.json]
        [--simulate-q8-attention]   # q/k/v/o's weights and inputs rounded to 8 bits per 32 in float (a quality
                                    # simulation of q8_groups.h on them, on top of the int8 MLPs; its timings mean nothing)
"""
import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mmsdk.encoders.accelerate import accelerate_siglip_
from mmsdk.encoders.gemma3_vision import Gemma3VisionConfig, Gemma3VisionTower, is_vision_key, load_gemma3_vision
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


def load_tower(folder: str | None, layers: int) -> Gemma3VisionTower:
    if folder is None:
        tower = random_tower()
    else:
        from safetensors.torch import load_file

        tensors = {}
        for f in sorted(Path(folder).glob("*.safetensors")):
            tensors |= {k: v for k, v in load_file(f).items() if is_vision_key(k)}
        tower = load_gemma3_vision(tensors, json.loads((Path(folder) / "config.json").read_text()), path=folder)
    if layers:
        del tower.encoder.layers[layers:]  # a shallower tower for a quick look; the depth is reported
    return tower


def time_it(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def q8_rounded(t: torch.Tensor) -> torch.Tensor:
    """`t` rounded to 8 bits with one scale per 32 along its last dimension (llama.cpp's Q8_0), kept in float."""
    g = t.reshape(*t.shape[:-1], -1, 32)
    step = g.abs().amax(-1, keepdim=True).clamp(min=1e-30) / 127
    return (torch.round(g / step) * step).reshape(t.shape)


class SimulatedQ8Linear(torch.nn.Module):
    """A linear whose weight and inputs are rounded as `q8_groups.h` rounds them, computed in float."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.weight, self.bias = q8_rounded(linear.weight.detach().float()), linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(q8_rounded(x), self.weight, self.bias)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder", help="a Gemma 3 checkpoint folder; default: random weights")
    ap.add_argument("--layers", type=int, default=0, help="keep only the first N SigLIP blocks (0: all)")
    ap.add_argument("--keep-float", default="", help="comma-separated block indices the int8 swap leaves float32")
    ap.add_argument("--int8-attention", action="store_true", help="q/k/v/o in int8 too (default: the MLPs only)")
    ap.add_argument("--simulate-q8-attention", action="store_true",
                    help="also round q/k/v/o's weights and inputs per 32 in float (quality only)")
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
    tower = load_tower(args.folder, args.layers)
    n_params = sum(p.numel() for p in tower.parameters())
    results["params"], results["layers"] = n_params, len(tower.encoder.layers)
    keep = tuple(int(i) for i in args.keep_float.split(",") if i)
    reference = {}
    for dtype in ("float32", "int8"):
        if dtype == "int8":  # the same tower, swapped in place: one copy of the weights in memory
            accelerate_siglip_(tower.encoder, attention=args.int8_attention, keep_float=keep)
            if args.simulate_q8_attention:
                for block in tower.encoder.layers:
                    block.attn.qkv_proj = SimulatedQ8Linear(block.attn.qkv_proj)
                    block.attn.o_proj = SimulatedQ8Linear(block.attn.o_proj)
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
                cos = torch.nn.functional.cosine_similarity(out, ref, dim=-1)  # (views, tokens)
                results[key]["token_cosine_min"] = cos.min().item()
                results[key]["token_cosine_mean"] = cos.mean().item()
            print(f"{key:32s} views={pixels.shape[0]}  median {results[key]['median_s']:.2f} s"
                  f"  ({results[key]['per_view_s']:.2f} s/view)", flush=True)

    print(f"vision tower params: {n_params / 1e6:.0f} M, SigLIP blocks {results['layers']}, threads: {args.threads}")
    for k, v in results["preprocess_median_s"].items():
        print(f"preprocess {k:22s} median {v * 1000:.0f} ms")
    for workload in batches:
        r = results[f"int8/{workload}"]
        print(f"int8 vs float32 {workload}: max|diff| {r['max_abs_diff_vs_float32']:.3g}, per-token cosine "
              f"min {r['token_cosine_min']:.5f} mean {r['token_cosine_mean']:.5f} (gate: min >= 0.999)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
