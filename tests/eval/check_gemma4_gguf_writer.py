"""The test's Gemma 4 GGUF writer (`gemma4_fixtures.write_gguf`) against llama.cpp's own converter on
the same tiny checkpoint: every tensor name, shape, type and value, every metadata key, its value
type and value must be equal. Needs a llama.cpp checkout (not on CI machines, hence this script):

    LLAMA=~/.cache/llama-cpp-tools/native/src/vendor/llama.cpp
    python tests/eval/check_gemma4_gguf_writer.py $LLAMA [--write-listing]

It also tokenizes llama.cpp's Gemma 4 vocabulary test (models/ggml-vocab-gemma-4.gguf with its .inp
texts) through `tokenizer_from_gguf` and compares with llama.cpp's ids (.out).

`--write-listing` rewrites tests/fixtures/gemma4_gguf_f32.json (the converter's names, shapes,
types and metadata keys for F32), which test_gemma4_gguf checks the writer against on every run.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

TESTS = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TESTS))
from gemma4_fixtures import hf_text_model, write_bpe_tokenizer, write_gguf
from mmsdk.decoder.gguf_file import GGUFFile

LISTING = TESTS / "fixtures" / "gemma4_gguf_f32.json"


def listing(g: GGUFFile) -> dict:
    return {"tensors": {n: [list(t.shape), t.kind] for n, t in sorted(g.tensors.items())},
            "metadata": {k: list(g.types[k]) for k in sorted(g.meta)}}


def compare(theirs: Path, ours: Path) -> list[str]:
    a, b = GGUFFile(theirs), GGUFFile(ours)
    diffs = []
    la, lb = listing(a), listing(b)
    for part in ("tensors", "metadata"):
        for k in sorted(set(la[part]) | set(lb[part])):
            if la[part].get(k) != lb[part].get(k):
                diffs.append(f"{part} {k}: converter {la[part].get(k)}, writer {lb[part].get(k)}")
    for k in sorted(set(a.meta) & set(b.meta)):
        if k != "general.name" and a.meta[k] != b.meta[k]:
            diffs.append(f"metadata value {k}: converter {str(a.meta[k])[:80]}, writer {str(b.meta[k])[:80]}")
    for n in sorted(set(a.tensors) & set(b.tensors)):
        if not np.array_equal(a.raw(n), b.raw(n)):  # the same format decode: bytes must be equal
            diffs.append(f"tensor values {n}")
    return diffs


def check_vocab(llama: Path) -> int:
    """Mismatches of our GGUF tokenizer against llama.cpp's expected ids on its Gemma 4 vocabulary test."""
    from mmsdk.decoder.tokenizer import tokenizer_from_gguf

    vocab = llama / "models" / "ggml-vocab-gemma-4.gguf"
    g = GGUFFile(vocab)
    st = vocab.stat()
    tok = tokenizer_from_gguf(g.meta, f"{vocab.resolve()}:{st.st_size}:{st.st_mtime_ns}")
    texts = vocab.with_name(vocab.name + ".inp").read_text().split("\n__ggml_vocab_test__\n")
    wants = vocab.with_name(vocab.name + ".out").read_text().split("\n")
    bad = [t for t, w in zip(texts, wants) if tok.encode(t, add_bos=False) != [int(x) for x in w.split()]]
    print(f"vocabulary test: {len(texts) - len(bad)} of {len(texts)} texts tokenized as llama.cpp does")
    for t in bad:
        print("  ", repr(t[:60]))
    return len(bad)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("llama", type=Path, help="a llama.cpp checkout (convert_hf_to_gguf.py, gguf-py)")
    p.add_argument("--write-listing", action="store_true")
    args = p.parse_args()
    model = hf_text_model()
    bad = check_vocab(args.llama)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "tiny"
        model.save_pretrained(folder)
        write_bpe_tokenizer(folder)
        env = {**os.environ, "PYTHONPATH": str(args.llama / "gguf-py")}
        for kind in ("F32", "Q8_0"):
            theirs, ours = Path(tmp) / f"conv-{kind}.gguf", Path(tmp) / f"ours-{kind}.gguf"
            subprocess.run([sys.executable, str(args.llama / "convert_hf_to_gguf.py"), str(folder), "--outtype",
                            kind.lower(), "--outfile", str(theirs)], check=True, env=env, capture_output=True)
            write_gguf(model, ours, kind)
            diffs = compare(theirs, ours)
            bad += len(diffs)
            n = len(GGUFFile(theirs).tensors)
            print(f"{kind}: {n} tensors, {len(GGUFFile(theirs).meta)} metadata keys; "
                  f"{'equal' if not diffs else str(len(diffs)) + ' differences'}")
            for d in diffs:
                print("  ", d)
            if kind == "F32" and args.write_listing:
                LISTING.write_text(json.dumps(listing(GGUFFile(theirs)), indent=0) + "\n")
                print("wrote", LISTING)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
