/* int8 x int8 products on AVX-512 VNNI, for the quantized layers' one-row decode and many-row prefill.

   Weights: int8 per output channel, stored in blocks of 16 channels; inside a block, for every 4
   inputs, the 16 channels' 4 bytes side by side (64 bytes: one VNNI operand). A block's K*16 bytes
   are contiguous, so a one-row product streams the matrix once, front to back.
   Inputs: each row rounded to 8 bits at its own scale (max |x| -> 127) and stored unsigned around
   128, the instruction's input type; `comp` = 128 * (each channel's weight sum) takes the 128 back.
   Built by decoder/native.py with the system C compiler; threads are OpenMP's (torch's own pool). */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#define AI static inline __attribute__((always_inline))

/* int8 rows w (N, K) -> blocks (N/16, K/4, 16, 4), and comp = 128 x each row's sum. */
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

/* r (K floats) times a block-diagonal Sylvester-Hadamard matrix, blocks of `block` (a power of two,
   16 or more), scaled to be orthonormal: the fast Walsh-Hadamard transform, K log2(block) adds. */
static void rotate_row(float *r, long K, long block) {
    const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    for (int len = 1; len < 16; len *= 2) {  /* butterflies inside one register: partner j ^ len */
        __m512i partner = _mm512_xor_si512(lane, _mm512_set1_epi32(len));
        __mmask16 upper = _mm512_test_epi32_mask(lane, _mm512_set1_epi32(len));
        __m512 sign = _mm512_mask_blend_ps(upper, _mm512_set1_ps(1.f), _mm512_set1_ps(-1.f));
        for (long k = 0; k < K; k += 16) {
            __m512 v = _mm512_loadu_ps(r + k);
            _mm512_storeu_ps(r + k, _mm512_fmadd_ps(sign, v, _mm512_permutexvar_ps(partner, v)));
        }
    }
    for (long len = 16; len < block; len *= 2)  /* butterflies between registers */
        for (long b = 0; b < K; b += 2 * len)
            for (long j = b; j < b + len; j += 16) {
                __m512 u = _mm512_loadu_ps(r + j), v = _mm512_loadu_ps(r + j + len);
                _mm512_storeu_ps(r + j, _mm512_add_ps(u, v));
                _mm512_storeu_ps(r + j + len, _mm512_sub_ps(u, v));
            }
    /* the 1/sqrt(block) that makes it orthonormal is folded into the row's scale by the caller */
}

/* Rows of x (M, K) -> 8-bit codes q (M, K) and one scale per row (K a multiple of 16). With
   `block` > 0 each row is first rotated in Hadamard blocks of that size (see rotate_row). */
void quantize_rows(const float *x, long M, long K, long block, uint8_t *q, float *scale) {
    const float norm = block > 0 ? 1.f / sqrtf((float)block) : 1.f;
    #pragma omp parallel for if (M > 8)
    for (long m = 0; m < M; m++) {
        float buf[block > 0 ? K : 1];
        const float *r = x + m * K;
        if (block > 0) {
            for (long k = 0; k < K; k++) buf[k] = r[k];
            rotate_row(buf, K, block);
            r = buf;
        }
        __m512 peak = _mm512_setzero_ps();
        for (long k = 0; k < K; k += 16) peak = _mm512_max_ps(peak, _mm512_abs_ps(_mm512_loadu_ps(r + k)));
        float p = _mm512_reduce_max_ps(peak);
        scale[m] = p * norm / 127.f;
        __m512 s = _mm512_set1_ps(p > 1e-30f ? 127.f / p : 0.f);
        __m512i mid = _mm512_set1_epi32(128);
        for (long k = 0; k < K; k += 16) {
            __m512i v = _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(r + k), s)), mid);
            _mm_storeu_si128((__m128i *)(q + m * K + k), _mm512_cvtusepi32_epi8(v));
        }
    }
}

/* One register tile: rows m < MR of q times blocks n < NB of 16 channels, over all of K.
   The 24 accumulators are named variables: GCC keeps those in registers, an array it spills. */
#define DP(m, n) if (MR > m && NB > n) c##m##n = _mm512_dpbusd_epi32(c##m##n, a##m, b##n)
#define ROW(m) if (MR > m) { \
        __m512i a##m = _mm512_set1_epi32(*(const int32_t *)(q + (long)(m) * K + k)); \
        DP(m, 0); DP(m, 1); DP(m, 2); DP(m, 3); }
