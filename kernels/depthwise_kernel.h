/* Template (compiled once per instruction set, see simd_instance.h): the depthwise plane
 * kernels — forward, input gradient, weight gradient — reached through the depthwise table of
 * simd.h. Geometry and buffer sizes are in depthwise.h.
 *
 * Per plane: a plane's input window is first copied into a zero-padded buffer split into sh·sw
 * *phase planes* — padded pixel (r, c) goes to phase plane (r mod sh, c mod sw) at
 * (r div sh, c div sw) — so that every tap of every stride reads its phase plane at unit stride,
 * and padding costs nothing in the inner loop. All phase planes share one row pitch Wq, which
 * makes the output a *flat* 1-D correlation: out[f], f = oh·Wq + ow, reads phase plane + f +
 * tap offset. The Wq − OW columns past the right edge of each output row are computed and
 * thrown away; in exchange a 7×7 plane is one 61-float loop instead of seven 7-float ones.
 *
 * Per channel group (the ember_dw8_* kernels): EMBER_DW_GROUP channels side by side, one
 * vector register of the level per pixel — 4 channels on generic (SSE), 8 on AVX2, 16 on
 * AVX-512 — so that the 9 weights and 4 accumulators of a 3×3 tap loop stay in registers.
 */
#include "activation.h"
#include "depthwise.h"

#define EMBER_DW_GROUP EMBER_VW

/* Packing and unpacking transpose square tiles of T pixels × T channels: T = 8 from AVX2 up
 * (the ymm unpack/shuffle/permute sequence), 4 on the baseline, whose SSE shuffles do not
 * cross 4 lanes. */
#if EMBER_ISA_LEVEL == EMBER_ISA_GENERIC
#define EMBER_DW_TILE 4
#else
#define EMBER_DW_TILE 8
#endif

/* one pixel of a channel group */
typedef float ember_dwv __attribute__((vector_size(EMBER_DW_GROUP * 4), aligned(4)));
/* one row of a transposed tile */
typedef float ember_dwt __attribute__((vector_size(EMBER_DW_TILE * 4), aligned(4)));

/* ceil(a / b) and floor(a / b) for b > 0 and any sign of a */
static inline int ember_div_ceil(int a, int b) { return a >= 0 ? (a + b - 1) / b : -((-a) / b); }
static inline int ember_div_floor(int a, int b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

static inline float *ember_dw_flat(const ember_dw_geom *g, float *buf)
{
    return buf + (long)g->sh * g->sw * g->Hq * g->Wq;
}

/* dst[0, n) = the padded source row: src[j + off] where 0 <= j + off < W, else 0. */
static inline EMBER_NO_LIBCALLS void ember_dw_pad_row(float *restrict dst, const float *restrict src,
                                                      int n, int off, int W)
{
    /* pointer-stepped loops: Python builds with -fwrapv, under which int index arithmetic
     * (j + off, 2·j) may wrap and the vectoriser gives up */
    int lo = off < 0 ? -off : 0, hi = W - off;
    if (lo > n) lo = n;
    if (hi > n) hi = n;
    if (hi < lo) hi = lo;
    float *d = dst, *mid = dst + lo, *end_mid = dst + hi, *end = dst + n;
    const float *s = src + off + lo;
    while (d < mid) *d++ = 0.0f;
    while (d < end_mid) *d++ = *s++;
    while (d < end) *d++ = 0.0f;
}

/* Copy the source plane x (H × W) into the phase planes at buf (padded row by padded row). */
static EMBER_NO_LIBCALLS void ember_dw_pack(const ember_dw_geom *g, const float *restrict x,
                                            float *restrict buf)
{
    const int sh = g->sh, sw = g->sw, Hq = g->Hq, Wq = g->Wq;
    const long plane = (long)Hq * Wq;
    float *tmp = buf + (long)sh * sw * plane + (long)g->OH * Wq + g->KH * g->KW;
    for (int i = 0; i < Hq; ++i) {
        for (int qr = 0; qr < sh; ++qr) {
            float *dst = buf + (long)qr * sw * plane + (long)i * Wq;   /* phase (qr, 0), row i */
            int t = i * sh + qr - g->pt;    /* dilated source row */
            int valid = t >= 0;
            if (g->ih_step != 1 && valid) {
                valid = t % g->ih_step == 0;
                t /= g->ih_step;
            }
            if (!valid || t >= g->H) {
                for (int qc = 0; qc < sw; ++qc)
                    for (int j = 0; j < Wq; ++j) dst[qc * plane + j] = 0.0f;
                continue;
            }
            const float *src = x + (long)t * g->W;
            if (g->iw_step == 1 && sw == 1) {
                ember_dw_pad_row(dst, src, Wq, -g->pl, g->W);
            } else if (g->iw_step == 1 && sw == 2) {   /* pad into tmp, then split even / odd */
                ember_dw_pad_row(tmp, src, 2 * Wq, -g->pl, g->W);
                float *restrict e = dst, *restrict o = dst + plane;
                const float *restrict tp = tmp;
                for (float *e_end = e + Wq; e < e_end; tp += 2) {
                    *e++ = tp[0];
                    *o++ = tp[1];
                }
            } else if (sw == 1) {   /* zero-inserted source (input gradients): scatter */
                const int step = g->iw_step;
                for (int j = 0; j < Wq; ++j) dst[j] = 0.0f;
                int u0 = ember_div_ceil(-g->pl, step), u1 = ember_div_floor(Wq - 1 - g->pl, step);
                if (u0 < 0) u0 = 0;
                if (u1 > g->W - 1) u1 = g->W - 1;
                for (int u = u0; u <= u1; ++u) dst[u * step + g->pl] = src[u];
            } else {
                for (int qc = 0; qc < sw; ++qc)
                    for (int j = 0; j < Wq; ++j) {
                        int u = j * sw + qc - g->pl;
                        int ok = u >= 0 && u % g->iw_step == 0 && u / g->iw_step < g->W;
                        dst[qc * plane + j] = ok ? src[u / g->iw_step] : 0.0f;
                    }
            }
        }
    }
}

static inline const float *ember_dw_tap(const ember_dw_geom *g, const float *buf, int t)
{
    return buf + g->tap[t];
}

static void ember_dw_taps3(float *restrict out, long n, float bv, const float *restrict w,
                           const float *restrict p0, const float *restrict p1,
                           const float *restrict p2, const float *restrict p3,
                           const float *restrict p4, const float *restrict p5,
                           const float *restrict p6, const float *restrict p7,
                           const float *restrict p8)
{
    const float w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3], w4 = w[4], w5 = w[5], w6 = w[6],
                w7 = w[7], w8 = w[8];
    for (long f = 0; f < n; ++f)
        out[f] = bv + w0 * p0[f] + w1 * p1[f] + w2 * p2[f] + w3 * p3[f] + w4 * p4[f]
                 + w5 * p5[f] + w6 * p6[f] + w7 * p7[f] + w8 * p8[f];
}

