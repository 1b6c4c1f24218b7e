"""Our Gemma 4 decoder against transformers' on the same random weights, float32.

The tolerance, 1e-4 on logits of magnitude ~3, is over what float32 rounding leaves here (<= 4e-5);
each Gemma 4 feature, broken alone, moves the logits 1000x more (full instead of proportional RoPE
0.11, one layer scale left at 1 0.17, a shared layer's window dropped 0.37, a PLE row zeroed 0.6).
"""
import pytest
import torch

from gemma4_fixtures import DENSE_LIKE, hf_full_model, hf_text_model, save
from mmsdk.decoder.gemma4 import Gemma4Text
from mmsdk.decoder.generate import generate_step
from mmsdk.decoder.kv_cache import FullCache, RingCache, SharedCache, make_cache
from mmsdk.decoder.loader import load_text
from mmsdk.decoder.sampling import make_sampler

TOL = 1e-4


def _pair(factory, tmp_path_factory, name, **kw):
    ref = factory(**kw)
    return ref, load_text(save(ref, tmp_path_factory.mktemp(name))).model


@pytest.fixture(scope="module")
def e2b_pair(tmp_path_factory):
    return _pair(hf_text_model, tmp_path_factory, "g4_text", seed=0)


def _ids(n, seed, high=512):
    return torch.randint(3, high, (1, n), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _compare(ref, model, prompt, steps):
    """Max |logit diff| over a prefill longer than the window, then `steps` cached decode steps."""
    from transformers import DynamicCache

    cache, caches = DynamicCache(config=ref.config.get_text_config()), make_cache(model.config)
    r = ref(input_ids=prompt, cache=cache, use_cache=True)
    T = prompt.shape[1]
    diffs = [(model.logits(model(prompt, caches, torch.arange(T))) - r.logits).abs().max().item()]
    for s in range(steps):
        tok = _ids(1, 100 + s)
        r = ref(input_ids=tok, cache=r.cache, use_cache=True)
        diffs.append((model.logits(model(tok, caches, torch.tensor([T + s]))) - r.logits).abs().max().item())
    return diffs


def test_e2b_like_parity_prefill_and_cached_decode(e2b_pair):
    ref, model = e2b_pair
    assert isinstance(model, Gemma4Text)
    diffs = _compare(ref, model, _ids(13, 1), steps=6)  # window 4: rings wrap, shared layers reuse them
    assert max(diffs) <= TOL, diffs


def test_multimodal_layout_text_path_parity(tmp_path_factory):
    """Gemma4ForConditionalGeneration's layout (decoder under model.language_model, towers beside)."""
    ref, model = _pair(hf_full_model, tmp_path_factory, "g4_full", seed=1)
    assert max(_compare(ref, model, _ids(11, 2), steps=4)) <= TOL


def test_dense_like_parity(tmp_path_factory):
    """The larger models' shape: no per-layer embeddings, no KV sharing, separate values."""
    ref, model = _pair(hf_text_model, tmp_path_factory, "g4_dense", text=DENSE_LIKE, seed=2)
    assert not hasattr(model, "ple") and all(l.attn.v_proj is not None for l in model.layers)
    assert max(_compare(ref, model, _ids(12, 3), steps=4)) <= TOL


@torch.no_grad()
def test_greedy_generation_equals_transformers_generate(e2b_pair):
    ref, model = e2b_pair
    prompt = _ids(7, 4)
    want = ref.generate(prompt, max_new_tokens=12, do_sample=False, eos_token_id=None)[0, 7:].tolist()
    steps = generate_step(model, prompt[0].tolist(), make_cache(model.config), make_sampler())
    assert [next(steps) for _ in range(12)] == want


def test_structure_follows_the_config(e2b_pair):
    """The last layer forced global; the tail shares the last earlier layer of its type; global
    layers cache wider heads with their own kv head count and have no value projection."""
    _, model = e2b_pair
    cfg = model.config
    assert cfg.layer_types[-1] == "full_attention"
    caches = make_cache(cfg)
    assert [type(c) for c in caches[:5]] == [RingCache, RingCache, RingCache, FullCache, RingCache]
    assert [c.source for c in caches[5:]] == [4, 4, 3]
    assert isinstance(caches[7], SharedCache) and caches[3].k.shape[1:] == (1, 0, 32)
    assert caches[0].k.shape[1:] == (2, 4, 16)
    assert model.layers[3].attn.v_proj is None and model.layers[4].attn.v_proj is not None
    assert not hasattr(model.layers[6].attn, "k_proj")
    assert model.layers[6].mlp.up_proj.out_features == 2 * model.layers[4].mlp.up_proj.out_features


@torch.no_grad()
def test_cached_decode_equals_uncached_batch_of_two(e2b_pair):
    _, model = e2b_pair
    ids = torch.cat([_ids(12, 5), _ids(12, 6)])
    full = model.logits(model(ids, make_cache(model.config, batch=2), torch.arange(12)))
    caches = make_cache(model.config, batch=2)
    model(ids[:, :5], caches, torch.arange(5))
    steps = [model.logits(model(ids[:, t:t + 1], caches, torch.tensor([t]))) for t in range(5, 12)]
    assert (torch.cat(steps, 1) - full[:, 5:]).abs().max() <= TOL
