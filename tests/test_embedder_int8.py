"""The int8 embedder mmsdk indexes with (`mmsdk.embedder`): the bundled all-MiniLM-L6-v2 with its
linears swapped for int8 ones, against rag's plain float32 one on real text, and an index built
through it."""
import numpy as np
import pytest
import torch
from pydoc_data.topics import topics
from torch import nn

from mmsdk.decoder import native
from mmsdk.documents import DocumentIndex
from mmsdk.embedder import default_embedder
from mmsdk.encoders import accelerate
from mmsdk.encoders.accelerate import FusedQKVSelfAttention, Int8LinearBias
from mmsdk.rag.embedder import SentenceTransformerEmbedder

# Real passages of the RAG eval's corpus (CPython's own docs): ~200 word pieces each, as indexed.
TEXTS = [" ".join(topics[name].split()[:150]) for name in ("assert", "break", "formatstrings", "typesmapping",
                                                            "specialnames", "debugger", "execmodel", "slicings")]
TEXTS += ["How do I merge two dictionaries?", "pdb breakpoint"]


@pytest.fixture(scope="module")
def both():
    fast = default_embedder()
    return fast, SentenceTransformerEmbedder()


def test_int8_embedder_matches_float32(both):
    fast, plain = both
    got, want = fast(TEXTS), plain(TEXTS)
    # every linear of the six layers is int8 (q, k, v as one, attention out, two FFN, the first with
    # its GELU): the swap really ran, and nothing float32 is left in the layer stack
    layers = fast._model[0].auto_model.encoder
    assert sum(isinstance(m, Int8LinearBias) for m in layers.modules()) == 24
    assert sum(isinstance(m, FusedQKVSelfAttention) for m in layers.modules()) == 6
    assert sum(getattr(m, "gelu", False) for m in layers.modules()) == 6
    assert not any(type(m) is nn.Linear for m in layers.modules())
    assert not any(isinstance(m, Int8LinearBias) for m in plain._model.modules())
    cos = (got * want).sum(1)
    # 0.99 per text is the gate; measured min 0.994 over the eval's 822 chunks on AVX2 (7-bit
    # inputs). A lost bias, a wrong row offset or scale drops it below 0.9.
    assert cos.min() >= 0.99, cos
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # the ranking the index relies on holds: each question's nearest passage is the same in both
    assert (got[-2:] @ got[:-2].T).argmax(1).tolist() == (want[-2:] @ want[:-2].T).argmax(1).tolist()


def test_index_embeds_with_the_int8_embedder(tmp_path, both):
    fast, plain = both
    (tmp_path / "docs.md").write_text("# Python notes\n\n" + "\n\n".join(TEXTS[:4]))
    with DocumentIndex(tmp_path / "docs.db") as index:
        assert index.embedder is fast
        assert index.add(tmp_path / "docs.md") > 0
        stored = index._store.conn.execute("SELECT c.text FROM chunks c").fetchall()
        hit = index.search("What does an assert statement turn into?", k=1, mode="vector")[0]
    # an index built with the float32 embedder opens with the int8 one: the same name, vectors that compare
    assert fast.name == plain.name
    assert stored and "assert" in hit.text
    # the stored vector is the int8 one: the hit's cosine is the float32 one's within what int8 moves it
    want = (plain(["What does an assert statement turn into?"]) @ plain([f"Python notes\n{hit.text}"]).T)[0, 0]
    assert hit.similarity == pytest.approx(float(want), abs=0.02)


@pytest.mark.parametrize("zero_point", [False, True])
@pytest.mark.parametrize("gelu", [False, True])
def test_int8_linear_rows(zero_point, gelu):
    """One swapped linear on GELU outputs (nearly all positive, the FFN's second linear's inputs),
    with and without the GELU applied to its own output."""
    torch.manual_seed(0)
    linear = nn.Linear(1536, 384)
    x = nn.functional.gelu(torch.randn(2, 50, 1536) * 2)
    got = Int8LinearBias(linear, rotate=False, zero_point=zero_point, gelu=gelu)(x)
    want = nn.functional.gelu(linear(x)) if gelu else linear(x)
    err = ((got - want).norm() / want.norm()).item()
    # 7- or 8-bit inputs and int8 weights: ~1-2% relative error; a wrong offset, scale or a lost GELU is >> 10%
    assert got.shape == want.shape and err < (0.02 if zero_point else 0.04), err


@pytest.mark.skipif(not native.available("quantize_rows_u8", "int8_rows_out"),
                    reason="our kernels for oneDNN's int8 products need AVX2 without AVX-512 VNNI")
@pytest.mark.parametrize("zero_point", [False, True])
def test_int8_rows_kernels_match_torch(monkeypatch, zero_point):
    """The rounding and output passes in C (`decoder/int8_rows.h`) against the same math in torch: the
    codes may differ where float rounding lands on a half step, so within a tenth of the int8 error."""
    torch.manual_seed(0)
    linear = nn.Linear(1536, 384)
    x = nn.functional.gelu(torch.randn(3, 40, 1536) * 2)
    layer = Int8LinearBias(linear, rotate=False, zero_point=zero_point, gelu=True)
    got = layer(x)
    monkeypatch.setattr(accelerate, "_fused_rows", lambda *_: False)
    want = layer(x)
    assert ((got - want).norm() / want.norm()).item() < 1e-3
    # GELU's exact form through the kernel's normal CDF, far into both tails
    z = torch.linspace(-12, 12, 4096).reshape(-1, 64)
    out = native.int8_rows_out(z.clone(), torch.ones(z.shape[0], 1), None, None, None, True)
    assert (out - nn.functional.gelu(z)).abs().max().item() < 2e-6
    out = native.int8_rows_out(z.clone(), torch.ones(z.shape[0], 1), None, None, None, True, "tanh")  # SigLIP's
    assert (out - nn.functional.gelu(z, approximate="tanh")).abs().max().item() < 2e-6


@pytest.mark.skipif(not native.available("encoder_attention"), reason="our encoder attention needs AVX2 without AVX-512 VNNI")
@pytest.mark.parametrize("B, T, H, D, lengths", [
    (5, 37, 3, 32, [37, 33, 16, 1, 0]),  # lengths around a 16-key panel's edges
    (2, 600, 2, 24, [600, 300]),  # several 256-key blocks (the online softmax), a last 8 dims (SigLIP's 72)
])
def test_encoder_attention_matches_sdpa(B, T, H, D, lengths):
    """The C attention from q/k/v rows (`decoder/encoder_attention.h`) against torch's SDPA with the
    padding mask BertModel builds; padded rows are zeros."""
    torch.manual_seed(0)
    qkv = torch.randn(B, T, 3, H, D) * 2
    lens = torch.tensor(lengths)
    mask = (torch.arange(T) < lens[:, None])[:, None, None, :].expand(B, 1, T, T)
    assert accelerate._prefix_lengths(mask, B, T).tolist() == lens.tolist()
    assert accelerate._prefix_lengths(mask.flip(-1), B, T) is None  # left padding: SDPA's
    got = native.encoder_attention(qkv, lens, 0.2)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    want = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.2).transpose(1, 2).reshape(B, T, -1)
    valid = mask[:, 0, 0]
    assert (got[valid] - want[valid]).abs().max().item() < 1e-5
    assert not got[~valid].any()
