"""The Gemma 3n audio tower and embedder equal transformers' on a small random config."""
import numpy as np
import pytest
import torch

from mmsdk.decoder.errors import ModelLoadError
from mmsdk.encoders.audio_features import log_mel
from mmsdk.encoders.audio_gemma3n import (
    AudioConfig,
    Gemma3nAudio,
    load_gemma3n_audio,
    load_hf_audio_state,
    num_audio_tokens,
)

from transformers import Gemma3nAudioConfig, Gemma3nTextConfig  # noqa: E402
from transformers.models.gemma3n.modeling_gemma3n import (  # noqa: E402
    Gemma3nAudioEncoder,
    Gemma3nMultimodalEmbedder,
)

SMALL = dict(hidden_size=64, conf_num_attention_heads=4, conf_num_hidden_layers=2,
             sscp_conv_channel_size=[16, 8], vocab_size=8)
TEXT_WIDTH = 48


@pytest.fixture(scope="module")
def models():
    torch.set_num_threads(min(2, torch.get_num_threads()))
    torch.manual_seed(0)
    hf_cfg = Gemma3nAudioConfig(**SMALL)
    enc = Gemma3nAudioEncoder(hf_cfg).eval()
    emb = Gemma3nMultimodalEmbedder(hf_cfg, Gemma3nTextConfig(hidden_size=TEXT_WIDTH)).eval()
    with torch.no_grad():  # random weights everywhere, norms included, so a swapped tensor shows
        for p in [*enc.parameters(), *emb.parameters()]:
            p.normal_(0, 0.5) if p.dim() == 1 else p.normal_(0, p.shape[-1] ** -0.5)
    hf_state = {f"model.audio_tower.{k}": v for k, v in enc.state_dict().items()}
    hf_state |= {f"model.embed_audio.{k}": v for k, v in emb.state_dict().items()}
    cfg = AudioConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in SMALL.items()})
    ours = Gemma3nAudio(cfg, TEXT_WIDTH).eval()
    load_hf_audio_state(ours, hf_state)
    return enc, emb, ours, hf_state


def _mel(samples: list[np.ndarray]):
    """Features of clips padded to the longest, as the reference processor batches them."""
    feats = [log_mel(x) for x in samples]
    t = max(f.shape[0] for f, _ in feats)
    mel = np.zeros((len(feats), t, 128), np.float32)
    mask = np.zeros((len(feats), t), bool)
    for i, (f, m) in enumerate(feats):
        mel[i, : len(f)], mask[i, : len(m)] = f, m
    return torch.from_numpy(mel), torch.from_numpy(mask)


@pytest.mark.parametrize("lengths", [[1000], [16000], [37123], [160_000], [48000, 20000]])
def test_matches_reference_encoder_and_embedder(models, lengths):
    enc, emb, ours, _ = models
    rng = np.random.default_rng(sum(lengths))
    mel, mask = _mel([(rng.standard_normal(n) * 0.1).astype(np.float32) for n in lengths])
    with torch.no_grad():
        ref = enc(mel, ~mask)
        ref_emb = emb(inputs_embeds=ref.last_hidden_state)
        out, valid = ours(mel, mask)
        enc_out, _ = ours.encoder(mel, mask)
    assert out.shape == ref_emb.shape and out.dtype == torch.float32
    assert (enc_out - ref.last_hidden_state).abs().max().item() <= 1e-4
    assert (out - ref_emb).abs().max().item() <= 1e-4
    torch.testing.assert_close(valid, ~ref.audio_mel_mask, rtol=0, atol=0)
    for i, n in enumerate(lengths):
        assert num_audio_tokens(n, ours.config)[1] == int((~ref.audio_mel_mask[i]).sum())
    assert num_audio_tokens(max(lengths), ours.config)[0] == out.shape[1]


def test_hard_token_embedding_matches_reference(models):
    _, emb, ours, _ = models
    ids = torch.tensor([[ours.config.vocab_offset, ours.config.vocab_offset + 7]])
    with torch.no_grad():
        assert (ours.embedder.embed_ids(ids) - emb(input_ids=ids)).abs().max().item() <= 1e-5


