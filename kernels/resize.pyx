"""Nearest and bilinear 2-D resize of the last two axes of float32 planes (ONNX Resize).

Resizing is separable, so each output row and column gets its source taps once, at bind time:
an index per axis (nearest) or two indices and two weights (linear), computed in double with
graph/ops/resize.py's formulas in the same order, so the taps are exactly the reference's.
The run then only gathers: parallel over planes (one task per (n, c) plane). An integer-factor
nearest upsample (every input pixel an f×f block, as YOLO's nn.Upsample(scale_factor=2) exports)
skips the tables: each input row is widened once and the widened row copied f − 1 times."""
from cpython.pycapsule cimport PyCapsule_New
from libc.math cimport ceil, floor
from libc.string cimport memcpy

import numpy as np

from kernels.native_step cimport ember_native_step, EMBER_NATIVE_CAPSULE
from kernels.parallel cimport threads_for, ember_parallel
from kernels.simd cimport use_simd

use_simd()

# coordinate_transformation_mode codes (graph/ops/resize.py's names, in COORDINATE_MODES order)
COORDINATE_MODES = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel",
                    "align_corners", "asymmetric")
NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")

cdef enum Coord:
    HALF_PIXEL, HALF_PIXEL_SYMMETRIC, PYTORCH_HALF_PIXEL, ALIGN_CORNERS, ASYMMETRIC

cdef enum Rounding:
    ROUND_PREFER_FLOOR, ROUND_PREFER_CEIL, FLOOR, CEIL


cdef double source_coordinate(int mode, long o, long n_out, long n_in, double scale) noexcept:
    """Input coordinate of output index o along one axis (graph/ops/resize.py: _source_coords,
    the same operations in the same order, so the same doubles)."""
    cdef double y = <double> o
    cdef double out_f = scale * n_in          # the un-floored output length
    cdef double offset
    if mode == ALIGN_CORNERS:
        return 0.0 if out_f == 1 else y * (n_in - 1) / (out_f - 1)
    if mode == ASYMMETRIC:
        return y / scale
    if mode == PYTORCH_HALF_PIXEL:
        return 0.0 if out_f == 1 else (y + 0.5) / scale - 0.5
    if mode == HALF_PIXEL:
        return (y + 0.5) / scale - 0.5
    offset = n_in / 2.0 * (1 - n_out / out_f)   # half_pixel_symmetric
    return offset + (y + 0.5) / scale - 0.5


cdef long clamp_index(double v, long n) noexcept:
    """v clamped to [0, n − 1] before the cast (a huge coordinate must not overflow it)."""
    if v < 0:
        return 0
    if v > n - 1:
        return n - 1
    return <long> v


cdef double round_nearest(int rounding, double x) noexcept:
    if rounding == ROUND_PREFER_FLOOR:
        return ceil(x - 0.5)
    if rounding == ROUND_PREFER_CEIL:
        return floor(x + 0.5)
    if rounding == FLOOR:
        return floor(x)
    return ceil(x)


def nearest_taps(int mode, int rounding, long n_out, long n_in, double scale):
    """The source index of every output index along one axis (int64)."""
    idx = np.empty(n_out, np.int64)
    cdef long[::1] iv = idx
    cdef long o
    for o in range(n_out):
        iv[o] = clamp_index(round_nearest(rounding,
                                          source_coordinate(mode, o, n_out, n_in, scale)), n_in)
    return idx


def linear_taps(int mode, long n_out, long n_in, double scale):
    """(i0, i1, w0, w1) along one axis: output o = w0[o]·x[i0[o]] + w1[o]·x[i1[o]], the two
    taps of _taps in graph/ops/resize.py (left tap at ceil(x) − 1, ratio in (0, 1]), indices
    clamped to the axis. A tap of weight 0 reads its neighbour's pixel instead, so an exact
    coordinate never multiplies another pixel by 0 (an inf there would make a NaN)."""
    i0, i1 = np.empty(n_out, np.int64), np.empty(n_out, np.int64)
    w0, w1 = np.empty(n_out, np.float32), np.empty(n_out, np.float32)
    cdef long[::1] a = i0, b = i1
    cdef float[::1] wa = w0, wb = w1
    cdef long o
    cdef double x, base, ratio
    for o in range(n_out):
        x = source_coordinate(mode, o, n_out, n_in, scale)
        base = ceil(x) - 1
        ratio = x - base
        a[o], b[o] = clamp_index(base, n_in), clamp_index(base + 1, n_in)
        wa[o], wb[o] = <float> (1 - ratio), <float> ratio
        if wa[o] == 0:
            a[o] = b[o]
        if wb[o] == 0:
            b[o] = a[o]
    return i0, i1, w0, w1


