"""Gemma 4 E2B (or E4B) at its real size, random weights: a Hugging Face folder for the benchmarks.

    python tests/eval/make_real_size_gemma4.py [OUT] [--model e2b|e4b]

Writes `OUT/gemma-4-E2B-it/` (default OUT /work/realsize; E2B 9.3 GB): config.json,
model-0000k-of-0000n.safetensors + model.safetensors.index.json, tokenizer.json, tokenizer.model,
tokenizer_config.json.

Source of the E2B text config (google/gemma-4-E2B-it's `text_config`; no checkpoint or config file is
on this machine, so the numbers are gathered from public descriptions of it and checked against each
other): 35 layers (llama.cpp's `src/models/gemma4.cpp` names a 35-layer Gemma 4 "E2B"), hidden 1536
and per-layer input 256 (the published config.json, as quoted by openerrata.com's correction of
"A visual guide to Gemma 4"), four sliding layers then a global one ("TTTTF"), FFN 6144 doubled to
12288 in the KV-shared layers, heads 256 wide on sliding layers and 512 on global ones, window 512,
soft-cap 30, vocab 262144 (gemma.cpp PR #919, "Add Gemma 4 E2B and E4B model configs"), one KV head
(multi-query), global RoPE base 1M rotating a quarter of the dims (proportional), sliding base 10k.
The 20 KV-shared layers are derived: with them the decoder's parameter count without the per-layer
table is the model card's "2.3B effective" (2.28 B; with 15 it would be 2.14 B), and with the table
(2.35 B) and the towers (~0.45 B) its "5.1B with embeddings". Keys are not values on E2B (`attention_k_eq_v` false: the 31B and
26B-A4B have it). E4B (same sources): 42 layers, hidden 2560, FFN 10240 (not doubled), 2 KV heads,
five sliding then one global, 18 KV-shared layers.

Layout: every tensor name and shape comes from transformers' own `Gemma4ForConditionalGeneration`
built on the meta device, under `model.language_model.*`; everything bfloat16, no `lm_head.weight`
(tied), and the unused key/value weights of the KV-shared layers present, as in the released files
(google/gemma-4-E2B-it discussion #23 asks why they are there). Text only: the vision (~0.15 B) and
audio (~0.3 B) towers would add 0.9 GB of disk to a benchmark of the decoder, so `vision_config` and
`audio_config` are null and the folder is a text-only Gemma 4 (it refuses images and audio).

Weights, shards and tokenizer as `make_real_size_gemma3n.py` writes them (its functions): N(0, 0.02)
matrices, gains 1 + N(0, 0.02), a chunk at a time straight to 5 GB shards; the bundled Gemma 3
vocabulary, the same 262144 ids (Gemma 4's control tokens are other strings at the same ids).
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_real_size_gemma3n import _nbytes, write_shards, write_tokenizer  # noqa: E402

S, F = "sliding_attention", "full_attention"
ROPE = {F: {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1_000_000.0},
        S: {"rope_type": "default", "rope_theta": 10_000.0}}
TEXT = {
    "e2b": dict(num_hidden_layers=35, hidden_size=1536, intermediate_size=6144, num_key_value_heads=1,
                num_kv_shared_layers=20, layer_types=([S] * 4 + [F]) * 7, use_double_wide_mlp=True),
    "e4b": dict(num_hidden_layers=42, hidden_size=2560, intermediate_size=10240, num_key_value_heads=2,
                num_kv_shared_layers=18, layer_types=([S] * 5 + [F]) * 7, use_double_wide_mlp=False),
}
COMMON = dict(vocab_size=262144, vocab_size_per_layer_input=262144, hidden_size_per_layer_input=256,
              num_attention_heads=8, head_dim=256, global_head_dim=512, attention_k_eq_v=False, sliding_window=512,
              final_logit_softcapping=30.0, max_position_embeddings=131072, rms_norm_eps=1e-6, rope_parameters=ROPE,
              eos_token_id=[1, 106], bos_token_id=2, pad_token_id=0, hidden_activation="gelu_pytorch_tanh",
              tie_word_embeddings=True)


def hf_config(model: str):
    from transformers import Gemma4Config

    return Gemma4Config(text_config={**COMMON, **TEXT[model]}, vision_config=None, audio_config=None,
                        eos_token_id=[1, 106])


def layout(cfg, model: str) -> list[tuple[str, tuple, torch.dtype]]:
    """(name, shape, dtype) of every stored tensor, in state-dict order."""
    from transformers import Gemma4ForConditionalGeneration

    with torch.device("meta"):
        hf = Gemma4ForConditionalGeneration(cfg)
    tc = {**COMMON, **TEXT[model]}  # transformers' config holds per-layer head sizes behind per_layer_config
    state = hf.state_dict()
    out = []
    for name, t in state.items():
        if name == "lm_head.weight":
            continue  # tied to the embedding: the released files leave it out
        out.append((name, tuple(t.shape), torch.bfloat16))
        if name.endswith("self_attn.o_proj.weight") and ".language_model." in name:
            # KV-shared layers: the released checkpoints still carry their (unused) key/value weights
            i = int(name.split(".layers.")[1].split(".")[0])
            pre = name.rsplit(".", 2)[0]
            if i >= tc["num_hidden_layers"] - tc["num_kv_shared_layers"] and f"{pre}.k_proj.weight" not in state:
                head = tc["global_head_dim"] if tc["layer_types"][i] == F else tc["head_dim"]
                kv = (tc["num_key_value_heads"] * head, tc["hidden_size"])
                out += [(f"{pre}.k_proj.weight", kv, torch.bfloat16), (f"{pre}.v_proj.weight", kv, torch.bfloat16),
                        (f"{pre}.k_norm.weight", (head,), torch.bfloat16)]
    return out


def make(model: str, out: Path, seed: int = 0) -> Path:
    folder = out / f"gemma-4-{model.upper()}-it"
    folder.mkdir(parents=True, exist_ok=True)
    cfg = hf_config(model)
    d = cfg.to_dict()
    d.update(architectures=["Gemma4ForConditionalGeneration"], dtype="bfloat16")
    d["text_config"].update(dtype="bfloat16", global_head_dim=COMMON["global_head_dim"])
    d["text_config"].pop("per_layer_config", None)  # transformers' rewrite of global_head_dim; released files say the latter
    tensors = layout(cfg, model)
    print(f"{model}: {len(tensors)} tensors, {sum(map(_nbytes, tensors)) / 1e9:.2f} GB", flush=True)
    t0 = time.perf_counter()
    write_tokenizer(folder, cfg.text_config.vocab_size)
    write_shards(folder, tensors, seed)
    (folder / "config.json").write_text(json.dumps(d, indent=2))  # last: a folder with a config is complete
    print(f"{model}: written to {folder} in {time.perf_counter() - t0:.0f} s", flush=True)
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", nargs="?", type=Path, default=Path("/work/realsize"))
    ap.add_argument("--model", default="e2b", choices=sorted(TEXT))
    args = ap.parse_args()
    make(args.model, args.out)


if __name__ == "__main__":
    main()
