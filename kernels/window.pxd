# Which taps of a strided window lie inside a bound: the index arithmetic that pooling, im2col
# and col2im share, forward and gradient alike. 64-bit throughout: a pool's window may reach
# past 2^31 (pads, strides and dilations each fit an int32, their sums need not), and the
# convolutions' callers have proven their geometry fits an int32 anyway.


cdef inline void span_inside(long start, long step, long count, long lo_bound, long hi_bound,
                             long *lo, long *hi) noexcept nogil:
    """[lo, hi): the k in [0, count) with lo_bound <= start + k·step < hi_bound (step > 0);
    lo == hi when there is none."""
    cdef long k
    lo[0] = 0 if start >= lo_bound else (lo_bound - start + step - 1) // step
    if lo[0] > count:
        lo[0] = count
    k = 0 if start >= hi_bound else (hi_bound - 1 - start) // step + 1
    hi[0] = k if k < count else count
    if hi[0] < lo[0]:
        hi[0] = lo[0]


cdef inline void interior_columns(long OW, long W, long kw, long sw, long pl, long dw, long *olo,
                                  long *ohi) noexcept nogil:
    """[olo, ohi): the output columns whose whole window (kw taps dw apart, starting at
    ow·sw − pl) lies inside [0, W), so they need no bounds work."""
    span_inside(-pl, sw, OW, 0, W - (kw - 1) * dw, olo, ohi)


cdef inline long window_work(long windows, long taps, long extra) noexcept nogil:
    """windows × taps + extra (all ≥ 0), saturated at 2^63 − 1: the work estimate threads_for
    takes, for windows whose tap counts may be huge."""
    cdef long most = 0x7FFFFFFFFFFFFFFF
    if taps > 0 and windows > (most - extra) // taps:
        return most
    return windows * taps + extra
