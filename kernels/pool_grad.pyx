"""Gradients of max / average / global-average pooling over NCHW planes; each thread one call of
the dispatched kernels of kernels/pool_kernel.h on a contiguous share of whole planes, so
overlapping windows accumulate into a plane only one thread writes."""
from cpython.pycapsule cimport PyCapsule_New

from kernels.native_step cimport ember_native_step, EMBER_NATIVE_CAPSULE
from kernels.parallel cimport threads_for, ember_parallel
from kernels.pool_kernel cimport (ember_pool_window, pool_window, share_start,
                                  ember_max_pool_grad_planes, ember_avg_pool_grad_planes)
from kernels.simd cimport use_simd
from kernels.window cimport window_work

use_simd()


cdef enum PoolGradKind:
    GRAD_MAX, GRAD_AVG, GRAD_GLOBAL_AVG

cdef struct PoolGradCall:
    int kind
    const float *dy
    const float *x             # max pooling's input (its argmax is recomputed)
    float *dx
    long planes, in_plane, out_plane   # N·C planes of H·W (dx, x) and OH·OW (dy)
    ember_pool_window g
    int nthreads
    bint empty


cdef void windowed_share_task(void *ctx, long t, int worker) noexcept nogil:
    """Share t of c.nthreads: one call of the plane kernel on a contiguous run of whole planes."""
    cdef const PoolGradCall *c = <const PoolGradCall *> ctx
    cdef long p = share_start(c.planes, <int> t, c.nthreads)
    cdef long q = share_start(c.planes, <int> t + 1, c.nthreads)
    if q <= p:
        return
    if c.kind == GRAD_MAX:
        ember_max_pool_grad_planes(c.dy + p * c.out_plane, c.x + p * c.in_plane,
                                   c.dx + p * c.in_plane, q - p, &c.g)
    else:
        ember_avg_pool_grad_planes(c.dy + p * c.out_plane, c.dx + p * c.in_plane, q - p, &c.g)


cdef void global_avg_plane_task(void *ctx, long p, int worker) noexcept nogil:
    """Plane p: every pixel gets dy[p] / pixels."""
    cdef const PoolGradCall *c = <const PoolGradCall *> ctx
    cdef float share = c.dy[p] / c.in_plane
    cdef long i
    for i in range(c.in_plane):
        c.dx[p * c.in_plane + i] = share


cdef int pool_grad_run(const PoolGradCall *c) noexcept nogil:
    """Each thread one call on its contiguous share of the planes; always 0."""
    if c.empty:
        return 0
    if c.kind == GRAD_MAX or c.kind == GRAD_AVG:
        ember_parallel(c.nthreads, c.nthreads, windowed_share_task, <void *> c)
    else:
        ember_parallel(c.nthreads, c.planes, global_avg_plane_task, <void *> c)
    return 0


cdef int pool_grad_native(void *state) noexcept nogil:
    return pool_grad_run(<const PoolGradCall *> state)


cdef class PoolGradStep:
    """A pooling gradient resolved once (bind time): callable, or run by plan.PlanRunner
    without the GIL. Made by ``max_pool2d_grad_step``, ``avg_pool2d_grad_step`` and
    ``global_avg_pool_grad_step``; holds its arrays."""
    cdef PoolGradCall call
    cdef ember_native_step native
    cdef object keep

    def __cinit__(self):
        self.call.empty = True
        self.native.fn = pool_grad_native
        self.native.state = &self.call

    def __call__(self):
        with nogil:
            pool_grad_run(&self.call)

    @property
    def _native(self):
        """A capsule holding the step's C entry point, for plan.PlanRunner."""
        return PyCapsule_New(&self.native, EMBER_NATIVE_CAPSULE, NULL)


