"""`mmsdk transcribe AUDIO`: speech to text, offline."""
import logging

logger = logging.getLogger(__name__)


def register(subparsers):
    p = subparsers.add_parser("transcribe", help="transcribe speech in an audio file (wav, flac, ogg, mp3, m4a)")
    p.add_argument("audio", help="audio file")
    p.add_argument("--model", help="model checkpoint folder or .gguf (default: the bundled speech model)")
    p.add_argument("--language", help="spoken language as an ISO code, e.g. en (default: detect)")
    p.add_argument("--timestamps", action="store_true", help="print one [start - end] line per segment")
    p.add_argument("--threads", type=int, help="CPU threads (default: up to 4)")
    p.set_defaults(func=transcribe_command)


def transcribe_command(args) -> int:
    from .speech import transcribe

    if args.model:
        # Gemma 3n's audio path joins once its decoder lands; until then the bundled model answers.
        logger.warning("--model %s: transcribing with the bundled speech model", args.model)
    result = transcribe(args.audio, language=args.language, progress=True, threads=args.threads)
    if args.timestamps:
        for start, end, text in result.segments:
            print(f"[{_clock(start)} - {_clock(end)}] {text}")
    else:
        print(result.text)
    return 0


def _clock(seconds: float) -> str:
    m, s = divmod(seconds, 60)
    return f"{int(m):02d}:{s:05.2f}"