static void ember_dw_taps_add(float *restrict out, long n, int k, const float *wv,
                              const float *const *p)
{
    /* out += Σ_t wv[t]·p[t][f] for up to 5 taps per pass */
    if (k == 5) {
        const float a = wv[0], b = wv[1], c = wv[2], d = wv[3], e = wv[4];
        const float *restrict p0 = p[0], *restrict p1 = p[1], *restrict p2 = p[2],
                    *restrict p3 = p[3], *restrict p4 = p[4];
        for (long f = 0; f < n; ++f)
            out[f] += a * p0[f] + b * p1[f] + c * p2[f] + d * p3[f] + e * p4[f];
    } else if (k == 4) {
        const float a = wv[0], b = wv[1], c = wv[2], d = wv[3];
        const float *restrict p0 = p[0], *restrict p1 = p[1], *restrict p2 = p[2],
                    *restrict p3 = p[3];
        for (long f = 0; f < n; ++f) out[f] += a * p0[f] + b * p1[f] + c * p2[f] + d * p3[f];
    } else if (k == 3) {
        const float a = wv[0], b = wv[1], c = wv[2];
        const float *restrict p0 = p[0], *restrict p1 = p[1], *restrict p2 = p[2];
        for (long f = 0; f < n; ++f) out[f] += a * p0[f] + b * p1[f] + c * p2[f];
    } else if (k == 2) {
        const float a = wv[0], b = wv[1];
        const float *restrict p0 = p[0], *restrict p1 = p[1];
        for (long f = 0; f < n; ++f) out[f] += a * p0[f] + b * p1[f];
    } else if (k == 1) {
        const float a = wv[0];
        const float *restrict p0 = p[0];
        for (long f = 0; f < n; ++f) out[f] += a * p0[f];
    }
}

/* flat[f] = bv + Σ_taps w[kh][kw]·tap(kh, kw)[f] for f < (OH − 1)·Wq + OW; buf is packed. */
static void ember_dw_correlate(const ember_dw_geom *g, const float *buf, const float *w,
                               float bv, float *restrict flat)
{
    long n = (long)(g->OH - 1) * g->Wq + g->OW;
    if (g->KH == 3 && g->KW == 3) {
        const float *p[9];
        for (int t = 0; t < 9; ++t) p[t] = ember_dw_tap(g, buf, t);
        ember_dw_taps3(flat, n, bv, w, p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8]);
        return;
    }
    for (long f = 0; f < n; ++f) flat[f] = bv;
    const float *p[5];
    float wv[5];
    int k = 0, taps = g->KH * g->KW;
    for (int t = 0; t < taps; ++t) {
        p[k] = ember_dw_tap(g, buf, t);
        wv[k] = w[t];
        if (++k == 5 || t == taps - 1) {
            ember_dw_taps_add(flat, n, k, wv, p);
            k = 0;
        }
    }
}

/* Forward: y (OH × OW) = act(bias + depthwise correlation of x with w). Returns 0 when the
 * activation still has to be applied (a code without a vector form). */
static EMBER_NO_LIBCALLS int ember_dw_forward_plane(const ember_dw_geom *g, const float *x,
                                                    const float *w, float bv, float *restrict y,
                                                    float *buf, int act, float a, float b)
{
    float *restrict flat = ember_dw_flat(g, buf);
    ember_dw_pack(g, x, buf);
    ember_dw_correlate(g, buf, w, bv, flat);
    int done = ember_act_row_vec(flat, (long)(g->OH - 1) * g->Wq + g->OW, act, a, b);
    for (int oh = 0; oh < g->OH; ++oh) {
        float *restrict yrow = y + (long)oh * g->OW;
        const float *restrict frow = flat + (long)oh * g->Wq;
        for (int j = 0; j < g->OW; ++j) yrow[j] = frow[j];
    }
    return done;
}

