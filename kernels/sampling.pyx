"""GridSample forward and backward (``graph/ops/sampling.py`` is the definition) on float32,
C-contiguous arrays viewed as 3-D: X (N, C, D, H, W), grid (N, Do, Ho, Wo, r), Y (N, C, Do, Ho,
Wo). A 2-D sample is the 3-D one with D = Do = 1 and r = 2: its depth axis has one tap of weight
1. ``axis_taps`` computes one axis's taps (index, weight, d weight / d position) and d position /
d grid for every mode and padding; forward and both gradients combine them the same way
(``point_taps``), so the three loops cannot disagree on a tap."""
from libc.math cimport fabsf, floorf, fmodf, lrintf
from libc.string cimport memset

from kernels.parallel cimport threads_for, ember_parallel
from kernels.simd cimport use_simd

use_simd()

cdef enum:
    MODE_LINEAR = 0
    MODE_NEAREST = 1
    MODE_CUBIC = 2
    PAD_ZEROS = 0
    PAD_BORDER = 1
    PAD_REFLECTION = 2
    MAX_POINT_TAPS = 64      # 4 taps per axis, 3 axes
    CHANNEL_BLOCK = 8        # channels one dX task scatters into per grid point
    ZERO_CHUNK = 16384       # floats one task of a zero fill clears

MODES = {"linear": MODE_LINEAR, "nearest": MODE_NEAREST, "cubic": MODE_CUBIC}
PADDING_MODES = {"zeros": PAD_ZEROS, "border": PAD_BORDER, "reflection": PAD_REFLECTION}

# Positions stay within FAR pixels of the origin: farther ones (and NaN) left after padding are
# parked at PARKED, outside the image on every tap; a cubic position is clamped to ±FAR first
# (graph/ops/sampling.py: FAR, PARKED).
cdef float FAR = 1073741824.0
cdef float PARKED = -100.0
cdef float CUBIC_A = -0.75


cdef struct AxisTaps:
    int n
    long index[4]        # -1: outside the image (reads zero)
    float weight[4]
    float slope[4]       # d weight / d position
    float dpos           # d position / d grid value


cdef struct PointTaps:
    int n
    long offset[MAX_POINT_TAPS]       # into one (D, H, W) plane
    float weight[MAX_POINT_TAPS]
    float slope[3][MAX_POINT_TAPS]    # d weight / d position of axis (W, H, D)


cdef inline float unnormalize(float g, long size, bint align) noexcept nogil:
    if align:
        return (g + <float> 1) / <float> 2 * <float> (size - 1)
    return ((g + <float> 1) * <float> size - <float> 1) / <float> 2


cdef inline float reflect(float x, float twice_low, float twice_high, float *grad) noexcept nogil:
    """x reflected by the borders twice_low / 2 and twice_high / 2 until inside; grad *= ±1."""
    cdef float low, span, extra, flips, sign = 1
    if twice_low == twice_high:
        grad[0] = 0
        return 0
    low = twice_low / <float> 2
    span = (twice_high - twice_low) / <float> 2
    x = x - low
    if x < 0:
        sign = -1
        x = -x
    extra = fmodf(x, span)
    flips = floorf(x / span)
    if fmodf(flips, 2) == 0:
        grad[0] = grad[0] * sign
        return extra + low
    grad[0] = -grad[0] * sign
    return span - extra + low


cdef inline float pad_coordinate(float x, long size, int padding, bint align,
                                 float *grad) noexcept nogil:
    """x moved into [0, size - 1] by ``padding`` (zeros: unchanged); grad *= dx' / dx."""
    if padding == PAD_ZEROS:
        return x
    if padding == PAD_REFLECTION:
        if align:
            x = reflect(x, 0, <float> (2 * (size - 1)), grad)
        else:
            x = reflect(x, -1, <float> (2 * size - 1), grad)
    if x > 0 and x < <float> (size - 1):
        return x
    grad[0] = 0
    if x > 0:
        return <float> (size - 1)
    if x <= 0:
        return 0
    return x      # NaN: parked by the caller


