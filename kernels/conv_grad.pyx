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
from cpython.pycapsule cimport PyCapsule_New
from libc.string cimport memset, memcpy
from libc.stdlib cimport malloc, free

from kernels.activation cimport ACT_IDENTITY
from kernels.native_step cimport ember_native_step, EMBER_NATIVE_CAPSULE
from kernels.sgemm cimport ember_sgemm, ember_gemm_mr, ember_gemm_nr
from kernels.simd cimport use_simd
from kernels.parallel cimport threads_for, ember_parallel, ember_task_fn
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
    # dW is the sum of at most this many partial sums (part t: images t, t + parts, …), added
    # in part order, whatever the thread count: how the batch is shared must not change the
    # bits. Each part costs a pass over dW's sums, so they are few: two parts are what two
    # threads took before (one per thread); more threads than parts share each part's GEMMs.
    WEIGHT_PARTS_MAX = 2

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


cdef inline int weight_parts(ConvShape *s) noexcept nogil:
    """dW's partial sums: a function of the shape alone (never of the threads), so 1, 2 or 3
    threads add the same floats in the same order; no more than the batch's chunks of images,
    so a part's products still reduce over whole chunks."""
    cdef long chunks = (<long> s.N + chunk_images(s) - 1) // chunk_images(s)
    return <int> max(1, min(chunks, <long> WEIGHT_PARTS_MAX))


cdef inline int weight_slots(ConvShape *s, int nthreads) noexcept nogil:
    """dW's parts computed at once: one per thread when the batch splits over no more threads
    than there are parts, else 1 (the parts in turn, each on the whole team)."""
    cdef int slots = slots_for(s, nthreads)
    return slots if slots <= weight_parts(s) else 1


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
    return grad_weight_need(&s, weight_slots(&s, max(nthreads, 1)))


def conv_grad_input_scratch_floats(int N, int C, int H, int W, int M, int KH, int KW, int OH,
                                   int OW, int stride_h, int stride_w, int pad_top, int pad_left,
                                   int dil_h, int dil_w, int group, int nthreads):
    """Floats of scratch conv_grad_input needs (0 for pointwise and depthwise)."""
    cdef ConvShape s = conv_shape(N, C, H, W, M, KH, KW, OH, OW, stride_h, stride_w, pad_top,
                                  pad_left, dil_h, dil_w, group)
    return grad_input_need(&s, slots_for(&s, max(nthreads, 1)))


# ---- dW -----------------------------------------------------------------------------------------
cdef struct ChunkRowsJob:
    const float *xg        # the image-group im2col reads
    float *buf             # the chunk's panel shifted to image i's columns (+ i·P)
    long shift             # cP − P: im2col_rows writes row r at base + r·P, so base = buf + r·shift
    ConvShape *s


cdef void chunk_row_task(void *ctx, long r, int worker) noexcept nogil:
    """im2col row r of one image into its place in the chunk's panel."""
    cdef ChunkRowsJob *j = <ChunkRowsJob *> ctx
    im2col_rows(j.xg, j.buf + r * j.shift, j.s, <int> r, <int> r + 1)


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
    cdef ChunkRowsJob rows
    rows.shift = cp - P
    rows.s = s
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
                    rows.xg = xg
                    rows.buf = buf + i * P
                    ember_parallel(nthreads, K, chunk_row_task, &rows)
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


cdef struct SumsJob:
    const float *sums      # slot 0's sums; slot t's are t·stride floats further
    long stride
    int nsums
    bint onto              # add onto dW (the parts before these) instead of overwriting it
    int K, Mg
    long step_k            # sums[g][k, m] at k·Mg + m (by column), else at m·K + k
    float *dw


