"""Pages handed back to the OS come back intact: a dropped mapped tensor leaves the process's resident
memory, and reads its file again when touched."""
import torch

from mmsdk.decoder import weight_cache
from mmsdk.decoder.memory import drop_resident, release_free_memory


def resident_kb(t: torch.Tensor) -> int:
    """Resident size (Rss) of the mapping that holds `t`, from /proc/self/smaps."""
    address, inside = t.data_ptr(), False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and ":" not in head:  # a mapping's first line: "start-end perms ..."
                start, end = (int(x, 16) for x in head.split("-"))
                inside = start <= address < end
            elif inside and head == "Rss:":
                return int(line.split()[1])
    raise AssertionError("no mapping holds the tensor")


def test_dropped_pages_of_a_mapped_tensor_leave_and_read_back_the_same(tmp_path):
    big = torch.arange(3 * 1024 * 1024, dtype=torch.int32).view(1024, -1)  # 12 MB, many pages
    path = tmp_path / "w.safetensors"
    weight_cache.save(path, {"w": big}, {"note": "test"})
    tensors, _ = weight_cache.load(path)
    mapped = tensors["w"]
    # Integers copied from a file: exactness is the point.
    assert torch.equal(mapped, big)  # every page resident now
    assert resident_kb(mapped) >= 12 * 1024 - 8
    drop_resident(mapped)
    release_free_memory()
    assert resident_kb(mapped) <= 16  # at most the pages the tensor shares with the file's header
    assert torch.equal(mapped, big)  # read back from the file
    assert resident_kb(mapped) >= 12 * 1024 - 8
