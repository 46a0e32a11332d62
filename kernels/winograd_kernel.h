/* Template (compiled once per instruction set, see simd_instance.h): the Winograd F(m×m, 3×3)
 * tile transforms on strips (winograd_transform.h has the matrices and the weight transform,
 * which runs once per weight), reached through the winograd table of simd.h
 * (ember_wino_input_strip, ember_wino_output_strip). Every inner loop runs over the l < nt tiles
 * of a strip, contiguous, so the level's compiler target vectorises it; the output strip ends in
 * the activation (activation_kernel.h) while its rows are in L1. */
#include "winograd_transform.h"

/* The 1-D transforms on vectors of nt tiles: o[k][l] = Σ_j T[k][j]·d[j][l], written out so
 * each is one pass over l (the compiler vectorises it) with no zero terms. */
#define EMBER_WINO_LOOP for (int l = 0; l < nt; ++l)

static inline void ember_wino_bt2(const float *const *d, float *const *o, long os, int nt)
{
    const float *restrict d0 = d[0], *restrict d1 = d[1], *restrict d2 = d[2], *restrict d3 = d[3];
    float *restrict o0 = o[0], *restrict o1 = o0 + os, *restrict o2 = o1 + os, *restrict o3 = o2 + os;
    EMBER_WINO_LOOP {
        float a1 = d1[l], a2 = d2[l];
        o0[l] = d0[l] - a2;
        o1[l] = a1 + a2;
        o2[l] = a2 - a1;
        o3[l] = a1 - d3[l];
    }
}

static inline void ember_wino_bt4(const float *const *d, float *const *o, long os, int nt)
{
    const float *restrict d0 = d[0], *restrict d1 = d[1], *restrict d2 = d[2], *restrict d3 = d[3],
                          *restrict d4 = d[4], *restrict d5 = d[5];
    float *restrict o0 = o[0], *restrict o1 = o0 + os, *restrict o2 = o1 + os,
                   *restrict o3 = o2 + os, *restrict o4 = o3 + os, *restrict o5 = o4 + os;
    EMBER_WINO_LOOP {
        float a1 = d1[l], a2 = d2[l], a3 = d3[l], a4 = d4[l];
        float p = a4 - 4.0f * a2, q = a3 - 4.0f * a1;  /* r1, r2 = p ± q */
        float u = a4 - a2, v = 2.0f * (a3 - a1);       /* r3, r4 = u ± v */
        o0[l] = 4.0f * d0[l] - 5.0f * a2 + a4;
        o1[l] = p + q;
        o2[l] = p - q;
        o3[l] = u + v;
        o4[l] = u - v;
        o5[l] = 4.0f * a1 - 5.0f * a3 + d5[l];
    }
}

static inline void ember_wino_at2(const float *const *d, float *const *o, long os, int nt)
{
    const float *restrict d0 = d[0], *restrict d1 = d[1], *restrict d2 = d[2], *restrict d3 = d[3];
    float *restrict o0 = o[0], *restrict o1 = o0 + os;
    EMBER_WINO_LOOP {
        float a1 = d1[l], a2 = d2[l];
        o0[l] = d0[l] + a1 + a2;
        o1[l] = a1 - a2 - d3[l];
    }
}

static inline void ember_wino_at4(const float *const *d, float *const *o, long os, int nt)
{
    const float *restrict d0 = d[0], *restrict d1 = d[1], *restrict d2 = d[2], *restrict d3 = d[3],
                          *restrict d4 = d[4], *restrict d5 = d[5];
    float *restrict o0 = o[0], *restrict o1 = o0 + os, *restrict o2 = o1 + os, *restrict o3 = o2 + os;
    EMBER_WINO_LOOP {
        float sp = d1[l] + d2[l], sm = d1[l] - d2[l];
        float tp = d3[l] + d4[l], tm = d3[l] - d4[l];
        o0[l] = d0[l] + sp + tp;
        o1[l] = sm + 2.0f * tm;
        o2[l] = sp + 4.0f * tp;
        o3[l] = sm + 8.0f * tm + d5[l];
    }
}

/* Input transform of tiles [tw0, tw0+nt) of tile row th of one H×W channel plane xc; writes
 * V[ξ·vs + l]. Tile (th, tw) covers input rows th·m − pt + [0, α), columns tw·m − pl + [0, α). */