#define OUT(m, n) if (MR > m && NB > n) { \
        __m512 v = _mm512_cvtepi32_ps(_mm512_sub_epi32(c##m##n, _mm512_loadu_si512(comp + n * 16))); \
        _mm512_storeu_ps(y + (long)(m) * N + n * 16, \
                         _mm512_mul_ps(v, _mm512_mul_ps(_mm512_loadu_ps(ws + n * 16), _mm512_set1_ps(qs[m])))); }
#define OUT_ROW(m) OUT(m, 0); OUT(m, 1); OUT(m, 2); OUT(m, 3)

AI void tile(const int MR, const int NB, const uint8_t *q, const float *qs, int K, const int8_t *w,
             const float *ws, const int32_t *comp, float *y, long N) {
    const __m512i z = _mm512_setzero_si512();
    __m512i c00 = z, c01 = z, c02 = z, c03 = z, c10 = z, c11 = z, c12 = z, c13 = z,
            c20 = z, c21 = z, c22 = z, c23 = z, c30 = z, c31 = z, c32 = z, c33 = z,
            c40 = z, c41 = z, c42 = z, c43 = z, c50 = z, c51 = z, c52 = z, c53 = z;
    const long block = (long)K * 16;
    for (int k = 0; k < K; k += 4) {
        const int8_t *wk = w + (long)k * 16;
        __m512i b0 = _mm512_loadu_si512(wk), b1 = z, b2 = z, b3 = z;
        if (NB > 1) b1 = _mm512_loadu_si512(wk + block);
        if (NB > 2) b2 = _mm512_loadu_si512(wk + 2 * block);
        if (NB > 3) b3 = _mm512_loadu_si512(wk + 3 * block);
        ROW(0); ROW(1); ROW(2); ROW(3); ROW(4); ROW(5);
    }
    OUT_ROW(0); OUT_ROW(1); OUT_ROW(2); OUT_ROW(3); OUT_ROW(4); OUT_ROW(5);
}

#define TILE_ROWS(MR) switch (nb) { \
    case 4: tile(MR, 4, q, qs, K, w, ws, comp, y, N); break; \
    case 3: tile(MR, 3, q, qs, K, w, ws, comp, y, N); break; \
    case 2: tile(MR, 2, q, qs, K, w, ws, comp, y, N); break; \
    default: tile(MR, 1, q, qs, K, w, ws, comp, y, N); }

static void any_tile(int mr, int nb, const uint8_t *q, const float *qs, int K, const int8_t *w,
                     const float *ws, const int32_t *comp, float *y, long N) {
    switch (mr) {
    case 6: TILE_ROWS(6) break;
    case 5: TILE_ROWS(5) break;
    case 4: TILE_ROWS(4) break;
    case 3: TILE_ROWS(3) break;
    case 2: TILE_ROWS(2) break;
    default: TILE_ROWS(1)
    }
}

/* y (M, N) = (q * qs) (w * ws)^T for codes q (M, K) and weights w in blocks (N a multiple of 16,
   K of 4). Threads split the output channels in panels of 64, each panel's weights read once. */
void int8_matmul(const uint8_t *q, const float *qs, long M, long K, const int8_t *w, const float *ws,
                 const int32_t *comp, float *y, long N) {
    const long panels = (N / 16 + 3) / 4;
    #pragma omp parallel for schedule(static)
    for (long p = 0; p < panels; p++) {
        int nb = (int)(N / 16 - p * 4);
        if (nb > 4) nb = 4;
        for (long m = 0; m < M; m += 6) {
            int mr = M - m < 6 ? (int)(M - m) : 6;
            any_tile(mr, nb, q + m * K, qs + m, (int)K, w + p * 64 * K, ws + p * 64, comp + p * 64,
                     y + m * N + p * 64, N);
        }
    }
}

/* y (M, N) = x (M, K) W^T: quantize_rows, then int8_matmul, in one call from Python. */
void int8_linear(const float *x, long M, long K, long block, const int8_t *w, const float *ws,
                 const int32_t *comp, float *y, long N) {
    uint8_t *q = malloc(M * K);
    float *qs = malloc(M * sizeof(float));
    quantize_rows(x, M, K, block, q, qs);
    int8_matmul(q, qs, M, K, w, ws, comp, y, N);
    free(q);
    free(qs);
}
