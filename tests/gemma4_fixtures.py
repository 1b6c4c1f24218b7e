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
