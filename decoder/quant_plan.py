"""Bits per linear layer of a quantized load: what a GGUF file stores ("stored"), every layer at 8
bits ("int8"), or llama.cpp's Q4_K_M mix ("int4"). Shared by the Gemma 3 and Gemma 3n loaders."""
import re

import torch

from .gguf_file import EXACT_4BIT

# GGUF block types kept as int4 under "stored": those whose codes our 4-bit layout holds exactly
# (`EXACT_4BIT`). Other quantized types become int8: rounding IQ4_NL/IQ4_XS's codebooks or Q3_K/Q2_K's
# 16-wide sub-blocks to 4-bit groups of 32 cost +8.7-9.1% perplexity on the bundled model requantized
# (`tests/eval/eval_gguf_types.py`), 8 bits +0.1-0.3%. Float types stay float.
GGUF_4BIT = set(EXACT_4BIT)
GGUF_FLOAT = {"F32", "F16", "BF16", "F64"}


def plan_bits(model, mode: str, stored: dict | None = None) -> dict[str, int | None]:
    """Bits per linear layer: 8 for every one ("int8"), llama.cpp's Q4_K_M mix ("int4", see
    `int4_bits`), or what the file stores ("stored")."""
    layers = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    n_layers = 1 + max((int(i) for n in layers for i in re.findall(r"layers\.(\d+)\.", n)), default=0)
    plan = {}
    for name in layers:
        if mode == "stored":
            kind = (stored or {}).get(name + ".weight", "F32")
            plan[name] = None if kind in GGUF_FLOAT else 4 if kind in GGUF_4BIT else 8
        else:
            plan[name] = int4_bits(name, n_layers) if mode == "int4" else 8
    return plan


def int4_bits(name: str, n_layers: int) -> int:
    """int4 as llama.cpp's Q4_K_M mixes it: 4 bits, but 8 for q/k/v and for down_proj in the first
    and last eighth of the layers and every third between (llama.cpp's `use_more_bits`). On Gemma 3
    270M over 16k tokens: all 4-bit +4.8% perplexity, q/k/v at 8 bits +3.2%, this mix +2.4%, for
    14 MB more than all 4-bit."""
    kind = name.rsplit(".", 1)[-1]
    if kind in ("qkv_proj", "q_proj", "k_proj", "v_proj"):
        return 8
    layer = re.search(r"layers\.(\d+)\.", name)
    if kind == "down_proj" and layer:
        i, eighth = int(layer[1]), n_layers // 8
        if i < eighth or i >= 7 * n_layers // 8 or (i - eighth) % 3 == 2:
            return 8
    return 4
