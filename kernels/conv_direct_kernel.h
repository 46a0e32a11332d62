/* Template (compiled once per instruction set, see simd_instance.h): direct convolution, no
 * im2col — the taps read straight from a prepared copy of the input. First chosen for layers with
 * few input channels (a network's first layer, LeNet's), where im2col would pack C·KH·KW taps per
 * pixel to use each only M times; offered to the tuner for every group-1 conv since, as a wide
 * register block with no packing also wins on mid-sized layers (runtime/binders/conv.py).
 *
 * The input of one image comes prepared (conv.pyx direct_sizes): zero-padded and, for strides
 * (sh, sw), split into row and column phases, so the tap (kh, kw) of output position
 * j = oh·PW + ow is x̃[c][kh·dh mod sh][kw·dw mod sw][oh + ⌊kh·dh / sh⌋][ow + ⌊kw·dw / sw⌋]:
 * one offset per tap (g->tap) from j, for every stride — consecutive positions are consecutive
 * floats, rows included.
 * A register block is EMBER_DC_MB output channels × NV vectors of positions (NV = 1, 2 or 3,
 * chosen per geometry so a small plane is not padded to a wide block); each tap loads NV vectors
 * of input and broadcasts MB weights (packed so they are adjacent). */
#if EMBER_ISA_LEVEL == EMBER_ISA_AVX512 && EMBER_ISA_TARGET_LEVEL == EMBER_ISA_AVX512
#define EMBER_DC_MB 8     /* 32 registers: 24 accumulators, 3 input vectors, a broadcast */
#else
#define EMBER_DC_MB 4     /* 16 registers: 12 accumulators, 3 input vectors, a broadcast */
#endif

/* s in every lane, as one broadcast: −0 + s is s exactly (0 + s is not, for s = −0, which is
 * what keeps the compiler from folding ember_vsplat's 0 + s into a plain broadcast) */
static inline ember_vf ember_dc_bcast(float s) { return -(ember_vf){0} + s; }

#define EMBER_DC_ALWAYS_INLINE static inline __attribute__((always_inline))

/* One register block: acc = the taps of MB output channels (weights wb) at NV·VW consecutive
 * positions starting at x0 — for each input channel (CS floats apart) the taps' offsets g->tap
 * (their phase plane and shift, conv.pyx), the hot loop NV loads, MB broadcasts, MB·NV FMAs.
 * NV is a constant at each call site, so every variant keeps its block in registers. */
EMBER_DC_ALWAYS_INLINE void ember_dc_block(const ember_dc_geom *g, const float *x0,
                                           const float *wb, ember_vf acc[EMBER_DC_MB][3],
                                           const int NV)
{
    const int C = g->C, taps = g->KH * g->KW;
    const long CS = g->CS;
    const long *tap = g->tap;
    for (int i = 0; i < EMBER_DC_MB; ++i)
        for (int v = 0; v < NV; ++v) acc[i][v] = ember_vsplat(0.0f);
    const float *wt = wb;
    for (int c = 0; c < C; ++c) {
        const float *xc = x0 + (long)c * CS;
        for (int t = 0; t < taps; ++t, wt += EMBER_DC_MB) {
            const float *row = xc + tap[t];
            ember_vf xv[3];
            for (int v = 0; v < NV; ++v) xv[v] = ember_vload(row + v * EMBER_VW);
            for (int i = 0; i < EMBER_DC_MB; ++i) {
                const ember_vf wv = ember_dc_bcast(wt[i]);
                for (int v = 0; v < NV; ++v) acc[i][v] += wv * xv[v];
            }
        }
    }
}

/* Output rows [oh0, oh1), channel blocks [mb0, mb1), of one image: y (M × OH × OW) = act(conv +
 * bias). xp is the prepared image (conv.pyx): every tap of output position j = oh·PW + ow lies at
 * xp + c·CS + tap[t] + j, so positions run on over rows (the columns ow ≥ OW computed and
 * dropped) and a narrow plane still fills the vectors. wp holds the weights in blocks of MB
 * channels: wp[((mb·C + c)·KH + kh)·KW + kw][0:MB]. */
