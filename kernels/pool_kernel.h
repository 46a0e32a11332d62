/* Template (compiled once per instruction set, see simd_instance.h): max and average pooling of
 * NCHW planes, forward and gradient, and global pooling of rows. Reached through the pool table
 * of simd.h (ember_max_pool_planes, …); pool.pyx and pool_grad.pyx check the arguments and hand
 * each thread one call on its share of whole planes, so that small planes cost no call each and
 * a kernel knows how far past a row it may read.
 *
 * Three paths, forward and gradient alike: 2×2 stride-2 windows inside the plane (LeNet's, VGG's)
 * from pairs of rows; dilation-1 windows separably (each input row's horizontal maxima or sums
 * once, then the window's rows: ResNet's 3×3/2 stem, 3×3/1); the rest (dilation) directly, the
 * interior columns in vectors and the edges window by window. Rows narrower than a vector are
 * still pooled in whole vectors: the spare lanes read and write past the row, never past the
 * call's planes. Window arithmetic is found once per call (ember_pool_axis), not per output.
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

/* ---- the taps of every output along one axis, found once per call ------------------------- */

/* outputs at each end of an axis whose in-image taps are kept (more come from huge pads only,
 * and those compute theirs) */
#define EMBER_POOL_EDGE 32

/* One axis of the window (rows or columns): output o's taps are o·s − p + t·d, t in [0, k), over
 * an input of L; [olo, ohi) are the outputs whose every tap is inside [0, L). For up to
 * EMBER_POOL_EDGE outputs at each end the taps inside ([lo, hi)) and the count of taps inside
 * the explicitly padded input [−p, L + p_end) (the average's count_include_pad divisor) are
 * kept, so that no output pays a division. */
typedef struct {
    long O, L, k, s, p, d, p_end;
    long olo, ohi;
    long nlo, nhi; /* outputs [0, nlo) kept at [0, nlo), [O − nhi, O) at EMBER_POOL_EDGE + … */
    long lo[2 * EMBER_POOL_EDGE], hi[2 * EMBER_POOL_EDGE], padded[2 * EMBER_POOL_EDGE];
} ember_pool_axis;

static void ember_axis_span(const ember_pool_axis *a, long o, long *lo, long *hi, long *padded)
{
    const long start = o * a->s - a->p;
    long qlo, qhi;
    ember_span_inside(start, a->d, a->k, 0, a->L, lo, hi);
    ember_span_inside(start, a->d, a->k, -a->p, a->L + a->p_end, &qlo, &qhi);
    *padded = qhi - qlo;
}

static void ember_axis_init(ember_pool_axis *a, long O, long L, long k, long s, long p, long d,
                            long p_end)
{
    a->O = O, a->L = L, a->k = k, a->s = s, a->p = p, a->d = d, a->p_end = p_end;
    ember_interior_columns(O, L, k, s, p, d, &a->olo, &a->ohi);
    a->nlo = a->olo < EMBER_POOL_EDGE ? a->olo : EMBER_POOL_EDGE;
    a->nhi = O - a->ohi < EMBER_POOL_EDGE ? O - a->ohi : EMBER_POOL_EDGE;
    for (long o = 0; o < a->nlo; ++o) ember_axis_span(a, o, &a->lo[o], &a->hi[o], &a->padded[o]);
    for (long r = 0; r < a->nhi; ++r) {
        const long at = EMBER_POOL_EDGE + r;
        ember_axis_span(a, O - a->nhi + r, &a->lo[at], &a->hi[at], &a->padded[at]);
    }
}

/* output o's taps inside the input, [lo, hi), and (padded) inside the padded input */
static inline void ember_axis_taps(const ember_pool_axis *a, long o, long *lo, long *hi,
                                   long *padded)
{
    long at = -1;
    if (o >= a->olo && o < a->ohi) {
        *lo = 0, *hi = a->k, *padded = a->k;
        return;
    }
    if (o < a->nlo) at = o;
    else if (o >= a->O - a->nhi) at = EMBER_POOL_EDGE + o - (a->O - a->nhi);
    if (at < 0) {
        ember_axis_span(a, o, lo, hi, padded);
        return;
    }
    *lo = a->lo[at], *hi = a->hi[at], *padded = a->padded[at];
}

/* ---- forward -------------------------------------------------------------------------------- */

/* The max of the window whose in-image taps are rows h0 + i·dh, i in [ilo, ihi), columns
 * w0 + j·dw, j in [jlo, jhi), in row-major order (-inf for none): the edges' scalar loop. */
static inline float ember_max_taps(const float *x, long W, long h0, long dh, long ilo, long ihi,
                                   long w0, long dw, long jlo, long jhi)
{
    float m = -INFINITY;
    for (long i = ilo; i < ihi; ++i) {
        const float *row = x + (h0 + i * dh) * W + w0;
        for (long j = jlo; j < jhi; ++j) m = ember_nan_max(m, row[j * dw]);
    }
    return m;
}

static inline float ember_sum_taps(const float *x, long W, long h0, long dh, long ilo, long ihi,
                                   long w0, long dw, long jlo, long jhi)
{
    float s = 0.0f;
    for (long i = ilo; i < ihi; ++i) {
        const float *row = x + (h0 + i * dh) * W + w0;
        for (long j = jlo; j < jhi; ++j) s += row[j * dw];
    }
    return s;
}

/* Where a row's interior output columns [olo, ohi) are narrower than a vector, one vector still
 * pools them: its spare lanes pool whatever lies past the row (the next rows, the next plane)
 * and are thrown away. That is allowed when the last tap a lane reads lies within the batch
 * (`x_left` floats readable from the plane); its result is stored whole when the vector ends
 * within the batch's output (`y_left` floats from the row: the spare lanes land on outputs
 * written later), else through a buffer. */
static inline int ember_lanes_readable(long W, long h0, long dh, long ihi, long kw, long dw,
                                       long olo, long sw, long pl, long x_left)
{
    return (h0 + (ihi - 1) * dh) * W + (olo + EMBER_VW - 1) * sw - pl + (kw - 1) * dw < x_left;
}

/* The interior output columns [olo, ohi) of one output row (rows [ilo, ihi) of the window in
 * the image) EMBER_VW at a time: whole blocks, then one vector ending on ohi (overlapping: a lane
 * recomputes the same value), or a single vector with spare lanes for a row narrower than one.
 * `is_max` (a constant where this is inlined) picks max or sum. Returns 0 when none of it could
 * be done that way (the caller takes the scalar loop). */
