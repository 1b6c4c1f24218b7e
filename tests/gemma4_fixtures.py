"""Tiny random Gemma 4 checkpoints in the real Hugging Face layout, written by transformers itself.

`E2B_LIKE` keeps E2B/E4B's structure at test size: per-layer embeddings, a KV-shared tail whose
MLPs are twice as wide, wider global layers with proportional RoPE and keys equal to values (with
their own kv head count), sliding layers of window 4 so the rings wrap, and a last layer given as
sliding that transformers (and we) force to global. `DENSE_LIKE` is the larger models' shape: no
per-layer embeddings, no KV sharing, separate values.
"""
from pathlib import Path

import torch

S, F = "sliding_attention", "full_attention"
E2B_LIKE = dict(vocab_size=512, vocab_size_per_layer_input=512, hidden_size=64, hidden_size_per_layer_input=8,
                intermediate_size=96, num_hidden_layers=8, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                global_head_dim=32, num_global_key_value_heads=1, attention_k_eq_v=True, num_kv_shared_layers=3,
                use_double_wide_mlp=True, sliding_window=4, final_logit_softcapping=30.0,
                layer_types=[S, S, S, F, S, S, S, S])
DENSE_LIKE = dict(vocab_size=512, hidden_size=64, hidden_size_per_layer_input=0, intermediate_size=96,
                  num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2, head_dim=16, global_head_dim=32,
                  sliding_window=4, final_logit_softcapping=30.0, layer_types=[S, S, F, S, S, F])
# Towers at test size: their tensors sit where the real checkpoint has them (`model.vision_tower.*`, ...).
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
              num_key_value_heads=2, head_dim=16, patch_size=4, position_embedding_size=64,
              use_clipped_linears=True, standardize=True)
AUDIO = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, subsampling_conv_channels=[128, 4],
             output_proj_dims=32)