cdef inline float parked(float x) noexcept nogil:
    if fabsf(x) < FAR:
        return x
    return PARKED


cdef inline float floor_near(float x) noexcept nogil:
    """floorf(x) for |x| ≤ FAR + 2 (positions are parked or clamped before), in a cast and a
    compare instead of the libm call the baseline instruction set needs for floorf."""
    cdef float t = <float> <long> x
    if t > x:
        return t - 1
    return t


cdef inline long tap_index(float where, long size) noexcept nogil:
    if where >= 0 and where <= <float> (size - 1):
        return <long> where
    return -1


cdef inline void cubic_weights(float t, float *w, float *s) noexcept nogil:
    """Keys-cubic weights of taps -1, 0, 1, 2 at fraction t, and their derivatives in t."""
    cdef float a = CUBIC_A, u
    u = t + 1
    w[0] = ((a * u - 5 * a) * u + 8 * a) * u - 4 * a
    s[0] = (3 * a * u - 10 * a) * u + 8 * a
    w[1] = ((a + 2) * t - (a + 3)) * t * t + 1
    s[1] = (3 * (a + 2) * t - 2 * (a + 3)) * t
    u = 1 - t
    w[2] = ((a + 2) * u - (a + 3)) * u * u + 1
    s[2] = -(3 * (a + 2) * u - 2 * (a + 3)) * u
    u = 2 - t
    w[3] = ((a * u - 5 * a) * u + 8 * a) * u - 4 * a
    s[3] = -((3 * a * u - 10 * a) * u + 8 * a)


cdef inline void axis_taps(float g, long size, int mode, int padding, bint align,
                           AxisTaps *taps) noexcept nogil:
    """The taps of one axis at normalised position g (see graph/ops/sampling.axis_taps)."""
    cdef float x = unnormalize(g, size, align)
    cdef float scale, grad = 1, base, t
    cdef int k
    if align:
        scale = <float> (size - 1) / <float> 2
    else:
        scale = <float> size / <float> 2
    if mode == MODE_CUBIC:
        taps.dpos = scale if fabsf(x) < FAR else 0
        if x != x:
            x = PARKED
            padding = PAD_ZEROS     # NaN: no side to pad from, every tap outside
        elif x > FAR:
            x = FAR
        elif x < -FAR:
            x = -FAR
        base = floor_near(x)
        t = x - base
        cubic_weights(t, taps.weight, taps.slope)
        taps.n = 4
        for k in range(4):
            taps.index[k] = tap_index(parked(pad_coordinate(base + <float> (k - 1), size,
                                                             padding, align, &grad)), size)
        return
    x = parked(pad_coordinate(x, size, padding, align, &grad))
    taps.dpos = grad * scale if x != PARKED else 0
    if mode == MODE_NEAREST:
        taps.n = 1
        taps.index[0] = tap_index(<float> lrintf(x), size)   # round half to even
        taps.weight[0] = 1
        taps.slope[0] = 0
        return
    base = floor_near(x)
    t = x - base
    taps.n = 2
    taps.index[0] = tap_index(base, size)
    taps.index[1] = tap_index(base + 1, size)
    taps.weight[0] = 1 - t
    taps.weight[1] = t
    taps.slope[0] = -1
    taps.slope[1] = 1


