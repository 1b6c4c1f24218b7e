"""A Gemma 3 GGUF with llama.cpp's mmproj beside it: both files written here in the layout llama.cpp's
`convert_hf_to_gguf.py` produces (names from gguf's own tensor map, +1 on Gemma RMSNorms only, no
transposes, `mm.input_projection` forced to F16) from a small random transformers model, then compared
with transformers on the same weights."""
import numpy as np
import pytest
import torch

import mmsdk
from _tiny import gemma3_gguf_writer, tiny_text_config
from mmsdk import chat_format, media
from mmsdk.decoder.errors import ModelLoadError
from mmsdk.encoders.gemma3_vision import normalize_key
from mmsdk.encoders.gguf_mmproj import GGUF_TO_NATIVE, load_mmproj
from mmsdk.encoders.image_preprocess import preprocess
from vision_fixtures import SMALL_SIGLIP, noise_image, randomize

# Where tiny_vocab() puts <start_of_image>, <end_of_image>, <image_soft_token>; the config names the same ids.
BOI_ID, EOI_ID, SOFT_ID = 7, 8, 9
SPECIALS_AND_BYTES = 10 + 256


def small_gemma3_vlm(**text):
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    text = tiny_text_config(**{"sliding_window": 32, "max_position_embeddings": 512, **text}).to_dict()
    cfg = Gemma3Config(text_config=text, vision_config=SMALL_SIGLIP, mm_tokens_per_image=16,
                       boi_token_index=BOI_ID, eoi_token_index=EOI_ID, image_token_index=SOFT_ID)
    torch.manual_seed(0)
    model = Gemma3ForConditionalGeneration(cfg).eval()
    randomize(model)
    with torch.no_grad():  # the converter stores this one as F16: make it exactly representable
        p = model.model.multi_modal_projector.mm_input_projection_weight
        p.copy_(p.half().float())
        # Zero logits for special and byte tokens: greedy text is then letters, comparable as a string.
        model.get_input_embeddings().weight[: SPECIALS_AND_BYTES] = 0
    return model


def write_mmproj(ref, path, *, projector="gemma3", drop=(), reshape=()):
    """`convert_hf_to_gguf.py --mmproj` (`Gemma3VisionModel`) for `ref`, with optional damage."""
    import gguf

    vc = ref.config.vision_config
    w = gguf.GGUFWriter(str(path), arch="clip")
    w.add_type(gguf.GGUFType.MMPROJ)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_clip_has_vision_encoder(True)
    w.add_vision_projection_dim(ref.config.text_config.hidden_size)
    w.add_vision_image_size(vc.image_size)
    w.add_vision_patch_size(vc.patch_size)
    w.add_vision_embedding_length(vc.hidden_size)
    w.add_vision_feed_forward_length(vc.intermediate_size)
    w.add_vision_block_count(vc.num_hidden_layers)
    w.add_vision_head_count(vc.num_attention_heads)
    w.add_vision_image_mean([0.5, 0.5, 0.5])
    w.add_vision_image_std([0.5, 0.5, 0.5])
    w.add_clip_projector_type(projector)
    w.add_vision_attention_layernorm_eps(vc.layer_norm_eps)
    w.add_vision_use_gelu(True)
    # 16 x 16 patches into 16 tokens is 4 x 4 pooling, the default: the converter writes no scale factor.
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.MMPROJ, vc.num_hidden_layers)
    for key, t in ref.state_dict().items():
        key = normalize_key(key)
        if not key.startswith(("vision_tower.", "multi_modal_projector.")):
            continue
        key = key.replace("_weight", ".weight")
        name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if name in drop:
            continue
        t = t.float()
        if "soft_emb_norm.weight" in name:
            t = t + 1  # the only norm the converter shifts (Gemma's RMSNorm); SigLIP's LayerNorms stay
        arr = t.numpy()
        if name in reshape:
            arr = arr[:-1]
        if "input_projection" in name:
            arr = arr.astype(np.float16)
        w.add_tensor(name, np.ascontiguousarray(arr))
    _finish(w)


def write_text_gguf(ref, path):
    """`convert_hf_to_gguf.py` (`Gemma3Model`) for `ref`'s text model, with a SentencePiece vocabulary."""
    import gguf

    tc = ref.config.text_config
    w, tokens = gemma3_gguf_writer(path, tc, "tiny-gemma3-vlm", gguf.LlamaFileType.ALL_F32)
    w.add_add_bos_token(True)
    w.add_add_space_prefix(False)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GEMMA3, tc.num_hidden_layers)
    for key, t in ref.state_dict().items():
        if not key.startswith("model.language_model."):
            continue  # vision tensors go to the mmproj; lm_head is tied to the embedding
        key = "model." + key.removeprefix("model.language_model.")
        t = t.float()[: len(tokens)] if "embed_tokens" in key else t.float()
        if key.endswith("norm.weight"):
            t = t + 1  # Gemma3RMSNorm's (1 + w)
        w.add_tensor(names.get_name(key, try_suffixes=(".weight",)), np.ascontiguousarray(t.numpy()))
    _finish(w)


