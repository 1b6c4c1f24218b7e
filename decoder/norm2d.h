/* RMS norm over the channels of NCHW images, then GELU (tanh) or nothing: timm's RmsNormAct2d, which
   MobileNet-V5 (Gemma 3n's vision tower) runs ~90 times a 768 px image. In torch that is six passes
   over a layout strided across channels (pow, mean over dim 1, rsqrt, two multiplies, the activation):
   28% of the tower's time on an AMD EPYC Zen 3. Here 32 pixels at a time are read twice while their
   C x 32 floats stay in L2. AVX2 on every CPU, defining the 8-lane exp and GELU both sources use: the
   pass streams memory, 16 lanes would not pay. encoders/accelerate.py swaps it in. */
#ifndef MMSDK_NORM2D_H
#define MMSDK_NORM2D_H
#include <immintrin.h>
#include <math.h>
#include "kernels.h"

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

/* GELU, tanh approximation: 0.5 g (1 + tanh(u)) = g / (1 + e^-2u), u = sqrt(2/pi) (g + 0.044715 g^3) */
AI __m256 gelu8(__m256 g) {
    const __m256 u = _mm256_mul_ps(_mm256_set1_ps(0.7978845608028654f),
                                   _mm256_fmadd_ps(_mm256_mul_ps(_mm256_set1_ps(0.044715f), g), _mm256_mul_ps(g, g), g));
    const __m256 d = _mm256_add_ps(_mm256_set1_ps(1.f), exp8(_mm256_mul_ps(_mm256_set1_ps(-2.f), u)));
    const __m256 r = _mm256_rcp_ps(d);  /* 1/d to 12 bits, then one Newton step (~23 bits): cheaper than a divide */
    return _mm256_mul_ps(g, _mm256_fnmadd_ps(_mm256_mul_ps(d, r), r, _mm256_add_ps(r, r)));
}

#define NORM2D_PX 32  /* pixels a block: 8 registers of double sums; the block's C x 128 bytes stay in L2 */

/* Pixels p0 .. p0 + 32 of one image (xi, yi: its C planes of HW floats). The squares are summed in
   double: a float sum over hundreds of channels is 4x further from the exact norm than torch's
   (1.0e-6 against 2.6e-7 relative on a random MobileNet-V5); in double it is as close. */
static void norm2d_block(const float *xi, float *yi, long C, long HW, long p0, const float *gain, float eps, long gelu) {
    __m256d s[8];
    __m256 inv[4];
    for (int v = 0; v < 8; v++) s[v] = _mm256_setzero_pd();
    for (long c = 0; c < C; c++)
        for (int v = 0; v < 4; v++) {
            const __m256 a = _mm256_loadu_ps(xi + c * HW + p0 + 8 * v);
            const __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(a)), hi = _mm256_cvtps_pd(_mm256_extractf128_ps(a, 1));
            s[2 * v] = _mm256_fmadd_pd(lo, lo, s[2 * v]);
            s[2 * v + 1] = _mm256_fmadd_pd(hi, hi, s[2 * v + 1]);
        }
    const __m256 n = _mm256_set1_ps((float)C), e = _mm256_set1_ps(eps);  /* torch's order: mean, + eps, rsqrt */
    for (int v = 0; v < 4; v++) {
        const __m256 sum = _mm256_set_m128(_mm256_cvtpd_ps(s[2 * v + 1]), _mm256_cvtpd_ps(s[2 * v]));
        inv[v] = _mm256_div_ps(_mm256_set1_ps(1.f), _mm256_sqrt_ps(_mm256_add_ps(_mm256_div_ps(sum, n), e)));
    }
    for (long c = 0; c < C; c++) {
        const __m256 g = _mm256_set1_ps(gain ? gain[c] : 1.f);
        for (int v = 0; v < 4; v++) {
            const long i = c * HW + p0 + 8 * v;
            const __m256 a = _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(xi + i), inv[v]), g);
            _mm256_storeu_ps(yi + i, gelu ? gelu8(a) : a);
        }
    }
}

/* The same for the last pixels of an image whose HW is not a multiple of 32, one at a time. */
static void norm2d_tail(const float *xi, float *yi, long C, long HW, long p0, const float *gain, float eps, long gelu) {
    for (long p = p0; p < HW; p++) {
        double s = 0.;
        for (long c = 0; c < C; c++) s += (double)xi[c * HW + p] * xi[c * HW + p];
        const float inv = 1.f / sqrtf((float)s / (float)C + eps);
        for (long c = 0; c < C; c++) {
            const float a = xi[c * HW + p] * inv * (gain ? gain[c] : 1.f);
            yi[c * HW + p] = gelu ? 0.5f * a * (1.f + tanhf(0.7978845608028654f * (a + 0.044715f * a * a * a))) : a;
        }
    }
}

/* y (N, C, HW) = act(x / sqrt(mean over c of x^2 + eps) * gain[c]); act GELU (tanh) where `gelu`.
   gain may be NULL; y may be x (each block is read before it is written). Threads split the blocks. */
void rms_norm_act_2d(const float *x, long N, long C, long HW, const float *gain, float eps, long gelu, float *y) {
    const long blocks = (HW + NORM2D_PX - 1) / NORM2D_PX;
    #pragma omp parallel for schedule(static)
    for (long nb = 0; nb < N * blocks; nb++) {
        const long n = nb / blocks, p0 = nb % blocks * NORM2D_PX;
        const float *xi = x + n * C * HW;
        float *yi = y + n * C * HW;
        if (p0 + NORM2D_PX <= HW) norm2d_block(xi, yi, C, HW, p0, gain, eps, gelu);
        else norm2d_tail(xi, yi, C, HW, p0, gain, eps, gelu);
    }
}
#endif
