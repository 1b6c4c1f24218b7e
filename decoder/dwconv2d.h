/* Depthwise 2-D convolution of NCHW float32 images (one k x k filter a channel, stride 1 or 2, zero
   padding given as its top and left rows, which covers timm's asymmetric "same" padding). MobileNet-V5
   (Gemma 3n's vision tower) has ~45 of them a 768 px image; oneDNN reorders NCHW into its blocked
   layout and back around each one, and the stride-2 ones (through timm's Conv2dSame, a padded copy
   first) ran at ~0.4 GMAC/s on an AMD EPYC Zen 3: ~5% of a view for ~1 GMAC. Here each output row
   is summed in a buffer that stays in L1, from input rows read in place; a stride-2 input row is
   split into its even and odd pixels first so that every tap reads consecutive floats (the compiler
   vectorizes the loops). encoders/accelerate.py swaps it in. */
#ifndef MMSDK_DWCONV2D_H
#define MMSDK_DWCONV2D_H

#define DWCONV_MAX_W 4096  /* widest input row (and output row) a plane may have */

long max_dwconv_w(void) { return DWCONV_MAX_W; }  /* for the callers' check (native.takes_dwconv2d) */

/* One plane: y (Ho x Wo) from x (H x W) and its k x k filter f. */
static void dwconv_plane(const float *x, long H, long W, const float *f, long k, long stride, long pad_t,
                         long pad_l, float bias, float *y, long Ho, long Wo) {
    float acc[DWCONV_MAX_W], split[DWCONV_MAX_W + 2];
    for (long oy = 0; oy < Ho; oy++) {
        for (long ox = 0; ox < Wo; ox++) acc[ox] = bias;
        for (long ky = 0; ky < k; ky++) {
            const long iy = oy * stride - pad_t + ky;
            if (iy < 0 || iy >= H) continue;  /* a zero-padding row */
            const float *row = x + iy * W;
            const float *even = row, *odd = row;  /* stride 1: pixel ix is row[ix] */
            if (stride == 2) {  /* pixel 2j is split[j], pixel 2j + 1 is split[half + j] */
                const long half = (W + 1) / 2;
                for (long j = 0; j < W / 2; j++) { split[j] = row[2 * j]; split[half + j] = row[2 * j + 1]; }
                if (W & 1) split[W / 2] = row[W - 1];
                even = split, odd = split + half;
            }
            for (long kx = 0; kx < k; kx++) {
                const float w = f[ky * k + kx];
                const long off = kx - pad_l;  /* output ox reads input ox * stride + off */
                long lo = off < 0 ? (-off + stride - 1) / stride : 0;
                long hi = (W - 1 - off) >= 0 ? (W - 1 - off) / stride + 1 : 0;
                if (hi > Wo) hi = Wo;
                if (stride == 1) {
                    const float *src = row + off;
                    for (long ox = lo; ox < hi; ox++) acc[ox] += w * src[ox];
                } else {  /* ox * 2 + off: even pixels where off is even, odd ones where it is odd */
                    const float *src = (off & 1) ? odd + (off - 1) / 2 : even + off / 2;  /* C rounds to 0: exact here */
                    for (long ox = lo; ox < hi; ox++) acc[ox] += w * src[ox];
                }
            }
        }
        float *out = y + oy * Wo;
        for (long ox = 0; ox < Wo; ox++) out[ox] = acc[ox];
    }
}

/* y (N, C, Ho, Wo) = the depthwise convolution of x (N, C, H, W) with f (C, k, k), plus bias (C, may be
   NULL). stride 1 or 2; rows and columns outside x read as zero. Threads split the planes. */
void dwconv2d(const float *x, long N, long C, long H, long W, const float *f, long k, long stride, long pad_t,
              long pad_l, const float *bias, float *y, long Ho, long Wo) {
    #pragma omp parallel for schedule(static)
    for (long nc = 0; nc < N * C; nc++) {
        const long c = nc % C;
        dwconv_plane(x + nc * H * W, H, W, f + c * k * k, k, stride, pad_t, pad_l, bias ? bias[c] : 0.f,
                     y + nc * Ho * Wo, Ho, Wo);
    }
}
#endif
