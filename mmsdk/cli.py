"""The `mmsdk` command. Each feature module adds its subcommands through `register(subparsers)`,
so this file stays a dispatcher."""
import argparse
import importlib
import logging
import sys

from .errors import MMSDKError

# Modules that define `register(subparsers)`; each subcommand sets `func(args) -> int`.
_COMMAND_MODULES = [
    "mmsdk._cmd_text",
    "mmsdk._cmd_bench",
    "mmsdk._cmd_docs",
    "mmsdk._cmd_media_audio",
    "mmsdk._cmd_media_image",
    "mmsdk._cmd_serve",
    "mmsdk._cmd_pull",
]


class _Parser(argparse.ArgumentParser):
    """Bad command-line arguments end in one line, like every other error (argparse prints its usage too)."""

    def error(self, message):
        print(f"error: {message} (see: {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mmsdk", description="On-device multimodal assistant.")
    sub = parser.add_subparsers(dest="command", required=True)  # subcommands' parsers are _Parsers too
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except (MMSDKError, ValueError) as e:  # a bad value (InputError is one) or a model that cannot load
        return _error(str(e))
    except OSError as e:  # a path that cannot be read or written
        return _error(f"{e.strerror or e}: {e.filename}" if e.filename else str(e))
    except KeyboardInterrupt:
        return 130


def _error(message: str) -> int:
    print(f"error: {' '.join(message.split())}", file=sys.stderr)  # one line, whatever the message holds
    return 2


if __name__ == "__main__":
    sys.exit(main())
