/* Rounding float weights to GGUF's Q4_K, written straight into Int4Linear's "kquant" buffers: a
   first load of Gemma 3n E2B rounds ~2.5 billion weights this way (torch's version of the same
   search, `quantize.quantize_int4_kquant`, takes ~1.2 us a weight on one core: ~25 minutes).

   The search is torch's, step for step, in float32 (`quantize_int4` then `quantize_int4_kquant`):
   1. per group of 32 inputs, the (min, max) shrink pair of CLIP_GRID x CLIP_GRID whose codes give the
      least squared error (the first of equals kept);
   2. the group's offset kept <= 0 (Q4_K stores -min), scale = range / 15;
   3. per 256 inputs, float16 d = max scale / 63 and dmin = max(-min) / 63; 6-bit sc and m per group;
   4. the codes re-rounded to the numbers stored (w + dmin m) / (d sc).
   Sums run in another order than torch's, so a near-tie between two trials can fall the other way
   (the error then differs in the last bits): tests/test_quant_native.py holds both to that.

   Layouts (see int4_q8.h): codes in torch's packed CPU int4 layout, blocks of `int4_block` channels;
   sub_scales uint8 (K/32, 2, N): a group's sc row, then its m row; super_scales float16 (K/256, 2, N). */
#ifndef MMSDK_QUANTIZE_Q4_H
#define MMSDK_QUANTIZE_Q4_H
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "kernels.h"

static const float CLIP_GRID[7] = {1.0f, 0.95f, 0.9f, 0.85f, 0.8f, 0.75f, 0.7f};  /* quantize._CLIP_GRID */

AI float q4_sum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

/* round((w - lo) / scale) clamped to 0..15, as torch rounds (to nearest, ties to even) */
AI __m256 code8(__m256 w, __m256 lo, __m256 scale) {
    const __m256 q = _mm256_round_ps(_mm256_div_ps(_mm256_sub_ps(w, lo), scale), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    return _mm256_min_ps(_mm256_max_ps(q, _mm256_setzero_ps()), _mm256_set1_ps(15.f));
}

/* Step 1 for one group of 32 weights: the best clipped (lo, scale). */
static void clip_search(const float *w, float *lo_out, float *scale_out) {
    __m256 v[4], mn, mx;
    for (int j = 0; j < 4; j++) v[j] = _mm256_loadu_ps(w + 8 * j);
    mn = _mm256_min_ps(_mm256_min_ps(v[0], v[1]), _mm256_min_ps(v[2], v[3]));
    mx = _mm256_max_ps(_mm256_max_ps(v[0], v[1]), _mm256_max_ps(v[2], v[3]));
    float lo0 = w[0], hi0 = w[0], m8[8], x8[8];
    _mm256_storeu_ps(m8, mn), _mm256_storeu_ps(x8, mx);
    for (int j = 0; j < 8; j++) lo0 = m8[j] < lo0 ? m8[j] : lo0, hi0 = x8[j] > hi0 ? x8[j] : hi0;
    float best = INFINITY, best_lo = 0.f, best_scale = 1e-10f;
    int first = 1;
    for (int a = 0; a < 7; a++)
        for (int b = 0; b < 7; b++) {
            const float lo = lo0 * CLIP_GRID[a], range = (hi0 * CLIP_GRID[b] - lo) / 15.f;
            const float scale = range > 1e-10f ? range : 1e-10f;
            const __m256 vl = _mm256_set1_ps(lo), vs = _mm256_set1_ps(scale);
            __m256 err = _mm256_setzero_ps();
            for (int j = 0; j < 4; j++) {
                const __m256 e = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(code8(v[j], vl, vs), vs), vl), v[j]);
                err = _mm256_add_ps(err, _mm256_mul_ps(e, e));
            }
            const float total = q4_sum8(err);
            if (first || total < best) best = total, best_lo = lo, best_scale = scale, first = 0;
        }
    *lo_out = best_lo, *scale_out = best_scale;
}

/* Rows of a float32 weight w (N, K) rounded as `quantize.quantize_int4` does for groups of 32 (torch's
   asymmetric pairs): each group's best clip (step 1), its codes (N, K), and its scale and zero (N, K/32),
   zero = lo + 8 scale, as torch's tinygemm convention stores them. `threads`: OpenMP threads over rows. */
void quantize_int4_pairs(const float *w, long N, long K, uint8_t *codes, float *scale, float *zero, long threads) {
    const long G = K / 32;
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (long n = 0; n < N; n++)
        for (long g = 0; g < G; g++) {
            const float *wg = w + n * K + g * 32;
            float lo, step;
            clip_search(wg, &lo, &step);
            const __m256 vl = _mm256_set1_ps(lo), vs = _mm256_set1_ps(step);
            for (int j = 0; j < 4; j++) {
                int32_t out[8];
                _mm256_storeu_si256((__m256i *)out, _mm256_cvtps_epi32(code8(_mm256_loadu_ps(wg + 8 * j), vl, vs)));
                for (int i = 0; i < 8; i++) codes[n * K + g * 32 + 8 * j + i] = (uint8_t)out[i];
            }
            scale[n * G + g] = step, zero[n * G + g] = lo + 8.f * step;
        }
}

/* GPTQ's inner loop (`gptq._gptq_int4`) over one block of B columns, each row on its own (a row's rounding
   never reads another's): block (N, B), the columns in GPTQ's order, updated in place; scale, zero (N, B) the
   group numbers under each column; hinv (B, B) that block of H^-1's upper Cholesky factor. Writes each
   column's codes (N, B) and its error over the diagonal (errs, N, B), which the caller spreads over the
   columns after the block. Row by row a column's update is B floats in L1, where torch's ran a strided
   (N, B) view per column at ~10 us an op. */
