"""Vision towers vs transformers on the same random weights: SigLIP + Gemma 3 projector, MobileNet-V5 +
Gemma 3n embedder; strict loading."""
import pytest
import torch
from mmsdk.decoder.errors import ModelLoadError
from mmsdk.encoders.gemma3_vision import Gemma3VisionConfig, load_gemma3_vision
from mmsdk.encoders.gemma3n_vision import load_gemma3n_vision
from mmsdk.encoders.image_preprocess import (
    GEMMA3N_IMAGE,
    ImageProcessorConfig,
    preprocess,
)
from mmsdk.encoders.siglip import SiglipVisionConfig
from vision_fixtures import noise_image, small_gemma3, small_gemma3n


@pytest.fixture(scope="module")
def gemma3():
    return small_gemma3()


@pytest.fixture(scope="module")
def tower(gemma3):
    return load_gemma3_vision(gemma3.state_dict(), gemma3.config.to_dict())


def test_gemma3_tower_matches_transformers(gemma3, tower):
    # A wide image: whole view + pan-and-scan crops, encoded as one batch.
    config = ImageProcessorConfig(size={"height": 224, "width": 224})
    batch = preprocess(noise_image(300, 900), config)
    assert batch.num_crops == [3]
    with torch.no_grad():
        ref = gemma3.model.get_image_features(batch.pixel_values).pooler_output
        ours = tower(batch.pixel_values)
    assert ours.shape == ref.shape == (4, 16, 64) and ours.dtype == torch.float32
    assert (ours - ref).abs().max().item() <= 1e-4
    # Batching the crops changes nothing: view 2 alone gives the same tokens.
    with torch.no_grad():
        alone = tower(batch.pixel_values[2:3])
    assert (alone - ours[2:3]).abs().max().item() <= 1e-5


def test_siglip_features_match_transformers(gemma3, tower):
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ref = gemma3.model.vision_tower(pixel_values=x).last_hidden_state
        ours = tower.encoder(x)
    assert ours.shape == (2, 256, 48)
    assert (ours - ref).abs().max().item() <= 1e-4


def test_loading_is_strict(gemma3):
    sd = dict(gemma3.state_dict())
    cfg = gemma3.config.to_dict()
    missing = {k: v for k, v in sd.items() if "layers.1.mlp.fc2.bias" not in k}
    with pytest.raises(ModelLoadError, match="missing tensor .*layers.1.mlp.fc2.bias"):
        load_gemma3_vision(missing, cfg)
    extra = {**sd, "model.vision_tower.vision_model.encoder.layers.9.mlp.fc1.weight": torch.zeros(1)}
    with pytest.raises(ModelLoadError, match="unexpected tensor .*layers.9.mlp.fc1"):
        load_gemma3_vision(extra, cfg)
    text_only = {k: v for k, v in sd.items() if "language_model" in k}
    with pytest.raises(ModelLoadError, match="text-only"):
        load_gemma3_vision(text_only, cfg)


def test_legacy_checkpoint_names_load():
    # Gemma 3 4B as stored on the Hub: "vision_tower.vision_model.*", "multi_modal_projector.*".
    cfg = Gemma3VisionConfig(vision_config=SiglipVisionConfig(hidden_size=32, intermediate_size=64,
                             num_hidden_layers=1, num_attention_heads=2, image_size=56),
                             mm_tokens_per_image=4, text_hidden_size=16)
    p = "vision_tower.vision_model."
    names = {f"{p}embeddings.patch_embedding.weight": (32, 3, 14, 14), f"{p}embeddings.patch_embedding.bias": (32,),
             f"{p}embeddings.position_embedding.weight": (16, 32), f"{p}post_layernorm.weight": (32,),
             f"{p}post_layernorm.bias": (32,), "multi_modal_projector.mm_input_projection_weight": (32, 16),
             "multi_modal_projector.mm_soft_emb_norm.weight": (32,)}
    for sub, shape in [("layer_norm1", (32,)), ("layer_norm2", (32,)), ("self_attn.q_proj", (32, 32)),
                       ("self_attn.k_proj", (32, 32)), ("self_attn.v_proj", (32, 32)),
                       ("self_attn.out_proj", (32, 32)), ("mlp.fc1", (64, 32)), ("mlp.fc2", (32, 64))]:
        names[f"{p}encoder.layers.0.{sub}.weight"] = shape
        names[f"{p}encoder.layers.0.{sub}.bias"] = shape[:1]
    tower = load_gemma3_vision({k: torch.randn(s) for k, s in names.items()}, cfg)
    assert tower(torch.randn(1, 3, 56, 56)).shape == (1, 4, 16)
    bad = {k: torch.randn(s) for k, s in names.items()}
    bad["multi_modal_projector.mm_input_projection_weight"] = torch.randn(16, 32)
    with pytest.raises(ModelLoadError, match="mm_input_projection_weight.*shape"):
        load_gemma3_vision(bad, cfg)