static inline int ember_pool_interior(const float *xp, float *yrow, long W, long h0, long dh,
                                      long ilo, long ihi, long kw, long dw, long olo, long ohi,
                                      long sw, long pl, long x_left, long y_left, int is_max)
{
    const long n = ohi - olo;
    long ow = olo;
#define EMBER_POOL_COLUMNS(dst, at, count)                                                          \
    (is_max ? ember_max_columns(xp, dst, W, h0, dh, ilo, ihi, kw, dw, (at) * sw - pl, sw, count) \
            : ember_sum_columns(xp, dst, W, h0, dh, ilo, ihi, kw, dw, (at) * sw - pl, sw, count))
    if (n >= EMBER_VW) {
        for (; ow + EMBER_POOL_BLOCK * EMBER_VW <= ohi; ow += EMBER_POOL_BLOCK * EMBER_VW)
            EMBER_POOL_COLUMNS(yrow + ow, ow, EMBER_POOL_BLOCK);
        for (; ow < ohi; ow += EMBER_VW) {
            if (ow + EMBER_VW > ohi) ow = ohi - EMBER_VW;
            EMBER_POOL_COLUMNS(yrow + ow, ow, 1);
        }
        return 1;
    }
    if (!ember_lanes_readable(W, h0, dh, ihi, kw, dw, olo, sw, pl, x_left)) return 0;
    if (olo + EMBER_VW <= y_left) {
        EMBER_POOL_COLUMNS(yrow + olo, olo, 1);
    } else {
        float part[EMBER_VW];
        EMBER_POOL_COLUMNS(part, olo, 1);
        memcpy(yrow + olo, part, sizeof(float) * n);
    }
#undef EMBER_POOL_COLUMNS
    return 1;
}

/* What a separable pool accumulates: a sum, a maximum that lets NaNs win, or a maximum over a
 * plane known to hold no NaN (a compare and a blend per tap instead of two compares, an or and a
 * blend: every NaN-free plane, which is nearly all of them, takes that one). */
enum { EMBER_POOL_SUM, EMBER_POOL_MAX, EMBER_POOL_MAX_NUMBERS };

static inline ember_vf ember_pool_step(ember_vf m, ember_vf v, int mode)
{
    if (mode == EMBER_POOL_SUM) return m + v;
    if (mode == EMBER_POOL_MAX) return ember_nan_max_v(m, v);
    const ember_pool_vi take = v > m;
    return (ember_vf)(((ember_pool_vi)v & take) | ((ember_pool_vi)m & ~take));
}

/* 1 when p[0:n] holds a NaN */
static inline int ember_has_nan(const float *p, long n)
{
    ember_pool_vi nan = {0};
    long i = 0;
    for (; i + EMBER_VW <= n; i += EMBER_VW) {
        const ember_vf v = ember_vload(p + i);
        nan |= v != v;
    }
    int any = 0;
    for (int l = 0; l < EMBER_VW; ++l) any |= nan[l];
    for (; i < n; ++i) any |= __builtin_isunordered(p[i], p[i]);
    return any != 0;
}

/* The separable pool (dilation 1), max or sum: each input row's horizontal maxima (sums) — one
 * per output column, over the row's taps of that column's window, padding counted as the value
 * that never counts: -inf for the max, 0 for the sum — are found once, into a ring of kh rows,
 * and every output row whose window holds that input row takes them from there: y[oh][ow] = max
 * (sum) over the window's in-image rows, the sum divided by ONNX AveragePool's divisor (rows ×
 * columns counted, each from its axis). Any NaN still wins, padding still never does, a window
 * of padding only still gives -inf. A row's vectors read their taps straight from x: those that
 * reach into the padding replace those lanes by the pad value in registers (or, at the ends of
 * the batch, build them in a small buffer). For ResNet's 3×3/2 stem, 2·3 strided taps and 3
 * plain ones per output vector instead of 9 strided ones, and no scalar edges. Ring, buffer and
 * the columns' divisors live in one stack buffer (EMBER_POOL_SCRATCH floats); geometries that do
 * not fit take the direct path. */
#define EMBER_POOL_SCRATCH 8192 /* floats: 32 KB of stack */
#define EMBER_POOL_RING_ROWS 8
#define EMBER_POOL_WHOLE 2048 /* floats */

typedef struct {
    long owr;      /* OW rounded up to whole vectors: the ring's row length */
    long edge_len; /* the taps of one vector: (EMBER_VW − 1)·sw + kw */
} ember_separable_shape;

static int ember_separable_fits(const ember_pool_window *g, ember_separable_shape *shape)
{
    if (g->dh != 1 || g->dw != 1 || g->kh > EMBER_POOL_RING_ROWS || g->OW > EMBER_POOL_SCRATCH ||
        g->sw > EMBER_POOL_SCRATCH || g->kw > EMBER_POOL_SCRATCH || g->pl > EMBER_POOL_SCRATCH ||
        g->W > (1L << 30))
        return 0; /* (and so a tap's column, and a lane's, fit an int) */
    shape->owr = (g->OW + EMBER_VW - 1) / EMBER_VW * EMBER_VW;
    shape->edge_len = (EMBER_VW - 1) * g->sw + g->kw;
    /* the ring, the columns' divisors, one vector's taps */
    return g->kh * shape->owr + shape->owr + shape->edge_len <= EMBER_POOL_SCRATCH;
}

/* h[0:owr) = the max (sum) of each output column's kw taps, sw apart, of the input row `row`
 * (W floats, at row_at in a batch of x_total), padding as `pad`. Inlined with constant kw and sw
 * for the common windows. */
