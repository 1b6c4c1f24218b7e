"""Small random Gemma 3 checkpoints written to disk in the real Hugging Face layout."""
import json
from pathlib import Path

import torch

from mmsdk.decoder.tokenizer import build_gemma_tokenizer

SPECIAL = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>",
           "<start_of_image>", "<end_of_image>", "<image_soft_token>"]
BYTES = [f"<0x{i:02X}>" for i in range(256)]
LETTERS = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.,!?\n") + ["\u2581"]
WORDS = ["\u2581the", "\u2581a", "th", "he", "in", "er", "an", "\u2581t", "\u2581s", "on"]


def tiny_vocab() -> tuple[list[str], list[int]]:
    tokens = SPECIAL + BYTES + LETTERS + WORDS
    types = [3] * len(SPECIAL) + [6] * len(BYTES) + [1] * (len(LETTERS) + len(WORDS))
    return tokens, types


def tiny_text_config(**overrides):
    from transformers import Gemma3TextConfig

    vocab = len(tiny_vocab()[0])
    kw = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=7,
              num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=8,
              max_position_embeddings=256, query_pre_attn_scalar=16,
              rope_scaling={"rope_type": "linear", "factor": 8.0})
    kw.update(overrides)
    return Gemma3TextConfig(**kw)


def write_tiny_gemma3(folder: Path, seed: int = 0, **overrides):
    """A random Gemma3ForCausalLM saved with save_pretrained plus a real tokenizer.json.
    Norm weights are randomized too, so (1 + w) is exercised. Returns the reference model."""
    from transformers import Gemma3ForCausalLM

    torch.manual_seed(seed)
    model = Gemma3ForCausalLM(tiny_text_config(**overrides)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0, 0.2)
    model.save_pretrained(folder)
    tokens, types = tiny_vocab()
    build_gemma_tokenizer(tokens, types).save(str(Path(folder) / "tokenizer.json"))
    (Path(folder) / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<bos>", "eos_token": "<eos>"}))
    return model


def gemma3_gguf_writer(path, tc, name: str, file_type):
    """A `gguf.GGUFWriter` holding a tiny Gemma 3's metadata (text config `tc`, the tiny vocabulary),
    as llama.cpp's converter writes it; the caller adds the tensors. Returns (writer, tokens)."""
    import gguf

    w = gguf.GGUFWriter(str(path), arch="gemma3")
    w.add_name(name)
    w.add_file_type(file_type)
    w.add_block_count(tc.num_hidden_layers)
    w.add_context_length(tc.max_position_embeddings)
    w.add_embedding_length(tc.hidden_size)
    w.add_feed_forward_length(tc.intermediate_size)
    w.add_head_count(tc.num_attention_heads)
    w.add_head_count_kv(tc.num_key_value_heads)
    w.add_key_length(tc.head_dim)
    w.add_value_length(tc.head_dim)
    w.add_layer_norm_rms_eps(tc.rms_norm_eps)
    w.add_rope_freq_base(1_000_000.0)
    w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
    w.add_rope_scaling_factor(8.0)
    w.add_sliding_window(tc.sliding_window)
    tokens, types = tiny_vocab()
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * len(tokens))
    w.add_token_types(types)
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)
    w.add_unk_token_id(3)
    w.add_pad_token_id(0)
    return w, tokens