def _finish(w):
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gemma3_gguf")
    ref = small_gemma3_vlm()
    write_text_gguf(ref, folder / "tiny-gemma3-F32.gguf")
    write_mmproj(ref, folder / "mmproj-tiny-gemma3-F32.gguf")
    return ref, folder


def test_key_map_matches_gguf_tensor_names(files):
    import gguf

    _, folder = files
    stored = {t.name for t in gguf.GGUFReader(folder / "mmproj-tiny-gemma3-F32.gguf").tensors}
    ours = {k.format(i) for k in GGUF_TO_NATIVE for i in range(SMALL_SIGLIP["num_hidden_layers"])}
    assert stored == ours


def test_image_features_match_transformers(files):
    ref, folder = files
    tower, image_config = load_mmproj(folder / "mmproj-tiny-gemma3-F32.gguf")
    assert tower.config.mm_tokens_per_image == 16 and image_config.height == 224
    pixels = preprocess([noise_image(300, 900, seed=1), noise_image(224, 224, seed=2)], image_config).pixel_values
    with torch.no_grad():
        ours = tower(pixels)
        theirs = ref.get_image_features(pixel_values=pixels).pooler_output
    assert ours.shape == theirs.shape == (pixels.shape[0], 16, 64)
    assert (ours - theirs).abs().max().item() <= 1e-4


def test_load_gguf_with_mmproj_beside_describes_like_transformers(files):
    ref, folder = files
    asst = mmsdk.load(folder / "tiny-gemma3-F32.gguf", dtype="float32")
    assert asst.info.modalities == {"text", "image"}
    assert asst.encoders.vision.config.image_token_index == SOFT_ID  # from the GGUF vocabulary
    image = noise_image(300, 900, seed=4)  # wide: pan-and-scan adds crops
    out = asst.describe_image(image, "the", max_tokens=5)
    message = {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "the"}]}
    text, images, _ = chat_format.render_messages([message])
    p = media.encode_prompt(asst.model, asst.tokenizer, asst.encoders, text, images)
    ids = torch.tensor([p.ids])
    pixels = preprocess(images, asst.encoders.image_config).pixel_values
    with torch.no_grad():
        gen = ref.generate(input_ids=ids, pixel_values=pixels, token_type_ids=(ids == SOFT_ID).long(),
                           max_new_tokens=5, do_sample=False, eos_token_id=None)[0, ids.shape[1]:]
    assert out == asst.tokenizer.decode(gen.tolist())


def test_explicit_mmproj_and_none_beside(files, tmp_path):
    ref, folder = files
    text = tmp_path / "alone.gguf"
    text.write_bytes((folder / "tiny-gemma3-F32.gguf").read_bytes())
    assert mmsdk.load(text).info.modalities == {"text"}
    asst = mmsdk.load(text, mmproj=folder / "mmproj-tiny-gemma3-F32.gguf")
    assert asst.info.modalities == {"text", "image"}


def test_int8_encoder_follows_a_quantized_load(files):
    """A float file keeps a float32 SigLIP; a quantized load (here quantize="int8") swaps in its int8 MLPs."""
    from mmsdk.encoders.accelerate import Int8LinearBias

    _, folder = files
    for quantize, int8 in ((None, False), ("int8", True)):
        asst = mmsdk.load(folder / "tiny-gemma3-F32.gguf", quantize=quantize)
        assert asst._loaded.quantized == int8
        assert any(isinstance(m, Int8LinearBias) for m in asst.encoders.vision.modules()) == int8


@pytest.mark.parametrize("damage, message", [
    (dict(projector="idefics3"), "supported: gemma3"),
    (dict(drop=("v.blk.1.ffn_down.weight",)), "v.blk.1.ffn_down.weight"),
    (dict(reshape=("v.position_embd.weight",)), "v.position_embd.weight"),
])
def test_bad_mmproj_is_named_load_error(files, tmp_path, damage, message):
    ref, _ = files
    path = tmp_path / "mmproj-bad.gguf"
    write_mmproj(ref, path, **damage)
    with pytest.raises(ModelLoadError) as e:
        load_mmproj(path)
    assert message in str(e.value) and "mmproj-bad.gguf" in str(e.value)


def test_mmproj_of_another_width_is_load_error(files, tmp_path):
    ref, folder = files
    other = small_gemma3_vlm(hidden_size=96)
    path = tmp_path / "mmproj-other.gguf"
    write_mmproj(other, path)
    with pytest.raises(ModelLoadError, match="another model"):
        mmsdk.load(folder / "tiny-gemma3-F32.gguf", mmproj=path)
