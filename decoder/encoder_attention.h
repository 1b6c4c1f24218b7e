/* Bidirectional self-attention of a BERT-style encoder (all-MiniLM-L6-v2: 12 heads of 32, up to 256
   word pieces) straight from its fused q/k/v rows, each sample over its own keys only (no padding
   mask, no padded rows). torch's CPU flash attention runs these small heads at ~17 GFLOP/s on a Zen 3;
   with all of a row's scores in L1 the softmax is exact in one go (no online rescaling), and q, k, v
   are read where the product wrote them (no permuted copies). AVX2 (kernels_avx2.c). */
#ifndef MMSDK_ENCODER_ATTENTION_H
#define MMSDK_ENCODER_ATTENTION_H
#include <immintrin.h>
#include <math.h>
#include "kernels.h"
#include "norm2d.h"  /* exp8 */

#define EA_ROWS 4  /* query rows a tile: 8 accumulators of scores (16 keys), 8 of outputs (16 dims) */

/* Rows q0 .. q0 + rows (<= EA_ROWS) of one head: o = softmax(q k^T scale) v over L keys. q: rows
   `stride` floats apart; kt: the keys in blocks of 16, each (D, 16) (zeros past L); v: (L, D). */
static void ea_tile(const float *q, int rows, const float *kt, const float *v, long L, long Lp, long D, long stride,
                    float scale, float *s, float *o, long o_stride) {
    for (long j0 = 0; j0 < Lp; j0 += 16) {  /* scores: rows x 16 keys */
        __m256 c[EA_ROWS][2];
        for (int r = 0; r < EA_ROWS; r++) c[r][0] = c[r][1] = _mm256_setzero_ps();
        for (long d = 0; d < D; d++) {
            const float *kd = kt + (j0 * D + d * 16);
            const __m256 k0 = _mm256_loadu_ps(kd), k1 = _mm256_loadu_ps(kd + 8);
            for (int r = 0; r < EA_ROWS; r++) {
                const __m256 qd = _mm256_set1_ps(q[(r < rows ? r : 0) * stride + d]);
                c[r][0] = _mm256_fmadd_ps(qd, k0, c[r][0]), c[r][1] = _mm256_fmadd_ps(qd, k1, c[r][1]);
            }
        }
        for (int r = 0; r < EA_ROWS; r++)
            _mm256_storeu_ps(s + r * Lp + j0, c[r][0]), _mm256_storeu_ps(s + r * Lp + j0 + 8, c[r][1]);
    }
    float inv[EA_ROWS];
    for (int r = 0; r < rows; r++) {  /* exact softmax of the row (the scale inside the exponent) */
        float *sr = s + r * Lp;
        for (long j = L; j < Lp; j++) sr[j] = -INFINITY;
        __m256 mx = _mm256_set1_ps(-INFINITY);
        for (long j = 0; j < Lp; j += 8) mx = _mm256_max_ps(mx, _mm256_loadu_ps(sr + j));
        const __m256 m = _mm256_set1_ps(hmax8(mx)), sc = _mm256_set1_ps(scale);
        __m256 sum = _mm256_setzero_ps();
        for (long j = 0; j < Lp; j += 8) {
            const __m256 e = exp8(_mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(sr + j), m), sc));
            _mm256_storeu_ps(sr + j, e);
            sum = _mm256_add_ps(sum, e);
        }
        float total = hsum8(sum);
        for (long j = L; j < Lp; j++) total -= sr[j];  /* exp8 floors at e^-88, not 0 */
        inv[r] = 1.f / total;
    }
    for (long d0 = 0; d0 < D; d0 += 16) {  /* o = p v: rows x 16 dims in registers */
        __m256 a[EA_ROWS][2];
        for (int r = 0; r < EA_ROWS; r++) a[r][0] = a[r][1] = _mm256_setzero_ps();
        for (long j = 0; j < L; j++) {
            const __m256 v0 = _mm256_loadu_ps(v + j * D + d0), v1 = _mm256_loadu_ps(v + j * D + d0 + 8);
            for (int r = 0; r < EA_ROWS; r++) {
                const __m256 p = _mm256_set1_ps(s[r * Lp + j]);
                a[r][0] = _mm256_fmadd_ps(p, v0, a[r][0]), a[r][1] = _mm256_fmadd_ps(p, v1, a[r][1]);
            }
        }
        for (int r = 0; r < rows; r++) {
            const __m256 i = _mm256_set1_ps(inv[r]);
            _mm256_storeu_ps(o + r * o_stride + d0, _mm256_mul_ps(a[r][0], i));
            _mm256_storeu_ps(o + r * o_stride + d0 + 8, _mm256_mul_ps(a[r][1], i));
        }
    }
}

/* qkv (B, T, 3, H, D) -> out (B, T, H, D), D a multiple of 16: sample b's first lens[b] rows attend over
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
           like that a head's keys and values alias to a few L1 sets (slower than torch at 256 tokens) */
        float kt[D * Lp], vc[D * L], s[EA_ROWS * Lp];
        for (long j = 0; j < Lp; j++)
            for (long d = 0; d < D; d++) kt[(j / 16) * 16 * D + d * 16 + j % 16] = j < L ? k[j * stride + d] : 0.f;
        for (long j = 0; j < L; j++) memcpy(vc + j * D, v + j * stride, sizeof(float) * D);
        for (long t0 = 0; t0 < L; t0 += EA_ROWS)
            ea_tile(q + t0 * stride, L - t0 < EA_ROWS ? (int)(L - t0) : EA_ROWS, kt, vc, L, Lp, D, stride, scale, s,
                    o + t0 * H * D, H * D);
    }
}
#endif
