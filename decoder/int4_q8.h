/* Rows times a 4-bit weight with 8-bit inputs: every 4-bit layer, for a decoded token and a prompt.

   The weight stays in torch's CPU int4 layout, so no second copy of it is made: blocks of BN output channels, BN
   = 64 where torch runs AVX-512 and 32 where it runs AVX2; for each input k a block holds BN/2
   bytes, channel j < BN/2 in the low nibble of byte j, channel j >= BN/2 in the high one of byte
   j - BN/2. The group numbers come in one of three layouts (LAY):
   - PAIRS: torch's bfloat16 (scale, zero) per (group, channel), (K/group, N, 2): w = (q - 8) scale + zero;
   - SYM, GGUF's Q4_0 as stored (4.5 bits a weight instead of 5): one float16 d, (K/group, N): w = (q - 8) d;
   - KQ, GGUF's Q4_K as stored (4.625 bits): per group of 32 the 6-bit (sc, m), uint8 (K/32, 2, N), per
     256 inputs float16 (d, dmin), (K/256, 2, N): w = q (d sc) - dmin m, the products exact in float32.
   Each is w = q * scale + offset per (group, channel), offset = zero - 8 scale, -8 d or -dmin m.

   The input row is rounded to 8 bits in groups of 32 (one scale each, as llama.cpp's Q8_0), so the
   codes meet in integer products: _mm256_maddubs_epi16 takes the unsigned weight codes (0..15)
   times the signed input codes and sums each pair into int16. Per channel and group of 32 inputs:
   sum q x = 16 pair sums of at most 2 x 15 x 127, under int16's 32767 in 8 of them, so each int16
   lane gathers 8 maddubs before one widening to float per group; then
   x . w = sum over groups of sx (scale (sum q xq) + offset (sum xq)): one float sum per channel (a
   prompt tile's 4 rows x 16 channels of them fit the registers beside the integer sums). For the
   symmetric layout (offset -8 scale) that is sx scale (sum q xq - 8 sum xq), the offset in integers.
   Integer products need ~4x fewer instructions per weight than converting every code to float,
   so one row streams the weight at memory speed on 2 cores, and a prompt runs at integer speed
   (~1.5-2x the float32 GEMM that dequantized each block, on AMD Zen 3).

   AVX2 instructions (and F16C's float16 conversion) only: the AVX-512 library compiles the same code
   (the CPUs that have AVX-512 have AVX2 and F16C), with twice the registers for BN = 64. */
#ifndef MMSDK_INT4_Q8_H
#define MMSDK_INT4_Q8_H
#include <immintrin.h>
#include <math.h>
#include <stdint.h>

#include "kernels.h"

#define Q8_GROUP 32
#define Q8_ROWS 4  /* rows a prompt tile takes: 8 int16 sums + 2 weight registers (6 rows spilled, no faster) */
enum { PAIRS = 0, SYM = 1, KQ = 2 };  /* the layouts of a weight's group numbers (see above) */

/* x (K floats) -> codes xq (K), a scale per group of 32 (xs), each group's sum of codes (xn) and 8 x
   that sum (x8: the symmetric layout's offset, -8 a weight code, taken in integers; NULL: not wanted) */
static void quantize_q8_groups(const float *x, long K, int8_t *xq, float *xs, float *xn, int32_t *x8) {
    const __m256 sign = _mm256_set1_ps(-0.f);
    for (long g = 0; g < K / Q8_GROUP; g++) {
        const float *r = x + g * Q8_GROUP;
        __m256 v[4], peak = _mm256_setzero_ps();
        for (int i = 0; i < 4; i++) v[i] = _mm256_loadu_ps(r + 8 * i), peak = _mm256_max_ps(peak, _mm256_andnot_ps(sign, v[i]));
        __m128 p = _mm_max_ps(_mm256_castps256_ps128(peak), _mm256_extractf128_ps(peak, 1));
        p = _mm_max_ps(p, _mm_movehl_ps(p, p));
        const float top = _mm_cvtss_f32(_mm_max_ss(p, _mm_movehdup_ps(p)));
        const __m256 inv = _mm256_set1_ps(top > 0.f ? 127.f / top : 0.f);
        __m256i c[4];
        for (int i = 0; i < 4; i++) c[i] = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], inv));  /* nearest, ties to even */
        /* 32 int32 -> 32 int8 in order: packs work per 128-bit lane, the permute puts the lanes back */
        const __m256i c16 = _mm256_packs_epi32(c[0], c[1]), d16 = _mm256_packs_epi32(c[2], c[3]);
        const __m256i c8 = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(c16, d16), _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256((__m256i *)(xq + g * Q8_GROUP), c8);
        const __m256i s16 = _mm256_madd_epi16(_mm256_add_epi16(c16, d16), _mm256_set1_epi16(1));  /* the 32 codes' sum */
        __m128i s = _mm_add_epi32(_mm256_castsi256_si128(s16), _mm256_extracti128_si256(s16, 1));
        s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
        s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
        xs[g] = top / 127.f;
        xn[g] = (float)_mm_cvtsi128_si32(s);
        if (x8) x8[g] = 8 * _mm_cvtsi128_si32(s);
    }
}

