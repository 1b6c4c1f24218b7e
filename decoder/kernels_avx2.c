/* The kernels of int8_vnni.c for CPUs with AVX2 and FMA but no AVX-512 (AMD Zen 2/3, Intel before
   Skylake-X): the same entry points, arguments and weight layouts, so decoder/native.py binds either
   file and the weight cache is the same; 8 floats a register instead of 16.

   int8 without VNNI: _mm256_maddubs_epi16 multiplies unsigned by signed bytes and sums each pair into
   int16, saturating, so int8_vnni.c's unsigned-around-128 inputs would overflow (2 x 255 x 127).
   Here the input rows stay signed (-127..127) and each product is |x| times (w with x's sign)
   (_mm256_sign_epi8, as llama.cpp does): a pair is at most 2 x 127 x 128, and `comp` (the 128's
   correction) is not read (pack_blocks still fills it: one layout for both files). Weights are
   -127..127 (quantize_int8 clamps), so moving a sign onto one never wraps.
   Built by decoder/native.py with the system C compiler; threads are OpenMP's (torch's own pool). */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <omp.h>
#include <string.h>
#include <stdlib.h>

#include "kernels.h"
#include "int4_q8.h"
#include "q8_groups.h"  /* the audio conformer's int8 x int8 products, per 32 inputs */
#include "norm2d.h"  /* exp8, gelu8, and the channel norm of NCHW images */
#include "dwconv2d.h"  /* depthwise convolutions of NCHW images (plain C, vectorized by the compiler) */

AI float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

AI float hmax8(__m256 v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_max_ss(s, _mm_movehdup_ps(s)));
}

AI __m256 abs8(__m256 v) { return _mm256_andnot_ps(_mm256_set1_ps(-0.f), v); }

/* r (K floats) times a block-diagonal Sylvester-Hadamard matrix, blocks of `block` (a power of two,
   16 or more), unscaled: the fast Walsh-Hadamard transform, K log2(block) adds. */
static void rotate_row(float *r, long K, long block) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (int len = 1; len < 8; len *= 2) {  /* butterflies inside one register: partner j ^ len */
        const __m256i bit = _mm256_set1_epi32(len), partner = _mm256_xor_si256(lane, bit);
        const __m256 upper = _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_and_si256(lane, bit), bit));
        const __m256 sign = _mm256_blendv_ps(_mm256_set1_ps(1.f), _mm256_set1_ps(-1.f), upper);
        for (long k = 0; k < K; k += 8) {
            const __m256 v = _mm256_loadu_ps(r + k);
            _mm256_storeu_ps(r + k, _mm256_fmadd_ps(sign, v, _mm256_permutevar8x32_ps(v, partner)));
        }
    }
    for (long len = 8; len < block; len *= 2)  /* butterflies between registers */
        for (long b = 0; b < K; b += 2 * len)
            for (long j = b; j < b + len; j += 8) {
                const __m256 u = _mm256_loadu_ps(r + j), v = _mm256_loadu_ps(r + j + len);
                _mm256_storeu_ps(r + j, _mm256_add_ps(u, v));
                _mm256_storeu_ps(r + j + len, _mm256_sub_ps(u, v));
            }
    /* the 1/sqrt(block) that makes it orthonormal is folded into the row's scale by the caller */
}

/* 16 int32 (two registers) -> 16 int8, saturating, in order */
AI __m128i pack16(__m256i a, __m256i b) {
    const __m128i a16 = _mm_packs_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
    const __m128i b16 = _mm_packs_epi32(_mm256_castsi256_si128(b), _mm256_extracti128_si256(b, 1));
    return _mm_packs_epi16(a16, b16);
}

/* Rows of x (M, K) -> signed 8-bit codes q (M, K) (max |x| -> 127), their magnitudes u (M, K) and
   one scale per row (K a multiple of 16). With `block` > 0 each row is first rotated in Hadamard
   blocks of that size (see rotate_row). The same rounding as int8_vnni.c's, without the 128. */
