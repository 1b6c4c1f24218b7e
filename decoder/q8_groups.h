/* y (M, N) = x (M, K) W^T with int8 weights and int8 inputs, each with one float scale per group of 32
   inputs (llama.cpp's Q8_0 x Q8_0): the Gemma 3n audio conformer's FFNs and light conv on AVX2 and
   AVX-512 VNNI hosts (`encoders.accelerate.Q8GroupLinear`; built into both libraries, 256-bit code in
   both), whose quality gate needs full 8-bit inputs rounded per 32
   (per-row 8-bit or per-32 7-bit inputs fail it: per-token cosine min 0.9983 and 0.99845, FFN + lconv).

   AVX2 has no signed x signed byte product: _mm256_maddubs_epi16 takes unsigned x signed and saturates
   its int16 pair sums, so the sign trick (llama.cpp's): |x| as the unsigned side, w with x's sign
   (_mm256_sign_epi8) as the signed one, each pair <= 2 x 127 x 127, then _mm256_madd_epi16 by ones into
   int32 (two pair sums would overflow int16). Per group of 32 inputs the int32 sums go to float with the
   product of the two scales. That is sign + maddubs + madd + add per 32 products against oneDNN's
   maddubs + madd + add on 7-bit per-row inputs: measured 1.25-1.49x torch's float32 GEMM (MKL), oneDNN's
   7-bit one 2.0-2.5x (1 thread, loaded AMD EPYC Zen 3; tests/eval/bench_q8_groups.py).

   AVX-512 VNNI builds (int8_vnni.c) take the same tile and layouts with vpdpbusd on ymm registers: four
   u8 x s8 products summed into int32 per instruction, no saturation, the inputs stored as x + 128 and the
   sums started at -128 x the weights' group sum (from q8g_pack), so the integers are exact as above. One
   instruction per 32 products (8 channels x 4 inputs) where AVX2 takes four (sign, maddubs, madd, add):
   it should pay (256-bit VNNI runs at full rate on Zen 4, on ports 0 and 5 on Intel), but is not
   measured: no VNNI host at hand. Checked against the AVX2 build under SIMDe's emulation (the same int32
   sums).

   Layouts: weight codes in chunks of KC inputs, (K/KC, N/NB, KC/4, NB, 4): 4 inputs of a channel side
   by side, NB = 24 channels (3 registers) a block; a last chunk of fewer inputs (K not a multiple of KC:
   SigLIP's 1152) has its blocks that much shorter. Weight scales (N/NB, K/32, NB) floats, and (VNNI)
   offsets in the same layout, int32. */
#ifndef MMSDK_Q8_GROUPS_H
#define MMSDK_Q8_GROUPS_H
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "int4_q8.h"  /* quantize_q8_groups */

#define Q8G_MR 4   /* rows a tile: 12 int32 sums + |x|, x, ones, a product = 16 registers */
#define Q8G_NB 24  /* channels a tile (3 registers) */
#define Q8G_KC 512 /* inputs a chunk: a block's codes (12 KB) stay in L1 while the row tiles pass */
#define Q8G_NC 192 /* channels whose outputs (Q8G_MB x NC floats) stay in L2 while the chunks pass */
#define Q8G_MB 64  /* rows sharing a chunk of the inputs */
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define Q8G_VNNI 1  /* int8_vnni.c's build: the tile's products by vpdpbusd on ymm registers (see Q8G_DOT) */
#else
#define Q8G_VNNI 0
#endif

/* the inputs in the chunk holding input k: KC, or what is left of K in the last one */
static inline long q8g_chunk(long k, long K) { return K - k / Q8G_KC * Q8G_KC < Q8G_KC ? K - k / Q8G_KC * Q8G_KC : Q8G_KC; }

/* w (N, K) int8 codes -> the chunked blocks above (N a multiple of 24, K of 32: the last chunk may be short); and where `wo` is given (the
   VNNI tile's), -128 x each channel's code sum per group, laid out as the scales: the inputs' +128 taken back */
void q8g_pack(const int8_t *w, long N, long K, int8_t *p, int32_t *wo) {
    for (long b = 0; b < N / Q8G_NB; b++)
        for (long k = 0; k < K; k += 4)
            for (int j = 0; j < Q8G_NB; j++)
                memcpy(p + (k / Q8G_KC) * N * Q8G_KC + b * q8g_chunk(k, K) * Q8G_NB + ((k % Q8G_KC) / 4 * Q8G_NB + j) * 4,
                       w + (b * Q8G_NB + j) * K + k, 4);
    if (wo)
        for (long n = 0; n < N; n++)
            for (long g = 0; g < K / Q8_GROUP; g++) {
                int32_t sum = 0;
                for (int i = 0; i < Q8_GROUP; i++) sum += w[n * K + g * Q8_GROUP + i];
                wo[((n / Q8G_NB) * (K / Q8_GROUP) + g) * Q8G_NB + n % Q8G_NB] = -128 * sum;
            }
}

