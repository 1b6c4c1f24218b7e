"""Transcribe an audio file offline with the bundled speech model, with timestamps.

    python samples/transcribe.py tests/fixtures/audio/long_3min.ogg
"""
import sys

from mmsdk.speech import transcribe

path = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/audio/c01_enus_16k.wav"
result = transcribe(path, language="en", progress=True)
for start, end, text in result.segments:
    print(f"{start:7.2f} - {end:7.2f}  {text}")
print("\n" + result.text)
