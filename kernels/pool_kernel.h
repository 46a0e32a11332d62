/* Template (compiled once per instruction set, see simd_instance.h): max and average pooling of
 * whole NCHW planes, forward and gradient, and global pooling of rows. Reached through the pool
 * table of simd.h (ember_max_pool_plane, …); pool.pyx and pool_grad.pyx check the arguments and
 * hand each thread whole planes.
 *
 * The max kernels select, never branch: on real data "is this tap bigger" is a coin toss, and a
 * mispredicted branch per tap costs more than the tap, so running maxima (and the gradient's
 * argmax) are updated with masks or blends. A NaN beats any number; where a position is chosen
 * (the gradient) the first NaN stays. Window arithmetic in 64 bits (window.h); the plane kernels
 * copy the geometry into locals first (the build has -fno-strict-aliasing: every store into a
 * plane would otherwise make the compiler read g's fields again). */
#include "window.h"

/* max that lets a NaN through, as a select. The quiet comparison builtins never trap, so the
 * compiler may evaluate them unconditionally (no branch). */
static inline float ember_nan_max(float m, float v)
{
    return (__builtin_isgreater(v, m) | __builtin_isunordered(v, v)) ? v : m;
}

/* EMBER_VW ints: the masks the vector comparisons give, and the gradient's tap indices */
typedef int ember_pool_vi __attribute__((vector_size(EMBER_VW * 4)));

/* the lanes of two vectors at p and p + EMBER_VW − 1 that hold p[0], p[2], …, p[2·(EMBER_VW−1)]:
 * the second load ends on the last tap, so nothing past it is read */
#if EMBER_VW == 16
#define EMBER_STRIDE2_LANES 0, 2, 4, 6, 8, 10, 12, 14, 17, 19, 21, 23, 25, 27, 29, 31
#elif EMBER_VW == 8
#define EMBER_STRIDE2_LANES 0, 2, 4, 6, 9, 11, 13, 15
#else
#define EMBER_STRIDE2_LANES 0, 2, 5, 7
#endif

/* the EMBER_VW taps p[l·stride], l < EMBER_VW */
static inline ember_vf ember_strided_load(const float *p, long stride)
{
    if (stride == 1) return ember_vload(p);
    if (stride == 2)
        return __builtin_shufflevector(ember_vload(p), ember_vload(p + EMBER_VW - 1),
                                       EMBER_STRIDE2_LANES);
    ember_vf v;
    for (int l = 0; l < EMBER_VW; ++l) v[l] = p[l * stride];
    return v;
}

/* ember_nan_max lane by lane, as a blend */
static inline ember_vf ember_nan_max_v(ember_vf m, ember_vf v)
{
    const ember_pool_vi take = (v > m) | (v != v);
    return (ember_vf)(((ember_pool_vi)v & take) | ((ember_pool_vi)m & ~take));
}

/* Up to EMBER_POOL_BLOCK vectors of interior output columns at once, their windows' taps in
 * row-major order: y[c·EMBER_VW + l] = max (or sum) of the taps of output column l of vector c,
 * whose window starts at column w0 + (c·EMBER_VW + l)·sw of rows h0 + i·dh, i in [ilo, ihi).
 * Several vectors per pass because a lane's taps form one dependency chain: independent chains
 * keep the vector units busy. n (≤ EMBER_POOL_BLOCK) is a constant where these are called, so
 * the accumulators stay in registers. */
#define EMBER_POOL_BLOCK 4

static inline void ember_max_columns(const float *x, float *y, long W, long h0, long dh,
                                     long ilo, long ihi, long kw, long dw, long w0, long sw,
                                     int n)
{
    ember_vf m[EMBER_POOL_BLOCK];
    for (int c = 0; c < n; ++c) m[c] = ember_vsplat(-INFINITY);
    for (long i = ilo; i < ihi; ++i) {
        const float *row = x + ((h0 + i * dh) * W + w0);
        for (long j = 0; j < kw; ++j)
            for (int c = 0; c < n; ++c)
                m[c] = ember_nan_max_v(m[c],
                                       ember_strided_load(row + j * dw + c * EMBER_VW * sw, sw));
    }
    for (int c = 0; c < n; ++c) ember_vstore(y + c * EMBER_VW, m[c]);
}

