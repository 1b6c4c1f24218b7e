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

#define AI static inline __attribute__((always_inline))

/* ---- scratch kept from call to call ---------------------------------------------------------
   One buffer per purpose and calling thread, grown when a call needs more: a decoded token
   allocates nothing, and a prompt's pages are not given back and faulted in again every layer.
   A buffer past KEEP_BYTES (a long unchunked prompt) is freed after its call. */
#define KEEP_BYTES (32L << 20)
typedef struct { void *p; size_t bytes; } Scratch;

static void *scratch(Scratch *s, size_t bytes) {
    if (bytes > s->bytes) {
        free(s->p);
        s->p = malloc(bytes);
        if (s->p == NULL) {  /* nothing sensible to compute without it; a clear death beats a wrong answer */
            fprintf(stderr, "mmsdk kernels: out of memory (%zu bytes of scratch)\n", bytes);
            abort();
        }
        s->bytes = bytes;
    }
    return s->p;
}

static void scratch_trim(Scratch *s) {
    if (s->bytes > KEEP_BYTES) free(s->p), s->p = NULL, s->bytes = 0;
}

static void *must_malloc(size_t bytes) {
    void *p = malloc(bytes);
    if (p == NULL) {
        fprintf(stderr, "mmsdk kernels: out of memory (%zu bytes)\n", bytes);
        abort();
    }
    return p;
}

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

/* int8 rows w (N, K) -> blocks (N/16, K/4, 16, 4), and comp = 128 x each row's sum (int8_vnni.c's layout). */
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
#define DOT(m, h) c##m##h = _mm256_add_epi32(c##m##h, _mm256_madd_epi16(_mm256_maddubs_epi16(u##m, _mm256_sign_epi8(b##h, a##m)), ones))
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

/* ---- rows times a 4-bit weight in torch's own CPU layout (float32 input) ---------------------
   `_convert_weight_to_int4pack_for_cpu` stores blocks of 64 output channels; for each input k a
   block holds 32 bytes, channel j < 32 in the low nibble of byte j and channel j >= 32 in the high
   nibble of byte j - 32. scales_and_zeros (K/group, N, 2) bfloat16: w = (q - 8) * scale + zero, so
   over a group x . w = scale * (x . q) + (zero - 8 scale) * sum(x). Reading the layout the prompt
   path packs means no second copy of the weight. */
AI __m256 u8_to_ps(__m128i v) { return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v)); }  /* the low 8 bytes */

/* The 64 codes of one input k as 8 registers of 8 floats, channels in order. */
#define NIBBLES(wk) \
    const __m256i v_ = _mm256_loadu_si256((const __m256i *)(wk)); \
    const __m256i lo_ = _mm256_and_si256(v_, nibble), hi_ = _mm256_and_si256(_mm256_srli_epi16(v_, 4), nibble); \
    const __m128i l0_ = _mm256_castsi256_si128(lo_), l1_ = _mm256_extracti128_si256(lo_, 1); \
    const __m128i h0_ = _mm256_castsi256_si128(hi_), h1_ = _mm256_extracti128_si256(hi_, 1); \
    const __m256 q0 = u8_to_ps(l0_), q1 = u8_to_ps(_mm_srli_si128(l0_, 8)), q2 = u8_to_ps(l1_), \
                 q3 = u8_to_ps(_mm_srli_si128(l1_, 8)), q4 = u8_to_ps(h0_), q5 = u8_to_ps(_mm_srli_si128(h0_, 8)), \
                 q6 = u8_to_ps(h1_), q7 = u8_to_ps(_mm_srli_si128(h1_, 8))

/* scale (low half) and zero (high half) of 8 (scale, zero) bfloat16 pairs, one 32-bit word each */
AI __m256 bf16_low(__m256i p) { return _mm256_castsi256_ps(_mm256_slli_epi32(p, 16)); }
AI __m256 bf16_high(__m256i p) { return _mm256_castsi256_ps(_mm256_and_si256(p, _mm256_set1_epi32((int)0xFFFF0000))); }

