/* Bidirectional self-attention of an encoder straight from its fused q/k/v rows, each sample over its
   own keys only (no padding mask, no padded rows): a BERT's (all-MiniLM-L6-v2: 12 heads of 32, up to
   256 word pieces) and SigLIP's (16 heads of 72, 4096 patches). torch's CPU flash attention runs the
   small heads at ~17 GFLOP/s on a Zen 3; q, k, v are read here where the product wrote them (no
   permuted copies). Flash attention's order: a block of 256 keys and values (147 KB at 72 dims) stays
   in L2 while every query tile of the head passes over it with an online softmax; a tile over all of
   SigLIP's 4096 keys at once would stream them from L3 at ~10 bytes a cycle. AVX2 (kernels_avx2.c). */
#ifndef MMSDK_ENCODER_ATTENTION_H
#define MMSDK_ENCODER_ATTENTION_H
#include <immintrin.h>
#include <math.h>
#include "kernels.h"
#include "norm2d.h"  /* exp8 */

#define EA_ROWS 6  /* query rows a tile: 12 accumulators of scores (16 keys), 12 of outputs (16 dims) */
#define EA_KEYS 256  /* keys a block */
#define EA_SCORES (EA_KEYS + 16)  /* a tile row's scores, padded: rows 1 KB apart would share L1 sets */

/* o (rows x 8 or 16 dims at d0) = f o + p v over n keys: the output's running sums rescaled by each
   row's factor f (zeros on a first block), plus this block's probabilities p (s) times its values. */
#define EA_PV(WIDE)                                                                                          \
    {                                                                                                        \
        __m256 a[EA_ROWS][2];                                                                                \
        for (int r = 0; r < EA_ROWS; r++) {                                                                  \
            a[r][0] = a[r][1] = _mm256_setzero_ps();                                                         \
            if (!first && r < rows) {                                                                        \
                a[r][0] = _mm256_mul_ps(_mm256_loadu_ps(o + r * o_stride + d0), _mm256_set1_ps(f[r]));      \
                if (WIDE) a[r][1] = _mm256_mul_ps(_mm256_loadu_ps(o + r * o_stride + d0 + 8), _mm256_set1_ps(f[r])); \
            }                                                                                                \
        }                                                                                                    \
        for (long j = 0; j < n; j++) {                                                                       \
            const __m256 v0 = _mm256_loadu_ps(v + j * D + d0), v1 = WIDE ? _mm256_loadu_ps(v + j * D + d0 + 8) : v0; \
            for (int r = 0; r < EA_ROWS; r++) {                                                              \
                const __m256 p = _mm256_set1_ps(s[r * EA_SCORES + j]);                                      \
                a[r][0] = _mm256_fmadd_ps(p, v0, a[r][0]);                                                   \
                if (WIDE) a[r][1] = _mm256_fmadd_ps(p, v1, a[r][1]);                                         \
            }                                                                                                \
        }                                                                                                    \
        for (int r = 0; r < rows; r++) {                                                                     \
            _mm256_storeu_ps(o + r * o_stride + d0, a[r][0]);                                                \
            if (WIDE) _mm256_storeu_ps(o + r * o_stride + d0 + 8, a[r][1]);                                  \
        }                                                                                                    \
    }

/* Rows q0 .. q0 + rows (<= EA_ROWS) of one head against one block of n (<= EA_KEYS) keys: the online
   softmax's running max m and sum l of each row updated, and its output o (unnormalized: o / l is the
   attention). q: rows `stride` floats apart; kt: the block's keys in panels of 16, each (D, 16) (zeros
   past n); v: (n, D); s: EA_ROWS x EA_SCORES floats of scratch. */
