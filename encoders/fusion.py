"""Gemma 3 image fusion: a prompt with image markers → token ids, input embeddings and attention groups.

(llama.cpp `mtmd_tokenize`, gemma_pytorch `populate_image_embeddings`.) Each `<start_of_image>` marker in
the prompt stands for one image. It is expanded exactly as transformers' `Gemma3Processor` does:
"\\n\\n<start_of_image>" + 256 × "<image_soft_token>" + "<end_of_image>\\n\\n" per view, and with
pan-and-scan "Here is the original image … and here are some crops to help you see better …" around the
whole image and its crops. The soft-token positions then receive the vision tower's outputs, and every
run of soft tokens is one attention group: bidirectional inside, causal to everything else.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..decoder.errors import InputError
from .gemma3_vision import Gemma3VisionTower
from .image_preprocess import ImageBatch, ImageProcessorConfig, preprocess
from .media_cache import EncodeCache, content_key

BOI, EOI, SOFT = "<start_of_image>", "<end_of_image>", "<image_soft_token>"
IMAGE_MARKER = BOI  # what Gemma 3's chat template writes where an image part stands


def image_sequence(tokens_per_image: int) -> str:
    """The text one view expands to (transformers' `Gemma3Processor.full_image_sequence`)."""
    return f"\n\n{BOI}{SOFT * tokens_per_image}{EOI}\n\n"


def check_marker_count(n_markers: int, n_images: int) -> None:
    if n_markers != n_images:
        raise InputError(f"the prompt has {n_markers} image marker(s) ({IMAGE_MARKER}) but {n_images} "
                         f"image(s) were given; put one marker where each image goes")


def expand_image_markers(text: str, num_crops: list[int], tokens_per_image: int = 256) -> str:
    """Replace the i-th image marker by image i's views; `num_crops[i]` crops follow its whole view."""
    parts = text.split(IMAGE_MARKER)
    check_marker_count(len(parts) - 1, len(num_crops))
    view = image_sequence(tokens_per_image)
    out = [parts[0]]
    for n, after in zip(num_crops, parts[1:]):
        if n:
            out.append(f"Here is the original image {view} and here are some crops to help you see better "
                       + " ".join([view] * n))
        else:
            out.append(view)
        out.append(after)
    return "".join(out)


def image_groups(ids: torch.Tensor, image_token_id: int) -> torch.Tensor:
    """(T,) ids → (T,) group index of each soft token's view (0, 1, …), -1 for text tokens.
    A group is a maximal run of soft tokens, as transformers' `get_block_sequence_ids_for_mask`."""
    is_image = ids == image_token_id
    starts = is_image & ~torch.cat([torch.zeros(1, dtype=torch.bool), is_image[:-1]])
    return torch.where(is_image, torch.cumsum(starts.long(), 0) - 1, -1)


def scatter(embeds: torch.Tensor, ids: torch.Tensor, features: torch.Tensor, token_id: int,
            what: str = "image") -> torch.Tensor:
    """Put (N, k, H) encoder features, in order, at the `token_id` positions of (1, T, H) `embeds`."""
    slots = ids == token_id
    n_slots, n_feats = int(slots.sum()), features.shape[0] * features.shape[1]
    if n_slots != n_feats:
        raise InputError(f"the prompt has {n_slots} {what} soft-token positions but the {what} encoder gives "
                         f"{n_feats} embeddings ({features.shape[0]} x {features.shape[1]})")
    out = embeds.clone()
    out[0, slots] = features.reshape(-1, features.shape[-1]).to(embeds.dtype)
    return out


@dataclass
class MultimodalPrompt:
    """What the decoder takes: `ids` (for the cache bookkeeping and repetition penalties), `embeds`
    (1, T, hidden) with the images in place, `groups` (T,) for the bidirectional image attention."""

    ids: list[int]
    embeds: torch.Tensor
    groups: torch.Tensor
    num_crops: list[int]


def image_config_for(tower: Gemma3VisionTower, preprocessor_config: dict | None = None) -> ImageProcessorConfig:
    """The checkpoint's preprocessor_config.json when there is one, else Gemma 3's defaults at the
    tower's input size."""
    if preprocessor_config:
        return ImageProcessorConfig.from_hf(preprocessor_config)
    size = tower.config.vision_config.image_size
    return ImageProcessorConfig(size={"height": size, "width": size})


@torch.inference_mode()
def encode_images(tower: Gemma3VisionTower, images, image_config: ImageProcessorConfig, *,
                  pan_and_scan: bool = True, cache: EncodeCache | None = None) -> tuple[torch.Tensor, ImageBatch]:
    """Images → (views, tokens, hidden) embeddings; all views (whole images and crops) in one batch.
    With a `cache`, an image whose views were encoded before is not encoded again."""
    batch = preprocess(images, image_config, pan_and_scan=pan_and_scan)
    dtype = next(tower.parameters()).dtype
    pixels = batch.pixel_values.to(dtype)
    if cache is None:
        return tower(pixels), batch
    per_image = list(pixels.split(batch.views_per_image))
    return torch.cat(cache.encode([content_key(p) for p in per_image], per_image, tower)), batch


@torch.inference_mode()
def build_prompt(text: str, images, *, model, tokenizer, tower: Gemma3VisionTower,
                 image_config: ImageProcessorConfig | None = None, pan_and_scan: bool = True,
                 add_bos: bool = True, cache: EncodeCache | None = None) -> MultimodalPrompt:
    """Prompt text with one `<start_of_image>` per image → `MultimodalPrompt` for the Gemma 3 decoder.

    `model` gives `embed_tokens(ids)` (scaled token embeddings); `tokenizer` gives `encode(text, add_bos)`
    and must know the image special tokens. The marker count is checked before any image is encoded."""
    images = list(images) if isinstance(images, (list, tuple)) else [images]
    check_marker_count(text.count(IMAGE_MARKER), len(images))
    cfg = tower.config
    soft_id = tokenizer.token_id(SOFT)
    if soft_id != cfg.image_token_index:
        raise InputError(f"the tokenizer maps {SOFT} to {soft_id}, the model expects {cfg.image_token_index}")
    image_config = image_config or image_config_for(tower)
    image_embeds, batch = encode_images(tower, images, image_config, pan_and_scan=pan_and_scan, cache=cache)

    ids = tokenizer.encode(expand_image_markers(text, batch.num_crops, cfg.mm_tokens_per_image), add_bos=add_bos)
    ids_t = torch.tensor(ids, dtype=torch.long)
    embeds = model.embed_tokens(ids_t[None])
    embeds = scatter(embeds, ids_t, image_embeds, cfg.image_token_index)
    return MultimodalPrompt(ids, embeds, image_groups(ids_t, cfg.image_token_index), batch.num_crops)