static inline void ember_row_taps_of(const float *row, long W, long row_at, long x_total,
                                     float *edge, const ember_pool_vi *inside_at, float *h,
                                     long owr, long kw, long sw, long pl, int mode)
{
    const float pad = mode == EMBER_POOL_SUM ? 0.0f : -INFINITY;
    const ember_vf padv = ember_vsplat(pad);
    ember_pool_vi lane;
    for (int l = 0; l < EMBER_VW; ++l) lane[l] = l * (int)sw;
    for (long ow = 0; ow < owr; ow += EMBER_VW) {
        const long start = ow * sw - pl, end = start + (EMBER_VW - 1) * sw + kw;
        ember_vf m;
        if (start >= 0 && end <= W) { /* every tap in the row */
            const float *taps = row + start;
            m = ember_strided_load(taps, sw);
            for (long j = 1; j < kw; ++j) {
                const ember_vf v = ember_strided_load(taps + j, sw);
                m = ember_pool_step(m, v, mode);
            }
        } else if (row_at + start >= 0 && row_at + end <= x_total) {
            /* read past the row (within the batch), the lanes outside it set to pad */
            const float *taps = row + start;
            for (long j = 0; j < kw; ++j) {
                ember_pool_vi inside;
                if (inside_at) {
                    inside = inside_at[ow / EMBER_VW * kw + j];
                } else {
                    const ember_pool_vi at = lane + (int)(start + j);
                    inside = (at >= 0) & (at < (int)W);
                }
                ember_vf v = ember_strided_load(taps + j, sw);
                v = (ember_vf)(((ember_pool_vi)v & inside) | ((ember_pool_vi)padv & ~inside));
                m = j == 0 ? v : ember_pool_step(m, v, mode);
            }
        } else { /* the batch's ends: the taps through a buffer */
            for (long t = 0; t < end - start; ++t)
                edge[t] = start + t >= 0 && start + t < W ? row[start + t] : pad;
            m = ember_strided_load(edge, sw);
            for (long j = 1; j < kw; ++j) {
                const ember_vf v = ember_strided_load(edge + j, sw);
                m = ember_pool_step(m, v, mode);
            }
        }
        ember_vstore(h + ow, m);
    }
}

/* the lanes of each vector's tap j inside the row, for rows of up to EMBER_POOL_MASKS / kw
 * vectors (the same for every row: found once per call) */
#define EMBER_POOL_MASKS 48

static int ember_inside_masks(ember_pool_vi *inside_at, long owr, long W, long kw, long sw,
                              long pl)
{
    if (owr / EMBER_VW * kw > EMBER_POOL_MASKS) return 0;
    for (long ow = 0; ow < owr; ow += EMBER_VW)
        for (long j = 0; j < kw; ++j) {
            ember_pool_vi at;
            for (int l = 0; l < EMBER_VW; ++l) at[l] = (int)((ow + l) * sw - pl + j);
            inside_at[ow / EMBER_VW * kw + j] = (at >= 0) & (at < (int)W);
        }
    return 1;
}

static inline void ember_row_taps(const float *row, long W, long row_at, long x_total,
                                  float *edge, const ember_pool_vi *inside_at, float *h,
                                  long owr, long kw, long sw, long pl, int mode)
{
#define EMBER_ROW_TAPS(k, s) \
    ember_row_taps_of(row, W, row_at, x_total, edge, inside_at, h, owr, k, s, pl, mode)
    if (kw == 3 && sw == 1) EMBER_ROW_TAPS(3, 1);
    else if (kw == 3 && sw == 2) EMBER_ROW_TAPS(3, 2);
    else if (kw == 2 && sw == 1) EMBER_ROW_TAPS(2, 1);
    else if (kw == 2 && sw == 2) EMBER_ROW_TAPS(2, 2);
    else if (kw == 5 && sw == 1) EMBER_ROW_TAPS(5, 1);
    else EMBER_ROW_TAPS(kw, sw);
#undef EMBER_ROW_TAPS
}

/* the max (sum) of the window's rows_in rows at output columns ow…, row i at rows[i] */
static inline ember_vf ember_pool_rows(const float *const *rows, long rows_in, long ow, int mode)
{
    ember_vf m = ember_vsplat(mode == EMBER_POOL_SUM ? 0.0f : -INFINITY);
    if (rows_in == 3) /* the common 3-row window, unrolled */
        return ember_pool_step(ember_pool_step(ember_pool_step(m, ember_vload(rows[0] + ow), mode),
                                               ember_vload(rows[1] + ow), mode),
                               ember_vload(rows[2] + ow), mode);
    for (long i = 0; i < rows_in; ++i) m = ember_pool_step(m, ember_vload(rows[i] + ow), mode);
    return m;
}

/* The separable pool of one plane (see above); mode a constant where it is inlined. */
typedef struct {
    const ember_pool_window *g;
    const ember_separable_shape *shape;
    const ember_pool_axis *rows;
    const float *col_count; /* the average's column divisors, owr of them */
    float *ring, *edge;
    const ember_pool_vi *inside_at; /* ember_inside_masks, or NULL */
    int whole;                      /* the ring holds a whole plane's rows */
    long x_total, y_total;
} ember_separable_call;

static inline void ember_pool_separable_plane(const ember_separable_call *c, const float *x,
                                              float *y, long p, int mode)
{
    const ember_pool_window *g = c->g;
    const long H = g->H, W = g->W, OH = g->OH, OW = g->OW, kh = g->kh, kw = g->kw;
    const long sh = g->sh, sw = g->sw, pt = g->pt, pl = g->pl, owr = c->shape->owr;
    /* (the call's fields in locals: with -fno-strict-aliasing every store would reload them) */
    const int include_pad = g->count_include_pad;
    const ember_pool_axis *rows = c->rows;
    const float *col_count = c->col_count;
    float *ring = c->ring, *edge = c->edge;
    const ember_pool_vi *inside_at = c->inside_at;
    const long x_total = c->x_total, y_total = c->y_total;
    const float *xp = x + p * H * W;
    /* A plane that fits has all its rows' taps found first, into ring rows 0…H − 1; else the
     * ring: held[0:count) hold input rows base, base + 1, …, free ring rows after them. */
    const int whole = c->whole;
    float *held[EMBER_POOL_RING_ROWS];
    long base = 0, count = 0;
    if (whole)
        for (long r = 0; r < H; ++r)
            ember_row_taps(xp + r * W, W, p * H * W + r * W, x_total, edge, inside_at,
                           ring + r * owr, owr, kw, sw, pl, mode);
    else
        for (long r = 0; r < kh; ++r) held[r] = ring + r * owr;
    for (long oh = 0; oh < OH; ++oh) {
        const long h0 = oh * sh - pt, yat = p * OH * OW + oh * OW;
        long ilo, ihi, rows_padded;
        ember_axis_taps(rows, oh, &ilo, &ihi, &rows_padded);
        const long first = h0 + ilo, last = h0 + ihi;
        if (whole) {
            for (long i = 0; i < ihi - ilo; ++i) held[i] = ring + (first + i) * owr;
        } else {
            for (; count > 0 && base < first; ++base, --count) { /* drop rows above the window */
                float *oldest = held[0];
                for (long r = 1; r < kh; ++r) held[r - 1] = held[r];
                held[kh - 1] = oldest;
            }
            if (count == 0) base = first;
            for (; base + count < last; ++count) /* the window's new rows */
                ember_row_taps(xp + (base + count) * W, W, p * H * W + (base + count) * W,
                               x_total, edge, inside_at, held[count], owr, kw, sw, pl, mode);
        }
        const float *const *taps = (const float *const *)held;
        const long rows_in = ihi - ilo;
        const float row_count = (float)(include_pad ? rows_padded : rows_in);
        float *yrow = y + yat;
        for (long ow = 0; ow < OW; ow += EMBER_VW) {
            ember_vf m = ember_pool_rows(taps, rows_in, ow, mode);
            if (mode == EMBER_POOL_SUM) { /* a window without a tap to count gives 0 */
                const ember_vf divisor = row_count * ember_vload(col_count + ow);
                const ember_pool_vi some = divisor > 0.0f;
                m = (ember_vf)((ember_pool_vi)(m / divisor) & some);
            }
            if (ow + EMBER_VW <= OW || yat + ow + EMBER_VW <= y_total) {
                ember_vstore(yrow + ow, m); /* spare lanes: outputs written later */
            } else {
                float part[EMBER_VW];
                ember_vstore(part, m);
                memcpy(yrow + ow, part, sizeof(float) * (OW - ow));
            }
        }
    }
}

