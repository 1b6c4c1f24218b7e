"""Gemma 3 checkpoints at the real sizes, with random weights in the real layouts, for benchmarks.

    python tests/eval/make_real_size.py OUT_DIR [--sizes 1b,4b,12b] [--formats q4_0,q4_k_m,hf]

Writes, per size, into OUT_DIR (never into the repository: a 4B file is 2.5 GB):
- `gemma-3-{size}-q4_0.gguf`: as Google's QAT files, Q4_0 layers, a Q8_0 token embedding (tied to
  the LM head), F32 norms. Block bytes are written directly (random nibbles, plausible fp16 scales),
  so a 4B file takes seconds.
- `gemma-3-{size}-q4_k_m.gguf`: llama.cpp's Q4_K_M mix, made from the Q4_0 file by llama.cpp's own
  `llama-quantize` (so the per-tensor types are exactly llama.cpp's choice; `$LLAMA_QUANTIZE` or the
  native build path).
- `gemma-3-{size}-hf/`: a Hugging Face folder, bfloat16 safetensors (2 GB shards + index), the text
  model's config.json (`gemma3_text`, as the 1B is released; the 4B/12B text configs of the real
  multimodal checkpoints, without the vision tower) and a tokenizer.json.
Metadata and the tokenizer are the bundled Gemma 3 270M's; the hyper-parameters are the released
models' (transformers' Gemma3TextConfig of each checkpoint, llama.cpp's gemma3 conversion keys). The
multimodal 4B/12B vocabularies hold 262,208 tokens, as the released files: the 270M's 262,144, then
`<image_soft_token>` (262144, the image's placeholder) and llama.cpp's `[PAD…]` rows up to the
embedding's height, so an mmproj loads beside them.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

LLAMA_BIN = Path.home() / ".cache/llama-cpp-tools/native/src/vendor/llama.cpp/build/bin"

# The released Gemma 3 text decoders (google/gemma-3-{1b-pt,4b-pt,12b-pt} config.json).
SIZES = {
    "1b": dict(hidden=1152, layers=26, heads=4, kv_heads=1, ffn=6912, window=512, context=32768, rope_scale=None,
               vocab=262144),
    "4b": dict(hidden=2560, layers=34, heads=8, kv_heads=4, ffn=10240, window=1024, context=131072, rope_scale=8.0,
               vocab=262208),
    "12b": dict(hidden=3840, layers=48, heads=16, kv_heads=8, ffn=15360, window=1024, context=131072, rope_scale=8.0,
                vocab=262208),
}
HEAD_DIM = 256
IMAGE_SOFT = "<image_soft_token>"
WEIGHT_STD, EMBED_STD = 0.02, 0.03  # about what the released weights hold
FTYPE_Q4_0 = 2  # llama.cpp's LLAMA_FTYPE_MOSTLY_Q4_0


def tensor_shapes(s: dict) -> list[tuple[str, tuple[int, int] | tuple[int]]]:
    """GGUF tensor names and PyTorch (out, in) shapes, in llama.cpp's order."""
    h, q, kv, f = s["hidden"], s["heads"] * HEAD_DIM, s["kv_heads"] * HEAD_DIM, s["ffn"]
    out = [("token_embd.weight", (s["vocab"], h))]
    for i in range(s["layers"]):
        b = f"blk.{i}."
        out += [(b + "attn_norm.weight", (h,)), (b + "attn_q.weight", (q, h)), (b + "attn_k.weight", (kv, h)),
                (b + "attn_v.weight", (kv, h)), (b + "attn_q_norm.weight", (HEAD_DIM,)),
                (b + "attn_k_norm.weight", (HEAD_DIM,)), (b + "attn_output.weight", (h, q)),
                (b + "post_attention_norm.weight", (h,)), (b + "ffn_norm.weight", (h,)),
                (b + "ffn_gate.weight", (f, h)), (b + "ffn_up.weight", (f, h)), (b + "ffn_down.weight", (h, f)),
                (b + "post_ffw_norm.weight", (h,))]
    return out + [("output_norm.weight", (h,))]


def vocabulary(src, size: str) -> tuple[list, list, list]:
    """The bundled 270M's tokens, scores and types, grown to the size's vocabulary as llama.cpp's
    converter writes a multimodal Gemma 3: `<image_soft_token>`, then unused `[PAD<id>]` tokens."""
    from gguf import TokenType

    tokens = list(src.fields["tokenizer.ggml.tokens"].contents())
    scores = list(src.fields["tokenizer.ggml.scores"].contents())
    types = list(src.fields["tokenizer.ggml.token_type"].contents())
    extra = [IMAGE_SOFT] + [f"[PAD{i}]" for i in range(len(tokens) + 1, SIZES[size]["vocab"])]
    extra = extra[:SIZES[size]["vocab"] - len(tokens)]
    return (tokens + extra, scores + [0.0] * len(extra),
            types + [int(TokenType.USER_DEFINED if t == IMAGE_SOFT else TokenType.UNUSED) for t in extra])


