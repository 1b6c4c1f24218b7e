"""Pages handed back to the OS come back intact: a dropped mapped tensor leaves the process's resident
memory, and reads its file again when touched."""
import subprocess
import sys

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


def test_gpu_library_pages_go_back_and_torch_still_runs():
    # In a fresh process: the pinned torch is a CUDA build, whose import leaves ~140 MB of its GPU
    # libraries resident; a CPU run hands them back and computes the same afterwards.
    code = r"""
import re, torch
from mmsdk.decoder.memory import release_gpu_libraries
def gpu_rss_kb():
    total, gpu = 0, False
    for line in open('/proc/self/smaps'):
        head = re.match(r'[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \S+\s*(.*)$', line)
        if head:
            gpu = bool(re.search('/nvidia/|libtorch_cuda', head[1]))
        elif gpu and line.startswith('Rss:'):
            total += int(line.split()[1])
    return total
a, b = torch.randn(64, 64, generator=torch.Generator().manual_seed(0)), torch.randn(64, 64)
before, expected = gpu_rss_kb(), (a @ b).double()
released = release_gpu_libraries()
after = gpu_rss_kb()
got = (a @ b).double()
print(before, after, released, float((got - expected).abs().max()))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    before, after, released, diff = int(out[0]), int(out[1]), int(out[2]), float(out[3])
    assert before > 50 * 1024, f"the CUDA build's GPU libraries held only {before} kB after import"
    assert after < before / 4 and released >= (before - after) * 1024 * 0.9
    assert diff < 1e-5  # the same product after the release (same path, run again)
