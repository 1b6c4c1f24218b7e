"""Our Gemma 3n decoder against transformers' on the same random weights, float32."""
import pytest
import torch

from gemma3n_fixtures import TEXT, hf_full_model, hf_text_model, save
from mmsdk.decoder.gemma3n import Gemma3nText
from mmsdk.decoder.kv_cache import SharedCache, make_cache
from mmsdk.decoder.loader import load_text

TOL = 1e-4
PLE_VOCAB = TEXT["vocab_size_per_layer_input"]


@pytest.fixture(scope="module")
def text_pair(tmp_path_factory):
    ref = hf_text_model(seed=0)
    return ref, load_text(save(ref, tmp_path_factory.mktemp("g3n_text"))).model


@pytest.fixture(scope="module")
def full_pair(tmp_path_factory):
    ref = hf_full_model(seed=1)
    return ref, load_text(save(ref, tmp_path_factory.mktemp("g3n_full")))


def _ids(n, seed, high=PLE_VOCAB):
    return torch.randint(3, high, (1, n), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _compare(ref, model, prompt, steps, *, embeds_fn=None):
    """Max |logit diff| over a prefill longer than the window and `steps` cached decode steps."""
    from transformers import DynamicCache

    cache, caches = DynamicCache(config=ref.config.get_text_config()), make_cache(model.config)
    r = ref(input_ids=prompt, past_key_values=cache, use_cache=True)
    embeds = embeds_fn(prompt) if embeds_fn else None
    T = prompt.shape[1]
    diffs = [(model.logits(model(prompt, caches, torch.arange(T), embeds=embeds)) - r.logits).abs().max().item()]
    for s in range(steps):
        tok = _ids(1, 100 + s)
        r = ref(input_ids=tok, past_key_values=r.past_key_values, use_cache=True)
        diffs.append((model.logits(model(tok, caches, torch.tensor([T + s]))) - r.logits).abs().max().item())
    return diffs


def test_text_model_parity(text_pair):
    ref, model = text_pair
    assert isinstance(model, Gemma3nText)
    diffs = _compare(ref, model, _ids(13, 1), steps=6)  # window 4: rings wrap, shared layers reuse them
    assert max(diffs) <= TOL, diffs


def test_full_model_text_path_parity(full_pair):
    ref, loaded = full_pair
    diffs = _compare(ref, loaded.model, _ids(11, 2), steps=4)
    assert max(diffs) <= TOL, diffs


def test_multimodal_ids_read_the_pad_ple_row(full_pair):
    """Ids past the PLE table (the vision/audio vocabularies) are embedded by the caller (`embeds`)
    and read PLE row 0, as transformers' full model does."""
    ref, loaded = full_pair
    lm = ref.model

    def embeds_fn(ids):
        e = lm.language_model.embed_tokens(ids)
        vision = (ids >= PLE_VOCAB) & (ids < PLE_VOCAB + 64)
        return torch.where(vision[..., None], lm.embed_vision(input_ids=torch.where(vision, ids, PLE_VOCAB)), e)

    prompt = _ids(9, 3)
    prompt[0, 3:6] = torch.tensor([PLE_VOCAB, PLE_VOCAB + 5, PLE_VOCAB + 63])
    diffs = _compare(ref, loaded.model, prompt, steps=2, embeds_fn=embeds_fn)
    assert max(diffs) <= TOL, diffs


@torch.no_grad()
def test_cached_decode_equals_uncached_batch_of_two(text_pair):
    _, model = text_pair
    ids = torch.cat([_ids(12, 4), _ids(12, 5)])
    full = model.logits(model(ids, make_cache(model.config, batch=2), torch.arange(12)))
    caches = make_cache(model.config, batch=2)
    model(ids[:, :5], caches, torch.arange(5))
    steps = [model.logits(model(ids[:, t:t + 1], caches, torch.tensor([t]))) for t in range(5, 12)]
    assert (torch.cat(steps, 1) - full[:, 5:]).abs().max() <= TOL
    assert full.shape == (2, 12, TEXT["vocab_size"]) and full.dtype == torch.float32
    assert full.argmax(-1)[:, 5:].tolist() == torch.cat(steps, 1).argmax(-1).tolist()


def test_kv_shared_layers_hold_no_cache(text_pair):
    _, model = text_pair
    caches = make_cache(model.config)
    shared = [i for i, c in enumerate(caches) if isinstance(c, SharedCache)]
    assert shared == list(range(5, 10))
    assert [caches[i].source for i in shared] == [3, 3, 3, 3, 4]  # last sliding / global layer before the tail
    assert not hasattr(model.layers[7].attn, "k_proj")


def test_bfloat16_runs(full_pair, tmp_path):
    ref, _ = full_pair
    model = load_text(save(ref, tmp_path), dtype=torch.bfloat16).model
    with torch.no_grad():
        logits = model.logits(model(_ids(6, 6), make_cache(model.config, dtype=torch.bfloat16), torch.arange(6)))
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()



def test_quantized_loads_stay_close_to_float(full_pair, tmp_path):
    """On English text the calibration did not see: int8 (rotated 8-bit inputs into o/down) keeps
    float's top token; int4 through the loader (GPTQ, calibrated by running Gemma 3n itself) is
    far closer to float than rounding to nearest."""
    import copy

    from mmsdk.decoder.gptq import CALIBRATION_TOKENS, calibration_text
    from mmsdk.decoder.quant_plan import int4_bits
    from mmsdk.decoder.quantize import Int4Linear, quantize_

    ref, loaded = full_pair
    folder = save(ref, tmp_path)
    held_out = loaded.tokenizer.encode(calibration_text(), add_bos=False)[CALIBRATION_TOKENS:][:32]
    ids = torch.tensor([[loaded.tokenizer.bos_id, *held_out]])

    def logits(model):
        with torch.inference_mode():
            return model.logits(model(ids, make_cache(model.config), torch.arange(ids.shape[1])))[0].float()

    def err(out):
        return float((out - base).norm() / base.norm())

    base = logits(loaded.model)
    int8 = logits(load_text(folder, quantize="int8").model)
    assert float((int8.argmax(-1) == base.argmax(-1)).float().mean()) >= 0.9
    gptq_model = load_text(folder, quantize="int4").model
    assert any(isinstance(m, Int4Linear) for m in gptq_model.modules())
    n_layers = loaded.model.config.num_hidden_layers
    rtn = logits(quantize_(copy.deepcopy(loaded.model), lambda name, m: int4_bits(name, n_layers), 32))  # the same mix
    gptq = logits(gptq_model)
    assert torch.isfinite(gptq).all()
    assert err(gptq) < 0.5 * err(rtn), (err(gptq), err(rtn))