static void quantize_rows(const float *x, long M, long K, long block, int8_t *q, int8_t *u, float *scale) {
    const float norm = block > 0 ? 1.f / sqrtf((float)block) : 1.f;
    #pragma omp parallel for if (M > 8)
    for (long m = 0; m < M; m++) {
        float buf[block > 0 ? K : 1];
        const float *r = x + m * K;
        if (block > 0) {
            memcpy(buf, r, sizeof(float) * K);
            rotate_row(buf, K, block);
            r = buf;
        }
        __m256 peak = _mm256_setzero_ps();
        for (long k = 0; k < K; k += 8) peak = _mm256_max_ps(peak, abs8(_mm256_loadu_ps(r + k)));
        const float p = hmax8(peak);
        scale[m] = p * norm / 127.f;
        const __m256 s = _mm256_set1_ps(p > 1e-30f ? 127.f / p : 0.f);
        for (long k = 0; k < K; k += 16) {
            const __m128i v = pack16(_mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(r + k), s)),
                                     _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(r + k + 8), s)));
            _mm_storeu_si128((__m128i *)(q + m * K + k), v);
            _mm_storeu_si128((__m128i *)(u + m * K + k), _mm_abs_epi8(v));
        }
    }
}

/* One register tile: rows m < MR of the codes times one block of 16 channels (two registers of 8),
   over all of K. Per row and 4 inputs: the weights take the row's signs, maddubs multiplies by the
   magnitudes and sums pairs (int16), madd with ones sums the two pairs into each channel's int32.
   8 named accumulators: GCC keeps those in the 16 registers, an array it spills. */