# ---- the kernel ---------------------------------------------------------------------------------
cdef enum ResizeKind:
    RESIZE_NEAREST, RESIZE_NEAREST_BLOCKS, RESIZE_LINEAR

cdef struct ResizeCall:
    int kind
    const float *x
    float *y
    long planes, H, W, OH, OW
    const long *iy0             # per output row: source row (nearest), or the upper tap (linear)
    const long *iy1             # linear: the lower tap
    const float *wy0
    const float *wy1
    const long *ix0             # per output column, as the rows
    const long *ix1
    const float *wx0
    const float *wx1
    long fy, fx                 # RESIZE_NEAREST_BLOCKS: the integer factors
    int nthreads
    bint empty


cdef inline void widen_row(const float *src, float *dst, long W, long f) noexcept nogil:
    """dst[i·f + k] = src[i] for k < f: the factor-2 loop written out so it vectorises."""
    cdef long i, k
    if f == 2:
        for i in range(W):
            dst[2 * i] = src[i]
            dst[2 * i + 1] = src[i]
    else:
        for i in range(W):
            for k in range(f):
                dst[i * f + k] = src[i]


cdef void nearest_blocks_plane(const ResizeCall *c, const float *xp, float *yp) noexcept nogil:
    """Integer-factor upsample: each input row widened into its first output row, then copied."""
    cdef long h, k
    cdef float *row
    for h in range(c.H):
        row = yp + h * c.fy * c.OW
        widen_row(xp + h * c.W, row, c.W, c.fx)
        for k in range(1, c.fy):
            memcpy(row + k * c.OW, row, c.OW * sizeof(float))


cdef void nearest_plane(const ResizeCall *c, const float *xp, float *yp) noexcept nogil:
    """Any nearest resize: a gathered row per source row; repeated source rows are copied."""
    cdef long oy, ox
    cdef const float *src
    cdef float *dst
    for oy in range(c.OH):
        dst = yp + oy * c.OW
        if oy > 0 and c.iy0[oy] == c.iy0[oy - 1]:
            memcpy(dst, dst - c.OW, c.OW * sizeof(float))
            continue
        src = xp + c.iy0[oy] * c.W
        for ox in range(c.OW):
            dst[ox] = src[c.ix0[ox]]


cdef void linear_plane(const ResizeCall *c, const float *xp, float *yp) noexcept nogil:
    """Bilinear: y[oy, ox] = wy0·(wx0·a[ix0] + wx1·a[ix1]) + wy1·(wx0·b[ix0] + wx1·b[ix1]) with
    a, b the two source rows of output row oy."""
    cdef long oy, ox
    cdef const float *a
    cdef const float *b
    cdef float *dst
    cdef float u, v
    for oy in range(c.OH):
        a, b = xp + c.iy0[oy] * c.W, xp + c.iy1[oy] * c.W
        u, v = c.wy0[oy], c.wy1[oy]
        dst = yp + oy * c.OW
        for ox in range(c.OW):
            dst[ox] = u * (c.wx0[ox] * a[c.ix0[ox]] + c.wx1[ox] * a[c.ix1[ox]]) + \
                      v * (c.wx0[ox] * b[c.ix0[ox]] + c.wx1[ox] * b[c.ix1[ox]])


cdef void resize_plane_task(void *ctx, long p, int worker) noexcept nogil:
    """Plane p (an (n, c) plane of the leading axes)."""
    cdef const ResizeCall *c = <const ResizeCall *> ctx
    cdef const float *xp = c.x + p * c.H * c.W
    cdef float *yp = c.y + p * c.OH * c.OW
    if c.kind == RESIZE_NEAREST_BLOCKS:
        nearest_blocks_plane(c, xp, yp)
    elif c.kind == RESIZE_NEAREST:
        nearest_plane(c, xp, yp)
    else:
        linear_plane(c, xp, yp)


cdef int resize_run(ResizeCall *c) noexcept nogil:
    """The resize itself, GIL-free; always 0."""
    if not c.empty:
        ember_parallel(c.nthreads, c.planes, resize_plane_task, c)
    return 0


cdef int resize_native(void *state) noexcept nogil:
    return resize_run(<ResizeCall *> state)