@pytest.fixture(scope="module")
def gemma3n():
    return small_gemma3n()


@pytest.mark.slow
def test_gemma3n_tower_matches_transformers(gemma3n):
    ref_model = gemma3n
    ours = load_gemma3n_vision(ref_model.state_dict(), ref_model.config.to_dict())
    # 128 px keeps the (channel-scaled) MobileNet-V5 fast; its fusion adapter still outputs 16 x 16.
    config = ImageProcessorConfig(**{**GEMMA3N_IMAGE.__dict__, "size": {"height": 128, "width": 128}})
    pixels = preprocess([noise_image(200, 300, 1), noise_image(300, 200, 2)], config).pixel_values
    with torch.no_grad():
        ref = ref_model.get_image_features(pixels).pooler_output
        out = ours(pixels)
        ids = torch.tensor([[262144, 262150, 262200]])  # <end_of_image> and other hard vision tokens
        hard_ref = ref_model.embed_vision(input_ids=ids)
        hard = ours.embedder.embed_ids(ids)
    assert out.shape == ref.shape == (2, 256, 64)
    assert (out - ref).abs().max().item() <= 1e-4
    assert (hard - hard_ref).abs().max().item() <= 1e-5


def test_int8_siglip_swap_keeps_the_embeddings(gemma3):
    """The int8 module swap (8-bit weights and input rows; q/k/v fused, as `attention=True` makes them)
    on a fresh tower: every block swapped, projected embeddings within the quality gate of float32
    (per-token cosine >= 0.999, the gate eval_vision.py applies at the real size), and a wide image's
    views batched as before."""
    from mmsdk.encoders.accelerate import FusedQKVAttention, accelerate_siglip_

    tower = load_gemma3_vision(gemma3.state_dict(), gemma3.config.to_dict())
    batch = preprocess(noise_image(300, 900, seed=2), ImageProcessorConfig(size={"height": 224, "width": 224}))
    with torch.inference_mode():
        ref = tower(batch.pixel_values)
        accelerate_siglip_(tower.encoder, attention=True)
        out = tower(batch.pixel_values)
        alone = tower(batch.pixel_values[1:2])
    assert all(isinstance(b.attn, FusedQKVAttention) for b in tower.encoder.layers)
    cos = torch.nn.functional.cosine_similarity(out, ref, dim=-1)
    print(f"int8 SigLIP (tiny): per-token cosine to float32 min {cos.min():.5f}")
    assert out.shape == ref.shape and cos.min().item() >= 0.999
    assert torch.nn.functional.cosine_similarity(alone, out[1:2], dim=-1).min().item() >= 0.999


def test_siglip_attention_takes_8_bit_inputs_per_32_at_the_real_width():
    """The default swap at SigLIP's real width (1152: 3456 q/k/v outputs, the kernel's tiles; inputs 1152, two
    whole chunks of 512 and a short one): the attention's q/k/v and output as `Q8GroupLinear` where our kernels
    run, the MLP as `Int8LinearBias`; one block's output within the gate of float32's (a layout or bias slip
    gives ~0). Real size, 27 blocks: min 0.99985 (eval_vision.py --simulate-q8-attention)."""
    from mmsdk.decoder import native
    from mmsdk.encoders.accelerate import Q8GroupLinear, accelerate_siglip_
    from mmsdk.encoders.siglip import SiglipVisionConfig, SiglipVisionEncoder

    if not native.available("q8g_matmul"):
        pytest.skip("CPU has neither AVX-512 VNNI nor AVX2 + FMA (the kernels' instructions)")
    torch.manual_seed(0)
    encoder = SiglipVisionEncoder(SiglipVisionConfig(num_hidden_layers=1, image_size=112)).eval()
    pixels = torch.randn(2, 3, 112, 112)
    with torch.inference_mode():
        for name, p in encoder.named_parameters():  # the module's parameters start uninitialized
            p.copy_(1.0 + 0.1 * torch.randn(p.shape) if "norm" in name and name.endswith("weight")
                    else 0.02 * torch.randn(p.shape))
        ref = encoder(pixels)
        accelerate_siglip_(encoder)
        out = encoder(pixels)
    attn = encoder.layers[0].attn
    assert isinstance(attn.qkv_proj, Q8GroupLinear) and isinstance(attn.o_proj, Q8GroupLinear)
    assert torch.nn.functional.cosine_similarity(out, ref, dim=-1).min().item() >= 0.999