/* Scales of 8 channels i.. of a weight group, from its row `sc` (and, KQ, its 256 inputs' row `sup`). */
AI __m256 scale8(const int LAY, const char *sc, const char *sup, long i) {
    if (LAY == SYM) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)sc + i)));
    if (LAY == KQ) return _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)sup + i))),
                                        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(sc + i)))));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_loadu_si256((const __m256i *)((const uint32_t *)sc + i)), 16));
}

/* The zeros of 8 channels i.. of a PAIRS group row: the bfloat16 after each scale, widened. */
AI __m256 zero8(const char *sc, long i) {
    return _mm256_castsi256_ps(_mm256_and_si256(_mm256_loadu_si256((const __m256i *)((const uint32_t *)sc + i)),
                                                _mm256_set1_epi32((int)0xFFFF0000)));
}

/* Their offsets (zero - 8 scale, -8 d, or -dmin m), given their scales; `N` channels a row. */
AI __m256 offset8(const int LAY, const char *sc, const char *sup, long N, long i, __m256 scale) {
    if (LAY == KQ) {
        const __m256 dmin = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)sup + N + i)));
        const __m256 m = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(sc + N + i))));
        return _mm256_sub_ps(_mm256_setzero_ps(), _mm256_mul_ps(dmin, m));
    }
    const __m256 zero = LAY == SYM ? _mm256_setzero_ps() : zero8(sc, i);
    return _mm256_fnmadd_ps(_mm256_set1_ps(8.f), scale, zero);
}

/* The (scale, offset) rows of a block's BN channels from n0, by weight group, as the prompt tiles take
   them: sc and off (BN/16 sub-blocks, each (GW, 16) floats). The tiles multiply the codes less 8 (see
   unpack_block), so the offset is the one of q - 8: zero (PAIRS), offset + 8 scale (KQ), none (SYM). */
AI void block_scales(const int BN, const int LAY, const void *scales, const void *super, long GW, long N, long n0,
                     float *sc, float *off) {
    const long row = N * (LAY == PAIRS ? 4 : 2);  /* bytes from one weight group's numbers to the next's */
    for (long gw = 0; gw < GW; gw++) {
        const char *sz = (const char *)scales + gw * row, *sup = (const char *)super + (gw / 8) * 4 * N;
        for (int i = 0; i < BN / 8; i++) {  /* 8 channels: half i % 2 of sub-block i / 2 */
            const __m256 scale = scale8(LAY, sz, sup, n0 + 8 * i);
            const long at = ((i / 2) * GW + gw) * 16 + 8 * (i % 2);
            _mm256_storeu_ps(sc + at, scale);
            if (LAY == PAIRS) _mm256_storeu_ps(off + at, zero8(sz, n0 + 8 * i));
            if (LAY == KQ) _mm256_storeu_ps(off + at, _mm256_fmadd_ps(_mm256_set1_ps(8.f), scale, offset8(LAY, sz, sup, N, n0 + 8 * i, scale)));
        }
    }
}

/* One block of BN channels for MR prepared input rows (1 to 4; row m's codes at xq + m K, its group
   numbers at xs, xn, x8 + m K / 32): y[m N + 0..BN) = x_m . w; sz (and, KQ, sup): the block's first
   channel in the first weight group's row of numbers. The rows share each step's weight unpacking (~40%
   of a row's instructions), and each row's sums are the one-row ones, in the same order. */
