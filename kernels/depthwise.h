/* Depthwise convolution planes (forward, input gradient, weight gradient), in C so that
 * `restrict` lets the compiler vectorise the tap loops (AVX2/FMA with -march=native).
 *
 * Why the packing: a plane's input window is first copied into a zero-padded buffer split into
 * sh·sw *phase planes* — padded pixel (r, c) goes to phase plane (r mod sh, c mod sw) at
 * (r div sh, c div sw) — so that every tap of every stride reads its phase plane at unit stride,
 * and padding costs nothing in the inner loop. All phase planes share one row pitch Wq, which
 * makes the output a *flat* 1-D correlation: out[f], f = oh·Wq + ow, reads phase plane + f +
 * tap offset. The Wq − OW columns past the right edge of each output row are computed and
 * thrown away; in exchange a 7×7 plane is one 61-float loop instead of seven 7-float ones.
 *
 * Input dilation (ih_step, iw_step > 1: source pixel (i, j) sits at padded (i·ih_step + pt,
 * j·iw_step + pl), zeros between) turns the input gradient of a strided conv into a stride-1
 * correlation of the zero-inserted dY with the flipped kernel.
 */
#ifndef EMBER_DEPTHWISE_H
#define EMBER_DEPTHWISE_H

#include <stdlib.h>
#include <string.h>

#include "activation.h"

/* A per-thread plane buffer of n floats, 64-byte aligned (the 8-channel path does 32-byte
 * vector read-modify-writes: misaligned ones would split cache lines and miss store
 * forwarding); NULL when out of memory. Release with free(). */
static inline float *ember_dw_alloc(long n)
{
    void *p = NULL;
    if (posix_memalign(&p, 64, sizeof(float) * (size_t)(n > 0 ? n : 1)) != 0) return NULL;
    return (float *)p;
}

typedef struct {
    int H, W;              /* source plane */
    int OH, OW;            /* output plane */
    int KH, KW, sh, sw, dh, dw;
    int pt, pl;            /* padded row/column of source pixel (0, 0); may be negative */
    int ih_step, iw_step;  /* input dilation (1: none) */
    int Hq, Wq;            /* phase plane size (ember_dw_init) */
    const long *tap;       /* KH·KW offsets of each tap into the buffer (ember_dw_set_taps) */
} ember_dw_geom;

static inline void ember_dw_init(ember_dw_geom *g)
{
    g->Hq = g->OH + ((g->KH - 1) * g->dh) / g->sh;
    g->Wq = g->OW + ((g->KW - 1) * g->dw) / g->sw;
}

/* Floats of per-thread buffer one plane needs: the phase planes, the flat output row block and
 * a flipped copy of the kernel and one padded row (stride-2 packing). */
static inline long ember_dw_buffer_floats(const ember_dw_geom *g)
{
    return (long)g->sh * g->sw * g->Hq * g->Wq + (long)g->OH * g->Wq + (long)g->KH * g->KW
           + 2L * g->Wq + 16;
}

static inline float *ember_dw_flat(const ember_dw_geom *g, float *buf)
{
    return buf + (long)g->sh * g->sw * g->Hq * g->Wq;
}