@pytest.mark.parametrize("shape", [(2, 24, 9, 7), (1, 40, 16, 16)])  # 63 pixels: a block and a tail; 256: whole blocks
def test_channel_norm_kernel_matches_timm(shape):
    """`native.rms_norm_act_2d` against timm's RmsNormAct2d (GELU tanh) and RmsNorm2d, out of place and in place."""
    from functools import partial

    from mmsdk.decoder import native
    from timm.layers.norm import RmsNorm2d
    from timm.layers.norm_act import RmsNormAct2d

    if not native.available("rms_norm_act_2d"):
        pytest.fail("our kernels did not build")  # a build failure is an error, not a skip
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)) * 3
    act, plain = RmsNormAct2d(shape[1], act_layer=partial(torch.nn.GELU, approximate="tanh")), RmsNorm2d(shape[1])
    with torch.no_grad():
        act.weight.uniform_(0.5, 1.5)
        plain.weight.copy_(act.weight)
        for timm_norm, gelu in ((act, True), (plain, False)):
            ref = timm_norm(x.clone())
            out = native.rms_norm_act_2d(x, timm_norm.weight, timm_norm.eps, gelu)
            inplace = x.clone()
            native.rms_norm_act_2d(inplace, timm_norm.weight, timm_norm.eps, gelu, out=inplace)
            assert (out - ref).abs().max().item() <= 1e-5  # float32 rounding; a wrong channel or pixel is ~1
            assert (inplace - out).abs().max().item() <= 1e-6


def test_depthwise_conv_kernel_matches_torch():
    """`DepthwiseConv2d` (`native.dwconv2d`) against the stride-2 depthwise convolutions it replaces: timm's
    Conv2dSame (asymmetric padding, even and odd sizes) and a padded nn.Conv2d, 3 x 3 and 5 x 5, with a bias."""
    from mmsdk.decoder import native
    from mmsdk.encoders.accelerate import DepthwiseConv2d
    from timm.layers.conv2d_same import Conv2dSame

    if not native.available("dwconv2d"):
        pytest.fail("our kernels did not build")  # a build failure is an error, not a skip
    g = torch.Generator().manual_seed(0)
    for (H, W), k, same, bias in (((9, 7), 3, True, False), ((8, 10), 5, True, True), ((11, 6), 5, False, True),
                                  ((12, 12), 3, False, False)):
        conv = (Conv2dSame(6, 6, k, 2, groups=6, bias=bias) if same
                else torch.nn.Conv2d(6, 6, k, 2, padding=k // 2, groups=6, bias=bias))
        assert DepthwiseConv2d.takes(conv) and not DepthwiseConv2d.takes(torch.nn.Conv2d(6, 6, k, 1, groups=6))
        x = torch.randn(2, 6, H, W, generator=g)
        with torch.no_grad():
            ref, out = conv(x), DepthwiseConv2d(conv)(x)
        assert out.shape == ref.shape
        assert (out - ref).abs().max().item() <= 1e-5  # float32 rounding; a shifted tap or row is ~1
    # rows wider than the kernel's buffers go through the convolution itself
    conv = torch.nn.Conv2d(2, 2, 3, 2, padding=1, groups=2)
    x = torch.randn(1, 2, 3, native.library().max_dwconv_w() + 1, generator=g)
    assert not native.takes_dwconv2d(x)
    with torch.no_grad():
        assert torch.allclose(DepthwiseConv2d(conv)(x), conv(x), rtol=0, atol=1e-5)


def test_mobilenet_norm_swap_keeps_the_features(gemma3n):
    """`accelerate_mobilenet_` swaps every channel norm and stride-2 depthwise convolution of the
    (channel-scaled) MobileNet-V5 and the tower's output stays float32's, through both ConvNormAct norms
    (in place) and standalone ones."""
    from mmsdk.encoders.accelerate import ChannelNorm2d, DepthwiseConv2d, accelerate_mobilenet_

    tower = load_gemma3n_vision(gemma3n.state_dict(), gemma3n.config.to_dict())
    config = ImageProcessorConfig(**{**GEMMA3N_IMAGE.__dict__, "size": {"height": 128, "width": 128}})
    pixels = preprocess([noise_image(200, 300, 1)], config).pixel_values
    with torch.inference_mode():
        ref = tower(pixels)
        n_norms = sum(type(m).__name__ in ("RmsNorm2d", "RmsNormAct2d") for m in tower.backbone.modules())
        n_dw = sum(DepthwiseConv2d.takes(m) for m in tower.backbone.modules())
        accelerate_mobilenet_(tower.backbone)
        out = tower(pixels)
    swapped = [m for m in tower.backbone.modules() if isinstance(m, ChannelNorm2d)]
    assert len(swapped) == n_norms and any(m.inplace for m in swapped) and not all(m.inplace for m in swapped)
    assert sum(isinstance(m, DepthwiseConv2d) for m in tower.backbone.modules()) == n_dw > 0
    assert (out - ref).abs().max().item() <= 1e-4