cdef inline void point_taps(const float *g, int r, long D, long H, long W, int mode,
                            int padding, bint align, PointTaps *p, float *dpos) noexcept nogil:
    """Every in-image tap of one grid point (g: its r values, x first), as plane offsets with
    their weight and per-axis slopes; dpos[axis] = d position / d g[axis]."""
    cdef AxisTaps tx, ty, tz
    cdef int i, j, k
    axis_taps(g[0], W, mode, padding, align, &tx)
    axis_taps(g[1], H, mode, padding, align, &ty)
    if r == 3:
        axis_taps(g[2], D, mode, padding, align, &tz)
    else:
        tz.n = 1
        tz.index[0] = 0
        tz.weight[0] = 1
        tz.slope[0] = 0
        tz.dpos = 0
    dpos[0], dpos[1], dpos[2] = tx.dpos, ty.dpos, tz.dpos
    p.n = 0
    for k in range(tz.n):
        if tz.index[k] < 0:
            continue
        for j in range(ty.n):
            if ty.index[j] < 0:
                continue
            for i in range(tx.n):
                if tx.index[i] < 0:
                    continue
                p.offset[p.n] = (tz.index[k] * H + ty.index[j]) * W + tx.index[i]
                p.weight[p.n] = tz.weight[k] * ty.weight[j] * tx.weight[i]
                p.slope[0][p.n] = tz.weight[k] * ty.weight[j] * tx.slope[i]
                p.slope[1][p.n] = tz.weight[k] * ty.slope[j] * tx.weight[i]
                p.slope[2][p.n] = tz.slope[k] * ty.weight[j] * tx.weight[i]
                p.n += 1


cdef long taps_per_point(int mode, int r) noexcept nogil:
    cdef long per_axis = 2
    if mode == MODE_NEAREST:
        per_axis = 1
    elif mode == MODE_CUBIC:
        per_axis = 4
    if r == 3:
        return per_axis * per_axis * per_axis
    return per_axis * per_axis


cdef struct Geometry:
    long N, C, D, H, W, Do, Ho, Wo, plane, points
    int r, mode, padding
    bint align


cdef Geometry geometry(x_shape, grid_shape, y_shape, int mode, int padding, bint align):
    """The sizes every loop reads, after checking X, grid and Y fit together (the binder
    checked them already: a mismatch here is a caller's bug, refused before any pointer is
    formed)."""
    cdef Geometry geo
    r = grid_shape[4]
    if r not in (2, 3) or (r == 2 and (x_shape[2] != 1 or grid_shape[1] != 1)) \
            or tuple(y_shape[:5]) != (x_shape[0], x_shape[1]) + tuple(grid_shape[1:4]) \
            or grid_shape[0] != x_shape[0]:
        raise ValueError(f"grid_sample: X {tuple(x_shape[:5])}, grid {tuple(grid_shape[:5])} "
                         f"and Y {tuple(y_shape[:5])} do not fit together")
    if mode not in (MODE_LINEAR, MODE_NEAREST, MODE_CUBIC) or \
            padding not in (PAD_ZEROS, PAD_BORDER, PAD_REFLECTION):
        raise ValueError(f"grid_sample: unknown mode {mode} or padding {padding}")
    geo.N, geo.C, geo.D, geo.H, geo.W = x_shape[0], x_shape[1], x_shape[2], x_shape[3], \
        x_shape[4]
    geo.Do, geo.Ho, geo.Wo = grid_shape[1], grid_shape[2], grid_shape[3]
    geo.plane, geo.points = geo.D * geo.H * geo.W, geo.Do * geo.Ho * geo.Wo
    geo.r, geo.mode, geo.padding, geo.align = r, mode, padding, align
    return geo


cdef inline void taps_at(const Geometry *geo, const float *grid, long n, long p, PointTaps *taps,
                         float *dpos) noexcept nogil:
    point_taps(grid + (n * geo.points + p) * geo.r, geo.r, geo.D, geo.H, geo.W, geo.mode,
               geo.padding, geo.align, taps, dpos)


cdef void forward_row(const Geometry *geo, const float *x, const float *grid, float *y,
                      long row) noexcept nogil:
    """Output row ``row`` of the N·Do·Ho rows: every channel of its Wo points."""
    cdef long n = row // (geo.Do * geo.Ho), wo, c, p, k
    cdef const float *xc
    cdef float acc
    cdef float dpos[3]
    cdef PointTaps taps
    for wo in range(geo.Wo):
        p = (row % (geo.Do * geo.Ho)) * geo.Wo + wo
        taps_at(geo, grid, n, p, &taps, dpos)
        for c in range(geo.C):
            xc = x + (n * geo.C + c) * geo.plane
            acc = 0
            for k in range(taps.n):
                acc = acc + taps.weight[k] * xc[taps.offset[k]]
            y[(n * geo.C + c) * geo.points + p] = acc