/* dX (H × W) of one plane; g from ember_dw_input_grad_geom. */
static void ember_dw_input_grad_plane(const ember_dw_geom *g, const float *dy, const float *w,
                                      float *restrict dx, float *buf)
{
    int taps = g->KH * g->KW;
    float *flat = ember_dw_flat(g, buf);
    float *wf = flat + (long)g->OH * g->Wq;
    for (int t = 0; t < taps; ++t) wf[t] = w[taps - 1 - t];
    ember_dw_pack(g, dy, buf);
    ember_dw_correlate(g, buf, wf, 0.0f, flat);
    for (int oh = 0; oh < g->OH; ++oh)
        memcpy(dx + (long)oh * g->OW, flat + (long)oh * g->Wq, sizeof(float) * g->OW);
}

/* Σ_f a[f]·b[f] in the level's float lanes, flushed into a double every 512 terms. */
static double ember_dw_dot(const float *restrict a, const float *restrict b, long n)
{
    double total = 0.0;
    const float *end = a + n;
    while (a < end) {
        const float *stop = end - a > 512 ? a + 512 : end;
        ember_vf lanes = {0};
        for (; a + EMBER_VW <= stop; a += EMBER_VW, b += EMBER_VW)
            lanes += ember_vload(a) * ember_vload(b);
        float tail = 0.0f;
        for (; a < stop; ++a, ++b) tail += *a * *b;
        for (int l = 0; l < EMBER_VW; ++l) total += lanes[l];
        total += tail;
    }
    return total;
}

/* acc[t] += Σ_f d[f]·(buf + tap[t])[f] for the 9 taps of a 3×3 kernel in one pass over d:
 * nine independent accumulators, so the FMAs are not serialised on one register. */
static void ember_dw_dot9(const float *restrict d, const float *restrict buf,
                          const long *tap, long n, double *acc)
{
    const float *restrict p0 = buf + tap[0], *restrict p1 = buf + tap[1],
                *restrict p2 = buf + tap[2], *restrict p3 = buf + tap[3],
                *restrict p4 = buf + tap[4], *restrict p5 = buf + tap[5],
                *restrict p6 = buf + tap[6], *restrict p7 = buf + tap[7],
                *restrict p8 = buf + tap[8];
    long f = 0;
    while (f < n) {
        long stop = n - f > 512 ? f + 512 : n;
        ember_vf s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0}, s4 = {0}, s5 = {0}, s6 = {0},
                 s7 = {0}, s8 = {0};
        for (; f + EMBER_VW <= stop; f += EMBER_VW) {
            ember_vf v = ember_vload(d + f);
            s0 += v * ember_vload(p0 + f);
            s1 += v * ember_vload(p1 + f);
            s2 += v * ember_vload(p2 + f);
            s3 += v * ember_vload(p3 + f);
            s4 += v * ember_vload(p4 + f);
            s5 += v * ember_vload(p5 + f);
            s6 += v * ember_vload(p6 + f);
            s7 += v * ember_vload(p7 + f);
            s8 += v * ember_vload(p8 + f);
        }
        for (; f < stop; ++f) {
            float v = d[f];
            s0[0] += v * p0[f]; s1[0] += v * p1[f]; s2[0] += v * p2[f];
            s3[0] += v * p3[f]; s4[0] += v * p4[f]; s5[0] += v * p5[f];
            s6[0] += v * p6[f]; s7[0] += v * p7[f]; s8[0] += v * p8[f];
        }
        for (int l = 0; l < EMBER_VW; ++l) {
            acc[0] += s0[l]; acc[1] += s1[l]; acc[2] += s2[l];
            acc[3] += s3[l]; acc[4] += s4[l]; acc[5] += s5[l];
            acc[6] += s6[l]; acc[7] += s7[l]; acc[8] += s8[l];
        }
    }
}

/* acc[kh·KW + kw] += Σ_(oh, ow) dY[oh, ow]·X[oh·sh − pt + kh·dh, ow·sw − pl + kw·dw] for one
 * plane; g is the forward geometry. */
static void ember_dw_weight_grad_plane(const ember_dw_geom *g, const float *x, const float *dy,
                                       double *acc, float *buf)
{
    float *flat = ember_dw_flat(g, buf);
    long n = (long)(g->OH - 1) * g->Wq + g->OW;
    ember_dw_pack(g, x, buf);
    for (int oh = 0; oh < g->OH; ++oh) {   /* dY at pitch Wq, zeros in the thrown-away columns */
        float *row = flat + (long)oh * g->Wq;
        memcpy(row, dy + (long)oh * g->OW, sizeof(float) * g->OW);
        for (int j = g->OW; j < g->Wq; ++j) row[j] = 0.0f;
    }
    if (g->KH * g->KW == 9) {
        ember_dw_dot9(flat, buf, g->tap, n, acc);
        return;
    }
    for (int t = 0; t < g->KH * g->KW; ++t)
        acc[t] += ember_dw_dot(flat, ember_dw_tap(g, buf, t), n);
}

/* ---- small planes: a channel group at a time, channel-interleaved ------------------------------
 * A 7×7 or 14×14 plane is too small for the flat loop above to leave its per-plane overhead
 * (row copies, loop prologues, remainders) behind. Here G = EMBER_DW_GROUP channels are packed
 * side by side — padded pixel (r, c) of channel k at P[(r·Wp + c)·G + k] — so that one vector
 * holds a pixel of all G, every tap of every stride is one vector FMA with that tap's G
 * weights, and no loop has a remainder. Four output pixels are computed at once (independent
 * FMA chains). Packing and unpacking transpose T × T tiles (T pixels of T channels). */