static void ember_pool_separable(const float *x, float *y, long planes,
                                 const ember_pool_window *g, const ember_separable_shape *shape,
                                 const ember_pool_axis *rows, const ember_pool_axis *cols,
                                 int is_max)
{
    const long owr = shape->owr, OW = g->OW, in_plane = g->H * g->W;
    float scratch[EMBER_POOL_SCRATCH];
    float *col_count = scratch + g->kh * owr;
    ember_pool_vi inside_at[EMBER_POOL_MASKS];
    const int masks = ember_inside_masks(inside_at, owr, g->W, g->kw, g->sw, g->pl);
    /* whole planes while their rows' taps stay a quarter of L1 (more evicts the input) */
    const int whole = g->H <= EMBER_POOL_WHOLE / owr &&
                      (g->H + 1) * owr + shape->edge_len <= EMBER_POOL_SCRATCH;
    float *ring = scratch;
    if (whole) col_count = scratch + g->H * owr;
    const ember_separable_call c = {g, shape, rows, col_count, ring, col_count + owr,
                                    masks ? inside_at : NULL, whole, planes * in_plane,
                                    planes * g->OH * OW};
    if (!is_max)
        for (long ow = 0; ow < owr; ++ow) {
            long jlo = 0, jhi = 1, padded = 1;
            if (ow < OW) ember_axis_taps(cols, ow, &jlo, &jhi, &padded);
            col_count[ow] = (float)(g->count_include_pad ? padded : jhi - jlo);
        }
    for (long p = 0; p < planes; ++p) {
        if (!is_max)
            ember_pool_separable_plane(&c, x, y, p, EMBER_POOL_SUM);
        else if (ember_has_nan(x + p * in_plane, in_plane))
            ember_pool_separable_plane(&c, x, y, p, EMBER_POOL_MAX);
        else
            ember_pool_separable_plane(&c, x, y, p, EMBER_POOL_MAX_NUMBERS);
    }
}

/* 2×2 windows, stride 2, inside the plane (no padding, floor mode), EMBER_VW outputs from two
 * rows' 2·EMBER_VW floats: the rows' maxima first, then the pairs' (even and odd lanes). */
#if EMBER_VW == 16
#define EMBER_EVEN_LANES 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30
#define EMBER_ODD_LANES 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31
#elif EMBER_VW == 8
#define EMBER_EVEN_LANES 0, 2, 4, 6, 8, 10, 12, 14
#define EMBER_ODD_LANES 1, 3, 5, 7, 9, 11, 13, 15
#else
#define EMBER_EVEN_LANES 0, 2, 4, 6
#define EMBER_ODD_LANES 1, 3, 5, 7
#endif

static int ember_is_2x2_stride2(const ember_pool_window *g)
{
    return g->kh == 2 && g->kw == 2 && g->sh == 2 && g->sw == 2 && g->dh == 1 && g->dw == 1 &&
           g->pt == 0 && g->pl == 0 && 2 * g->OH <= g->H && 2 * g->OW <= g->W;
}

static inline ember_vf ember_pool2x2_vec(const float *r0, const float *r1, int is_max)
{
    const ember_vf a0 = ember_vload(r0), a1 = ember_vload(r0 + EMBER_VW);
    const ember_vf b0 = ember_vload(r1), b1 = ember_vload(r1 + EMBER_VW);
    const ember_vf v0 = is_max ? ember_nan_max_v(a0, b0) : a0 + b0;
    const ember_vf v1 = is_max ? ember_nan_max_v(a1, b1) : a1 + b1;
    const ember_vf even = __builtin_shufflevector(v0, v1, EMBER_EVEN_LANES);
    const ember_vf odd = __builtin_shufflevector(v0, v1, EMBER_ODD_LANES);
    return is_max ? ember_nan_max_v(even, odd) : (even + odd) * 0.25f;
}

static inline float ember_pool2x2_one(const float *r0, const float *r1, int is_max)
{
    return is_max ? ember_nan_max(ember_nan_max(r0[0], r1[0]), ember_nan_max(r0[1], r1[1]))
                  : ((r0[0] + r1[0]) + (r0[1] + r1[1])) * 0.25f;
}

