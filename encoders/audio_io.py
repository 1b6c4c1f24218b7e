"""Audio input as pure functions: decode a path, bytes or `(ndarray, sample_rate)` into mono float32
samples at 16 kHz, the rate every speech model here expects.

WAV, FLAC, OGG and MP3 are decoded by libsndfile (soundfile); anything else (M4A, AAC, WMA...) goes
through librosa, and when librosa finds no ffmpeg or GStreamer on the machine, through PyAV, whose
wheels bundle FFmpeg (it is installed with faster-whisper).
"""
import io
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

from ..decoder.errors import InputError

SAMPLE_RATE = 16_000
_SOUNDFILE_SUFFIXES = {".wav", ".wave", ".flac", ".ogg", ".oga", ".mp3"}
_EXPECTED = "a WAV, FLAC, OGG, MP3 or M4A file, its bytes, or an (ndarray, sample_rate) pair"
# libsndfile reads a cut-off WAV or OGG without an error; these notes in its log reveal the cut.
_TRUNCATION_NOTES = ("(should be", "lacks an end-of-stream bit")


def load_audio(source, *, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode `source` to mono float32 samples in [-1, 1] at `sample_rate` Hz, shape (N,).

    `source` is a path, the bytes of an audio file, or an `(ndarray, sample_rate)` pair with
    samples shaped (N,), (N, channels) or (channels, N). Raises `InputError` naming the input
    when it is empty, truncated, not audio or not decodable. Silence is valid audio."""
    name = describe_source(source)
    if isinstance(source, tuple):
        samples, rate = _from_array(source, name)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        samples, rate = _decode_bytes(bytes(source), name)
    elif isinstance(source, (str, os.PathLike)):
        samples, rate = _decode_path(Path(source), name)
    else:
        raise InputError(f"audio input {name} has type {type(source).__name__}; expected {_EXPECTED}")
    samples = to_mono(samples)
    if samples.size == 0:
        raise InputError(f"audio input {name} contains no samples; expected {_EXPECTED} with sound in it")
    if not np.all(np.isfinite(samples)):
        raise InputError(f"audio input {name} contains NaN or infinite samples")
    return resample(samples, rate, sample_rate)


def describe_source(source) -> str:
    """A short name for an input, used in error messages."""
    if isinstance(source, (str, os.PathLike)):
        return repr(str(source))
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    if isinstance(source, tuple) and source and isinstance(source[0], np.ndarray):
        return f"<array {tuple(source[0].shape)}>"
    return f"<{type(source).__name__}>"


def to_mono(samples: np.ndarray) -> np.ndarray:
    """(N,) or (N, channels) → (N,) float32, averaging the channels."""
    samples = np.asarray(samples, dtype=np.float32)
    return samples.mean(axis=1) if samples.ndim == 2 else samples


def resample(samples: np.ndarray, rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    """Band-limited resampling (soxr, high quality) from `rate` to `target` Hz, ceil(N target / rate)
    samples long, as `librosa.resample` gives them (soxr itself, without librosa's import: scipy.signal
    and numba, 3-9 s before a first transcription)."""
    if rate == target:
        return np.ascontiguousarray(samples, dtype=np.float32)
    import soxr

    out = soxr.resample(np.ascontiguousarray(samples, dtype=np.float32), rate, target, quality="HQ")
    n = int(np.ceil(samples.shape[-1] * target / rate))
    return np.pad(out, (0, max(0, n - out.shape[-1])))[:n].astype(np.float32, copy=False)


def _from_array(pair: tuple, name: str) -> tuple[np.ndarray, int]:
    if len(pair) != 2:
        raise InputError(f"audio input {name} is a tuple of {len(pair)}; expected (ndarray, sample_rate)")
    samples, rate = pair
    if not isinstance(rate, (int, np.integer)) or isinstance(rate, bool) or rate <= 0:
        raise InputError(f"audio input {name} has sample rate {rate!r}; expected a positive integer in Hz")
    samples = np.asarray(samples)
    if samples.ndim not in (1, 2) or not (np.issubdtype(samples.dtype, np.number)):
        raise InputError(
            f"audio input {name} is a {samples.ndim}-d {samples.dtype} array; expected numeric samples "
            f"shaped (N,), (N, channels) or (channels, N)"
        )
    if samples.ndim == 2 and samples.shape[0] < samples.shape[1]:
        samples = samples.T  # (channels, N): channels are the short axis
    return _int_to_float(samples), int(rate)


def _int_to_float(samples: np.ndarray) -> np.ndarray:
    """Integer PCM → float in [-1, 1]; float input is kept as is."""
    if np.issubdtype(samples.dtype, np.unsignedinteger):
        half = float(np.iinfo(samples.dtype).max // 2 + 1)
        return (samples.astype(np.float32) - half) / half
    if np.issubdtype(samples.dtype, np.integer):
        return samples.astype(np.float32) / float(-np.iinfo(samples.dtype).min)
    return samples.astype(np.float32)


def _decode_path(path: Path, name: str) -> tuple[np.ndarray, int]:
    if not path.is_file():
        raise InputError(f"audio input {name} does not exist or is not a file; expected {_EXPECTED}")
    if path.stat().st_size == 0:
        raise InputError(f"audio input {name} is an empty file; expected {_EXPECTED}")
    if path.suffix.lower() in _SOUNDFILE_SUFFIXES:
        return _decode_soundfile(path, name)
    try:
        return _decode_librosa(path, name)
    except InputError as librosa_error:
        try:
            return _decode_pyav(path, name)
        except InputError:
            raise librosa_error from None


def _decode_bytes(data: bytes, name: str) -> tuple[np.ndarray, int]:
    if not data:
        raise InputError(f"audio input {name} is empty; expected {_EXPECTED}")
    try:
        return _decode_soundfile(io.BytesIO(data), name)
    except InputError as soundfile_error:
        if "truncated" in str(soundfile_error):
            raise
        # Containers libsndfile cannot open (M4A...) need a real file for librosa's audioread fallback.
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp, "input")
            path.write_bytes(data)
            try:
                return _decode_path(path, name)
            except InputError:
                raise soundfile_error from None


def _decode_soundfile(file, name: str) -> tuple[np.ndarray, int]:
    import soundfile as sf

    try:
        with sf.SoundFile(file) as f:
            if any(note in f.extra_info for note in _TRUNCATION_NOTES):
                raise InputError(f"audio input {name} is truncated (the file ends before its data does)")
            samples = f.read(dtype="float32", always_2d=True)
            rate = f.samplerate
    except InputError:
        raise
    except Exception as e:  # libsndfile reports corrupt or unknown data as several exception types
        raise InputError(f"cannot decode audio input {name}: {_first_line(e)}; expected {_EXPECTED}") from e
    return samples, rate


def _decode_librosa(path: Path, name: str) -> tuple[np.ndarray, int]:
    import librosa

    try:
        with warnings.catch_warnings():
            # librosa warns when it falls back from soundfile to audioread; the fallback is the point here.
            warnings.simplefilter("ignore")
            samples, rate = librosa.load(path, sr=None, mono=False)
    except Exception as e:  # audioread raises its own hierarchy, soundfile its own; both mean "undecodable"
        raise InputError(
            f"cannot decode audio input {name}: {_first_line(e) or 'not a recognised audio format'}; "
            f"expected {_EXPECTED}"
        ) from e
    samples = np.asarray(samples, dtype=np.float32)
    return (samples.T if samples.ndim == 2 else samples), int(rate)


def _decode_pyav(path: Path, name: str) -> tuple[np.ndarray, int]:
    try:
        import av
    except ImportError as e:
        raise InputError(f"cannot decode audio input {name}: PyAV is not installed") from e
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise InputError(f"audio input {name} has no audio stream")
            # FFmpeg's resampler hands back mono float at 16 kHz, whatever the source layout and rate.
            resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
            chunks = [out.to_ndarray().reshape(-1) for frame in container.decode(audio=0)
                      for out in resampler.resample(frame)]
            chunks += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
    except InputError:
        raise
    except Exception as e:  # av.error.* for undecodable data
        raise InputError(f"cannot decode audio input {name}: {_first_line(e)}; expected {_EXPECTED}") from e
    return (np.concatenate(chunks) if chunks else np.zeros(0, np.float32)), SAMPLE_RATE


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else ""
