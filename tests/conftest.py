import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def bundled_asst():
    """The bundled real model, loaded once for the whole run."""
    import mmsdk

    return mmsdk.load()


@pytest.fixture(scope="session")
def bundled_path():
    from mmsdk.bundled import bundled_gguf

    return bundled_gguf()