#define G EMBER_DW_GROUP
#define T EMBER_DW_TILE
#define EMBER_DWV(p) (*(const ember_dwv *)(p))
#define EMBER_SHUF(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)

#if T == 8
/* r[0..8) rows of an 8 × 8 tile -> its columns (unpack, shuffle, then swap 128-bit halves: the
 * AVX2 sequence, which AVX-512 keeps in ymm registers) */
static inline void ember_dw_transpose(ember_dwt *r)
{
    ember_dwt t0 = EMBER_SHUF(r[0], r[1], 0, 8, 1, 9, 4, 12, 5, 13);
    ember_dwt t1 = EMBER_SHUF(r[0], r[1], 2, 10, 3, 11, 6, 14, 7, 15);
    ember_dwt t2 = EMBER_SHUF(r[2], r[3], 0, 8, 1, 9, 4, 12, 5, 13);
    ember_dwt t3 = EMBER_SHUF(r[2], r[3], 2, 10, 3, 11, 6, 14, 7, 15);
    ember_dwt t4 = EMBER_SHUF(r[4], r[5], 0, 8, 1, 9, 4, 12, 5, 13);
    ember_dwt t5 = EMBER_SHUF(r[4], r[5], 2, 10, 3, 11, 6, 14, 7, 15);
    ember_dwt t6 = EMBER_SHUF(r[6], r[7], 0, 8, 1, 9, 4, 12, 5, 13);
    ember_dwt t7 = EMBER_SHUF(r[6], r[7], 2, 10, 3, 11, 6, 14, 7, 15);
    ember_dwt u0 = EMBER_SHUF(t0, t2, 0, 1, 8, 9, 4, 5, 12, 13);
    ember_dwt u1 = EMBER_SHUF(t0, t2, 2, 3, 10, 11, 6, 7, 14, 15);
    ember_dwt u2 = EMBER_SHUF(t1, t3, 0, 1, 8, 9, 4, 5, 12, 13);
    ember_dwt u3 = EMBER_SHUF(t1, t3, 2, 3, 10, 11, 6, 7, 14, 15);
    ember_dwt u4 = EMBER_SHUF(t4, t6, 0, 1, 8, 9, 4, 5, 12, 13);
    ember_dwt u5 = EMBER_SHUF(t4, t6, 2, 3, 10, 11, 6, 7, 14, 15);
    ember_dwt u6 = EMBER_SHUF(t5, t7, 0, 1, 8, 9, 4, 5, 12, 13);
    ember_dwt u7 = EMBER_SHUF(t5, t7, 2, 3, 10, 11, 6, 7, 14, 15);
    r[0] = EMBER_SHUF(u0, u4, 0, 1, 2, 3, 8, 9, 10, 11);
    r[1] = EMBER_SHUF(u1, u5, 0, 1, 2, 3, 8, 9, 10, 11);
    r[2] = EMBER_SHUF(u2, u6, 0, 1, 2, 3, 8, 9, 10, 11);
    r[3] = EMBER_SHUF(u3, u7, 0, 1, 2, 3, 8, 9, 10, 11);
    r[4] = EMBER_SHUF(u0, u4, 4, 5, 6, 7, 12, 13, 14, 15);
    r[5] = EMBER_SHUF(u1, u5, 4, 5, 6, 7, 12, 13, 14, 15);
    r[6] = EMBER_SHUF(u2, u6, 4, 5, 6, 7, 12, 13, 14, 15);
    r[7] = EMBER_SHUF(u3, u7, 4, 5, 6, 7, 12, 13, 14, 15);
}
#else
/* r[0..4) rows of a 4 × 4 tile -> its columns (SSE's unpack and move-half pairs) */
static inline void ember_dw_transpose(ember_dwt *r)
{
    ember_dwt t0 = EMBER_SHUF(r[0], r[1], 0, 4, 1, 5), t1 = EMBER_SHUF(r[0], r[1], 2, 6, 3, 7);
    ember_dwt t2 = EMBER_SHUF(r[2], r[3], 0, 4, 1, 5), t3 = EMBER_SHUF(r[2], r[3], 2, 6, 3, 7);
    r[0] = EMBER_SHUF(t0, t2, 0, 1, 4, 5);
    r[1] = EMBER_SHUF(t0, t2, 2, 3, 6, 7);
    r[2] = EMBER_SHUF(t1, t3, 0, 1, 4, 5);
    r[3] = EMBER_SHUF(t1, t3, 2, 3, 6, 7);
}
#endif
#undef EMBER_SHUF

/* dst + j·dst_pitch [k] = src + k·src_pitch [j] for j, k < T: one tile transposed */
static inline void ember_dw_tile(const float *src, long src_pitch, float *dst, long dst_pitch)
{
    ember_dwt v[T];
    for (int k = 0; k < T; ++k) v[k] = *(const ember_dwt *)(src + k * src_pitch);
    ember_dw_transpose(v);
    for (int j = 0; j < T; ++j) *(ember_dwt *)(dst + j * dst_pitch) = v[j];
}

/* dst[p·G + k] = src[k·plane + p] for p < n (n >= T) and k < nfull (a multiple of T): planar
 * to interleaved, a tile at a time, the last tile of a run overlapping the one before. */
