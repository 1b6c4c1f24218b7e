"""Image preprocessing for Gemma 3 (SigLIP, 896 px, pan-and-scan) and Gemma 3n (MobileNet-V5, 768 px).

Pure functions, no `nn`: open → RGB → (pan-and-scan crops) → resize → rescale → normalize. The numbers
match transformers' `Gemma3ImageProcessor` (torchvision backend) exactly: resizing is torch's antialiased
bilinear kernel on uint8, which is what torchvision runs; Pillow's own resize differs by one grey level.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .hf_config import hf_fields
from .image_io import open_image

# PIL resample codes, as stored in preprocessor_config.json, → torch interpolate modes.
_RESAMPLE = {2: "bilinear", 3: "bicubic"}

# Keys of a preprocessor_config.json that carry no preprocessing behaviour for us.
_IGNORED_HF_KEYS = frozenset({
    "image_processor_type", "processor_class", "image_seq_length", "do_convert_rgb", "data_format",
    "default_to_square", "input_data_format", "return_tensors", "device", "disable_grouping",
})


@dataclass(frozen=True)
class ImageProcessorConfig:
    """Field names are those of Hugging Face's preprocessor_config.json."""

    size: dict = field(default_factory=lambda: {"height": 896, "width": 896})
    resample: int = 2  # PIL.Image.BILINEAR
    do_resize: bool = True
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    image_std: tuple[float, ...] = (0.5, 0.5, 0.5)
    # Pan-and-scan is ON by default (Gemma 3's own processor leaves it off): wide or tall images keep detail.
    do_pan_and_scan: bool = True
    pan_and_scan_min_crop_size: int = 256
    pan_and_scan_max_num_crops: int = 4
    pan_and_scan_min_ratio_to_activate: float = 1.2

    @classmethod
    def from_hf(cls, d: dict) -> "ImageProcessorConfig":
        """From a preprocessor_config.json dict. A null field keeps our default; unknown keys warn."""
        kwargs = hf_fields(cls, d, _IGNORED_HF_KEYS)
        for k in ("image_mean", "image_std"):
            if k in kwargs:
                kwargs[k] = tuple(kwargs[k]) if isinstance(kwargs[k], (list, tuple)) else (kwargs[k],) * 3
        return cls(**kwargs)

    @property
    def height(self) -> int:
        return int(self.size["height"])

    @property
    def width(self) -> int:
        return int(self.size["width"])


GEMMA3_IMAGE = ImageProcessorConfig()
# Gemma 3n's processor (SiglipImageProcessor at 768 px): rescale to [0, 1], no normalization, no crops.
GEMMA3N_IMAGE = ImageProcessorConfig(size={"height": 768, "width": 768}, do_normalize=False, do_pan_and_scan=False)


@dataclass
class ImageBatch:
    """`pixel_values` (N, 3, H, W) float32 holds, per input image, the whole image then its crops;
    `num_crops[i]` is how many crops image i contributed (0 when pan-and-scan did not apply)."""

    pixel_values: torch.Tensor
    num_crops: list[int]

    @property
    def views_per_image(self) -> list[int]:
        return [1 + n for n in self.num_crops]


# ---- pan-and-scan ------------------------------------------------------------------------------------

def pan_and_scan_boxes(
    height: int,
    width: int,
    *,
    min_crop_size: int = 256,
    max_num_crops: int = 4,
    min_ratio_to_activate: float = 1.2,
) -> list[tuple[int, int, int, int]]:
    """Gemma 3's pan-and-scan: crop boxes (top, left, h, w) along the long side of a wide or tall image,
    or [] when the image is close enough to square or the crops would be smaller than `min_crop_size`."""
    long_side, short_side = max(width, height), min(width, height)
    if long_side / short_side < min_ratio_to_activate:
        return []
    # As many crops as the aspect ratio rounded half up, each at least min_crop_size, clamped to [2, max].
    n = int(math.floor(long_side / short_side + 0.5))
    n = min(int(math.floor(long_side / min_crop_size)), n)
    n = min(max_num_crops, max(2, n))
    n_w, n_h = (n, 1) if width >= height else (1, n)

    crop_w, crop_h = int(math.ceil(width / n_w)), int(math.ceil(height / n_h))
    if min(crop_w, crop_h) < min_crop_size:
        return []
    # The last crop may run past the edge; like transformers we slice, so it comes out narrower.
    return [
        (top, left, min(crop_h, height - top), min(crop_w, width - left))
        for top, left in itertools.product(range(0, crop_h * n_h, crop_h), range(0, crop_w * n_w, crop_w))
    ]


