"""Gemma 4 from a GGUF as llama.cpp's converter writes it (`gemma4_fixtures.write_gguf`, checked equal to
the converter's output, tensor bytes and metadata, by tests/eval/check_gemma4_gguf_writer.py; here
against the converter's listing). The tiny checkpoint keeps the real structure: per-layer inputs,
KV sharing with twice-wide MLPs, wider global layers with proportional RoPE whose values are their keys.

Tolerances: 1e-4 on logits of size ~2 against transformers, as test_gemma4_parity (float32 rounding
leaves <= 4e-5; a wrongly mapped tensor moves them by 0.1 or more)."""
import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from gemma4_fixtures import GGUF_NAMES, hf_text_model, save, write_gguf
from mmsdk.decoder.errors import ModelLoadError
from mmsdk.decoder.gemma4 import Gemma4Text
from mmsdk.decoder.gemma4_loader import GGUFPerLayerEmbedding
from mmsdk.decoder.gguf_file import GGUFFile
from mmsdk.decoder.kv_cache import make_cache
from mmsdk.decoder.loader import load_text
from mmsdk.decoder.quantize import Int4Linear
from test_gemma4_parity import _compare, _ids

import mmsdk

pytestmark = pytest.mark.usefixtures("mmsdk_cache")  # each test its own empty cache folder
TOL = 1e-4
LISTING = Path(__file__).parent / "fixtures" / "gemma4_gguf_f32.json"


@pytest.fixture(scope="module")
def ref():
    return hf_text_model(seed=0)


@pytest.fixture(scope="module")
def files(ref, tmp_path_factory):
    d = tmp_path_factory.mktemp("g4_gguf")
    return {kind: write_gguf(ref, d / f"tiny-{kind}.gguf", kind) for kind in ("F32", "Q4_0")}


def test_writer_lays_out_what_the_converter_writes(files):
    """Names, shapes and types of every tensor, metadata keys and their value types: the converter's."""
    g = GGUFFile(files["F32"])
    got = {"tensors": {n: [list(t.shape), t.kind] for n, t in sorted(g.tensors.items())},
           "metadata": {k: list(g.types[k]) for k in sorted(g.meta)}}
    assert got == json.loads(LISTING.read_text())


def test_f32_gguf_matches_transformers_and_the_folder_load(ref, files, tmp_path):
    loaded = load_text(files["F32"], torch.float32)
    model = loaded.model
    assert isinstance(model, Gemma4Text) and loaded.source == "gguf" and loaded.quantization == "F32"
    assert not loaded.quantized
    assert model.config.attention_k_eq_v and model.config.use_double_wide_mlp
    assert model.config.rope_global_rotated == 0.25
    diffs = _compare(ref, model, _ids(13, 1), steps=6)  # window 4: rings wrap, shared layers reuse them
    assert max(diffs) <= TOL, diffs

    # The same weights from the HF folder: both our decoder, float32 on the same values, summing in
    # the same order; 1e-5 leaves room for nothing but rounding.
    folder = load_text(save(ref, tmp_path / "folder")).model
    ids = _ids(9, 4)
    a = model.logits(model(ids, make_cache(model.config), torch.arange(9)))
    b = folder.logits(folder(ids, make_cache(folder.config), torch.arange(9)))
    assert (a - b).abs().max() <= 1e-5


def test_public_load_with_ple_offload(files, ref):
    """`mmsdk.load` of the GGUF: family gemma4, text only, the per-layer table read from the file's
    mapping (never a parameter), logits unchanged."""
    asst = mmsdk.load(files["F32"], dtype="float32", offload="ple")
    assert asst.info.family == "gemma4" and asst.info.modalities == {"text"}
    assert isinstance(asst.model.ple, GGUFPerLayerEmbedding)
    assert not any(name.startswith("ple.") for name, _ in asst.model.named_parameters())
    assert max(_compare(ref, asst.model, _ids(11, 2), steps=3)) <= TOL
    assert asst.tokenizer.eos_ids == (1, 106)  # <eos>, <turn|>
    assert isinstance(asst.generate("a b", max_tokens=3), str)


