"""KV-cache memory at a given context for a model's config: ring buffers on the sliding-window
layers (what the runtime does) against a full cache on every layer.

    python tests/eval/kv_memory.py [--model PATH] [--context 8192]
"""
import argparse

import torch

from mmsdk.decoder.config import TextConfig
from mmsdk.decoder.kv_cache import FullCache, make_cache


def kv_bytes(caches, config, context: int) -> int:
    n_kv, hd = config.num_key_value_heads, config.head_dim
    k = torch.zeros(1, n_kv, context, hd)
    for c in caches:
        c.update(k, k, torch.arange(context))
    return sum(c.nbytes() for c in caches)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", help="GGUF or HF folder (default: the bundled Gemma 3 270M)")
    ap.add_argument("--context", type=int, default=8192)
    args = ap.parse_args()
    if args.model and not str(args.model).endswith(".gguf"):
        import json
        from pathlib import Path

        cfg = TextConfig.from_hf(json.loads(Path(args.model, "config.json").read_text()))
    else:
        from mmsdk.bundled import bundled_gguf
        from mmsdk.decoder.gguf_file import GGUFFile

        cfg = TextConfig.from_gguf(GGUFFile(args.model or bundled_gguf()).meta)
    ring = kv_bytes(make_cache(cfg), cfg, args.context)
    full = kv_bytes([FullCache(1, cfg.num_key_value_heads, cfg.head_dim, torch.float32)
                     for _ in cfg.layer_types], cfg, args.context)
    print(f"context {args.context}, {cfg.num_hidden_layers} layers "
          f"({cfg.layer_types.count('full_attention')} global), float32 KV")
    print(f"  ring buffers on local layers: {ring / 2**20:8.1f} MiB")
    print(f"  full cache on every layer:    {full / 2**20:8.1f} MiB")
    print(f"  ratio: {full / ring:.2f}x")


if __name__ == "__main__":
    main()
