"""llama.cpp's multimodal projector file (`mmproj*.gguf`) for Gemma 3 → our `Gemma3VisionTower`.

The layout is what llama.cpp's `convert_hf_to_gguf.py --mmproj` (`Gemma3VisionModel`) writes and
`tools/mtmd/clip.cpp` reads: `general.architecture = "clip"`, `clip.projector_type = "gemma3"`, the SigLIP
sizes under `clip.vision.*`, and tensors `v.*` (SigLIP) and `mm.*` (Gemma 3's projector). Tensors keep
Hugging Face's shapes: the converter transposes nothing (clip.cpp transposes `mm.input_projection` at
run time), and only `mm.soft_emb_norm` is stored as (1 + w); SigLIP's LayerNorms are stored as they are.
"""
from __future__ import annotations

import os

import torch

from ..decoder.errors import ModelLoadError
from ..decoder.gguf_file import open_gguf, read_metadata, read_tensors
from ..decoder.weights import assign_strict, expand
from .gemma3_vision import Gemma3VisionConfig, Gemma3VisionTower
from .hf_config import empty_module
from .image_preprocess import ImageProcessorConfig
from .siglip import SiglipVisionConfig

SUPPORTED_PROJECTORS = ("gemma3",)
_DEFAULT_SCALE_FACTOR = 4  # clip.cpp's 4 x 4 pooling for gemma3; the converter writes the key only when it differs

# llama.cpp's mmproj names → ours (relative to `Gemma3VisionTower`).
GGUF_TO_NATIVE = {
    "v.patch_embd.weight": "encoder.patch_embed.weight",
    "v.patch_embd.bias": "encoder.patch_embed.bias",
    "v.position_embd.weight": "encoder.pos_embed.weight",
    "v.blk.{}.ln1.weight": "encoder.layers.{}.norm1.weight",
    "v.blk.{}.ln1.bias": "encoder.layers.{}.norm1.bias",
    "v.blk.{}.attn_q.weight": "encoder.layers.{}.attn.q_proj.weight",
    "v.blk.{}.attn_q.bias": "encoder.layers.{}.attn.q_proj.bias",
    "v.blk.{}.attn_k.weight": "encoder.layers.{}.attn.k_proj.weight",
    "v.blk.{}.attn_k.bias": "encoder.layers.{}.attn.k_proj.bias",
    "v.blk.{}.attn_v.weight": "encoder.layers.{}.attn.v_proj.weight",
    "v.blk.{}.attn_v.bias": "encoder.layers.{}.attn.v_proj.bias",
    "v.blk.{}.attn_out.weight": "encoder.layers.{}.attn.o_proj.weight",
    "v.blk.{}.attn_out.bias": "encoder.layers.{}.attn.o_proj.bias",
    "v.blk.{}.ln2.weight": "encoder.layers.{}.norm2.weight",
    "v.blk.{}.ln2.bias": "encoder.layers.{}.norm2.bias",
    "v.blk.{}.ffn_up.weight": "encoder.layers.{}.mlp.fc1.weight",
    "v.blk.{}.ffn_up.bias": "encoder.layers.{}.mlp.fc1.bias",
    "v.blk.{}.ffn_down.weight": "encoder.layers.{}.mlp.fc2.weight",
    "v.blk.{}.ffn_down.bias": "encoder.layers.{}.mlp.fc2.bias",
    "v.post_ln.weight": "encoder.post_norm.weight",
    "v.post_ln.bias": "encoder.post_norm.bias",
    # Ends in "norm.weight", so `read_tensors` undoes the converter's +1: we hold w of RMSNorm(1 + w).
    "mm.soft_emb_norm.weight": "projector.norm.weight",
    "mm.input_projection.weight": "projector.proj_weight",  # (vision, text), as HF stores it
}


def _require(meta: dict, key: str, path):
    if key not in meta:
        raise ModelLoadError(path, f"mmproj metadata lacks {key!r}")
    return meta[key]