static void ea_block(const float *q, int rows, long stride, const float *kt, const float *v, long n, long D,
                     float scale, int first, float *m, float *l, float *o, long o_stride, float *s) {
    const long np = (n + 15) / 16 * 16;
    const float *qr[EA_ROWS];
    for (int r = 0; r < EA_ROWS; r++) qr[r] = q + (r < rows ? r : 0) * stride;
    for (long j0 = 0; j0 < np; j0 += 16) {  /* scores: rows x 16 keys */
        __m256 c[EA_ROWS][2];
        for (int r = 0; r < EA_ROWS; r++) c[r][0] = c[r][1] = _mm256_setzero_ps();
        for (long d = 0; d < D; d++) {
            const float *kd = kt + (j0 * D + d * 16);
            const __m256 k0 = _mm256_loadu_ps(kd), k1 = _mm256_loadu_ps(kd + 8);
            for (int r = 0; r < EA_ROWS; r++) {
                const __m256 qd = _mm256_set1_ps(qr[r][d]);
                c[r][0] = _mm256_fmadd_ps(qd, k0, c[r][0]), c[r][1] = _mm256_fmadd_ps(qd, k1, c[r][1]);
            }
        }
        for (int r = 0; r < EA_ROWS; r++)
            _mm256_storeu_ps(s + r * EA_SCORES + j0, c[r][0]), _mm256_storeu_ps(s + r * EA_SCORES + j0 + 8, c[r][1]);
    }
    float f[EA_ROWS] = {0};
    for (int r = 0; r < rows; r++) {  /* the block's probabilities against the row's new max (scale in the exponent) */
        float *sr = s + r * EA_SCORES;
        for (long j = n; j < np; j++) sr[j] = -INFINITY;
        __m256 mx = _mm256_set1_ps(-INFINITY);
        for (long j = 0; j < np; j += 8) mx = _mm256_max_ps(mx, _mm256_loadu_ps(sr + j));
        const float top = first ? hmax8(mx) : fmaxf(m[r], hmax8(mx));
        const __m256 mt = _mm256_set1_ps(top), sc = _mm256_set1_ps(scale);
        __m256 sum = _mm256_setzero_ps();
        for (long j = 0; j < np; j += 8) {
            const __m256 e = exp8(_mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(sr + j), mt), sc));
            _mm256_storeu_ps(sr + j, e);
            sum = _mm256_add_ps(sum, e);
        }
        float total = hsum8(sum);
        for (long j = n; j < np; j++) total -= sr[j];  /* exp8 floors at e^-88, not 0 */
        f[r] = first ? 0.f : expf((m[r] - top) * scale);
        l[r] = (first ? 0.f : l[r] * f[r]) + total, m[r] = top;
    }
    long d0 = 0;
    for (; d0 + 16 <= D; d0 += 16) EA_PV(1)
    if (d0 < D) EA_PV(0)  /* the last 8 dims (SigLIP's 72) */
}

/* qkv (B, T, 3, H, D) -> out (B, T, H, D), D a multiple of 8: sample b's first lens[b] rows attend over
   its first lens[b] keys; its rows past that (padding) are zeros. */
void encoder_attention(const float *qkv, long B, long T, long H, long D, const long *lens, float scale, float *out) {
    const long stride = 3 * H * D;
    #pragma omp parallel for schedule(dynamic, 1)
    for (long job = 0; job < B * H; job++) {
        const long b = job / H, h = job % H, L = lens[b] < T ? lens[b] : T, Lp = (L + 15) / 16 * 16;
        const float *q = qkv + b * T * stride + h * D, *k = q + H * D, *v = q + 2 * H * D;
        float *o = out + (b * T * H + h) * D;
        for (long t = L > 0 ? L : 0; t < T; t++) memset(o + t * H * D, 0, sizeof(float) * D);
        if (L <= 0) continue;  /* an empty sample: all padding */
        /* this head's keys and values copied together: a sample's rows are 3 H D floats apart, and strided
           like that a head's keys and values alias to a few L1 sets (slower than torch at 256 tokens).
           In each thread's scratch: at 4096 tokens of 72 dims they are 2.4 MB, past an OpenMP thread's stack. */
        static _Thread_local Scratch head;
        float *kt = scratch(&head, sizeof(float) * (D * Lp + D * L + 2 * L + EA_ROWS * EA_SCORES));
        float *vc = kt + D * Lp, *m = vc + D * L, *l = m + L, *s = l + L;
        for (long j = 0; j < Lp; j++)
            for (long d = 0; d < D; d++) kt[(j / 16) * 16 * D + d * 16 + j % 16] = j < L ? k[j * stride + d] : 0.f;
        for (long j = 0; j < L; j++) memcpy(vc + j * D, v + j * stride, sizeof(float) * D);
        for (long j0 = 0; j0 < L; j0 += EA_KEYS)  /* a key block in L2, every query tile over it */
            for (long t0 = 0; t0 < L; t0 += EA_ROWS)
                ea_block(q + t0 * stride, L - t0 < EA_ROWS ? (int)(L - t0) : EA_ROWS, stride, kt + j0 * D, vc + j0 * D,
                         L - j0 < EA_KEYS ? L - j0 : EA_KEYS, D, scale, j0 == 0, m + t0, l + t0, o + t0 * H * D, H * D, s);
        for (long t = 0; t < L; t++) {
            const __m256 inv = _mm256_set1_ps(1.f / l[t]);
            for (long d = 0; d < D; d += 8) _mm256_storeu_ps(o + t * H * D + d, _mm256_mul_ps(_mm256_loadu_ps(o + t * H * D + d), inv));
        }
    }
}
#endif
