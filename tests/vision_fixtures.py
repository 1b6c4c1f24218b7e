"""Small random Gemma 3 / Gemma 3n reference models (transformers) shared by the vision tests."""
import json

import numpy as np
import torch
from PIL import Image

from mmsdk.encoders.fusion import BOI, EOI, SOFT

SMALL_SIGLIP = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                    image_size=224, patch_size=14, vision_use_head=False)  # 16 x 16 patches
SMALL_GEMMA3_TEXT = dict(vocab_size=262208, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=32, sliding_window=8,
                         layer_types=["sliding_attention", "sliding_attention", "full_attention"])
# MobileNet-V5-300M's own block structure, channels scaled by 1/8 through timm (the 300M size takes
# ~30 s per 768 px image on 2 cores; the code path is identical).
SMALL_MNV5 = dict(model_args={"channel_multiplier": 0.125})


def randomize(model: torch.nn.Module, *, include=("",), seed: int = 0) -> None:
    """Random weights everywhere (norm scales around their identity), so no term hides behind a zero init."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(s in name for s in include):
                p.copy_(torch.randn(p.shape, generator=g) * (0.3 if "norm" in name else 0.05)
                        + (1.0 if "norm" in name and "gemma3n" in type(model).__module__ else 0.0))


def small_gemma3(mm_tokens_per_image: int = 16, **text):
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    cfg = Gemma3Config(text_config={**SMALL_GEMMA3_TEXT, **text}, vision_config=SMALL_SIGLIP,
                       mm_tokens_per_image=mm_tokens_per_image)
    torch.manual_seed(0)
    model = Gemma3ForConditionalGeneration(cfg).eval()
    randomize(model)
    return model


def small_gemma3n():
    from transformers import Gemma3nConfig, Gemma3nModel

    cfg = Gemma3nConfig(
        vision_config=SMALL_MNV5,
        text_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, head_dim=32, hidden_size_per_layer_input=8,
                         layer_types=["sliding_attention", "full_attention"], num_kv_shared_layers=0,
                         activation_sparsity_pattern=[0.0, 0.0], laurel_rank=4),
        audio_config=dict(hidden_size=32, conf_num_attention_heads=2, conf_num_hidden_layers=1,
                          sscp_conv_channel_size=[8, 8]),
    )
    torch.manual_seed(0)
    model = Gemma3nModel(cfg).eval()
    randomize(model, include=("embed_vision",))
    return model


def noise_image(height: int, width: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    """Smooth-ish random content: noise plus gradients, so resizing has structure to get wrong."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) % 256], -1)
    noisy = np.clip(base + rng.integers(-40, 40, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(noisy).convert(mode)


WORDS = ["Describe", "these", "two", "images", ".", "First", ":", "second", "Here", "is", "the", "original",
         "image", "and", "here", "are", "some", "crops", "to", "help", "you", "see", "better", "\n\n", " "]
SPECIAL = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, BOI: 255999, EOI: 256000, SOFT: 262144}


def tiny_tokenizer():
    """A word-level stand-in for Gemma's tokenizer that knows the image tokens at their real ids."""
    from tokenizers import AddedToken, Regex, Tokenizer, models, pre_tokenizers

    vocab = {**SPECIAL, **{w: 10 + i for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"\n\n| |\w+|[^\w\s]"), behavior="isolated")
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL])
    return tok


def write_small_gemma3(folder, **text):
    """`small_gemma3` saved in the real HF layout with a tokenizer that knows the image tokens; returns it."""
    ref = small_gemma3(**text)
    ref.save_pretrained(folder)
    tiny_tokenizer().save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<bos>"}))
    return ref