cdef void grad_input_task(const Geometry *geo, const float *dy, const float *grid, float *dx,
                          long task, long blocks) noexcept nogil:
    """Scatter into the planes of sample n, channels [c0, c1): every point of n once."""
    cdef long n = task // blocks, c, p, k
    cdef long c0 = (task % blocks) * CHANNEL_BLOCK
    cdef long c1 = min(c0 + CHANNEL_BLOCK, geo.C)
    cdef float g
    cdef float *dxc
    cdef float dpos[3]
    cdef PointTaps taps
    for p in range(geo.points):
        taps_at(geo, grid, n, p, &taps, dpos)
        for c in range(c0, c1):
            g = dy[(n * geo.C + c) * geo.points + p]
            dxc = dx + (n * geo.C + c) * geo.plane
            for k in range(taps.n):
                dxc[taps.offset[k]] += taps.weight[k] * g


cdef void grad_grid_row(const Geometry *geo, const float *dy, const float *x, const float *grid,
                        float *dgrid, long row) noexcept nogil:
    """dgrid of output row ``row``'s Wo points."""
    cdef long n = row // (geo.Do * geo.Ho), wo, c, p, k
    cdef int a
    cdef float g, v
    cdef const float *xc
    cdef float acc[3]
    cdef float dpos[3]
    cdef PointTaps taps
    for wo in range(geo.Wo):
        p = (row % (geo.Do * geo.Ho)) * geo.Wo + wo
        acc[0] = 0
        acc[1] = 0
        acc[2] = 0
        if geo.mode != MODE_NEAREST:
            taps_at(geo, grid, n, p, &taps, dpos)
            for c in range(geo.C):
                g = dy[(n * geo.C + c) * geo.points + p]
                xc = x + (n * geo.C + c) * geo.plane
                for k in range(taps.n):
                    v = g * xc[taps.offset[k]]
                    for a in range(geo.r):
                        acc[a] = acc[a] + v * taps.slope[a][k]
            for a in range(geo.r):
                acc[a] = acc[a] * dpos[a]
        for a in range(geo.r):
            dgrid[(n * geo.points + p) * geo.r + a] = acc[a]


# One call's arrays, shared by its tasks (rows of output points, or (sample, channel block)s).
cdef struct SampleJob:
    const Geometry *geo
    const float *x
    const float *dy
    const float *grid
    float *out               # y, dx or dgrid
    long blocks              # channel blocks per sample (dx)


cdef void forward_row_task(void *ctx, long row, int worker) noexcept nogil:
    cdef const SampleJob *j = <const SampleJob *> ctx
    forward_row(j.geo, j.x, j.grid, j.out, row)


cdef void grad_input_block_task(void *ctx, long task, int worker) noexcept nogil:
    cdef const SampleJob *j = <const SampleJob *> ctx
    grad_input_task(j.geo, j.dy, j.grid, j.out, task, j.blocks)


cdef void grad_grid_row_task(void *ctx, long row, int worker) noexcept nogil:
    cdef const SampleJob *j = <const SampleJob *> ctx
    grad_grid_row(j.geo, j.dy, j.x, j.grid, j.out, row)


cdef struct ZeroJob:
    float *p
    long n


cdef void zero_chunk_task(void *ctx, long chunk, int worker) noexcept nogil:
    """Clears chunk `chunk` of p: ZERO_CHUNK floats, the last one shorter."""
    cdef const ZeroJob *j = <const ZeroJob *> ctx
    cdef long first = chunk * ZERO_CHUNK
    memset(j.p + first, 0, sizeof(float) * min(<long> ZERO_CHUNK, j.n - first))


cdef void zero_fill(float *p, long n, int nthreads) noexcept nogil:
    """p[0:n] = 0, shared by threads_for(nthreads, n) threads in ZERO_CHUNK tasks (one task a
    float would cost a claim a float)."""
    cdef ZeroJob job
    job.p = p
    job.n = n
    ember_parallel(threads_for(nthreads, n), (n + ZERO_CHUNK - 1) // ZERO_CHUNK,
                   zero_chunk_task, &job)