static inline void ember_dw_interleave_tiles(const float *src, long plane, long n, int nfull,
                                             float *dst)
{
    for (int h = 0; h < nfull; h += T)
        for (long p = 0, last = 0; !last; p += T) {
            if (p + T >= n) {
                p = n - T;
                last = 1;
            }
            ember_dw_tile(src + h * plane + p, plane, dst + p * G + h, G);
        }
}

/* dst[k·plane + p] = src[p·G + k] for p < n (n >= T) and k < nfull (a multiple of T): the
 * inverse of ember_dw_interleave_tiles. */
static inline void ember_dw_deinterleave_tiles(const float *src, long n, int nfull, float *dst,
                                               long plane)
{
    for (int h = 0; h < nfull; h += T)
        for (long p = 0, last = 0; !last; p += T) {
            if (p + T >= n) {
                p = n - T;
                last = 1;
            }
            ember_dw_tile(src + p * G + h, G, dst + h * plane + p, plane);
        }
}

/* Channels of a group of nch that runs of n pixels move by tiles; the rest go one float at a
 * time. */
static inline int ember_dw_tile_channels(long n, int nch)
{
    return n >= T ? nch / T * T : 0;
}

/* WG[t·G + k] = tap t's weight of channel k < nch (0 for the missing channels); channel k's
 * taps are w[k·taps, (k + 1)·taps). */
static inline EMBER_NO_LIBCALLS void ember_dw8_weights(const float *w, int taps, int nch,
                                                       float *restrict WG)
{
    for (int t = 0; t < taps; ++t)
        for (int k = 0; k < G; ++k) WG[t * G + k] = k < nch ? w[(long)k * taps + t] : 0.0f;
}

/* off[t] = where tap t = kh·KW + kw reads in the packed window, relative to its output pixel's
 * first tap; KH·KW <= 64. */
static inline void ember_dw8_tap_offsets(const ember_dw_geom *g, long *off)
{
    const int Wp = ember_dw_wp(g);
    for (int t = 0; t < g->KH * g->KW; ++t)
        off[t] = ((long)(t / g->KW) * g->dh * Wp + (long)(t % g->KW) * g->dw) * G;
}

/* D[p·G + k] = pixel p of channel k < nch, for npx pixels of planes plane apart (0 for the
 * missing channels): planar to channel-interleaved. */
static inline EMBER_NO_LIBCALLS void ember_dw8_interleave(const float *src, long plane, long npx,
                                                          int nch, float *restrict D)
{
    const int nblock = ember_dw_tile_channels(npx, nch);
    ember_dw_interleave_tiles(src, plane, npx, nblock, D);
    if (nblock < G)
        for (long p = 0; p < npx; ++p)
            for (int k = nblock; k < G; ++k) D[p * G + k] = k < nch ? src[k * plane + p] : 0.0f;
}

/* P[(r·Wp + c)·G + k] = padded pixel (r, c) of channel k < nch (zeros elsewhere and for the
 * missing channels); channel planes lie plane_in apart. */
static EMBER_NO_LIBCALLS void ember_dw8_pack(const ember_dw_geom *g, const float *x,
                                             long plane_in, int nch, float *restrict P)
{
    const int Hp = ember_dw_hp(g), Wp = ember_dw_wp(g);
    for (long i = 0; i < (long)G * Hp * Wp; ++i) P[i] = 0.0f;
    if (g->ih_step != 1 || g->iw_step != 1) {   /* zero-inserted source (input gradients) */
        for (int k = 0; k < nch; ++k)
            for (int i = 0; i < g->H; ++i) {
                int r = i * g->ih_step + g->pt;
                if (r < 0 || r >= Hp) continue;
                const float *src = x + k * plane_in + (long)i * g->W;
                float *prow = P + (long)r * Wp * G + k;
                for (int j = 0; j < g->W; ++j) {
                    int c = j * g->iw_step + g->pl;
                    if (c >= 0 && c < Wp) prow[(long)c * G] = src[j];
                }
            }
        return;
    }
    int r0 = g->pt > 0 ? g->pt : 0, c0 = g->pl > 0 ? g->pl : 0;
    int r1 = g->H + g->pt < Hp ? g->H + g->pt : Hp, c1 = g->W + g->pl < Wp ? g->W + g->pl : Wp;
    if (c1 <= c0) return;
    const int nblock = ember_dw_tile_channels(c1 - c0, nch);
    for (int r = r0; r < r1; ++r) {
        const float *src = x + (long)(r - g->pt) * g->W + (c0 - g->pl);   /* padded (r, c0) */
        float *prow = P + ((long)r * Wp + c0) * G;
        ember_dw_interleave_tiles(src, plane_in, c1 - c0, nblock, prow);
        for (int k = nblock; k < nch; ++k)
            for (int c = 0; c < c1 - c0; ++c) prow[(long)c * G + k] = src[k * plane_in + c];
    }
}

/* Rows [a, b) of the padded window of ember_dw8_pack (no zero insertion), at P (row r at
 * (r − a)·Wp·G): only the padding is zeroed, not the whole buffer, and lanes past nch are left
 * as they are (their outputs are never read). */
