/* Which taps of a strided window lie inside a bound: the index arithmetic that pooling, im2col
 * and col2im share, forward and gradient alike (Cython names them in window.pxd, the pooling
 * template pool_kernel.h includes them). 64-bit throughout: a pool's window may reach past 2^31
 * (pads, strides and dilations each fit an int32, their sums need not), and the convolutions'
 * callers have proven their geometry fits an int32 anyway. */
#ifndef EMBER_WINDOW_H
#define EMBER_WINDOW_H

/* [lo, hi): the k in [0, count) with lo_bound <= start + k·step < hi_bound (step > 0);
 * lo == hi when there is none. */
static inline void ember_span_inside(long start, long step, long count, long lo_bound,
                                     long hi_bound, long *lo, long *hi)
{
    long first = start >= lo_bound ? 0 : (lo_bound - start + step - 1) / step;
    long end = start >= hi_bound ? 0 : (hi_bound - 1 - start) / step + 1;
    if (first > count) first = count;
    if (end > count) end = count;
    *lo = first;
    *hi = end < first ? first : end;
}

/* [olo, ohi): the output columns whose whole window (kw taps dw apart, starting at ow·sw − pl)
 * lies inside [0, W), so they need no bounds work. */
static inline void ember_interior_columns(long OW, long W, long kw, long sw, long pl, long dw,
                                          long *olo, long *ohi)
{
    ember_span_inside(-pl, sw, OW, 0, W - (kw - 1) * dw, olo, ohi);
}

#endif
