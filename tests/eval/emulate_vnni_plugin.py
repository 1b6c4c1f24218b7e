"""emulate_vnni.py's patch, loaded by every Python process of its run (its sitecustomize): this CPU reads
as a Zen 4 (AVX-512 VNNI) to everything that asks `native._cpu_flags`, so native.py picks int8_vnni.c
(built by emulate_vnni.py's $CC) and the choices made by the kernel or the flags (`native.pairs_saturate`,
`encoders.accelerate.int8_kernel`) are a VNNI host's."""
from mmsdk.decoder import native

VNNI_HOST = {"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni"}
native._cpu_flags = lambda: set(VNNI_HOST)
native.pairs_saturate.cache_clear()
native.library.cache_clear()