void gptq_block(float *block, long N, long B, const float *scale, const float *zero, const float *hinv,
                uint8_t *codes, float *errs, long threads) {
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (long n = 0; n < N; n++) {
        float *w = block + n * B;
        const float *s = scale + n * B, *z = zero + n * B;
        for (long i = 0; i < B; i++) {
            float q = nearbyintf((w[i] - z[i]) / s[i] + 8.f);  /* to nearest, ties to even: torch.round */
            q = q < 0.f ? 0.f : q > 15.f ? 15.f : q;
            codes[n * B + i] = (uint8_t)q;
            const float err = (w[i] - ((q - 8.f) * s[i] + z[i])) / hinv[i * B + i];
            errs[n * B + i] = err;
            const float *h = hinv + i * B;
            for (long j = i + 1; j < B; j++) w[j] -= err * h[j];
        }
    }
}

AI uint16_t to_half(float x) { return _cvtss_sh(x, _MM_FROUND_TO_NEAREST_INT); }
AI float from_half(uint16_t h) { return _cvtsh_ss(h); }
AI float round6(float x) { x = nearbyintf(x); return x < 0.f ? 0.f : x > 63.f ? 63.f : x; }

/* Steps 2-4 for one row of K floats: codes (K), and the row's sc, m (K/32 each) and d, dmin (K/256 each). */
static void q4k_row(const float *w, long K, uint8_t *codes, uint8_t *sc, uint8_t *m, uint16_t *d, uint16_t *dmin) {
    for (long s = 0; s < K / 256; s++) {
        float scale[8], low[8], smax = 0.f, lmax = 0.f;
        for (int g = 0; g < 8; g++) {
            float lo, step;
            clip_search(w + s * 256 + g * 32, &lo, &step);
            lo = (lo + 8.f * step) - 8.f * step;  /* through torch's (scale, zero) pair, as the reference */
            const float hi = lo + 15.f * step;
            lo = lo < 0.f ? lo : 0.f;
            const float sg = (hi - lo) / 15.f;
            scale[g] = sg > 0.f ? sg : 0.f, low[g] = -lo;
            smax = scale[g] > smax ? scale[g] : smax, lmax = low[g] > lmax ? low[g] : lmax;
        }
        d[s] = to_half(smax / 63.f), dmin[s] = to_half(lmax / 63.f);
        const float df = from_half(d[s]), mf = from_half(dmin[s]);
        const float dq = df > 1e-30f ? df : 1e-30f, mq = mf > 1e-30f ? mf : 1e-30f;
        for (int g = 0; g < 8; g++) {
            const long at = s * 8 + g;
            const float c = round6(scale[g] / dq), o = round6(low[g] / mq);
            sc[at] = (uint8_t)c, m[at] = (uint8_t)o;
            const float step = df * c, offset = mf * o;
            const __m256 vs = _mm256_set1_ps(step > 1e-30f ? step : 1e-30f), vo = _mm256_set1_ps(-offset);
            for (int j = 0; j < 4; j++) {
                const long k = s * 256 + g * 32 + 8 * j;
                __m256i q = _mm256_cvtps_epi32(code8(_mm256_loadu_ps(w + k), vo, vs));
                if (!(step > 0.f)) q = _mm256_setzero_si256();
                int32_t out[8];
                _mm256_storeu_si256((__m256i *)out, q);
                for (int i = 0; i < 8; i++) codes[k + i] = (uint8_t)out[i];
            }
        }
    }
}

/* Rows row0 .. row0 + rows of a weight w (rows, K) (dtype 0: float32, 1: bfloat16) rounded to Q4_K into
   the buffers of a (N, K) weight: packed codes (N, K/2), sub (K/32, 2, N), super (K/256, 2, N). row0 and
   rows are whole blocks of int4_block channels, K a multiple of 256. `threads`: OpenMP threads over blocks. */
void quantize_q4k(const void *w, long dtype, long rows, long K, long row0, long N, uint8_t *packed, uint8_t *sub,
                  uint16_t *super, long threads) {
    const long BN = int4_block, G = K / 32, S = K / 256;
    #pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
    for (long b = 0; b < rows / BN; b++) {
        float *row = must_malloc(K * sizeof(float));
        uint8_t *codes = must_malloc(BN * K + 2 * G + 4 * S);
        uint8_t *sc = codes + BN * K, *m = sc + G;
        uint16_t *d = (uint16_t *)(m + G), *dmin = d + S;  /* unaligned is fine: read and written bytewise */
        for (long i = 0; i < BN; i++) {
            const long r = b * BN + i, n = row0 + r;
            if (dtype == 1) {
                const uint16_t *src = (const uint16_t *)w + r * K;
                for (long k = 0; k < K; k++) {
                    const uint32_t bits = (uint32_t)src[k] << 16;
                    memcpy(row + k, &bits, 4);
                }
            } else {
                memcpy(row, (const float *)w + r * K, K * sizeof(float));
            }
            q4k_row(row, K, codes + i * K, sc, m, d, dmin);
            for (long g = 0; g < G; g++) sub[(2 * g) * N + n] = sc[g], sub[(2 * g + 1) * N + n] = m[g];
            for (long s = 0; s < S; s++) super[(2 * s) * N + n] = d[s], super[(2 * s + 1) * N + n] = dmin[s];
        }
        pack_int4_block(codes, K, BN, packed + (row0 / BN + b) * K * (BN / 2));
        free(codes);
        free(row);
    }
}
#endif
