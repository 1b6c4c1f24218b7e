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
