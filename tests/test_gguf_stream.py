"""GGUF weights streamed straight into the runtime modules: 4-bit blocks taken as they are (codes
identical to the file's, against the `gguf` package's own dequantization), and a streamed load of
a small quantized GGUF computing what transformers computes on the same weights."""
import numpy as np
import pytest
import torch

from _tiny import gemma3_gguf_writer, tiny_text_config

from mmsdk.decoder.gguf_file import GGUFFile, q4_codes, q4_k_parts
from mmsdk.decoder.quantize import Int4Linear, Int8Embedding, Int8Linear

BLOCK_BYTES = {"Q4_0": 18, "Q4_1": 20, "Q4_K": 144}
BLOCK_VALUES = {"Q4_0": 32, "Q4_1": 32, "Q4_K": 256}


def random_blocks(kind: str, rows: int, cols: int, seed: int = 0, d: float = 1e-2) -> np.ndarray:
    """Random 4-bit blocks of every code, with fp16 scales (and mins) up to `d` (up to d / 10 for
    Q4_K's, which 6-bit sub-block scales multiply)."""
    rng = np.random.default_rng(seed)
    n = rows * cols // BLOCK_VALUES[kind]
    b = rng.integers(0, 256, (n, BLOCK_BYTES[kind]), dtype=np.uint8)
    d = d / 10 if kind == "Q4_K" else d
    b[:, 0:2] = rng.uniform(d / 10, d, (n, 1)).astype(np.float16).view(np.uint8)
    if kind in ("Q4_1", "Q4_K"):  # the min (Q4_1) / the min's scale (Q4_K), signed in Q4_1
        lo = rng.uniform(-10 * d, 10 * d, (n, 1)) if kind == "Q4_1" else rng.uniform(d / 10, d, (n, 1))
        b[:, 2:4] = lo.astype(np.float16).view(np.uint8)
    return b.reshape(rows, -1)