static inline void ember_pool2x2_planes(const float *x, float *y, long planes,
                                        const ember_pool_window *g, int is_max)
{
    const long H = g->H, W = g->W, OH = g->OH, OW = g->OW;
    const long x_total = planes * H * W, y_total = planes * OH * OW;
    for (long p = 0; p < planes; ++p)
        for (long oh = 0; oh < OH; ++oh) {
            const long at = p * H * W + 2 * oh * W, yat = p * OH * OW + oh * OW;
            const float *r0 = x + at, *r1 = r0 + W;
            float *yrow = y + yat;
            long ow = 0;
            for (; ow + EMBER_VW <= OW; ow += EMBER_VW)
                ember_vstore(yrow + ow, ember_pool2x2_vec(r0 + 2 * ow, r1 + 2 * ow, is_max));
            if (ow == OW) continue;
            if (OW >= EMBER_VW) { /* one more, ending on the row's end */
                ow = OW - EMBER_VW;
                ember_vstore(yrow + ow, ember_pool2x2_vec(r0 + 2 * ow, r1 + 2 * ow, is_max));
            } else if (at + W + 2 * EMBER_VW <= x_total) { /* narrow: spare lanes */
                const ember_vf v = ember_pool2x2_vec(r0, r1, is_max);
                if (yat + EMBER_VW <= y_total) {
                    ember_vstore(yrow, v);
                } else {
                    float part[EMBER_VW];
                    ember_vstore(part, v);
                    memcpy(yrow, part, sizeof(float) * OW);
                }
            } else {
                for (; ow < OW; ++ow) yrow[ow] = ember_pool2x2_one(r0 + 2 * ow, r1 + 2 * ow, is_max);
            }
        }
}

/* Max or average pooling of a batch of planes, any geometry: the interior output columns of
 * each row in vectors (ember_pool_interior), the edge columns window by window, every window's
 * taps from the axes found once per call. */
static inline void ember_pool_planes(const float *x, float *y, long planes,
                                     const ember_pool_window *g, const ember_pool_axis *rows,
                                     const ember_pool_axis *cols, int is_max)
{
    const long H = g->H, W = g->W, OH = g->OH, OW = g->OW;
    const long kw = g->kw, sh = g->sh, sw = g->sw, dh = g->dh, dw = g->dw;
    const long pt = g->pt, pl = g->pl;
    const long olo = cols->olo, ohi = cols->ohi;
    const long x_total = planes * H * W, y_total = planes * OH * OW;
    const int include_pad = g->count_include_pad;
    for (long p = 0; p < planes; ++p) {
        const float *xp = x + p * H * W;
        for (long oh = 0; oh < OH; ++oh) {
            const long h0 = oh * sh - pt, yat = p * OH * OW + oh * OW;
            float *yrow = y + yat;
            long ilo, ihi, rows_padded, jlo, jhi, cols_padded;
            ember_axis_taps(rows, oh, &ilo, &ihi, &rows_padded);
            const long rows_in = ihi - ilo;
            /* the interior columns' divisor */
            const long count = (include_pad ? rows_padded : rows_in) * kw;
            long ow = 0;
            for (; ow < OW; ++ow) {
                if (ow == olo && ohi > olo && rows_in > 0 && (is_max || count > 0) &&
                    ember_pool_interior(xp, yrow, W, h0, dh, ilo, ihi, kw, dw, olo, ohi, sw, pl,
                                        x_total - p * H * W, y_total - yat, is_max)) {
                    if (!is_max)
                        for (long c = olo; c < ohi; ++c) yrow[c] /= (float)count;
                    ow = ohi - 1;
                    continue;
                }
                ember_axis_taps(cols, ow, &jlo, &jhi, &cols_padded);
                const long w0 = ow * sw - pl;
                if (is_max) {
                    yrow[ow] = ember_max_taps(xp, W, h0, dh, ilo, ihi, w0, dw, jlo, jhi);
                } else {
                    const long n = include_pad ? rows_padded * cols_padded : rows_in * (jhi - jlo);
                    const float s = ember_sum_taps(xp, W, h0, dh, ilo, ihi, w0, dw, jlo, jhi);
                    yrow[ow] = n > 0 ? s / (float)n : 0.0f;
                }
            }
        }
    }
}

/* A batch of planes, max (is_max) or average: 2×2/2 windows from pairs of rows, overlapping
 * windows separably, others directly. */
static void ember_pool_planes_any(const float *x, float *y, long planes,
                                  const ember_pool_window *g, int is_max)
{
    if (ember_is_2x2_stride2(g)) {
        ember_pool2x2_planes(x, y, planes, g, is_max);
        return;
    }
    ember_pool_axis rows, cols;
    ember_axis_init(&rows, g->OH, g->H, g->kh, g->sh, g->pt, g->dh, g->pb);
    ember_axis_init(&cols, g->OW, g->W, g->kw, g->sw, g->pl, g->dw, g->pr);
    ember_separable_shape shape;
    if (ember_separable_fits(g, &shape))
        ember_pool_separable(x, y, planes, g, &shape, &rows, &cols, is_max);
    else
        ember_pool_planes(x, y, planes, g, &rows, &cols, is_max);
}

/* Max pooling of a batch of planes (padded taps never win; an all-padding window gives -inf; a
 * NaN wins). */
static void ember_max_pool_planes_here(const float *x, float *y, long planes,
                                       const ember_pool_window *g)
{
    ember_pool_planes_any(x, y, planes, g, 1);
}

/* Average pooling of a batch of planes: the sum of the in-image taps (row by row on the separable
 * path, in row-major order on the direct one) over the divisor of ONNX AveragePool (with
 * count_include_pad the taps inside the explicitly padded input, else the in-image ones). */
