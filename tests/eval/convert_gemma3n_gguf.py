"""llama.cpp's own `convert_hf_to_gguf.py` on a Gemma 3n folder, to Q8_0, in bounded memory.

    LLAMA=~/.cache/llama-cpp-tools/native/src/vendor/llama.cpp
    python tests/eval/convert_gemma3n_gguf.py /work/realsize/gemma-3n-E2B-it /work/realsize/gguf3n/gemma-3n-E2B-q8_0.gguf
    $LLAMA/build/bin/llama-quantize --allow-requantize gemma-3n-E2B-q8_0.gguf gemma-3n-E2B-Q4_K_M.gguf Q4_K_M

The converter is lazy except for Gemma 3n's two embeddings: it reads them whole, in float32, pads the
per-layer one (262144 x 7680) to the 262400-row vocabulary, and rounds each to Q8_0 whole (17.5 GB peak
RSS on E2B, on a 24 GB machine). Here those two are rounded by the converter's own Q8_0 function
(`gguf.quants.quantize`) in chunks of rows, padding rows as zeros as the converter pads, into a file
the writer then copies: Q8_0 rounds each block of 32 in a row alone, so the bytes are the ones the
converter writes. Everything else is the converter's, unchanged (E2B: 2 min 40 s, peak RSS 1.2 GB).
llama-quantize then needs ~9 GB: it widens the per-layer embedding to float32 to round it to Q6_K.
"""
import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

LLAMA = Path.home() / ".cache/llama-cpp-tools/native/src/vendor/llama.cpp"
EMBEDDINGS = {"token_embd.weight": "model.language_model.embed_tokens.weight",  # GGUF name: checkpoint name
              "per_layer_token_embd.weight": "model.language_model.embed_tokens_per_layer.weight"}


def q8_0_rows(folder: Path, name: str, vocab: int, out: Path, chunk: int = 4096):
    """Checkpoint tensor `name` (bfloat16) padded with zero rows to `vocab` rows, rounded to Q8_0 into the
    file `out`, returned as what the GGUF writer copies. Read and written with plain file calls, not
    memory maps: mapped pages would count in the process's RSS."""
    import numpy as np
    from gguf.constants import GGMLQuantizationType as Q
    from gguf.quants import quantize

    shard = folder / json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"][name]
    with open(shard, "rb") as src, open(out, "wb") as dst:
        header = json.loads(src.read(int.from_bytes(src.read(8), "little")))
        info, base = header[name], src.tell()
        if info["dtype"] != "BF16":
            raise SystemExit(f"{name}: {info['dtype']}, this script reads bfloat16 checkpoints")
        n, dim = info["shape"]
        src.seek(base + info["data_offsets"][0])
        for a in range(0, vocab, chunk):
            k = max(0, min(chunk, n - a))
            x = np.zeros((min(chunk, vocab - a), dim), np.float32)
            # bfloat16 is the high half of a float32
            x[:k] = (np.fromfile(src, np.uint16, k * dim).astype(np.uint32) << 16).view(np.float32).reshape(k, dim)
            dst.write(quantize(x, Q.Q8_0).tobytes())
    return RowsFile(out, (vocab, dim // 32 * 34))  # a Q8_0 block: a float16 scale and 32 int8 codes


class RowsFile:
    """A tensor's bytes in a file, as the GGUF writer takes a numpy array: shape, dtype, nbytes, tofile."""

    dtype = np.dtype(np.uint8)

    def __init__(self, path: Path, shape: tuple[int, int]):
        self.path, self.shape, self.nbytes = path, shape, shape[0] * shape[1]

    def tofile(self, f):
        with open(self.path, "rb") as src:
            shutil.copyfileobj(src, f, 64 << 20)


def unreachable(*args):
    raise AssertionError("the embedding placeholder was evaluated")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("outfile", type=Path)
    a = ap.parse_args()
    sys.path[:0] = [str(LLAMA / "gguf-py"), str(LLAMA)]
    import convert_hf_to_gguf
    import gguf
    import torch
    from conversion.base import LazyTorchTensor, ModelBase
    from conversion.gemma import Gemma3NModel

    vocab = json.loads((a.folder / "config.json").read_text())["text_config"]["vocab_size"]
    temps = []
    modify, add_tensor = Gemma3NModel.modify_tensors, gguf.GGUFWriter.add_tensor

    def modify_tensors(self, data_torch, name, bid):
        if "embed_tokens" not in name:  # the converter's own test (the name is shortened by then)
            return (yield from modify(self, data_torch, name, bid))
        # a placeholder of the padded shape, never evaluated: add_tensor below swaps in the chunked rows
        padded = LazyTorchTensor(meta=torch.empty((vocab, data_torch.shape[1]), dtype=torch.float32, device="meta"),
                                 func=unreachable)
        yield from ModelBase.modify_tensors(self, padded, name, bid)

    def add_tensor_chunked(self, name, tensor, raw_shape=None, raw_dtype=None, tensor_endianess=None):
        if name in EMBEDDINGS:
            if raw_dtype != gguf.GGMLQuantizationType.Q8_0:
                raise SystemExit(f"{name} as {raw_dtype}: this script writes Q8_0 only")
            tensor = q8_0_rows(a.folder, EMBEDDINGS[name], vocab, a.outfile.with_suffix(f".{name}.tmp"))
            temps.append(tensor.path)
        add_tensor(self, name, tensor, raw_shape, raw_dtype, tensor_endianess)

    Gemma3NModel.modify_tensors, gguf.GGUFWriter.add_tensor = modify_tensors, add_tensor_chunked
    sys.argv = ["convert_hf_to_gguf.py", str(a.folder), "--outtype", "q8_0", "--outfile", str(a.outfile)]
    try:
        convert_hf_to_gguf.main()
    finally:
        for t in temps:
            Path(t).unlink(missing_ok=True)


if __name__ == "__main__":
    main()