cdef class ResizeStep:
    """A resize with its taps resolved once (bind time): calling it, or running it inside a
    ``plan.PlanRunner`` with no Python in between. Made by ``resize_step``; holds its arrays."""
    cdef ResizeCall call
    cdef ember_native_step native
    cdef object keep

    def __cinit__(self):
        self.call.empty = True
        self.native.fn = resize_native
        self.native.state = &self.call

    def __call__(self):
        with nogil:
            resize_run(&self.call)

    @property
    def kind(self):
        """'nearest', 'nearest_blocks' (the integer-factor path) or 'linear' — for tests."""
        return ("nearest", "nearest_blocks", "linear")[self.call.kind]

    @property
    def _native(self):
        """A capsule holding the step's C entry point, for plan.PlanRunner."""
        return PyCapsule_New(&self.native, EMBER_NATIVE_CAPSULE, NULL)


cdef const long *long_ptr(long[::1] a):
    return &a[0] if a.shape[0] else NULL


cdef const float *float_ptr(float[::1] a):
    return &a[0] if a.shape[0] else NULL


def resize_step(float[:, :, ::1] x, float[:, :, ::1] y, str mode, str coordinate_mode,
                str nearest_mode, double scale_h, double scale_w, int nthreads):
    """Resize planes x (P, H, W) into y (P, OH, OW); mode 'nearest' or 'linear', the ONNX
    coordinate_transformation_mode (COORDINATE_MODES) and nearest_mode (NEAREST_MODES), the
    per-axis scale factors as graph/ops/resize.py's _output_plan gives them."""
    cdef ResizeStep step = ResizeStep()
    cdef ResizeCall *c = &step.call
    cdef long P = x.shape[0], H = x.shape[1], W = x.shape[2], OH = y.shape[1], OW = y.shape[2]
    if mode not in ("nearest", "linear"):
        raise ValueError(f"resize mode {mode!r} is not 'nearest' or 'linear'")
    if coordinate_mode not in COORDINATE_MODES:
        raise ValueError(f"coordinate mode {coordinate_mode!r} is not one of {COORDINATE_MODES}")
    if nearest_mode not in NEAREST_MODES:
        raise ValueError(f"nearest mode {nearest_mode!r} is not one of {NEAREST_MODES}")
    if y.shape[0] != P:
        raise ValueError(f"x has {P} planes, y {y.shape[0]}")
    if P * OH * OW and not H * W:
        raise ValueError("cannot resize an empty plane into a non-empty one")
    if not scale_h > 0 or not scale_w > 0:
        raise ValueError(f"scales ({scale_h}, {scale_w}) must be positive")
    c.empty = P * OH * OW == 0
    step.keep = [x, y]
    if c.empty:
        return step
    c.x, c.y = &x[0, 0, 0], &y[0, 0, 0]
    c.planes, c.H, c.W, c.OH, c.OW = P, H, W, OH, OW
    cdef int coord = COORDINATE_MODES.index(coordinate_mode)
    cdef int rounding = NEAREST_MODES.index(nearest_mode)
    if mode == "nearest":
        rows = nearest_taps(coord, rounding, OH, H, scale_h)
        cols = nearest_taps(coord, rounding, OW, W, scale_w)
        step.keep += [rows, cols]
        c.iy0, c.ix0 = long_ptr(rows), long_ptr(cols)
        c.kind = RESIZE_NEAREST
        if OH % H == 0 and OW % W == 0 and \
                np.array_equal(rows, np.arange(OH) // (OH // H)) and \
                np.array_equal(cols, np.arange(OW) // (OW // W)):
            c.kind = RESIZE_NEAREST_BLOCKS
            c.fy, c.fx = OH // H, OW // W
        work = P * OH * OW
    else:
        rows = linear_taps(coord, OH, H, scale_h)
        cols = linear_taps(coord, OW, W, scale_w)
        step.keep += [rows, cols]
        c.iy0, c.iy1 = long_ptr(rows[0]), long_ptr(rows[1])
        c.wy0, c.wy1 = float_ptr(rows[2]), float_ptr(rows[3])
        c.ix0, c.ix1 = long_ptr(cols[0]), long_ptr(cols[1])
        c.wx0, c.wx1 = float_ptr(cols[2]), float_ptr(cols[3])
        c.kind = RESIZE_LINEAR
        work = 4 * P * OH * OW
    c.nthreads = threads_for(nthreads, work)
    return step


def resize(x, y, str mode, str coordinate_mode, str nearest_mode, double scale_h,
           double scale_w, int nthreads):
    """resize_step(...) run once."""
    resize_step(x, y, mode, coordinate_mode, nearest_mode, scale_h, scale_w, nthreads)()
