import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session", autouse=True)
def _run_cache(tmp_path_factory):
    """The whole run writes its cache (assembled bundled models, converted weights) to a folder of its
    own, as on a fresh machine: what a user's cache holds can neither help nor break a test."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MMSDK_CACHE", str(tmp_path_factory.mktemp("mmsdk_cache")))
        yield


@pytest.fixture
def mmsdk_cache(tmp_path, monkeypatch):
    """An empty cache folder of this test's own, for tests that check what is written there."""
    path = tmp_path / "cache"
    monkeypatch.setenv("MMSDK_CACHE", str(path))
    return path


@pytest.fixture(scope="session")
def bundled_asst():
    """The bundled real model, loaded once for the whole run."""
    import mmsdk

    return mmsdk.load()


@pytest.fixture(scope="session")
def bundled_path():
    from mmsdk.bundled import bundled_gguf

    return bundled_gguf()


@pytest.fixture(scope="session")
def gemma4_media(tmp_path_factory):
    """A tiny random Gemma 4 with both towers: (transformers' model, `mmsdk.load` of its saved folder),
    shared by the Gemma 4 vision and audio tests."""
    import mmsdk
    from gemma4_fixtures import MEDIA_TEXT, hf_full_model, save

    ref = hf_full_model(MEDIA_TEXT, seed=2)
    return ref, mmsdk.load(save(ref, tmp_path_factory.mktemp("g4_media")))
