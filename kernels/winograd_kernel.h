/* Template (compiled once per instruction set, see simd_instance.h): the Winograd F(m×m, 3×3)
 * tile transforms (winograd_transform.h has the matrices and the weight transform, which runs
 * once per weight), reached through the winograd table of simd.h (ember_wino_input_block,
 * ember_wino_output_block).
 *
 * Tiles as positions. The input comes prepared (winograd.pyx): per channel, m² phase planes
 * x̃[pi][pj][r][q] = the zero-padded input at row r·m + pi, column q·m + pj, the images stacked
 * (PR = tH + 1 rows each, PWt = tW + 1 columns). Tile (n, th, tw) sits at plane position
 * P = (n·PR + th)·PWt + tw, and element (i, j) of its α×α patch is x̃[i mod m][j mod m] at
 * P + ⌊i/m⌋·PWt + ⌊j/m⌋ — so VW consecutive positions are VW consecutive floats for every (i, j),
 * and the input transform runs on whole vectors of positions, in registers, whatever the plane's
 * width (strips of one tile row filled 7 of 16 lanes on a 28×28 plane, and their scalar gathers
 * cost more than the GEMMs). The last row and column of positions of each image are padding: the
 * transform's stores skip them (masked), so V and the GEMMs hold the real tiles only, numbered
 * t = (n·tH + th)·tW + tw — the padding was 5 of 9 positions on an 8×8 plane. */
#include "winograd_transform.h"

#define EMBER_WINO_INLINE static inline __attribute__((always_inline))

/* o = Bᵀ·d along one axis: 4 → 4 (m = 2) or 6 → 6 (m = 4), each term once */
EMBER_WINO_INLINE void ember_wv_bt(const int m, const ember_vf *d, ember_vf *o)
{
    if (m == 2) {
        const ember_vf a1 = d[1], a2 = d[2];
        o[0] = d[0] - a2;
        o[1] = a1 + a2;
        o[2] = a2 - a1;
        o[3] = a1 - d[3];
    } else {
        const ember_vf a1 = d[1], a2 = d[2], a3 = d[3], a4 = d[4];
        const ember_vf p = a4 - 4.0f * a2, q = a3 - 4.0f * a1;  /* r1, r2 = p ± q */
        const ember_vf u = a4 - a2, v = 2.0f * (a3 - a1);       /* r3, r4 = u ± v */
        o[0] = 4.0f * d[0] - 5.0f * a2 + a4;
        o[1] = p + q;
        o[2] = p - q;
        o[3] = u + v;
        o[4] = u - v;
        o[5] = 4.0f * a1 - 5.0f * a3 + d[5];
    }
}

/* o = Aᵀ·d along one axis: 4 → 2 (m = 2) or 6 → 4 (m = 4) */
EMBER_WINO_INLINE void ember_wv_at(const int m, const ember_vf *d, ember_vf *o)
{
    if (m == 2) {
        const ember_vf a1 = d[1], a2 = d[2];
        o[0] = d[0] + a1 + a2;
        o[1] = a1 - a2 - d[3];
    } else {
        const ember_vf sp = d[1] + d[2], sm = d[1] - d[2];
        const ember_vf tp = d[3] + d[4], tm = d[3] - d[4];
        o[0] = d[0] + sp + tp;
        o[1] = sm + 2.0f * tm;
        o[2] = sp + 4.0f * tp;
        o[3] = sm + 8.0f * tm + d[5];
    }
}

/* dst[l] = v[l] for lanes l in [lo, lo + len): a masked store, so lanes outside are not touched
 * (dst + l for them need not even be inside the buffer) */
EMBER_WINO_INLINE void ember_wv_store_lanes(float *dst, ember_vf v, int lo, int len)
{
#if EMBER_ISA_LEVEL == EMBER_ISA_AVX512 && EMBER_ISA_TARGET_LEVEL == EMBER_ISA_AVX512
    const __mmask16 k = (__mmask16)(((1u << len) - 1u) << lo);
    _mm512_mask_storeu_ps(dst, k, (__m512)v);
#elif EMBER_ISA_LEVEL == EMBER_ISA_AVX2 && EMBER_ISA_TARGET_LEVEL == EMBER_ISA_AVX2
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i in = _mm256_and_si256(_mm256_cmpgt_epi32(lane, _mm256_set1_epi32(lo - 1)),
                                        _mm256_cmpgt_epi32(_mm256_set1_epi32(lo + len), lane));
    _mm256_maskstore_ps(dst, in, (__m256)v);
#else
    for (int l = lo; l < lo + len; ++l) dst[l] = v[l];
#endif
}