AI void int4_q8_block(const int BN, const int LAY, const int MR, const int8_t *xq, const float *xs, const float *xn,
                      const int32_t *x8, long K,
                      const uint8_t *wb, const char *sz, const char *sup, long group, long N, float *y) {
    enum { R = 8 };  /* int16 accumulators a row: BN / 8 of them, 8 channels x 2 input pairs each */
    const __m256i nibble = _mm256_set1_epi8(0x0F);
    /* input bytes (k, k+1) to every 16-bit lane of the low half, (k+2, k+3) to the high half */
    const __m256i pairs = _mm256_setr_epi8(0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1,
                                           2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3);
    const long stride = BN / 2, G = K / Q8_GROUP;  /* bytes per input k; input groups a row */
    __m256 out[4][R];
    for (int m = 0; m < MR; m++)
        for (int i = 0; i < BN / 8; i++) out[m][i] = _mm256_setzero_ps();
    const char *szg = sz;  /* the current weight group's numbers */
    const long row = N * (LAY == PAIRS ? 4 : 2);  /* bytes from one weight group's numbers to the next's */
    const long per = group / Q8_GROUP;  /* input groups per weight group, counted down: no division in the loop */
    long left = per, supers = 8;  /* KQ: weight groups left under the current (d, dmin) row */
    for (long g = 0; g < G; g++) {
        __m256i acc[4][R];
        for (int m = 0; m < MR; m++)
            for (int i = 0; i < BN / 8; i++) acc[m][i] = _mm256_setzero_si256();
        /* a weight group starts: fetch the next one's scales, N channels on (beyond the hardware prefetchers'
           reach; 2-5% on one core, AMD Zen 3). A prefetch never faults: the last group's may point past the end */
        if (left == per && LAY != KQ)
            for (int i = 0; i < BN * (LAY == PAIRS ? 4 : 2); i += 64) _mm_prefetch(szg + row + i, _MM_HINT_T0);
        if (left == per && LAY == KQ) {  /* its sc and m rows (N apart), and at a super-block's end its d and dmin rows */
            for (int i = 0; i < BN; i += 64) _mm_prefetch(szg + row + i, _MM_HINT_T0), _mm_prefetch(szg + row + N + i, _MM_HINT_T0);
            if (supers == 1)
                for (int i = 0; i < 2 * BN; i += 64) _mm_prefetch(sup + 4 * N + i, _MM_HINT_T0), _mm_prefetch(sup + 6 * N + i, _MM_HINT_T0);
        }
        for (long k = g * Q8_GROUP; k < (g + 1) * Q8_GROUP; k += 4) {
            __m256i xa[4];
            for (int m = 0; m < MR; m++) xa[m] = _mm256_shuffle_epi8(_mm256_set1_epi32(*(const int32_t *)(xq + m * K + k)), pairs);
            const uint8_t *wk = wb + k * stride;
            /* the weight stream 2 KB ahead into L2: without it a core computes, then waits for memory
               (one row, 2 threads: 21.5 -> 23.5 GB/s of the host's 25.6, AMD Zen 3); past a block's end
               it is the next block's, past the weight's a prefetch that never faults */
            for (int c = 0; c < BN / 32; c++) _mm_prefetch((const char *)wk + 2048 + 64 * c, _MM_HINT_T1);
            for (int c = 0; c < BN / 32; c++) {  /* 16 bytes: channels 16c.. (low nibbles) and BN/2 + 16c.. (high) */
                const __m256i a = _mm256_loadu2_m128i((const __m128i *)(wk + 2 * stride + 16 * c), (const __m128i *)(wk + 16 * c));
                const __m256i b = _mm256_loadu2_m128i((const __m128i *)(wk + 3 * stride + 16 * c), (const __m128i *)(wk + stride + 16 * c));
                /* bytes of (k, k+1) interleaved first, then split into nibbles: 2 shuffles instead of 4
                   (the shuffle ports bound this loop); a 16-bit shift moves each byte's high nibble down
                   and the mask drops what it shifted in from the next byte */
                const __m256i lo = _mm256_unpacklo_epi8(a, b), hi = _mm256_unpackhi_epi8(a, b);
                const __m256i q[4] = {_mm256_and_si256(lo, nibble), _mm256_and_si256(hi, nibble),
                                      _mm256_and_si256(_mm256_srli_epi16(lo, 4), nibble),
                                      _mm256_and_si256(_mm256_srli_epi16(hi, 4), nibble)};
                /* (k, k+1) codes of 8 channels: a pair sum per channel per maddubs lane */
                for (int m = 0; m < MR; m++) {
                    acc[m][2 * c] = _mm256_add_epi16(acc[m][2 * c], _mm256_maddubs_epi16(q[0], xa[m]));
                    acc[m][2 * c + 1] = _mm256_add_epi16(acc[m][2 * c + 1], _mm256_maddubs_epi16(q[1], xa[m]));
                    acc[m][BN / 16 + 2 * c] = _mm256_add_epi16(acc[m][BN / 16 + 2 * c], _mm256_maddubs_epi16(q[2], xa[m]));
                    acc[m][BN / 16 + 2 * c + 1] = _mm256_add_epi16(acc[m][BN / 16 + 2 * c + 1], _mm256_maddubs_epi16(q[3], xa[m]));
                }
            }
        }
        /* acc[m][i] holds channels 8i..8i+7 (low half: inputs k, k+1 of each 4; high half: k+2, k+3) */
        /* the group's sums into the channels' float sums, as q8_tile's Q8_FLUSH does (the same floats) */
        for (int i = 0; i < BN / 8; i++) {
            const __m256 scale = scale8(LAY, szg, sup, 8 * i);
            const __m256 offset = LAY == SYM ? scale : offset8(LAY, szg, sup, N, 8 * i, scale);
            for (int m = 0; m < MR; m++) {
                const __m256 s = _mm256_set1_ps(xs[m * G + g]), n = _mm256_set1_ps(xn[m * G + g]);
                __m256i v = _mm256_add_epi32(_mm256_cvtepi16_epi32(_mm256_castsi256_si128(acc[m][i])),
                                             _mm256_cvtepi16_epi32(_mm256_extracti128_si256(acc[m][i], 1)));
                if (LAY == SYM) {  /* sum (q - 8) xq, exact */
                    v = _mm256_sub_epi32(v, _mm256_set1_epi32(x8[m * G + g]));
                    out[m][i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(v), _mm256_mul_ps(scale, s), out[m][i]);
                } else {
                    const __m256 t = _mm256_fmadd_ps(_mm256_cvtepi32_ps(v), scale, _mm256_mul_ps(offset, n));
                    out[m][i] = _mm256_fmadd_ps(t, s, out[m][i]);
                }
            }
        }
        if (--left == 0) {  /* the weight group ends: the next one's numbers */
            szg += row, left = per;
            if (LAY == KQ && --supers == 0) sup += 4 * N, supers = 8;
        }
    }
    for (int m = 0; m < MR; m++)
        for (int i = 0; i < BN / 8; i++) _mm256_storeu_ps(y + m * N + 8 * i, out[m][i]);
}

