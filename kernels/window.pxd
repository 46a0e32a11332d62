# Which taps of a strided window lie inside a bound (kernels/window.h, shared with the pooling
# template), and the work estimate the windowed kernels give threads_for. 64-bit throughout: a
# pool's window may reach past 2^31 (pads, strides and dilations each fit an int32, their sums
# need not), and the convolutions' callers have proven their geometry fits an int32 anyway.

cdef extern from "window.h" nogil:
    # [lo, hi): the k in [0, count) with lo_bound <= start + k·step < hi_bound (step > 0);
    # lo == hi when there is none
    void span_inside "ember_span_inside"(long start, long step, long count, long lo_bound,
                                         long hi_bound, long *lo, long *hi)
    # [olo, ohi): the output columns whose whole window (kw taps dw apart, starting at
    # ow·sw − pl) lies inside [0, W), so they need no bounds work
    void interior_columns "ember_interior_columns"(long OW, long W, long kw, long sw, long pl,
                                                   long dw, long *olo, long *ohi)


cdef inline long window_work(long windows, long taps, long extra) noexcept nogil:
    """windows × taps + extra (all ≥ 0), saturated at 2^63 − 1: the work estimate threads_for
    takes, for windows whose tap counts may be huge."""
    cdef long most = 0x7FFFFFFFFFFFFFFF
    if taps > 0 and windows > (most - extra) // taps:
        return most
    return windows * taps + extra