cdef PoolGradStep windowed_grad_step(int kind, float[:, :, :, ::1] dy, x, float[:, :, :, ::1] dx,
                                     long kh, long kw, long stride_h, long stride_w,
                                     long pad_top, long pad_left, long pad_bottom, long pad_right,
                                     long dil_h, long dil_w, bint count_include_pad,
                                     int nthreads):
    cdef PoolGradStep step = PoolGradStep()
    cdef PoolGradCall *c = &step.call
    cdef float[:, :, :, ::1] xv
    cdef long N = dx.shape[0], C = dx.shape[1], H = dx.shape[2], W = dx.shape[3]
    cdef long OH = dy.shape[2], OW = dy.shape[3]
    if dy.shape[0] != N or dy.shape[1] != C:
        raise ValueError("pool gradient: dy and dx differ in batch or channels")
    step.keep = (dy, x, dx)
    c.kind = kind
    c.empty = N * C == 0 or H * W == 0
    if c.empty:
        return step
    if kind == GRAD_MAX:
        xv = x
        if xv.shape[0] != N or xv.shape[1] != C or xv.shape[2] != H or xv.shape[3] != W:
            raise ValueError("max pool gradient: x and dx differ in shape")
        c.x = &xv[0, 0, 0, 0]
    c.g = pool_window(H, W, OH, OW, kh, kw, stride_h, stride_w, pad_top, pad_left, pad_bottom,
                      pad_right, dil_h, dil_w, count_include_pad)
    c.dy = &dy[0, 0, 0, 0] if OH * OW > 0 else NULL
    c.dx = &dx[0, 0, 0, 0]
    c.planes, c.in_plane, c.out_plane = N * C, H * W, OH * OW
    c.nthreads = threads_for(nthreads, window_work(N * C * OH * OW, min(kh, H) * min(kw, W),
                                                   N * C * H * W))
    return step


def max_pool2d_grad_step(dy, x, dx, long kh, long kw, long stride_h, long stride_w,
                         long pad_top, long pad_left, long dil_h, long dil_w, int nthreads):
    """The step of ``max_pool2d_grad``."""
    return windowed_grad_step(GRAD_MAX, dy, x, dx, kh, kw, stride_h, stride_w, pad_top,
                              pad_left, 0, 0, dil_h, dil_w, False, nthreads)


def avg_pool2d_grad_step(dy, dx, long kh, long kw, long stride_h, long stride_w, long pad_top,
                         long pad_left, long pad_bottom, long pad_right, long dil_h, long dil_w,
                         bint count_include_pad, int nthreads):
    """The step of ``avg_pool2d_grad``."""
    return windowed_grad_step(GRAD_AVG, dy, None, dx, kh, kw, stride_h, stride_w, pad_top,
                              pad_left, pad_bottom, pad_right, dil_h, dil_w, count_include_pad,
                              nthreads)


def global_avg_pool_grad_step(float[::1] dy, float[:, ::1] dx, int nthreads):
    """The step of ``global_avg_pool_grad``."""
    cdef PoolGradStep step = PoolGradStep()
    cdef PoolGradCall *c = &step.call
    if dy.shape[0] != dx.shape[0]:
        raise ValueError("global pool gradient: dy needs one value per row of dx")
    step.keep = (dy, dx)
    c.kind = GRAD_GLOBAL_AVG
    c.empty = dx.shape[0] == 0 or dx.shape[1] == 0
    if c.empty:
        return step
    c.dy, c.dx = &dy[0], &dx[0, 0]
    c.planes, c.in_plane = dx.shape[0], dx.shape[1]
    c.nthreads = threads_for(nthreads, c.planes * c.in_plane)
    return step


def max_pool2d_grad(dy, x, dx, long kh, long kw, long stride_h, long stride_w, long pad_top,
                    long pad_left, long dil_h, long dil_w, int nthreads):
    """dx (N, C, H, W) from dy (N, C, OH, OW) and the pooled input x; the argmax is recomputed
    from x: each window's dY goes to its first maximum in row-major window order (PyTorch's tie
    rule), a NaN beats any number and the first NaN stays. ceil_mode only changes OH/OW, which
    come from dy."""
    max_pool2d_grad_step(dy, x, dx, kh, kw, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w,
                         nthreads)()


def avg_pool2d_grad(dy, dx, long kh, long kw, long stride_h, long stride_w, long pad_top,
                    long pad_left, long pad_bottom, long pad_right, long dil_h, long dil_w,
                    bint count_include_pad, int nthreads):
    """dx (N, C, H, W) from dy (N, C, OH, OW): each window spreads dY/count over its in-image
    taps, count exactly avg_pool2d's / ONNX AveragePool's divisor (the ceil_mode overhang past
    the end pads never counts)."""
    avg_pool2d_grad_step(dy, dx, kh, kw, stride_h, stride_w, pad_top, pad_left, pad_bottom,
                         pad_right, dil_h, dil_w, count_include_pad, nthreads)()


def global_avg_pool_grad(dy, dx, int nthreads):
    """dx[r, :] = dy[r] / L for rows r = (n, c) of L = H·W pixels."""
    global_avg_pool_grad_step(dy, dx, nthreads)()
