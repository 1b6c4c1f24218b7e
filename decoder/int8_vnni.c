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
#include <omp.h>
#include <string.h>
#include <stdlib.h>

#include "kernels.h"
#include "int4_q8.h"
#include "q8_groups.h"  /* the audio conformer's int8 x int8 products, per 32 inputs (vpdpbusd on ymm here) */

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
static void quantize_rows(const float *x, long M, long K, long block, uint8_t *q, float *scale) {
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
/* GCC copies the accumulator around the intrinsic (and spills); the instruction in place does not */
#define DP(m, n) if (MR > m && NB > n) __asm__("vpdpbusd %[b], %[a], %[c]" : [c] "+v"(c##m##n) : [a] "v"(a##m), [b] "v"(b##n))
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
static void int8_matmul(const uint8_t *q, const float *qs, long M, long K, const int8_t *w, const float *ws,
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
    uint8_t *q = must_malloc(M * K);
    float *qs = must_malloc(M * sizeof(float));
    quantize_rows(x, M, K, block, q, qs);
    int8_matmul(q, qs, M, K, w, ws, comp, y, N);
    free(q);
    free(qs);
}


/* ---- float helpers: exp, GELU, norms --------------------------------------------------------- */

AI __m512 exp16(__m512 x) {  /* e^x: 2^n by scalef times a degree-6 polynomial for 2^f, |f| <= 0.5 */
    x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.f)), _mm512_set1_ps(-88.f));
    const __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f));
    const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), f = _mm512_sub_ps(t, n);
    __m512 p = _mm512_set1_ps(1.535336188319500e-4f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.339887440266574e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.618437357674640e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.550332471162809e-2f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.402264791363012e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.931472028550421e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f));
    return _mm512_scalef_ps(p, n);
}

AI float dot_row(const float *a, const float *b, long D) {  /* four sums hide the adds' latency */
    __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    long d = 0;
    for (; d + 64 <= D; d += 64) {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + d), _mm512_loadu_ps(b + d), s0);
        s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + d + 16), _mm512_loadu_ps(b + d + 16), s1);
        s2 = _mm512_fmadd_ps(_mm512_loadu_ps(a + d + 32), _mm512_loadu_ps(b + d + 32), s2);
        s3 = _mm512_fmadd_ps(_mm512_loadu_ps(a + d + 48), _mm512_loadu_ps(b + d + 48), s3);
    }
    for (; d < D; d += 16) s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + d), _mm512_loadu_ps(b + d), s0);
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
}

/* y = x * gain / sqrt(|x|^2 + eps_term^2), as layers.normalize, plus `add` where given (the residual
   stream after a post-norm). n a multiple of 16; y may be x or add: each element is read before it
   is written. */
static void rms_norm(float *y, const float *x, const float *gain, long n, float eps_term, const float *add) {
    __m512 s = _mm512_setzero_ps();
    for (long i = 0; i < n; i += 16) { const __m512 v = _mm512_loadu_ps(x + i); s = _mm512_fmadd_ps(v, v, s); }
    const __m512 inv = _mm512_set1_ps(1.f / sqrtf(_mm512_reduce_add_ps(s) + eps_term * eps_term));
    for (long i = 0; i < n; i += 16) {
        __m512 v = _mm512_mul_ps(_mm512_mul_ps(_mm512_loadu_ps(x + i), _mm512_loadu_ps(gain + i)), inv);
        if (add) v = _mm512_add_ps(v, _mm512_loadu_ps(add + i));
        _mm512_storeu_ps(y + i, v);
    }
}

/* rms_norm over the rows of x (M, n), into y (M, n); `add` (M, n) or NULL. */
void norm_rows(const float *x, long M, long n, const float *gain, float eps_term, const float *add, float *y) {
    #pragma omp parallel for if (M > 8)
    for (long m = 0; m < M; m++) rms_norm(y + m * n, x + m * n, gain, n, eps_term, add ? add + m * n : NULL);
}