static void ember_wino_input_strip_here(int m, const float *xc, int H, int W, int th, int tw0,
                                        int nt, int pt, int pl, float *V, long vs)
{
    const int alpha = m + 2;
    /* phase[i][r][k] = x[row i][(tw0 + k)·m − pl + r]: then column j of tile l is
     * phase[i][j % m][l + j / m], contiguous in l */
    float phase[6][4][EMBER_WINO_NT + 1];
    float line[4 * (EMBER_WINO_NT + 1)];
    float t[6][6][EMBER_WINO_NT], v[6][6][EMBER_WINO_NT];
    const float *in[6];
    float *out[6];
    for (int i = 0; i < alpha; ++i) {
        int ih = th * m - pt + i;
        int iw0 = tw0 * m - pl;
        if (ih < 0 || ih >= H) {
            for (int r = 0; r < m; ++r) memset(phase[i][r], 0, sizeof(float) * (nt + 1));
        } else {
            const float *row = xc + (long)ih * W;
            const int width = (nt + 1) * m; /* the columns the phases read, from iw0 */
            const float *src = row + iw0;
            if (iw0 < 0 || iw0 + width > W) { /* at a border: a zero-padded copy of them */
                const int lo = iw0 < 0 ? -iw0 : 0, hi = W - iw0 < width ? W - iw0 : width;
                memset(line, 0, sizeof(float) * width);
                if (hi > lo) memcpy(line + lo, row + iw0 + lo, sizeof(float) * (hi - lo));
                src = line;
            }
            if (m == 2) {
                float *restrict e = phase[i][0], *restrict o = phase[i][1];
                for (int k = 0; k <= nt; ++k) { e[k] = src[2 * k]; o[k] = src[2 * k + 1]; }
            } else {
                float *restrict p0 = phase[i][0], *restrict p1 = phase[i][1],
                               *restrict p2 = phase[i][2], *restrict p3 = phase[i][3];
                for (int k = 0; k <= nt; ++k) {
                    p0[k] = src[4 * k]; p1[k] = src[4 * k + 1];
                    p2[k] = src[4 * k + 2]; p3[k] = src[4 * k + 3];
                }
            }
        }
        for (int j = 0; j < alpha; ++j) in[j] = phase[i][j % m] + j / m;
        out[0] = t[i][0];
        if (m == 2) ember_wino_bt2(in, out, EMBER_WINO_NT, nt);
        else        ember_wino_bt4(in, out, EMBER_WINO_NT, nt);
    }
    /* the second pass into a local tile (a constant stride keeps its loop vectorised), then
     * each of its α² rows into V */
    for (int q = 0; q < alpha; ++q) {
        for (int i = 0; i < alpha; ++i) in[i] = t[i][q];
        out[0] = v[0][q];
        if (m == 2) ember_wino_bt2(in, out, 6 * EMBER_WINO_NT, nt);
        else        ember_wino_bt4(in, out, 6 * EMBER_WINO_NT, nt);
    }
    for (int p = 0; p < alpha; ++p)
        for (int q = 0; q < alpha; ++q) { /* a loop, not memcpy: a few vectors, no call */
            float *restrict dst = V + (long)(p * alpha + q) * vs;
            const float *restrict src = v[p][q];
            for (int l = 0; l < nt; ++l) dst[l] = src[l];
        }
}

/* Output transform of tiles [tw0, tw0+nt) of tile row th for one output channel: reads
 * Mx[ξ·ms + l], writes act(… + bias) into y rows th·m + [0, m) (those < OH), columns tw0·m …
 * (those < OW). */
static void ember_wino_output_strip_here(int m, const float *Mx, long ms, int th, int tw0, int nt,
                                         float bias, int act, float act_a, float act_b,
                                         float *yc, int OH, int OW)
{
    const int alpha = m + 2;
    float s[4][6][EMBER_WINO_NT];
    float o[4][EMBER_WINO_NT];
    float rowbuf[4 * EMBER_WINO_NT];
    const float *in[6];
    float *out[4];
    for (int q = 0; q < alpha; ++q) {
        for (int p = 0; p < alpha; ++p) in[p] = Mx + (long)(p * alpha + q) * ms;
        out[0] = s[0][q];   /* stride between rows pp of s: 6·NT */
        if (m == 2) ember_wino_at2(in, out, 6 * EMBER_WINO_NT, nt);
        else        ember_wino_at4(in, out, 6 * EMBER_WINO_NT, nt);
    }
    int ow0 = tw0 * m;
    int ncols = OW - ow0 < nt * m ? OW - ow0 : nt * m;
    for (int pp = 0; pp < m; ++pp) {
        int oh = th * m + pp;
        if (oh >= OH) break;
        for (int q = 0; q < alpha; ++q) in[q] = s[pp][q];
        out[0] = o[0];
        if (m == 2) {
            ember_wino_at2(in, out, EMBER_WINO_NT, nt);
            for (int l = 0; l < nt; ++l) {
                rowbuf[2 * l] = o[0][l] + bias;
                rowbuf[2 * l + 1] = o[1][l] + bias;
            }
        } else {
            ember_wino_at4(in, out, EMBER_WINO_NT, nt);
            for (int l = 0; l < nt; ++l) {
                rowbuf[4 * l] = o[0][l] + bias;
                rowbuf[4 * l + 1] = o[1][l] + bias;
                rowbuf[4 * l + 2] = o[2][l] + bias;
                rowbuf[4 * l + 3] = o[3][l] + bias;
            }
        }
        ember_act_span_here(rowbuf, ncols, act, act_a, act_b);
        memcpy(yc + (long)oh * OW + ow0, rowbuf, sizeof(float) * ncols);
    }
}

static const struct ember_winograd_kernels ember_winograd_here = {
    .input_strip = ember_wino_input_strip_here,
    .output_strip = ember_wino_output_strip_here,
};
