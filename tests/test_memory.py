"""Pages handed back to the OS come back intact: a dropped mapped tensor reads its file again."""
import torch

from mmsdk.decoder import weight_cache
from mmsdk.decoder.memory import drop_resident, release_free_memory


def test_dropped_pages_of_a_mapped_tensor_read_back_the_same(tmp_path):
    big = torch.arange(3 * 1024 * 1024, dtype=torch.int32).view(1024, -1)  # 12 MB, many pages
    path = tmp_path / "w.safetensors"
    weight_cache.save(path, {"w": big}, {"note": "test"})
    tensors, _ = weight_cache.load(path)
    mapped = tensors["w"]
    assert torch.equal(mapped, big)  # every page resident now
    drop_resident(mapped)
    release_free_memory()
    assert torch.equal(mapped, big)