static EMBER_NO_LIBCALLS void ember_dw8_pack_rows(const ember_dw_geom *g, const float *x,
                                                  long plane_in, int nch, float *restrict P,
                                                  int a, int b)
{
    const int Wp = ember_dw_wp(g);
    int r0 = g->pt > 0 ? g->pt : 0, c0 = g->pl > 0 ? g->pl : 0;
    int r1 = g->H + g->pt < ember_dw_hp(g) ? g->H + g->pt : ember_dw_hp(g);
    int c1 = g->W + g->pl < Wp ? g->W + g->pl : Wp;
    if (c1 < c0) c1 = c0;
    const int nblock = ember_dw_tile_channels(c1 - c0, nch);
    for (int r = a; r < b; ++r) {
        float *prow = P + (long)(r - a) * Wp * G;
        if (r < r0 || r >= r1 || c1 <= c0) {
            for (long i = 0; i < (long)Wp * G; ++i) prow[i] = 0.0f;
            continue;
        }
        for (long i = 0; i < (long)c0 * G; ++i) prow[i] = 0.0f;
        for (long i = (long)c1 * G; i < (long)Wp * G; ++i) prow[i] = 0.0f;
        const float *src = x + (long)(r - g->pt) * g->W + (c0 - g->pl);   /* padded (r, c0) */
        float *dst = prow + (long)c0 * G;
        ember_dw_interleave_tiles(src, plane_in, c1 - c0, nblock, dst);
        for (int k = nblock; k < nch; ++k)
            for (int c = 0; c < c1 - c0; ++c) dst[(long)c * G + k] = src[k * plane_in + c];
    }
}

/* y[k] (k < nch, planes plane_out apart) = act(bias[k] + depthwise correlation of x[k]) for
 * up to G channels whose planes lie plane_in apart; w holds their KH·KW weights each
 * (KH·KW <= 64). Returns 0 when the activation still has to be applied (a code without a
 * vector form). */
static EMBER_NO_LIBCALLS int ember_dw8_forward(const ember_dw_geom *g, const float *x,
                                               long plane_in, const float *w, const float *bias,
                                               float *y, long plane_out, int nch, float *buf,
                                               int act, float act_a, float act_b)
{
    const int Hp = ember_dw_hp(g), Wp = ember_dw_wp(g), taps = g->KH * g->KW;
    const long npx = (long)g->OH * g->OW;
    float *P = buf;
    float *out = P + (long)G * Hp * Wp;
    float *WG = out + (long)G * (npx + 4);
    ember_dw8_weights(w, taps, nch, WG);
    long off[64];   /* callers keep KH·KW <= 64 */
    ember_dw8_tap_offsets(g, off);
    ember_dwv bvec;
    for (int k = 0; k < G; ++k) bvec[k] = bias && k < nch ? bias[k] : 0.0f;
    const long step = (long)G * g->sw;
    /* Bands of output rows, their window rows packed just before (a band's window and outputs
     * ~96 KB, in L2: MobileNetV2's 112×112 planes packed whole were ~1 MB a group, zeroed and
     * written out to L3 before the taps read them back); zero-inserted windows (input
     * gradients) whole, as one band. */
    const int banded = g->ih_step == 1 && g->iw_step == 1;
    const long band_in_rows = banded ? 24576L / ((long)Wp * G) : Hp;
    int band = banded ? (int)((band_in_rows - (long)(g->KH - 1) * g->dh - 1) / g->sh + 1) : g->OH;
    if (band < 1) band = 1;
    if (!banded) ember_dw8_pack(g, x, plane_in, nch, P);
    int done = 1;
    for (int oh0 = 0; oh0 < g->OH; oh0 += band) {
    const int oh1 = oh0 + band < g->OH ? oh0 + band : g->OH;
    const int a = banded ? oh0 * g->sh : 0;   /* the band's first window row */
    if (banded)
        ember_dw8_pack_rows(g, x, plane_in, nch, P, a,
                            (oh1 - 1) * g->sh + (g->KH - 1) * g->dh + 1);
    float *obase = banded ? out : out + (long)oh0 * g->OW * G;
    for (int oh = oh0; oh < oh1; ++oh) {
        const float *row = P + (long)(oh * g->sh - a) * Wp * G;
        float *o = obase + (long)(oh - oh0) * g->OW * G;
        long ow = 0;
        if (taps == 9) {
            const ember_dwv w0 = EMBER_DWV(WG), w1 = EMBER_DWV(WG + G), w2 = EMBER_DWV(WG + 2 * G),
                            w3 = EMBER_DWV(WG + 3 * G), w4 = EMBER_DWV(WG + 4 * G),
                            w5 = EMBER_DWV(WG + 5 * G), w6 = EMBER_DWV(WG + 6 * G),
                            w7 = EMBER_DWV(WG + 7 * G), w8 = EMBER_DWV(WG + 8 * G);
/* the row's pixels, four at a time (four independent FMA chains), PX(ACC, BASE) one pixel's taps */
#define EMBER_DW8_ROW(PX)                                                                    \
    for (; ow + 4 <= g->OW; ow += 4) {                                                        \
        const float *base = row + ow * step;                                                  \
        ember_dwv a0, a1, a2, a3;                                                             \
        PX(a0, base);                                                                         \
        PX(a1, base + step);                                                                  \
        PX(a2, base + 2 * step);                                                              \
        PX(a3, base + 3 * step);                                                              \
        *(ember_dwv *)(o + ow * G) = a0;                                                      \
        *(ember_dwv *)(o + ow * G + G) = a1;                                                  \
        *(ember_dwv *)(o + ow * G + 2 * G) = a2;                                              \
        *(ember_dwv *)(o + ow * G + 3 * G) = a3;                                              \
    }                                                                                         \
    for (; ow < g->OW; ++ow) {                                                                \
        ember_dwv a0;                                                                         \
        PX(a0, row + ow * step);                                                              \
        *(ember_dwv *)(o + ow * G) = a0;                                                      \
    }
            if (g->KW == 3 && g->dh == 1 && g->dw == 1) {
                /* undilated: three row pointers and constant column offsets (nine offsets in
                 * registers spilled to the stack, reloaded for every pixel) */
                const long rs = (long)Wp * G;
#define EMBER_DW8_PX3(ACC, B)                                                                \
    ACC = bvec + w0 * EMBER_DWV(B) + w1 * EMBER_DWV((B) + G) + w2 * EMBER_DWV((B) + 2 * G)      \
          + w3 * EMBER_DWV((B) + rs) + w4 * EMBER_DWV((B) + rs + G)                             \
          + w5 * EMBER_DWV((B) + rs + 2 * G) + w6 * EMBER_DWV((B) + 2 * rs)                     \
          + w7 * EMBER_DWV((B) + 2 * rs + G) + w8 * EMBER_DWV((B) + 2 * rs + 2 * G)
                EMBER_DW8_ROW(EMBER_DW8_PX3)
#undef EMBER_DW8_PX3
            } else {
                const long o0 = off[0], o1 = off[1], o2 = off[2], o3 = off[3], o4 = off[4],
                           o5 = off[5], o6 = off[6], o7 = off[7], o8 = off[8];
#define EMBER_DW8_PX(ACC, BASE)                                                              \
    ACC = bvec + w0 * EMBER_DWV((BASE) + o0) + w1 * EMBER_DWV((BASE) + o1)                    \
          + w2 * EMBER_DWV((BASE) + o2) + w3 * EMBER_DWV((BASE) + o3)                         \
          + w4 * EMBER_DWV((BASE) + o4) + w5 * EMBER_DWV((BASE) + o5)                         \
          + w6 * EMBER_DWV((BASE) + o6) + w7 * EMBER_DWV((BASE) + o7)                         \
          + w8 * EMBER_DWV((BASE) + o8)
                EMBER_DW8_ROW(EMBER_DW8_PX)
#undef EMBER_DW8_PX
            }
#undef EMBER_DW8_ROW
        } else {
            for (; ow + 4 <= g->OW; ow += 4) {   /* four pixels: four independent FMA chains */
                const float *base = row + ow * step;
                ember_dwv a0 = bvec, a1 = bvec, a2 = bvec, a3 = bvec;
                for (int t = 0; t < taps; ++t) {
                    const ember_dwv wt = EMBER_DWV(WG + t * G);
                    const float *q = base + off[t];
                    a0 += wt * EMBER_DWV(q);
                    a1 += wt * EMBER_DWV(q + step);
                    a2 += wt * EMBER_DWV(q + 2 * step);
                    a3 += wt * EMBER_DWV(q + 3 * step);
                }
                *(ember_dwv *)(o + ow * G) = a0;
                *(ember_dwv *)(o + ow * G + G) = a1;
                *(ember_dwv *)(o + ow * G + 2 * G) = a2;
                *(ember_dwv *)(o + ow * G + 3 * G) = a3;
            }
            for (; ow < g->OW; ++ow) {
                const float *base = row + ow * step;
                ember_dwv acc = bvec;
                for (int t = 0; t < taps; ++t)
                    acc += EMBER_DWV(WG + t * G) * EMBER_DWV(base + off[t]);
                *(ember_dwv *)(o + ow * G) = acc;
            }
        }
    }
    /* the band's outputs back to their planes */
    const long bpx = (long)(oh1 - oh0) * g->OW;
    done = ember_act_row_vec(obase, G * bpx, act, act_a, act_b);
    const int nblock = ember_dw_tile_channels(bpx, nch);
    float *yb = y + (long)oh0 * g->OW;
    ember_dw_deinterleave_tiles(obase, bpx, nblock, yb, plane_out);
    for (int k = nblock; k < nch; ++k) {
        float *restrict yk = yb + k * plane_out;
        const float *restrict ok = obase + k;
        for (long p = 0; p < bpx; ++p) yk[p] = ok[p * G];
    }
    }
    (void)npx;
    return done;
}

