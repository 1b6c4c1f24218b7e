"""Gemma 3n E2B and E4B at their real sizes, random weights: Hugging Face folders for the benchmarks.

    python tests/eval/make_real_size_gemma3n.py [--out /work/realsize] [--models E2B E4B]

Writes `<out>/gemma-3n-E2B-it/` (10.9 GB) and `<out>/gemma-3n-E4B-it/` (15.7 GB): config.json,
model-0000k-of-0000n.safetensors + model.safetensors.index.json, tokenizer.json, tokenizer.model
(what llama.cpp's converter reads), tokenizer_config.json.

Source of the configs: transformers' `Gemma3nConfig` defaults, documented there as the
google/gemma-3n-E4B configuration (`@auto_docstring(checkpoint="google/gemma-3n-E4B")`: text 35
layers, hidden 2048, FFN 16384, 8 heads / 2 KV heads of 256, PLE 262144 x 35 x 256, 15 KV-shared
layers, AltUp 4, LAuReL rank 64; vision mobilenetv5_300m_enc -> 2048; audio Conformer 12 x 1536).
E2B differs in the text config only, as its published config.json says: 30 layers, FFN 8192, 10
KV-shared layers (the first 10 layers 95% sparse in both). The rest (vocab 262400, ids 255999 /
262144 / 262145 / 256000 / 262272 / 262273, sliding window 512, soft-cap 30) is shared.

Layout: every tensor name and shape comes from transformers' own `Gemma3nForConditionalGeneration`
built on the meta device (no memory), so the text decoder, the vision tower (MobileNet-V5 300M, via
timm) and the audio tower are all real-size, under `model.language_model.*`, `model.vision_tower.*`,
`model.audio_tower.*`, `model.embed_vision.*`, `model.embed_audio.*`. As in the released files:
everything bfloat16, no `lm_head.weight` (tied), and the unused key/value weights of the KV-shared
layers present. Shards are cut at 5 GB in state-dict order, as `save_pretrained` does.

Weights: N(0, 0.02) matrices, norm gains 1 + N(0, 0.02) (Gemma 3n norms scale by w), BatchNorm
statistics mean 0 / variance 1. Each tensor is generated in chunks and written straight to its shard:
the script's RSS stays near `import torch`'s, whatever the model size.

Tokenizer: the bundled Gemma 3 270M's vocabulary (the same 262144 Gemma 3 pieces, 256000 renamed
`<start_of_audio>` as in Gemma 3n), plus the 256 vision/audio ids Gemma 3n adds (262144 `<end_of_image>`, 262145 `<image_soft_token>`, 262272
`<end_of_audio>`, 262273 `<audio_soft_token>`; the rest named `<unused_vision_i>` / `<unused_audio_i>`).
"""
import argparse
import json
import os
import time
from pathlib import Path

import torch

SHARD_BYTES = 5 * 10**9
CHUNK = 1 << 24  # elements generated at once (32 MB of bfloat16)
# The published text configs differ from transformers' (E4B) defaults in these fields only.
TEXT = {
    "E2B": dict(num_hidden_layers=30, intermediate_size=[8192] * 30, num_kv_shared_layers=10,
                activation_sparsity_pattern=[0.95] * 10 + [0.0] * 20),
    "E4B": dict(num_hidden_layers=35, intermediate_size=[16384] * 35, num_kv_shared_layers=15,
                activation_sparsity_pattern=[0.95] * 10 + [0.0] * 25),
}
_ST = {torch.bfloat16: "BF16", torch.float32: "F32", torch.int64: "I64"}


def hf_config(size: str):
    from transformers import Gemma3nConfig

    text = dict(TEXT[size], eos_token_id=[1, 106])
    return Gemma3nConfig(text_config=text, eos_token_id=[1, 106])


def layout(cfg) -> list[tuple[str, tuple, torch.dtype]]:
    """(name, shape, dtype) of every stored tensor, in state-dict order."""
    from transformers import Gemma3nForConditionalGeneration

    with torch.device("meta"):
        model = Gemma3nForConditionalGeneration(cfg)
    out = []
    for name, t in model.state_dict().items():
        if name == "lm_head.weight":
            continue  # tied to the embedding: the released files leave it out
        out.append((name, tuple(t.shape), torch.int64 if t.dtype == torch.int64 else torch.bfloat16))
        if name.endswith("self_attn.o_proj.weight") and "language_model" in name:
            # KV-shared layers: the released checkpoints still carry their (unused) key/value weights
            tc = cfg.text_config
            i = int(name.split(".layers.")[1].split(".")[0])
            if i >= tc.num_hidden_layers - tc.num_kv_shared_layers:
                pre = name.rsplit(".", 2)[0]
                kv = (tc.num_key_value_heads * tc.head_dim, tc.hidden_size)
                out += [(f"{pre}.k_proj.weight", kv, torch.bfloat16), (f"{pre}.v_proj.weight", kv, torch.bfloat16),
                        (f"{pre}.k_norm.weight", (tc.head_dim,), torch.bfloat16)]
    return out


