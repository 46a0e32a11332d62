"""Max / average pooling over NCHW planes and global pooling over rows: the arguments are checked
here, the planes (or rows) split over the threads in contiguous shares, each share pooled by one
call of the dispatched kernels of kernels/pool_kernel.h."""
from cpython.pycapsule cimport PyCapsule_New
from libc.math cimport INFINITY

from kernels.native_step cimport ember_native_step, EMBER_NATIVE_CAPSULE
from kernels.parallel cimport threads_for, ember_parallel, parallel_items
from kernels.pool_kernel cimport (ember_pool_window, pool_window, share_start,
                                  ember_max_pool_planes, ember_avg_pool_planes,
                                  ember_global_pool_rows)
from kernels.simd cimport use_simd
from kernels.window cimport window_work

use_simd()


# One pooling call with its arguments resolved (see PoolStep).
cdef enum PoolKind:
    POOL_MAX, POOL_AVG, POOL_GLOBAL

cdef struct PoolCall:
    int kind
    const float *x
    float *y
    long planes, in_plane, out_plane   # windowed pools: N·C planes of H·W into OH·OW
    long rows, row_len                 # global pools: rows of H·W
    bint is_max
    ember_pool_window g
    int nthreads
    bint empty


cdef void window_share_task(void *ctx, long t, int worker) noexcept nogil:
    """Share t of the planes, one kernel call over them."""
    cdef PoolCall *c = <PoolCall *> ctx
    cdef long p = share_start(c.planes, <int> t, c.nthreads)
    cdef long q = share_start(c.planes, <int> t + 1, c.nthreads)
    if q > p:
        if c.kind == POOL_MAX:
            ember_max_pool_planes(c.x + p * c.in_plane, c.y + p * c.out_plane, q - p, &c.g)
        else:
            ember_avg_pool_planes(c.x + p * c.in_plane, c.y + p * c.out_plane, q - p, &c.g)


cdef void global_share_task(void *ctx, long t, int worker) noexcept nogil:
    """Share t of a global pool's rows."""
    cdef PoolCall *c = <PoolCall *> ctx
    cdef long per = (c.rows + c.nthreads - 1) // c.nthreads
    if t * per < c.rows:
        ember_global_pool_rows(c.x + t * per * c.row_len, c.y + t * per,
                               min(per, c.rows - t * per), c.row_len, c.is_max)


cdef int pool_run(PoolCall *c) noexcept nogil:
    """The pooling itself, GIL-free; always 0. Each thread's share is one kernel call."""
    cdef long r
    if c.empty:
        return 0
    if c.kind == POOL_MAX or c.kind == POOL_AVG:
        ember_parallel(c.nthreads, c.nthreads, window_share_task, c)
    elif c.row_len == 0:
        for r in range(c.rows):
            c.y[r] = -INFINITY if c.is_max else 0.0
    else:
        ember_parallel(c.nthreads, c.nthreads, global_share_task, c)
    return 0


cdef int pool_native(void *state) noexcept nogil:
    return pool_run(<PoolCall *> state)


cdef class PoolStep:
    """A pooling call with its arguments resolved once (bind time): calling it, or running it
    inside a ``plan.PlanRunner`` with no Python in between. Made by ``max_pool2d_step``,
    ``avg_pool2d_step`` and ``global_pool_step``; holds its arrays."""
    cdef PoolCall call
    cdef ember_native_step native
    cdef object keep

    def __cinit__(self):
        self.call.empty = True
        self.native.fn = pool_native
        self.native.state = &self.call

    def __call__(self):
        with nogil:
            pool_run(&self.call)

    @property
    def _native(self):
        """A capsule holding the step's C entry point, for plan.PlanRunner."""
        return PyCapsule_New(&self.native, EMBER_NATIVE_CAPSULE, NULL)


cdef PoolStep windowed_step(int kind, float[:, :, :, ::1] x, float[:, :, :, ::1] y, long kh,
                            long kw, long stride_h, long stride_w, long pad_top, long pad_left,
                            long pad_bottom, long pad_right, long dil_h, long dil_w,
                            bint count_include_pad, int nthreads):
    cdef PoolStep step = PoolStep()
    cdef PoolCall *c = &step.call
    cdef long N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef long OH = y.shape[2], OW = y.shape[3]
    step.keep = (x, y)
    c.kind = kind
    c.empty = N * C == 0 or OH * OW == 0
    if c.empty:
        return step
    c.g = pool_window(H, W, OH, OW, kh, kw, stride_h, stride_w, pad_top, pad_left, pad_bottom,
                      pad_right, dil_h, dil_w, count_include_pad)
    c.x, c.y = &x[0, 0, 0, 0], &y[0, 0, 0, 0]
    c.planes, c.in_plane, c.out_plane = N * C, H * W, OH * OW
    c.nthreads = threads_for(nthreads, window_work(N * C * OH * OW, min(kh, H) * min(kw, W), 0))
    return step


def max_pool2d_step(float[:, :, :, ::1] x, float[:, :, :, ::1] y, long kh, long kw,
                    long stride_h, long stride_w, long pad_top, long pad_left, long dil_h,
                    long dil_w, int nthreads):
    """Padded positions never win (an all-padding window gives -inf); a NaN wins."""
    return windowed_step(POOL_MAX, x, y, kh, kw, stride_h, stride_w, pad_top, pad_left, 0, 0,
                         dil_h, dil_w, False, nthreads)


def avg_pool2d_step(float[:, :, :, ::1] x, float[:, :, :, ::1] y, long kh, long kw,
                    long stride_h, long stride_w, long pad_top, long pad_left, long pad_bottom,
                    long pad_right, bint count_include_pad, int nthreads):
    return windowed_step(POOL_AVG, x, y, kh, kw, stride_h, stride_w, pad_top, pad_left,
                         pad_bottom, pad_right, 1, 1, count_include_pad, nthreads)


def global_pool_step(float[:, ::1] x, float[::1] y, bint is_max, int nthreads):
    """y[r] = max (a NaN wins) or mean of row r (rows are N·C planes of H·W)."""
    cdef PoolStep step = PoolStep()
    cdef PoolCall *c = &step.call
    step.keep = (x, y)
    c.kind, c.is_max = POOL_GLOBAL, is_max
    c.rows, c.row_len = x.shape[0], x.shape[1]
    c.empty = c.rows == 0
    if c.empty:
        return step
    c.y = &y[0]
    c.x = &x[0, 0] if c.row_len else NULL
    c.nthreads = threads_for(nthreads, c.rows * c.row_len) if c.row_len else 1
    return step


def max_pool2d(x, y, long kh, long kw, long stride_h, long stride_w, long pad_top,
               long pad_left, long dil_h, long dil_w, int nthreads):
    """Padded positions never win (an all-padding window gives -inf); a NaN wins."""
    max_pool2d_step(x, y, kh, kw, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w,
                    nthreads)()


def avg_pool2d(x, y, long kh, long kw, long stride_h, long stride_w, long pad_top,
               long pad_left, long pad_bottom, long pad_right, bint count_include_pad,
               int nthreads):
    avg_pool2d_step(x, y, kh, kw, stride_h, stride_w, pad_top, pad_left, pad_bottom, pad_right,
                    count_include_pad, nthreads)()


def global_pool(x, y, bint is_max, int nthreads):
    """y[r] = max (a NaN wins) or mean of row r (rows are N·C planes of H·W)."""
    global_pool_step(x, y, is_max, nthreads)()
