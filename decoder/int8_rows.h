/* The passes around oneDNN's int8 product for the encoders' linears (encoders/accelerate.py
   `Int8LinearBias`): float rows -> 8-bit codes with one step (and minimum) per row before it, and
   scale, zero-point offset, bias and exact GELU on its output after it. In torch these are ~8 passes
   over the activations (amin, amax, addcmul, to, mul, addmm, gelu): 21% of all-MiniLM-L6-v2's time
   on an AMD EPYC Zen 3; here one pass each while a row stays in L1. AVX2 (kernels_avx2.c only: with
   AVX-512 VNNI the encoders run our own int8 product, which rounds its inputs itself). */
#ifndef MMSDK_INT8_ROWS_H
#define MMSDK_INT8_ROWS_H
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include "kernels.h"
#include "norm2d.h"  /* exp8 */

/* Rows x (M, K), K a multiple of 16 -> codes 0..code_max, truncating x / step + offset + 0.5 as
   accelerate.py's `_to_codes` does. asymmetric: x ~= low + step * code over the row's [min, max];
   else x ~= step * (code - zero) with zero = (code_max - 1) / 2 + 1 over [-max |x|, max |x|]. */
void quantize_rows_u8(const float *x, long M, long K, long code_max, long asymmetric, uint8_t *codes, float *step,
                      float *low) {
    const long levels = (code_max - 1) / 2;
    #pragma omp parallel for schedule(static) if (M > 16)
    for (long m = 0; m < M; m++) {
        const float *r = x + m * K;
        __m256 lo = _mm256_loadu_ps(r), hi = lo;
        for (long k = 8; k < K; k += 8) {
            const __m256 v = _mm256_loadu_ps(r + k);
            lo = _mm256_min_ps(lo, v), hi = _mm256_max_ps(hi, v);
        }
        const float mn = -hmax8(_mm256_sub_ps(_mm256_setzero_ps(), lo)), mx = hmax8(hi);
        float inv, shift;  /* code = trunc(x * inv + shift) */
        if (asymmetric) {
            const float s = fmaxf((mx - mn) / (float)code_max, 1e-30f);
            inv = 1.f / s, shift = 0.5f - mn * inv;
            step[m] = s, low[m] = mn;
        } else {
            const float peak = fmaxf(fmaxf(mx, -mn), 1e-30f);
            inv = (float)levels / peak, shift = (float)levels + 1.5f;
            step[m] = peak / (float)levels;
        }
        const __m256 vi = _mm256_set1_ps(inv), vs = _mm256_set1_ps(shift), top = _mm256_set1_ps((float)code_max);
        for (long k = 0; k < K; k += 16) {  /* clamped, so a rounding at the ends never wraps a code */
            const __m256 a = _mm256_min_ps(_mm256_max_ps(_mm256_fmadd_ps(_mm256_loadu_ps(r + k), vi, vs), _mm256_setzero_ps()), top);
            const __m256 b = _mm256_min_ps(_mm256_max_ps(_mm256_fmadd_ps(_mm256_loadu_ps(r + k + 8), vi, vs), _mm256_setzero_ps()), top);
            const __m256i ia = _mm256_cvttps_epi32(a), ib = _mm256_cvttps_epi32(b);
            const __m128i a16 = _mm_packs_epi32(_mm256_castsi256_si128(ia), _mm256_extracti128_si256(ia, 1));
            const __m128i b16 = _mm_packs_epi32(_mm256_castsi256_si128(ib), _mm256_extracti128_si256(ib, 1));
            _mm_storeu_si128((__m128i *)(codes + m * K + k), _mm_packus_epi16(a16, b16));
        }
    }
}

/* Phi(x), the standard normal CDF, for GELU's exact (erf) form x Phi(x): Abramowitz & Stegun 7.1.26
   for erfc(|x| / sqrt 2) (error under 1.5e-7), Phi = 1 - erfc / 2 for x >= 0, erfc / 2 below (no
   cancellation for large negative x). */
AI __m256 phi8(__m256 x) {
    const __m256 z = _mm256_mul_ps(_mm256_andnot_ps(_mm256_set1_ps(-0.f), x), _mm256_set1_ps(0.70710678118654752f));
    const __m256 d = _mm256_fmadd_ps(z, _mm256_set1_ps(0.3275911f), _mm256_set1_ps(1.f));
    __m256 t = _mm256_rcp_ps(d);
    t = _mm256_fnmadd_ps(_mm256_mul_ps(d, t), t, _mm256_add_ps(t, t));  /* one Newton step: ~23 bits */
    __m256 p = _mm256_set1_ps(1.061405429f);
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-1.453152027f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(1.421413741f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-0.284496736f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(0.254829592f));
    const __m256 half_erfc = _mm256_mul_ps(_mm256_mul_ps(_mm256_mul_ps(p, t), _mm256_set1_ps(0.5f)),
                                           exp8(_mm256_mul_ps(_mm256_sub_ps(_mm256_setzero_ps(), z), z)));
    const __m256 neg = _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_LT_OQ);
    return _mm256_blendv_ps(_mm256_sub_ps(_mm256_set1_ps(1.f), half_erfc), half_erfc, neg);
}

/* int8_rows_out's `gelu`: none, exact (erf), or its tanh approximation (SigLIP's); native.py's
   ROWS_GELU names them by torch's `approximate`. */
enum { ROWS_NO_GELU = 0, ROWS_GELU_ERF = 1, ROWS_GELU_TANH = 2 };

/* The product's output y (M, N), N a multiple of 8, in place: y * step[m] (+ low[m] * wsum[n]: the
   zero point's offset) (+ bias[n]), then the GELU `gelu` names (ROWS_*). low, wsum and bias may be NULL. */
void int8_rows_out(float *y, long M, long N, const float *step, const float *low, const float *wsum,
                   const float *bias, long gelu) {
    #pragma omp parallel for schedule(static) if (M > 16)
    for (long m = 0; m < M; m++) {
        float *r = y + m * N;
        const __m256 s = _mm256_set1_ps(step[m]), l = _mm256_set1_ps(low ? low[m] : 0.f);
        for (long n = 0; n < N; n += 8) {
            __m256 v = _mm256_mul_ps(_mm256_loadu_ps(r + n), s);
            if (low) v = _mm256_fmadd_ps(l, _mm256_loadu_ps(wsum + n), v);
            if (bias) v = _mm256_add_ps(v, _mm256_loadu_ps(bias + n));
            if (gelu == ROWS_GELU_ERF) v = _mm256_mul_ps(v, phi8(v));
            else if (gelu == ROWS_GELU_TANH) v = gelu8(v);
            _mm256_storeu_ps(r + n, v);
        }
    }
}
#endif