/* y (N) = x (K) W^T for a 4-bit weight in torch's layout (K a multiple of 32 and of `group`). */
AI void int4_q8_gemv(const int BN, const int LAY, const float *x, long K, const uint8_t *w, const void *scales,
                     const void *super, long group, float *y, long N) {
    int8_t xq[K];
    float xs[K / Q8_GROUP], xn[K / Q8_GROUP];
    int32_t x8[K / Q8_GROUP];
    quantize_q8_groups(x, K, xq, xs, xn, x8);
    const long width = LAY == PAIRS ? 4 : LAY == SYM ? 2 : 1;  /* bytes of one channel's numbers in a group's row */
    #pragma omp parallel for schedule(static)
    for (long b = 0; b < N / BN; b++)  /* BN, LAY spelled out here: OpenMP outlines this body before constants propagate */
#define INT4_BLOCK(bn, lay) int4_q8_block(bn, lay, 1, xq, xs, xn, x8, K, w + b * K * (bn / 2), (const char *)scales + b * bn * width, \
                                          (const char *)super + b * bn * 2, group, N, y + b * bn)
        if (BN == 32) LAY == SYM ? INT4_BLOCK(32, SYM) : LAY == KQ ? INT4_BLOCK(32, KQ) : INT4_BLOCK(32, PAIRS);
        else LAY == SYM ? INT4_BLOCK(64, SYM) : LAY == KQ ? INT4_BLOCK(64, KQ) : INT4_BLOCK(64, PAIRS);
