"""Image fusion into our Gemma 3 decoder vs transformers' Gemma3ForConditionalGeneration: logits for a
prompt with two images, one pan-and-scanned, on the same random weights."""
import pytest
import torch

from mmsdk.decoder.errors import InputError
from mmsdk.decoder.kv_cache import make_cache
from mmsdk.decoder.loader import load_text
from mmsdk.encoders.fusion import (BOI, EOI, SOFT, build_prompt, expand_image_markers, image_config_for,
                                   image_groups, image_sequence)
from mmsdk.encoders.gemma3_vision import load_gemma3_vision
from mmsdk.encoders.image_preprocess import preprocess
from vision_fixtures import noise_image, write_small_gemma3


@pytest.fixture(scope="module")
def models_pair(tmp_path_factory):
    # sliding_window (32) spans more than one view's 16 soft tokens, as in every real Gemma 3 (1024 vs 256).
    folder = tmp_path_factory.mktemp("gemma3_small")
    ref = write_small_gemma3(folder, sliding_window=32)
    loaded = load_text(folder)
    tower = load_gemma3_vision(loaded.extra_tensors, loaded.hf_config)
    return ref, loaded, tower


def our_logits(model, prompt) -> torch.Tensor:
    caches = make_cache(model.config)
    positions = torch.arange(prompt.embeds.shape[1])
    with torch.no_grad():
        return model.logits(model(None, caches, positions, embeds=prompt.embeds, groups=prompt.groups))


@pytest.mark.slow
def test_two_images_one_pan_and_scanned_match_transformers(models_pair):
    ref, loaded, tower = models_pair
    text = f"Describe these two images. First: {BOI} second: {BOI}"
    images = [noise_image(300, 900, seed=1), noise_image(400, 400, seed=2)]  # 3:1 → 3 crops; square → none
    prompt = build_prompt(text, images, model=loaded.model, tokenizer=loaded.tokenizer, tower=tower)
    assert prompt.num_crops == [3, 0]
    ids = torch.tensor([prompt.ids])
    assert (ids == 262144).sum() == 5 * 16 and int(prompt.groups.max()) == 4
    pixels = preprocess(images, image_config_for(tower)).pixel_values
    with torch.no_grad():
        expected = ref(input_ids=ids, pixel_values=pixels, token_type_ids=(ids == 262144).long()).logits
    ours = our_logits(loaded.model, prompt)
    assert ours.shape == expected.shape
    assert (ours - expected).abs().max().item() <= 1e-4


def test_marker_count_mismatch_names_both_counts(models_pair):
    _, loaded, tower = models_pair
    with pytest.raises(InputError, match=r"1 image marker\(s\).* but 2 image\(s\)"):
        build_prompt(f"one {BOI}", [noise_image(64, 64), noise_image(64, 64)], model=loaded.model,
                     tokenizer=loaded.tokenizer, tower=tower)
    with pytest.raises(InputError, match=r"2 image marker\(s\).* but 1 image\(s\)"):
        expand_image_markers(f"{BOI}{BOI}", [0])


def test_expansion_matches_gemma3_processor_text():
    view = image_sequence(2)
    assert view == f"\n\n{BOI}{SOFT}{SOFT}{EOI}\n\n"
    assert expand_image_markers(f"a{BOI}b", [0], 2) == f"a{view}b"
    assert expand_image_markers(f"a{BOI}b", [2], 2) == (
        f"aHere is the original image {view} and here are some crops to help you see better {view} {view}b")


def test_groups_number_each_run_of_soft_tokens():
    ids = torch.tensor([2, 5, 9, 9, 6, 9, 9, 9, 6, 7])
    assert image_groups(ids, 9).tolist() == [-1, -1, 0, 0, -1, 1, 1, 1, -1, -1]
