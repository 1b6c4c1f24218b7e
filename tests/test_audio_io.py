"""Audio decoding: every fixture format, arrays and bytes, and bad input → InputError."""
import numpy as np
import pytest
import soundfile as sf

from audio_wer import FIXTURES, fixture_transcripts, write_m4a
from mmsdk.decoder.errors import InputError
from mmsdk.encoders.audio_io import SAMPLE_RATE, load_audio


@pytest.mark.parametrize("name", [name for name, _ in fixture_transcripts()] + ["long_3min.ogg"])
def test_fixture_formats_decode_to_16k_mono(name):
    x = load_audio(FIXTURES / name)
    assert x.dtype == np.float32 and x.ndim == 1
    assert 2.0 < len(x) / SAMPLE_RATE < 200
    assert 0.05 < np.abs(x).max() <= 1.5


def test_bytes_and_paths_agree():
    path = FIXTURES / "c02_engb_f2_22k.flac"
    np.testing.assert_array_equal(load_audio(path), load_audio(path.read_bytes()))
    np.testing.assert_array_equal(load_audio(str(path)), load_audio(bytearray(path.read_bytes())))


def test_m4a_decodes_like_the_source(tmp_path):
    speech = load_audio(FIXTURES / "c01_enus_16k.wav")
    m4a = write_m4a(speech, SAMPLE_RATE, tmp_path / "memo.m4a")
    for decoded in (load_audio(m4a), load_audio(m4a.read_bytes())):
        assert abs(len(decoded) - len(speech)) < 0.2 * SAMPLE_RATE  # AAC pads to whole 1024-sample frames
        # After AAC's encoder delay (1024 samples of priming), loudness per 50 ms follows the source.
        lag = int(np.argmax(np.correlate(decoded[:20000], speech[:10000], "valid")))
        assert lag <= 2048
        n = (min(len(decoded) - lag, len(speech)) // 800) * 800
        envelope = [np.sqrt(np.square(x[:n]).reshape(-1, 800).mean(axis=1)) for x in (decoded[lag:], speech)]
        assert np.corrcoef(*envelope)[0, 1] > 0.99


def test_array_inputs_mix_down_and_resample():
    t = np.arange(8000) / 8000
    tone = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    stereo = np.stack([tone, tone])  # (channels, N)
    out = load_audio((stereo, 8000))
    assert out.shape == (16000,)
    np.testing.assert_allclose(load_audio((stereo.T, 8000)), out)
    pcm16 = (tone * 32767).astype(np.int16)
    np.testing.assert_allclose(load_audio((pcm16, 8000)), load_audio((tone, 8000)), atol=1e-3)
    same_rate = load_audio((tone, 16000))
    np.testing.assert_array_equal(same_rate, tone)


def test_silence_is_valid_audio():
    assert not load_audio((np.zeros(16000, np.float32), 16000)).any()


@pytest.mark.parametrize(
    "make, expect",
    [
        (lambda tmp: tmp / "missing.wav", "does not exist"),
        (lambda tmp: _write(tmp / "empty.wav", b""), "empty"),
        (lambda tmp: _write(tmp / "notes.txt", b"hello, this is not audio\n" * 40), "cannot decode"),
        (lambda tmp: _write(tmp / "noise.wav", bytes(range(256)) * 20), "cannot decode"),
        (lambda tmp: _truncated(tmp, "c01_enus_16k.wav", 0.5), "truncated"),
        (lambda tmp: _truncated(tmp, "c01_enus_16k.wav", 20), "cannot decode"),
        (lambda tmp: _truncated(tmp, "c02_engb_f2_22k.flac", 0.5), "cannot decode"),
        (lambda tmp: _truncated(tmp, "c04_rp_f4_44k_stereo.ogg", 0.5), "truncated"),
        (lambda tmp: _write(tmp / "header_only.wav", _wav_header_only(tmp)), "no samples"),
    ],
)
def test_bad_files_raise_input_error_naming_the_input(tmp_path, make, expect):
    path = make(tmp_path)
    with pytest.raises(InputError, match=expect) as e:
        load_audio(path)
    assert path.name in str(e.value)


@pytest.mark.parametrize(
    "source, expect",
    [
        (b"", "empty"),
        (b"\x00\x01garbage" * 100, "cannot decode"),
        ((np.zeros(0, np.float32), 16000), "no samples"),
        ((np.zeros(100, np.float32), 0), "sample rate"),
        ((np.array(["a", "b"]), 16000), "numeric"),
        ((np.full(100, np.nan, np.float32), 16000), "NaN"),
        ((np.zeros((2, 2, 2)), 16000), "array"),
        (12345, "type int"),
    ],
)
def test_bad_values_raise_input_error(source, expect):
    with pytest.raises(InputError, match=expect):
        load_audio(source)


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def _truncated(tmp, name: str, keep: float):
    data = (FIXTURES / name).read_bytes()
    n = int(len(data) * keep) if keep < 1 else int(keep)
    return _write(tmp / f"cut_{name}", data[:n])


def _wav_header_only(tmp) -> bytes:
    sf.write(tmp / "zero.wav", np.zeros(0, np.float32), 16000)
    return (tmp / "zero.wav").read_bytes()