def test_thirty_seconds_is_188_tokens():
    assert num_audio_tokens(480_000) == (188, 188)
    assert num_audio_tokens(160_000) == (63, 63)  # 6.25 tokens/s, rounded up


def test_strict_loading_names_missing_unexpected_and_misshapen(models):
    *_, ours, hf_state = models
    fresh = Gemma3nAudio(ours.config, TEXT_WIDTH)
    broken = dict(hf_state)
    del broken["model.audio_tower.conformer.1.lconv1d.linear_end.weight"]
    with pytest.raises(ModelLoadError, match="missing tensor 'model.audio_tower.conformer.1.lconv1d.linear_end"):
        load_hf_audio_state(fresh, broken)
    extra = dict(hf_state, **{"model.audio_tower.conformer.2.norm.weight": torch.ones(64)})
    with pytest.raises(ModelLoadError, match="unexpected tensor 'model.audio_tower.conformer.2"):
        load_hf_audio_state(fresh, extra)
    wrong = dict(hf_state, **{"model.embed_audio.soft_embedding_norm.weight": torch.ones(65)})
    with pytest.raises(ModelLoadError, match="soft_embedding_norm.weight' has shape"):
        load_hf_audio_state(fresh, wrong)


def test_loads_from_checkpoint_folder(models, tmp_path):
    import json

    from safetensors.torch import save_file

    enc, emb, ours, hf_state = models
    text_weights = {"model.language_model.norm.weight": torch.ones(TEXT_WIDTH)}  # ignored by the audio loader
    save_file({k: v.contiguous() for k, v in {**hf_state, **text_weights}.items()}, tmp_path / "model.safetensors")
    config = {"audio_config": {**SMALL, "model_type": "gemma3n_audio"}, "text_config": {"hidden_size": TEXT_WIDTH}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = load_gemma3n_audio(tmp_path)
    for (name, a), (_, b) in zip(loaded.state_dict().items(), ours.state_dict().items()):
        assert torch.equal(a, b), name  # the loader copies the file's tensors: exactness is the point
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match="model.safetensors"):
        load_gemma3n_audio(tmp_path)


def test_a_clip_encoded_before_is_not_encoded_again(models):
    """encode_audio with a cache runs the real tower once per distinct clip (counted by a forward hook),
    and the cached tokens are those the tower gave."""
    from mmsdk.encoders.audio_features import FeatureConfig
    from mmsdk.encoders.gemma3n_fusion import Gemma3nMediaConfig, encode_audio
    from mmsdk.encoders.media_cache import EncodeCache

    _, _, ours, _ = models
    calls = []
    hook = ours.register_forward_hook(lambda *a: calls.append(1))
    pad_id = ours.config.vocab_offset + SMALL["vocab_size"] - 1  # the last audio id pads
    cfg, features, cache = Gemma3nMediaConfig(vocab_size=pad_id + 1), FeatureConfig(), EncodeCache(size=2)
    rng = np.random.default_rng(0)
    a, b, c = [(rng.standard_normal(16000) * 0.1).astype(np.float32) for _ in range(3)]
    try:
        first = encode_audio(ours, [a], features, cfg, cache)
        again = encode_audio(ours, [a.copy()], features, cfg, cache)  # same samples, another array
        assert len(calls) == 1
        torch.testing.assert_close(again, first, rtol=0, atol=0)  # the stored tensor itself
        encode_audio(ours, [b, a], features, cfg, cache)  # only b is new; a is now the most recently used
        assert len(calls) == 2
        encode_audio(ours, [c], features, cfg, cache)  # evicts the least recently used, b
        encode_audio(ours, [a], features, cfg, cache)
        assert len(calls) == 3
        encode_audio(ours, [b], features, cfg, cache)
        assert len(calls) == 4 and len(cache) == 2
    finally:
        hook.remove()