def module_codes(m: Int4Linear):
    """An Int4Linear's codes, unpacked from torch's CPU layout (output rows interleaved in blocks of 64
    where torch runs AVX-512 code, else 32), with its scales and zeros (`scale_zero`)."""
    n, k = m.out_features, m.in_features
    block = 64 if torch.backends.cpu.get_cpu_capability().startswith("AVX512") else 32
    b = m.weight.reshape(n // block, k, block // 2)
    q = torch.cat([b & 15, b >> 4], -1).permute(0, 2, 1).reshape(n, k)
    return (q, *m.scale_zero())


def dequantized(q, scale, zero):
    rows, cols = q.shape
    return ((q.float().reshape(rows, -1, 32) - 8) * scale[..., None] + zero[..., None]).reshape(rows, cols)


def test_q4_k_loads_bit_exact_into_the_kquant_layout():
    """GGUF's Q4_K held as stored (its codes, 6-bit sc and m per 32, float16 d and dmin per 256): at a
    real size (Gemma 3 4B's ffn_gate, 10240 x 2560) the module's weights q * (d sc) - dmin m are bit
    for bit the `gguf` package's dequantization, and it takes 4.625 bits a weight (the file: 4.5)."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    raw = random_blocks("Q4_K", 10240, 2560, seed=5)
    ref = torch.from_numpy(dequantize(raw, GGMLQuantizationType.Q4_K))
    m = Int4Linear.from_kquant(*q4_k_parts(raw))
    assert m.layout == "kquant" and m.sub_scales.dtype == torch.uint8 and m.super_scales.dtype == torch.float16
    assert m.weight.numel() + m.sub_scales.numel() + m.super_scales.numel() * 2 == raw.nbytes // 144 * 148
    q = module_codes(m)[0]
    scale, low = m.kquant_scale_min()
    mine = (q.float().reshape(10240, -1, 32) * scale[..., None] - low[..., None]).reshape(10240, 2560)
    assert torch.equal(mine, ref)  # exactness is the point: a format decode
    # and the (scale, zero) view of every layout, which torch's fallback takes, says the same within float rounding
    assert torch.allclose(dequantized(q, *m.scale_zero()), ref, rtol=0, atol=1e-6)


def test_q4_0_loads_bit_exact_into_the_symmetric_layout():
    """GGUF's Q4_0 held as stored (the file's codes, its float16 d, no zero): at a real size (Gemma 3
    4B's ffn_gate, 10240 x 2560, d of both signs as llama.cpp writes them) the module's weights are
    bit for bit the `gguf` package's dequantization (the same float32 product (q - 8) d)."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    raw = random_blocks("Q4_0", 10240, 2560, seed=3)
    blocks = raw.reshape(-1, 18)
    blocks[::2, 0:2] = (-blocks[::2, 0:2].view(np.float16)).view(np.uint8)  # every other d negative
    ref = torch.from_numpy(dequantize(raw, GGMLQuantizationType.Q4_0))
    q, d, zero = q4_codes(raw, "Q4_0")
    assert not zero.any()
    m = Int4Linear.from_symmetric(q, d.half(), 32)
    assert m.symmetric and m.scales.dtype == torch.float16
    assert m.weight.numel() + m.scales.numel() * 2 == raw.nbytes  # 4.5 bits a weight, as the file
    mq, md, _ = module_codes(m)
    assert torch.equal(mq, q)
    assert torch.equal(dequantized(mq, md, torch.zeros_like(md)), ref)  # exactness is the point: a format decode


@pytest.mark.parametrize("kind", ["Q4_0", "Q4_1", "Q4_K"])
def test_4bit_blocks_map_exactly_onto_int4_codes(kind):
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    rows, cols = 128, 512
    raw = random_blocks(kind, rows, cols)
    ref = torch.from_numpy(dequantize(raw, GGMLQuantizationType[kind]))
    q, scale, zero = q4_codes(raw, kind)
    assert q.shape == (rows, cols) and scale.shape == zero.shape == (rows, cols // 32)
    # the codes are the file's: each w the gguf package decodes is (q - 8) * scale + zero with our q
    # (exact for Q4_0, whose product is the same float32 op; one rounding of a sum for Q4_1 / Q4_K)
    w = dequantized(q, scale, zero)
    ulp = 4 * torch.finfo(torch.float32).eps * (8 * scale.abs() + zero.abs()).repeat_interleave(32, 1)
    assert ((w - ref).abs() <= ulp).all()
    live = (scale != 0).repeat_interleave(32, 1)  # a Q4_K sub-block may have scale 0: any code decodes alike
    back = torch.round((ref - zero.repeat_interleave(32, 1)) / scale.repeat_interleave(32, 1) + 8)
    assert torch.equal(back[live].to(torch.uint8), q[live])
    assert q.unique().tolist() == list(range(16))

    # packed into the runtime module: the same codes; scale and zero rounded to the layout's bfloat16
    m = Int4Linear.from_codes(q, scale, zero, 32)
    mq, ms, mz = module_codes(m)
    assert torch.equal(mq, q)
    assert torch.equal(ms, scale.bfloat16().float()) and torch.equal(mz, zero.bfloat16().float())
    # what bfloat16 (8 significant bits) costs against the file's fp16 numbers: at most 2^-8 of each
    # group's largest weight, plus (Q4_1 / Q4_K) 2^-8 of the zero
    wm = dequantized(mq, ms, mz)
    bound = 2 ** -8 * (8 * scale.abs() + zero.abs()).repeat_interleave(32, 1) * 1.01
    assert ((wm - ref).abs() <= bound).all()
    # and the module's kernel computes with these weights (so the layout is read as it is meant)
    x = torch.randn(3, cols)
    y, y_ref = m(x), x @ wm.T
    assert (y - y_ref).abs().max() <= 0.02 * y_ref.abs().max()  # bfloat16 inputs where torch's kernel runs


# -- a small quantized GGUF, streamed ----------------------------------------------------------------

LAYER_KINDS = [  # per layer, the GGUF types of q, k, v, o, gate, up, down
    ("Q4_0", "Q4_0", "Q4_0", "Q4_0", "Q4_0", "Q4_0", "Q4_K"),
    ("Q4_0", "Q4_0", "Q8_0", "Q4_1", "Q4_1", "Q4_0", "Q4_K"),  # a Q8_0 v: q/k/v stack as int8
    ("Q4_0", "Q4_0", "Q4_0", "Q8_0", "Q4_0", "Q4_0", "F16"),
]


def write_quantized_gguf(ref, path):
    """`ref`'s text weights as a GGUF of Q4_0/Q4_1/Q4_K/Q8_0 blocks (llama.cpp's names, norms
    stored 1 + w), and `ref` given the weights the blocks decode to, so both compute the same."""
    import gguf
    from gguf.quants import dequantize, quantize

    tc = ref.config
    w, tokens = gemma3_gguf_writer(path, tc, "tiny-gemma3-q4", gguf.LlamaFileType.MOSTLY_Q4_0)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GEMMA3, tc.num_hidden_layers)
    order = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    state = ref.state_dict()
    for key, t in state.items():
        if key == "lm_head.weight":
            continue  # tied to the embedding
        t = t.float()
        name = names.get_name(key, try_suffixes=(".weight",))
        if key.endswith("norm.weight"):
            w.add_tensor(name, (t + 1).numpy())  # Gemma3RMSNorm's (1 + w)
            continue
        kind = "Q8_0" if "embed_tokens" in key else LAYER_KINDS[int(key.split(".")[2])][order.index(key.split(".")[-2])]
        qtype = gguf.GGMLQuantizationType[kind]
        if kind == "Q4_K":  # the gguf package cannot quantize to Q4_K: random blocks of the same shape
            arr = random_blocks(kind, *t.shape, seed=len(key), d=1e-3)
        else:
            arr = t.numpy().astype(np.float16) if kind == "F16" else quantize(t.numpy(), qtype)
        w.add_tensor(name, arr, raw_dtype=None if kind == "F16" else qtype)
        decoded = arr.astype(np.float32) if kind == "F16" else dequantize(arr, qtype)
        with torch.no_grad():
            state[key].copy_(torch.from_numpy(decoded.reshape(t.shape)))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def tiny_q4(tmp_path_factory):
    from transformers import Gemma3ForCausalLM

    torch.manual_seed(0)
    # hidden 64 and FFN 256: every linear fits the int4 layout (rows a multiple of 64), down_proj Q4_K's 256
    ref = Gemma3ForCausalLM(tiny_text_config(num_hidden_layers=3, intermediate_size=256)).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if "norm" in name:
                p.normal_(0, 0.2)
            if "embed" in name:  # logits of a real model's range (~10), above the int8 head's rounding
                p.normal_(0, 0.2)
    path = tmp_path_factory.mktemp("tiny_q4") / "tiny-q4.gguf"
    write_quantized_gguf(ref, path)
    ids = torch.tensor([[2, 10, 70, 300, 301, 302, 77, 90, 91, 150, 151, 40, 41, 42, 300, 311]])
    with torch.no_grad():
        ref_logits = ref(ids).logits[0].float()
    return path, ids, ref_logits


def _logits(model, ids):
    from mmsdk.decoder.kv_cache import make_cache

    with torch.inference_mode():
        return model.logits(model(ids, make_cache(model.config), torch.arange(ids.shape[1])))[0].float()


def _rms(x):
    return x.square().mean().sqrt()


def test_streamed_float_load_computes_what_transformers_does(tiny_q4):
    from mmsdk.decoder.loader import load_text

    path, ids, ref = tiny_q4
    out = _logits(load_text(path, "float32", cache=False).model, ids)
    # the same decoded weights in float32 on both sides: only summation order differs
    torch.testing.assert_close(out, ref, atol=2e-4 * ref.abs().max().item(), rtol=1e-4)


def test_streamed_stored_load_keeps_the_files_4bit_codes(tiny_q4, tmp_path, monkeypatch):
    from mmsdk.decoder.loader import load_text

    path, ids, ref = tiny_q4
    monkeypatch.setenv("MMSDK_CACHE", str(tmp_path))
    first = load_text(path, None)
    layers = first.model.layers
    assert isinstance(first.model.embed, Int8Embedding)
    assert isinstance(layers[0].attn.qkv_proj, Int4Linear)  # Q4_0 q, k, v: one 4-bit stack
    assert isinstance(layers[1].attn.qkv_proj, Int8Linear)  # with a Q8_0 v: int8, the widest part
    assert isinstance(layers[1].attn.o_proj, Int4Linear) and isinstance(layers[1].mlp.gate_up_proj, Int4Linear)
    assert isinstance(layers[0].mlp.down_proj, Int4Linear)  # Q4_K
    assert isinstance(layers[2].mlp.down_proj, torch.nn.Linear)  # F16 stays float
    # the qkv stack holds the file's Q4_0 codes, rows of q, then k, then v
    gg = GGUFFile(path)
    codes = torch.cat([q4_codes(gg.raw(f"blk.0.attn_{p}.weight"), "Q4_0")[0] for p in "qkv"])
    assert torch.equal(module_codes(layers[0].attn.qkv_proj)[0], codes)
    # all-Q4_0 stacks in the symmetric layout, bit for bit the gguf package's weights; Q4_K keeps scale and zero
    qkv = layers[0].attn.qkv_proj
    assert qkv.symmetric and not layers[0].mlp.down_proj.symmetric
    exact = torch.cat([gg.dequantize(f"blk.0.attn_{p}.weight") for p in "qkv"])
    assert torch.equal(dequantized(*module_codes(qkv)), exact)  # exactness is the point: a format decode

    out = _logits(first.model, ids)
    # vs float32 on the same decoded weights: the int8 embedding / head and int8 layers' int8
    # inputs dominate (on this tiny random model quantize="int8" alone is ~20% RMS); measured 7.7%
    assert _rms(out - ref) < 0.15 * _rms(ref)
    assert (out.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.9
    # the 4-bit layers alone: as float layers holding the file's decoded weights, the model computes
    # the same but for bfloat16 scales (and inputs, where torch's int4 kernel runs). A wrong code,
    # order or scale makes this error the size of the logits.
    gg = GGUFFile(path)
    src = {"qkv_proj": ["attn_q", "attn_k", "attn_v"], "o_proj": ["attn_output"],
           "gate_up_proj": ["ffn_gate", "ffn_up"], "down_proj": ["ffn_down"]}
    n_swapped = 0
    for i, block in enumerate(first.model.layers):
        for parent in (block.attn, block.mlp):
            for name, m in list(parent.named_children()):
                if isinstance(m, Int4Linear):
                    w = torch.cat([gg.dequantize(f"blk.{i}.{s}.weight") for s in src[name]])
                    setattr(parent, name, torch.nn.Linear(m.in_features, m.out_features, bias=False))
                    getattr(parent, name).weight.data = w
                    n_swapped += 1
    assert n_swapped == 9
    as_float = _logits(first.model, ids)
    assert _rms(out - as_float) < 0.03 * _rms(as_float)

    cached = list(tmp_path.glob("weights/tiny-q4-*.safetensors"))
    assert len(cached) == 1 and not list(tmp_path.glob("weights/.*.part"))  # written whole, by rename
    again = load_text(path, None)
    assert again.model.layers[0].attn.qkv_proj.symmetric  # the cache holds the layout it was written in
    assert torch.equal(_logits(again.model, ids), out)  # the same mapped cache, the same path: same numbers


def test_streamed_int8_load_matches_float(tiny_q4):
    from mmsdk.decoder.loader import load_text

    path, ids, ref = tiny_q4
    model = load_text(path, None, quantize="int8", cache=False).model
    assert all(isinstance(m, Int8Linear) for b in model.layers for m in (b.attn.qkv_proj, b.mlp.down_proj))
    out = _logits(model, ids)
    assert _rms(out - ref) < 0.3 * _rms(ref)  # measured 21%: int8 inputs on a tiny random model
    assert (out.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.9


def test_header_without_arrays_reads_every_other_key(bundled_path):
    # A chat template or config lookup skips the vocabulary's 262k strings; every scalar key and
    # the tensor table must still come out as the full parse gives them.
    full, light = GGUFFile(bundled_path), GGUFFile(bundled_path, arrays=False)
    arrays = {k for k, v in full.meta.items() if isinstance(v, list)}
    assert "tokenizer.ggml.tokens" in arrays
    assert light.meta == {k: v for k, v in full.meta.items() if k not in arrays}
    assert light.tensors == full.tensors