/* GELU, tanh approximation: 0.5 g (1 + tanh(u)) = g / (1 + e^-2u), u = sqrt(2/pi) (g + 0.044715 g^3) */
AI __m512 gelu16(__m512 g) {
    const __m512 u = _mm512_mul_ps(_mm512_set1_ps(0.7978845608028654f),
                                   _mm512_fmadd_ps(_mm512_mul_ps(_mm512_set1_ps(0.044715f), g), _mm512_mul_ps(g, g), g));
    const __m512 d = _mm512_add_ps(_mm512_set1_ps(1.f), exp16(_mm512_mul_ps(_mm512_set1_ps(-2.f), u)));
    const __m512 r = _mm512_rcp14_ps(d);  /* 1/d to 14 bits, then one Newton step: a divide's precision at a third of its cost */
    return _mm512_mul_ps(g, _mm512_fnmadd_ps(_mm512_mul_ps(d, r), r, _mm512_add_ps(r, r)));
}

/* GeGLU rows: out (M, I) = gelu(gu[:, :I]) * gu[:, I:] for gu (M, 2I). out may be gu when M = 1. */
void geglu(const float *gu, long M, long I, float *out) {
    #pragma omp parallel for if (M > 8)
    for (long m = 0; m < M; m++)
        for (long i = 0; i < I; i += 16) {
            const float *r = gu + m * 2 * I + i;
            _mm512_storeu_ps(out + m * I + i, _mm512_mul_ps(gelu16(_mm512_loadu_ps(r)), _mm512_loadu_ps(r + I)));
        }
}


/* o (D) = sum over keys s of w[s] * v[s], 128 outputs at a time in registers; zero weights skipped. */
static void weigh_values(float *o, const float *w, const float *v, long n, long D) {
    long d0 = 0;
    for (; d0 + 128 <= D; d0 += 128) {
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
        for (long s = 0; s < n; s++) {
            if (w[s] == 0.f) continue;
            const __m512 ws = _mm512_set1_ps(w[s]);
            const float *r = v + s * D + d0;
            a0 = _mm512_fmadd_ps(_mm512_loadu_ps(r), ws, a0), a1 = _mm512_fmadd_ps(_mm512_loadu_ps(r + 16), ws, a1);
            a2 = _mm512_fmadd_ps(_mm512_loadu_ps(r + 32), ws, a2), a3 = _mm512_fmadd_ps(_mm512_loadu_ps(r + 48), ws, a3);
            a4 = _mm512_fmadd_ps(_mm512_loadu_ps(r + 64), ws, a4), a5 = _mm512_fmadd_ps(_mm512_loadu_ps(r + 80), ws, a5);
            a6 = _mm512_fmadd_ps(_mm512_loadu_ps(r + 96), ws, a6), a7 = _mm512_fmadd_ps(_mm512_loadu_ps(r + 112), ws, a7);
        }
        float *out = o + d0;
        _mm512_storeu_ps(out, a0), _mm512_storeu_ps(out + 16, a1), _mm512_storeu_ps(out + 32, a2);
        _mm512_storeu_ps(out + 48, a3), _mm512_storeu_ps(out + 64, a4), _mm512_storeu_ps(out + 80, a5);
        _mm512_storeu_ps(out + 96, a6), _mm512_storeu_ps(out + 112, a7);
    }
    for (; d0 < D; d0 += 16) {
        __m512 a = _mm512_setzero_ps();
        for (long s = 0; s < n; s++)
            if (w[s] != 0.f) a = _mm512_fmadd_ps(_mm512_loadu_ps(v + s * D + d0), _mm512_set1_ps(w[s]), a);
        _mm512_storeu_ps(o + d0, a);
    }
}