/* ceil(a / b) and floor(a / b) for b > 0 and any sign of a */
static inline int ember_div_ceil(int a, int b) { return a >= 0 ? (a + b - 1) / b : -((-a) / b); }
static inline int ember_div_floor(int a, int b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

/* Row copies written as loops the compiler must not turn into memcpy/memset calls: the rows of
 * small planes are a few floats long and a library call per row would cost more than the copy. */
#if defined(__GNUC__) && !defined(__clang__)
#define EMBER_NO_LIBCALLS __attribute__((optimize("no-tree-loop-distribute-patterns")))
#else
#define EMBER_NO_LIBCALLS
#endif

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

/* Where each tap (kh, kw) reads: its phase plane, shifted by the tap's offset inside it.
 * Computed once per call (integer divisions per plane would cost more than a small plane). */
static inline void ember_dw_set_taps(ember_dw_geom *g, long *tap)
{
    for (int kh = 0; kh < g->KH; ++kh)
        for (int kw = 0; kw < g->KW; ++kw) {
            int a = kh * g->dh, b = kw * g->dw;
            tap[kh * g->KW + kw] = ((long)(a % g->sh) * g->sw + b % g->sw) * g->Hq * g->Wq
                                   + (long)(a / g->sh) * g->Wq + b / g->sw;
        }
    g->tap = tap;
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

/* Geometry of the input gradient of a depthwise conv as a stride-1 correlation: dY (OH × OW),
 * zero-inserted by the stride, padded by (K − 1)·dil − pad, correlated with the flipped kernel,
 * gives dX (H × W). `fwd` is the forward geometry. */
static inline ember_dw_geom ember_dw_input_grad_geom(const ember_dw_geom *fwd)
{
    ember_dw_geom g;
    g.H = fwd->OH; g.W = fwd->OW;
    g.OH = fwd->H; g.OW = fwd->W;
    g.KH = fwd->KH; g.KW = fwd->KW; g.sh = 1; g.sw = 1; g.dh = fwd->dh; g.dw = fwd->dw;
    g.pt = (fwd->KH - 1) * fwd->dh - fwd->pt;
    g.pl = (fwd->KW - 1) * fwd->dw - fwd->pl;
    g.ih_step = fwd->sh; g.iw_step = fwd->sw;
    g.tap = 0;
    ember_dw_init(&g);
    return g;
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

/* Σ_f a[f]·b[f] in eight float lanes (GCC vector extension: one AVX register, or two SSE
 * ones), flushed into a double every 512 terms. */
typedef float ember_v8f __attribute__((vector_size(32), aligned(4)));

static double ember_dw_dot(const float *restrict a, const float *restrict b, long n)
{
    double total = 0.0;
    const float *end = a + n;
    while (a < end) {
        const float *stop = end - a > 512 ? a + 512 : end;
        ember_v8f lanes = {0, 0, 0, 0, 0, 0, 0, 0};
        for (; a + 8 <= stop; a += 8, b += 8)
            lanes += *(const ember_v8f *)a * *(const ember_v8f *)b;
        float tail = 0.0f;
        for (; a < stop; ++a, ++b) tail += *a * *b;
        for (int l = 0; l < 8; ++l) total += lanes[l];
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
        ember_v8f s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0}, s4 = {0}, s5 = {0}, s6 = {0},
                  s7 = {0}, s8 = {0};
        for (; f + 8 <= stop; f += 8) {
            ember_v8f v = *(const ember_v8f *)(d + f);
            s0 += v * *(const ember_v8f *)(p0 + f);
            s1 += v * *(const ember_v8f *)(p1 + f);
            s2 += v * *(const ember_v8f *)(p2 + f);
            s3 += v * *(const ember_v8f *)(p3 + f);
            s4 += v * *(const ember_v8f *)(p4 + f);
            s5 += v * *(const ember_v8f *)(p5 + f);
            s6 += v * *(const ember_v8f *)(p6 + f);
            s7 += v * *(const ember_v8f *)(p7 + f);
            s8 += v * *(const ember_v8f *)(p8 + f);
        }
        for (; f < stop; ++f) {
            float v = d[f];
            s0[0] += v * p0[f]; s1[0] += v * p1[f]; s2[0] += v * p2[f];
            s3[0] += v * p3[f]; s4[0] += v * p4[f]; s5[0] += v * p5[f];
            s6[0] += v * p6[f]; s7[0] += v * p7[f]; s8[0] += v * p8[f];
        }
        for (int l = 0; l < 8; ++l) {
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

/* ---- small planes: eight channels at a time, channel-interleaved ------------------------------
 * A 7×7 or 14×14 plane is too small for the flat loop above to leave its per-plane overhead
 * (row copies, loop prologues, remainders) behind. Here eight channels are packed side by side —
 * padded pixel (r, c) of channel k at P[(r·Wp + c)·8 + k] — so that one 8-float vector holds a
 * pixel of all eight, every tap of every stride is one vector FMA with that tap's eight weights,
 * and no loop has a remainder. Four output pixels are computed at once (independent FMA
 * chains). Packing and unpacking transpose 8×8 blocks (AVX2), scalar elsewhere. */

#if defined(__AVX2__)
#include <immintrin.h>
/* r[0..8) rows of an 8x8 float block -> its columns */
static inline void ember_tr8(__m256 *r)
{
    __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
    __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
    __m256 u0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
    __m256 u1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
    __m256 u2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
    __m256 u3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
    __m256 u4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0));
    __m256 u5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2));
    __m256 u6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0));
    __m256 u7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
    r[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
    r[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
    r[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
    r[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
    r[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
    r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
    r[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
    r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}
#endif

/* Padded window of one plane-group: rows/columns of the padded image that taps reach. */
static inline int ember_dw8_hp(const ember_dw_geom *g)
{
    return (g->OH - 1) * g->sh + (g->KH - 1) * g->dh + 1;
}

static inline int ember_dw8_wp(const ember_dw_geom *g)
{
    return (g->OW - 1) * g->sw + (g->KW - 1) * g->dw + 1;
}

static inline long ember_dw8_buffer_floats(const ember_dw_geom *g)
{
    return 8L * ember_dw8_hp(g) * ember_dw8_wp(g) + 8L * (g->OH * (long)g->OW + 4)
           + 8L * g->KH * g->KW + 16;
}

static inline long ember_dw8_grad_buffer_floats(const ember_dw_geom *g)
{
    return 8L * ember_dw8_hp(g) * ember_dw8_wp(g) + 8L * ((long)g->OH * g->OW + 4) + 16;
}

/* W8[t·8 + k] = tap t's weight of channel k < nch (0 for the missing channels); channel k's
 * taps are w[k·taps, (k + 1)·taps). */
static inline EMBER_NO_LIBCALLS void ember_dw8_weights(const float *w, int taps, int nch,
                                                       float *restrict W8)
{
    for (int t = 0; t < taps; ++t)
        for (int k = 0; k < 8; ++k) W8[t * 8 + k] = k < nch ? w[(long)k * taps + t] : 0.0f;
}

/* off[t] = where tap t = kh·KW + kw reads in the packed window, relative to its output pixel's
 * first tap; KH·KW <= 64. */
static inline void ember_dw8_tap_offsets(const ember_dw_geom *g, long *off)
{
    const int Wp = ember_dw8_wp(g);
    for (int t = 0; t < g->KH * g->KW; ++t)
        off[t] = ((long)(t / g->KW) * g->dh * Wp + (long)(t % g->KW) * g->dw) * 8;
}

/* D[p·8 + k] = pixel p of channel k < nch, for npx pixels of planes plane apart (0 for the
 * missing channels): planar to channel-interleaved. */
static inline EMBER_NO_LIBCALLS void ember_dw8_interleave(const float *src, long plane, long npx,
                                                          int nch, float *restrict D)
{
    long p0 = 0;
#if defined(__AVX2__)
    if (nch == 8 && npx >= 8)
        for (int done = 0; !done; p0 += 8) {
            if (p0 + 8 >= npx) {   /* the last block may overlap the one before */
                p0 = npx - 8;
                done = 1;
            }
            __m256 v[8];
            for (int k = 0; k < 8; ++k) v[k] = _mm256_loadu_ps(src + k * plane + p0);
            ember_tr8(v);
            for (int j = 0; j < 8; ++j) _mm256_storeu_ps(D + (p0 + j) * 8, v[j]);
        }
#endif
    for (long p = p0; p < npx; ++p)
        for (int k = 0; k < 8; ++k) D[p * 8 + k] = k < nch ? src[k * plane + p] : 0.0f;
}

/* P[(r·Wp + c)·8 + k] = padded pixel (r, c) of channel k < nch (zeros elsewhere and for the
 * missing channels); channel planes lie plane_in apart. */
static EMBER_NO_LIBCALLS void ember_dw8_pack(const ember_dw_geom *g, const float *x,
                                             long plane_in, int nch, float *restrict P)
{
    const int Hp = ember_dw8_hp(g), Wp = ember_dw8_wp(g);
    for (long i = 0; i < 8L * Hp * Wp; ++i) P[i] = 0.0f;
    if (g->ih_step != 1 || g->iw_step != 1) {   /* zero-inserted source (input gradients) */
        for (int k = 0; k < nch; ++k)
            for (int i = 0; i < g->H; ++i) {
                int r = i * g->ih_step + g->pt;
                if (r < 0 || r >= Hp) continue;
                const float *src = x + k * plane_in + (long)i * g->W;
                float *prow = P + (long)r * Wp * 8 + k;
                for (int j = 0; j < g->W; ++j) {
                    int c = j * g->iw_step + g->pl;
                    if (c >= 0 && c < Wp) prow[(long)c * 8] = src[j];
                }
            }
        return;
    }
    int r0 = g->pt > 0 ? g->pt : 0, c0 = g->pl > 0 ? g->pl : 0;
    int r1 = g->H + g->pt < Hp ? g->H + g->pt : Hp, c1 = g->W + g->pl < Wp ? g->W + g->pl : Wp;
    for (int r = r0; r < r1; ++r) {
        const long src_off = (long)(r - g->pt) * g->W - g->pl;
        float *prow = P + (long)r * Wp * 8;
        int c = c0;
#if defined(__AVX2__)
        if (nch == 8 && c1 - c0 >= 8)   /* eight columns of all eight channels: one 8x8 */
            for (int done = 0; !done; c += 8) {   /* transpose; the last block may overlap */
                if (c + 8 >= c1) {
                    c = c1 - 8;
                    done = 1;
                }
                __m256 v[8];
                for (int k = 0; k < 8; ++k) v[k] = _mm256_loadu_ps(x + k * plane_in + src_off + c);
                ember_tr8(v);
                for (int j = 0; j < 8; ++j) _mm256_storeu_ps(prow + (long)(c + j) * 8, v[j]);
            }
#endif
        for (int k = 0; k < nch; ++k) {
            const float *src = x + k * plane_in + src_off;
            for (int cc = c; cc < c1; ++cc) prow[cc * 8 + k] = src[cc];
        }
    }
}

/* y[k] (k < nch, planes plane_out apart) = act(bias[k] + depthwise correlation of x[k]) for
 * up to eight channels whose planes lie plane_in apart; w holds their KH·KW weights each
 * (KH·KW <= 64). Returns 0 when the activation still has to be applied (a code without a
 * vector form). */
static EMBER_NO_LIBCALLS int ember_dw8_forward(const ember_dw_geom *g, const float *x,
                                               long plane_in, const float *w, const float *bias,
                                               float *y, long plane_out, int nch, float *buf,
                                               int act, float a, float b)
{
    const int Hp = ember_dw8_hp(g), Wp = ember_dw8_wp(g), taps = g->KH * g->KW;
    const long npx = (long)g->OH * g->OW;
    float *P = buf;
    float *out = P + 8L * Hp * Wp;
    float *W8 = out + 8L * (npx + 4);
    ember_dw8_weights(w, taps, nch, W8);
    ember_dw8_pack(g, x, plane_in, nch, P);
    long off[64];   /* callers keep KH·KW <= 64 */
    ember_dw8_tap_offsets(g, off);
    ember_v8f bvec;
    for (int k = 0; k < 8; ++k) bvec[k] = bias && k < nch ? bias[k] : 0.0f;
    const long step = 8L * g->sw;
    for (int oh = 0; oh < g->OH; ++oh) {
        const float *row = P + (long)oh * g->sh * Wp * 8;
        float *o = out + (long)oh * g->OW * 8;
        int ow = 0;
        if (taps == 9) {
            const ember_v8f w0 = *(const ember_v8f *)(W8), w1 = *(const ember_v8f *)(W8 + 8),
                            w2 = *(const ember_v8f *)(W8 + 16), w3 = *(const ember_v8f *)(W8 + 24),
                            w4 = *(const ember_v8f *)(W8 + 32), w5 = *(const ember_v8f *)(W8 + 40),
                            w6 = *(const ember_v8f *)(W8 + 48), w7 = *(const ember_v8f *)(W8 + 56),
                            w8 = *(const ember_v8f *)(W8 + 64);
            const long o0 = off[0], o1 = off[1], o2 = off[2], o3 = off[3], o4 = off[4],
                       o5 = off[5], o6 = off[6], o7 = off[7], o8 = off[8];
#define EMBER_DW8_PX(ACC, BASE)                                                              \
    ACC = bvec + w0 * *(const ember_v8f *)((BASE) + o0) + w1 * *(const ember_v8f *)((BASE) + o1) \
          + w2 * *(const ember_v8f *)((BASE) + o2) + w3 * *(const ember_v8f *)((BASE) + o3)   \
          + w4 * *(const ember_v8f *)((BASE) + o4) + w5 * *(const ember_v8f *)((BASE) + o5)   \
          + w6 * *(const ember_v8f *)((BASE) + o6) + w7 * *(const ember_v8f *)((BASE) + o7)   \
          + w8 * *(const ember_v8f *)((BASE) + o8)
            for (; ow + 4 <= g->OW; ow += 4) {
                const float *base = row + ow * step;
                ember_v8f a0, a1, a2, a3;
                EMBER_DW8_PX(a0, base);
                EMBER_DW8_PX(a1, base + step);
                EMBER_DW8_PX(a2, base + 2 * step);
                EMBER_DW8_PX(a3, base + 3 * step);
                *(ember_v8f *)(o + ow * 8) = a0;
                *(ember_v8f *)(o + ow * 8 + 8) = a1;
                *(ember_v8f *)(o + ow * 8 + 16) = a2;
                *(ember_v8f *)(o + ow * 8 + 24) = a3;
            }
            for (; ow < g->OW; ++ow) {
                ember_v8f a0;
                EMBER_DW8_PX(a0, row + ow * step);
                *(ember_v8f *)(o + ow * 8) = a0;
            }
#undef EMBER_DW8_PX
        } else {
            for (; ow + 4 <= g->OW; ow += 4) {   /* four pixels: four independent FMA chains */
                const float *base = row + ow * step;
                ember_v8f a0 = bvec, a1 = bvec, a2 = bvec, a3 = bvec;
                for (int t = 0; t < taps; ++t) {
                    const ember_v8f wt = *(const ember_v8f *)(W8 + t * 8);
                    const float *q = base + off[t];
                    a0 += wt * *(const ember_v8f *)(q);
                    a1 += wt * *(const ember_v8f *)(q + step);
                    a2 += wt * *(const ember_v8f *)(q + 2 * step);
                    a3 += wt * *(const ember_v8f *)(q + 3 * step);
                }
                *(ember_v8f *)(o + ow * 8) = a0;
                *(ember_v8f *)(o + ow * 8 + 8) = a1;
                *(ember_v8f *)(o + ow * 8 + 16) = a2;
                *(ember_v8f *)(o + ow * 8 + 24) = a3;
            }
            for (; ow < g->OW; ++ow) {
                const float *base = row + ow * step;
                ember_v8f acc = bvec;
                for (int t = 0; t < taps; ++t)
                    acc += *(const ember_v8f *)(W8 + t * 8) * *(const ember_v8f *)(base + off[t]);
                *(ember_v8f *)(o + ow * 8) = acc;
            }
        }
    }
    int done = ember_act_row_vec(out, 8 * npx, act, a, b);
    long p0 = 0;
#if defined(__AVX2__)
    if (nch == 8 && npx >= 8)   /* eight pixels of all eight channels at once */
        for (int done = 0; !done; p0 += 8) {
            if (p0 + 8 >= npx) {   /* the last block may overlap the one before */
                p0 = npx - 8;
                done = 1;
            }
            __m256 v[8];
            for (int j = 0; j < 8; ++j) v[j] = _mm256_loadu_ps(out + (p0 + j) * 8);
            ember_tr8(v);
            for (int k = 0; k < 8; ++k) _mm256_storeu_ps(y + k * plane_out + p0, v[k]);
        }
#endif
    for (int k = 0; k < nch; ++k) {
        float *restrict yk = y + k * plane_out;
        const float *restrict ok = out + k;
        for (long p = p0; p < npx; ++p) yk[p] = ok[p * 8];
    }
    return done;
}

/* acc[t·8 + k] += Σ_(oh, ow) dY_k[oh, ow]·X_k[oh·sh − pt + kh·dh, ow·sw − pl + kw·dw] for up to
 * eight channels (t = kh·KW + kw): the input packed channel-interleaved as in the forward, dY
 * transposed to match, one vector FMA per pixel and tap, float partial sums per output row
 * added into the double accumulators. g is the forward geometry; KH·KW <= 64. */
static EMBER_NO_LIBCALLS void ember_dw8_weight_grad(const ember_dw_geom *g, const float *x,
                                                    long plane_in, const float *dy,
                                                    long plane_out, int nch, float *buf,
                                                    double *acc)
{
    const int Hp = ember_dw8_hp(g), Wp = ember_dw8_wp(g), taps = g->KH * g->KW;
    const long npx = (long)g->OH * g->OW;
    float *P = buf;
    float *D = P + 8L * Hp * Wp;
    ember_dw8_pack(g, x, plane_in, nch, P);
    ember_dw8_interleave(dy, plane_out, npx, nch, D);
    long off[64];
    ember_dw8_tap_offsets(g, off);
    const long step = 8L * g->sw;
    ember_v8f s[64];
    for (int oh = 0; oh < g->OH; ++oh) {
        const float *row = P + (long)oh * g->sh * Wp * 8;
        const float *d = D + (long)oh * g->OW * 8;
        if (taps == 9) {
            ember_v8f s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0}, s4 = {0}, s5 = {0}, s6 = {0},
                      s7 = {0}, s8 = {0};
            const long o0 = off[0], o1 = off[1], o2 = off[2], o3 = off[3], o4 = off[4],
                       o5 = off[5], o6 = off[6], o7 = off[7], o8 = off[8];
            for (int ow = 0; ow < g->OW; ++ow) {
                const ember_v8f v = *(const ember_v8f *)(d + ow * 8);
                const float *b = row + ow * step;
                s0 += v * *(const ember_v8f *)(b + o0);
                s1 += v * *(const ember_v8f *)(b + o1);
                s2 += v * *(const ember_v8f *)(b + o2);
                s3 += v * *(const ember_v8f *)(b + o3);
                s4 += v * *(const ember_v8f *)(b + o4);
                s5 += v * *(const ember_v8f *)(b + o5);
                s6 += v * *(const ember_v8f *)(b + o6);
                s7 += v * *(const ember_v8f *)(b + o7);
                s8 += v * *(const ember_v8f *)(b + o8);
            }
            s[0] = s0; s[1] = s1; s[2] = s2; s[3] = s3; s[4] = s4; s[5] = s5; s[6] = s6;
            s[7] = s7; s[8] = s8;
        } else {
            for (int t = 0; t < taps; ++t) {
                ember_v8f a = {0};
                const float *b = row + off[t];
                for (int ow = 0; ow < g->OW; ++ow)
                    a += *(const ember_v8f *)(d + ow * 8) * *(const ember_v8f *)(b + ow * step);
                s[t] = a;
            }
        }
        for (int t = 0; t < taps; ++t)
            for (int k = 0; k < 8; ++k) acc[t * 8 + k] += s[t][k];
    }
}


/* dX of up to eight channels of a strided depthwise conv, by scatter: every dY pixel adds
 * W[t]·dY (one vector FMA per tap, eight channels wide) into a padded, channel-interleaved
 * accumulator, which is then unpacked into dX. Unlike the zero-inserted correlation this does
 * no work for the stride's holes. Its buffer is ember_dw8_buffer_floats; g is the forward
 * geometry; KH·KW <= 64. */
static EMBER_NO_LIBCALLS void ember_dw8_input_grad_scatter(const ember_dw_geom *g,
                                                           const float *dy, long plane_out,
                                                           const float *w, float *dx,
                                                           long plane_in, int nch, float *buf)
{
    const int Hp = ember_dw8_hp(g), Wp = ember_dw8_wp(g), taps = g->KH * g->KW;
    const long npx = (long)g->OH * g->OW;
    float *A = buf;
    float *D = A + 8L * Hp * Wp;
    float *W8 = D + 8L * (npx + 4);
    for (long i = 0; i < 8L * Hp * Wp; ++i) A[i] = 0.0f;
    ember_dw8_weights(w, taps, nch, W8);
    ember_dw8_interleave(dy, plane_out, npx, nch, D);
    long off[64];
    ember_dw8_tap_offsets(g, off);
    const long step = 8L * g->sw;
    for (int oh = 0; oh < g->OH; ++oh) {
        float *row = A + (long)oh * g->sh * Wp * 8;
        const float *d = D + (long)oh * g->OW * 8;
        for (int ow = 0; ow < g->OW; ++ow) {
            const ember_v8f v = *(const ember_v8f *)(d + ow * 8);
            float *b = row + ow * step;
            for (int t = 0; t < taps; ++t)
                *(ember_v8f *)(b + off[t]) += *(const ember_v8f *)(W8 + t * 8) * v;
        }
    }
    /* dX[k][ih][iw] = A[((ih + pt)·Wp + iw + pl)·8 + k] inside the window, else 0 */
    for (int ih = 0; ih < g->H; ++ih) {
        int r = ih + g->pt;
        int iw_hi = Wp - g->pl;            /* columns past the window are 0 */
        if (iw_hi > g->W) iw_hi = g->W;
        if (r < 0 || r >= Hp) iw_hi = 0;
        int iw_lo = g->pl < 0 ? -g->pl : 0;
        if (iw_lo > iw_hi) iw_lo = iw_hi;
        const float *arow = A + ((long)r * Wp + g->pl) * 8;
        for (int k = 0; k < nch; ++k) {
            float *dxr = dx + k * plane_in + (long)ih * g->W;
            for (int iw = 0; iw < iw_lo; ++iw) dxr[iw] = 0.0f;
            for (int iw = iw_hi; iw < g->W; ++iw) dxr[iw] = 0.0f;
        }
        int iw = iw_lo;
#if defined(__AVX2__)
        if (nch == 8 && iw_hi - iw_lo >= 8)
            for (int done = 0; !done; iw += 8) {
                if (iw + 8 >= iw_hi) {   /* the last block may overlap the one before */
                    iw = iw_hi - 8;
                    done = 1;
                }
                __m256 v[8];
                for (int j = 0; j < 8; ++j) v[j] = _mm256_loadu_ps(arow + (long)(iw + j) * 8);
                ember_tr8(v);
                for (int k = 0; k < 8; ++k)
                    _mm256_storeu_ps(dx + k * plane_in + (long)ih * g->W + iw, v[k]);
            }
#endif
        for (int k = 0; k < nch; ++k) {
            float *dxr = dx + k * plane_in + (long)ih * g->W;
            for (int j = iw; j < iw_hi; ++j) dxr[j] = arow[(long)j * 8 + k];
        }
    }
}

#endif
