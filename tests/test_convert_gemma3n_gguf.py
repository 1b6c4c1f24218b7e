"""tests/eval/convert_gemma3n_gguf.py rounds Gemma 3n's embeddings in row chunks: the bytes must be the
ones llama.cpp's converter writes, Q8_0 of the whole tensor padded with zero rows (exactness is the
point: the bench compares the two engines on the same weights)."""
import io
import json
import sys
from pathlib import Path

import numpy as np
import torch
from gguf.constants import GGMLQuantizationType
from gguf.quants import quantize
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent / "eval"))
from convert_gemma3n_gguf import EMBEDDINGS, q8_0_rows


def test_chunked_rows_are_the_whole_tensor_rounded(tmp_path):
    name = EMBEDDINGS["per_layer_token_embd.weight"]
    rows = torch.randn(10, 64, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    save_file({"other": torch.ones(3, dtype=torch.bfloat16), name: rows}, tmp_path / "model-1.safetensors")
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {name: "model-1.safetensors"}}))

    # chunks of 4 rows over 13: one chunk across the end of the checkpoint's rows, one of padding only
    got = q8_0_rows(tmp_path, name, 13, tmp_path / "out.tmp", chunk=4)
    out = io.BytesIO()
    got.tofile(out)

    padded = np.concatenate([rows.float().numpy(), np.zeros((3, 64), np.float32)])
    want = quantize(padded, GGMLQuantizationType.Q8_0)
    assert got.shape == want.shape and got.nbytes == want.nbytes
    assert out.getvalue() == want.tobytes()