EMBER_DC_ALWAYS_INLINE void ember_dc_rows(const ember_dc_geom *g, const float *xp,
                                          const float *wp, const float *bias, float *y, int oh0,
                                          int oh1, int mb0, int mb1, const int NV)
{
    const int C = g->C, M = g->M, OW = g->OW, cols = NV * EMBER_VW;
    const long PW = g->PW, plane_out = (long)g->OH * OW, taps = (long)g->KH * g->KW;
    const long j0 = (long)oh0 * PW, j1 = (long)(oh1 - 1) * PW + OW;
    float tail[3 * EMBER_VW];
    ember_vf acc[EMBER_DC_MB][3];
    /* the compare-only activations in registers (EMBER_TILE_FINISH); the rest on the block */
    const ember_tile_epi te = {NULL, NULL, g->act, g->act_a, g->act_b};
    const int act_in_registers = te.act == EMBER_ACT_IDENTITY || te.act == EMBER_ACT_RELU ||
                                 te.act == EMBER_ACT_CLIP || te.act == EMBER_ACT_LEAKY_RELU;
    for (int mb = mb0; mb < mb1; ++mb) {
        const float *wb = wp + (long)mb * C * taps * EMBER_DC_MB;
        for (long j = j0; j < j1; j += cols) {
            ember_dc_block(g, xp + j, wb, acc, NV);
            const long jend = j + cols < j1 ? j + cols : j1;
            const long oh_j = j / PW, ow_j = j - oh_j * PW;
            /* the whole block inside one output row: stored straight from the registers */
            const int whole = jend - j == cols && ow_j + cols <= OW;
            for (int i = 0; i < EMBER_DC_MB; ++i) {
                const int m = mb * EMBER_DC_MB + i;
                if (m >= M) break;
                const float bm = bias ? bias[m] : 0.0f;
                for (int v = 0; v < NV; ++v) {
                    ember_vf r = acc[i][v] + bm;
                    if (act_in_registers) EMBER_TILE_FINISH(r, ember_vf, ember_vi32, &te, 0, 0);
                    acc[i][v] = r;
                }
                if (whole) {
                    float *dst = y + m * plane_out + oh_j * OW + ow_j;
                    for (int v = 0; v < NV; ++v) ember_vstore(dst + v * EMBER_VW, acc[i][v]);
                    if (!act_in_registers) ember_act_span_here(dst, cols, te.act, te.a, te.b);
                    continue;
                }
                for (int v = 0; v < NV; ++v) ember_vstore(tail + v * EMBER_VW, acc[i][v]);
                if (!act_in_registers) ember_act_span_here(tail, cols, te.act, te.a, te.b);
                /* the block's positions row segment by row segment, padding columns left; a
                 * segment of a vector or more in vector copies, the last one overlapping */
                for (long p = j; p < jend;) {
                    const long oh = p / PW, ow = p - oh * PW;
                    const long row_end = oh * PW + PW;
                    const long next = row_end < jend ? row_end : jend;
                    if (ow < OW) {
                        const long n = (next - p) < (OW - ow) ? next - p : OW - ow;
                        float *dst = y + m * plane_out + oh * OW + ow;
                        const float *src = tail + (p - j);
                        if (n >= EMBER_VW) {
                            for (long k = 0; k + EMBER_VW < n; k += EMBER_VW)
                                ember_vstore(dst + k, ember_vload(src + k));
                            ember_vstore(dst + n - EMBER_VW, ember_vload(src + n - EMBER_VW));
                        } else {
                            memcpy(dst, src, sizeof(float) * n);
                        }
                    }
                    p = next;
                }
            }
        }
    }
}