static inline void ember_sum_columns(const float *x, float *y, long W, long h0, long dh,
                                     long ilo, long ihi, long kw, long dw, long w0, long sw,
                                     int n)
{
    ember_vf s[EMBER_POOL_BLOCK];
    for (int c = 0; c < n; ++c) s[c] = ember_vsplat(0.0f);
    for (long i = ilo; i < ihi; ++i) {
        const float *row = x + ((h0 + i * dh) * W + w0);
        for (long j = 0; j < kw; ++j)
            for (int c = 0; c < n; ++c)
                s[c] += ember_strided_load(row + j * dw + c * EMBER_VW * sw, sw);
    }
    for (int c = 0; c < n; ++c) ember_vstore(y + c * EMBER_VW, s[c]);
}

/* The max of one window (output column ow of the row whose taps are rows ilo..ihi), in-image
 * taps only: the border columns' scalar loop. */
static float ember_max_window(const float *x, const ember_pool_window *g, long h0, long ilo,
                              long ihi, long ow)
{
    const long w0 = ow * g->sw - g->pl;
    long jlo, jhi;
    ember_span_inside(w0, g->dw, g->kw, 0, g->W, &jlo, &jhi);
    float m = -INFINITY;
    for (long i = ilo; i < ihi; ++i) {
        const float *row = x + (h0 + i * g->dh) * g->W + w0;
        for (long j = jlo; j < jhi; ++j) m = ember_nan_max(m, row[j * g->dw]);
    }
    return m;
}

/* Max pooling of one plane (padded taps never win; an all-padding window gives -inf): the
 * interior output columns [olo, ohi) of a row EMBER_VW at a time, each lane's maximum kept in a
 * register over the window's taps in row-major order; window by window for the others. */
static void ember_max_pool_plane_here(const float *x, float *y, const ember_pool_window *g)
{
    const long H = g->H, W = g->W, OH = g->OH, OW = g->OW;
    const long kh = g->kh, kw = g->kw, sh = g->sh, sw = g->sw, dh = g->dh, dw = g->dw;
    const long pt = g->pt, pl = g->pl;
    long olo, ohi;
    ember_interior_columns(OW, W, kw, sw, pl, dw, &olo, &ohi);
    for (long oh = 0; oh < OH; ++oh) {
        const long h0 = oh * sh - pt;
        long ilo, ihi;
        ember_span_inside(h0, dh, kh, 0, H, &ilo, &ihi);
        float *yrow = y + oh * OW;
        long ow = 0;
        for (; ow < olo; ++ow) yrow[ow] = ember_max_window(x, g, h0, ilo, ihi, ow);
        if (ohi - olo >= EMBER_VW) {
            for (; ow + EMBER_POOL_BLOCK * EMBER_VW <= ohi; ow += EMBER_POOL_BLOCK * EMBER_VW)
                ember_max_columns(x, yrow + ow, W, h0, dh, ilo, ihi, kw, dw, ow * sw - pl, sw,
                                  EMBER_POOL_BLOCK);
            for (; ow < ohi; ow += EMBER_VW) {
                if (ow + EMBER_VW > ohi) ow = ohi - EMBER_VW; /* overlaps: the same values */
                ember_max_columns(x, yrow + ow, W, h0, dh, ilo, ihi, kw, dw, ow * sw - pl, sw, 1);
            }
        }
        for (; ow < OW; ++ow) yrow[ow] = ember_max_window(x, g, h0, ilo, ihi, ow);
    }
}