def _dequantized_reference(ref, path):
    """`ref` holding the GGUF's values (its Q4_0 blocks dequantized): what the file encodes."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    g = GGUFFile(path)
    out = copy.deepcopy(ref)
    with torch.no_grad():
        for name, p in out.model.state_dict().items():
            parts = name.split(".")
            gname = f"blk.{parts[1]}.{GGUF_NAMES['.'.join(parts[2:])]}" if parts[0] == "layers" else GGUF_NAMES[name]
            t = g.tensors[gname]
            w = dequantize(g.raw(gname), GGMLQuantizationType[t.kind]).astype(np.float32)
            p.copy_(torch.from_numpy(w.reshape(p.shape)))
    return out


def test_q4_0_gguf(ref, files, mmsdk_cache):
    """Q4_0 (llama-quantize's layout, written with `gguf.quants`): dequantized to float32 it computes
    what transformers computes on the file's values (1e-4, as above); as stored, its 4-bit projections
    take the file's codes (`Int4Linear`) and, with int8 activations and embedding, stay near: relative
    RMS logit error under 0.25, where logits sharing nothing but their scale give ~1.4 (this random
    stack is so sensitive that 0.4% weight noise moves its logits by 0.4, so top-1 is not a fair gauge)."""
    want_ref = _dequantized_reference(ref, files["Q4_0"])
    floats = load_text(files["Q4_0"], torch.float32)
    assert max(_compare(want_ref, floats.model, _ids(13, 1), steps=4)) <= TOL
    assert floats.quantized  # float weights, but the file's 4-bit rounding is in them

    stored = load_text(files["Q4_0"], None)
    assert stored.quantization == "Q4_0" and stored.quantized
    assert sum(isinstance(m, Int4Linear) for m in stored.model.modules()) >= 30
    ids = _ids(16, 5)

    def run(model):
        return model.logits(model(ids, make_cache(model.config), torch.arange(16)))

    want, got = run(floats.model), run(stored.model)
    err = ((got - want).norm() / want.norm()).item()
    assert err < 0.25, err
    # a later load maps the weight cache the first one wrote (and ran from): the same path run twice
    assert len(list((Path(mmsdk_cache) / "weights").glob("*.safetensors"))) == 2  # the float32 load's, this one's
    again = load_text(files["Q4_0"], None)
    assert isinstance(again.model.ple, GGUFPerLayerEmbedding)
    assert torch.equal(run(again.model), got)


def test_missing_unexpected_and_unknown(ref, tmp_path):
    path = write_gguf(ref, tmp_path / "missing.gguf", drop={"blk.2.ffn_up.weight"})
    with pytest.raises(ModelLoadError, match=r"missing tensor 'blk\.2\.ffn_up\.weight'"):
        load_text(path)
    path = write_gguf(ref, tmp_path / "extra.gguf", extra={"blk.0.attn_z.weight": np.zeros((4, 64), np.float32)})
    with pytest.raises(ModelLoadError, match=r"unexpected tensor 'blk\.0\.attn_z\.weight'"):
        load_text(path)
    path = write_gguf(ref, tmp_path / "k_eq_v.gguf", drop={"blk.0.attn_v.weight"})  # a sliding layer must have it
    with pytest.raises(ModelLoadError, match=r"missing tensor 'blk\.0\.attn_v\.weight'"):
        load_text(path)
    path = write_gguf(ref, tmp_path / "moe.gguf", meta={"gemma4.expert_count": 128})
    with pytest.raises(ModelLoadError, match="mixture-of-experts"):
        load_text(path)
    path = write_gguf(ref, tmp_path / "unknown.gguf", meta={"gemma4.future_knob": 3})
    with pytest.warns(UserWarning, match="gemma4.future_knob"):
        load_text(path, torch.float32)