def config_from_mmproj(meta: dict, path, **token_ids) -> Gemma3VisionConfig:
    """`Gemma3VisionConfig` from mmproj metadata. The file carries no token ids (llama.cpp takes them from
    the text model's vocabulary), so `boi_token_index`/`eoi_token_index`/`image_token_index` come from
    the caller, else Gemma 3's defaults."""
    arch = meta.get("general.architecture")
    if arch != "clip":
        raise ModelLoadError(path, f"not an mmproj file (general.architecture is {arch!r}, expected 'clip')")
    projector = meta.get("clip.projector_type") or meta.get("clip.vision.projector_type")
    if projector not in SUPPORTED_PROJECTORS:
        raise ModelLoadError(path, f"mmproj projector type {projector!r} is not supported "
                                   f"(supported: {', '.join(SUPPORTED_PROJECTORS)})")
    if not meta.get("clip.has_vision_encoder", False):
        raise ModelLoadError(path, "mmproj has no vision encoder (clip.has_vision_encoder is not set)")
    if meta.get("clip.use_silu"):
        raise ModelLoadError(path, "mmproj uses SiLU; Gemma 3's SigLIP uses GELU (clip.use_gelu)")
    v = "clip.vision."
    siglip = SiglipVisionConfig(
        hidden_size=int(_require(meta, v + "embedding_length", path)),
        intermediate_size=int(_require(meta, v + "feed_forward_length", path)),
        num_hidden_layers=int(_require(meta, v + "block_count", path)),
        num_attention_heads=int(_require(meta, v + "attention.head_count", path)),
        image_size=int(_require(meta, v + "image_size", path)),
        patch_size=int(_require(meta, v + "patch_size", path)),
        layer_norm_eps=float(meta.get(v + "attention.layer_norm_epsilon", 1e-6)),
        hidden_act="gelu_pytorch_tanh",  # ggml's GELU is the tanh approximation
    )
    scale = int(meta.get(v + "projector.scale_factor", _DEFAULT_SCALE_FACTOR))
    if scale <= 0 or siglip.patches_per_side % scale:
        raise ModelLoadError(path, f"projector scale factor {scale} does not tile "
                                   f"{siglip.patches_per_side}x{siglip.patches_per_side} patches")
    return Gemma3VisionConfig(vision_config=siglip, mm_tokens_per_image=(siglip.patches_per_side // scale) ** 2,
                              text_hidden_size=int(_require(meta, v + "projection_dim", path)), **token_ids)


def image_config_from_mmproj(meta: dict, cfg: Gemma3VisionConfig) -> ImageProcessorConfig:
    """Gemma 3's preprocessing at the tower's size, with the file's mean and std."""
    size = cfg.vision_config.image_size
    mean = tuple(float(x) for x in meta.get("clip.vision.image_mean", (0.5, 0.5, 0.5)))
    std = tuple(float(x) for x in meta.get("clip.vision.image_std", (0.5, 0.5, 0.5)))
    return ImageProcessorConfig(size={"height": size, "width": size}, image_mean=mean, image_std=std)


def load_mmproj(path: str | os.PathLike, *, dtype: torch.dtype = torch.float32,
                **token_ids) -> tuple[Gemma3VisionTower, ImageProcessorConfig]:
    """The vision tower and its image preprocessing from an mmproj GGUF. Strict: a missing or unexpected
    tensor, or one whose shape the metadata does not imply, is a `ModelLoadError` naming it."""
    reader = open_gguf(path)
    meta = read_metadata(reader)
    cfg = config_from_mmproj(meta, path, **token_ids)
    tower = empty_module(Gemma3VisionTower, cfg)
    assign_strict(tower, read_tensors(reader), expand(GGUF_TO_NATIVE, cfg.vision_config.num_hidden_layers),
                  path, dtype)
    return tower.eval(), image_config_from_mmproj(meta, cfg)