#undef INT4_BLOCK
}
/* ---- many rows: a prompt --------------------------------------------------------------------
   Each thread takes one block of BN channels at a time and unpacks its codes once into bytes laid
   out as the int8 kernels' blocks (16 channels x 4 inputs: 64 bytes, each channel's 4 codes side
   by side), so every row meets them in register tiles of up to 4 rows x 16 channels: per 4 inputs
   a row's 4 codes are broadcast and maddubs'ed against 16 channels, summed in int16 over the 32
   inputs of a group (as in the one-row case), then widened to float with the group's scales. */

/* Block b's codes -> panel (BN/16 sub-blocks, each (K/4, 16, 4) bytes): a 4 x 16 byte transpose, each
   code less 8 (-8..7, signed: the tile's maddubs takes the inputs, offset by 128, as its unsigned side).
   Then base (BN/16 sub-blocks, each (K/32, 32) int16): per input group, -128 x the sum of the codes under
   each of a tile's int16 lanes, the lanes' starting value: sum (x + 128)(q - 8) - 128 sum (q - 8) = sum x (q - 8). */
AI void unpack_block(const int BN, const uint8_t *wb, long K, uint8_t *panel, int16_t *base) {
    const __m128i nibble = _mm_set1_epi8(0x0F), eight = _mm_set1_epi8(8);
    for (long k = 0; k < K; k += 4) {
        const uint8_t *wk = wb + k * (BN / 2);
        for (int c = 0; c < BN / 32; c++) {
            __m128i lo[4], hi[4];
            for (int j = 0; j < 4; j++) {
                const __m128i v = _mm_loadu_si128((const __m128i *)(wk + j * (BN / 2) + 16 * c));
                lo[j] = _mm_sub_epi8(_mm_and_si128(v, nibble), eight);
                hi[j] = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(v, 4), nibble), eight);
            }
            for (int h = 0; h < 2; h++) {  /* low nibbles: channels 16c..; high: BN/2 + 16c.. */
                const __m128i *q = h ? hi : lo;
                const __m128i t0 = _mm_unpacklo_epi8(q[0], q[1]), t1 = _mm_unpackhi_epi8(q[0], q[1]);
                const __m128i t2 = _mm_unpacklo_epi8(q[2], q[3]), t3 = _mm_unpackhi_epi8(q[2], q[3]);
                uint8_t *out = panel + (h * BN / 32 + c) * 16 * K + k * 16;
                _mm_storeu_si128((__m128i *)out, _mm_unpacklo_epi16(t0, t2));
                _mm_storeu_si128((__m128i *)(out + 16), _mm_unpackhi_epi16(t0, t2));
                _mm_storeu_si128((__m128i *)(out + 32), _mm_unpacklo_epi16(t1, t3));
                _mm_storeu_si128((__m128i *)(out + 48), _mm_unpackhi_epi16(t1, t3));
            }
        }
    }
    const __m256i u128 = _mm256_set1_epi8((char)0x80);
    for (long s = 0; s < BN / 16; s++)
        for (long g = 0; g < K / Q8_GROUP; g++) {
            const uint8_t *p = panel + s * 16 * K + g * Q8_GROUP * 16;
            __m256i b0 = _mm256_setzero_si256(), b1 = _mm256_setzero_si256();
            for (int k = 0; k < Q8_GROUP; k += 4) {  /* 128 (q + q') per lane, at most 8 x 2048 in all: no overflow */
                b0 = _mm256_sub_epi16(b0, _mm256_maddubs_epi16(u128, _mm256_loadu_si256((const __m256i *)(p + k * 16))));
                b1 = _mm256_sub_epi16(b1, _mm256_maddubs_epi16(u128, _mm256_loadu_si256((const __m256i *)(p + k * 16 + 32))));
            }
            _mm256_storeu_si256((__m256i *)(base + (s * (K / Q8_GROUP) + g) * 32), b0);
            _mm256_storeu_si256((__m256i *)(base + (s * (K / Q8_GROUP) + g) * 32 + 16), b1);
        }
}