/* the add in place: GCC otherwise spills accumulators to the stack (store-to-load chains, ~1.4x slower on Zen 3) */
#define DOT(m, h) { const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(u##m, _mm256_sign_epi8(b##h, a##m)), ones); \
        __asm__("vpaddd %[p], %[c], %[c]" : [c] "+x"(c##m##h) : [p] "x"(p)); }
#define ROW(m) if (MR > m) { \
        const __m256i a##m = _mm256_set1_epi32(*(const int32_t *)(q + (m) * K + k)); \
        const __m256i u##m = _mm256_set1_epi32(*(const int32_t *)(u + (m) * K + k)); \
        DOT(m, 0); DOT(m, 1); }
#define OUT(m) if (MR > m) { \
        const __m256 s = _mm256_set1_ps(qs[m]); float *o = y + (m) * N; \
        _mm256_storeu_ps(o, _mm256_mul_ps(_mm256_cvtepi32_ps(c##m##0), _mm256_mul_ps(w0, s))); \
        _mm256_storeu_ps(o + 8, _mm256_mul_ps(_mm256_cvtepi32_ps(c##m##1), _mm256_mul_ps(w1, s))); }

AI void tile(const int MR, const int8_t *q, const int8_t *u, const float *qs, long K, const int8_t *w,
             const float *ws, float *y, long N) {
    const __m256i z = _mm256_setzero_si256(), ones = _mm256_set1_epi16(1);
    __m256i c00 = z, c01 = z, c10 = z, c11 = z, c20 = z, c21 = z, c30 = z, c31 = z;
    for (long k = 0; k < K; k += 4) {
        /* fetch 4 KB ahead, for any number of rows: one row streams the weight (2 threads: 15.8 -> 17.9 GB/s),
           and 4 rows (a batch of streams) left the LM head waiting on memory (1 thread: 18.7 -> 13.8 ms, AMD Zen 3) */
        _mm_prefetch((const char *)(w + k * 16 + 4096), _MM_HINT_T0);
        const __m256i b0 = _mm256_loadu_si256((const __m256i *)(w + k * 16));
        const __m256i b1 = _mm256_loadu_si256((const __m256i *)(w + k * 16 + 32));
        ROW(0); ROW(1); ROW(2); ROW(3);
    }
    const __m256 w0 = _mm256_loadu_ps(ws), w1 = _mm256_loadu_ps(ws + 8);
    OUT(0); OUT(1); OUT(2); OUT(3);
}
#undef DOT
#undef ROW
#undef OUT

/* y (M, N) = (q * qs) (w * ws)^T for codes q (M, K) and weights w in blocks (N a multiple of 16,
   K of 4). Threads split the blocks of 16 channels; each block's weights (K x 16 bytes, in L1 or
   L2) serve every row, 4 rows a tile. One row streams the matrix once, front to back. */
static void int8_matmul(const int8_t *q, const int8_t *u, const float *qs, long M, long K, const int8_t *w,
                        const float *ws, float *y, long N) {
    #pragma omp parallel for schedule(static)
    for (long b = 0; b < N / 16; b++) {
        const int8_t *wb = w + b * 16 * K;
        for (long m = 0; m < M; m += 4) {
            const int8_t *qm = q + m * K, *um = u + m * K;
            float *ym = y + m * N + b * 16;
            switch (M - m < 4 ? M - m : 4) {
            case 4: tile(4, qm, um, qs + m, K, wb, ws + b * 16, ym, N); break;
            case 3: tile(3, qm, um, qs + m, K, wb, ws + b * 16, ym, N); break;
            case 2: tile(2, qm, um, qs + m, K, wb, ws + b * 16, ym, N); break;
            default: tile(1, qm, um, qs + m, K, wb, ws + b * 16, ym, N);
            }
        }
    }
}

/* y (M, N) = x (M, K) W^T: quantize_rows, then int8_matmul, in one call from Python. `comp` is
   int8_vnni.c's (the same binding): the signed codes here need no correction. */
void int8_linear(const float *x, long M, long K, long block, const int8_t *w, const float *ws,
                 const int32_t *comp, float *y, long N) {
    static _Thread_local Scratch codes;
    (void)comp;
    int8_t *q = scratch(&codes, 2 * M * K + sizeof(float) * M), *u = q + M * K;
    float *qs = (float *)(u + M * K);  /* K is a multiple of 16: aligned for floats */
    quantize_rows(x, M, K, block, q, u, qs);
    int8_matmul(q, u, qs, M, K, w, ws, y, N);
    scratch_trim(&codes);
}

/* ---- float helpers: norms (exp8 and gelu8 are norm2d.h's) -------------------------------------- */

AI float dot_row(const float *a, const float *b, long D) {  /* four sums hide the adds' latency; D % 16 == 0 */
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    long d = 0;
    for (; d + 32 <= D; d += 32) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + d), _mm256_loadu_ps(b + d), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + d + 8), _mm256_loadu_ps(b + d + 8), s1);
        s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + d + 16), _mm256_loadu_ps(b + d + 16), s2);
        s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + d + 24), _mm256_loadu_ps(b + d + 24), s3);
    }
    for (; d < D; d += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + d), _mm256_loadu_ps(b + d), s0);
    return hsum8(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
}

/* y = x * gain / sqrt(|x|^2 + eps_term^2), as layers.normalize, plus `add` where given (the residual
   stream after a post-norm). n a multiple of 8; y may be x or add: each element is read before it
   is written. */
static void rms_norm(float *y, const float *x, const float *gain, long n, float eps_term, const float *add) {
    __m256 s0 = _mm256_setzero_ps(), s1 = s0;
    long i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m256 u = _mm256_loadu_ps(x + i), v = _mm256_loadu_ps(x + i + 8);
        s0 = _mm256_fmadd_ps(u, u, s0), s1 = _mm256_fmadd_ps(v, v, s1);
    }
    for (; i < n; i += 8) { const __m256 v = _mm256_loadu_ps(x + i); s0 = _mm256_fmadd_ps(v, v, s0); }
    const __m256 inv = _mm256_set1_ps(1.f / sqrtf(hsum8(_mm256_add_ps(s0, s1)) + eps_term * eps_term));
    for (i = 0; i < n; i += 8) {
        __m256 v = _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(gain + i)), inv);
        if (add) v = _mm256_add_ps(v, _mm256_loadu_ps(add + i));
        _mm256_storeu_ps(y + i, v);
    }
}

