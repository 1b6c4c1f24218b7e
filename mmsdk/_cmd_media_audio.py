"""`mmsdk transcribe AUDIO`: speech to text, offline."""


def register(subparsers):
    p = subparsers.add_parser("transcribe", help="transcribe speech in an audio file (wav, flac, ogg, mp3, m4a)")
    p.add_argument("audio", help="audio file")
    p.add_argument("--model", help="model checkpoint folder or .gguf with an audio encoder, e.g. Gemma 3n "
                                   "(default: the bundled Whisper base)")
    p.add_argument("--language", help="spoken language as an ISO code, e.g. en (default: detect)")
    p.add_argument("--timestamps", action="store_true", help="print one [start - end] line per segment")
    p.add_argument("--threads", type=int, help="CPU threads (default: up to 4)")
    p.set_defaults(func=transcribe_command)


def transcribe_command(args) -> int:
    from .encoders.audio_io import SAMPLE_RATE, load_audio

    audio = (load_audio(args.audio), SAMPLE_RATE)  # a bad file fails fast, before any model loads
    if args.model:  # the model's own audio encoder (Gemma 3n); a model without one says so
        import mmsdk

        result = mmsdk.load(args.model, threads=args.threads).transcribe_audio(audio, language=args.language,
                                                                               progress=True)
    else:
        from .speech import transcribe

        result = transcribe(audio, language=args.language, progress=True, threads=args.threads)
    if args.timestamps:
        for start, end, text in result.segments:
            print(f"[{_clock(start)} - {_clock(end)}] {text}")
    else:
        print(result.text)
    return 0


def _clock(seconds: float) -> str:
    m, s = divmod(seconds, 60)
    return f"{int(m):02d}:{s:05.2f}"