#if Q8G_VNNI
/* inputs unsigned (x + 128), one vpdpbusd a (row, 8 channels, 4 inputs): four u8 x s8 products summed into
   int32, no saturation; the sums start at -128 x the weights' sum, so a group ends at x . w exactly */
#define Q8G_DOT(r) if (MR > r) { \
        const __m256i u = _mm256_set1_epi32(*(const int32_t *)(uk + (r) * Q8G_KC)); \
        c##r##0 = _mm256_dpbusd_epi32(c##r##0, u, w0); \
        c##r##1 = _mm256_dpbusd_epi32(c##r##1, u, w1); \
        c##r##2 = _mm256_dpbusd_epi32(c##r##2, u, w2); }
#else
/* the adds in place: GCC otherwise copies the sum and spills one (as int4_q8.h's Q8_ADD) */
#define Q8G_ADD(c, p) __asm__("vpaddd %[q], %[acc], %[acc]" : [acc] "+x"(c) : [q] "x"(p))
#define Q8G_DOT(r) if (MR > r) { \
        const __m256i a = _mm256_set1_epi32(*(const int32_t *)(xk + (r) * Q8G_KC)); \
        const __m256i u = _mm256_set1_epi32(*(const int32_t *)(uk + (r) * Q8G_KC)); \
        Q8G_ADD(c##r##0, _mm256_madd_epi16(_mm256_maddubs_epi16(u, _mm256_sign_epi8(w0, a)), ones)); \
        Q8G_ADD(c##r##1, _mm256_madd_epi16(_mm256_maddubs_epi16(u, _mm256_sign_epi8(w1, a)), ones)); \
        Q8G_ADD(c##r##2, _mm256_madd_epi16(_mm256_maddubs_epi16(u, _mm256_sign_epi8(w2, a)), ones)); }
#endif
#define Q8G_FLUSH(r) if (MR > r) { const __m256 sx = _mm256_set1_ps(xs[(r) * G + g]); \
        out[r][0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(c##r##0), _mm256_mul_ps(s0, sx), out[r][0]); \
        out[r][1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(c##r##1), _mm256_mul_ps(s1, sx), out[r][1]); \
        out[r][2] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(c##r##2), _mm256_mul_ps(s2, sx), out[r][2]); }

/* MR rows x 24 channels over groups [g0, g1) of one chunk: y += x . w. x, ux: the rows' codes and |codes|
   (VNNI: codes + 128; x unused) in the chunk (rows KC apart), xs: their group scales (rows G apart), p: the
   block's codes in the chunk, ws, wo: its scales and (VNNI) offsets (group g at ws + 24 g, wo + 24 g) */
AI void q8g_tile(const int MR, const int8_t *x, const uint8_t *ux, const float *xs, long G, const int8_t *p,
                 const float *ws, const int32_t *wo, long g0, long g1, float *y, long N) {
#if !Q8G_VNNI
    const __m256i ones = _mm256_set1_epi16(1);
    (void)wo;  /* signed inputs here: nothing to take back */
#endif
    __m256 out[Q8G_MR][3];
    for (int r = 0; r < MR; r++)
        for (int j = 0; j < 3; j++) out[r][j] = _mm256_loadu_ps(y + r * N + 8 * j);
    for (long g = g0; g < g1; g++) {
#if Q8G_VNNI
        const __m256i z0 = _mm256_loadu_si256((const __m256i *)(wo + g * Q8G_NB));
        const __m256i z1 = _mm256_loadu_si256((const __m256i *)(wo + g * Q8G_NB + 8));
        const __m256i z2 = _mm256_loadu_si256((const __m256i *)(wo + g * Q8G_NB + 16));
#else
        const __m256i z0 = _mm256_setzero_si256(), z1 = z0, z2 = z0;
#endif
        __m256i c00 = z0, c01 = z1, c02 = z2, c10 = z0, c11 = z1, c12 = z2, c20 = z0, c21 = z1, c22 = z2, c30 = z0,
                c31 = z1, c32 = z2;
        const int8_t *pk = p + (g - g0) * 32 * Q8G_NB, *xk = x + (g - g0) * 32;
        const uint8_t *uk = ux + (g - g0) * 32;
        _Pragma("GCC unroll 8")
        for (int q = 0; q < 8; q++, pk += 4 * Q8G_NB, xk += 4, uk += 4) {
            const __m256i w0 = _mm256_loadu_si256((const __m256i *)pk), w1 = _mm256_loadu_si256((const __m256i *)(pk + 32));
            const __m256i w2 = _mm256_loadu_si256((const __m256i *)(pk + 64));
            Q8G_DOT(0) Q8G_DOT(1) Q8G_DOT(2) Q8G_DOT(3)
        }
        const __m256 s0 = _mm256_loadu_ps(ws + g * Q8G_NB), s1 = _mm256_loadu_ps(ws + g * Q8G_NB + 8);
        const __m256 s2 = _mm256_loadu_ps(ws + g * Q8G_NB + 16);
        Q8G_FLUSH(0) Q8G_FLUSH(1) Q8G_FLUSH(2) Q8G_FLUSH(3)
    }
    for (int r = 0; r < MR; r++)
        for (int j = 0; j < 3; j++) _mm256_storeu_ps(y + r * N + 8 * j, out[r][j]);
}
#undef Q8G_DOT
#undef Q8G_FLUSH
#undef Q8G_ADD

/* y (M, N) = x (M, K) W^T: x rounded per row in groups of 32 (quantize_q8_groups), W from q8g_pack with
   its scales ws and (VNNI builds; unread by AVX2 ones) offsets wo; N a multiple of Q8G_NC, K of 32. */
void q8g_matmul(const float *x, long M, long K, const int8_t *wp, const float *ws, const int32_t *wo, float *y,
                long N) {
    const long G = K / Q8_GROUP;
    /* the rows' codes and |codes| (VNNI: codes + 128 alone; chunk-major, (K/KC, M, KC): a tile's rows KC
       apart, not K, whose 4 KB multiples would map them onto the same L1 sets), scales and sums (unused) */
    static _Thread_local Scratch rows;  /* kept from call to call: no pages faulted in again every call */
    const long Kp = (K + Q8G_KC - 1) / Q8G_KC * Q8G_KC;  /* a short last chunk's rows are KC apart too */
    int8_t *xq = scratch(&rows, M * K + 2 * M * Kp + 2 * sizeof(float) * M * G);
    int8_t *xc = xq + M * K;
    uint8_t *xu = (uint8_t *)(xc + M * Kp);
    float *xs = (float *)(xu + M * Kp), *xn = xs + M * G;
    #pragma omp parallel for
    for (long m = 0; m < M; m++) {
        quantize_q8_groups(x + m * K, K, xq + m * K, xs + m * G, xn + m * G, NULL);
        for (long k = 0; k < K; k += 32) {
            const __m256i v = _mm256_loadu_si256((const __m256i *)(xq + m * K + k));
            const long at = (k / Q8G_KC) * M * Q8G_KC + m * Q8G_KC + k % Q8G_KC;
#if Q8G_VNNI
            _mm256_storeu_si256((__m256i *)(xu + at), _mm256_xor_si256(v, _mm256_set1_epi8(-128)));  /* x + 128 */
#else
            _mm256_storeu_si256((__m256i *)(xc + at), v);
            _mm256_storeu_si256((__m256i *)(xu + at), _mm256_abs_epi8(v));
#endif
        }
    }
    memset(y, 0, sizeof(float) * M * N);
    #pragma omp parallel
    for (long m0 = 0; m0 < M; m0 += Q8G_MB) {
        const long m1 = m0 + Q8G_MB < M ? m0 + Q8G_MB : M;
        #pragma omp for schedule(static)
        for (long c = 0; c < N / Q8G_NC; c++)
            for (long k0 = 0; k0 < K; k0 += Q8G_KC) {
                const long kc = q8g_chunk(k0, K), g0 = k0 / Q8_GROUP, g1 = (k0 + kc) / Q8_GROUP;
                const int8_t *xck = xc + (k0 / Q8G_KC) * M * Q8G_KC;
                const uint8_t *xuk = xu + (k0 / Q8G_KC) * M * Q8G_KC;
                for (long b = c * (Q8G_NC / Q8G_NB); b < (c + 1) * (Q8G_NC / Q8G_NB); b++) {
                    const int8_t *p = wp + (k0 / Q8G_KC) * N * Q8G_KC + b * kc * Q8G_NB;
                    const float *wsb = ws + b * G * Q8G_NB;
                    const int32_t *wob = wo ? wo + b * G * Q8G_NB : NULL;
                    for (long m = m0; m < m1; m += Q8G_MR) {
#define Q8G_TILE(mr, r) q8g_tile(mr, xck + (m + r) * Q8G_KC, xuk + (m + r) * Q8G_KC, xs + (m + r) * G, G, p, wsb, wob, \
                                 g0, g1, y + (m + r) * N + b * Q8G_NB, N)
                        if (m1 - m >= Q8G_MR) Q8G_TILE(Q8G_MR, 0);
                        else for (long r = 0; r < m1 - m; r++) Q8G_TILE(1, r);
#undef Q8G_TILE
                    }
                }
            }
    }
    scratch_trim(&rows);
}
#endif