/* Rows m < MR of the prepared inputs (codes + 128, unsigned) times one sub-block of 16 channels (codes
   less 8 p, (K/4, 16, 4), lane bases `base`, (K/32, 32)), with its scales sc and offsets off (unpack_block,
   block_scales), (K/group, 16) floats each. Each int16 lane starts at its base and wraps freely: only its
   end value, sum x (q - 8) over 16 inputs (|.| <= 16256), must fit, and does. The symmetric layout's
   flush is then one fma a row and 8 channels after the conversion, as the one-row kernel's. */
/* the adds in place (GCC otherwise adds into the product's register, copies it back, and spills one
   accumulator to the stack: a store-to-load chain that halved the tile's speed, AMD Zen 3) */
#define Q8_ADD(c, p) __asm__("vpaddw %[q], %[acc], %[acc]" : [acc] "+x"(c) : [q] "x"(p))
#define Q8_DOT(m) if (MR > m) { const __m256i a = _mm256_set1_epi32(*(const int32_t *)(xq + (m) * K + k)); \
        Q8_ADD(c##m##0, _mm256_maddubs_epi16(a, b0)); \
        Q8_ADD(c##m##1, _mm256_maddubs_epi16(a, b1)); }
#define Q8_FLUSH(m) if (MR > m) { const __m256 s = _mm256_set1_ps(xs[(m) * G + g]); \
        __m256i i0 = _mm256_madd_epi16(c##m##0, ones), i1 = _mm256_madd_epi16(c##m##1, ones); \
        if (LAY == SYM) { \
            out[m][0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i0), _mm256_mul_ps(s0, s), out[m][0]); \
            out[m][1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i1), _mm256_mul_ps(s1, s), out[m][1]); \
        } else { const __m256 n = _mm256_set1_ps(xn[(m) * G + g]); \
            out[m][0] = _mm256_fmadd_ps(_mm256_fmadd_ps(_mm256_cvtepi32_ps(i0), s0, _mm256_mul_ps(o0, n)), s, out[m][0]); \
            out[m][1] = _mm256_fmadd_ps(_mm256_fmadd_ps(_mm256_cvtepi32_ps(i1), s1, _mm256_mul_ps(o1, n)), s, out[m][1]); } }

AI void q8_tile(const int MR, const int LAY, const uint8_t *xq, const float *xs, const float *xn, long K,
                const uint8_t *p, const int16_t *base, const float *sc, const float *off, long group, float *y, long N) {
    const long G = K / Q8_GROUP;
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 out[Q8_ROWS][2];  /* a float sum per row and channel, as the one-row kernel keeps: the same sums */
    for (int m = 0; m < MR; m++) out[m][0] = out[m][1] = _mm256_setzero_ps();
    const long per = group / Q8_GROUP;  /* input groups per weight group, counted down: no division in the loop */
    long left = per;
    for (long g = 0; g < G; g++) {
        const __m256i z0 = _mm256_loadu_si256((const __m256i *)(base + g * 32)), z1 = _mm256_loadu_si256((const __m256i *)(base + g * 32 + 16));
        __m256i c00 = z0, c01 = z1, c10 = z0, c11 = z1, c20 = z0, c21 = z1, c30 = z0, c31 = z1;
        /* unrolled whole (a runtime-count loop GCC left rolled): the 4B's four GEMMs 7% faster, M = 256,
           one core, AMD Zen 3 */
        _Pragma("GCC unroll 8")
        for (int j = 0; j < Q8_GROUP / 4; j++) {  /* a constant count: GCC unrolls it whole */
            const long k = g * Q8_GROUP + 4 * j;
            const __m256i b0 = _mm256_loadu_si256((const __m256i *)(p + k * 16));
            const __m256i b1 = _mm256_loadu_si256((const __m256i *)(p + k * 16 + 32));
            Q8_DOT(0) Q8_DOT(1) Q8_DOT(2) Q8_DOT(3)
        }
        const __m256 s0 = _mm256_loadu_ps(sc), s1 = _mm256_loadu_ps(sc + 8);
        const __m256 o0 = LAY == SYM ? s0 : _mm256_loadu_ps(off), o1 = LAY == SYM ? s1 : _mm256_loadu_ps(off + 8);
        Q8_FLUSH(0) Q8_FLUSH(1) Q8_FLUSH(2) Q8_FLUSH(3)
        if (--left == 0) sc += 16, off += 16, left = per;  /* the weight group ends: the next one's numbers */
    }
    for (int m = 0; m < MR; m++) _mm256_storeu_ps(y + m * N, out[m][0]), _mm256_storeu_ps(y + m * N + 8, out[m][1]);
}
#undef Q8_DOT
#undef Q8_ADD
#undef Q8_FLUSH

