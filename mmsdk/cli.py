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
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmsdk", description="On-device multimodal assistant.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except MMSDKError as e:
        print(f"mmsdk: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
