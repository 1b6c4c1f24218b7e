"""Our Gemma 3 decoder against transformers' on the same weights."""
import pytest
import torch

from _tiny import write_tiny_gemma3
from mmsdk.decoder.generate import generate_step
from mmsdk.decoder.kv_cache import make_cache
from mmsdk.decoder.loader import load_text
from mmsdk.decoder.sampling import make_sampler


# heads of 32 take the C prompt path (`native.qkv_heads`, `native.attend_rows`) where it runs; 16, torch's ops
@pytest.fixture(scope="module", params=[16, 32], ids=["head16", "head32"])
def tiny(tmp_path_factory, request):
    folder = tmp_path_factory.mktemp("tiny-gemma3")
    ref = write_tiny_gemma3(folder, head_dim=request.param, query_pre_attn_scalar=request.param)
    return ref, load_text(folder)


def ours_logits(model, ids, chunk=None):
    caches = make_cache(model.config)
    chunk = chunk or len(ids)
    out = []
    with torch.no_grad():
        for s in range(0, len(ids), chunk):
            part = ids[s:s + chunk]
            out.append(model.logits(model(torch.tensor([part]), caches, torch.arange(s, s + len(part)))))
    return torch.cat(out, 1)[0]


@pytest.mark.parametrize("n", [5, 40, 100])  # 40 and 100 cross the sliding window of 8
def test_logits_match_transformers(tiny, n):
    ref, loaded = tiny
    ids = torch.randint(0, ref.config.vocab_size, (n,), generator=torch.Generator().manual_seed(n)).tolist()
    with torch.no_grad():
        expected = ref(torch.tensor([ids])).logits[0]
    got = ours_logits(loaded.model, ids)
    assert (got - expected).abs().max().item() < 1e-4
    chunked = ours_logits(loaded.model, ids, chunk=7)  # chunks shorter than the window, crossing it
    assert (chunked - expected).abs().max().item() < 1e-4


def test_cached_decoding_equals_uncached(tiny):
    _, loaded = tiny
    model = loaded.model
    prompt = [2, 50, 60, 70, 80, 90]
    steps = generate_step(model, prompt, make_cache(model.config), make_sampler())
    cached = [next(steps) for _ in range(30)]
    uncached, ids = [], list(prompt)
    for _ in range(30):  # recompute the whole sequence from scratch each step
        tok = int(ours_logits(model, ids)[-1].argmax())
        uncached.append(tok)
        ids.append(tok)
    assert cached == uncached


def test_batch_of_two_matches_single(tiny):
    _, loaded = tiny
    model = loaded.model
    a, b = [2, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21], [2, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41]
    with torch.no_grad():
        batch = model.logits(model(torch.tensor([a, b]), make_cache(model.config, batch=2), torch.arange(len(a))))
    assert batch.shape == (2, len(a), model.config.vocab_size) and batch.dtype == torch.float32
    assert torch.allclose(batch[0], ours_logits(model, a), atol=1e-5)
    assert torch.allclose(batch[1], ours_logits(model, b), atol=1e-5)


def test_ring_cache_memory_is_flat(tiny):
    _, loaded = tiny
    model = loaded.model
    caches = make_cache(model.config)
    with torch.no_grad():
        model(torch.tensor([list(range(3, 103))]), caches, torch.arange(100))
    ring = [c for c, t in zip(caches, model.config.layer_types) if t == "sliding_attention"]
    full = [c for c, t in zip(caches, model.config.layer_types) if t == "full_attention"]
    assert all(c.k.shape[2] == model.config.sliding_window for c in ring)
    assert all(c.k.shape[2] >= 100 for c in full)



def test_bfloat16_decodes_one_token_at_a_time_like_a_whole_prompt(tmp_path):
    """bfloat16 weights and caches: a decoded row takes the two-matmul attention path, whose mask
    follows the model's dtype; its logits match the same position run as part of a prompt."""
    write_tiny_gemma3(tmp_path)
    model = load_text(tmp_path, dtype=torch.bfloat16).model
    ids = [2, 50, 60, 70, 80, 90, 100, 110, 120, 130, 140, 150]  # past the window of 8
    caches = make_cache(model.config, dtype=torch.bfloat16)
    with torch.no_grad():
        whole = model.logits(model(torch.tensor([ids]), make_cache(model.config, dtype=torch.bfloat16),
                                   torch.arange(len(ids))))[0]
        model(torch.tensor([ids[:-1]]), caches, torch.arange(len(ids) - 1))
        last = model.logits(model(torch.tensor([ids[-1:]]), caches, torch.tensor([len(ids) - 1])))[0, -1]
    assert last.dtype == torch.bfloat16
    assert (last.float() - whole[-1].float()).abs().max() < 0.05 * whole[-1].float().abs().max()
    assert last.argmax() == whole[-1].argmax()
