"""Gemma 3n checkpoints and offload through `mmsdk.load`: the same greedy text as transformers."""
import pytest
import torch

import mmsdk
from gemma3n_fixtures import hf_text_model, save


pytestmark = pytest.mark.usefixtures("mmsdk_cache")


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    ref = hf_text_model(seed=5)
    return ref, save(ref, tmp_path_factory.mktemp("g3n_public"))


def reference_greedy(ref, asst, prompt, n):
    ids = torch.tensor([asst.tokenizer.encode(prompt)])
    with torch.no_grad():
        out = ref.generate(ids, max_new_tokens=n, do_sample=False, eos_token_id=None)[0, ids.shape[1]:]
    return asst.tokenizer.decode(out.tolist())


@pytest.mark.parametrize("offload,max_memory", [(None, None), ("ple", None), ("layers", 900_000)])
def test_generate_matches_transformers(pair, offload, max_memory):
    ref, folder = pair
    asst = mmsdk.load(folder, dtype="float32", offload=offload, max_memory=max_memory)
    assert asst.info.family == "gemma3n"
    prompt = "w5 w17 w99 w3 w250 w42 w7"
    assert asst.generate(prompt, max_tokens=8) == reference_greedy(ref, asst, prompt, 8)


def test_offload_layers_needs_a_budget_that_fits(pair):
    _, folder = pair
    with pytest.raises(ValueError, match="max_memory|budget"):
        mmsdk.load(folder, offload="layers", max_memory=10)