/* where tile t's patch starts in the phase planes */
static inline long ember_wino_position(const ember_wino_tiles *g, long t)
{
    const long per_image = (long)g->tH * g->tW;
    const long n = t / per_image, rem = t - n * per_image, th = rem / g->tW;
    return (n * g->PR + th) * g->PWt + (rem - th * g->tW);
}

/* Input transform of one channel for tiles [T0, T0 + nb): V[ξ·vs + t − T0] = (Bᵀ·d_t·B)[ξ].
 * xc: the channel's phase planes (PS floats apart); Vc: V at this channel's row. A vector of VW
 * consecutive positions is transformed at a time, and its lanes that are tiles of the block
 * stored, a run of one tile row at a time (masked). */
EMBER_WINO_INLINE void ember_wino_input(const int m, const float *xc, long PS,
                                        const ember_wino_tiles *g, long T0, int nb, float *Vc,
                                        long vs)
{
    const int alpha = m + 2;
    const long PWt = g->PWt, tW = g->tW, T1 = T0 + nb;
    long t = T0;
    while (t < T1) {
        /* the runs of tiles among the VW positions from tile t's */
        const long P = ember_wino_position(g, t);
        int lo[EMBER_VW], len[EMBER_VW], col[EMBER_VW], runs = 0;
        long u = t;
        while (u < T1) {
            const long pu = ember_wino_position(g, u);
            if (pu - P >= EMBER_VW) break;
            const long tw = (u - (u / tW) * tW);
            long run = tW - tw;
            if (run > EMBER_VW - (pu - P)) run = EMBER_VW - (pu - P);
            if (run > T1 - u) run = T1 - u;
            lo[runs] = (int)(pu - P);
            len[runs] = (int)run;
            col[runs] = (int)(u - T0);
            ++runs;
            u += run;
        }
        const float *base = xc + P;
        ember_vf rows[6][6], d[6], o[6];
        for (int i = 0; i < alpha; ++i) {
            for (int j = 0; j < alpha; ++j)
                d[j] = ember_vload(base + ((i % m) * m + j % m) * PS + (i / m) * PWt + j / m);
            ember_wv_bt(m, d, rows[i]);
        }
        for (int q = 0; q < alpha; ++q) {
            for (int i = 0; i < alpha; ++i) d[i] = rows[i][q];
            ember_wv_bt(m, d, o);
            for (int p = 0; p < alpha; ++p) {
                float *dst = Vc + (long)(p * alpha + q) * vs;
                if (runs == 1 && len[0] == EMBER_VW)
                    ember_vstore(dst + col[0], o[p]);
                else
                    for (int r = 0; r < runs; ++r)
                        ember_wv_store_lanes(dst + col[r] - lo[r], o[p], lo[r], len[r]);
            }
        }
        t = u;
    }
}

static void ember_wino_input_block_here(int m, const float *xc, long PS,
                                        const ember_wino_tiles *g, long T0, int nb, float *Vc,
                                        long vs)
{
    if (m == 2) ember_wino_input(2, xc, PS, g, T0, nb, Vc, vs);
    else        ember_wino_input(4, xc, PS, g, T0, nb, Vc, vs);
}

/* The m vectors v[0..m) of VW tiles each, interleaved: out[l·m + s] = v[s][l] (a tile's m
 * output columns side by side) */
EMBER_WINO_INLINE void ember_wv_interleave(const int m, const ember_vf *v, float *out)
{
    if (m == 2) {
        for (int l = 0; l < EMBER_VW; ++l) { out[2 * l] = v[0][l]; out[2 * l + 1] = v[1][l]; }
    } else {
        for (int l = 0; l < EMBER_VW; ++l) {
            out[4 * l] = v[0][l];
            out[4 * l + 1] = v[1][l];
            out[4 * l + 2] = v[2][l];
            out[4 * l + 3] = v[3][l];
        }
    }
}

