"""Transcription with the bundled Whisper base: fixtures' WER, a 3-minute clip across window seams,
silence, and the window planner."""
import numpy as np
import pytest

from audio_wer import MAX_WER, FIXTURES, align, fixture_transcripts, long_clip_sentences, wer, words, write_m4a
from mmsdk.bundled import WHISPER_SHA256, sha256_file
from mmsdk.encoders.audio_io import SAMPLE_RATE, load_audio
from mmsdk.speech import MAX_WINDOW_S, Transcript, bundled_model_dir, plan_windows, transcribe

THREADS = 2


# --- window planning (pure, fast) ------------------------------------------------------------------


def _speech_like(seconds: float, pauses: list[float], seed=0) -> np.ndarray:
    """Noise bursts standing in for speech, silent (but for a faint hiss) 0.6 s at each pause."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(int(seconds * SAMPLE_RATE)).astype(np.float32) * 0.3
    for p in pauses:
        x[int(p * SAMPLE_RATE) : int((p + 0.6) * SAMPLE_RATE)] *= 0.001
    return x


def _check_cover(windows, n):
    assert windows[0].start == 0 and windows[-1].end == n
    for w in windows:
        assert w.end - w.start <= MAX_WINDOW_S * SAMPLE_RATE
        assert w.start <= w.keep_from < w.keep_to <= w.end
    for a, b in zip(windows, windows[1:]):
        assert b.keep_from <= a.keep_to and b.start < a.end  # keep ranges meet or share only a pause


def test_short_audio_is_one_window():
    assert len(plan_windows(np.zeros(SAMPLE_RATE * 30, np.float32))) == 1


def test_cuts_land_in_pauses():
    pauses = [7.0, 24.0, 33.0, 51.0, 70.0]
    x = _speech_like(80, pauses)
    windows = plan_windows(x)
    _check_cover(windows, len(x))
    for a in windows[:-1]:
        cut = (a.keep_to + windows[windows.index(a) + 1].keep_from) / 2 / SAMPLE_RATE
        assert any(p <= cut <= p + 0.6 for p in pauses), cut
        assert a.end - a.keep_to < 0.6 * SAMPLE_RATE  # only the pause is shared


def test_continuous_audio_overlaps_by_midpoint_rule():
    x = _speech_like(95, [])
    windows = plan_windows(x)
    _check_cover(windows, len(x))
    for a, b in zip(windows, windows[1:]):
        assert a.keep_to == b.keep_from and a.end - a.keep_to == SAMPLE_RATE


# --- the bundled model -----------------------------------------------------------------------------


def test_bundled_model_is_assembled_atomically(mmsdk_cache):
    folder = bundled_model_dir()
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.bin", "tokenizer.json", "vocabulary.txt"]
    size = (folder / "model.bin").stat().st_size
    assert size > 140e6
    assert bundled_model_dir() == folder and (folder / "model.bin").stat().st_size == size
    with open(folder / "model.bin", "r+b") as f:  # same size, one byte changed: a size check would miss it
        f.seek(size // 2)
        byte = f.read(1)
        f.seek(size // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    bundled_model_dir()
    assert sha256_file(folder / "model.bin") == WHISPER_SHA256["model.bin"]  # rebuilt, not loaded as is


def test_silence_gives_empty_transcript(tmp_path):
    import soundfile as sf

    assert transcribe((np.zeros(5 * SAMPLE_RATE, np.float32), SAMPLE_RATE), threads=THREADS) == Transcript("", [])
    sf.write(tmp_path / "silence.wav", np.zeros(40 * 8000, np.int16), 8000)
    assert transcribe(tmp_path / "silence.wav", threads=THREADS).text == ""


@pytest.mark.slow
@pytest.mark.parametrize("name, reference", fixture_transcripts())
def test_fixture_wer(name, reference):
    result = transcribe(FIXTURES / name, language="en", threads=THREADS)
    assert wer(reference, result.text) <= MAX_WER, result.text
    assert result.segments and result.segments[0][0] >= 0


@pytest.mark.slow
def test_m4a_voice_memo(tmp_path):
    name, reference = fixture_transcripts()[2]
    m4a = write_m4a(load_audio(FIXTURES / name), SAMPLE_RATE, tmp_path / "memo.m4a")
    assert wer(reference, transcribe(m4a, language="en", threads=THREADS).text) <= MAX_WER


@pytest.mark.slow
def test_language_detection_finds_english():
    result = transcribe(FIXTURES / "c02_engb_f2_22k.flac", threads=THREADS)
    assert wer(fixture_transcripts()[1][1], result.text) <= MAX_WER


@pytest.fixture(scope="module")
def long_result():
    return transcribe(FIXTURES / "long_3min.ogg", language="en", threads=THREADS)


@pytest.mark.slow
def test_long_clip_segments_cover_it_in_order(long_result):
    duration = len(load_audio(FIXTURES / "long_3min.ogg")) / SAMPLE_RATE
    assert duration > 170
    segs = long_result.segments
    starts = [s for s, _, _ in segs]
    assert starts == sorted(starts) and all(s <= e for s, e, _ in segs)
    assert all(e1 <= s2 + 0.5 for (_, e1, _), (s2, _, _) in zip(segs, segs[1:]))
    assert segs[0][0] < 5 and segs[-1][1] > duration - 5
    assert " ".join(t for _, _, t in segs) == long_result.text
    sentences = long_clip_sentences()
    assert wer(" ".join(t for _, _, t in sentences), long_result.text) <= MAX_WER


@pytest.mark.slow
def test_long_clip_loses_and_doubles_no_word_at_seams(long_result):
    sentences = long_clip_sentences()
    windows = plan_windows(load_audio(FIXTURES / "long_3min.ogg"))
    assert len(windows) >= 6
    ref, hyp = [], words(long_result.text)
    spans = []  # reference word index range per sentence
    for _, _, text in sentences:
        spans.append((len(ref), len(ref) + len(words(text))))
        ref += words(text)
    ops = align(ref, hyp)
    # Reference words next to each seam: the last two before it and the first two after it.
    seam_words = set()
    for a, b in zip(windows, windows[1:]):
        seam = (a.keep_to + b.keep_from) / 2 / SAMPLE_RATE
        before = [i for i, (s, e, _) in enumerate(sentences) if s < seam]
        after = [i for i, (s, e, _) in enumerate(sentences) if s >= seam]
        last, first = spans[before[-1]], spans[after[0]]
        seam_words |= set(range(max(last[0], last[1] - 2), last[1])) | set(range(first[0], min(first[1], first[0] + 2)))
        if sentences[before[-1]][1] > seam:  # a cut inside a sentence: guard all of it
            seam_words |= set(range(*last))
    deleted = [ref[i] for op, i, _ in ops if op == "del" and i in seam_words]
    assert not deleted, f"words lost at a seam: {deleted}"
    # An insertion between two seam words would be a doubled word.
    for k, (op, _, _) in enumerate(ops):
        if op == "ins":
            neighbours = {i for _, i, _ in ops[max(0, k - 1) : k + 2] if i is not None}
            assert not neighbours & seam_words, f"word doubled at a seam: {hyp[ops[k][2]]!r}"
    # No 3-word run of the transcript occurs more often than in the reference.
    def trigrams(ws):
        return [tuple(ws[i : i + 3]) for i in range(len(ws) - 2)]
    ref_tri = trigrams(ref)
    for t in set(trigrams(hyp)):
        assert trigrams(hyp).count(t) <= max(1, ref_tri.count(t)), t