static void ember_avg_pool_planes_here(const float *x, float *y, long planes,
                                       const ember_pool_window *g)
{
    ember_pool_planes_any(x, y, planes, g, 0);
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

/* The 2×2, stride-2 gradient of EMBER_VW output columns from two rows r0, r1 of x: dY goes to the
 * first maximum of (r0[2j], r0[2j+1], r1[2j], r1[2j+1]) — the first NaN when there is one — and
 * the window's other three gradients are 0 (windows do not overlap: nothing accumulates). The
 * lanes' four gradients are interleaved back into 2·EMBER_VW floats of each dx row. */
#if EMBER_VW == 16
#define EMBER_ZIP_LO 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23
#define EMBER_ZIP_HI 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31
#elif EMBER_VW == 8
#define EMBER_ZIP_LO 0, 8, 1, 9, 2, 10, 3, 11
#define EMBER_ZIP_HI 4, 12, 5, 13, 6, 14, 7, 15
#else
#define EMBER_ZIP_LO 0, 4, 1, 5
#define EMBER_ZIP_HI 2, 6, 3, 7
#endif

static inline void ember_max2x2_grad_vec(const float *r0, const float *r1, ember_vf g, float *d0,
                                         float *d1)
{
    const ember_vf r00 = ember_vload(r0), r01 = ember_vload(r0 + EMBER_VW);
    const ember_vf r10 = ember_vload(r1), r11 = ember_vload(r1 + EMBER_VW);
    const ember_vf a = __builtin_shufflevector(r00, r01, EMBER_EVEN_LANES);
    const ember_vf b = __builtin_shufflevector(r00, r01, EMBER_ODD_LANES);
    const ember_vf c = __builtin_shufflevector(r10, r11, EMBER_EVEN_LANES);
    const ember_vf d = __builtin_shufflevector(r10, r11, EMBER_ODD_LANES);
    const ember_vf m = ember_nan_max_v(ember_nan_max_v(ember_nan_max_v(a, b), c), d);
    /* "is the maximum": equal to it, or a NaN (then m is a NaN too); the first such tap wins */
    const ember_pool_vi ia = (a == m) | (a != a);
    const ember_pool_vi ib = ~ia & ((b == m) | (b != b));
    const ember_pool_vi ic = ~ia & ~ib & ((c == m) | (c != c));
    const ember_pool_vi id = ~ia & ~ib & ~ic;
    const ember_pool_vi gi = (ember_pool_vi)g;
    const ember_vf ga = (ember_vf)(gi & ia), gb = (ember_vf)(gi & ib);
    const ember_vf gc = (ember_vf)(gi & ic), gd = (ember_vf)(gi & id);
    ember_vstore(d0, __builtin_shufflevector(ga, gb, EMBER_ZIP_LO));
    ember_vstore(d0 + EMBER_VW, __builtin_shufflevector(ga, gb, EMBER_ZIP_HI));
    ember_vstore(d1, __builtin_shufflevector(gc, gd, EMBER_ZIP_LO));
    ember_vstore(d1 + EMBER_VW, __builtin_shufflevector(gc, gd, EMBER_ZIP_HI));
}

/* the same for one output column, as scalars */
static inline void ember_max2x2_grad_one(const float *r0, const float *r1, float g, float *d0,
                                         float *d1)
{
    const float a = r0[0], b = r0[1], c = r1[0], d = r1[1];
    const float m = ember_nan_max(ember_nan_max(ember_nan_max(a, b), c), d);
    const int ia = (a == m) | __builtin_isunordered(a, a);
    const int ib = (!ia) & ((b == m) | __builtin_isunordered(b, b));
    const int ic = (!ia) & (!ib) & ((c == m) | __builtin_isunordered(c, c));
    const int id = (!ia) & (!ib) & (!ic);
    d0[0] = ia ? g : 0.0f;
    d0[1] = ib ? g : 0.0f;
    d1[0] = ic ? g : 0.0f;
    d1[1] = id ? g : 0.0f;
}

/* dx of 2×2/2 max pooling inside the planes (ember_is_2x2_stride2): every pair of rows in
 * vectors. A row narrower than a vector still takes one (ember_pool_interior's rule): its spare
 * lanes write past the pair's two dx rows, onto rows written later (within the batch); the
 * columns and the row no window covers (odd W, H) are zeroed after. */
static void ember_max2x2_grad_planes(const float *dy, const float *x, float *dx, long planes,
                                     const ember_pool_window *g)
{
    const long H = g->H, W = g->W, OH = g->OH, OW = g->OW;
    const long total = planes * H * W, dy_total = planes * OH * OW;
    for (long p = 0; p < planes; ++p) {
        for (long oh = 0; oh < OH; ++oh) {
            const long at = p * H * W + 2 * oh * W, gat = p * OH * OW + oh * OW;
            const float *r0 = x + at, *r1 = r0 + W, *grow = dy + gat;
            float *d0 = dx + at, *d1 = d0 + W;
            long ow = 0;
            for (; ow + EMBER_VW <= OW; ow += EMBER_VW)
                ember_max2x2_grad_vec(r0 + 2 * ow, r1 + 2 * ow, ember_vload(grow + ow),
                                      d0 + 2 * ow, d1 + 2 * ow);
            if (ow < OW && OW >= EMBER_VW) { /* one more ending on the row's end: windows */
                ow = OW - EMBER_VW;          /* done twice get the same values again */
                ember_max2x2_grad_vec(r0 + 2 * ow, r1 + 2 * ow, ember_vload(grow + ow),
                                      d0 + 2 * ow, d1 + 2 * ow);
                ow = OW;
            } else if (ow < OW && at + W + 2 * EMBER_VW <= total &&
                       gat + EMBER_VW <= dy_total) { /* narrow: spare lanes on later rows */
                ember_max2x2_grad_vec(r0, r1, ember_vload(grow), d0, d1);
                ow = OW;
            }
            for (; ow < OW; ++ow)
                ember_max2x2_grad_one(r0 + 2 * ow, r1 + 2 * ow, grow[ow], d0 + 2 * ow,
                                      d1 + 2 * ow);
            if (2 * OW < W) {
                memset(d0 + 2 * OW, 0, sizeof(float) * (W - 2 * OW));
                memset(d1 + 2 * OW, 0, sizeof(float) * (W - 2 * OW));
            }
        }
        if (2 * OH < H) memset(dx + p * H * W + 2 * OH * W, 0, sizeof(float) * (H - 2 * OH) * W);
    }
}

/* The max gradient of up to EMBER_VW interior output columns from ow (every tap of rows
 * [ilo, ihi) in the image): each lane finds its window's first maximum as ember_window_argmax
 * does, keeping the winning tap's row and column, then the first n lanes' dY are added into dx
 * in column order (the order of the scalar loop: overlapping windows accumulate the same way).
 * Lanes past n read taps past the row (ember_lanes_readable) and are dropped. */
static inline void ember_max_grad_columns(const float *x, float *dx, const float *dyrow, long W,
                                          long h0, long dh, long ilo, long ihi, long kw, long dw,
                                          long ow, long sw, long pl, int n)
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
    for (int l = 0; l < n; ++l)
        dx[(h0 + (ilo + best_i[l]) * dh) * W + (ow + l) * sw - pl + best_j[l] * dw] +=
            dyrow[ow + l];
}

/* The separable argmax (dilation 1; the separable pool's ring, ember_separable_fits): each input
 * row's first maximum over each output column's horizontal taps (its value and column, or none
 * when all of them are padding) is found once, then each output row's first maximum over its
 * window's rows. That is the window's first maximum in row-major order: the first row holding
 * the window's maximum, and that row's first column holding it; the same for the first NaN. */