/* rms_norm over the rows of x (M, n), into y (M, n); `add` (M, n) or NULL. */
void norm_rows(const float *x, long M, long n, const float *gain, float eps_term, const float *add, float *y) {
    #pragma omp parallel for if (M > 8)
    for (long m = 0; m < M; m++) rms_norm(y + m * n, x + m * n, gain, n, eps_term, add ? add + m * n : NULL);
}

/* GeGLU rows: out (M, I) = gelu(gu[:, :I]) * gu[:, I:] for gu (M, 2I). out may be gu when M = 1. */
void geglu(const float *gu, long M, long I, float *out) {
    #pragma omp parallel for if (M > 8)
    for (long m = 0; m < M; m++)
        for (long i = 0; i < I; i += 8) {
            const float *r = gu + m * 2 * I + i;
            _mm256_storeu_ps(out + m * I + i, _mm256_mul_ps(gelu8(_mm256_loadu_ps(r)), _mm256_loadu_ps(r + I)));
        }
}

/* o (D) = sum over keys s of w[s] * v[s], 64 outputs at a time in registers; zero weights skipped. */
static void weigh_values(float *o, const float *w, const float *v, long n, long D) {
    long d0 = 0;
    for (; d0 + 64 <= D; d0 += 64) {
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
        for (long s = 0; s < n; s++) {
            if (w[s] == 0.f) continue;
            const __m256 ws = _mm256_set1_ps(w[s]);
            const float *r = v + s * D + d0;
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(r), ws, a0), a1 = _mm256_fmadd_ps(_mm256_loadu_ps(r + 8), ws, a1);
            a2 = _mm256_fmadd_ps(_mm256_loadu_ps(r + 16), ws, a2), a3 = _mm256_fmadd_ps(_mm256_loadu_ps(r + 24), ws, a3);
            a4 = _mm256_fmadd_ps(_mm256_loadu_ps(r + 32), ws, a4), a5 = _mm256_fmadd_ps(_mm256_loadu_ps(r + 40), ws, a5);
            a6 = _mm256_fmadd_ps(_mm256_loadu_ps(r + 48), ws, a6), a7 = _mm256_fmadd_ps(_mm256_loadu_ps(r + 56), ws, a7);
        }
        float *out = o + d0;
        _mm256_storeu_ps(out, a0), _mm256_storeu_ps(out + 8, a1), _mm256_storeu_ps(out + 16, a2);
        _mm256_storeu_ps(out + 24, a3), _mm256_storeu_ps(out + 32, a4), _mm256_storeu_ps(out + 40, a5);
        _mm256_storeu_ps(out + 48, a6), _mm256_storeu_ps(out + 56, a7);
    }
    for (; d0 < D; d0 += 8) {
        __m256 a = _mm256_setzero_ps();
        for (long s = 0; s < n; s++)
            if (w[s] != 0.f) a = _mm256_fmadd_ps(_mm256_loadu_ps(v + s * D + d0), _mm256_set1_ps(w[s]), a);
        _mm256_storeu_ps(o + d0, a);
    }
}

/* w[s] = e^(w[s] - m) for a part's n scores (masked ones, -inf, to 0); their sum */
static float exp_scores(float *w, long n, float m) {
    long s = 0;
    __m256 sum = _mm256_setzero_ps();
    for (; s + 8 <= n; s += 8) {
        const __m256 x = _mm256_loadu_ps(w + s);
        const __m256 seen = _mm256_cmp_ps(x, _mm256_set1_ps(-INFINITY), _CMP_NEQ_OQ);
        const __m256 e = _mm256_and_ps(seen, exp8(_mm256_sub_ps(x, _mm256_set1_ps(m))));
        _mm256_storeu_ps(w + s, e);
        sum = _mm256_add_ps(sum, e);
    }
    float l = hsum8(sum);
    for (; s < n; s++) l += (w[s] = w[s] == -INFINITY ? 0.f : expf(w[s] - m));
    return l;
}

