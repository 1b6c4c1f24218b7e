"""An on-device agent doing a two-step task with real tools: find files on disk, then compute
with what it found.

    HF_HUB_OFFLINE=1 python samples/agent.py [FOLDER] [--yes]

The task: "How many lines do the .txt files in FOLDER have in total?" The model first calls
`find_files` to list them, then `count_lines` on that list, then answers. With no FOLDER it makes
a small one with three text files, so the answer can be checked.

The file tools only reach inside FOLDER (the agent's root): every path is resolved, symbolic links
included, and one that leads outside is refused with an error the model sees. Each call is shown
and needs a "y" before it runs, unless `--yes` is given.

Tool calls are decoded under a grammar, so every call parses and has valid arguments; the bundled
270M base model only has to choose the tool and copy the paths it was given. One worked example
conversation before the task shows it the steps; without it the base model repeats its first call.
"""
import argparse
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

import mmsdk

# One worked example, as real earlier turns in the tool format: the base model copies the pattern.
EXAMPLE = [
    {"role": "user", "content": "How many lines do the .md files in /notes have in total?"},
    {"role": "assistant", "content": "", "tool_calls": [
        mmsdk.ToolCall("find_files", {"folder": "/notes", "pattern": "*.md"})]},
    {"role": "tool", "content": '["a.md", "b.md"]'},
    {"role": "assistant", "content": "", "tool_calls": [
        mmsdk.ToolCall("count_lines", {"paths": ["a.md", "b.md"]})]},
    {"role": "tool", "content": "12"},
    {"role": "assistant", "content": "The .md files in /notes have 12 lines in total."},
]


class OutsideRoot(PermissionError):
    """A tool was asked for a path outside the agent's root folder."""


def file_tools(root) -> list:
    """`find_files` and `count_lines`, confined to the folder `root`."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise NotADirectoryError(f"the agent's root folder {str(root)!r} is not a folder")

    def inside(path: str) -> Path:
        # resolve() follows symbolic links and "..", so what is checked is where the path really leads.
        full = (root / Path(path).expanduser()).resolve()
        if not full.is_relative_to(root):
            raise OutsideRoot(f"{path!r} is outside the folder this agent may use ({root}); use paths under it")
        return full

    def find_files(folder: str, pattern: str) -> list[str]:
        """List the files in a folder whose names match a glob pattern, as paths relative to the root.

        Args:
            folder: The folder to search.
            pattern: A glob pattern such as *.txt.
        """
        base = inside(folder)
        if not base.is_dir():
            raise FileNotFoundError(f"no such folder: {folder}")
        if Path(pattern).is_absolute() or ".." in Path(pattern).parts:
            raise OutsideRoot(f"pattern {pattern!r} must be relative to the folder, without '..'")
        found = (p.resolve() for p in base.glob(pattern) if p.is_file())
        # Relative paths: short to copy into the next call (a small model copies a long absolute path
        # badly), and they do not show the model where the root lies on disk.
        return sorted(str(p.relative_to(root)) for p in found if p.is_relative_to(root))

    def count_lines(paths: list[str]) -> int:
        """Total number of lines in the given text files.

        Args:
            paths: The files to count, relative to the root (as find_files gives them).
        """
        return sum(len(inside(p).read_text(errors="replace").splitlines()) for p in paths)

    return [find_files, count_lines]


def ask_user(call: mmsdk.ToolCall) -> bool:
    """Show the call and run it only on a yes."""
    answer = input(f"  run {call.name}({call.arguments})? [y/N] ")
    return answer.strip().lower() in ("y", "yes")


def make_folder(root: Path) -> int:
    """Three small text files (and one that must not count); returns their true line total."""
    texts = {"notes.txt": "milk\neggs\nbread\n", "todo.txt": "call Ana\nfix the bike\n",
             "poem.txt": "roses are red\nviolets are blue\nsugar is sweet\nand so are you\n",
             "image.png": "not text\n"}
    for name, text in texts.items():
        (root / name).write_text(text)
    return sum(len(t.splitlines()) for n, t in texts.items() if n.endswith(".txt"))


def main(folder: str | None = None, threads: int = 1, assume_yes: bool = False) -> int:
    logging.basicConfig(level=logging.WARNING)
    if folder is not None:
        return run(folder, None, threads, assume_yes)
    # an example folder named in digits: the small model copies the name into its calls, and it dropped
    # the last character of a random name ending in "_" (as mkdtemp's can)
    root = Path(tempfile.gettempdir()) / f"mmsdk-agent-{os.getpid()}"
    root.mkdir(exist_ok=True)
    try:
        return run(str(root), make_folder(root), threads, assume_yes)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run(folder: str, expected: int | None, threads: int, assume_yes: bool) -> int:
    """The agent on `folder`; with `expected` (the example folder's line count), 0 if it found it."""
    asst = mmsdk.load(threads=threads)
    task = f"How many lines do the .txt files in {folder} have in total?"
    print(f"task: {task}")

    def shown(call: mmsdk.ToolCall) -> bool:
        print(f"  -> {call.name}({call.arguments})")
        return True

    # Each turn must call a tool and each tool runs once: the model writes the arguments (the
    # folder and pattern, then the paths it was given), then answers once both have run.
    result = asst.run_agent(task, file_tools(folder), max_steps=3, tool_choice="required", call_once=True,
                            approve=shown if assume_yes else ask_user, messages=EXAMPLE)
    for step in result.steps:
        print(f"  <- {step.call.name}: {step.error or step.result}")
    print(f"answer ({result.finish_reason}): {result.text}")
    if expected is None:
        return 0
    got = [s.result for s in result.steps if s.call.name == "count_lines" and s.error is None]
    done = bool(got) and got[-1] == expected
    print(f"two-step task {'completed' if done else 'NOT completed'}: expected {expected} lines")
    return 0 if done else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="An agent with file tools confined to one folder.")
    parser.add_argument("folder", nargs="?", help="the agent's root folder (default: a small example one)")
    parser.add_argument("--yes", action="store_true", help="run tool calls without asking first")
    args = parser.parse_args()
    sys.exit(main(args.folder, assume_yes=args.yes))