/* y (M, N) = x (M, K) W^T for a 4-bit weight in torch's layout, the rows rounded as the one-row case. */
AI void int4_q8_matmul(const int BN, const int LAY, const float *x, long M, long K, const uint8_t *w, const void *scales,
                       const void *super, long group, float *y, long N) {
    const long G = K / Q8_GROUP, GW = K / group;
    static _Thread_local Scratch codes, panels;  /* kept from call to call: no pages faulted in again every call */
    int8_t *xq = scratch(&codes, M * K + 2 * sizeof(float) * M * G);
    float *xs = (float *)(xq + M * K), *xn = xs + M * G;  /* K is a multiple of 32: aligned */
    #pragma omp parallel for if (M > 8)
    for (long m = 0; m < M; m++) {
        quantize_q8_groups(x + m * K, K, xq + m * K, xs + m * G, xn + m * G, NULL);  /* the tiles take the offset as floats */
        for (long k = 0; k < K; k += 32) {  /* codes + 128: the unsigned side of the tile's maddubs */
            __m256i *c = (__m256i *)(xq + m * K + k);
            _mm256_storeu_si256(c, _mm256_xor_si256(_mm256_loadu_si256(c), _mm256_set1_epi8((char)0x80)));
        }
    }
    const uint8_t *xu = (const uint8_t *)xq;
    #pragma omp parallel
    {
        uint8_t *panel = scratch(&panels, BN * K + 2 * sizeof(float) * GW * BN + BN / 16 * G * 32 * sizeof(int16_t));  /* each thread's own */
        float *sc = (float *)(panel + BN * K), *off = sc + GW * BN;  /* K is a multiple of 32: aligned */
        int16_t *base = (int16_t *)(off + GW * BN);
        #pragma omp for schedule(static)
        for (long b = 0; b < N / BN; b++) {
            unpack_block(BN, w + b * K * (BN / 2), K, panel, base);
            /* BN and LAY spelled out: OpenMP outlines this body before constants propagate (see int4_q8_gemv) */
#define SCALES(bn, lay) block_scales(bn, lay, scales, super, GW, N, b * bn, sc, off)
            if (BN == 32) LAY == SYM ? SCALES(32, SYM) : LAY == KQ ? SCALES(32, KQ) : SCALES(32, PAIRS);
            else LAY == SYM ? SCALES(64, SYM) : LAY == KQ ? SCALES(64, KQ) : SCALES(64, PAIRS);
#undef SCALES
            for (int s = 0; s < BN / 16; s++) {
                const uint8_t *p = panel + s * 16 * K;
                const int16_t *bs = base + s * G * 32;
                const float *scs = sc + s * GW * 16, *offs = off + s * GW * 16;
                for (long m = 0; m < M; m += Q8_ROWS) {
                    const uint8_t *xm = xu + m * K;
                    const float *xsm = xs + m * G, *xnm = xn + m * G;
                    float *ym = y + m * N + b * BN + 16 * s;
#define Q8_TILE(mr) (LAY == SYM ? q8_tile(mr, SYM, xm, xsm, xnm, K, p, bs, scs, offs, group, ym, N) \
                                : q8_tile(mr, PAIRS, xm, xsm, xnm, K, p, bs, scs, offs, group, ym, N))
                    switch (M - m < Q8_ROWS ? M - m : Q8_ROWS) {
                    case 4: Q8_TILE(4); break;
                    case 3: Q8_TILE(3); break;
                    case 2: Q8_TILE(2); break;
                    default: Q8_TILE(1);
                    }
#undef Q8_TILE
                }
            }
        }
    }
    scratch_trim(&codes);
}

/* ---- the entry points ---------------------------------------------------------------------- */

static long int4_block = 64;