/* Output transform of one output channel: y = act(Aᵀ·M·A + bias) for tiles [T0, T0 + nb);
 * Mrow: Mx at this channel's row (column t − T0 for tile t), ξ rows ms apart. */
EMBER_WINO_INLINE void ember_wino_output(const int m, const float *Mrow, long ms,
                                         const ember_wino_tiles *g, long T0, int nb, float bias,
                                         float *yc)
{
    const int alpha = m + 2;
    const long per_image = (long)g->tH * g->tW;
    const ember_tile_epi te = {NULL, NULL, g->act, g->act_a, g->act_b};
    const int act_in_registers = te.act == EMBER_ACT_IDENTITY || te.act == EMBER_ACT_RELU ||
                                 te.act == EMBER_ACT_CLIP || te.act == EMBER_ACT_LEAKY_RELU;
    float rowbuf[4][4 * EMBER_VW];
    for (int t0 = 0; t0 < nb; t0 += EMBER_VW) {
        ember_vf cols[6][4], d[6], o[4];
        for (int q = 0; q < alpha; ++q) {
            for (int p = 0; p < alpha; ++p)
                d[p] = ember_vload(Mrow + (long)(p * alpha + q) * ms + t0);
            ember_wv_at(m, d, o);
            for (int r = 0; r < m; ++r) cols[q][r] = o[r];
        }
        for (int r = 0; r < m; ++r) {
            for (int q = 0; q < alpha; ++q) d[q] = cols[q][r];
            ember_wv_at(m, d, o);
            for (int s = 0; s < m; ++s) {
                ember_vf v = o[s] + bias;
                if (act_in_registers) EMBER_TILE_FINISH(v, ember_vf, ember_vi32, &te, 0, 0);
                o[s] = v;
            }
            ember_wv_interleave(m, o, rowbuf[r]);
            /* the exp family on the chunk's whole rows (short spans would take its tails) */
            if (!act_in_registers) ember_act_span_here(rowbuf[r], m * EMBER_VW, te.act, te.a, te.b);
        }
        /* the chunk's tiles, a run of one tile row of one image at a time */
        const long first = T0 + t0, end = first + EMBER_VW < T0 + nb ? first + EMBER_VW : T0 + nb;
        for (long t = first; t < end;) {
            const long n = t / per_image, rem = t - n * per_image;
            const long tr = rem / g->tW, tw = rem - tr * g->tW;
            const long tiles = end - t < g->tW - tw ? end - t : g->tW - tw;
            const long ow0 = tw * m;
            const long ncol = tiles * m < g->OW - ow0 ? tiles * m : g->OW - ow0;
            for (int r = 0; r < m; ++r) {
                const long oh = tr * m + r;
                if (oh >= g->OH) break;
                float *dst = yc + n * g->img + oh * g->OW + ow0;
                memcpy(dst, rowbuf[r] + (t - first) * m, sizeof(float) * ncol);
            }
            t += tiles;
        }
    }
}

static void ember_wino_output_block_here(int m, const float *Mrow, long ms,
                                         const ember_wino_tiles *g, long T0, int nb, float bias,
                                         float *yc)
{
    if (m == 2) ember_wino_output(2, Mrow, ms, g, T0, nb, bias, yc);
    else        ember_wino_output(4, Mrow, ms, g, T0, nb, bias, yc);
}

/* ---- the phase planes ------------------------------------------------------------------ */

#if EMBER_VW == 16
#define EMBER_WV_EVEN {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30}
#define EMBER_WV_ODD {1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31}
#elif EMBER_VW == 8
#define EMBER_WV_EVEN {0, 2, 4, 6, 8, 10, 12, 14}
#define EMBER_WV_ODD {1, 3, 5, 7, 9, 11, 13, 15}
#else
#define EMBER_WV_EVEN {0, 2, 4, 6}
#define EMBER_WV_ODD {1, 3, 5, 7}
#endif

/* the even and the odd lanes of the 2·VW floats a, b */
EMBER_WINO_INLINE void ember_wv_split(ember_vf a, ember_vf b, ember_vf *even, ember_vf *odd)
{
    const ember_vi32 ev = EMBER_WV_EVEN, od = EMBER_WV_ODD;
    *even = __builtin_shuffle(a, b, ev);
    *odd = __builtin_shuffle(a, b, od);
}

