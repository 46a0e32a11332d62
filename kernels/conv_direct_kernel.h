/* Template (compiled once per instruction set, see simd_instance.h): direct convolution for
 * layers with few input channels — a network's first layer (3 colour channels, 7×7/2 or 3×3/2),
 * LeNet's — where im2col would pack C·KH·KW taps per pixel to use each only M times.
 *
 * The input of one image comes prepared (conv.pyx): zero-padded and, for a stride s, split into
 * s column phases, so the taps (kh, kw) of EMBER_DC_NV·EMBER_VW consecutive output columns are
 * one contiguous run of a phase row: x̃[c][kw·dw mod s][oh·sh + kh·dh][ow + ⌊kw·dw / s⌋].
 * g->sw is the number of phase planes: s, or (KW − 1)·dw + 1 when that is smaller (conv.pyx
 * direct_geometry), which gives the same phases and shifts for every tap.
 * A register block is EMBER_DC_MB output channels × EMBER_DC_NV vectors of output columns;
 * each tap loads NV vectors of input and broadcasts MB weights (packed so they are adjacent). */
#define EMBER_DC_MB 4
#define EMBER_DC_NV 3

/* s in every lane, as one broadcast: −0 + s is s exactly (0 + s is not, for s = −0, which is
 * what keeps the compiler from folding ember_vsplat's 0 + s into a plain broadcast) */
static inline ember_vf ember_dc_bcast(float s) { return -(ember_vf){0} + s; }

/* One register block: acc = the taps of MB output channels (weights wb) at NV·VW consecutive
 * positions starting at x0 of every phase plane (rows PW apart, planes PS apart). */
static inline void ember_dc_block(const ember_dc_geom *g, const float *x0, const float *wb,
                                  ember_vf acc[EMBER_DC_MB][EMBER_DC_NV])
{
    const int C = g->C, KH = g->KH, KW = g->KW, sw = g->sw, dh = g->dh, dw = g->dw;
    const long PW = g->PW, PS = g->PS;
    for (int i = 0; i < EMBER_DC_MB; ++i)
        for (int v = 0; v < EMBER_DC_NV; ++v) acc[i][v] = ember_vsplat(0.0f);
    const float *wt = wb;
    for (int c = 0; c < C; ++c)
        for (int kh = 0; kh < KH; ++kh) {
            const float *rows = x0 + (long)c * sw * PS + (long)kh * dh * PW;
            int ph = 0, shift = 0;   /* tap kw·dw = shift·sw + ph, no division */
            for (int kw = 0; kw < KW; ++kw, wt += EMBER_DC_MB) {
                const float *row = rows + (long)ph * PS + shift;
                ember_vf xv[EMBER_DC_NV];
                for (int v = 0; v < EMBER_DC_NV; ++v) xv[v] = ember_vload(row + v * EMBER_VW);
                for (int i = 0; i < EMBER_DC_MB; ++i) {
                    const ember_vf wv = ember_dc_bcast(wt[i]);
                    for (int v = 0; v < EMBER_DC_NV; ++v) acc[i][v] += wv * xv[v];
                }
                for (ph += dw; ph >= sw; ph -= sw) ++shift;
            }
        }
}

/* Output rows [oh0, oh1) of one image, every output channel: y (M × OH × OW) = act(conv +
 * bias); xp is the prepared image (rows are absolute: row oh·sh + kh·dh of each phase plane),
 * wp the weights packed in blocks of MB channels: wp[((mb·C + c)·KH + kh)·KW + kw][0:MB].
 * Row stride 1 (flat): positions j = oh·PW + ow run on over rows, the columns ow ≥ OW computed
 * and dropped; otherwise row by row, the row's last block partial. */
static void ember_direct_conv_rows_here(const ember_dc_geom *g, const float *xp, const float *wp,
                                        const float *bias, float *y, int oh0, int oh1)
{
    const int C = g->C, M = g->M, KH = g->KH, KW = g->KW, OH = g->OH, OW = g->OW;
    const long PW = g->PW, plane_out = (long)OH * OW;
    const int mblocks = (M + EMBER_DC_MB - 1) / EMBER_DC_MB, cols = EMBER_DC_NV * EMBER_VW;
    float tail[EMBER_DC_NV * EMBER_VW];
    ember_vf acc[EMBER_DC_MB][EMBER_DC_NV];
    if (g->flat) {
        const long j0 = (long)oh0 * PW, j1 = (long)(oh1 - 1) * PW + OW;
        for (int mb = 0; mb < mblocks; ++mb) {
            const float *wb = wp + (long)mb * C * KH * KW * EMBER_DC_MB;
            for (long j = j0; j < j1; j += cols) {
                ember_dc_block(g, xp + j, wb, acc);
                const long jend = j + cols < j1 ? j + cols : j1;
                for (int i = 0; i < EMBER_DC_MB; ++i) {
                    const int m = mb * EMBER_DC_MB + i;
                    if (m >= M) break;
                    const ember_vf b = ember_vsplat(bias ? bias[m] : 0.0f);
                    for (int v = 0; v < EMBER_DC_NV; ++v)
                        ember_vstore(tail + v * EMBER_VW, acc[i][v] + b);
                    /* the block's positions row segment by row segment, padding columns left */
                    for (long p = j; p < jend;) {
                        const long oh = p / PW, ow = p - oh * PW;
                        const long row_end = oh * PW + PW;
                        const long next = row_end < jend ? row_end : jend;
                        if (ow < OW) {
                            const long n = (next - p) < (OW - ow) ? next - p : OW - ow;
                            float *dst = y + m * plane_out + oh * OW + ow;
                            memcpy(dst, tail + (p - j), sizeof(float) * n);
                            ember_act_span_here(dst, n, g->act, g->act_a, g->act_b);
                        }
                        p = next;
                    }
                }
            }
        }
        return;
    }
    for (int oh = oh0; oh < oh1; ++oh) {
        for (int mb = 0; mb < mblocks; ++mb) {
            const float *wb = wp + (long)mb * C * KH * KW * EMBER_DC_MB;
            for (int ow = 0; ow < OW; ow += cols) {
                ember_dc_block(g, xp + (long)oh * g->sh * PW + ow, wb, acc);
                const int ncols = OW - ow < cols ? OW - ow : cols;
                for (int i = 0; i < EMBER_DC_MB; ++i) {
                    const int m = mb * EMBER_DC_MB + i;
                    if (m >= M) break;
                    const ember_vf b = ember_vsplat(bias ? bias[m] : 0.0f);
                    float *dst = y + m * plane_out + (long)oh * OW + ow;
                    if (ncols == cols) {
                        for (int v = 0; v < EMBER_DC_NV; ++v)
                            ember_vstore(dst + v * EMBER_VW, acc[i][v] + b);
                    } else {   /* the row's last, partial block */
                        for (int v = 0; v < EMBER_DC_NV; ++v)
                            ember_vstore(tail + v * EMBER_VW, acc[i][v] + b);
                        memcpy(dst, tail, sizeof(float) * ncols);
                    }
                    ember_act_span_here(dst, ncols, g->act, g->act_a, g->act_b);
                }
            }
        }
    }
}

static const struct ember_conv_direct_kernels ember_conv_direct_here = {
    .mb = EMBER_DC_MB,
    .cols = EMBER_DC_NV * EMBER_VW,
    .rows = ember_direct_conv_rows_here,
};
