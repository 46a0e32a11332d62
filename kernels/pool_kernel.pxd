# The pooling kernels of kernels/pool_kernel.h (one instance per instruction set) through the
# dispatch table (simd.h; a module using these calls simd.use_simd() at import).

cdef extern from "simd.h" nogil:
    ctypedef struct ember_pool_window:
        long H, W, OH, OW
        long kh, kw, sh, sw, dh, dw
        long pt, pl, pb, pr
        int count_include_pad
    # `planes` consecutive planes per call (a thread's share)
    void ember_max_pool_planes(const float *x, float *y, long planes, const ember_pool_window *g)
    void ember_avg_pool_planes(const float *x, float *y, long planes, const ember_pool_window *g)
    void ember_global_pool_rows(const float *x, float *y, long rows, long L, int is_max)
    void ember_max_pool_grad_planes(const float *dy, const float *x, float *dx, long planes,
                                    const ember_pool_window *g)
    void ember_avg_pool_grad_planes(const float *dy, float *dx, long planes,
                                    const ember_pool_window *g)


cdef inline ember_pool_window pool_window(long H, long W, long OH, long OW, long kh, long kw,
                                          long sh, long sw, long pt, long pl, long pb, long pr,
                                          long dh, long dw, bint count_include_pad) noexcept nogil:
    cdef ember_pool_window g
    g.H = H; g.W = W; g.OH = OH; g.OW = OW; g.kh = kh; g.kw = kw; g.sh = sh; g.sw = sw
    g.dh = dh; g.dw = dw; g.pt = pt; g.pl = pl; g.pb = pb; g.pr = pr
    g.count_include_pad = count_include_pad
    return g


cdef inline long share_start(long items, int t, int teams) noexcept nogil:
    """The first of thread t's items when `items` split into `teams` contiguous shares that
    differ by one at most (thread t has [share_start(t), share_start(t + 1)))."""
    return items // teams * t + min(t, items % teams)