static void ember_direct_conv_rows_here(const ember_dc_geom *g, const float *xp, const float *wp,
                                        const float *bias, float *y, int oh0, int oh1, int mb0,
                                        int mb1)
{
    switch (g->nv) {
    case 1: ember_dc_rows(g, xp, wp, bias, y, oh0, oh1, mb0, mb1, 1); break;
    case 2: ember_dc_rows(g, xp, wp, bias, y, oh0, oh1, mb0, mb1, 2); break;
    default: ember_dc_rows(g, xp, wp, bias, y, oh0, oh1, mb0, mb1, 3); break;
    }
}

/* ---- output channels in the lanes --------------------------------------------------------
 * The other register block, for small planes: EMBER_DCC_NP output pixels × MBV vectors of output
 * channels. Each tap broadcasts one input value a pixel and loads MBV vectors of weights, so only
 * the image's own pixels are computed (positions in the lanes compute a plane's padding columns
 * and pad its last block: on a 7×7 plane 64 lanes for 49 pixels), at the cost of scattering the
 * block to the NCHW output channel by channel. Weights packed in blocks of MBV·VW channels. */
#if EMBER_ISA_LEVEL == EMBER_ISA_AVX512 && EMBER_ISA_TARGET_LEVEL == EMBER_ISA_AVX512
#define EMBER_DCC_MBV 4   /* 24 accumulators, 4 weight vectors, a broadcast */
#else
#define EMBER_DCC_MBV 2   /* 12 accumulators, 2 weight vectors, a broadcast */
#endif
#define EMBER_DCC_NP 6

/* acc[p][v] += the taps of input channels [c0, c1) for output channels v·VW… at the pixels whose
 * prepared positions are px[p]; wt: the weights of channel c0's first tap, a tap's bw apart */
EMBER_DC_ALWAYS_INLINE void ember_dcc_block(const ember_dc_geom *g,
                                            const float *const px[EMBER_DCC_NP], const float *wt,
                                            long bw, int c0, int c1,
                                            ember_vf acc[EMBER_DCC_NP][EMBER_DCC_MBV],
                                            const int MBV)
{
    const int taps = g->KH * g->KW;
    const long CS = g->CS;
    const long *tap = g->tap;
    for (int c = c0; c < c1; ++c) {
        const long cs = (long)c * CS;
        for (int t = 0; t < taps; ++t, wt += bw) {
            const long o = cs + tap[t];
            ember_vf wv[EMBER_DCC_MBV];
            for (int v = 0; v < MBV; ++v) wv[v] = ember_vload(wt + v * EMBER_VW);
            for (int p = 0; p < EMBER_DCC_NP; ++p) {
                const ember_vf xb = ember_dc_bcast(px[p][o]);
                for (int v = 0; v < MBV; ++v) acc[p][v] += xb * wv[v];
            }
        }
    }
}

/* Pixels a chunk, and taps a slice of input channels: a chunk's blocks run one slice after the
 * other, their partial sums kept in a buffer (chunk × MBV·VW floats, in L1), so a slice's weights
 * (up to EMBER_DCC_KC taps × MBV·VW floats, 64 KB on AVX-512) stay in cache across the chunk
 * rather than the whole C·KH·KW × MBV·VW of them (1.2 MB for 512 channels 3×3) being streamed
 * from L3 once a block. */
#define EMBER_DCC_CHUNK_BLOCKS 8
#define EMBER_DCC_KC 128

/* Output pixels [q0, q1) (q = oh·OW + ow) of one image, output channels [m0, m0 + mn) — one
 * block of the packed weights wb (bw channels a tap, MBV·VW ≥ mn of them computed):
 * y = act(conv + bias), the prepared image xp as for the rows kernel. */
