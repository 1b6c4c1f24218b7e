"""Models by name: ids resolved in a local Hugging Face cache this test builds itself, never downloaded."""
import pytest
from huggingface_hub import constants

import mmsdk
from mmsdk.cli import main
from mmsdk.models import resolve
from _tiny import write_tiny_gemma3

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _snapshot(cache, repo: str):
    """The hub cache's layout: refs/main names the commit whose snapshot folder holds the files."""
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(COMMIT)
    snap = root / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    return snap


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_a_cached_checkpoint_loads_by_its_id(hub_cache):
    write_tiny_gemma3(_snapshot(hub_cache, "acme/tiny-gemma"))
    asst = mmsdk.load("acme/tiny-gemma")
    assert asst.info.family == "gemma3"
    assert asst.info.path.endswith(COMMIT)
    assert isinstance(asst.generate("hello", max_tokens=3), str)


def test_a_gguf_repository_picks_the_file_by_its_tag(hub_cache):
    snap = _snapshot(hub_cache, "acme/tiny-gguf")
    for name in ("tiny-Q4_0.gguf", "tiny-Q8_0.gguf", "mmproj-tiny-f16.gguf"):
        (snap / name).write_bytes(b"GGUF")
    assert resolve("acme/tiny-gguf:q4_0") == snap / "tiny-Q4_0.gguf"
    assert resolve("acme/tiny-gguf:Q8_0") == snap / "tiny-Q8_0.gguf"
    with pytest.raises(mmsdk.ModelLoadError, match="several .gguf files.*acme/tiny-gguf:Q4_0.*acme/tiny-gguf:Q8_0"):
        resolve("acme/tiny-gguf")
    with pytest.raises(mmsdk.ModelLoadError, match="no model .gguf file tagged 'Q5_K'"):
        resolve("acme/tiny-gguf:Q5_K")


def test_an_id_not_in_the_cache_says_how_to_get_it(hub_cache):
    with pytest.raises(mmsdk.ModelLoadError, match="not in the local Hugging Face cache.*mmsdk pull acme/absent"):
        mmsdk.load("acme/absent")


def test_a_path_on_disk_wins_over_an_id_that_looks_the_same(tmp_path, monkeypatch):
    folder = tmp_path / "acme" / "tiny"
    write_tiny_gemma3(folder)
    monkeypatch.chdir(tmp_path)
    assert resolve("acme/tiny") == folder.relative_to(tmp_path)


def test_pull_refuses_offline_in_one_line(monkeypatch, capsys):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert main(["pull", "acme/tiny-gemma"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == ("error: cannot load model 'acme/tiny-gemma': downloading needs the network, "
                       "and HF_HUB_OFFLINE is set")
    assert main(["pull", "not a name"]) == 2
    assert "expected a Hugging Face model id" in capsys.readouterr().err