typedef int ember_pool_vi_u __attribute__((vector_size(EMBER_VW * 4), aligned(4)));

/* lanes that take over the running (best, have): an in-image tap that is bigger, or the first
 * NaN, or the first tap at all (ember_takes, with "no tap yet") */
static inline ember_pool_vi ember_takes_v(ember_vf v, ember_vf best, ember_pool_vi have,
                                          ember_pool_vi inside)
{
    return inside & ((v > best) | ((v != v) & (best == best)) | ~have);
}

static inline ember_pool_vi ember_blend_vi(ember_pool_vi take, ember_pool_vi a, ember_pool_vi b)
{
    return (a & take) | (b & ~take);
}

static inline ember_vf ember_blend_vf(ember_pool_vi take, ember_vf a, ember_vf b)
{
    return (ember_vf)(((ember_pool_vi)a & take) | ((ember_pool_vi)b & ~take));
}

/* hv, hc [0:owr) = the first maximum of each output column's kw taps (sw apart) of the input row
 * `row` (W floats at row_at in a batch of x_total) and its column, −1 when every tap is padding */
static inline void ember_row_argmax_of(const float *row, long W, long row_at, long x_total,
                                       float *edge, float *hv, int *hc, long owr, long kw,
                                       long sw, long pl)
{
    ember_pool_vi lane;
    for (int l = 0; l < EMBER_VW; ++l) lane[l] = l * (int)sw;
    const ember_pool_vi all = (ember_pool_vi){0} - 1;
    for (long ow = 0; ow < owr; ow += EMBER_VW) {
        const long start = ow * sw - pl, end = start + (EMBER_VW - 1) * sw + kw;
        const int direct = start >= 0 && end <= W;
        const float *taps = row + start;
        if (!direct && !(row_at + start >= 0 && row_at + end <= x_total)) {
            /* the batch's ends: the taps through a buffer (those outside the row masked) */
            for (long t = 0; t < end - start; ++t)
                edge[t] = start + t >= 0 && start + t < W ? row[start + t] : 0.0f;
            taps = edge;
        }
        ember_vf best = ember_vsplat(-INFINITY);
        ember_pool_vi col = (ember_pool_vi){0} - 1;
        for (long j = 0; j < kw; ++j) {
            const ember_pool_vi at = lane + (int)(start + j);
            const ember_pool_vi inside = direct ? all : (at >= 0) & (at < (int)W);
            const ember_vf v = ember_strided_load(taps + j, sw);
            const ember_pool_vi take = ember_takes_v(v, best, col >= 0, inside);
            best = ember_blend_vf(take, v, best);
            col = ember_blend_vi(take, at, col);
        }
        ember_vstore(hv + ow, best);
        *(ember_pool_vi_u *)(hc + ow) = col;
    }
}

static inline void ember_row_argmax(const float *row, long W, long row_at, long x_total,
                                    float *edge, float *hv, int *hc, long owr, long kw, long sw,
                                    long pl)
{
#define EMBER_ROW_ARGMAX(k, s) \
    ember_row_argmax_of(row, W, row_at, x_total, edge, hv, hc, owr, k, s, pl)
    if (kw == 3 && sw == 1) EMBER_ROW_ARGMAX(3, 1);
    else if (kw == 3 && sw == 2) EMBER_ROW_ARGMAX(3, 2);
    else if (kw == 2 && sw == 1) EMBER_ROW_ARGMAX(2, 1);
    else EMBER_ROW_ARGMAX(kw, sw);
#undef EMBER_ROW_ARGMAX
}

static void ember_max_grad_separable(const float *dy, const float *x, float *dx, long planes,
                                     const ember_pool_window *g,
                                     const ember_separable_shape *shape,
                                     const ember_pool_axis *rows)
{
    const long H = g->H, W = g->W, OH = g->OH, OW = g->OW, kh = g->kh, kw = g->kw;
    const long sh = g->sh, sw = g->sw, pt = g->pt, pl = g->pl, owr = shape->owr;
    const long x_total = planes * H * W;
    float ring[EMBER_POOL_SCRATCH];
    int ring_col[EMBER_POOL_SCRATCH];
    const int whole = H <= EMBER_POOL_WHOLE / owr && (H + 1) * owr + shape->edge_len <=
                                                         EMBER_POOL_SCRATCH;
    float *edge = ring + (whole ? H : kh) * owr;
    memset(dx, 0, sizeof(float) * planes * H * W);
    for (long p = 0; p < planes; ++p) {
        const float *xp = x + p * H * W;
        float *dxp = dx + p * H * W;
        long held[EMBER_POOL_RING_ROWS], next = 0;
        for (long r = 0; r < kh; ++r) held[r] = -1;
        if (whole) /* a small plane: every row's first maxima first, row r in ring row r */
            for (long r = 0; r < H; ++r)
                ember_row_argmax(xp + r * W, W, p * H * W + r * W, x_total, edge,
                                 ring + r * owr, ring_col + r * owr, owr, kw, sw, pl);
        for (long oh = 0; oh < OH; ++oh) {
            const long h0 = oh * sh - pt;
            long ilo, ihi, pad;
            ember_axis_taps(rows, oh, &ilo, &ihi, &pad);
            const float *tap_v[EMBER_POOL_RING_ROWS];
            const int *tap_c[EMBER_POOL_RING_ROWS];
            for (long i = ilo; i < ihi; ++i) {
                const long r = h0 + i;
                long slot = 0;
                if (whole) {
                    tap_v[i - ilo] = ring + r * owr;
                    tap_c[i - ilo] = ring_col + r * owr;
                    continue;
                }
                while (slot < kh && held[slot] != r) ++slot;
                if (slot == kh) {
                    slot = next;
                    next = next + 1 == kh ? 0 : next + 1;
                    ember_row_argmax(xp + r * W, W, p * H * W + r * W, x_total, edge,
                                     ring + slot * owr, ring_col + slot * owr, owr, kw, sw, pl);
                    held[slot] = r;
                }
                tap_v[i - ilo] = ring + slot * owr;
                tap_c[i - ilo] = ring_col + slot * owr;
            }
            const float *dyrow = dy + p * OH * OW + oh * OW;
            for (long ow = 0; ow < OW; ow += EMBER_VW) {
                ember_vf best = ember_vsplat(-INFINITY);
                ember_pool_vi best_r = (ember_pool_vi){0} - 1, best_c = best_r;
                for (long i = 0; i < ihi - ilo; ++i) {
                    const ember_vf v = ember_vload(tap_v[i] + ow);
                    const ember_pool_vi c = *(const ember_pool_vi_u *)(tap_c[i] + ow);
                    const ember_pool_vi take = ember_takes_v(v, best, best_r >= 0, c >= 0);
                    best = ember_blend_vf(take, v, best);
                    best_r = ember_blend_vi(take, (ember_pool_vi){0} + (int)(h0 + ilo + i), best_r);
                    best_c = ember_blend_vi(take, c, best_c);
                }
                const long n = OW - ow < EMBER_VW ? OW - ow : EMBER_VW;
                for (long l = 0; l < n; ++l) /* in column order, as the scalar loop adds */
                    if (best_r[l] >= 0) dxp[(long)best_r[l] * W + best_c[l]] += dyrow[ow + l];
            }
        }
    }
}

