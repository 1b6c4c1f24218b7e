"""describe_image and images in chat through the public API, against transformers' greedy decoding
of the same small random Gemma 3 vision-language checkpoint."""
import io
import subprocess
import sys

import pytest
import torch

import mmsdk
from mmsdk import chat_format, media
from mmsdk.encoders.image_preprocess import preprocess
from vision_fixtures import noise_image, write_small_gemma3

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gemma3_vlm")
    ref = write_small_gemma3(folder, sliding_window=32)
    return ref, mmsdk.load(folder), folder


def test_modalities_and_info(pair):
    _, asst, _ = pair
    assert asst.info.modalities == {"text", "image"}


def test_describe_image_matches_transformers_greedy(pair):
    ref, asst, _ = pair
    image = noise_image(300, 900, seed=4)  # wide: pan-and-scan adds crops
    prompt_text = "Describe these two images."
    out = asst.describe_image(image, prompt_text, max_tokens=6)
    # The same prompt as the public path builds it, through transformers.
    message = {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": prompt_text}]}
    text, images, _ = chat_format.render_messages([message])
    p = media.encode_prompt(asst.model, asst.tokenizer, asst.encoders, text, images)
    ids = torch.tensor([p.ids])
    pixels = preprocess(images, asst.encoders.image_config).pixel_values
    with torch.no_grad():
        gen = ref.generate(input_ids=ids, pixel_values=pixels, token_type_ids=(ids == 262144).long(),
                           max_new_tokens=6, do_sample=False, eos_token_id=None)[0, ids.shape[1]:]
    assert out == asst.tokenizer.decode(gen.tolist())


def test_session_with_image_and_bytes_input(pair):
    _, asst, _ = pair
    buf = io.BytesIO()
    noise_image(200, 200, seed=5).save(buf, format="PNG")
    s = asst.session()
    r = s.send("Describe", images=[buf.getvalue()], max_tokens=4)
    assert r.usage.prompt_tokens > 16  # the soft tokens are in the prompt
    r2 = s.send("the", max_tokens=3)
    assert r2.usage.prompt_tokens < 20  # the image is not fed again


def test_bad_image_is_input_error(pair, tmp_path):
    _, asst, _ = pair
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(mmsdk.InputError, match="empty.png"):
        asst.describe_image(empty)
    cut = tmp_path / "cut.png"
    buf = io.BytesIO()
    noise_image(64, 64).save(buf, format="PNG")
    cut.write_bytes(buf.getvalue()[:100])
    with pytest.raises(mmsdk.InputError, match="cut.png"):
        asst.describe_image(cut)


def test_marker_count_mismatch(pair):
    _, asst, _ = pair
    raw = "one <start_of_image> two <start_of_image>"  # a raw prompt's markers are markers
    with pytest.raises(mmsdk.InputError, match="2 image marker"):
        media.encode_prompt(asst.model, asst.tokenizer, asst.encoders, raw, [])
    # In a message they are text (issue 20: text is text), so a chat with them has no image to miss.
    assert asst.chat([{"role": "user", "content": raw}], max_tokens=2).usage.prompt_tokens > 0


def test_cli_describe(pair, tmp_path):
    _, _, folder = pair
    img = tmp_path / "pic.png"
    noise_image(100, 100).save(img)
    r = subprocess.run([sys.executable, "-m", "mmsdk.cli", "describe", str(img), "--model", str(folder),
                        "--max-tokens", "3"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    r = subprocess.run([sys.executable, "-m", "mmsdk.cli", "describe", str(bad)], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode != 0 and "bad.jpg" in r.stderr and "Traceback" not in r.stderr


def test_an_image_asked_about_again_is_not_encoded_again(pair):
    """The second question about the same picture reuses its embeddings: the real tower's forward runs
    once per distinct image (counted by a hook), and a different image or preprocessing runs it again."""
    from mmsdk.encoders.media_cache import EncodeCache

    _, asst, _ = pair
    asst.encoders.cache = EncodeCache(size=2)
    calls = []
    hook = asst.encoders.vision.register_forward_hook(lambda mod, args, out: calls.append(args[0].shape[0]))
    image = noise_image(300, 900, seed=8)  # pan-and-scan: a whole view and crops, one batch
    try:
        first = asst.describe_image(image, max_tokens=3)
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        assert asst.describe_image(buf.getvalue(), max_tokens=3) == first  # same pixels, decoded from bytes
        assert len(calls) == 1 and calls[0] > 1
        asst.describe_image(image, max_tokens=3, pan_and_scan=False)  # other views: encoded
        asst.describe_image(noise_image(300, 900, seed=9), max_tokens=3)
        assert len(calls) == 3 and len(asst.encoders.cache) == 2
    finally:
        hook.remove()