EMBER_DC_ALWAYS_INLINE void ember_dcc_pixels(const ember_dc_geom *g, const float *xp,
                                             const float *wb, int bw, const float *bias,
                                             float *y, long q0, long q1, int m0, int mn,
                                             const int MBV)
{
    enum { NP = EMBER_DCC_NP, CHUNK = EMBER_DCC_CHUNK_BLOCKS * EMBER_DCC_NP };
    const int C = g->C, OW = g->OW;
    const int taps = g->KH * g->KW;
    const int slice = taps >= EMBER_DCC_KC ? 1 : EMBER_DCC_KC / taps;  /* channels a slice */
    const long PW = g->PW, plane_out = (long)g->OH * OW;
    float part[CHUNK][EMBER_DCC_MBV * EMBER_VW];
    float bb[EMBER_DCC_MBV * EMBER_VW];
    ember_vf acc[NP][EMBER_DCC_MBV];
    const ember_tile_epi te = {NULL, NULL, g->act, g->act_a, g->act_b};
    const int act_in_registers = te.act == EMBER_ACT_IDENTITY || te.act == EMBER_ACT_RELU ||
                                 te.act == EMBER_ACT_CLIP || te.act == EMBER_ACT_LEAKY_RELU;
    const float *px[NP];
    for (int k = 0; k < MBV * EMBER_VW; ++k) bb[k] = bias && k < mn ? bias[m0 + k] : 0.0f;
    /* the pixels in equal chunks: 49 as 25 + 24, not 48 + 1 (a block for one pixel) */
    const long chunks = (q1 - q0 + CHUNK - 1) / CHUNK;
    for (long ci = 0; ci < chunks; ++ci) {
        const long qc = q0 + (q1 - q0) * ci / chunks, qc1 = q0 + (q1 - q0) * (ci + 1) / chunks;
        for (int c0 = 0; c0 < C; c0 += slice) {
            const int c1 = c0 + slice < C ? c0 + slice : C;
            const int first = c0 == 0, last = c1 == C;
            for (long q = qc; q < qc1; q += NP) {
                const int np = qc1 - q < NP ? (int)(qc1 - q) : NP;
                float (*pp)[EMBER_DCC_MBV * EMBER_VW] = part + (q - qc);
                for (int p = 0; p < NP; ++p) {   /* past the chunk: its last pixel again */
                    const long qp = q + (p < np ? p : np - 1), oh = qp / OW;
                    px[p] = xp + oh * PW + (qp - oh * OW);
                    for (int v = 0; v < MBV; ++v)
                        acc[p][v] = first || p >= np ? ember_vsplat(0.0f)
                                                     : ember_vload(pp[p] + v * EMBER_VW);
                }
                ember_dcc_block(g, px, wb + (long)c0 * taps * bw, bw, c0, c1, acc, MBV);
                for (int p = 0; p < np; ++p)
                    for (int v = 0; v < MBV; ++v) {
                        ember_vf r = acc[p][v];
                        if (last) {
                            r += ember_vload(bb + v * EMBER_VW);
                            if (act_in_registers)
                                EMBER_TILE_FINISH(r, ember_vf, ember_vi32, &te, 0, 0);
                        }
                        ember_vstore(pp[p] + v * EMBER_VW, r);
                    }
            }
        }
        const int nq = (int)(qc1 - qc);
        if (!act_in_registers)
            for (int p = 0; p < nq; ++p) ember_act_span_here(part[p], mn, te.act, te.a, te.b);
        /* the chunk to the NCHW output, a channel's pixels at a time */
        for (int k = 0; k < mn; ++k) {
            float *dst = y + (long)(m0 + k) * plane_out + qc;
            for (int p = 0; p < nq; ++p) dst[p] = part[p][k];
        }
    }
}

/* Channel blocks [mb0, mb1) of g->mbv vectors each; the last block computes only the vectors
 * its channels fill (160 channels: 64 + 64 + 32, not a third 64 with 32 of zero weights). */