/* The divisor of an average window whose in-image taps are rows [ilo, ihi) and columns
 * [jlo, jhi): with count_include_pad the taps inside [−pt, H+pb) × [−pl, W+pr) (rows_all of
 * them in each column), else the in-image ones (the ceil_mode overhang never counts). */
static long ember_avg_count(const ember_pool_window *g, long rows_in, long rows_all, long w0,
                            long jlo, long jhi)
{
    if (!g->count_include_pad) return rows_in * (jhi - jlo);
    long qlo, qhi;
    ember_span_inside(w0, g->dw, g->kw, -g->pl, g->W + g->pr, &qlo, &qhi);
    return rows_all * (qhi - qlo);
}

/* The average of one window (output column ow of a row whose in-image taps are rows
 * [ilo, ihi)): the border columns' scalar loop, taps in row-major order. */
static float ember_avg_window(const float *x, const ember_pool_window *g, long h0, long ilo,
                              long ihi, long rows_all, long ow)
{
    const long w0 = ow * g->sw - g->pl;
    long jlo, jhi;
    ember_span_inside(w0, g->dw, g->kw, 0, g->W, &jlo, &jhi);
    float s = 0.0f;
    for (long i = ilo; i < ihi; ++i) {
        const float *row = x + (h0 + i * g->dh) * g->W + w0;
        for (long j = jlo; j < jhi; ++j) s += row[j * g->dw];
    }
    const long count = ember_avg_count(g, ihi - ilo, rows_all, w0, jlo, jhi);
    return count > 0 ? s / (float)count : 0.0f;
}

/* Average pooling of one plane: the interior columns EMBER_VW at a time, each lane summing its
 * window's taps in the row-major order the scalar loop adds them in, then divided by the count. */
static void ember_avg_pool_plane_here(const float *x, float *y, const ember_pool_window *g)
{
    const long H = g->H, W = g->W, OH = g->OH, OW = g->OW;
    const long kh = g->kh, kw = g->kw, sh = g->sh, sw = g->sw, dh = g->dh, dw = g->dw;
    const long pt = g->pt, pl = g->pl, pb = g->pb;
    long olo, ohi;
    ember_interior_columns(OW, W, kw, sw, pl, dw, &olo, &ohi);
    for (long oh = 0; oh < OH; ++oh) {
        const long h0 = oh * sh - pt;
        long ilo, ihi, plo, phi;
        ember_span_inside(h0, dh, kh, 0, H, &ilo, &ihi);
        ember_span_inside(h0, dh, kh, -pt, H + pb, &plo, &phi);
        float *yrow = y + oh * OW;
        const long count = (g->count_include_pad ? phi - plo : ihi - ilo) * kw; /* interior */
        long ow = 0;
        for (; ow < olo; ++ow) yrow[ow] = ember_avg_window(x, g, h0, ilo, ihi, phi - plo, ow);
        if (ohi - olo >= EMBER_VW && count > 0) {
            for (; ow + EMBER_POOL_BLOCK * EMBER_VW <= ohi; ow += EMBER_POOL_BLOCK * EMBER_VW)
                ember_sum_columns(x, yrow + ow, W, h0, dh, ilo, ihi, kw, dw, ow * sw - pl, sw,
                                  EMBER_POOL_BLOCK);
            for (; ow < ohi; ow += EMBER_VW) {
                if (ow + EMBER_VW > ohi) ow = ohi - EMBER_VW; /* the last one overlaps */
                ember_sum_columns(x, yrow + ow, W, h0, dh, ilo, ihi, kw, dw, ow * sw - pl, sw, 1);
            }
            for (long c = olo; c < ohi; ++c) yrow[c] /= (float)count;
        }
        for (; ow < OW; ++ow) yrow[ow] = ember_avg_window(x, g, h0, ilo, ihi, phi - plo, ow);
    }
}