/* w[s] = e^(w[s] - m) for a part's n scores (masked ones, -inf, to 0); their sum */
static float exp_scores(float *w, long n, float m) {
    float l = 0.f;
    long s = 0;
    for (; s + 16 <= n; s += 16) {
        const __m512 x = _mm512_loadu_ps(w + s);
        const __m512 e = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, _mm512_set1_ps(-INFINITY), _CMP_NEQ_OQ),
                                             exp16(_mm512_sub_ps(x, _mm512_set1_ps(m))));
        _mm512_storeu_ps(w + s, e);
        l += _mm512_reduce_add_ps(e);
    }
    for (; s < n; s++) l += (w[s] = w[s] == -INFINITY ? 0.f : expf(w[s] - m));
    return l;
}

/* ---- a prompt's attention: many query rows, masked keys skipped --------------------------------
   Flash attention (Dao et al. 2022) on the CPU: tiles of 8 query rows of one head run over the keys
   32 at a time, keeping a running max, sum and weighted values per row, so the scores never exist
   whole. The mask comes from positions, not a matrix: a key is seen when 0 <= its position <= the
   query's and (sliding layers) less than `window` back; a tile skips a key block none of its rows
   sees (the causal upper half, a ring's empty slots). */
#define QROWS 8
#define KCOLS 32

/* seen[r] bit j: whether query row r sees key j of the block starting at key s0 (kp padded to whole blocks) */
static int see(const long *qp, int rows, const int32_t *kp, long s0, long window, uint32_t *seen) {
    int any = 0;
    const __m512i k0 = _mm512_loadu_si512(kp + s0), k1 = _mm512_loadu_si512(kp + s0 + 16);
    const __mmask16 f0 = _mm512_cmpge_epi32_mask(k0, _mm512_setzero_si512()), f1 = _mm512_cmpge_epi32_mask(k1, _mm512_setzero_si512());
    for (int r = 0; r < rows; r++) {
        const __m512i p = _mm512_set1_epi32((int32_t)qp[r]);
        __mmask16 a = _mm512_mask_cmple_epi32_mask(f0, k0, p), b = _mm512_mask_cmple_epi32_mask(f1, k1, p);
        if (window > 0) {  /* p - k < window  <=>  k > p - window */
            const __m512i low = _mm512_set1_epi32((int32_t)(qp[r] - window));
            a = _mm512_mask_cmpgt_epi32_mask(a, k0, low), b = _mm512_mask_cmpgt_epi32_mask(b, k1, low);
        }
        seen[r] = (uint32_t)a | (uint32_t)b << 16, any |= seen[r] != 0;
    }
    return any;
}