static void int4_gemv(const float *x, long K, const uint8_t *w, const uint32_t *scales_and_zeros, long group,
                      float *y, long N) {
    #pragma omp parallel for schedule(static)
    for (long b = 0; b < N / 64; b++) {
        const uint8_t *wb = w + b * K * 32;
        const __m256i nibble = _mm256_set1_epi8(0x0F);
        float out[64] = {0};  /* the 8 group sums fill the registers; the running outputs wait in L1 */
        for (long g0 = 0; g0 < K; g0 += group) {
            __m256 a[8];
            for (int i = 0; i < 8; i++) a[i] = _mm256_setzero_ps();
            float sum = 0.f;
            for (long k = g0; k < g0 + group; k++) {
                NIBBLES(wb + k * 32);
                const __m256 xk = _mm256_set1_ps(x[k]);
                a[0] = _mm256_fmadd_ps(q0, xk, a[0]), a[1] = _mm256_fmadd_ps(q1, xk, a[1]);
                a[2] = _mm256_fmadd_ps(q2, xk, a[2]), a[3] = _mm256_fmadd_ps(q3, xk, a[3]);
                a[4] = _mm256_fmadd_ps(q4, xk, a[4]), a[5] = _mm256_fmadd_ps(q5, xk, a[5]);
                a[6] = _mm256_fmadd_ps(q6, xk, a[6]), a[7] = _mm256_fmadd_ps(q7, xk, a[7]);
                sum += x[k];
            }
            const uint32_t *sz = scales_and_zeros + (g0 / group) * N + b * 64;
            for (int i = 0; i < 8; i++) {
                const __m256i p = _mm256_loadu_si256((const __m256i *)(sz + 8 * i));
                const __m256 sc = bf16_low(p), ze = bf16_high(p);
                __m256 o = _mm256_fmadd_ps(sc, a[i], _mm256_loadu_ps(out + 8 * i));
                o = _mm256_fmadd_ps(_mm256_fnmadd_ps(_mm256_set1_ps(8.f), sc, ze), _mm256_set1_ps(sum), o);
                _mm256_storeu_ps(out + 8 * i, o);
            }
        }
        memcpy(y + b * 64, out, sizeof(out));
    }
}

/* Many rows times a 4-bit weight, float32 throughout: a prompt is compute-bound, so each thread
   dequantizes one block of 64 channels at a time into a float panel (K x 64, held in L2) and runs
   register tiles of 6 rows x 16 channels over it, every row reusing the panel. */
#define FMA(m, n) if (MR > m) c##m##n = _mm256_fmadd_ps(a##m, b##n, c##m##n)
#define FROW(m) if (MR > m) { const __m256 a##m = _mm256_set1_ps(x[(m) * K + k]); FMA(m, 0); FMA(m, 1); }
#define FOUT(m) if (MR > m) { _mm256_storeu_ps(y + (m) * N, c##m##0); _mm256_storeu_ps(y + (m) * N + 8, c##m##1); }

AI void float_tile(const int MR, const float *x, long K, const float *panel, float *y, long N) {
    const __m256 z = _mm256_setzero_ps();
    __m256 c00 = z, c01 = z, c10 = z, c11 = z, c20 = z, c21 = z, c30 = z, c31 = z, c40 = z, c41 = z, c50 = z, c51 = z;
    for (long k = 0; k < K; k++) {
        const __m256 b0 = _mm256_loadu_ps(panel + k * 64), b1 = _mm256_loadu_ps(panel + k * 64 + 8);
        FROW(0); FROW(1); FROW(2); FROW(3); FROW(4); FROW(5);
    }
    FOUT(0); FOUT(1); FOUT(2); FOUT(3); FOUT(4); FOUT(5);
}
#undef FMA
#undef FROW
#undef FOUT

static void int4_matmul(const float *x, long M, long K, const uint8_t *w, const uint32_t *scales_and_zeros, long group,
                        float *y, long N) {
    #pragma omp parallel
    {
        float *panel = must_malloc(sizeof(float) * K * 64);
        const __m256i nibble = _mm256_set1_epi8(0x0F);
        #pragma omp for schedule(static)
        for (long b = 0; b < N / 64; b++) {
            for (long k = 0; k < K; k++) {  /* w = (q - 8) scale + zero, as int4_gemv reads it */
                NIBBLES(w + (b * K + k) * 32);
                const __m256 q[8] = {q0, q1, q2, q3, q4, q5, q6, q7};
                const uint32_t *sz = scales_and_zeros + (k / group) * N + b * 64;
                for (int i = 0; i < 8; i++) {
                    const __m256i p = _mm256_loadu_si256((const __m256i *)(sz + 8 * i));
                    _mm256_storeu_ps(panel + k * 64 + 8 * i,
                                     _mm256_fmadd_ps(_mm256_sub_ps(q[i], _mm256_set1_ps(8.f)), bf16_low(p), bf16_high(p)));
                }
            }
            for (long m = 0; m < M; m += 6)
                for (int c = 0; c < 64; c += 16) {
                    const float *xm = x + m * K, *p = panel + c;
                    float *ym = y + m * N + b * 64 + c;
                    switch (M - m < 6 ? M - m : 6) {
                    case 6: float_tile(6, xm, K, p, ym, N); break;
                    case 5: float_tile(5, xm, K, p, ym, N); break;
                    case 4: float_tile(4, xm, K, p, ym, N); break;
                    case 3: float_tile(3, xm, K, p, ym, N); break;
                    case 2: float_tile(2, xm, K, p, ym, N); break;
                    default: float_tile(1, xm, K, p, ym, N);
                    }
                }
        }
        free(panel);
    }
}
#undef NIBBLES

/* Rows x (M, K) times a 4-bit weight in torch's layout: one row streams it, more run the GEMM. */
void int4_linear(const float *x, long M, long K, const uint8_t *w, const uint32_t *scales_and_zeros, long group,
                 float *y, long N) {
    if (M == 1)
        int4_gemv(x, K, w, scales_and_zeros, group, y, N);
    else
        int4_matmul(x, M, K, w, scales_and_zeros, group, y, N);
}