/* ---- a prompt's attention: many query rows, masked keys skipped --------------------------------
   Flash attention (Dao et al. 2022) on the CPU: tiles of 6 query rows of one head run over the keys
   16 at a time (12 score registers of 8), keeping a running max, sum and weighted values per row,
   so the scores never exist whole. The mask comes from positions, not a matrix: a key is seen when
   0 <= its position <= the query's and (sliding layers) less than `window` back; a tile skips a key
   block none of its rows sees (the causal upper half, a ring's empty slots). */
#define QROWS 6
#define KCOLS 16

/* seen[r][i]: lanes of key block s0's half i that query row r sees (all ones or zeros); whether any is */
static int see(const long *qp, int rows, const int32_t *kp, long s0, long window, __m256 seen[QROWS][2]) {
    int any = 0;
    const __m256i k0 = _mm256_loadu_si256((const __m256i *)(kp + s0)), k1 = _mm256_loadu_si256((const __m256i *)(kp + s0 + 8));
    const __m256i none = _mm256_set1_epi32(-1);
    const __m256i f0 = _mm256_cmpgt_epi32(k0, none), f1 = _mm256_cmpgt_epi32(k1, none);  /* filled slots */
    for (int r = 0; r < QROWS; r++) {
        __m256i a = _mm256_setzero_si256(), b = a;
        if (r < rows) {
            const __m256i p = _mm256_set1_epi32((int32_t)qp[r]);  /* k <= p: not k > p */
            a = _mm256_andnot_si256(_mm256_cmpgt_epi32(k0, p), f0), b = _mm256_andnot_si256(_mm256_cmpgt_epi32(k1, p), f1);
            if (window > 0) {  /* p - k < window  <=>  k > p - window */
                const __m256i low = _mm256_set1_epi32((int32_t)(qp[r] - window));
                a = _mm256_and_si256(a, _mm256_cmpgt_epi32(k0, low)), b = _mm256_and_si256(b, _mm256_cmpgt_epi32(k1, low));
            }
            any |= !_mm256_testz_si256(_mm256_or_si256(a, b), _mm256_or_si256(a, b));
        }
        seen[r][0] = _mm256_castsi256_ps(a), seen[r][1] = _mm256_castsi256_ps(b);
    }
    return any;
}