def random_blocks(rng, rows: int, cols: int, qtype) -> np.ndarray:
    """(rows, bytes per row) of random Q4_0 or Q8_0 blocks: random codes, fp16 scales near what
    weights of std WEIGHT_STD (EMBED_STD for the Q8_0 embedding) would get."""
    from gguf import GGMLQuantizationType as Q

    size, spread = {Q.Q4_0: (18, 4.6), Q.Q8_0: (34, 74.0)}[qtype]  # block bytes, std of the codes
    std = WEIGHT_STD if qtype == Q.Q4_0 else EMBED_STD
    n = rows * (cols // 32)
    blocks = np.frombuffer(bytearray(rng.bytes(n * size)), dtype=np.uint8).reshape(n, size)
    d = (std / spread * rng.uniform(0.5, 1.5, n)).astype(np.float16)
    blocks[:, :2] = d.view(np.uint8).reshape(n, 2)
    return blocks.reshape(rows, -1)


def norm_weight(rng, n: int) -> np.ndarray:
    """A norm's stored weight: llama.cpp's Gemma converter stores 1 + w."""
    return (1.0 + rng.normal(0, 0.1, n)).astype(np.float32)


def write_q4_0(path: Path, size: str, bundled: Path, seed: int = 0) -> None:
    from gguf import GGMLQuantizationType as Q, GGUFReader, GGUFValueType, GGUFWriter

    s = SIZES[size]
    src = GGUFReader(bundled)
    w = GGUFWriter(str(path), "gemma3")
    a = "gemma3."
    ours = {
        "general.name": f"Gemma 3 {size} (random weights)", "general.size_label": size.upper(),
        "general.file_type": FTYPE_Q4_0, a + "context_length": s["context"], a + "embedding_length": s["hidden"],
        a + "block_count": s["layers"], a + "feed_forward_length": s["ffn"], a + "attention.head_count": s["heads"],
        a + "attention.head_count_kv": s["kv_heads"], a + "attention.sliding_window": s["window"],
    }
    tokens, scores, types = vocabulary(src, size)
    ours.update({"tokenizer.ggml.tokens": tokens, "tokenizer.ggml.scores": scores, "tokenizer.ggml.token_type": types})
    for key, field in src.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        value = ours.pop(key, None)
        value = field.contents() if value is None else value
        sub = field.types[-1] if field.types[0] == GGUFValueType.ARRAY else None
        w.add_key_value(key, value, field.types[0], sub_type=sub)
    assert not ours, f"keys missing from the bundled model: {ours}"
    if s["rope_scale"]:
        w.add_key_value(a + "rope.scaling.type", "linear", GGUFValueType.STRING)
        w.add_key_value(a + "rope.scaling.factor", s["rope_scale"], GGUFValueType.FLOAT32)
    shapes = tensor_shapes(s)
    kinds = {}
    for name, shape in shapes:
        if len(shape) == 1:
            kinds[name] = None
            w.add_tensor_info(name, shape, np.dtype(np.float32), shape[0] * 4)
        else:
            kinds[name] = Q.Q8_0 if name == "token_embd.weight" else Q.Q4_0
            nbytes = shape[0] * shape[1] // 32 * (34 if kinds[name] == Q.Q8_0 else 18)
            w.add_tensor_info(name, (shape[0], nbytes // shape[0]), np.dtype(np.uint8), nbytes, raw_dtype=kinds[name])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    rng = np.random.default_rng(seed)
    for name, shape in shapes:  # one tensor in memory at a time
        w.write_tensor_data(norm_weight(rng, shape[0]) if kinds[name] is None
                            else random_blocks(rng, shape[0], shape[1], kinds[name]))
    w.close()


def write_q4_k_m(path: Path, q4_0: Path, threads: int) -> None:
    """llama.cpp's Q4_K_M mix, quantized by llama.cpp itself from the Q4_0 file's weights."""
    tool = os.environ.get("LLAMA_QUANTIZE", str(LLAMA_BIN / "llama-quantize"))
    subprocess.run([tool, "--allow-requantize", str(q4_0), str(path), "Q4_K_M", str(threads)], check=True,
                   stdout=subprocess.DEVNULL)


def hf_config(size: str) -> dict:
    s = SIZES[size]
    rope = {"rope_type": "linear", "factor": s["rope_scale"]} if s["rope_scale"] else None
    return {
        "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", "torch_dtype": "bfloat16",
        "vocab_size": s["vocab"], "hidden_size": s["hidden"], "intermediate_size": s["ffn"],
        "num_hidden_layers": s["layers"], "num_attention_heads": s["heads"], "num_key_value_heads": s["kv_heads"],
        "head_dim": HEAD_DIM, "query_pre_attn_scalar": HEAD_DIM, "sliding_window": s["window"],
        "sliding_window_pattern": 6, "max_position_embeddings": s["context"], "rms_norm_eps": 1e-6,
        "rope_theta": 1_000_000.0, "rope_local_base_freq": 10_000.0, "rope_scaling": rope,
        "hidden_activation": "gelu_pytorch_tanh", "final_logit_softcapping": None, "attn_logit_softcapping": None,
        "bos_token_id": 2, "eos_token_id": [1, 106], "pad_token_id": 0, "attention_bias": False,
        "attention_dropout": 0.0, "initializer_range": 0.02, "use_cache": True,
    }


def write_hf(folder: Path, size: str, bundled: Path, seed: int = 0, shard_bytes: int = 2 << 30) -> None:
    import torch
    from gguf import GGUFReader
    from safetensors.torch import save_file

    from mmsdk.decoder.tokenizer import build_gemma_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    s = SIZES[size]
    (folder / "config.json").write_text(json.dumps(hf_config(size), indent=2))
    src = GGUFReader(bundled)
    tokens, _, types = vocabulary(src, size)
    build_gemma_tokenizer(tokens, types).save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<bos>", "eos_token": "<eos>"}))
    gen = torch.Generator().manual_seed(seed)
    names = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight"}
    hf = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
          "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm",
          "attn_k_norm": "self_attn.k_norm", "post_attention_norm": "post_attention_layernorm",
          "ffn_norm": "pre_feedforward_layernorm", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
          "ffn_down": "mlp.down_proj", "post_ffw_norm": "post_feedforward_layernorm"}
    index, shard, shard_n, n_shards = {}, {}, 0, 0
    shapes = tensor_shapes(s)
    total = sum(int(np.prod(sh)) * 2 for _, sh in shapes)
    expected = -(-total // shard_bytes)

    def flush():
        nonlocal shard, shard_n, n_shards
        n_shards += 1
        fname = f"model-{n_shards:05d}-of-{expected:05d}.safetensors"
        save_file(shard, str(folder / fname), metadata={"format": "pt"})
        index.update({k: fname for k in shard})
        shard, shard_n = {}, 0

    for name, shape in shapes:
        if name in names:
            key = names[name]
        else:
            _, i, kind, _ = name.split(".")
            key = f"model.layers.{i}.{hf[kind]}.weight"
        std = EMBED_STD if "embed" in key else 0.1 if len(shape) == 1 else WEIGHT_STD
        shard[key] = (torch.randn(shape, generator=gen) * std).to(torch.bfloat16)
        shard_n += shard[key].numel() * 2
        if shard_n >= shard_bytes:
            flush()
    if shard:
        flush()
    if n_shards != expected:  # names must say the true count: rename
        for i in range(1, n_shards + 1):
            old = folder / f"model-{i:05d}-of-{expected:05d}.safetensors"
            new = folder / f"model-{i:05d}-of-{n_shards:05d}.safetensors"
            old.rename(new)
        index = {k: v.replace(f"-of-{expected:05d}", f"-of-{n_shards:05d}") for k, v in index.items()}
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": index}, indent=1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--sizes", default="1b,4b")
    ap.add_argument("--formats", default="q4_0,q4_k_m", help="comma-separated: q4_0, q4_k_m, hf")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    repo = Path(__file__).resolve().parents[2]
    if repo in a.out.resolve().parents or a.out.resolve() == repo:
        print(f"{a.out}: write real-size checkpoints outside the repository", file=sys.stderr)
        return 2
    from mmsdk.bundled import bundled_gguf

    bundled = bundled_gguf()
    a.out.mkdir(parents=True, exist_ok=True)
    for size in a.sizes.split(","):
        if size not in SIZES:
            print(f"--sizes: unknown {size!r} (known: {', '.join(SIZES)})", file=sys.stderr)
            return 2
        q4_0 = a.out / f"gemma-3-{size}-q4_0.gguf"
        for fmt in a.formats.split(","):
            t = time.perf_counter()
            if fmt == "q4_0":
                out = q4_0
                write_q4_0(out, size, bundled)
            elif fmt == "q4_k_m":
                if not q4_0.is_file():
                    write_q4_0(q4_0, size, bundled)
                out = a.out / f"gemma-3-{size}-q4_k_m.gguf"
                write_q4_k_m(out, q4_0, a.threads)
            elif fmt == "hf":
                out = a.out / f"gemma-3-{size}-hf"
                write_hf(out, size, bundled)
            else:
                print(f"--formats: unknown {fmt!r} (known: q4_0, q4_k_m, hf)", file=sys.stderr)
                return 2
            mb = (sum(p.stat().st_size for p in out.iterdir()) if out.is_dir() else out.stat().st_size) / 1e6
            print(f"{out}: {mb:.0f} MB in {time.perf_counter() - t:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