/* max of p[0:L], L ≥ 1, a NaN winning: EMBER_VW running maxima, then across the lanes */
static float ember_row_max(const float *p, long L)
{
    long i = 0;
    float m = p[0];
    if (L >= EMBER_VW) {
        ember_vf acc = ember_vload(p);
        for (i = EMBER_VW; i + EMBER_VW <= L; i += EMBER_VW)
            acc = ember_nan_max_v(acc, ember_vload(p + i));
        m = acc[0];
        for (int l = 1; l < EMBER_VW; ++l) m = ember_nan_max(m, acc[l]);
    }
    for (; i < L; ++i) m = ember_nan_max(m, p[i]);
    return m;
}

/* Σ p[i] in double: each half-register of floats widened into a register of doubles, two
 * accumulators to cover the add latency */
typedef float ember_pool_vhalf __attribute__((vector_size(EMBER_VW * 2), aligned(4)));
typedef double ember_pool_vd __attribute__((vector_size(EMBER_VW * 4), aligned(8)));

static double ember_row_sum_double(const float *p, long L)
{
    ember_pool_vd acc0 = {0}, acc1 = {0};
    long i = 0;
    for (; i + EMBER_VW <= L; i += EMBER_VW) {
        acc0 += __builtin_convertvector(*(const ember_pool_vhalf *)(p + i), ember_pool_vd);
        acc1 += __builtin_convertvector(*(const ember_pool_vhalf *)(p + i + EMBER_VW / 2),
                                        ember_pool_vd);
    }
    acc0 += acc1;
    double s = 0.0;
    for (int l = 0; l < EMBER_VW / 2; ++l) s += acc0[l];
    for (; i < L; ++i) s += p[i];
    return s;
}

/* y[r] = the max (NaN wins) or the mean (summed in double) of each of `rows` rows of L ≥ 1
 * floats, in EMBER_VW lanes. */
static void ember_global_pool_rows_here(const float *x, float *y, long rows, long L, int is_max)
{
    for (long r = 0; r < rows; ++r) {
        const float *row = x + r * L;
        y[r] = is_max ? ember_row_max(row, L) : (float)(ember_row_sum_double(row, L) / L);
    }
}

/* 1 when v replaces the running maximum m: v > m, or v is the first NaN. */
static inline int ember_takes(float v, float m)
{
    return __builtin_isgreater(v, m) | (__builtin_isunordered(v, v) & !__builtin_isunordered(m, m));
}

/* Offset (in x) of the first maximum of the window whose taps are rows h0 + i*dh, i in
 * [ilo, ihi), columns w0 + j*dw, j in [jlo, jhi), in row-major order; a NaN beats any number
 * and the first NaN stays. The window must hold at least one tap. */
static inline long ember_window_argmax(const float *x, long W, long h0, long dh, long ilo,
                                       long ihi, long w0, long dw, long jlo, long jhi)
{
    long best_at = (h0 + ilo * dh) * W + w0 + jlo * dw;
    float best = x[best_at];
    for (long i = ilo; i < ihi; ++i) {
        const long row = (h0 + i * dh) * W + w0;
        for (long j = jlo; j < jhi; ++j) {
            const long at = row + j * dw;
            const float v = x[at];
            const long keep_at = -(long)ember_takes(v, best); /* all ones when v takes over */
            uint32_t vb, bb;
            memcpy(&vb, &v, 4);
            memcpy(&bb, &best, 4);
            bb = (vb & (uint32_t)keep_at) | (bb & ~(uint32_t)keep_at);
            memcpy(&best, &bb, 4);
            best_at = (at & keep_at) | (best_at & ~keep_at);
        }
    }
    return best_at;
}

/* The common 2x2, stride-2 window over n output columns whose windows lie inside rows r0, r1:
 * dY goes to the first maximum of (r0[2j], r0[2j+1], r1[2j], r1[2j+1]) — the first NaN when
 * there is one — and the window's other three gradients are written as 0 (windows do not
 * overlap, so nothing accumulates). Written as masks over the window's maximum so that the
 * compiler vectorises it. The index is a long: with Python's -fwrapv an int 2·j may wrap, and
 * GCC then gives up on the strided accesses. */