static void ember_direct_conv_pixels_here(const ember_dc_geom *g, const float *xp,
                                          const float *wp, const float *bias, float *y, long q0,
                                          long q1, int mb0, int mb1)
{
    const int bw = g->mbv * EMBER_VW;
    const long block = (long)g->C * g->KH * g->KW * bw;
    for (int mb = mb0; mb < mb1; ++mb) {
        const int m0 = mb * bw, mn = g->M - m0 < bw ? g->M - m0 : bw;
        const int nv = (mn + EMBER_VW - 1) / EMBER_VW;
        const float *wb = wp + mb * block;
        switch (nv) {
        case 1: ember_dcc_pixels(g, xp, wb, bw, bias, y, q0, q1, m0, mn, 1); break;
#if EMBER_DCC_MBV >= 4
        case 2: ember_dcc_pixels(g, xp, wb, bw, bias, y, q0, q1, m0, mn, 2); break;
        case 3: ember_dcc_pixels(g, xp, wb, bw, bias, y, q0, q1, m0, mn, 3); break;
#endif
        default: ember_dcc_pixels(g, xp, wb, bw, bias, y, q0, q1, m0, mn, EMBER_DCC_MBV); break;
        }
    }
}

/* ---- the prepared input ------------------------------------------------------------------ */
#include "window.h"

/* dst[j] = src[j·sw] for j < n: a phase row; vector copies (stride 1) or the even lanes of pairs
 * of vectors (stride 2), others one by one */
static inline void ember_dc_phase_row(const float *src, long sw, long n, float *dst)
{
    long j = 0;
    if (sw == 1) {
        for (; j + EMBER_VW <= n; j += EMBER_VW) ember_vstore(dst + j, ember_vload(src + j));
    } else if (sw == 2) {
        /* a pair of vectors reads src[2j … 2j + 2·VW − 1]; the last tap is src[2(n − 1)] */
        for (; j + EMBER_VW < n; j += EMBER_VW) {
            ember_vf e, o;
            ember_wv_split(ember_vload(src + 2 * j), ember_vload(src + 2 * j + EMBER_VW), &e, &o);
            ember_vstore(dst + j, e);
        }
    }
    for (; j < n; ++j) dst[j] = src[j * sw];
}

/* Rows [r0, r1) of the phase planes of one channel of one image (xc, H × W) at dst (see
 * conv.pyx direct_sizes): x̃[phr][phc][r][j] = x[r·sh + phr − pt][j·sw + phc − pl], 0 outside;
 * each plane's slack zeroed. */
static void ember_direct_prepare_here(const ember_dc_prep *p, const float *xc, long r0, long r1,
                                      float *dst)
{
    for (long phr = 0; phr < p->shp; ++phr)
        for (long phc = 0; phc < p->swp; ++phc) {
            float *plane = dst + (phr * p->swp + phc) * p->PS;
            /* the kernel's slack: read by the last block's dropped lanes, never used */
            memset(plane + p->PH * p->PW, 0, sizeof(float) * (p->PS - p->PH * p->PW));
            long lo, hi; /* the phase columns j with 0 ≤ j·sw + phc − pl < W */
            ember_span_inside(phc - p->pl, p->sw, p->PW, 0, p->W, &lo, &hi);
            for (long r = r0; r < r1; ++r) {
                float *row = plane + r * p->PW;
                const long ih = r * p->sh + phr - p->pt;
                if (ih < 0 || ih >= p->H || hi <= lo) {
                    memset(row, 0, sizeof(float) * p->PW);
                    continue;
                }
                for (long j = 0; j < lo; ++j) row[j] = 0.0f;
                ember_dc_phase_row(xc + ih * p->W + (lo * p->sw + phc - p->pl), p->sw, hi - lo,
                                   row + lo);
                for (long j = hi; j < p->PW; ++j) row[j] = 0.0f;
            }
        }
}

static const struct ember_conv_direct_kernels ember_conv_direct_here = {
    .mb = EMBER_DC_MB,
    .vw = EMBER_VW,
    .mbv = EMBER_DCC_MBV,
    .rows = ember_direct_conv_rows_here,
    .pixels = ember_direct_conv_pixels_here,
    .prepare = ember_direct_prepare_here,
};