/* Which block width torch packs with on this machine (32 or 64), set once when the library loads. */
void int4_layout(long block) { int4_block = block; }

/* A few rows (a speculative check's, a batch of streams' tokens): up to 4 rows at a time through the
   block kernel, block by block, so the weight streams from memory once (a block's K x BN/2 bytes stay in
   cache for the other rows) and each row's sums are the one-row product's. Up to 8 rows this beats the
   prompt GEMM, whose unpacked panels and per-block scale rows pay off only over many rows (M = 4: the
   GEMM took ~3.5x one row's time, AMD EPYC Zen 3). */
#define FEW_ROWS 9
AI void int4_q8_rows(const int BN, const int LAY, const float *x, long M, long K, const uint8_t *w, const void *scales,
                     const void *super, long group, float *y, long N) {
    const long G = K / Q8_GROUP, width = LAY == PAIRS ? 4 : LAY == SYM ? 2 : 1;
    int8_t *xq = must_malloc(M * K + 3 * sizeof(float) * M * G);
    float *xs = (float *)(xq + M * K), *xn = xs + M * G;  /* K is a multiple of 32: aligned */
    int32_t *x8 = (int32_t *)(xn + M * G);
    for (long m = 0; m < M; m++) quantize_q8_groups(x + m * K, K, xq + m * K, xs + m * G, xn + m * G, x8 + m * G);
    /* rows sharing the weight's unpacking: 4 at BN = 32 (AVX2; their 16 int16 sums spill, still 20% faster
       than one at a time), 2 at BN = 64 (AVX-512 hosts, not timed: their 16 sums fit its 32 registers) */
    const long tile = BN == 32 ? 4 : 2;
    #pragma omp parallel for schedule(static)
    for (long b = 0; b < N / BN; b++)  /* BN, LAY spelled out, as in int4_q8_gemv */
        for (long m = 0; m < M; m += tile)
#define INT4_BLOCK(bn, lay, mr) int4_q8_block(bn, lay, mr, xq + m * K, xs + m * G, xn + m * G, x8 + m * G, K, \
                                              w + b * K * (bn / 2), (const char *)scales + b * bn * width, \
                                              (const char *)super + b * bn * 2, group, N, y + m * N + b * bn)
#define INT4_ROWS(bn, lay) (bn == 32 && M - m >= 4 ? INT4_BLOCK(bn, lay, 4) : bn == 32 && M - m == 3 ? INT4_BLOCK(bn, lay, 3) \
                            : M - m >= 2 ? INT4_BLOCK(bn, lay, 2) : INT4_BLOCK(bn, lay, 1))
            if (BN == 32) LAY == SYM ? INT4_ROWS(32, SYM) : LAY == KQ ? INT4_ROWS(32, KQ) : INT4_ROWS(32, PAIRS);
            else LAY == SYM ? INT4_ROWS(64, SYM) : LAY == KQ ? INT4_ROWS(64, KQ) : INT4_ROWS(64, PAIRS);
#undef INT4_ROWS
#undef INT4_BLOCK
    free(xq);
}

/* Rows x (M, K) times a 4-bit weight in torch's layout: one row streams it, a few rows share its stream,
   more run the GEMM. layout: PAIRS, SYM or KQ (see the top); `super`: KQ's (d, dmin) rows, else unused. */
void int4_linear(const float *x, long M, long K, const uint8_t *w, const void *scales, const void *super, long layout,
                 long group, float *y, long N) {
#define INT4_CALL(BN, LAY) (M == 1 ? int4_q8_gemv(BN, LAY, x, K, w, scales, super, group, y, N) \
                            : M < FEW_ROWS ? int4_q8_rows(BN, LAY, x, M, K, w, scales, super, group, y, N) \
                                           : int4_q8_matmul(BN, LAY, x, M, K, w, scales, super, group, y, N))
    if (int4_block == 32) layout == SYM ? INT4_CALL(32, SYM) : layout == KQ ? INT4_CALL(32, KQ) : INT4_CALL(32, PAIRS);
    else layout == SYM ? INT4_CALL(64, SYM) : layout == KQ ? INT4_CALL(64, KQ) : INT4_CALL(64, PAIRS);
#undef INT4_CALL
}

#include "quantize_q4.h"  /* the first load's rounding into these layouts (needs int4_block) */
#endif
