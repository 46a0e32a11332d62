"""Gradients of the 2-D convolution (ONNX cross-correlation, NCHW float32).

With K = C/group·KH·KW rows (c, kh, kw) and P = OH·OW columns (oh, ow), per image n and group g:

    dW[g] += dY[n, g] · col(X[n, g])ᵀ        (Mg × P) · (P × K)
    dX[n, g] = col2im(W[g]ᵀ · dY[n, g])       (K × Mg) · (Mg × P), then scatter-add

where col(X) is the im2col panel conv2d multiplies by. Pointwise convolutions (1×1, stride 1,
no padding) skip im2col/col2im: their panel *is* the image. Depthwise ones (group == C == M) get
the vectorised plane kernels of depthwise_kernel.h, parallel over channels (dW) or planes (dX).

dW reduces over positions, so small planes go a few images per GEMM (their im2col panels and
dY rows side by side in scratch), and the product is col·dYᵀ or dY·colᵀ, whichever fits the
micro-kernel's tiles better; the sums are kept in scratch in the product's layout and written
into dW once at the end.

Parallelism: a batch that splits evenly over the threads runs one image per thread — each
thread accumulates dW into its own sums (in scratch, added together at the end), so no two
threads ever write the same float; dX images are independent. Otherwise images run in turn and
each GEMM (and the im2col/col2im around it) uses the whole team.

ConvGradStep is either gradient with its arguments resolved once, runnable GIL-free inside a
plan.PlanRunner.
"""
from cython.parallel cimport prange, parallel, threadid
from cpython.pycapsule cimport PyCapsule_New
from libc.string cimport memset, memcpy
from libc.stdlib cimport malloc, free

from kernels.activation cimport ACT_IDENTITY
from kernels.native_step cimport ember_native_step, EMBER_NATIVE_CAPSULE
from kernels.sgemm cimport ember_sgemm, ember_gemm_mr, ember_gemm_nr
from kernels.simd cimport use_simd
from kernels.parallel cimport threads_for
from kernels.conv_common cimport (ConvShape, conv_shape, is_pointwise, is_depthwise, col_floats,
                                  images_in_parallel, im2col_rows, col2im_channel)
from kernels.depthwise cimport (ember_dw_geom, dw_geom, ember_dw_alloc, ember_dw_buffer_floats,
                                ember_dw_set_taps, ember_dw_input_grad_geom,
                                ember_dw_input_grad_plane, ember_dw_weight_grad_plane,
                                ember_dw8_buffer_floats, ember_dw8_grad_buffer_floats,
                                ember_dw8_forward, ember_dw8_weight_grad,
                                ember_dw8_input_grad_scatter, ember_dw_group,
                                DW8_MAX_PIXELS, dw8_grouped, dw8_groups, dw8_channels)


use_simd()

cdef enum:
    OUT_OF_MEMORY = 1     # a step's error code (GEMM packing or depthwise buffers)
    # dW reduces over positions; a product over a small plane's few positions re-reads and
    # re-writes all of dW (K × Mg) for little work, so small planes are taken a few images at
    # a time, up to this many positions per product.
    CHUNK_POSITIONS = 256
    CHUNK_IMAGES_MAX = 16

# Depthwise gradients take the channel-group path by the forward's rule (depthwise.pxd) unless a
# test turns it off.
cdef bint dw_grouped = True


def set_depthwise_grouped(bint on):
    """For tests: False keeps depthwise gradients on the per-plane path; returns the previous
    setting."""
    global dw_grouped
    old = dw_grouped
    dw_grouped = on
    return old


cdef inline bint use_grouped(ConvShape *s, long plane) noexcept nogil:
    return dw8_grouped(s, plane, DW8_MAX_PIXELS if dw_grouped else 0)


cdef inline int slots_for(ConvShape *s, int nthreads) noexcept nogil:
    """Images processed at once: one per thread when the batch splits evenly, else 1."""
    return nthreads if images_in_parallel(s.N, nthreads) else 1


