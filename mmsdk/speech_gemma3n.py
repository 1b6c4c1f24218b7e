"""Speech to text with the loaded model's own audio encoder (Gemma 3n): the model is asked to
transcribe each window of at most 30 s (its audio input holds 188 tokens, 30 s), the windows cut
at quiet points by `speech_windows`. The model gives no word times, so a window's segment spans
the part of the audio it owns, and words repeated across a seam are dropped by matching text."""
from __future__ import annotations

import logging

from .encoders.audio_io import SAMPLE_RATE, load_audio
from .speech import Transcript
from .speech_windows import norm_word, voiced_windows

log = logging.getLogger(__name__)

# Gemma 3n's transcription prompt (Google's Gemma 3n audio guide), the audio before the instruction.
PROMPT = "Transcribe the following speech segment in {language} into {language} text."
_LANGUAGES = {"en": "English", "de": "German", "fr": "French", "es": "Spanish", "it": "Italian",
              "pt": "Portuguese", "nl": "Dutch", "ja": "Japanese", "zh": "Chinese", "ko": "Korean",
              "ru": "Russian", "hi": "Hindi", "ar": "Arabic", "pl": "Polish", "tr": "Turkish"}
MAX_SEAM_WORDS = 8  # about the words spoken in the 1 s two windows may share


def transcription_prompt(language: str | None) -> str:
    if language is None:
        return "Transcribe this audio."
    return PROMPT.format(language=_LANGUAGES.get(language.lower(), language))


def transcribe(asst, audio, *, language: str | None = None, progress: bool = False,
               max_tokens: int = 448) -> Transcript:
    """Transcribe `audio` (path, bytes or `(ndarray, sample_rate)`) with `asst`'s audio encoder, greedily.
    Raises `InputError` for unreadable audio; silence gives an empty transcript."""
    samples = load_audio(audio)
    instruction = transcription_prompt(language)
    words: list[str] = []
    segments: list[tuple[float, float, str]] = []
    for w, chunk in voiced_windows(samples, progress=progress):
        message = {"role": "user", "content": [{"type": "audio", "audio": (chunk, SAMPLE_RATE)},
                                               {"type": "text", "text": instruction}]}
        new = asst.chat([message], max_tokens=max_tokens, temperature=0.0).text.split()
        new = new[seam_overlap(words, new):]
        if new:
            words += new
            segments.append((round(w.keep_from / SAMPLE_RATE, 2), round(w.keep_to / SAMPLE_RATE, 2), " ".join(new)))
    return Transcript(text=" ".join(words), segments=segments)


def seam_overlap(before: list[str], new: list[str], max_words: int = MAX_SEAM_WORDS) -> int:
    """How many leading words of `new` repeat the end of `before` (the audio the two windows share)."""
    for k in range(min(max_words, len(before), len(new)), 0, -1):
        if [norm_word(x) for x in before[-k:]] == [norm_word(x) for x in new[:k]]:
            return k
    return 0
