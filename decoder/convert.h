/* Load-time conversions into the runtime's layouts, one pass over the source each: a first load of
   Gemma 3 1B spent ~5 s packing 4-bit codes and ~6-12 s re-rounding its Q8_0 embedding with tensor
   ops (several passes over 1.2 GB of float32 temporaries). The tensor-op versions stay the reference
   and the fallback (`quantize.pack_int4`, `loader._embedding`). Included at the end of each kernel
   source, after its `rotate_row`. */

/* Codes q (N, K) in 0..15 -> torch's packed CPU int4 layout, block by block of B rows (`pack_int4_block`). */
void pack_int4_codes(const uint8_t *q, long N, long K, long B, uint8_t *out) {
    #pragma omp parallel for schedule(static)
    for (long b = 0; b < N / B; b++)
        pack_int4_block(q + b * B * K, K, B, out + b * B * K / 2);
}

/* GGUF Q4_0 rows (K/32 blocks: float16 d, 16 bytes holding inputs j and j + 16 in their low and high
   nibbles; w = d (q - 8)) -> their codes in the layout of `pack_int4_codes`, without a codes array. */
void q4_0_to_int4pack(const uint8_t *raw, long N, long K, long B, uint8_t *out) {
    const long row_bytes = K / 32 * 18;
    #pragma omp parallel for schedule(static)
    for (long b = 0; b < N / B; b++) {
        uint8_t *o = out + b * B * K / 2;
        for (long i = 0; i < B / 2; i++) {
            const uint8_t *lo = raw + (b * B + i) * row_bytes + 2, *hi = lo + (B / 2) * row_bytes;
            for (long g = 0; g < K / 32; g++, lo += 18, hi += 18)
                for (int j = 0; j < 16; j++) {
                    o[(g * 32 + j) * (B / 2) + i] = (uint8_t)((lo[j] & 15) | ((hi[j] & 15) << 4));
                    o[(g * 32 + j + 16) * (B / 2) + i] = (uint8_t)((lo[j] >> 4) | (hi[j] & 0xF0));
                }
        }
    }
}

/* GGUF Q8_0 rows (K/32 blocks: float16 d, 32 int8 codes; w = d q) -> `quantize.quantize_int8` of
   `quantize.rotate(w, block)` (block 0: not rotated): int8 q (rows, K), float32 scale per row.
   K a multiple of 32. */
void q8_0_to_int8_rows(const uint8_t *raw, long rows, long K, long block, int8_t *q, float *scale) {
    const float norm = block ? 1.f / sqrtf((float)block) : 1.f;
    #pragma omp parallel
    {
        float *w = must_malloc(K * sizeof(float));
        #pragma omp for schedule(static)
        for (long r = 0; r < rows; r++) {
            const uint8_t *src = raw + r * (K / 32) * 34;
            for (long b = 0; b < K / 32; b++) {
                uint16_t h;
                memcpy(&h, src + b * 34, 2);
                const float d = _cvtsh_ss(h);
                const int8_t *c = (const int8_t *)(src + b * 34 + 2);
                for (int j = 0; j < 32; j++)
                    w[b * 32 + j] = (float)c[j] * d;
            }
            if (block)
                rotate_row(w, K, block);
            /* 8 at a time with AVX (both sources have it): fmaxf and nearbyintf would stay libm calls */
            __m256 peak = _mm256_setzero_ps();
            const __m256 n8 = _mm256_set1_ps(norm), sign = _mm256_set1_ps(-0.f);
            for (long k = 0; k < K; k += 8)
                peak = _mm256_max_ps(peak, _mm256_andnot_ps(sign, _mm256_mul_ps(_mm256_loadu_ps(w + k), n8)));
            __m128 p4 = _mm_max_ps(_mm256_castps256_ps128(peak), _mm256_extractf128_ps(peak, 1));
            p4 = _mm_max_ps(p4, _mm_movehl_ps(p4, p4));
            p4 = _mm_max_ss(p4, _mm_movehdup_ps(p4));
            const float s = fmaxf(_mm_cvtss_f32(p4) / 127.f, 1e-10f);
            scale[r] = s;
            const __m256 s8 = _mm256_set1_ps(s), lo = _mm256_set1_ps(-127.f), hi = _mm256_set1_ps(127.f);
            for (long k = 0; k < K; k += 8) {  /* round half to even, as torch.round */
                __m256 v = _mm256_round_ps(_mm256_div_ps(_mm256_mul_ps(_mm256_loadu_ps(w + k), n8), s8),
                                           _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
                __m256i c = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(v, lo), hi));
                int32_t tmp[8];
                _mm256_storeu_si256((__m256i *)tmp, c);
                for (int j = 0; j < 8; j++)
                    q[r * K + k + j] = (int8_t)tmp[j];
            }
        }
        free(w);
    }
}
