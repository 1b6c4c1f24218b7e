"""`mmsdk transcribe`."""
import pytest

from audio_wer import MAX_WER, FIXTURES, fixture_transcripts, wer
from mmsdk import cli


@pytest.fixture(autouse=True)
def only_audio_commands(monkeypatch):
    monkeypatch.setattr(cli, "_COMMAND_MODULES", ["mmsdk._cmd_media_audio"])


@pytest.mark.slow
def test_transcribe_prints_the_text(capsys):
    name, reference = fixture_transcripts()[0]
    assert cli.main(["transcribe", str(FIXTURES / name), "--language", "en", "--threads", "2"]) == 0
    assert wer(reference, capsys.readouterr().out) <= MAX_WER


@pytest.mark.parametrize("content", [None, b"", b"definitely not audio" * 50])
def test_bad_input_is_a_one_line_error(tmp_path, capsys, content):
    path = tmp_path / "input.wav"
    if content is not None:
        path.write_bytes(content)
    assert cli.main(["transcribe", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "input.wav" in err and "\n" not in err


def test_unknown_language_is_a_one_line_error(capsys):
    name, _ = fixture_transcripts()[0]
    assert cli.main(["transcribe", str(FIXTURES / name), "--language", "klingon", "--threads", "2"]) == 2
    assert "language 'klingon'" in capsys.readouterr().err