cdef void sums_row_task(void *ctx, long row, int worker) noexcept nogil:
    """dW row g·Mg + m: the slots' sums added in slot order (onto dW's row when ``onto``)."""
    cdef SumsJob *j = <SumsJob *> ctx
    cdef int g = <int> (row // j.Mg), m = <int> (row % j.Mg), k, t
    cdef long at
    cdef float v
    cdef const float *sg = j.sums + <long> g * j.K * j.Mg
    sg += m if j.step_k > 1 else <long> m * j.K
    for k in range(j.K):
        at = k * j.step_k
        if j.onto:
            v = j.dw[row * j.K + k] + sg[at]
        else:
            v = sg[at]
        for t in range(1, j.nsums):
            v = v + sg[t * j.stride + at]
        j.dw[row * j.K + k] = v


cdef void sums_to_weight_grad(const float *sums, int nsums, long stride, bint onto,
                              ConvShape *s, float *dw, int nthreads) noexcept nogil:
    """dW[g·Mg + m, k] (+)= Σ over the slots' sums (``stride`` floats apart) of sums[g][k, m]
    (sums[g][m, k] when not sums_by_column), left to right."""
    cdef SumsJob j
    j.sums, j.stride, j.nsums, j.dw, j.onto = sums, stride, nsums, dw, onto
    j.Mg = s.M // s.group
    j.K = (s.C // s.group) * s.KH * s.KW
    j.step_k = j.Mg if sums_by_column(s) else 1
    ember_parallel(nthreads, <long> s.group * j.Mg, sums_row_task, &j)


# ---- dW of depthwise convs -----------------------------------------------------------------------
cdef struct DepthwiseJob:
    ember_dw_geom *g
    const float *xp        # x for dW, dY for dX (the plane kernels' source)
    const float *wp        # dX: the weights
    const float *dyp       # dW: dY
    float *out             # dW or dX
    float *bufs            # one plane buffer of buf_stride floats per worker
    long buf_stride
    long nbuf              # floats of a worker's buffer in use (dX grouped: weights at the end)
    double *accs           # dW: one accumulator of acc_stride doubles per worker
    long acc_stride
    long plane_in
    long plane_out
    int N, C, taps
    int group, groups      # channels per group, groups per image (grouped paths)


cdef inline long line_rounded(long n, long per_line) noexcept nogil:
    """n rounded up to whole cache lines of per_line values: workers never share one."""
    return (n + per_line - 1) // per_line * per_line


cdef int alloc_per_worker(DepthwiseJob *j, long nbuf, long nacc, int workers) noexcept nogil:
    """One plane buffer of nbuf floats (and, when nacc > 0, an accumulator of nacc doubles) per
    worker. Returns 0, or OUT_OF_MEMORY (nothing left allocated)."""
    j.nbuf = nbuf
    j.buf_stride = line_rounded(nbuf, 16)
    j.acc_stride = line_rounded(nacc, 8)
    j.accs = NULL
    j.bufs = ember_dw_alloc(j.buf_stride * workers)
    if j.bufs == NULL:
        return OUT_OF_MEMORY
    if nacc > 0:
        j.accs = <double *> malloc(sizeof(double) * j.acc_stride * workers)
        if j.accs == NULL:
            free(j.bufs)
            return OUT_OF_MEMORY
    return 0


cdef void free_per_worker(DepthwiseJob *j) noexcept nogil:
    free(j.bufs)
    free(j.accs)


cdef void dw_weight_group_task(void *ctx, long cg, int worker) noexcept nogil:
    """dW of channel group cg (channel-interleaved, ember_dw8_weight_grad), summed over images."""
    cdef DepthwiseJob *j = <DepthwiseJob *> ctx
    cdef int c = <int> cg * j.group, nch = dw8_channels(j.C, c), n, k, t
    cdef float *buf = j.bufs + worker * j.buf_stride
    cdef double *acc = j.accs + worker * j.acc_stride
    for t in range(j.group * j.taps):
        acc[t] = 0.0
    for n in range(j.N):
        ember_dw8_weight_grad(j.g, j.xp + (<long> n * j.C + c) * j.plane_in, j.plane_in,
                              j.dyp + (<long> n * j.C + c) * j.plane_out, j.plane_out, nch, buf,
                              acc)
    for k in range(nch):
        for t in range(j.taps):
            j.out[(<long> c + k) * j.taps + t] = <float> acc[t * j.group + k]


cdef void dw_weight_channel_task(void *ctx, long c, int worker) noexcept nogil:
    """dW of channel c, summed over images."""
    cdef DepthwiseJob *j = <DepthwiseJob *> ctx
    cdef float *buf = j.bufs + worker * j.buf_stride
    cdef double *acc = j.accs + worker * j.acc_stride
    cdef int n, t
    for t in range(j.taps):
        acc[t] = 0.0
    for n in range(j.N):
        ember_dw_weight_grad_plane(j.g, j.xp + (<long> n * j.C + c) * j.plane_in,
                                   j.dyp + (<long> n * j.C + c) * j.plane_out, acc, buf)
    for t in range(j.taps):
        j.out[c * j.taps + t] = <float> acc[t]


cdef int depthwise_weight_grad(const float *dyp, const float *xp, float *dwp, ConvShape *s,
                               int nthreads) noexcept nogil:
    """dW[c, kh, kw] = Σ_n Σ_(oh,ow) dY[n, c, oh, ow] · X[n, c, oh·sh − pt + kh·dh, ow·sw − pl
    + kw·dw]: parallel over channels; per plane the input is packed into phase planes and each
    tap is one vectorised dot (depthwise_kernel.h), float lanes summed into a double per
    channel. Returns 0, or OUT_OF_MEMORY."""
    cdef ember_dw_geom g = dw_geom(s)
    cdef DepthwiseJob j
    cdef long tasks
    cdef bint grouped
    cdef int rc
    cdef long *tap_table = <long *> malloc(sizeof(long) * (s.KH * s.KW))
    if tap_table == NULL:
        return OUT_OF_MEMORY
    ember_dw_set_taps(&g, tap_table)
    j.g = &g
    j.xp, j.dyp, j.out = xp, dyp, dwp
    j.N, j.C, j.taps = s.N, s.C, s.KH * s.KW
    j.plane_in = <long> s.H * s.W
    j.plane_out = <long> s.OH * s.OW
    j.group = ember_dw_group()
    j.groups = dw8_groups(s.C)
    grouped = use_grouped(s, j.plane_out)
    tasks = j.groups if grouped else s.C
    nthreads = <int> min(<long> threads_for(nthreads, <long> s.N * s.C * j.plane_out * j.taps),
                         tasks)
    if grouped:
        rc = alloc_per_worker(&j, ember_dw8_grad_buffer_floats(&g), <long> j.group * j.taps,
                              nthreads)
        if rc == 0:
            ember_parallel(nthreads, tasks, dw_weight_group_task, &j)
    else:
        rc = alloc_per_worker(&j, ember_dw_buffer_floats(&g), j.taps, nthreads)
        if rc == 0:
            ember_parallel(nthreads, tasks, dw_weight_channel_task, &j)
    if rc == 0:
        free_per_worker(&j)
    free(tap_table)
    return rc


# ---- dX -----------------------------------------------------------------------------------------
cdef struct Col2imJob:
    const float *col
    float *dx              # the group's first input channel
    long hw
    ConvShape *s


cdef void col2im_task(void *ctx, long c, int worker) noexcept nogil:
    cdef Col2imJob *j = <Col2imJob *> ctx
    col2im_channel(j.col, j.dx + c * j.hw, <int> c, j.s, 0.0)


cdef int input_grad_image(const float *dy, const float *w, float *dx, float *col, ConvShape *s,
                          int nthreads) noexcept nogil:
    """dX[n] = col2im(Wᵀ · dY[n]) group by group. Returns 0 when out of memory."""
    cdef int g, c, ok = 1
    cdef int Cg = s.C // s.group, Mg = s.M // s.group, K = Cg * s.KH * s.KW
    cdef int P = s.OH * s.OW
    cdef long hw = <long> s.H * s.W
    cdef Col2imJob channels
    channels.col, channels.hw, channels.s = col, hw, s
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
            channels.dx = dx + g * Cg * hw
            ember_parallel(nthreads, Cg, col2im_task, &channels)
        else:
            for c in range(Cg):
                col2im_channel(col, dx + (g * Cg + c) * hw, c, s, 0.0)
    return ok


cdef void dw_input_scatter_task(void *ctx, long p, int worker) noexcept nogil:
    """Image p // groups, channel group p % groups of a strided conv: dY scattered through the
    forward's geometry (no work on the stride's holes)."""
    cdef DepthwiseJob *j = <DepthwiseJob *> ctx
    cdef int c = <int> (p % j.groups) * j.group, nch = dw8_channels(j.C, c)
    cdef long first = (p // j.groups) * j.C + c
    ember_dw8_input_grad_scatter(j.g, j.xp + first * j.plane_out, j.plane_out,
                                 j.wp + <long> c * j.taps, j.out + first * j.plane_in,
                                 j.plane_in, nch, j.bufs + worker * j.buf_stride)


cdef void dw_input_group_task(void *ctx, long p, int worker) noexcept nogil:
    """Image p // groups, channel group p % groups: the forward's channel-group kernel on dY with
    the weights flipped (into the end of the worker's buffer)."""
    cdef DepthwiseJob *j = <DepthwiseJob *> ctx
    cdef int c = <int> (p % j.groups) * j.group, nch = dw8_channels(j.C, c), k, t
    cdef long first = (p // j.groups) * j.C + c
    cdef float *buf = j.bufs + worker * j.buf_stride
    cdef float *wflip = buf + j.nbuf - j.group * j.taps
    for k in range(nch):
        for t in range(j.taps):
            wflip[k * j.taps + t] = j.wp[(<long> c + k) * j.taps + j.taps - 1 - t]
    ember_dw8_forward(j.g, j.xp + first * j.plane_out, j.plane_out, wflip, NULL,
                      j.out + first * j.plane_in, j.plane_in, nch, buf, ACT_IDENTITY, 0.0, 0.0)


cdef void dw_input_plane_task(void *ctx, long p, int worker) noexcept nogil:
    """Plane p = (n, c)."""
    cdef DepthwiseJob *j = <DepthwiseJob *> ctx
    ember_dw_input_grad_plane(j.g, j.xp + p * j.plane_out, j.wp + (p % j.C) * j.taps,
                              j.out + p * j.plane_in, j.bufs + worker * j.buf_stride)


cdef int depthwise_input_grad(const float *dyp, const float *wp, float *dxp, ConvShape *s,
                              int nthreads) noexcept nogil:
    """dX of a depthwise conv, parallel over (n, c) planes: each plane is the stride-1
    correlation of its dY — zero-inserted by the stride, padded by (K − 1)·dil − pad — with
    the flipped kernel (depthwise_kernel.h), so it runs the forward's vectorised tap loops.
    Returns 0, or OUT_OF_MEMORY."""
    cdef ember_dw_geom fwd = dw_geom(s)
    cdef ember_dw_geom g = ember_dw_input_grad_geom(&fwd)
    cdef DepthwiseJob j
    cdef bint grouped
    cdef long tasks, nbuf
    cdef ember_task_fn task
    cdef int rc
    cdef long *tap_table = <long *> malloc(sizeof(long) * (s.KH * s.KW))
    if tap_table == NULL:
        return OUT_OF_MEMORY
    ember_dw_set_taps(&g, tap_table)
    j.g = &g
    j.xp, j.wp, j.out = dyp, wp, dxp
    j.N, j.C, j.taps = s.N, s.C, s.KH * s.KW
    j.plane_in = <long> s.H * s.W
    j.plane_out = <long> s.OH * s.OW
    j.group = ember_dw_group()
    j.groups = dw8_groups(s.C)
    grouped = use_grouped(s, j.plane_in)
    if grouped and (s.sh > 1 or s.sw > 1):   # strided: scatter, no work on the stride's holes
        j.g = &fwd
        nbuf = ember_dw8_buffer_floats(&fwd)   # the scatter needs what the forward does
        task = dw_input_scatter_task
    elif grouped:   # the forward's channel-group kernel on dY with the flipped weights
        nbuf = ember_dw8_buffer_floats(&g) + j.group * j.taps
        task = dw_input_group_task
    else:
        nbuf = ember_dw_buffer_floats(&g)
        task = dw_input_plane_task
    tasks = <long> s.N * (j.groups if grouped else s.C)
    nthreads = <int> min(<long> threads_for(nthreads, <long> s.N * s.C * j.plane_in * j.taps),
                         tasks)
    rc = alloc_per_worker(&j, nbuf, 0, nthreads)
    if rc == 0:
        ember_parallel(nthreads, tasks, task, &j)
        free_per_worker(&j)
    free(tap_table)
    return rc


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


cdef struct SlotsJob:
    GradCall *c
    long slot_n            # dW: a slot's floats (chunk buffers, then sums); dX: a column panel
    int first_part         # dW: slot t computes part first_part + t
    int ok                 # 0 once any image ran out of memory


cdef void weight_slot_task(void *ctx, long t, int worker) noexcept nogil:
    """Slot t takes part first_part + t (its images, weight_parts apart) into its own sums
    (single-threaded GEMMs)."""
    cdef SlotsJob *j = <SlotsJob *> ctx
    cdef GradCall *c = j.c
    cdef long buf_n = chunk_floats(&c.s)
    if not weight_grad_images(c.dy, c.other, j.first_part + t, weight_parts(&c.s),
                              c.scratch + t * j.slot_n + buf_n, c.scratch + t * j.slot_n,
                              &c.s, 1):
        j.ok = 0


cdef void input_image_task(void *ctx, long n, int worker) noexcept nogil:
    """dX of image n on one thread, in the worker's own column panel."""
    cdef SlotsJob *j = <SlotsJob *> ctx
    cdef GradCall *c = j.c
    cdef long x_img = <long> c.s.C * c.s.H * c.s.W, y_img = <long> c.s.M * c.s.OH * c.s.OW
    if not input_grad_image(c.dy + n * y_img, c.other, c.out + n * x_img,
                            c.scratch + worker * j.slot_n if c.scratch != NULL else NULL,
                            &c.s, 1):
        j.ok = 0


cdef int weight_run(GradCall *c) noexcept nogil:
    cdef ConvShape *s = &c.s
    cdef long wsize = c.out_floats, buf_n = chunk_floats(&c.s), slot_n = buf_n + wsize
    cdef int ok = 1, parts = weight_parts(&c.s), first = 0, count
    cdef SlotsJob slots
    if c.path == PATH_NOTHING:
        return 0
    if c.path == PATH_ZERO:
        memset(c.out, 0, sizeof(float) * wsize)
        return 0
    if c.path == PATH_DEPTHWISE:
        return depthwise_weight_grad(c.dy, c.other, c.out, s, c.nthreads)
    # dW = part 0 + part 1 + … (weight_parts: fixed by the batch), added left to right onto
    # dW, in rounds of up to c.slots parts computed at once (a slot: the chunk buffers, then
    # its sums); one slot computes its part with the whole team in each GEMM instead
    while first < parts:
        count = <int> min(<long> c.slots, <long> (parts - first))
        if count > 1:
            slots.c, slots.slot_n, slots.first_part, slots.ok = c, slot_n, first, 1
            ember_parallel(count, count, weight_slot_task, &slots)
            ok = slots.ok and ok
        else:
            ok = weight_grad_images(c.dy, c.other, first, parts, c.scratch + buf_n, c.scratch,
                                    s, c.nthreads) and ok
        sums_to_weight_grad(c.scratch + buf_n, count, slot_n, first > 0, s, c.out,
                            threads_for(c.nthreads, wsize * count))
        first += count
    return 0 if ok else OUT_OF_MEMORY


cdef int input_run(GradCall *c) noexcept nogil:
    cdef ConvShape *s = &c.s
    cdef long x_img = <long> s.C * s.H * s.W, y_img = <long> s.M * s.OH * s.OW
    cdef int n, ok = 1
    cdef SlotsJob images
    if c.path == PATH_NOTHING:
        return 0
    if c.path == PATH_ZERO:
        memset(c.out, 0, sizeof(float) * c.out_floats)
        return 0
    if c.path == PATH_DEPTHWISE:
        return depthwise_input_grad(c.dy, c.other, c.out, s, c.nthreads)
    if c.slots > 1:
        images.c, images.slot_n, images.ok = c, col_floats(s), 1
        ember_parallel(c.slots, s.N, input_image_task, &images)
        ok = images.ok
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
    c.slots = weight_slots(s, c.nthreads)
    while c.slots > 1 and have < grad_weight_need(s, c.slots):
        c.slots -= 1          # less scratch than planned: fewer parts at once, same result
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
