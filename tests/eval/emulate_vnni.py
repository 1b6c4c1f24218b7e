"""Run pytest against the AVX-512 VNNI kernels (decoder/int8_vnni.c) on an AVX2 host, through SIMDe's
portable emulation of AVX-512, so a bug in the code paths CI runs on Zen 4 / Intel hosts shows up here.

    python tests/eval/emulate_vnni.py --simde DIR [pytest arguments, e.g. tests/test_native_kernels.py]

DIR: a checkout of https://github.com/simd-everywhere/simde (headers only; not bundled, not downloaded).
int8_vnni.c is compiled once per source version into the cache folder with SIMDe's AVX-512 (its one inline
vpdpbusd swapped for the intrinsic SIMDe provides); pytest then runs with `$CC` a wrapper that hands that
library to native.py's own build (records, cache, failures all as usual), and every Python process of the
run imports emulate_vnni_plugin.py (beside this file), which makes native.py see a Zen 4's CPU flags.
Emulated AVX-512 is several times slower than the real thing. torch's own int8 kernels are not emulated:
they still run AVX2 here, with its 16-bit pair saturation, at the 8-bit inputs a VNNI host gives them: the
two tests that check torch's int8 fallback are deselected (`TORCH_INT8`).
"""
import argparse
import hashlib
import os
import subprocess
import sys
from pathlib import Path

EVAL = Path(__file__).parent
DECODER = EVAL.parents[1] / "decoder"
ASM = '__asm__("vpdpbusd %[b], %[a], %[c]" : [c] "+v"(c##m##n) : [a] "v"(a##m), [b] "v"(b##n))'
INTRINSIC = "c##m##n = _mm512_dpbusd_epi32(c##m##n, a##m, b##n)"
PRELUDE = r"""/* AVX-512 F/BW/DQ/VL/VNNI through SIMDe on an AVX2 host: real AVX2 intrinsics, SIMDe's for the rest. */
#include <immintrin.h>
#define SIMDE_ENABLE_NATIVE_ALIASES
#include "simde/x86/avx512.h"
#define __AVX512F__ 1
#define __AVX512BW__ 1
#define __AVX512DQ__ 1
#define __AVX512VL__ 1
#define __AVX512VNNI__ 1
/* missing from SIMDe: unsigned saturation of 16 uint32 to uint8 */
static inline __m128i emu_cvtusepi32_epi8(simde__m512i a) {
    simde__m512i_private p = simde__m512i_to_private(a);
    uint8_t out[16];
    for (int i = 0; i < 16; i++) out[i] = p.u32[i] > 255 ? 255 : (uint8_t)p.u32[i];
    return _mm_loadu_si128((const __m128i *)out);
}
#undef _mm512_cvtusepi32_epi8
#define _mm512_cvtusepi32_epi8(a) emu_cvtusepi32_epi8(a)
"""
# Tests of torch's own int8 fallback, which a VNNI host feeds 8-bit inputs: torch's AVX2 kernels here saturate
# (5-9% off; computed exactly, as VNNI does, 0.8% against a 1% bound): not run, their failure is this host's
TORCH_INT8 = ("tests/test_native_kernels.py::test_modules_use_the_blocks_and_match_torch_kernels",
              "tests/test_native_kernels.py::test_a_compiler_that_fails_leaves_torch_kernels")
# native.py's compiler: its int8_vnni.c "built" as the emulated library, anything else by the real compiler
CC_WRAPPER = """#!/bin/sh
out=; prev=; vnni=
for a in "$@"; do [ "$prev" = -o ] && out=$a; case $a in */int8_vnni.c) vnni=1;; esac; prev=$a; done
[ -n "$vnni" ] && exec cp "{lib}" "$out"
exec {cc} "$@"
"""


def build(simde: Path, cc: str, folder: Path) -> Path:
    """The emulated library for this int8_vnni.c and its headers (cached by their hash), ~1 min to build."""
    source = (DECODER / "int8_vnni.c").read_text()
    if ASM not in source:
        sys.exit("int8_vnni.c's inline vpdpbusd changed: update ASM in emulate_vnni.py")
    source = source.replace(ASM, INTRINSIC)
    flags = ["-O2", "-fopenmp", "-shared", "-fPIC", "-mavx2", "-mfma", "-mf16c", "-Wno-psabi",
             f"-I{simde}", f"-I{DECODER}"]
    headers = b"".join(p.read_bytes() for p in sorted(DECODER.glob("*.h")))
    key = hashlib.sha256(source.encode() + headers + PRELUDE.encode() + " ".join([cc, *flags]).encode())
    lib = folder / f"int8_vnni_emu-{key.hexdigest()[:16]}.so"
    if not lib.exists():
        (folder / "prelude.h").write_text(PRELUDE)
        (folder / "int8_vnni_emu.c").write_text(source)
        print(f"building {lib} (SIMDe emulation, about a minute)", file=sys.stderr)
        subprocess.run([cc, *flags, "-include", str(folder / "prelude.h"), str(folder / "int8_vnni_emu.c"),
                        "-o", f"{lib}.tmp"], check=True)
        Path(f"{lib}.tmp").replace(lib)
    return lib


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--simde", type=Path, required=True, help="SIMDe checkout (holds simde/x86/avx512.h)")
    ap.add_argument("--cache", type=Path, default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"),
                                                       "mmsdk-emulate-vnni"))
    args, pytest_args = ap.parse_known_args()
    if not (args.simde / "simde" / "x86" / "avx512.h").exists():
        sys.exit(f"{args.simde}: no simde/x86/avx512.h")
    args.cache.mkdir(parents=True, exist_ok=True)
    cc = os.environ.get("CC") or "cc"
    lib = build(args.simde.resolve(), cc, args.cache)
    wrapper = args.cache / f"cc-{lib.stem}"
    wrapper.write_text(CC_WRAPPER.format(lib=lib, cc=cc))
    wrapper.chmod(0o755)
    site = args.cache / "site"  # its sitecustomize loads the plugin in every Python process (the CLI's, bench's)
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text("import emulate_vnni_plugin  # noqa: F401 (tests/eval/emulate_vnni.py)\n")
    path = os.pathsep.join([str(site), str(EVAL), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, CC=str(wrapper), PYTHONPATH=path)
    env.setdefault("MMSDK_REQUIRE_NATIVE", "1")  # a library that does not load: an error, not torch's kernels
    print(f"kernels: int8_vnni.c under SIMDe's AVX-512 emulation ({lib})", file=sys.stderr)
    deselect = [a for test in TORCH_INT8 for a in ("--deselect", test)]
    sys.exit(subprocess.run([sys.executable, "-m", "pytest", *deselect, *pytest_args], env=env).returncode)


if __name__ == "__main__":
    main()
