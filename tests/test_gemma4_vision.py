"""Gemma 4's vision encoder against transformers': preprocessing at two soft-token budgets, the
tower with its embedder, and images through `mmsdk.load(...).chat` (prefill logits and greedy text),
on a tiny random checkpoint whose image tokens attend each other both ways on sliding layers."""
import numpy as np
import pytest
import torch
from PIL import Image

import mmsdk
from mmsdk import media
from mmsdk.chat_format_gemma4 import render_messages
from mmsdk.decoder.kv_cache import make_cache
from mmsdk.encoders.gemma4_vision import preprocess

pytestmark = pytest.mark.usefixtures("mmsdk_cache")


def _image(h, w, seed):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))



def _processor(budget):
    from transformers import Gemma4ImageProcessor

    return Gemma4ImageProcessor(patch_size=4, max_soft_tokens=budget, pooling_kernel_size=3)


@pytest.mark.parametrize("budget", [70, 140])
def test_preprocessing_and_tower_match_transformers(gemma4_media, budget):
    """Pixels within float32 division's rounding (6e-8 seen), positions and counts exact (integers);
    the soft tokens within 1e-5 (2e-6 seen), with linear layers whose clip ranges bite."""
    ref, asst = gemma4_media
    tower = asst.encoders.gemma4_vision
    images = [_image(50, 130, 0), _image(97, 61, 1)]  # wide and tall: aspect ratios kept
    want = _processor(budget)(images, return_tensors="pt")
    patches, positions, counts = preprocess(images, budget, tower.config)
    assert (patches - want["pixel_values"]).abs().max() <= 1e-6
    assert positions.tolist() == want["image_position_ids"].tolist()
    assert counts == want["num_soft_tokens_per_image"].tolist()
    with torch.no_grad():
        expected = torch.cat(ref.model.get_image_features(want["pixel_values"], want["image_position_ids"]).pooler_output)
        got = tower(patches, positions)
        assert got.shape == expected.shape and (got - expected).abs().max() <= 1e-5
        q = tower.encoder.layers[0].self_attn.q_proj
        q.clipped = False
        try:
            assert (tower(patches, positions) - expected).abs().max() > 1e-2  # so the clipping is checked
        finally:
            q.clipped = True


@pytest.mark.parametrize("budget", [70, 140])
def test_image_chat_matches_transformers(gemma4_media, budget):
    """The prompt expands the image as the processor does (one soft token per pooled block between
    <|image> and <image|>); prefill logits within 1e-4 (4e-5 seen; attending the image causally
    instead moves them by far more) and the greedy reply equal to transformers' generate."""
    ref, asst = gemma4_media
    image = _image(50, 130, 0)
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "w7 w8"}]}]
    p = media.encode_prompt(asst.model, asst.tokenizer, asst.encoders, *render_messages(messages), image_tokens=budget)
    pixels = _processor(budget)([image], return_tensors="pt")
    ids = torch.tensor([p.ids])
    n = int(pixels["num_soft_tokens_per_image"][0])
    start = p.ids.index(201)
    assert p.ids[start:start + n + 2] == [201, *[200] * n, 202]
    inputs = dict(pixel_values=pixels["pixel_values"], image_position_ids=pixels["image_position_ids"],
                  mm_token_type_ids=(ids == 200).long())
    with torch.no_grad():
        want = ref(input_ids=ids, **inputs).logits
        model = asst.model
        positions = torch.arange(ids.shape[1])
        got = model.logits(model(ids, make_cache(model.config), positions, embeds=p.embeds, groups=p.groups))
        causal = model.logits(model(ids, make_cache(model.config), positions, embeds=p.embeds))
        assert (got - want).abs().max() <= 1e-4 < (causal - want).abs().max()
        out = ref.generate(ids, **inputs, max_new_tokens=8, do_sample=False, eos_token_id=None)[0, ids.shape[1]:].tolist()
    cut = next((i for i, t in enumerate(out) if t in asst.tokenizer.eos_ids), len(out))
    assert asst.chat(messages, max_tokens=8, image_tokens=budget).text == asst.tokenizer.decode(out[:cut])


def test_reports_its_modalities_and_refuses_bad_budgets(gemma4_media):
    _, asst = gemma4_media
    assert asst.info.family == "gemma4" and asst.info.modalities == {"text", "image", "audio"}
    with pytest.raises(mmsdk.InputError, match="image_tokens must be one of"):
        asst.describe_image(_image(20, 20, 3), image_tokens=100)
