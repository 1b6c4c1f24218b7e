"""Continuous batching (decoder/batch.py): sequences of different lengths decoded one pass for all,
against each decoded alone; and the batcher's rounds of threads, as the server runs them."""
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from mmsdk.decoder.batch import StepBatcher, batchable, batched_step
from mmsdk.decoder.generate import generate_step
from mmsdk.decoder.kv_cache import make_cache
from mmsdk.decoder.prefill import prefill
from mmsdk.decoder.sampling import make_sampler
from test_native_kernels import needs_native, quantized_tiny_model, rel_err


@needs_native
@pytest.mark.parametrize("bits", [8, "q4_0"])
def test_a_batched_pass_is_each_sequences_own_step(bits):
    """Three sequences at 5, 11 and 30 tokens (the tiny model's rings hold 8: one not yet wrapped, two
    past it), 6 passes: logits and caches as each sequence's own one-token steps make them. Exactness
    is the design; 1e-6 only because two code paths are compared."""
    model = quantized_tiny_model(bits)
    gen = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, model.config.vocab_size, (n,), generator=gen).tolist() for n in (5, 11, 30)]
    with torch.inference_mode():
        batched = [make_cache(model.config) for _ in prompts]
        alone = [make_cache(model.config) for _ in prompts]
        for p, b, a in zip(prompts, batched, alone):
            prefill(model, p, b, 0)
            prefill(model, p, a, 0)
        assert all(batchable(model, c) for c in batched)
        positions = [len(p) for p in prompts]
        for _ in range(6):
            tokens = torch.randint(0, model.config.vocab_size, (3,), generator=gen).tolist()
            logits = batched_step(model, tokens, batched, positions)
            for i, (t, a) in enumerate(zip(tokens, alone)):
                ref = model.logits(model(torch.tensor([[t]]), a, torch.tensor([positions[i]])))[0, -1]
                assert rel_err(logits[i], ref) < 1e-6
            positions = [p + 1 for p in positions]
        for b, a in zip(batched, alone):
            for cb, ca in zip(b, a):
                assert cb.offset == ca.offset and rel_err(cb.k, ca.k) < 1e-6 and rel_err(cb.v, ca.v) < 1e-6


@needs_native
def test_the_batchers_rounds_give_each_stream_its_own_greedy_ids():
    """Three generations on threads, as the server's scheduler runs them: one batched pass a round
    while all three decode, and every stream's ids those of its generation alone. One stream starts
    a round late and one stops early, so rounds of 3, 2 and 1 threads all occur."""
    model = quantized_tiny_model("q4_0")
    gen = torch.Generator().manual_seed(4)
    prompts = [torch.randint(0, model.config.vocab_size, (n,), generator=gen).tolist() for n in (4, 9, 17)]
    lengths = [12, 6, 12]

    def alone(p, n):
        g = generate_step(model, p, make_cache(model.config), make_sampler())
        return [next(g) for _ in range(n)]

    expected = [alone(p, n) for p, n in zip(prompts, lengths)]
    batcher = StepBatcher(model)
    view = batcher.view()
    streams = [generate_step(view, p, make_cache(model.config), make_sampler()) for p in prompts]
    got = [[] for _ in prompts]

    def advance(i):
        with batcher.turn():
            got[i].append(next(streams[i]))

    with ThreadPoolExecutor(3) as pool:
        for r in range(13):
            live = [i for i in range(3) if len(got[i]) < lengths[i] and not (i == 2 and r == 0)]
            if not live:
                break
            batcher.round(len(live))
            for f in [pool.submit(advance, i) for i in live]:
                f.result()
    assert got == expected
    assert batcher.rows > batcher.passes > 0  # some passes served several streams


@needs_native
def test_logits_are_written_into_a_given_buffer():
    """`Gemma3Text.logits(h, out=)`, which batched steps read through a kept buffer: the logits of `h` in
    `out`, returned as a view of it, from an int8 head's kernel and from a soft-capped float head alike."""
    from test_quant_modules import tiny_model

    h = torch.randn(1, 3, 64, generator=torch.Generator().manual_seed(5))
    for model, cap in ((quantized_tiny_model(8), None), (tiny_model(), 30.0)):
        model.config.final_logit_softcapping = cap
        out = torch.empty(3, model.config.vocab_size)
        with torch.inference_mode():
            got, ref = model.logits(h, out=out), model.logits(h)
        assert got.shape == ref.shape == (1, 3, model.config.vocab_size) and got.data_ptr() == out.data_ptr()
        assert rel_err(got, ref) < 1e-6
