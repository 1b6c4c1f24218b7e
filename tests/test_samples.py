"""The samples in samples/ run as a user runs them (their `__main__`, or `main()` with a short
`max_tokens`), on the bundled models, and print what they promise."""
import runpy
import sys
from pathlib import Path

import pytest

from audio_wer import MAX_WER, FIXTURES, fixture_transcripts, wer
from vision_fixtures import noise_image

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
pytestmark = pytest.mark.slow


def run_sample(name: str, argv: list[str], monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", [str(SAMPLES / name), *argv])
    runpy.run_path(str(SAMPLES / name), run_name="__main__")  # its model is freed on return


def test_transcribe_sample(monkeypatch, capsys):
    name, reference = fixture_transcripts()[0]
    run_sample("transcribe.py", [str(FIXTURES / name)], monkeypatch)
    out = capsys.readouterr().out
    assert " - " in out.splitlines()[0]  # a timestamped segment first
    assert wer(reference, out.strip().splitlines()[-1]) <= MAX_WER


def test_describe_image_sample_says_the_bundled_model_has_no_vision(monkeypatch, capsys, tmp_path):
    image = tmp_path / "photo.png"
    noise_image(64, 48).save(image)
    run_sample("describe_image.py", ["", str(image)], monkeypatch)  # "" model: the bundled one
    assert "this model cannot see images:" in capsys.readouterr().out


def test_docs_qa_sample(monkeypatch, capsys):
    sample = runpy.run_path(str(SAMPLES / "docs_qa.py"), run_name="sample")
    sample["main"]([], max_tokens=24)
    out = capsys.readouterr().out
    assert out.count("indexed ") == 3 and "[1] " in out  # three files indexed, an answer citing a source


def test_agent_sample_completes_its_two_step_task(capsys):
    sample = runpy.run_path(str(SAMPLES / "agent.py"), run_name="sample")
    # assume_yes: the sample asks before each tool call, and a test has no one to answer
    assert sample["main"](threads=2, assume_yes=True) == 0, capsys.readouterr().out  # 0: count_lines gave the true total
