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

/* ---- float helpers: exp, GELU, norms --------------------------------------------------------- */

AI __m256 exp8(__m256 x) {  /* e^x: 2^n (exponent bits) times a degree-6 polynomial for 2^f, |f| <= 0.5 */
    x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(88.f)), _mm256_set1_ps(-88.f));
    const __m256 t = _mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f));
    const __m256 n = _mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), f = _mm256_sub_ps(t, n);
    __m256 p = _mm256_set1_ps(1.535336188319500e-4f);
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.339887440266574e-3f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(9.618437357674640e-3f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(5.550332471162809e-2f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(2.402264791363012e-1f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(6.931472028550421e-1f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.f));
    /* n in -127..127: 2^n as a float's exponent field (2^-127 comes out as 0, e^-88 is ~6e-39) */
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

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

/* GELU, tanh approximation: 0.5 g (1 + tanh(u)) = g / (1 + e^-2u), u = sqrt(2/pi) (g + 0.044715 g^3) */
AI __m256 gelu8(__m256 g) {
    const __m256 u = _mm256_mul_ps(_mm256_set1_ps(0.7978845608028654f),
                                   _mm256_fmadd_ps(_mm256_mul_ps(_mm256_set1_ps(0.044715f), g), _mm256_mul_ps(g, g), g));
    const __m256 d = _mm256_add_ps(_mm256_set1_ps(1.f), exp8(_mm256_mul_ps(_mm256_set1_ps(-2.f), u)));
    const __m256 r = _mm256_rcp_ps(d);  /* 1/d to 12 bits, then one Newton step (~23 bits): cheaper than a divide */
    return _mm256_mul_ps(g, _mm256_fnmadd_ps(_mm256_mul_ps(d, r), r, _mm256_add_ps(r, r)));
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

/* ---- one decoded token through one Gemma 3 layer, in one call --------------------------------
   The same computation as gemma3.Block for one row (B = T = 1), float32 activations, every
   projection one of the products above (int8, or torch's 4-bit layout): what costs the Python step
   is not arithmetic but ~55 small torch ops a layer (~2-4 us of dispatch each), so the whole layer
   is one call here. The structs are int8_vnni.c's (decoder/fused.py mirrors them). */

static void linear_rows(const Linear *w, const float *x, long M, float *y) {
    if (w->group > 0)
        int4_linear(x, M, w->in, w->weight, w->group_scales, w->symmetric, w->group, y, w->out);
    else
        int8_linear(x, M, w->in, w->rotation, w->weight, w->scales, w->comp, y, w->out);
}

/* A prompt's q, k and v from its qkv rows (T, H + 2 Hkv, D): q and k QK-normed (gain rows
   (H + Hkv, D)) and rotated (cos, sin: (T, D)), all three laid out by head (heads, T, D), the
   layout attention and the KV cache take. */
void qkv_heads(const float *qkv, long T, long H, long Hkv, long D, const float *gain, float eps_term,
               const float *cos, const float *sin, float *q, float *k, float *v) {
    #pragma omp parallel for schedule(static)
    for (long t = 0; t < T; t++) {
        float tmp[D];
        for (long i = 0; i < H + 2 * Hkv; i++) {
            const float *src = qkv + (t * (H + 2 * Hkv) + i) * D;
            float *dst = i < H ? q + (i * T + t) * D : i < H + Hkv ? k + ((i - H) * T + t) * D : v + ((i - H - Hkv) * T + t) * D;
            if (i < H + Hkv) {
                rms_norm(dst, src, gain + i * D, D, eps_term, NULL);
                rope(dst, cos + t * D, sin + t * D, D, tmp);
            } else {
                memcpy(dst, src, sizeof(float) * D);
            }
        }
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

/* out (G, D) = softmax(q k^T + bias) v for G query rows sharing one key head; keys (S, D). The
   threads split the keys, each keeping its part's max, sum and weighted values per row; the parts
   merge at the end, weighed by exp(their max - the max). Masked keys (-inf) are not read.
   `buf`: the caller's scratch (kept from token to token). */
static void attend_group(const float *q, long G, const float *k, const float *v, const float *bias, long S, long D,
                         float *out, Scratch *buf) {
    const int T = omp_get_max_threads();
    const long part = D + 2;  /* weighted values, max, sum */
    float *parts = scratch(buf, sizeof(float) * (T * G * part + S * G)), *w = parts + T * G * part;
    for (long i = 0; i < T * G; i++) parts[i * part + D] = -INFINITY, parts[i * part + D + 1] = 0.f;
    #pragma omp parallel num_threads(T)
    {
        const int t = omp_get_thread_num(), nt = omp_get_num_threads();
        const long s0 = S * t / nt, n = S * (t + 1) / nt - s0;
        for (long j = 0; j < G; j++) {
            float *wj = w + j * S + s0, *p = parts + ((long)t * G + j) * part, m = -INFINITY, l = 0.f;
            for (long s = 0; s < n; s++) {
                wj[s] = bias[s0 + s] == -INFINITY ? -INFINITY : dot_row(q + j * D, k + (s0 + s) * D, D) + bias[s0 + s];
                m = fmaxf(m, wj[s]);
            }
            if (m == -INFINITY) continue;  /* every key of this part masked */
            long s = 0;
            __m256 sum = _mm256_setzero_ps();
            for (; s + 8 <= n; s += 8) {
                const __m256 x = _mm256_loadu_ps(wj + s);
                const __m256 seen = _mm256_cmp_ps(x, _mm256_set1_ps(-INFINITY), _CMP_NEQ_OQ);
                const __m256 e = _mm256_and_ps(seen, exp8(_mm256_sub_ps(x, _mm256_set1_ps(m))));
                _mm256_storeu_ps(wj + s, e);
                sum = _mm256_add_ps(sum, e);
            }
            l = hsum8(sum);
            for (; s < n; s++) l += (wj[s] = wj[s] == -INFINITY ? 0.f : expf(wj[s] - m));
            weigh_values(p, wj, v + s0 * D, n, D);
            p[D] = m, p[D + 1] = l;
        }
    }
    for (long j = 0; j < G; j++) {
        float m = -INFINITY, l = 0.f, *o = out + j * D;
        for (int t = 0; t < T; t++) m = fmaxf(m, parts[((long)t * G + j) * part + D]);
        for (long d = 0; d < D; d++) o[d] = 0.f;
        for (int t = 0; t < T; t++) {
            const float *p = parts + ((long)t * G + j) * part;
            if (p[D] == -INFINITY) continue;
            const float c = expf(p[D] - m);
            l += p[D + 1] * c;
            for (long d = 0; d < D; d++) o[d] += c * p[d];
        }
        for (long d = 0; d < D; d++) o[d] /= l;
    }
}

/* One token: x (hidden) is updated in place. The new key and value go to slot `slot` of the
   caches (kv_heads planes of `plane` floats each), then attention runs over their first `keys`
   slots with the additive mask `bias` (keys). cos and sin: this position's RoPE tables (D).
   Its temporaries live in scratch kept between calls: a decoded token allocates nothing. */
void gemma3_layer_step(const Layer *L, float *x, const float *cos, const float *sin, float *k_cache, float *v_cache,
                       long plane, long slot, long keys, const float *bias) {
    static _Thread_local Scratch step, attention;
    const long H = L->heads, Hkv = L->kv_heads, D = L->head_dim, E = L->hidden;
    float *h = scratch(&step, sizeof(float) * (2 * E + (2 * H + 2 * Hkv + 1) * D + 2 * L->inter));
    float *qkv = h + E, *att = qkv + (H + 2 * Hkv) * D, *o = att + H * D, *gu = o + E, *w = gu + 2 * L->inter;

    rms_norm(h, x, L->attn_norm, E, L->eps, NULL);
    linear_rows(&L->qkv, h, 1, qkv);
    for (long i = 0; i < H + Hkv; i++) {  /* QK-norm (q's gain holds the attention scale), then RoPE */
        rms_norm(qkv + i * D, qkv + i * D, L->qk_norm + i * D, D, L->head_eps, NULL);
        rope(qkv + i * D, cos, sin, D, w);
    }
    for (long g = 0; g < Hkv; g++) {
        memcpy(k_cache + g * plane + slot * D, qkv + (H + g) * D, sizeof(float) * D);
        memcpy(v_cache + g * plane + slot * D, qkv + (H + Hkv + g) * D, sizeof(float) * D);
    }
    for (long g = 0; g < Hkv; g++)
        attend_group(qkv + g * (H / Hkv) * D, H / Hkv, k_cache + g * plane, v_cache + g * plane, bias, keys, D,
                     att + g * (H / Hkv) * D, &attention);
    linear_rows(&L->o, att, 1, o);
    rms_norm(x, o, L->post_attn_norm, E, L->eps, x);

    rms_norm(h, x, L->mlp_norm, E, L->eps, NULL);
    linear_rows(&L->gate_up, h, 1, gu);
    geglu(gu, 1, L->inter, gu);
    linear_rows(&L->down, gu, 1, o);
    rms_norm(x, o, L->post_mlp_norm, E, L->eps, x);
}

/* ---- a prompt's attention: many query rows, masked keys skipped --------------------------------
   Flash attention (Dao et al. 2022) on the CPU: tiles of 6 query rows of one head run over the keys
   16 at a time (12 score registers of 8), keeping a running max, sum and weighted values per row,
   so the scores never exist whole. The mask comes from positions, not a matrix: a key is seen when
   0 <= its position <= the query's and (sliding layers) less than `window` back; a tile skips a key
   block none of its rows sees (the causal upper half, a ring's empty slots). */
#define QROWS 6
#define KCOLS 16

/* Keys (S, D) -> blocks of KCOLS keys, each (D, KCOLS): a score tile reads one row of it per d.
   Missing keys of the last block are zeros (and masked). */
static void key_blocks(const float *k, long S, long D, float *kt) {
    #pragma omp parallel for schedule(static)
    for (long b = 0; b < (S + KCOLS - 1) / KCOLS; b++)
        for (long j = 0; j < KCOLS; j++)
            for (long d = 0; d < D; d++)
                kt[(b * D + d) * KCOLS + j] = b * KCOLS + j < S ? k[(b * KCOLS + j) * D + d] : 0.f;
}

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

/* out (T, H, D) = softmax(q k^T * scale, masked) v for q (H, T, D) and keys, values (Hkv, S, D), the
   key heads `kv_stride` floats apart, at positions qp (T) and kp (S, -1: an empty slot). D a multiple of 16. */
void attend_rows(const float *q, long H, long T, const float *k, const float *v, long Hkv, long S, long D,
                 long kv_stride, const long *qp, const long *kp, long window, float scale, float *out) {
    static _Thread_local Scratch keys;
    const long blocks = (S + KCOLS - 1) / KCOLS;
    float *kt = scratch(&keys, sizeof(float) * Hkv * blocks * KCOLS * D + sizeof(int32_t) * blocks * KCOLS);
    int32_t *kp32 = (int32_t *)(kt + Hkv * blocks * KCOLS * D);
    for (long s = 0; s < blocks * KCOLS; s++) kp32[s] = s >= S || kp[s] < 0 ? -1 : (int32_t)kp[s];
    for (long g = 0; g < Hkv; g++) key_blocks(k + g * kv_stride, S, D, kt + g * blocks * KCOLS * D);
    const long tiles = (T + QROWS - 1) / QROWS;
    #pragma omp parallel for schedule(dynamic, 1)
    for (long job = 0; job < H * tiles; job++) {
        const long h = job / tiles, t0 = (tiles - 1 - job % tiles) * QROWS;  /* the longest rows first */
        const long g = h / (H / Hkv);
        const int rows = T - t0 < QROWS ? (int)(T - t0) : QROWS;
        attend_tile(q + (h * T + t0) * D, rows, qp + t0, kt + g * blocks * KCOLS * D, v + g * kv_stride, kp32, S, D,
                    window, scale, out + (t0 * H + h) * D, H * D);
    }
    scratch_trim(&keys);
}

/* ---- a prompt's rows through one Gemma 3 layer, in two calls --------------------------------
   The same computation as gemma3.Block for M rows of one sequence, every projection a product of
   ours: gemma3_prompt_qkv gives q, k and v by head; the caller puts k and v in its KV cache (a ring
   or a full cache, kept in Python) and hands back the keys to attend; gemma3_prompt_rest does the
   rest, updating x (M, hidden) in place. Two calls a layer instead of ~15 from Python. Their
   temporaries: one scratch per calling thread, kept from call to call (see `scratch`). */
static _Thread_local Scratch prompt;

void gemma3_prompt_qkv(const Layer *L, const float *x, long M, const float *cos, const float *sin, float *q,
                       float *k, float *v) {
    const long E = L->hidden, H = L->heads, Hkv = L->kv_heads, D = L->head_dim;
    float *h = scratch(&prompt, sizeof(float) * (M * E + M * (H + 2 * Hkv) * D)), *qkv = h + M * E;
    norm_rows(x, M, E, L->attn_norm, L->eps, NULL, h);
    linear_rows(&L->qkv, h, M, qkv);
    qkv_heads(qkv, M, H, Hkv, D, L->qk_norm, L->head_eps, cos, sin, q, k, v);
}

void gemma3_prompt_rest(const Layer *L, float *x, long M, const float *q, const float *k, const float *v, long S,
                        long kv_stride, const long *qp, const long *kp, long window) {
    const long E = L->hidden, H = L->heads, D = L->head_dim, I = L->inter;
    float *att = scratch(&prompt, sizeof(float) * M * (H * D + 2 * E + 3 * I)), *o = att + M * H * D, *h = o + M * E,
          *gu = h + M * E, *act = gu + M * 2 * I;
    attend_rows(q, H, M, k, v, L->kv_heads, S, D, kv_stride, qp, kp, window, 1.f, att);  /* scale: in q's gain */
    linear_rows(&L->o, att, M, o);
    norm_rows(o, M, E, L->post_attn_norm, L->eps, x, x);
    norm_rows(x, M, E, L->mlp_norm, L->eps, NULL, h);
    linear_rows(&L->gate_up, h, M, gu);
    geglu(gu, M, I, act);
    linear_rows(&L->down, act, M, o);
    norm_rows(o, M, E, L->post_mlp_norm, L->eps, x, x);
    scratch_trim(&prompt);
}