static void ember_max2x2_grad_row(const float *restrict r0, const float *restrict r1,
                                  const float *restrict g, float *restrict d0,
                                  float *restrict d1, long n)
{
    for (long j = 0; j < n; ++j) {
        const float a = r0[2 * j], b = r0[2 * j + 1], c = r1[2 * j], d = r1[2 * j + 1];
        const float m = ember_nan_max(ember_nan_max(ember_nan_max(a, b), c), d);
        /* "is the maximum": equal to it, or a NaN (then m is a NaN too) */
        const int ia = (a == m) | __builtin_isunordered(a, a);
        const int ib = (!ia) & ((b == m) | __builtin_isunordered(b, b));
        const int ic = (!ia) & (!ib) & ((c == m) | __builtin_isunordered(c, c));
        const int id = (!ia) & (!ib) & (!ic);
        const float gj = g[j];
        d0[2 * j] = ia ? gj : 0.0f;
        d0[2 * j + 1] = ib ? gj : 0.0f;
        d1[2 * j] = ic ? gj : 0.0f;
        d1[2 * j + 1] = id ? gj : 0.0f;
    }
}

/* The max gradient of EMBER_VW interior output columns from ow (every tap of rows [ilo, ihi)
 * in the image): each lane finds its window's first maximum as ember_window_argmax does, keeping
 * the winning tap's row and column, then the lanes' dY are added into dx in column order (the
 * order of the scalar loop: overlapping windows accumulate the same way). */
static inline void ember_max_grad_columns(const float *x, float *dx, const float *dyrow, long W,
                                          long h0, long dh, long ilo, long ihi, long kw, long dw,
                                          long ow, long sw, long pl)
{
    ember_vf best = ember_strided_load(x + ((h0 + ilo * dh) * W + ow * sw - pl), sw);
    ember_pool_vi best_i = {0}, best_j = {0};
    for (long i = ilo; i < ihi; ++i) {
        const float *row = x + ((h0 + i * dh) * W + ow * sw - pl);
        const ember_pool_vi tap_i = (ember_pool_vi){0} + (int)(i - ilo);
        for (long j = 0; j < kw; ++j) {
            const ember_vf v = ember_strided_load(row + j * dw, sw);
            const ember_pool_vi take = (v > best) | ((v != v) & (best == best)); /* ember_takes */
            best = (ember_vf)(((ember_pool_vi)v & take) | ((ember_pool_vi)best & ~take));
            best_i = (tap_i & take) | (best_i & ~take);
            best_j = (((ember_pool_vi){0} + (int)j) & take) | (best_j & ~take);
        }
    }
    for (int l = 0; l < EMBER_VW; ++l)
        dx[(h0 + (ilo + best_i[l]) * dh) * W + (ow + l) * sw - pl + best_j[l] * dw] +=
            dyrow[ow + l];
}

/* dx of one plane's max pooling: each window's dY goes to its first maximum in row-major window
 * order (PyTorch's tie rule); a NaN beats any number. Padding is −inf: it never wins, so only
 * in-image taps are visited; a window of padding only gives nothing. */