def chunks(name: str, shape: tuple, dtype: torch.dtype, gen: torch.Generator):
    """The tensor's bytes, a chunk at a time."""
    n = 1
    for s in shape:
        n *= s
    if dtype == torch.int64:
        yield torch.zeros(n, dtype=dtype)
        return
    leaf = name.rsplit(".", 1)[-1]
    for start in range(0, n, CHUNK):
        m = min(CHUNK, n - start)
        if leaf == "running_var":
            x = torch.ones(m)
        elif leaf == "running_mean" or leaf == "bias":
            x = torch.zeros(m)
        elif len(shape) == 1:  # norm gains and scales
            x = torch.randn(m, generator=gen).mul_(0.02).add_(1.0)
        else:
            x = torch.randn(m, generator=gen).mul_(0.02)
        yield x.to(dtype)


def write_shards(folder: Path, tensors: list, seed: int) -> None:
    shards, size = [[]], 0
    for t in tensors:
        nbytes = _nbytes(t)
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += nbytes
    gen = torch.Generator().manual_seed(seed)
    weight_map, total = {}, 0
    for k, shard in enumerate(shards, 1):
        fname = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for t in shard:
            name, shape, dtype = t
            header[name] = {"dtype": _ST[dtype], "shape": list(shape), "data_offsets": [offset, offset + _nbytes(t)]}
            offset += _nbytes(t)
            weight_map[name] = fname
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)
        tmp = folder / f".{fname}.part"
        with open(tmp, "wb") as f:
            f.write(len(blob).to_bytes(8, "little"))
            f.write(blob)
            for name, shape, dtype in shard:
                for c in chunks(name, shape, dtype, gen):
                    f.write(memoryview(c.view(torch.uint8).numpy()))
        os.replace(tmp, folder / fname)
        total += offset
        print(f"  {fname}: {len(shard)} tensors, {offset / 1e9:.2f} GB", flush=True)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def _nbytes(t) -> int:
    _, shape, dtype = t
    n = 1
    for s in shape:
        n *= s
    return n * (8 if dtype == torch.int64 else 2)


def write_tokenizer(folder: Path, vocab_size: int) -> None:
    """tokenizer.json and tokenizer.model: the bundled Gemma 3 vocabulary plus Gemma 3n's media ids."""
    from mmsdk.bundled import bundled_gguf
    from mmsdk.decoder.gguf_file import open_gguf, read_metadata
    from mmsdk.decoder.tokenizer import build_gemma_tokenizer, sentencepiece_model

    meta = read_metadata(open_gguf(bundled_gguf()))
    tokens, types = list(meta["tokenizer.ggml.tokens"]), list(meta["tokenizer.ggml.token_type"])
    # Gemma 3n reuses Gemma 3's 256000 (`<end_of_image>` there) as `<start_of_audio>` (boa_token_id) and moves
    # `<end_of_image>` to 262144; a piece named twice makes sentencepiece (llama.cpp's converter) refuse the file
    tokens[256000] = "<start_of_audio>"
    named = {262144: "<end_of_image>", 262145: "<image_soft_token>", 262272: "<end_of_audio>",
             262273: "<audio_soft_token>"}
    for i in range(len(tokens), vocab_size):
        tokens.append(named.get(i, f"<unused_vision_{i - 262144}>" if i < 262272 else f"<unused_audio_{i - 262272}>"))
        types.append(3)  # control
    build_gemma_tokenizer(tokens, types).save(str(folder / "tokenizer.json"))
    (folder / "tokenizer.model").write_bytes(sentencepiece_model(tokens, types))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>",
         "tokenizer_class": "GemmaTokenizer", "model_max_length": 32768}, indent=2))


def make(size: str, out: Path, seed: int = 0) -> Path:
    folder = out / f"gemma-3n-{size}-it"
    folder.mkdir(parents=True, exist_ok=True)
    cfg = hf_config(size)
    d = cfg.to_dict()
    d.update(architectures=["Gemma3nForConditionalGeneration"], dtype="bfloat16", torch_dtype="bfloat16")
    d["text_config"].update(dtype="bfloat16", torch_dtype="bfloat16")
    tensors = layout(cfg)
    print(f"{size}: {len(tensors)} tensors, {sum(map(_nbytes, tensors)) / 1e9:.2f} GB", flush=True)
    t0 = time.perf_counter()
    write_tokenizer(folder, cfg.text_config.vocab_size)
    write_shards(folder, tensors, seed)
    (folder / "config.json").write_text(json.dumps(d, indent=2))  # last: a folder with a config is complete
    print(f"{size}: written to {folder} in {time.perf_counter() - t0:.0f} s", flush=True)
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("/work/realsize"))
    ap.add_argument("--models", nargs="+", default=["E2B", "E4B"], choices=sorted(TEXT))
    args = ap.parse_args()
    for size in args.models:
        make(size, args.out)


if __name__ == "__main__":
    main()
