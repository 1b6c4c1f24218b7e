"""Preprocessing parity with transformers' Gemma3ImageProcessor (pan-and-scan on), image modes, EXIF."""
import io

import numpy as np
import pytest
import torch
from PIL import Image

from mmsdk.encoders.image_io import open_image
from mmsdk.encoders.image_preprocess import (GEMMA3_IMAGE, GEMMA3N_IMAGE, ImageProcessorConfig,
                                             pan_and_scan_boxes, preprocess)
from vision_fixtures import noise_image

PAS = dict(do_pan_and_scan=True, pan_and_scan_min_crop_size=256, pan_and_scan_max_num_crops=4,
           pan_and_scan_min_ratio_to_activate=1.2)


@pytest.fixture(scope="module")
def hf_processor():
    from transformers import Gemma3ImageProcessor

    return Gemma3ImageProcessor(size={"height": 896, "width": 896}, **PAS)


@pytest.mark.parametrize("name,height,width,crops", [
    ("square", 700, 700, 0), ("wide 3:1", 400, 1200, 3), ("tall", 1500, 500, 3),
    ("very wide", 300, 2000, 4), ("mild 1.4:1", 500, 700, 2), ("odd size", 1001, 333, 3),
])
def test_pixels_match_transformers(hf_processor, name, height, width, crops):
    image = noise_image(height, width, seed=height)
    ref = hf_processor(images=image, return_tensors="pt")
    ours = preprocess(image)
    assert ours.num_crops == ref["num_crops"].tolist() == [crops]
    assert ours.pixel_values.shape == ref["pixel_values"].shape == (1 + crops, 3, 896, 896)
    assert ours.pixel_values.dtype == torch.float32
    assert (ours.pixel_values - ref["pixel_values"]).abs().max().item() <= 1e-5


def test_several_images_match_transformers(hf_processor):
    images = [noise_image(400, 1200, 1), noise_image(640, 480, 2), noise_image(1300, 600, 3)]
    ref = hf_processor(images=images, return_tensors="pt")
    ours = preprocess(images)
    assert ours.num_crops == ref["num_crops"].tolist()
    assert (ours.pixel_values - ref["pixel_values"]).abs().max().item() <= 1e-5


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "L", "1", "CMYK"])
def test_modes_match_transformers(hf_processor, mode):
    image = noise_image(300, 400, seed=7, mode=mode)
    if mode in ("RGBA", "LA"):  # some transparent pixels: composited onto white by both
        alpha = Image.fromarray(np.tile(np.linspace(0, 255, 400, dtype=np.uint8), (300, 1)))
        image.putalpha(alpha)
    ref = hf_processor(images=image, return_tensors="pt")
    assert (preprocess(image).pixel_values - ref["pixel_values"]).abs().max().item() <= 1e-5


def test_sixteen_bit_grey_is_scaled_not_clipped():
    ramp = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (16, 1))
    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, format="PNG")  # opens as mode I;16 (or I)
    rgb = np.asarray(open_image(buf.getvalue()))
    assert rgb.shape == (16, 256, 3)
    assert rgb[0, 0, 0] == 0 and rgb[0, -1, 0] == 255 and 120 < rgb[0, 128, 0] < 136


def test_exif_orientation_is_applied():
    image = noise_image(100, 200)  # landscape pixels ...
    exif = Image.Exif()
    exif[0x0112] = 6  # ... that the camera says to show rotated 90 degrees clockwise
    buf = io.BytesIO()
    image.save(buf, format="JPEG", exif=exif)
    assert open_image(buf.getvalue()).size == (100, 200)


def test_pan_and_scan_rules():
    assert pan_and_scan_boxes(896, 896) == []
    assert pan_and_scan_boxes(500, 590) == []  # ratio 1.18 < 1.2
    assert len(pan_and_scan_boxes(500, 610)) == 2  # at least two crops once active
    assert len(pan_and_scan_boxes(300, 3000)) == 4  # at most max_num_crops
    assert pan_and_scan_boxes(200, 600) == []  # crops would be under 256 px
    assert pan_and_scan_boxes(1000, 300) == [(0, 0, 334, 300), (334, 0, 334, 300), (668, 0, 332, 300)]


def test_pan_and_scan_can_be_turned_off():
    out = preprocess(noise_image(400, 1200), pan_and_scan=False)
    assert out.num_crops == [0] and out.pixel_values.shape[0] == 1


def test_gemma3n_preset_is_768_in_unit_range():
    out = preprocess(noise_image(400, 1200))
    assert out.pixel_values.min() < -0.9  # Gemma 3: normalized to [-1, 1]
    out = preprocess(noise_image(400, 1200), GEMMA3N_IMAGE)
    assert out.pixel_values.shape == (1, 3, 768, 768) and out.num_crops == [0]
    assert 0.0 <= out.pixel_values.min() and out.pixel_values.max() <= 1.0


def test_config_from_hf_keeps_our_pan_and_scan_default_and_warns_on_unknown_keys():
    real = {  # google/gemma-3-4b-it preprocessor_config.json
        "do_convert_rgb": None, "do_normalize": True, "do_pan_and_scan": None, "do_rescale": True,
        "do_resize": True, "image_mean": [0.5, 0.5, 0.5], "image_processor_type": "Gemma3ImageProcessor",
        "image_seq_length": 256, "image_std": [0.5, 0.5, 0.5], "pan_and_scan_max_num_crops": None,
        "pan_and_scan_min_crop_size": None, "pan_and_scan_min_ratio_to_activate": None,
        "processor_class": "Gemma3Processor", "resample": 2, "rescale_factor": 0.00392156862745098,
        "size": {"height": 896, "width": 896},
    }
    assert ImageProcessorConfig.from_hf(real) == GEMMA3_IMAGE
    with pytest.warns(UserWarning, match="frobnicate"):
        ImageProcessorConfig.from_hf({**real, "frobnicate": 1})