/* dst[pj][q] = row[q·m + pj − pl] for q < n (0 outside [0, W)): one input row into its m phase
 * rows (PS apart); whole vectors where every phase is inside the row, the edges one by one. */
EMBER_WINO_INLINE void ember_wino_deinterleave(const int m, const float *row, long W, long pl,
                                               long n, float *dst, long PS)
{
    long qa = (pl + m - 1) / m, qb = W - m + pl >= 0 ? (W - m + pl) / m + 1 : 0;
    if (qa > n) qa = n;
    if (qb > n) qb = n;
    if (qb < qa) qb = qa;
    long q = qa;
    if (m == 2) {
        for (; q + EMBER_VW <= qb; q += EMBER_VW) {
            const float *src = row + 2 * q - pl;
            ember_vf e, o;
            ember_wv_split(ember_vload(src), ember_vload(src + EMBER_VW), &e, &o);
            ember_vstore(dst + q, e);
            ember_vstore(dst + PS + q, o);
        }
    } else {
        for (; q + EMBER_VW <= qb; q += EMBER_VW) {
            const float *src = row + 4 * q - pl;
            ember_vf e0, o0, e1, o1, p0, p1, p2, p3;
            ember_wv_split(ember_vload(src), ember_vload(src + EMBER_VW), &e0, &o0);
            ember_wv_split(ember_vload(src + 2 * EMBER_VW), ember_vload(src + 3 * EMBER_VW), &e1,
                           &o1);
            ember_wv_split(e0, e1, &p0, &p2);   /* e: phases 0, 2 interleaved */
            ember_wv_split(o0, o1, &p1, &p3);   /* o: phases 1, 3 */
            ember_vstore(dst + q, p0);
            ember_vstore(dst + PS + q, p1);
            ember_vstore(dst + 2 * PS + q, p2);
            ember_vstore(dst + 3 * PS + q, p3);
        }
    }
    for (long k = 0; k < n; ++k) {
        if (k == qa) k = q;   /* the vector part done */
        if (k >= n) break;
        for (int pj = 0; pj < m; ++pj) {
            const long iw = k * m + pj - pl;
            dst[pj * PS + k] = iw >= 0 && iw < W ? row[iw] : 0.0f;
        }
    }
}

/* The m² phase planes of one channel, every image: x̃[pi][pj][n·PR + r][q] = x[n, c,
 * r·m + pi − pt, q·m + pj − pl] (0 outside the image); the slack past the last image 0.
 * xc: channel c of image 0 (images cstride floats apart). */
EMBER_WINO_INLINE void ember_wino_phases(const int m, const float *xc, long cstride, int N,
                                         int H, int W, int pt, int pl, long PR, long PWt,
                                         long PS, float *planes)
{
    const long used = (long)N * PR * PWt;
    for (int n = 0; n < N; ++n)
        for (long r = 0; r < PR; ++r)
            for (int pi = 0; pi < m; ++pi) {
                float *dst = planes + (long)pi * m * PS + (n * PR + r) * PWt;
                const long ih = r * m + pi - pt;
                if (ih < 0 || ih >= H) {
                    for (int pj = 0; pj < m; ++pj) memset(dst + pj * PS, 0, sizeof(float) * PWt);
                    continue;
                }
                ember_wino_deinterleave(m, xc + n * cstride + ih * W, W, pl, PWt, dst, PS);
            }
    for (int p = 0; p < m * m; ++p) memset(planes + p * PS + used, 0, sizeof(float) * (PS - used));
}

static void ember_wino_phases_here(int m, const float *xc, long cstride, int N, int H, int W,
                                   int pt, int pl, long PR, long PWt, long PS, float *planes)
{
    if (m == 2) ember_wino_phases(2, xc, cstride, N, H, W, pt, pl, PR, PWt, PS, planes);
    else        ember_wino_phases(4, xc, cstride, N, H, W, pt, pl, PR, PWt, PS, planes);
}

static const struct ember_winograd_kernels ember_winograd_here = {
    .input_block = ember_wino_input_block_here,
    .output_block = ember_wino_output_block_here,
    .phases = ember_wino_phases_here,
};
