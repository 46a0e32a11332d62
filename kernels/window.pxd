# Which taps of a strided window lie inside a bound: the index arithmetic that pooling, im2col
# and col2im share, forward and gradient alike.


cdef inline void span_inside(int start, int step, int count, int lo_bound, int hi_bound,
                             int *lo, int *hi) noexcept nogil:
    """[lo, hi): the k in [0, count) with lo_bound <= start + k·step < hi_bound (step > 0);
    lo == hi when there is none."""
    cdef int k
    lo[0] = 0 if start >= lo_bound else (lo_bound - start + step - 1) // step
    if lo[0] > count:
        lo[0] = count
    k = 0 if start >= hi_bound else (hi_bound - 1 - start) // step + 1
    hi[0] = k if k < count else count
    if hi[0] < lo[0]:
        hi[0] = lo[0]


cdef inline void interior_columns(int OW, int W, int kw, int sw, int pl, int dw, int *olo,
                                  int *ohi) noexcept nogil:
    """[olo, ohi): the output columns whose whole window (kw taps dw apart, starting at
    ow·sw − pl) lies inside [0, W), so they need no bounds work."""
    span_inside(-pl, sw, OW, 0, W - (kw - 1) * dw, olo, ohi)