/* One tile: rows q (rows, D) of a head, keys kt (blocks), values v (S, D) of its key head. */
static void attend_tile(const float *q, int rows, const long *qp, const float *kt, const float *v,
                        const int32_t *kp, long S, long D, long window, float scale, float *out, long out_stride) {
    float o[QROWS * D], m[QROWS], l[QROWS], p[QROWS * KCOLS];
    uint32_t seen[QROWS];
    for (int r = 0; r < QROWS; r++) m[r] = -INFINITY, l[r] = 0.f;
    memset(o, 0, sizeof(o));
    for (long s0 = 0; s0 < S; s0 += KCOLS) {
        if (!see(qp, rows, kp, s0, window, seen)) continue;
        const float *kb = kt + (s0 / KCOLS) * D * KCOLS;
        __m512 c[QROWS][2];
        for (int r = 0; r < QROWS; r++) c[r][0] = c[r][1] = _mm512_setzero_ps();
        for (long d = 0; d < D; d++) {  /* scores: rows x 32 keys, one fma per row and 16 keys */
            const __m512 k0 = _mm512_loadu_ps(kb + d * KCOLS), k1 = _mm512_loadu_ps(kb + d * KCOLS + 16);
            for (int r = 0; r < QROWS; r++) {
                const __m512 qd = _mm512_set1_ps(q[(r < rows ? r : 0) * D + d]);
                c[r][0] = _mm512_fmadd_ps(qd, k0, c[r][0]), c[r][1] = _mm512_fmadd_ps(qd, k1, c[r][1]);
            }
        }
        float alpha[QROWS];
        for (int r = 0; r < QROWS; r++) {  /* online softmax: new max, rescale what came before */
            const __mmask16 lo = (__mmask16)(r < rows ? seen[r] : 0), hi = (__mmask16)(r < rows ? seen[r] >> 16 : 0);
            const __m512 ninf = _mm512_set1_ps(-INFINITY);
            const __m512 sc = _mm512_set1_ps(scale);
            const __m512 s0v = _mm512_mask_mul_ps(ninf, lo, c[r][0], sc), s1v = _mm512_mask_mul_ps(ninf, hi, c[r][1], sc);
            const float mx = fmaxf(m[r], _mm512_reduce_max_ps(_mm512_max_ps(s0v, s1v)));
            alpha[r] = mx == -INFINITY ? 1.f : expf(m[r] - mx);
            const __m512 e0 = _mm512_maskz_mov_ps(lo, exp16(_mm512_sub_ps(s0v, _mm512_set1_ps(mx))));
            const __m512 e1 = _mm512_maskz_mov_ps(hi, exp16(_mm512_sub_ps(s1v, _mm512_set1_ps(mx))));
            _mm512_storeu_ps(p + r * KCOLS, e0), _mm512_storeu_ps(p + r * KCOLS + 16, e1);
            l[r] = l[r] * alpha[r] + _mm512_reduce_add_ps(_mm512_add_ps(e0, e1));
            m[r] = mx;
        }
        const long keys = S - s0 < KCOLS ? S - s0 : KCOLS;
        for (long d = 0; d < D; d += 32) {  /* o = o * alpha + p v: 8 rows x 32 outputs in registers */
            __m512 a[QROWS][2];
            for (int r = 0; r < QROWS; r++)
                for (int i = 0; i < 2; i++)
                    a[r][i] = _mm512_mul_ps(_mm512_loadu_ps(o + r * D + d + 16 * i), _mm512_set1_ps(alpha[r]));
            for (long j = 0; j < keys; j++) {
                const __m512 v0 = _mm512_loadu_ps(v + (s0 + j) * D + d), v1 = _mm512_loadu_ps(v + (s0 + j) * D + d + 16);
                for (int r = 0; r < QROWS; r++) {
                    const __m512 pj = _mm512_set1_ps(p[r * KCOLS + j]);
                    a[r][0] = _mm512_fmadd_ps(pj, v0, a[r][0]), a[r][1] = _mm512_fmadd_ps(pj, v1, a[r][1]);
                }
            }
            for (int r = 0; r < QROWS; r++)
                for (int i = 0; i < 2; i++) _mm512_storeu_ps(o + r * D + d + 16 * i, a[r][i]);
        }
    }
    for (int r = 0; r < rows; r++) {  /* a row that sees no key (none here: a query sees itself) gets zeros */
        const __m512 inv = _mm512_set1_ps(l[r] > 0.f ? 1.f / l[r] : 0.f);
        for (long d = 0; d < D; d += 16) _mm512_storeu_ps(out + r * out_stride + d, _mm512_mul_ps(_mm512_loadu_ps(o + r * D + d), inv));
    }
}

#include "gemma3_layer.h"  /* the layer's calls, over the helpers above */
#include "convert.h"  /* load-time conversions, over rotate_row */
#include "gemma3n_step.h"  /* a decoded token through a Gemma 3n layer, over the helpers above */
#include "gemma4_step.h"  /* a decoded token through a Gemma 4 layer, over the helpers above */
#include "norm2d.h"  /* the channel norm of NCHW images (8 lanes: it streams memory) */
#include "dwconv2d.h"  /* depthwise convolutions of NCHW images (plain C, vectorized by the compiler) */