/* One tile: rows q (rows, D) of a head, keys kt (blocks), values v (S, D) of its key head. */
static void attend_tile(const float *q, int rows, const long *qp, const float *kt, const float *v,
                        const int32_t *kp, long S, long D, long window, float scale, float *out, long out_stride) {
    float o[QROWS * D], m[QROWS], l[QROWS], p[QROWS * KCOLS];
    __m256 seen[QROWS][2];
    for (int r = 0; r < QROWS; r++) m[r] = -INFINITY, l[r] = 0.f;
    memset(o, 0, sizeof(o));
    for (long s0 = 0; s0 < S; s0 += KCOLS) {
        if (!see(qp, rows, kp, s0, window, seen)) continue;
        const float *kb = kt + (s0 / KCOLS) * D * KCOLS;
        __m256 c[QROWS][2];
        for (int r = 0; r < QROWS; r++) c[r][0] = c[r][1] = _mm256_setzero_ps();
        for (long d = 0; d < D; d++) {  /* scores: rows x 16 keys, one fma per row and 8 keys */
            const __m256 k0 = _mm256_loadu_ps(kb + d * KCOLS), k1 = _mm256_loadu_ps(kb + d * KCOLS + 8);
            for (int r = 0; r < QROWS; r++) {
                const __m256 qd = _mm256_set1_ps(q[(r < rows ? r : 0) * D + d]);
                c[r][0] = _mm256_fmadd_ps(qd, k0, c[r][0]), c[r][1] = _mm256_fmadd_ps(qd, k1, c[r][1]);
            }
        }
        float alpha[QROWS];
        for (int r = 0; r < QROWS; r++) {  /* online softmax: new max, rescale what came before */
            const __m256 ninf = _mm256_set1_ps(-INFINITY), sc = _mm256_set1_ps(scale);
            const __m256 s0v = _mm256_blendv_ps(ninf, _mm256_mul_ps(c[r][0], sc), seen[r][0]);
            const __m256 s1v = _mm256_blendv_ps(ninf, _mm256_mul_ps(c[r][1], sc), seen[r][1]);
            const float mx = fmaxf(m[r], hmax8(_mm256_max_ps(s0v, s1v)));
            alpha[r] = mx == -INFINITY ? 1.f : expf(m[r] - mx);
            const __m256 e0 = _mm256_and_ps(seen[r][0], exp8(_mm256_sub_ps(s0v, _mm256_set1_ps(mx))));
            const __m256 e1 = _mm256_and_ps(seen[r][1], exp8(_mm256_sub_ps(s1v, _mm256_set1_ps(mx))));
            _mm256_storeu_ps(p + r * KCOLS, e0), _mm256_storeu_ps(p + r * KCOLS + 8, e1);
            l[r] = l[r] * alpha[r] + hsum8(_mm256_add_ps(e0, e1));
            m[r] = mx;
        }
        const long keys = S - s0 < KCOLS ? S - s0 : KCOLS;
        for (long d = 0; d < D; d += 16) {  /* o = o * alpha + p v: 6 rows x 16 outputs in registers */
            __m256 a[QROWS][2];
            for (int r = 0; r < QROWS; r++)
                for (int i = 0; i < 2; i++)
                    a[r][i] = _mm256_mul_ps(_mm256_loadu_ps(o + r * D + d + 8 * i), _mm256_set1_ps(alpha[r]));
            for (long j = 0; j < keys; j++) {
                const __m256 v0 = _mm256_loadu_ps(v + (s0 + j) * D + d), v1 = _mm256_loadu_ps(v + (s0 + j) * D + d + 8);
                for (int r = 0; r < QROWS; r++) {
                    const __m256 pj = _mm256_set1_ps(p[r * KCOLS + j]);
                    a[r][0] = _mm256_fmadd_ps(pj, v0, a[r][0]), a[r][1] = _mm256_fmadd_ps(pj, v1, a[r][1]);
                }
            }
            for (int r = 0; r < QROWS; r++)
                for (int i = 0; i < 2; i++) _mm256_storeu_ps(o + r * D + d + 8 * i, a[r][i]);
        }
    }
    for (int r = 0; r < rows; r++) {  /* a row that sees no key (none here: a query sees itself) gets zeros */
        const __m256 inv = _mm256_set1_ps(l[r] > 0.f ? 1.f / l[r] : 0.f);
        for (long d = 0; d < D; d += 8) _mm256_storeu_ps(out + r * out_stride + d, _mm256_mul_ps(_mm256_loadu_ps(o + r * D + d), inv));
    }
}

#include "gemma3_layer.h"  /* the layer's calls, over the helpers above */
#include "convert.h"  /* load-time conversions, over rotate_row */
#include "gemma3n_step.h"  /* a decoded token through a Gemma 3n layer, over the helpers above */
#include "gemma4_step.h"  /* a decoded token through a Gemma 4 layer, over the helpers above */
#include "int8_rows.h"  /* the rounding and output passes around oneDNN's int8 product (the encoders) */
#include "encoder_attention.h"  /* a BERT encoder's self-attention from its q/k/v rows */