def test_q8_group_products_match_the_product_of_their_codes():
    """`native.q8g_matmul` against float64 arithmetic on the same 8-bit codes (inputs rounded per 32 as the
    kernel rounds them, `quantize_q8_groups`): a wrong layout, sign or scale is off by the values themselves;
    odd row counts take the kernel's one-row tiles. And rows given as a transposed view."""
    from mmsdk.decoder import native
    from mmsdk.encoders.accelerate import Q8GroupLinear

    if not native.available("q8g_matmul"):
        pytest.skip("CPU has neither AVX-512 VNNI nor AVX2 + FMA (the kernels' instructions)")
    g = torch.Generator().manual_seed(3)
    for m, k, n in ((37, 512, 192), (6, 1024, 384), (5, 1152, 384), (3, 96, 192)):  # short last chunks: SigLIP's 1152
        x, w = torch.randn(m, k, generator=g), torch.randn(n, k, generator=g) * 0.02
        groups = w.view(n, -1, 32)
        scales = groups.abs().amax(-1) / 127
        codes = torch.round(groups / scales[..., None]).to(torch.int8).view(n, k)
        y = native.q8g_matmul(x, native.q8g_pack(codes, scales))
        top = x.view(m, -1, 32).abs().amax(-1, keepdim=True)
        xq = torch.round(x.view(m, -1, 32) * (torch.full_like(top, 127) / top)).double() * (top / 127).double()
        wd = (codes.double().view(n, -1, 32) * scales.double()[..., None]).view(n, k)
        ref = xq.view(m, k) @ wd.T
        assert float((y.double() - ref).abs().max() / ref.abs().max()) < 1e-5
    # rows that are a transposed view (the light conv's, after its depthwise convolution): the copy the
    # kernel reads must outlive the call (a freed 4.6 MB copy is unmapped at once: a crash, or stale rows)
    lin = torch.nn.Linear(1536, 384, bias=False)
    x = torch.randn(1536, 750, generator=g).t()
    with torch.inference_mode():
        torch.testing.assert_close(Q8GroupLinear(lin)(x), Q8GroupLinear(lin)(x.contiguous()), rtol=0, atol=1e-6)
        # with a bias (SigLIP's attention): near the float product, row by row; a bias left out moves it far
        lin = torch.nn.Linear(1152, 192)
        lin.bias.data.normal_(0, 1, generator=g)
        cos = torch.nn.functional.cosine_similarity(Q8GroupLinear(lin)(x[:, :1152]), lin(x[:, :1152]), dim=-1)
        assert float(cos.min()) > 0.999


def test_int8_conformer_swap_stays_close():
    """`Q8GroupLinear` in a real-width conformer block (1536, the kernel's tiles) on 3 s of noise: every FFN
    and light-conv linear swapped (AVX2 and AVX-512 VNNI hosts), the encodings near float32's. Per-token
    cosine >= 0.999, the gate (30 s of the real-size random checkpoint: min 0.99953); a wrong scale or layout
    gives ~0."""
    import copy

    from mmsdk.decoder import native
    from mmsdk.encoders.accelerate import Q8GroupLinear, accelerate_gemma3n_audio_
    from mmsdk.encoders.audio_gemma3n import AudioConfig, Gemma3nAudio

    if not native.available("q8g_matmul"):
        pytest.skip("CPU has neither AVX-512 VNNI nor AVX2 + FMA (the kernels' instructions)")
    torch.manual_seed(0)
    ours = Gemma3nAudio(AudioConfig(conf_num_hidden_layers=1), 64).eval()
    with torch.no_grad():
        for name, p in ours.named_parameters():
            p.copy_(1.0 + 0.1 * torch.randn(p.shape) if "norm" in name else torch.randn(p.shape) / p.shape[-1] ** 0.5)
    mel = torch.randn(1, 300, 128)
    mask = torch.ones(1, 300, dtype=torch.bool)
    fast = accelerate_gemma3n_audio_(copy.deepcopy(ours))
    assert sum(isinstance(m, Q8GroupLinear) for m in fast.modules()) == 6  # both kernels (AVX2, AVX-512 VNNI)
    with torch.no_grad():
        ref, valid = ours(mel, mask)
        out, _ = fast(mel, mask)
    cos = torch.nn.functional.cosine_similarity(out[valid], ref[valid], dim=-1)
    assert cos.min().item() >= 0.999, cos.min().item()
