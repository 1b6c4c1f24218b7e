"""Open an image from a path, bytes or a PIL image into a loaded, upright RGB `PIL.Image`.

Pure functions over Pillow. Every failure (missing file, corrupt or truncated data, an image too large
to decode safely) is an `InputError` that names the input, so callers never see a Pillow exception.
"""
from __future__ import annotations

import io
import os
import warnings

import numpy as np
from PIL import Image, ImageOps

from ..decoder.errors import InputError

# Images above this many pixels are refused before decoding: 20000 x 20000 RGB would need 1.2 GB just to
# decode, only to be resized to 896 x 896. 64 Mpx still admits every phone camera and 8K frames.
MAX_IMAGE_PIXELS = 64_000_000

def describe_input(image) -> str:
    """A short, human name for an image input, for error messages."""
    if isinstance(image, (str, os.PathLike)):
        return repr(os.fspath(image))
    if isinstance(image, (bytes, bytearray, memoryview)):
        return f"<{len(image)} bytes of image data>"
    if isinstance(image, Image.Image):
        return f"<PIL.Image mode={image.mode} size={image.width}x{image.height}>"
    return f"<{type(image).__name__}>"


def open_image(image) -> Image.Image:
    """Path, bytes or PIL image → a fully loaded RGB image with its EXIF orientation applied."""
    name = describe_input(image)
    if isinstance(image, Image.Image):
        img = image
    elif isinstance(image, (str, os.PathLike)):
        if not os.path.isfile(image):
            raise InputError(f"image {name} does not exist or is not a file")
        if os.path.getsize(image) == 0:
            raise InputError(f"image {name} is an empty (zero-byte) file")
        img = _pil_open(image, name)
    elif isinstance(image, (bytes, bytearray, memoryview)):
        if len(image) == 0:
            raise InputError("image data is empty (zero bytes)")
        img = _pil_open(io.BytesIO(bytes(image)), name)
    else:
        raise InputError(
            f"unsupported image input {name}: pass a file path, the file's bytes or a PIL.Image.Image"
        )

    _check_size(img, name)
    try:
        img.load()  # truncated files fail here, not at open()
        img = ImageOps.exif_transpose(img)
        return to_rgb(img)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise InputError(f"image {name} cannot be decoded ({e}); the file is corrupt or truncated") from e


def _pil_open(fp, name: str) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # We enforce our own pixel limit in _check_size; Pillow's warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(fp)
    except Image.DecompressionBombError as e:
        raise InputError(f"image {name} is too large to decode safely ({e}); downscale it first") from e
    except (OSError, ValueError, SyntaxError) as e:  # UnidentifiedImageError is an OSError
        raise InputError(f"image {name} is not a readable image ({e})") from e


def _check_size(img: Image.Image, name: str) -> None:
    w, h = img.size
    if w <= 0 or h <= 0:
        raise InputError(f"image {name} has no pixels ({w}x{h})")
    if w * h > MAX_IMAGE_PIXELS:
        raise InputError(
            f"image {name} is too large: {w}x{h} = {w * h / 1e6:.0f} megapixels, over the "
            f"{MAX_IMAGE_PIXELS / 1e6:.0f} Mpx limit; downscale it first"
        )


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode → RGB. Transparency is composited onto white (as transformers' `convert_to_rgb`);
    16-bit and float images are scaled to 8 bits instead of clipped."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        img = Image.fromarray(_high_depth_to_uint8(np.asarray(img)), mode="L")
    if "A" in img.getbands() or img.info.get("transparency") is not None:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _high_depth_to_uint8(a: np.ndarray) -> np.ndarray:
    """16-bit integer or float pixels → uint8. Pillow's own convert clips 16-bit values at 255 (all white)."""
    if a.dtype.kind == "f":
        a = np.nan_to_num(a.astype(np.float64))
        scale = 255.0 if a.max(initial=0.0) <= 1.0 else 1.0  # float images are usually in [0, 1]
        return np.clip(np.rint(a * scale), 0, 255).astype(np.uint8)
    a = a.astype(np.int64)
    if a.max(initial=0) > 255:  # a 16-bit range: keep the high byte, rounding
        return np.clip((a + 128) // 257, 0, 255).astype(np.uint8)
    return np.clip(a, 0, 255).astype(np.uint8)