static void ember_max_pool_grad_plane_here(const float *dy, const float *x, float *dx,
                                           const ember_pool_window *g)
{
    const long H = g->H, W = g->W, OH = g->OH, OW = g->OW;
    const long kh = g->kh, kw = g->kw, sh = g->sh, sw = g->sw, dh = g->dh, dw = g->dw;
    const long pt = g->pt, pl = g->pl;
    const int pair_rows = kh == 2 && kw == 2 && sh == 2 && sw == 2 && dh == 1 && dw == 1;
    const int vector_taps = kh <= INT32_MAX && kw <= INT32_MAX; /* a tap's row, column: int lanes */
    long olo, ohi;
    memset(dx, 0, sizeof(float) * H * W);
    ember_interior_columns(OW, W, kw, sw, pl, dw, &olo, &ohi);
    for (long oh = 0; oh < OH; ++oh) {
        const long h0 = oh * sh - pt;
        long ilo, ihi;
        ember_span_inside(h0, dh, kh, 0, H, &ilo, &ihi);
        const float *dyrow = dy + oh * OW;
        const int pairs = pair_rows && ilo == 0 && ihi == 2 && ohi > olo;
        if (pairs) {
            const long at = h0 * W + olo * 2 - pl;
            ember_max2x2_grad_row(x + at, x + at + W, dyrow + olo, dx + at, dx + at + W,
                                  ohi - olo);
        }
        for (long ow = 0; ow < OW; ++ow) {
            if (ow == olo && vector_taps && !pairs && ilo < ihi)
                for (; ow + EMBER_VW <= ohi; ow += EMBER_VW)
                    ember_max_grad_columns(x, dx, dyrow, W, h0, dh, ilo, ihi, kw, dw, ow, sw, pl);
            if (ow >= OW) break;
            const int interior = ow >= olo && ow < ohi;
            if (pairs && interior) continue; /* done by the 2x2 row above */
            const long w0 = ow * sw - pl;
            long jlo = 0, jhi = kw;
            if (!interior) ember_span_inside(w0, dw, kw, 0, W, &jlo, &jhi);
            if (ilo >= ihi || jlo >= jhi) continue;
            dx[ember_window_argmax(x, W, h0, dh, ilo, ihi, w0, dw, jlo, jhi)] += dyrow[ow];
        }
    }
}

/* dx of one plane's average pooling: each window spreads dY/count over its in-image taps, count
 * the forward's divisor (ember_avg_count). */
static void ember_avg_pool_grad_plane_here(const float *dy, float *dx, const ember_pool_window *g)
{
    const long H = g->H, W = g->W, OH = g->OH, OW = g->OW;
    const long kh = g->kh, kw = g->kw, sh = g->sh, sw = g->sw, dh = g->dh, dw = g->dw;
    const long pt = g->pt, pl = g->pl, pb = g->pb;
    long olo, ohi;
    memset(dx, 0, sizeof(float) * H * W);
    ember_interior_columns(OW, W, kw, sw, pl, dw, &olo, &ohi);
    for (long oh = 0; oh < OH; ++oh) {
        const long h0 = oh * sh - pt;
        long ilo, ihi, plo, phi;
        ember_span_inside(h0, dh, kh, 0, H, &ilo, &ihi);
        ember_span_inside(h0, dh, kh, -pt, H + pb, &plo, &phi);
        const long interior_count = (g->count_include_pad ? phi - plo : ihi - ilo) * kw;
        for (long ow = 0; ow < OW; ++ow) {
            const long w0 = ow * sw - pl;
            long jlo = 0, jhi = kw, count = interior_count;
            if (ow < olo || ow >= ohi) {
                ember_span_inside(w0, dw, kw, 0, W, &jlo, &jhi);
                count = ember_avg_count(g, ihi - ilo, phi - plo, w0, jlo, jhi);
            }
            if (count <= 0) continue;
            const float share = dy[oh * OW + ow] / (float)count;
            for (long i = ilo; i < ihi; ++i) {
                float *row = dx + (h0 + i * dh) * W + w0;
                for (long j = jlo; j < jhi; ++j) row[j * dw] += share;
            }
        }
    }
}

static const struct ember_pool_kernels ember_pool_here = {
    .max_plane = ember_max_pool_plane_here,
    .avg_plane = ember_avg_pool_plane_here,
    .global_rows = ember_global_pool_rows_here,
    .max_grad_plane = ember_max_pool_grad_plane_here,
    .avg_grad_plane = ember_avg_pool_grad_plane_here,
};