def grid_sample_forward(float[:, :, :, :, ::1] x, float[:, :, :, :, ::1] grid,
                        float[:, :, :, :, ::1] out, int mode, int padding, bint align_corners,
                        int nthreads):
    """out[n, c, p] = Σ over p's taps of weight · x[n, c, tap]; threads over the N·Do·Ho
    output rows (an empty X samples zeros)."""
    cdef Geometry geo = geometry(x.shape, grid.shape, out.shape, mode, padding, align_corners)
    cdef long rows = geo.N * geo.Do * geo.Ho
    cdef long total = geo.N * geo.C * geo.points
    cdef SampleJob job
    if total == 0:
        return
    job.geo = &geo
    job.out = &out[0, 0, 0, 0, 0]
    if geo.plane == 0:
        with nogil:
            zero_fill(job.out, total, nthreads)
        return
    job.grid = &grid[0, 0, 0, 0, 0]
    job.x = &x[0, 0, 0, 0, 0]
    nthreads = threads_for(nthreads, total * taps_per_point(mode, geo.r))
    with nogil:
        ember_parallel(nthreads, rows, forward_row_task, &job)


def grid_sample_grad_input(float[:, :, :, :, ::1] dy, float[:, :, :, :, ::1] grid,
                           float[:, :, :, :, ::1] dx, int mode, int padding, bint align_corners,
                           int nthreads):
    """dx[n, c, tap] += weight · dy[n, c, p] over every point p and its taps. Race-free: a task
    owns the planes of one sample and one block of CHANNEL_BLOCK channels, and walks every
    point of that sample (its taps computed once per point for the whole block)."""
    cdef Geometry geo = geometry(dx.shape, grid.shape, dy.shape, mode, padding, align_corners)
    cdef long size = geo.N * geo.C * geo.plane
    cdef SampleJob job
    if size == 0:
        return
    job.geo = &geo
    job.blocks = (geo.C + CHANNEL_BLOCK - 1) // CHANNEL_BLOCK
    job.out = &dx[0, 0, 0, 0, 0]
    with nogil:
        zero_fill(job.out, size, nthreads)
    if geo.points == 0:
        return
    job.grid = &grid[0, 0, 0, 0, 0]
    job.dy = &dy[0, 0, 0, 0, 0]
    nthreads = threads_for(nthreads, geo.N * geo.C * geo.points * taps_per_point(mode, geo.r))
    with nogil:
        ember_parallel(nthreads, geo.N * job.blocks, grad_input_block_task, &job)


def grid_sample_grad_grid(float[:, :, :, :, ::1] dy, float[:, :, :, :, ::1] x,
                          float[:, :, :, :, ::1] grid, float[:, :, :, :, ::1] dgrid, int mode,
                          int padding, bint align_corners, int nthreads):
    """dgrid[n, p, a] = d position_a / d grid · Σ_c dy[n, c, p] Σ_taps slope_a · x[n, c, tap]
    (zero in nearest mode, and where X is empty); each point is written by one task: threads
    over the N·Do·Ho rows."""
    cdef Geometry geo = geometry(x.shape, grid.shape, dy.shape, mode, padding, align_corners)
    cdef long rows = geo.N * geo.Do * geo.Ho
    cdef long size = geo.N * geo.points * geo.r
    cdef SampleJob job
    if size == 0:
        return
    job.geo = &geo
    job.out = &dgrid[0, 0, 0, 0, 0]
    if geo.C * geo.plane == 0:
        with nogil:
            zero_fill(job.out, size, nthreads)
        return
    job.grid = &grid[0, 0, 0, 0, 0]
    job.dy = &dy[0, 0, 0, 0, 0]
    job.x = &x[0, 0, 0, 0, 0]
    nthreads = threads_for(nthreads, geo.N * geo.C * geo.points * taps_per_point(mode, geo.r))
    with nogil:
        ember_parallel(nthreads, rows, grad_grid_row_task, &job)