/* acc[t·G + k] += Σ_(oh, ow) dY_k[oh, ow]·X_k[oh·sh − pt + kh·dh, ow·sw − pl + kw·dw] for up to
 * G channels (t = kh·KW + kw): the input packed channel-interleaved as in the forward, dY
 * transposed to match, one vector FMA per pixel and tap, float partial sums per output row
 * added into the double accumulators. g is the forward geometry; KH·KW <= 64. */
static EMBER_NO_LIBCALLS void ember_dw8_weight_grad(const ember_dw_geom *g, const float *x,
                                                    long plane_in, const float *dy,
                                                    long plane_out, int nch, float *buf,
                                                    double *acc)
{
    const int Hp = ember_dw_hp(g), Wp = ember_dw_wp(g), taps = g->KH * g->KW;
    const long npx = (long)g->OH * g->OW;
    float *P = buf;
    float *D = P + (long)G * Hp * Wp;
    ember_dw8_pack(g, x, plane_in, nch, P);
    ember_dw8_interleave(dy, plane_out, npx, nch, D);
    long off[64];
    ember_dw8_tap_offsets(g, off);
    const long step = (long)G * g->sw;
    ember_dwv s[64];
    for (int oh = 0; oh < g->OH; ++oh) {
        const float *row = P + (long)oh * g->sh * Wp * G;
        const float *d = D + (long)oh * g->OW * G;
        if (taps == 9) {
            ember_dwv s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0}, s4 = {0}, s5 = {0}, s6 = {0},
                      s7 = {0}, s8 = {0};
            const long o0 = off[0], o1 = off[1], o2 = off[2], o3 = off[3], o4 = off[4],
                       o5 = off[5], o6 = off[6], o7 = off[7], o8 = off[8];
            for (long ow = 0; ow < g->OW; ++ow) {
                const ember_dwv v = EMBER_DWV(d + ow * G);
                const float *b = row + ow * step;
                s0 += v * EMBER_DWV(b + o0);
                s1 += v * EMBER_DWV(b + o1);
                s2 += v * EMBER_DWV(b + o2);
                s3 += v * EMBER_DWV(b + o3);
                s4 += v * EMBER_DWV(b + o4);
                s5 += v * EMBER_DWV(b + o5);
                s6 += v * EMBER_DWV(b + o6);
                s7 += v * EMBER_DWV(b + o7);
                s8 += v * EMBER_DWV(b + o8);
            }
            s[0] = s0; s[1] = s1; s[2] = s2; s[3] = s3; s[4] = s4; s[5] = s5; s[6] = s6;
            s[7] = s7; s[8] = s8;
        } else {
            for (int t = 0; t < taps; ++t) {
                ember_dwv a = {0};
                const float *b = row + off[t];
                for (long ow = 0; ow < g->OW; ++ow)
                    a += EMBER_DWV(d + ow * G) * EMBER_DWV(b + ow * step);
                s[t] = a;
            }
        }
        for (int t = 0; t < taps; ++t)
            for (int k = 0; k < G; ++k) acc[t * G + k] += s[t][k];
    }
}

