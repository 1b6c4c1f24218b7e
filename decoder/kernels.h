/* What every kernel source (int8_vnni.c, kernels_avx2.c) shares: the int8 weight layout, the layer
   description decoder/fused.py mirrors in ctypes, and the scalar helpers that need no vector ISA.
   One definition here keeps the sources binding-compatible. */
#ifndef MMSDK_KERNELS_H
#define MMSDK_KERNELS_H
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define AI static inline __attribute__((always_inline))

/* int8 rows w (N, K) -> blocks (N/16, K/4, 16, 4): for every 4 inputs, 16 channels' 4 bytes side by
   side, a block's K*16 bytes contiguous; and comp = 128 x each row's sum (int8_vnni.c's offset). */
void pack_blocks(const int8_t *w, long N, long K, int8_t *blocks, int32_t *comp) {
    #pragma omp parallel for schedule(static)
    for (long b = 0; b < N / 16; b++) {
        int8_t *out = blocks + b * 16 * K;
        for (int n = 0; n < 16; n++) {
            const int8_t *row = w + (b * 16 + n) * K;
            int32_t sum = 0;
            for (long k = 0; k < K; k += 4) {
                *(int32_t *)(out + k * 16 + n * 4) = *(const int32_t *)(row + k);
                sum += row[k] + row[k + 1] + row[k + 2] + row[k + 3];
            }
            comp[b * 16 + n] = 128 * sum;
        }
    }
}

/* One block of B channels' 4-bit codes (B rows of K, channel i at codes + i * K) -> that block of torch's
   packed CPU int4 layout: K columns of B/2 bytes, byte i holding channel i's code in its low nibble and
   channel i + B/2's in its high (`quantize.unpack_int4`). */
static inline void pack_int4_block(const uint8_t *codes, long K, long B, uint8_t *out) {
    const uint8_t *hi = codes + (B / 2) * K;
    for (long k = 0; k < K; k++)
        for (long i = 0; i < B / 2; i++)
            out[k * (B / 2) + i] = (uint8_t)(codes[i * K + k] | (hi[i * K + k] << 4));
}

/* nothing sensible to compute without the memory; a clear death beats a wrong answer */
static inline void *must_malloc(size_t bytes) {
    void *p = malloc(bytes);
    if (p == NULL) {
        fprintf(stderr, "mmsdk kernels: out of memory (%zu bytes)\n", bytes);
        abort();
    }
    return p;
}

/* ---- scratch kept from call to call ---------------------------------------------------------
   One buffer per purpose and calling thread, grown when a call needs more: a decoded token
   allocates nothing, and a prompt's pages are not given back and faulted in again every layer.
   A buffer past KEEP_BYTES (a long unchunked prompt) is freed after its call. 64 MB: a 256-row chunk
   of Gemma 3 4B takes 39 MB in gemma3_prompt_rest; at 32 MB it was freed and faulted in again every
   layer (~10% of a 1-thread 512-token prefill in the kernel's page faults, AMD Zen 3). */
#define KEEP_BYTES (64L << 20)
typedef struct { void *p; size_t bytes; } Scratch;

static void *scratch(Scratch *s, size_t bytes) {
    if (bytes > s->bytes) {
        free(s->p);
        s->p = must_malloc(bytes);
        s->bytes = bytes;
    }
    return s->p;
}

static void scratch_trim(Scratch *s) {
    if (s->bytes > KEEP_BYTES) free(s->p), s->p = NULL, s->bytes = 0;
}

/* One projection of a layer (decoder/fused.py's `_Linear`). */
typedef struct {
    const void *weight;  /* int8: our blocks; 4-bit: torch's packed weight */
    const float *scales;  /* int8 */
    const int32_t *comp;  /* int8 */
    const void *group_scales;  /* 4-bit: the group numbers of its `layout` (int4_q8.h) */
    const void *super_scales;  /* 4-bit KQ: float16 (d, dmin) per 256 inputs */
    long rotation, in, out, group, layout;  /* group > 0: a 4-bit weight */
} Linear;

/* One Gemma 3 layer (decoder/fused.py's `_Layer`). */
typedef struct {
    long hidden, heads, kv_heads, head_dim, inter;
    float eps, head_eps;  /* sqrt(width * eps) of the hidden-size norms and of QK-norm */
    const float *attn_norm, *qk_norm, *post_attn_norm, *mlp_norm, *post_mlp_norm;  /* gains */
    Linear qkv, o, gate_up, down;
} Layer;

/* ctypes mirrors the two structs (decoder/fused.py): their sizes, checked there before the first call */
long sizeof_linear(void) { return sizeof(Linear); }
long sizeof_layer(void) { return sizeof(Layer); }

/* x (D) rotated as layers.apply_rope: x * cos + roll(x, D/2) * signed_sin */
static void rope(float *x, const float *cos, const float *sin, long D, float *tmp) {
    const long h = D / 2;
    for (long i = 0; i < h; i++) tmp[i] = x[i] * cos[i] + x[i + h] * sin[i];
    for (long i = h; i < D; i++) tmp[i] = x[i] * cos[i] + x[i - h] * sin[i];
    memcpy(x, tmp, sizeof(float) * D);
}
#endif
