/* Part of the sgemm template (included by sgemm_kernel.h, once per instruction set).
 * Implicit im2col: packs the GEMM's B panel (rows (c, kh, kw), columns (oh, ow)) straight from
 * the image, so conv never writes and re-reads a C·KH·KW x OH·OW column matrix (7 MB for a
 * resnet 56x56 layer: far outside L2). Each GEMM task packs its own columns, so the im2col is
 * parallel for free. Layout is ember_pack_b's: NR-wide micro-panels, k-major, zero padding. */
#if EMBER_NR == 16
#define EMBER_EVEN_LANES 0, 2, 4, 6, 8, 10, 12, 14, 17, 19, 21, 23, 25, 27, 29, 31
#elif EMBER_NR == 32
#define EMBER_EVEN_LANES                                                                     \
    0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30, 33, 35, 37, 39, 41, 43, 45, 47, \
        49, 51, 53, 55, 57, 59, 61, 63
#endif

/* dst[0, NR) = src[0], src[2], …, src[2·NR − 2] (a stride-2 conv's panel row), by two loads
 * and one shuffle; reads nothing past src[2·NR − 2]. */
static inline void ember_pack_even(float *restrict dst, const float *restrict src)
{
    typedef float panel __attribute__((vector_size(EMBER_NR * 4), aligned(4)));
    const panel lo = *(const panel *)src, hi = *(const panel *)(src + EMBER_NR - 1);
    *(panel *)dst = __builtin_shufflevector(lo, hi, EMBER_EVEN_LANES);
}
#undef EMBER_EVEN_LANES

static void ember_pack_b_im2col(int kc, int nc, int p0, int j0, float *pb, const void *ctx)
{
    const ember_im2col_src *s = (const ember_im2col_src *)ctx;
    const int H = s->H, W = s->W, OW = s->OW, sw = s->sw;
    const long hw = (long)H * W;
    for (int jp = 0; jp < nc; jp += EMBER_NR) {
        int nr = nc - jp < EMBER_NR ? nc - jp : EMBER_NR;
        int jstart = j0 + jp;
        int oh0 = jstart / OW, ow0 = jstart % OW;
        int one_row = ow0 + nr <= OW; /* the panel's pixels share one output row */
        int r = p0;
        int kw = r % s->KW, kh = (r / s->KW) % s->KH, c = r / (s->KW * s->KH);
        for (int k = 0; k < kc; ++k) {
            float *dst = pb + (long)k * EMBER_NR;
            const float *xc = s->x + c * hw;
            int ihb = -s->pt + kh * s->dh, iwb = -s->pl + kw * s->dw;
            int ih0 = oh0 * s->sh + ihb, iw0 = ow0 * sw + iwb;
            if (one_row && nr == EMBER_NR && sw == 1 && (unsigned)ih0 < (unsigned)H &&
                iw0 >= 0 && iw0 + EMBER_NR <= W) {
                memcpy(dst, xc + (long)ih0 * W + iw0, sizeof(float) * EMBER_NR);
            } else if (one_row && nr == EMBER_NR && sw == 2 && (unsigned)ih0 < (unsigned)H &&
                       iw0 >= 0 && iw0 + 2 * (EMBER_NR - 1) < W) {
                ember_pack_even(dst, xc + (long)ih0 * W + iw0);
            } else if (one_row && (unsigned)ih0 >= (unsigned)H) {
                memset(dst, 0, sizeof(float) * EMBER_NR);
            } else { /* the panel's pixels row segment by row segment */
                int oh = oh0, ow = ow0, jj = 0;
                while (jj < nr) {
                    int seg = OW - ow < nr - jj ? OW - ow : nr - jj;
                    int ih = oh * s->sh + ihb;
                    float *d = dst + jj;
                    if ((unsigned)ih >= (unsigned)H) {
                        for (int t = 0; t < seg; ++t) d[t] = 0.0f;
                    } else {
                        const float *xrow = xc + (long)ih * W;
                        int iw = ow * sw + iwb, t = 0;
                        for (; t < seg && iw < 0; ++t, iw += sw) d[t] = 0.0f;
                        if (sw == 1) {
                            int n = W - iw < seg - t ? W - iw : seg - t;
                            if (n > 0) { memcpy(d + t, xrow + iw, sizeof(float) * n); t += n; iw += n; }
                        } else {
                            for (; t < seg && iw < W; ++t, iw += sw) d[t] = xrow[iw];
                        }
                        for (; t < seg; ++t) d[t] = 0.0f;
                    }
                    jj += seg;
                    ow = 0;
                    ++oh;
                }
                for (; jj < EMBER_NR; ++jj) dst[jj] = 0.0f;
            }
            if (++kw == s->KW) { kw = 0; if (++kh == s->KH) { kh = 0; ++c; } }
        }
        pb += (long)kc * EMBER_NR;
    }
}