/* dx of max pooling, a batch of planes: each window's dY goes to its first maximum in row-major
 * window order (PyTorch's tie rule); a NaN beats any number. Padding is −inf: it never wins, so
 * only in-image taps are visited; a window of padding only gives nothing. */
static void ember_max_pool_grad_planes_here(const float *dy, const float *x, float *dx,
                                            long planes, const ember_pool_window *g)
{
    if (ember_is_2x2_stride2(g)) {
        ember_max2x2_grad_planes(dy, x, dx, planes, g);
        return;
    }
    ember_separable_shape shape;
    if (ember_separable_fits(g, &shape) && g->H <= (1L << 30)) {
        ember_pool_axis rows;
        ember_axis_init(&rows, g->OH, g->H, g->kh, g->sh, g->pt, g->dh, g->pb);
        ember_max_grad_separable(dy, x, dx, planes, g, &shape, &rows);
        return;
    }
    const long H = g->H, W = g->W, OH = g->OH, OW = g->OW;
    const long kh = g->kh, kw = g->kw, sh = g->sh, sw = g->sw, dh = g->dh, dw = g->dw;
    const long pt = g->pt, pl = g->pl;
    const long x_total = planes * H * W;
    const int vector_taps = kh <= INT32_MAX && kw <= INT32_MAX; /* a tap's row, column: int lanes */
    ember_pool_axis rows, cols;
    ember_axis_init(&rows, OH, H, kh, sh, pt, dh, g->pb);
    ember_axis_init(&cols, OW, W, kw, sw, pl, dw, g->pr);
    const long olo = cols.olo, ohi = cols.ohi;
    memset(dx, 0, sizeof(float) * planes * H * W);
    for (long p = 0; p < planes; ++p) {
        const float *xp = x + p * H * W;
        float *dxp = dx + p * H * W;
        for (long oh = 0; oh < OH; ++oh) {
            const long h0 = oh * sh - pt;
            long ilo, ihi, pad, jlo, jhi;
            ember_axis_taps(&rows, oh, &ilo, &ihi, &pad);
            if (ilo >= ihi) continue;
            const float *dyrow = dy + p * OH * OW + oh * OW;
            for (long ow = 0; ow < OW; ++ow) {
                if (ow == olo && ohi > olo && vector_taps) {
                    for (; ow < ohi; ow += EMBER_VW) {
                        const long n = ohi - ow < EMBER_VW ? ohi - ow : EMBER_VW;
                        if (n < EMBER_VW && !ember_lanes_readable(W, h0, dh, ihi, kw, dw, ow, sw,
                                                                  pl, x_total - p * H * W))
                            break;
                        ember_max_grad_columns(xp, dxp, dyrow, W, h0, dh, ilo, ihi, kw, dw, ow,
                                               sw, pl, (int)n);
                    }
                    if (ow >= ohi) {
                        ow = ohi - 1;
                        continue;
                    }
                }
                ember_axis_taps(&cols, ow, &jlo, &jhi, &pad);
                if (jlo >= jhi) continue;
                const long w0 = ow * sw - pl;
                dxp[ember_window_argmax(xp, W, h0, dh, ilo, ihi, w0, dw, jlo, jhi)] += dyrow[ow];
            }
        }
    }
}

/* dx of average pooling, a batch of planes: each window spreads dY/count over its in-image taps,
 * count the forward's divisor. */
static void ember_avg_pool_grad_planes_here(const float *dy, float *dx, long planes,
                                            const ember_pool_window *g)
{
    const long H = g->H, W = g->W, OH = g->OH, OW = g->OW;
    const long kh = g->kh, kw = g->kw, sh = g->sh, sw = g->sw, dh = g->dh, dw = g->dw;
    const long pt = g->pt, pl = g->pl;
    const int include_pad = g->count_include_pad;
    ember_pool_axis rows, cols;
    ember_axis_init(&rows, OH, H, kh, sh, pt, dh, g->pb);
    ember_axis_init(&cols, OW, W, kw, sw, pl, dw, g->pr);
    memset(dx, 0, sizeof(float) * planes * H * W);
    for (long p = 0; p < planes; ++p) {
        float *dxp = dx + p * H * W;
        for (long oh = 0; oh < OH; ++oh) {
            const long h0 = oh * sh - pt;
            long ilo, ihi, rows_padded, jlo, jhi, cols_padded;
            ember_axis_taps(&rows, oh, &ilo, &ihi, &rows_padded);
            const long rows_in = ihi - ilo;
            const float *dyrow = dy + p * OH * OW + oh * OW;
            for (long ow = 0; ow < OW; ++ow) {
                ember_axis_taps(&cols, ow, &jlo, &jhi, &cols_padded);
                const long count = include_pad ? rows_padded * cols_padded : rows_in * (jhi - jlo);
                if (count <= 0) continue;
                const float share = dyrow[ow] / (float)count;
                const long w0 = ow * sw - pl;
                for (long i = ilo; i < ihi; ++i) {
                    float *row = dxp + (h0 + i * dh) * W + w0;
                    for (long j = jlo; j < jhi; ++j) row[j * dw] += share;
                }
            }
        }
    }
}

static const struct ember_pool_kernels ember_pool_here = {
    .max_planes = ember_max_pool_planes_here,
    .avg_planes = ember_avg_pool_planes_here,
    .global_rows = ember_global_pool_rows_here,
    .max_grad_planes = ember_max_pool_grad_planes_here,
    .avg_grad_planes = ember_avg_pool_grad_planes_here,
};
