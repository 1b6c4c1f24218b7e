"""Every `mmsdk` subcommand answers a bad option or path with one `error:` line and exit status 2,
never a traceback: checked in-process for each case (an exception escaping `main` fails the test),
and as a real process for the command the issue reported, as a user of the installed command sees it."""
import subprocess
import sys

import pytest

from mmsdk import cli

NO_SUCH = "/nonexistent-mmsdk-test"
# (arguments, a fragment the error line must hold); none of them loads a model, so this stays fast.
CASES = [
    (["generate", "hi", "--top-p", "2"], "top_p must be a number in (0, 1], got 2.0"),
    (["generate", "hi", "--max-tokens", "0"], "max_tokens must be"),
    (["generate", "hi", "--max-tokens", "abc"], "--max-tokens: invalid int value: 'abc'"),
    (["generate", "hi", "--model", NO_SUCH], f"'{NO_SUCH}': no such file or folder"),
    (["chat", "--temperature", "-1"], "temperature must be a number >= 0 (0 is greedy), got -1.0"),
    (["demo", "--threads", "0"], "threads must be a whole number >= 1"),
    (["describe", f"{NO_SUCH}.png"], f"{NO_SUCH}.png"),
    (["transcribe", f"{NO_SUCH}.wav"], f"{NO_SUCH}.wav"),
    (["index", "add", f"{NO_SUCH}/docs.db", "a.txt"], f"cannot open document index '{NO_SUCH}/docs.db'"),
    (["index", "add", "docs.db", "a.txt", "--model", NO_SUCH], f"embedding model '{NO_SUCH}'"),
    (["ask", f"{NO_SUCH}.db", "why?"], f"no index at '{NO_SUCH}.db'"),
    (["bench", "--threads", "0"], "--threads must be at least 1"),
    (["bench", "--model", NO_SUCH], f"--model {NO_SUCH}: no such file or folder"),
    (["bench", "--audio", "--peers", "llama.cpp"], "llama-mtmd-cli is measured for --image only"),
    (["bench", "--image", "--precisions", "int4"], "--precisions with --image: unknown 'int4'"),
    (["bench", "--image", "--peers", "transformers"], "--peers transformers needs a checkpoint folder"),
    (["bench", "--image", "--audio"], "not allowed with argument"),
    (["serve", "--max-concurrency", "0"], "--max-concurrency must be at least 1, got 0"),
    (["serve", "--allow-files", NO_SUCH], f"--allow-files {NO_SUCH}: no such folder"),
    (["serve", "--model", NO_SUCH], f"'{NO_SUCH}': no such file or folder"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
]


def _error_line(err: str, fragment: str) -> None:
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and fragment in errors[0], err
    assert "Traceback" not in err, err
    # A progress line ("loading ...") may come first; nothing but the error follows it.
    assert err.strip().splitlines()[-1] == errors[0], err


@pytest.mark.parametrize("argv, fragment", CASES, ids=[" ".join(a[:2]) + f"-{i}" for i, (a, _) in enumerate(CASES)])
def test_bad_option_or_path_is_one_error_line(argv, fragment, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # `index add docs.db` must not leave a file behind in the checkout
    try:
        status = cli.main(argv)
    except SystemExit as e:  # argparse's own errors leave through sys.exit
        status = e.code
    assert status == 2
    _error_line(capsys.readouterr().err, fragment)


def test_the_installed_command_prints_no_traceback(tmp_path):
    """The issue's own command, as a user runs it (one process: starting one costs seconds)."""
    argv, fragment = CASES[0]
    proc = subprocess.run([sys.executable, "-m", "mmsdk.cli", *argv], cwd=tmp_path, text=True,
                          capture_output=True, timeout=300)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    _error_line(proc.stderr, fragment)