cdef inline long weight_floats(ConvShape *s) noexcept nogil:
    return <long> s.M * (s.C // s.group) * s.KH * s.KW


# ---- scratch ------------------------------------------------------------------------------------
cdef inline int chunk_images(ConvShape *s) noexcept nogil:
    """Images whose positions one dW product reduces over together: enough for CHUNK_POSITIONS
    (small planes), at least one; one for pointwise convs, whose GEMM reads the image and dY in
    place. Not capped by the batch, so the scratch does not depend on it."""
    cdef long P = <long> s.OH * s.OW
    if is_pointwise(s):
        return 1
    return <int> max(1, min(<long> CHUNK_IMAGES_MAX, CHUNK_POSITIONS // max(P, 1)))


cdef inline bint sums_by_column(ConvShape *s) noexcept nogil:
    """Whether the dW product is col·dYᵀ (K × Mg) rather than dY·colᵀ (Mg × K): the first packs
    the (long) im2col rows straight as A and reads the GEMM ~10% faster on VGG-like layers; the
    second suits few output channels (the micro-kernel's nr columns are wider than its mr rows).
    The one whose output wastes less of the micro-kernel's mr × nr tiles."""
    cdef long Mg = s.M // s.group, K = (s.C // s.group) * s.KH * s.KW
    cdef long mr = ember_gemm_mr(), nr = ember_gemm_nr()
    return ((K + mr - 1) // mr * mr) * ((Mg + nr - 1) // nr * nr) <= \
        ((Mg + mr - 1) // mr * mr) * ((K + nr - 1) // nr * nr)


cdef inline long chunk_floats(ConvShape *s) noexcept nogil:
    """One slot's buffers: the chunk's im2col panel (K × c·P) and its dY rows (Mg × c·P); none
    for pointwise convs."""
    cdef long cp = <long> chunk_images(s) * s.OH * s.OW
    if is_pointwise(s):
        return 0
    return (<long> (s.C // s.group) * s.KH * s.KW + s.M // s.group) * cp


cdef long grad_weight_need(ConvShape *s, int slots) noexcept nogil:
    """Scratch floats: per slot the chunk buffers and a dW sum (in the product's K × Mg layout,
    group by group)."""
    if is_depthwise(s):
        return 0
    return (chunk_floats(s) + weight_floats(s)) * slots


cdef long grad_input_need(ConvShape *s, int slots) noexcept nogil:
    """Scratch floats: one column panel (K × P) per slot; none for pointwise and depthwise."""
    if is_depthwise(s) or is_pointwise(s):
        return 0
    return col_floats(s) * slots


def conv_grad_weight_scratch_floats(int N, int C, int H, int W, int M, int KH, int KW, int OH,
                                    int OW, int stride_h, int stride_w, int pad_top,
                                    int pad_left, int dil_h, int dil_w, int group, int nthreads):
    """Floats of scratch conv_grad_weight needs for this case (0 for depthwise)."""
    cdef ConvShape s = conv_shape(N, C, H, W, M, KH, KW, OH, OW, stride_h, stride_w, pad_top,
                                  pad_left, dil_h, dil_w, group)
    return grad_weight_need(&s, slots_for(&s, max(nthreads, 1)))


def conv_grad_input_scratch_floats(int N, int C, int H, int W, int M, int KH, int KW, int OH,
                                   int OW, int stride_h, int stride_w, int pad_top, int pad_left,
                                   int dil_h, int dil_w, int group, int nthreads):
    """Floats of scratch conv_grad_input needs (0 for pointwise and depthwise)."""
    cdef ConvShape s = conv_shape(N, C, H, W, M, KH, KW, OH, OW, stride_h, stride_w, pad_top,
                                  pad_left, dil_h, dil_w, group)
    return grad_input_need(&s, slots_for(&s, max(nthreads, 1)))


# ---- dW -----------------------------------------------------------------------------------------
cdef int weight_grad_chunk(const float *dy, const float *x, long first, long step, int count,
                           float *sums, float *buf, ConvShape *s, int nthreads) noexcept nogil:
    """sums (group by group, K × Mg, or Mg × K when not sums_by_column) += col(X)·dYᵀ over
    images first, first + step, … (count of them), whose im2col panels and dY rows are laid side
    by side in ``buf`` (K × cP, then Mg × cP, row stride cP) so that one GEMM reduces over all
    their positions (pointwise: one image, read in place). Returns 0 when out of memory."""
    cdef int g, r, i, m, ok = 1
    cdef int Cg = s.C // s.group, Mg = s.M // s.group, K = Cg * s.KH * s.KW
    cdef long P = <long> s.OH * s.OW, hw = <long> s.H * s.W, cp = count * P
    cdef long x_img = <long> s.C * hw, y_img = <long> s.M * P
    cdef const float *col = buf
    cdef const float *dyc = buf + <long> K * cp
    cdef const float *xg
    cdef bint team = threads_for(nthreads, <long> K * cp) > 1
    for g in range(s.group):
        if is_pointwise(s):   # count == 1: the image-group is its own K × P panel
            col = x + first * x_img + <long> g * Cg * hw
            dyc = dy + first * y_img + <long> g * Mg * P
        else:
            for i in range(count):
                xg = x + (first + i * step) * x_img + <long> g * Cg * hw
                # row r of image i lands at col[r, i·P:(i+1)·P]: im2col_rows writes row r at
                # base + r·P, so the base is shifted by r·(cP − P) + i·P
                if team:
                    for r in prange(K, num_threads=nthreads, schedule='static'):
                        im2col_rows(xg, buf + <long> r * (cp - P) + i * P, s, r, r + 1)
                else:
                    for r in range(K):
                        im2col_rows(xg, buf + <long> r * (cp - P) + i * P, s, r, r + 1)
                for m in range(Mg):
                    memcpy(buf + <long> (K + m) * cp + i * P,
                           dy + (first + i * step) * y_img + (<long> g * Mg + m) * P,
                           sizeof(float) * P)
        # (K × cP) · (Mg × cP)ᵀ or its transpose, accumulated (beta = 1)
        if sums_by_column(s):
            ok = ember_sgemm(0, 1, K, Mg, <int> cp, 1.0, col, cp, dyc, cp, 1.0,
                             sums + <long> g * K * Mg, Mg, NULL, nthreads) and ok
        else:
            ok = ember_sgemm(0, 1, Mg, K, <int> cp, 1.0, dyc, cp, col, cp, 1.0,
                             sums + <long> g * K * Mg, K, NULL, nthreads) and ok
    return ok


cdef int weight_grad_images(const float *dy, const float *x, long first, long step,
                            float *sums, float *buf, ConvShape *s, int nthreads) noexcept nogil:
    """sums (cleared here) = the products of images first, first + step, …, chunk by chunk."""
    cdef int chunk = chunk_images(s), count, ok = 1
    cdef long n = first
    memset(sums, 0, sizeof(float) * weight_floats(s))
    while n < s.N:
        count = <int> min(<long> chunk, (s.N - n + step - 1) // step)
        ok = weight_grad_chunk(dy, x, n, step, count, sums, buf, s, nthreads) and ok
        n += count * step
    return ok


cdef void sums_to_weight_grad(const float *sums, int nsums, long stride, ConvShape *s,
                              float *dw, int nthreads) noexcept nogil:
    """dW[g·Mg + m, k] = Σ over the slots' sums (``stride`` floats apart) of sums[g][k, m]
    (sums[g][m, k] when not sums_by_column)."""
    cdef int Mg = s.M // s.group, K = (s.C // s.group) * s.KH * s.KW, g, m, k, t
    cdef long row, at, step_k = Mg if sums_by_column(s) else 1
    cdef float v
    cdef const float *sg
    for row in prange(<long> s.group * Mg, num_threads=nthreads, schedule='static'):
        g = <int> (row // Mg)
        m = <int> (row % Mg)
        sg = sums + <long> g * K * Mg + (m if step_k > 1 else <long> m * K)
        for k in range(K):
            at = k * step_k
            v = sg[at]
            for t in range(1, nsums):
                v = v + sg[t * stride + at]
            dw[row * K + k] = v


# ---- dW of depthwise convs -----------------------------------------------------------------------
cdef int depthwise_weight_grad(const float *dyp, const float *xp, float *dwp, ConvShape *s,
                               int nthreads) noexcept nogil:
    """dW[c, kh, kw] = Σ_n Σ_(oh,ow) dY[n, c, oh, ow] · X[n, c, oh·sh − pt + kh·dh, ow·sw − pl
    + kw·dw]: parallel over channels; per plane the input is packed into phase planes and each
    tap is one vectorised dot (depthwise_kernel.h), float lanes summed into a double per
    channel. Returns 0, or OUT_OF_MEMORY."""
    cdef ember_dw_geom g = dw_geom(s)
    cdef int taps = s.KH * s.KW, c, n, t, k, nch, failed = 0
    cdef long plane_in = <long> s.H * s.W, plane_out = <long> s.OH * s.OW
    cdef bint grouped = use_grouped(s, plane_out)
    cdef int group = ember_dw_group(), groups = dw8_groups(s.C)
    cdef long nbuf = ember_dw8_grad_buffer_floats(&g) if grouped else ember_dw_buffer_floats(&g)
    cdef float *buf = NULL
    cdef double *acc = NULL
    cdef long *tap_table = <long *> malloc(sizeof(long) * taps)
    if tap_table == NULL:
        return OUT_OF_MEMORY
    ember_dw_set_taps(&g, tap_table)
    nthreads = threads_for(nthreads, <long> s.N * s.C * plane_out * taps)
    if grouped:
        with parallel(num_threads=nthreads):
            buf = ember_dw_alloc(nbuf)
            acc = <double *> malloc(sizeof(double) * group * taps)
            for c in prange(groups, schedule='static'):
                if buf == NULL or acc == NULL:
                    failed += 1
                else:
                    nch = dw8_channels(s.C, c * group)
                    for t in range(group * taps):
                        acc[t] = 0.0
                    for n in range(s.N):
                        ember_dw8_weight_grad(&g, xp + (<long> n * s.C + c * group) * plane_in,
                                              plane_in,
                                              dyp + (<long> n * s.C + c * group) * plane_out,
                                              plane_out, nch, buf, acc)
                    for k in range(nch):
                        for t in range(taps):
                            dwp[(<long> c * group + k) * taps + t] = <float> acc[t * group + k]
            free(buf)
            free(acc)
    else:
        with parallel(num_threads=nthreads):
            buf = ember_dw_alloc(nbuf)
            acc = <double *> malloc(sizeof(double) * taps)
            for c in prange(s.C, schedule='static'):
                if buf == NULL or acc == NULL:
                    failed += 1
                else:
                    for t in range(taps):
                        acc[t] = 0.0
                    for n in range(s.N):
                        ember_dw_weight_grad_plane(&g, xp + (<long> n * s.C + c) * plane_in,
                                                   dyp + (<long> n * s.C + c) * plane_out, acc,
                                                   buf)
                    for t in range(taps):
                        dwp[<long> c * taps + t] = <float> acc[t]
            free(buf)
            free(acc)
    free(tap_table)
    return OUT_OF_MEMORY if failed else 0


# ---- dX -----------------------------------------------------------------------------------------
cdef int input_grad_image(const float *dy, const float *w, float *dx, float *col, ConvShape *s,
                          int nthreads) noexcept nogil:
    """dX[n] = col2im(Wᵀ · dY[n]) group by group. Returns 0 when out of memory."""
    cdef int g, c, ok = 1
    cdef int Cg = s.C // s.group, Mg = s.M // s.group, K = Cg * s.KH * s.KW
    cdef int P = s.OH * s.OW
    cdef long hw = <long> s.H * s.W
    for g in range(s.group):
        if is_pointwise(s):   # the K × P product is dX[n, g] itself
            ok = ember_sgemm(1, 0, K, P, Mg, 1.0, w + <long> g * Mg * K, K,
                             dy + <long> g * Mg * P, P, 0.0, dx + g * Cg * hw, P, NULL,
                             nthreads) and ok
            continue
        # (Mg × K)ᵀ · (Mg × P): A is W[g] read transposed (trans_a)
        ok = ember_sgemm(1, 0, K, P, Mg, 1.0, w + <long> g * Mg * K, K, dy + <long> g * Mg * P,
                         P, 0.0, col, P, NULL, nthreads) and ok
        if threads_for(nthreads, <long> K * P) > 1:
            for c in prange(Cg, num_threads=nthreads, schedule='static'):
                col2im_channel(col, dx + (g * Cg + c) * hw, c, s, 0.0)
        else:
            for c in range(Cg):
                col2im_channel(col, dx + (g * Cg + c) * hw, c, s, 0.0)
    return ok


cdef int depthwise_input_grad(const float *dyp, const float *wp, float *dxp, ConvShape *s,
                              int nthreads) noexcept nogil:
    """dX of a depthwise conv, parallel over (n, c) planes: each plane is the stride-1
    correlation of its dY — zero-inserted by the stride, padded by (K − 1)·dil − pad — with
    the flipped kernel (depthwise_kernel.h), so it runs the forward's vectorised tap loops.
    Returns 0, or OUT_OF_MEMORY."""
    cdef ember_dw_geom fwd = dw_geom(s)
    cdef ember_dw_geom g = ember_dw_input_grad_geom(&fwd)
    cdef int taps = s.KH * s.KW, p, c, k, t, nch, failed = 0
    cdef long plane_in = <long> s.H * s.W, plane_out = <long> s.OH * s.OW, first
    cdef bint grouped = use_grouped(s, plane_in)
    cdef int group = ember_dw_group(), groups = dw8_groups(s.C)
    cdef long nbuf = ember_dw8_buffer_floats(&g) + group * taps if grouped else \
        ember_dw_buffer_floats(&g)
    cdef float *buf = NULL
    cdef float *wflip
    cdef long *tap_table = <long *> malloc(sizeof(long) * taps)
    if tap_table == NULL:
        return OUT_OF_MEMORY
    ember_dw_set_taps(&g, tap_table)
    nthreads = threads_for(nthreads, <long> s.N * s.C * plane_in * taps)
    if grouped and (s.sh > 1 or s.sw > 1):   # strided: scatter, no work on the stride's holes
        nbuf = ember_dw8_buffer_floats(&fwd)   # the scatter needs what the forward does
        with parallel(num_threads=nthreads):
            buf = ember_dw_alloc(nbuf)
            for p in prange(s.N * groups, schedule='static'):
                if buf == NULL:
                    failed += 1
                else:
                    c = (p % groups) * group
                    nch = dw8_channels(s.C, c)
                    first = <long> (p // groups) * s.C + c
                    ember_dw8_input_grad_scatter(&fwd, dyp + first * plane_out, plane_out,
                                                 wp + <long> c * taps, dxp + first * plane_in,
                                                 plane_in, nch, buf)
            free(buf)
    elif grouped:   # the forward's channel-group kernel on dY with the flipped weights
        with parallel(num_threads=nthreads):
            buf = ember_dw_alloc(nbuf)
            for p in prange(s.N * groups, schedule='static'):
                if buf == NULL:
                    failed += 1
                else:
                    c = (p % groups) * group
                    nch = dw8_channels(s.C, c)
                    first = <long> (p // groups) * s.C + c
                    wflip = buf + nbuf - group * taps
                    for k in range(nch):
                        for t in range(taps):
                            wflip[k * taps + t] = wp[(<long> c + k) * taps + taps - 1 - t]
                    ember_dw8_forward(&g, dyp + first * plane_out, plane_out, wflip, NULL,
                                      dxp + first * plane_in, plane_in, nch, buf,
                                      ACT_IDENTITY, 0.0, 0.0)
            free(buf)
    else:
        with parallel(num_threads=nthreads):
            buf = ember_dw_alloc(nbuf)
            for p in prange(s.N * s.C, schedule='static'):
                if buf == NULL:
                    failed += 1
                else:
                    ember_dw_input_grad_plane(&g, dyp + p * plane_out, wp + (p % s.C) * taps,
                                              dxp + p * plane_in, buf)
            free(buf)
    free(tap_table)
    return OUT_OF_MEMORY if failed else 0


# ---- the calls, resolved once -----------------------------------------------------------------
cdef enum GradPath:
    PATH_NOTHING      # nothing to write
    PATH_ZERO         # the gradient is all zeros (no taps)
    PATH_DEPTHWISE
    PATH_GEMM         # GEMMs (+ im2col for dW, col2im for dX)

cdef enum GradKind:
    GRAD_WEIGHT
    GRAD_INPUT


cdef struct GradCall:
    ConvShape s
    int kind, path, slots, nthreads
    const float *dy
    const float *other     # x for dW, w for dX
    float *out
    float *scratch
    long out_floats


cdef int weight_run(GradCall *c) noexcept nogil:
    cdef ConvShape *s = &c.s
    cdef long wsize = c.out_floats, buf_n = chunk_floats(&c.s), slot_n = buf_n + wsize
    cdef int t, ok = 1
    if c.path == PATH_NOTHING:
        return 0
    if c.path == PATH_ZERO:
        memset(c.out, 0, sizeof(float) * wsize)
        return 0
    if c.path == PATH_DEPTHWISE:
        return depthwise_weight_grad(c.dy, c.other, c.out, s, c.nthreads)
    # a slot: the chunk buffers, then its sums
    if c.slots > 1:
        # slot t takes images t, t + slots, …, into its own sums
        for t in prange(c.slots, num_threads=c.slots, schedule='static'):
            ok &= weight_grad_images(c.dy, c.other, t, c.slots, c.scratch + t * slot_n + buf_n,
                                     c.scratch + t * slot_n, s, 1)
    else:
        ok = weight_grad_images(c.dy, c.other, 0, 1, c.scratch + buf_n, c.scratch, s,
                                c.nthreads)
    sums_to_weight_grad(c.scratch + buf_n, c.slots, slot_n, s, c.out,
                        threads_for(c.nthreads, wsize * c.slots))
    return 0 if ok else OUT_OF_MEMORY


cdef int input_run(GradCall *c) noexcept nogil:
    cdef ConvShape *s = &c.s
    cdef long x_img = <long> s.C * s.H * s.W, y_img = <long> s.M * s.OH * s.OW
    cdef long col_n = col_floats(s)
    cdef int n, ok = 1
    if c.path == PATH_NOTHING:
        return 0
    if c.path == PATH_ZERO:
        memset(c.out, 0, sizeof(float) * c.out_floats)
        return 0
    if c.path == PATH_DEPTHWISE:
        return depthwise_input_grad(c.dy, c.other, c.out, s, c.nthreads)
    if c.slots > 1:
        for n in prange(s.N, num_threads=c.slots, schedule='static'):
            ok &= input_grad_image(c.dy + n * y_img, c.other, c.out + n * x_img,
                                   c.scratch + threadid() * col_n if c.scratch != NULL else NULL,
                                   s, 1)
    else:
        for n in range(s.N):
            ok = input_grad_image(c.dy + n * y_img, c.other, c.out + n * x_img, c.scratch, s,
                                  c.nthreads) and ok
    return 0 if ok else OUT_OF_MEMORY


cdef int grad_run(GradCall *c) noexcept nogil:
    return weight_run(c) if c.kind == GRAD_WEIGHT else input_run(c)


cdef int grad_native(void *state) noexcept nogil:
    return grad_run(<GradCall *> state)


cdef float *scratch_start(scratch, long *have) except? NULL:
    """The scratch's first float (``have`` gets its length), NULL when there is none."""
    cdef float[::1] view
    have[0] = 0
    if scratch is None:
        return NULL
    view = scratch
    if view.shape[0] == 0:
        return NULL
    have[0] = view.shape[0]
    return &view[0]


cdef int weight_prepare(GradCall *c, float[:, :, :, ::1] dy, float[:, :, :, ::1] x,
                        float[:, :, :, ::1] dweight, scratch, int stride_h, int stride_w,
                        int pad_top, int pad_left, int dil_h, int dil_w, int group,
                        int nthreads) except -1:
    """Check the arguments and fill ``c`` for dW; ValueError when the scratch is short."""
    c.s = conv_shape(x.shape[0], x.shape[1], x.shape[2], x.shape[3], dy.shape[1],
                     dweight.shape[2], dweight.shape[3], dy.shape[2], dy.shape[3], stride_h,
                     stride_w, pad_top, pad_left, dil_h, dil_w, group)
    cdef ConvShape *s = &c.s
    cdef long have = 0, need
    c.kind, c.nthreads, c.slots, c.scratch = GRAD_WEIGHT, max(nthreads, 1), 1, NULL
    c.out_floats = weight_floats(s)
    c.path = PATH_NOTHING
    if c.out_floats == 0:
        return 0
    c.out = &dweight[0, 0, 0, 0]
    if s.N == 0 or s.OH == 0 or s.OW == 0 or s.C == 0:
        c.path = PATH_ZERO
        return 0
    c.dy, c.other = &dy[0, 0, 0, 0], &x[0, 0, 0, 0]
    if is_depthwise(s):
        c.path = PATH_DEPTHWISE
        return 0
    c.path = PATH_GEMM
    c.scratch = scratch_start(scratch, &have)
    c.slots = slots_for(s, c.nthreads)
    while c.slots > 1 and have < grad_weight_need(s, c.slots):
        c.slots -= 1          # less scratch than planned: fewer images at once, same result
    need = grad_weight_need(s, 1)
    if c.slots == 1 and need > have:
        raise ValueError(f"conv_grad_weight: scratch holds {have} floats, needs {need}")
    return 0


cdef int input_prepare(GradCall *c, float[:, :, :, ::1] dy, float[:, :, :, ::1] w,
                       float[:, :, :, ::1] dx, scratch, int stride_h, int stride_w, int pad_top,
                       int pad_left, int dil_h, int dil_w, int group, int nthreads) except -1:
    """Check the arguments and fill ``c`` for dX; ValueError when the scratch is short."""
    c.s = conv_shape(dx.shape[0], dx.shape[1], dx.shape[2], dx.shape[3], dy.shape[1],
                     w.shape[2], w.shape[3], dy.shape[2], dy.shape[3], stride_h, stride_w,
                     pad_top, pad_left, dil_h, dil_w, group)
    cdef ConvShape *s = &c.s
    cdef long x_img = <long> s.C * s.H * s.W, col_n = col_floats(s), have = 0
    c.kind, c.nthreads, c.slots, c.scratch = GRAD_INPUT, max(nthreads, 1), 1, NULL
    c.path = PATH_NOTHING
    c.out_floats = s.N * x_img
    if s.N == 0 or x_img == 0:
        return 0
    c.out = &dx[0, 0, 0, 0]
    if s.M == 0 or s.OH == 0 or s.OW == 0:
        c.path = PATH_ZERO
        return 0
    c.dy, c.other = &dy[0, 0, 0, 0], &w[0, 0, 0, 0]
    if is_depthwise(s):
        c.path = PATH_DEPTHWISE
        return 0
    c.path = PATH_GEMM
    c.slots = slots_for(s, c.nthreads)
    if not is_pointwise(s):
        c.scratch = scratch_start(scratch, &have)
        if have < col_n:
            raise ValueError(f"conv_grad_input: scratch holds {have} floats, needs {col_n}")
        c.slots = <int> min(<long> c.slots, have // col_n)
    return 0


cdef class ConvGradStep:
    """conv_grad_weight or conv_grad_input with its arguments resolved once (bind time):
    calling it, or running it inside a ``plan.PlanRunner`` with no Python in between. Made by
    ``conv_grad_weight_step`` / ``conv_grad_input_step``; holds its arrays."""
    cdef GradCall call
    cdef ember_native_step native
    cdef object keep

    def __cinit__(self):
        self.call.path = PATH_NOTHING
        self.native.fn = grad_native
        self.native.state = &self.call

    def __call__(self):
        cdef int rc
        with nogil:
            rc = grad_run(&self.call)
        if rc:
            self.raise_for(rc)

    def raise_for(self, int rc):
        what = "conv_grad_weight" if self.call.kind == GRAD_WEIGHT else "conv_grad_input"
        raise MemoryError(f"{what}: cannot allocate GEMM packing or depthwise buffers")

    @property
    def _native(self):
        """A capsule holding the step's C entry point, for plan.PlanRunner."""
        return PyCapsule_New(&self.native, EMBER_NATIVE_CAPSULE, NULL)


def conv_grad_weight_step(float[:, :, :, ::1] dy, float[:, :, :, ::1] x,
                          float[:, :, :, ::1] dweight, scratch, int stride_h, int stride_w,
                          int pad_top, int pad_left, int dil_h, int dil_w, int group,
                          int nthreads):
    """conv_grad_weight resolved once: a ConvGradStep."""
    cdef ConvGradStep step = ConvGradStep()
    weight_prepare(&step.call, dy, x, dweight, scratch, stride_h, stride_w, pad_top, pad_left,
                   dil_h, dil_w, group, nthreads)
    step.keep = (dy, x, dweight, scratch)
    return step


def conv_grad_input_step(float[:, :, :, ::1] dy, float[:, :, :, ::1] w, float[:, :, :, ::1] dx,
                         scratch, int stride_h, int stride_w, int pad_top, int pad_left,
                         int dil_h, int dil_w, int group, int nthreads):
    """conv_grad_input resolved once: a ConvGradStep."""
    cdef ConvGradStep step = ConvGradStep()
    input_prepare(&step.call, dy, w, dx, scratch, stride_h, stride_w, pad_top, pad_left, dil_h,
                  dil_w, group, nthreads)
    step.keep = (dy, w, dx, scratch)
    return step


def conv_grad_weight(dy, x, dweight, scratch, int stride_h, int stride_w, int pad_top,
                     int pad_left, int dil_h, int dil_w, int group, int nthreads):
    """dweight (M, C/group, KH, KW) = gradient of the loss w.r.t. the conv weight, given dy
    (N, M, OH, OW) and the conv input x (N, C, H, W). Bottom/right pads are implied by OH/OW."""
    conv_grad_weight_step(dy, x, dweight, scratch, stride_h, stride_w, pad_top, pad_left, dil_h,
                          dil_w, group, nthreads)()


def conv_grad_input(dy, w, dx, scratch, int stride_h, int stride_w, int pad_top, int pad_left,
                    int dil_h, int dil_w, int group, int nthreads):
    """dx (N, C, H, W) = gradient of the loss w.r.t. the conv input, given dy (N, M, OH, OW) and
    the weight w (M, C/group, KH, KW)."""
    conv_grad_input_step(dy, w, dx, scratch, stride_h, stride_w, pad_top, pad_left, dil_h,
                         dil_w, group, nthreads)()