# ---- tensor steps --------------------------------------------------------------------------------------

def pil_to_uint8(img) -> torch.Tensor:
    """RGB PIL image → (3, H, W) uint8 tensor."""
    return torch.from_numpy(np.array(img, dtype=np.uint8, copy=True)).permute(2, 0, 1).contiguous()


def resize(x: torch.Tensor, height: int, width: int, resample: int = 2) -> torch.Tensor:
    """(3, h, w) uint8 → (3, height, width) uint8, antialiased like Pillow and torchvision."""
    if resample not in _RESAMPLE:
        raise ValueError(f"resample={resample} is not supported; use 2 (bilinear) or 3 (bicubic)")
    out = F.interpolate(x[None], size=(height, width), mode=_RESAMPLE[resample], antialias=True, align_corners=False)
    return out[0]


def rescale_and_normalize(x: torch.Tensor, config: ImageProcessorConfig) -> torch.Tensor:
    """uint8 → float32. Rescale and normalize are fused as transformers does: (x - mean/r) / (std/r)."""
    x = x.to(torch.float32)
    if config.do_rescale and config.do_normalize:
        mean = torch.tensor(config.image_mean) * (1.0 / config.rescale_factor)
        std = torch.tensor(config.image_std) * (1.0 / config.rescale_factor)
        return (x - mean[:, None, None]) / std[:, None, None]
    if config.do_normalize:
        return (x - torch.tensor(config.image_mean)[:, None, None]) / torch.tensor(config.image_std)[:, None, None]
    if config.do_rescale:
        return x * config.rescale_factor
    return x


def image_views(x: torch.Tensor, config: ImageProcessorConfig, pan_and_scan: bool) -> list[torch.Tensor]:
    """(3, H, W) uint8 → [whole image, crop 1, ...], each still uint8 and at its own size."""
    views = [x]
    if pan_and_scan:
        boxes = pan_and_scan_boxes(
            x.shape[1], x.shape[2],
            min_crop_size=config.pan_and_scan_min_crop_size,
            max_num_crops=config.pan_and_scan_max_num_crops,
            min_ratio_to_activate=config.pan_and_scan_min_ratio_to_activate,
        )
        views += [x[:, t:t + h, l:l + w] for t, l, h, w in boxes]
    return views


# ---- the whole pipeline -------------------------------------------------------------------------------

def preprocess(images, config: ImageProcessorConfig = GEMMA3_IMAGE, *, pan_and_scan: bool | None = None) -> ImageBatch:
    """One image or a list (paths, bytes, PIL images) → `ImageBatch` ready for the vision encoder.

    `pan_and_scan=None` follows `config.do_pan_and_scan` (on for Gemma 3). Unreadable images raise
    `InputError` naming the input."""
    if not isinstance(images, (list, tuple)):
        images = [images]
    pan_and_scan = config.do_pan_and_scan if pan_and_scan is None else pan_and_scan
    pixel_values, num_crops = [], []
    for image in images:
        views = image_views(pil_to_uint8(open_image(image)), config, pan_and_scan)
        num_crops.append(len(views) - 1)
        for v in views:
            if config.do_resize:
                v = resize(v, config.height, config.width, config.resample)
            pixel_values.append(rescale_and_normalize(v, config))
    return ImageBatch(torch.stack(pixel_values), num_crops)