def _randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter random, and the per-layer output scales (buffers in transformers) too.
    Weights have std 0.05 (Gemma 3n's fixtures use 0.15): at 0.15 this random stack amplifies
    float32 rounding to ~1e-4 on the logits in transformers and here alike; at 0.05 to <= 4e-5
    (5 seeds, prefill of 16), while full instead of proportional RoPE still moves them by >= 0.19."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.eval().named_parameters():
            noise = torch.randn(p.shape, generator=g)
            is_norm = name.endswith(".weight") and "norm" in name.split(".")[-2]  # also norm_pre_attn, ...
            p.copy_(1.0 + 0.1 * noise if is_norm else 0.05 * noise)
        for name, b in model.named_buffers():  # scales, clip ranges that bite, standardization
            u = torch.rand(b.shape, generator=g)
            if name.endswith("layer_scalar"):
                b.copy_(0.5 + u)
            elif name.endswith(("_min", "_max")):
                b.copy_((0.5 + u) * (-1 if name.endswith("_min") else 1))
            elif name.endswith("std_bias"):
                b.copy_(u - 0.5)
            elif name.endswith("std_scale"):
                b.copy_(0.5 + u)
    return model


def hf_text_model(text: dict = E2B_LIKE, seed: int = 0):
    from transformers import Gemma4ForCausalLM, Gemma4TextConfig

    return _randomize(Gemma4ForCausalLM(Gemma4TextConfig(**text)), seed)


def hf_full_model(text: dict = E2B_LIKE, seed: int = 0, vision: bool = True, audio: bool = True):
    from transformers import Gemma4Config, Gemma4ForConditionalGeneration

    cfg = Gemma4Config(text_config=text, vision_config=VISION if vision else None, audio_config=AUDIO if audio else None,
                       **MEDIA_IDS)
    return _randomize(Gemma4ForConditionalGeneration(cfg), seed)


def save(model, folder, vocab_size: int = 512):
    model.save_pretrained(folder)
    write_gemma4_tokenizer(folder, vocab_size)
    return folder


# Gemma 4's control tokens at their real ids, and the words its chat format writes.
CONTROLS = {98: "<|think|>", 100: "<|channel>", 101: "<channel|>", 105: "<|turn>", 106: "<turn|>",
            200: "<|image|>", 201: "<|image>", 202: "<image|>", 203: "<|audio|>", 204: "<|audio>",
            205: "<audio|>"}  # (the media tokens' real ids are past 255k)
MEDIA_IDS = dict(image_token_id=200, boi_token_id=201, eoi_token_id=202, audio_token_id=203, boa_token_id=204,
                 eoa_token_index=205, video_token_id=206)
FORMAT_WORDS = ("system", "user", "model", "thought")
# The chat template of the Gemma 4 vocabulary file llama.cpp vendors (models/ggml-vocab-gemma-4.gguf).
CHAT_TEMPLATE = Path(__file__).parent / "fixtures" / "gemma4_chat_template.jinja"


def write_gemma4_tokenizer(folder: Path, vocab_size: int = 512) -> None:
    """A word-level tokenizer with Gemma's specials and Gemma 4's control tokens at their real ids."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

    names = {0: "<pad>", 1: "<eos>", 2: "<bos>", 3: "<unk>", **CONTROLS}
    names.update({4 + i: w for i, w in enumerate(FORMAT_WORDS)})
    vocab = {names.get(i, f"w{i}"): i for i in range(vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens([AddedToken(t, special=True) for i, t in sorted(names.items()) if i < 4 or i in CONTROLS])
    tok.save(str(folder / "tokenizer.json"))



# The vision and audio tests' checkpoint (conftest's `gemma4_media` fixture): a sliding window (16)
# an image spans, and image tokens that see each other both ways on sliding layers, as Gemma 4's do.
MEDIA_TEXT = dict(E2B_LIKE, use_bidirectional_attention="vision", sliding_window=16)


# ---- the same checkpoint as llama.cpp's converter writes it (convert_hf_to_gguf.py, `Gemma4Model`) ----
# Checked against the real converter's output on the same folder: tests/eval/check_gemma4_gguf_writer.py
# (names, shapes, types, metadata keys and value types, values); its listing is tests/fixtures/gemma4_gguf_f32.json.

GGUF_NAMES = {  # transformers' name under `model.` -> llama.cpp's
    "embed_tokens.weight": "token_embd.weight", "embed_tokens_per_layer.weight": "per_layer_token_embd.weight",
    "per_layer_model_projection.weight": "per_layer_model_proj.weight",
    "per_layer_projection_norm.weight": "per_layer_proj_norm.weight", "norm.weight": "output_norm.weight",
    "input_layernorm.weight": "attn_norm.weight", "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight", "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight", "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight", "post_attention_layernorm.weight": "post_attention_norm.weight",
    "pre_feedforward_layernorm.weight": "ffn_norm.weight", "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight", "mlp.down_proj.weight": "ffn_down.weight",
    "post_feedforward_layernorm.weight": "post_ffw_norm.weight", "per_layer_input_gate.weight": "inp_gate.weight",
    "per_layer_projection.weight": "proj.weight", "post_per_layer_input_norm.weight": "post_norm.weight",
    "layer_scalar": "layer_output_scale.weight",
}
_VISIBLE = {"<|channel>", "<channel|>", "<|tool_call>", "<tool_call|>", "<|tool_response>", "<tool_response|>",
            '<|"|>'}  # the converter's USER_DEFINED tokens


def bpe_vocab(vocab_size: int = 512):
    """A Gemma-4-like BPE vocabulary with byte fallback: (tokens, types as the converter gives them,
    merges). Gemma's specials and Gemma 4's control tokens at their real ids, bytes at 256-511."""
    import json

    from mmsdk.decoder.tokenizer import build_gemma_tokenizer

    names = {0: "<pad>", 1: "<eos>", 2: "<bos>", 3: "<unk>", **CONTROLS}
    names.update({4 + i: w for i, w in enumerate(FORMAT_WORDS)})
    names.update({256 + b: f"<0x{b:02X}>" for b in range(256)})
    free = [i for i in range(256) if i not in names]
    pieces = [*"abcdefghijklmnopqrstuvwxyz\u2581", "\u2581a", "ab", "\u2581ab", "ba"]
    names.update({i: p for i, p in zip(free, pieces)})
    names.update({i: f"w{i}x" for i in free[len(pieces):]})
    tokens = [names[i] for i in range(vocab_size)]
    # The converter (transformers' tokenizer underneath) marks the four specials control, bytes byte.
    types = [3 if i < 4 else 6 if t.startswith("<0x") else 4 if t in _VISIBLE else 1 for i, t in enumerate(tokens)]
    tok = build_gemma_tokenizer(tokens, [3 if i < 4 or i in CONTROLS else 1 for i in range(vocab_size)])
    merges = [" ".join(m) if isinstance(m, list) else m for m in json.loads(tok.to_str())["model"]["merges"]]
    return tokens, types, merges, tok


def write_bpe_tokenizer(folder: Path, vocab_size: int = 512) -> None:
    """The folder's tokenizer as `bpe_vocab` (what llama.cpp's converter takes: a BPE tokenizer.json)."""
    import json

    bpe_vocab(vocab_size)[3].save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<bos>", "eos_token": "<eos>",
                                                             "pad_token": "<pad>", "unk_token": "<unk>"}))


def write_gguf(model, path, kind: str = "F32", name: str = "Tiny", drop=(), extra: dict | None = None,
               meta: dict | None = None):
    """`model` (a Gemma4ForCausalLM) as llama.cpp's converter writes it (`--outtype f32/q8_0`), or with
    its 2-D weights in Q4_0 ("Q4_0", as llama-quantize would). Matrices whose rows do not fill whole
    32-wide blocks fall back to F16, 1-D tensors stay F32, as the converter does.
    For the error tests: tensors `drop`ped or `extra` ones added, `meta` keys added (uint32 values)."""
    import gguf
    import numpy as np

    d = model.config.to_dict()
    L, shared = d["num_hidden_layers"], d["num_kv_shared_layers"]
    types = list(d["layer_types"])
    # config.json gives the global layers' shape as keys or as a per_layer_config (the converter reads both)
    over = next((o for i, o in sorted((d.get("per_layer_config") or {}).items()) if types[int(i)] == F), {})
    glob = (d.get("global_head_dim") or over.get("head_dim"),
            d.get("num_global_key_value_heads") or over.get("num_key_value_heads"))
    w = gguf.GGUFWriter(str(path), arch="gemma4")
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(name)
    w.add_size_label("384K")
    w.add_block_count(L)
    w.add_context_length(d["max_position_embeddings"])
    w.add_embedding_length(d["hidden_size"])
    ff = d["intermediate_size"]
    w.add_feed_forward_length([ff if i < L - shared else 2 * ff for i in range(L)] if d["use_double_wide_mlp"] else ff)
    w.add_head_count(d["num_attention_heads"])
    w.add_head_count_kv([d["num_key_value_heads"] if t == S else glob[1] for t in types] if glob[1] else
                        d["num_key_value_heads"])
    rope = d["rope_parameters"]
    w.add_rope_freq_base(rope[F]["rope_theta"])
    w.add_rope_freq_base_swa(rope[S]["rope_theta"])
    w.add_layer_norm_rms_eps(d["rms_norm_eps"])
    w.add_key_length(glob[0])
    w.add_value_length(glob[0])
    w.add_file_type({"F32": 0, "Q8_0": 7, "Q4_0": 2}[kind])
    w.add_final_logit_softcapping(d["final_logit_softcapping"])
    w.add_sliding_window(d["sliding_window"])
    w.add_shared_kv_layers(shared)
    w.add_embedding_length_per_layer_input(d["hidden_size_per_layer_input"] or 0)
    w.add_sliding_window_pattern([t == S for t in types])
    w.add_key_length_swa(d["head_dim"])
    w.add_value_length_swa(d["head_dim"])
    w.add_rope_dimension_count(glob[0])
    w.add_rope_dimension_count_swa(d["head_dim"])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    tokens, tok_types, merges, _ = bpe_vocab(d["vocab_size"])
    w.add_tokenizer_model("gemma4")
    w.add_token_list(tokens)
    w.add_token_scores([-1000.0] * len(tokens))
    w.add_token_types(tok_types)
    w.add_token_merges(merges)
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)
    w.add_unk_token_id(3)
    w.add_pad_token_id(0)
    w.add_add_space_prefix(False)
    w.add_add_bos_token(True)

    # proportional RoPE as frequency factors: 1 for the rotated pairs, 1e30 for the rest
    n_rot = int(glob[0] * rope[F]["partial_rotary_factor"] / 2)
    tensors = {"rope_freqs.weight": np.array([1.0] * n_rot + [1e30] * (glob[0] // 2 - n_rot), dtype=np.float32)}
    for hf_name, t in model.model.state_dict().items():
        parts = hf_name.split(".")
        gname = f"blk.{parts[1]}.{GGUF_NAMES['.'.join(parts[2:])]}" if parts[0] == "layers" else GGUF_NAMES[hf_name]
        tensors[gname] = t.float().numpy()
    for key, value in (meta or {}).items():
        w.add_uint32(key, value)
    tensors = {k: v for k, v in {**tensors, **(extra or {})}.items() if k not in drop}
    for gname, a in tensors.items():
        qtype = gguf.GGMLQuantizationType.F32
        if a.ndim == 2 and kind != "F32" and gname != "rope_freqs.weight":
            qtype = gguf.GGMLQuantizationType[kind] if a.shape[1] % 32 == 0 else gguf.GGMLQuantizationType.F16
        data = gguf.quants.quantize(a, qtype) if qtype != gguf.GGMLQuantizationType.F32 else a
        w.add_tensor(gname, data, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