/* dX of up to G channels of a strided depthwise conv, by scatter: every dY pixel adds W[t]·dY
 * (one vector FMA per tap, G channels wide) into a padded, channel-interleaved accumulator,
 * which is then unpacked into dX. Unlike the zero-inserted correlation this does no work for
 * the stride's holes. Its buffer is ember_dw_group_buffer_floats; g is the forward geometry;
 * KH·KW <= 64. */
static EMBER_NO_LIBCALLS void ember_dw8_input_grad_scatter(const ember_dw_geom *g,
                                                           const float *dy, long plane_out,
                                                           const float *w, float *dx,
                                                           long plane_in, int nch, float *buf)
{
    const int Hp = ember_dw_hp(g), Wp = ember_dw_wp(g), taps = g->KH * g->KW;
    const long npx = (long)g->OH * g->OW;
    float *A = buf;
    float *D = A + (long)G * Hp * Wp;
    float *WG = D + (long)G * (npx + 4);
    for (long i = 0; i < (long)G * Hp * Wp; ++i) A[i] = 0.0f;
    ember_dw8_weights(w, taps, nch, WG);
    ember_dw8_interleave(dy, plane_out, npx, nch, D);
    long off[64];
    ember_dw8_tap_offsets(g, off);
    const long step = (long)G * g->sw;
    for (int oh = 0; oh < g->OH; ++oh) {
        float *row = A + (long)oh * g->sh * Wp * G;
        const float *d = D + (long)oh * g->OW * G;
        for (long ow = 0; ow < g->OW; ++ow) {
            const ember_dwv v = EMBER_DWV(d + ow * G);
            float *b = row + ow * step;
            for (int t = 0; t < taps; ++t)
                *(ember_dwv *)(b + off[t]) += EMBER_DWV(WG + t * G) * v;
        }
    }
    /* dX[k][ih][iw] = A[((ih + pt)·Wp + iw + pl)·G + k] inside the window, else 0 */
    for (int ih = 0; ih < g->H; ++ih) {
        int r = ih + g->pt;
        int iw_hi = Wp - g->pl;            /* columns past the window are 0 */
        if (iw_hi > g->W) iw_hi = g->W;
        if (r < 0 || r >= Hp) iw_hi = 0;
        int iw_lo = g->pl < 0 ? -g->pl : 0;
        if (iw_lo > iw_hi) iw_lo = iw_hi;
        const float *arow = A + ((long)r * Wp + g->pl) * G;
        float *dxrow = dx + (long)ih * g->W;
        for (int k = 0; k < nch; ++k) {
            float *dxr = dxrow + k * plane_in;
            for (int iw = 0; iw < iw_lo; ++iw) dxr[iw] = 0.0f;
            for (int iw = iw_hi; iw < g->W; ++iw) dxr[iw] = 0.0f;
        }
        const int nblock = ember_dw_tile_channels(iw_hi - iw_lo, nch);
        ember_dw_deinterleave_tiles(arow + (long)iw_lo * G, iw_hi - iw_lo, nblock, dxrow + iw_lo,
                               plane_in);
        for (int k = nblock; k < nch; ++k) {
            float *dxr = dxrow + k * plane_in;
            for (int j = iw_lo; j < iw_hi; ++j) dxr[j] = arow[(long)j * G + k];
        }
    }
}
#undef EMBER_DWV
#undef T
#undef G

static const struct ember_depthwise_kernels ember_depthwise_here = {
    .group = EMBER_DW_GROUP,
    .forward_plane = ember_dw_forward_plane,
    .input_grad_plane = ember_dw_input_grad_plane,
    .weight_grad_plane = ember_dw_weight_grad_plane,
    .group_forward = ember_dw8_forward,
    .group_weight_grad = ember_dw8_weight_grad,
    .group_input_grad_scatter = ember_dw8_input_grad_scatter,
};
