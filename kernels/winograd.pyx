"""Winograd convolution F(m×m, 3×3), m = 2 or 4, for 3×3 stride-1 undilated single-group convs.

Why: a 3×3 conv through GEMM already runs near the machine's FMA peak, so only fewer multiplies
make it faster. F(2×2, 3×3) needs 16 products per 4 outputs instead of 36 (2.25× fewer),
F(4×4, 3×3) 36 per 16 instead of 144 (4×), at the price of three transforms and some rounding.

Structure. The input is first split into m² phase planes per channel (all images stacked), so
that tiles become *positions*: tile (n, th, tw) sits at P = (n·PR + th)·PWt + tw, and element
(i, j) of its patch at P + ⌊i/m⌋·PWt + ⌊j/m⌋ of plane (i mod m, j mod m) — consecutive tiles are
consecutive floats, and the input transform runs on whole vectors of them (winograd_kernel.h),
storing only the lanes that are tiles (each image's planes have a padding row and column,
PR = tH + 1, PWt = tW + 1). Then, for a block of tiles t = (n·tH + th)·tW + tw:
    V[ξ] (C × tiles, row-major) = Bᵀ·d·B of each tile's α×α patch   (input transform)
    Mx[ξ] (M × tiles) = U[ξ] (M × C) · V[ξ]  for ξ < α²   (α² GEMMs, V read in place by the micro-kernel)
    y = act(Aᵀ·Mx·A + bias)                                      (output transform, fused epilogue)
U = G·g·Gᵀ is precomputed by `winograd_weights` (once when the weight is constant).
Blocks are sized so a block's V and Mx stay near L2; with enough blocks each thread runs its own
blocks (single-threaded GEMMs, one scratch slot per thread), else the block's three phases are
split over the team (channels, GEMM positions ξ, output channels).
"""

from cpython.pycapsule cimport PyCapsule_New
from libc.string cimport memset

from kernels.native_step cimport ember_native_step, EMBER_NATIVE_CAPSULE
from kernels.parallel cimport threads_for, ember_parallel
from kernels.sgemm cimport ember_packed_gemm_strided, ember_gemm_mr, ember_gemm_nr
from kernels.simd cimport use_simd

use_simd()


cdef extern from "winograd_transform.h" nogil:
    void ember_wino_weight(int m, const float *g, int flip, float *U, long us)


cdef extern from "simd.h" nogil:   # the transforms, kernels/winograd_kernel.h
    ctypedef struct ember_wino_tiles:
        long PR, PWt, img
        int tH, tW, OH, OW
        int act
        float act_a, act_b
    void ember_wino_input_block(int m, const float *xc, long PS, const ember_wino_tiles *g,
                                long T0, int nb, float *Vc, long vs)
    void ember_wino_output_block(int m, const float *Mrow, long ms, const ember_wino_tiles *g,
                                 long T0, int nb, float bias, float *yc)
    int ember_simd_vw "ember_direct_conv_vw"()
    void ember_wino_phases(int m, const float *xc, long cstride, int N, int H, int W, int pt,
                           int pl, long PR, long PWt, long PS, float *planes)


cdef struct WinoShape:
    int N, C, H, W, M, OH, OW, pt, pl
    int Mp          # M rounded up to the micro-kernel's rows (U and Mx carry zero/junk rows)
    int nr          # the micro-kernel's columns: a block's GEMMs run on a multiple of them
    int m, alpha, tH, tW
    long PR, PWt    # rows and columns of the phase planes an image (a padding row and column)
    long T          # tiles in the batch (N·tH·tW)
    long PS         # floats of one phase plane (every image, and slack for the last vector)
    long prepared   # floats of the phase planes (C·m²·PS)
    int TB          # tiles per block (a multiple of nr; Mx's row length)
    long ldv        # V's row length: TB and a vector of slack, an odd number of 64-byte lines
    int nblocks
    int slots       # scratch slots (1, or one per thread when blocks run per thread)
    long slot_floats


cdef enum:
    BLOCK_BYTES = 512 * 1024   # target bytes of one block's V + Mx (≈ the L2 of a core)


cdef inline long round_up(long v, long step) noexcept nogil:
    return (v + step - 1) // step * step


cdef WinoShape make_shape(int N, int C, int H, int W, int M, int OH, int OW, int pt, int pl,
                          int m, int nthreads) noexcept nogil:
    cdef WinoShape s
    cdef long per_tile, tb_max, nb
    s.N = N; s.C = C; s.H = H; s.W = W; s.M = M; s.OH = OH; s.OW = OW; s.pt = pt; s.pl = pl
    s.m = m; s.alpha = m + 2
    s.Mp = <int> round_up(M, ember_gemm_mr())
    s.nr = ember_gemm_nr()
    s.tH = (OH + m - 1) // m
    s.tW = (OW + m - 1) // m
    s.PR, s.PWt = s.tH + 1, s.tW + 1
    s.T = <long> N * s.tH * s.tW
    per_tile = <long> s.alpha * s.alpha * (C + s.Mp) * 4
    tb_max = min(max(BLOCK_BYTES // per_tile // s.nr * s.nr, 2 * s.nr), 256)
    if nthreads < 1:
        nthreads = 1
    nb = max((s.T + tb_max - 1) // tb_max, 1)
    if nthreads > 1 and s.T >= 2 * s.nr * nthreads:
        # blocks per thread (one parallel region, no barriers between phases: a busy machine
        # deschedules team threads, and every barrier then waits a time slice): a whole number
        # of rounds. Fewer tiles than two GEMM panels a thread: one block, its phases split
        # over the team instead (28×28 at F(4,3) is 49 tiles: as two blocks of 25, each GEMM
        # computed 32 columns)
        nb = max(nb, nthreads)
        nb = (nb + nthreads - 1) // nthreads * nthreads
        s.slots = nthreads
    else:
        s.slots = 1
    # the GEMMs' panels of nr tiles shared evenly by the blocks (block_first), TB tiles at most
    s.nblocks = <int> nb
    s.TB = <int> (((s.T + s.nr - 1) // s.nr + nb - 1) // nb * s.nr)
    s.ldv = round_up(s.TB + 16, 16)
    if (s.ldv // 16) % 2 == 0:
        s.ldv += 16
    s.slot_floats = <long> s.alpha * s.alpha * (<long> C * s.ldv + <long> s.Mp * s.TB)
    # a vector reads VW (≤ 16) positions from a tile's, each tap up to PWt + 1 further on
    s.PS = round_up(<long> N * s.PR * s.PWt + s.PWt + 2 + 16, 16)
    s.prepared = <long> C * m * m * s.PS
    return s


def winograd_scratch_floats(int N, int C, int H, int W, int M, int OH, int OW, int tile,
                            int nthreads):
    """Floats of scratch conv2d_winograd needs: the phase planes of the input (C·m²·PS, about
    the input's size), then slots × α²·TB·(C + Mp) (V and Mx of a block; Mp = M rounded up to
    the micro-kernel's rows), + 16 floats to align its loads."""
    cdef WinoShape s = make_shape(N, C, H, W, M, OH, OW, 0, 0, tile, nthreads)
    return s.prepared + s.slot_floats * s.slots + 16     # + 16: room to align the start to 64 bytes


def winograd_weight_floats(int M, int C, int tile):
    """Floats of the transformed, packed weights U: α² × Mp·C (Mp = M rounded up to the
    micro-kernel's rows)."""
    return (tile + 2) * (tile + 2) * round_up(M, ember_gemm_mr()) * C


cdef inline long packed_a(int row, int col, int K, int mr) noexcept nogil:
    """Offset of (row, col) of an R × K matrix packed in mr-row micro-panels."""
    return <long> (row // mr) * K * mr + <long> col * mr + row % mr


# One winograd_weights call with its arguments resolved (see WinogradWeightsStep).
cdef struct WeightsCall:
    const float *w
    float *U
    int M, C, tile, mr, nthreads
    bint grad_input


cdef int weights_prepare(WeightsCall *c, float[:, :, :, ::1] w, float[:, ::1] U, int tile,
                         bint grad_input, int nthreads) except -1:
    """Check the arguments and fill ``c``; raises ValueError when U's shape does not fit."""
    cdef int M = w.shape[0], C = w.shape[1], rows, cols
    cdef int alpha = tile + 2
    rows, cols = (C, M) if grad_input else (M, C)
    cdef int mr = ember_gemm_mr()
    cdef long us = round_up(rows, mr) * cols
    if U.shape[0] != alpha * alpha or U.shape[1] != us:
        raise ValueError(f"winograd_weights: U has shape {tuple(U.shape)[:2]}, needs "
                         f"({alpha * alpha}, {us})")
    c.M, c.C, c.tile, c.mr, c.grad_input = M, C, tile, mr, grad_input
    c.nthreads = threads_for(nthreads, us * alpha * alpha)
    c.w = &w[0, 0, 0, 0] if M > 0 and C > 0 else NULL
    c.U = &U[0, 0] if M > 0 and C > 0 else NULL
    return 0


cdef void weights_filter_task(void *ctx, long panel, int worker) noexcept nogil:
    """Every filter of one micro-panel of U's rows (mr output channels, or input channels for
    grad_input): a task's writes never share a cache line with another's (a task per output
    channel interleaved their floats, six to a panel row: two threads took 11× one's time)."""
    cdef WeightsCall *c = <WeightsCall *> ctx
    cdef int rows = c.C if c.grad_input else c.M, cols = c.M if c.grad_input else c.C
    cdef long us = round_up(rows, c.mr) * cols
    cdef int r, k, r0 = <int> panel * c.mr, r1 = min(r0 + c.mr, rows)
    for r in range(r0, r1):
        for k in range(cols):
            if c.grad_input:    # row r: input channel, column k: output channel
                ember_wino_weight(c.tile, c.w + (<long> k * c.C + r) * 9, 1,
                                  c.U + packed_a(r, k, cols, c.mr), us)
            else:
                ember_wino_weight(c.tile, c.w + (<long> r * c.C + k) * 9, 0,
                                  c.U + packed_a(r, k, cols, c.mr), us)


cdef int weights_run(WeightsCall *c) noexcept nogil:
    """The transform, GIL-free; always 0."""
    cdef int r, k, xi, rows, cols
    cdef int alpha = c.tile + 2
    if c.w == NULL:
        return 0
    rows, cols = (c.C, c.M) if c.grad_input else (c.M, c.C)
    cdef int Rp = <int> round_up(rows, c.mr)
    cdef long us = <long> Rp * cols
    ember_parallel(c.nthreads, Rp // c.mr, weights_filter_task, c)
    for r in range(rows, Rp):   # the padding rows of the last micro-panel
        for k in range(cols):
            for xi in range(alpha * alpha):
                c.U[xi * us + packed_a(r, k, cols, c.mr)] = 0.0
    return 0


cdef int weights_native(void *state) noexcept nogil:
    return weights_run(<WeightsCall *> state)


cdef class WinogradWeightsStep:
    """winograd_weights with its arguments resolved once (bind time), for weights that change
    between runs (training's parameters, ConvGradInput's W): runnable by ``plan.PlanRunner``
    with no Python in between. Holds its arrays."""
    cdef WeightsCall call
    cdef ember_native_step native
    cdef object keep

    def __init__(self, float[:, :, :, ::1] w, float[:, ::1] U, int tile, bint grad_input,
                 int nthreads):
        weights_prepare(&self.call, w, U, tile, grad_input, nthreads)
        self.keep = (w, U)
        self.native.fn = weights_native
        self.native.state = &self.call

    def __call__(self):
        with nogil:
            weights_run(&self.call)

    @property
    def _native(self):
        """A capsule holding the step's C entry point, for plan.PlanRunner."""
        return PyCapsule_New(&self.native, EMBER_NATIVE_CAPSULE, NULL)


def winograd_weights(w, U, int tile, bint grad_input, int nthreads):
    """U[ξ] = the (G·w[m, c]·Gᵀ)[ξ], an M × C matrix per ξ packed for the GEMM (U is α² ×
    winograd_weight_floats / α²), for w (M, C, 3, 3). With grad_input the conv is the data
    gradient of w's conv, dX = conv(dY, w flipped 180° with in/out channels swapped): U[ξ] is
    then C × M, (G · flip(w[m, c]) · Gᵀ)[ξ] at row c, column m."""
    WinogradWeightsStep(w, U, tile, grad_input, nthreads)()


cdef inline void prepare_channel(const float *x, float *planes, WinoShape *s,
                                 int c) noexcept nogil:
    """The m² phase planes of channel c, every image (winograd_kernel.h ember_wino_phases)."""
    ember_wino_phases(s.m, x + <long> c * s.H * s.W, <long> s.C * s.H * s.W, s.N, s.H, s.W,
                      s.pt, s.pl, s.PR, s.PWt, s.PS, planes + <long> c * s.m * s.m * s.PS)


cdef inline int block_tiles(WinoShape *s, int blk) noexcept nogil:
    """Tiles of block blk (the last one may be short)."""
    return <int> (block_first(s, blk + 1) - block_first(s, blk))


cdef inline long block_first(WinoShape *s, int blk) noexcept nogil:
    """The first tile of block blk: the blocks share the ⌈T/nr⌉ panels of nr tiles evenly (a
    whole number each, so only the last block's last GEMM panel is partial)."""
    cdef long panels = (s.T + s.nr - 1) // s.nr
    return min(s.T, panels * blk // s.nblocks * s.nr)


cdef inline void input_channel(const float *planes, float *V, WinoShape *s,
                               const ember_wino_tiles *tiles, int c, long T0,
                               int nb) noexcept nogil:
    """V[ξ, c, 0:nb] for tiles [T0, T0 + nb) (V[ξ] row-major, C × ldv)."""
    ember_wino_input_block(s.m, planes + <long> c * s.m * s.m * s.PS, s.PS, tiles, T0, nb,
                           V + <long> c * s.ldv, <long> s.C * s.ldv)


cdef inline void output_channel(const float *Mx, const float *bias, float *y, WinoShape *s,
                                const ember_wino_tiles *tiles, int mo, long T0,
                                int nb) noexcept nogil:
    """y[:, mo] for tiles [T0, T0 + nb): output transform, bias, activation."""
    ember_wino_output_block(s.m, Mx + <long> mo * s.TB, <long> s.Mp * s.TB, tiles, T0, nb,
                            bias[mo] if bias != NULL else 0.0, y + <long> mo * s.OH * s.OW)


cdef inline int gemm_position(const float *U, float *V, float *Mx, WinoShape *s, int xi,
                              int nb) noexcept nogil:
    """Mx[ξ] (Mp × nb) = U[ξ] (Mp × C, packed) · V[ξ] (C × nb, in place), nb rounded up to the
    vector the output transform reads (not to the GEMM's panel: a ragged last panel runs narrow,
    16 tiles of an 8×8 plane half as wide as a 32-column panel)."""
    ember_packed_gemm_strided(U + <long> xi * s.Mp * s.C, V + <long> xi * s.C * s.ldv, s.ldv,
                              Mx + <long> xi * s.Mp * s.TB, s.Mp, s.C,
                              <int> round_up(nb, ember_simd_vw()), s.TB)
    return 1


# One conv2d_winograd call with its arguments resolved (see WinogradStep).
cdef struct WinoCall:
    WinoShape s
    ember_wino_tiles tiles
    const float *x
    const float *U
    const float *bias
    float *y
    float *planes          # the phase planes of the input (scratch)
    float *scratch         # the slots (scratch, after the planes)
    int slots, nthreads
    bint empty


cdef int block_serial(WinoCall *c, float *slot, int blk) noexcept nogil:
    """One block on the calling thread, its V and Mx in ``slot``."""
    cdef WinoShape *s = &c.s
    cdef long T0 = block_first(s, blk)
    cdef int nb = block_tiles(s, blk)
    cdef float *V = slot
    cdef float *Mx = slot + <long> s.alpha * s.alpha * s.C * s.ldv
    cdef int ch, xi, mo, ok = 1
    for ch in range(s.C):
        input_channel(c.planes, V, s, &c.tiles, ch, T0, nb)
    for xi in range(s.alpha * s.alpha):
        ok = gemm_position(c.U, V, Mx, s, xi, nb) and ok
    for mo in range(s.M):
        output_channel(Mx, c.bias, c.y, s, &c.tiles, mo, T0, nb)
    return ok


cdef int wino_prepare(WinoCall *c, float[:, :, :, ::1] x, float[:, ::1] U, bias,
                      float[:, :, :, ::1] y, float[::1] scratch, int tile, int pad_top,
                      int pad_left, int act, float act_a, float act_b, int nthreads) except -1:
    """Check the arguments and fill ``c``; raises ValueError on a mismatch."""
    c.s = make_shape(x.shape[0], x.shape[1], x.shape[2], x.shape[3], y.shape[1], y.shape[2],
                     y.shape[3], pad_top, pad_left, tile, nthreads)
    c.nthreads = nthreads if nthreads >= 1 else 1
    c.tiles.PR, c.tiles.PWt = c.s.PR, c.s.PWt
    c.tiles.img = <long> c.s.M * c.s.OH * c.s.OW
    c.tiles.tH, c.tiles.tW, c.tiles.OH, c.tiles.OW = c.s.tH, c.s.tW, c.s.OH, c.s.OW
    c.tiles.act, c.tiles.act_a, c.tiles.act_b = act, act_a, act_b
    c.empty = c.s.N == 0 or c.s.OH == 0 or c.s.OW == 0 or c.s.M == 0
    if c.empty:
        return 0
    if tile != 2 and tile != 4:
        raise ValueError(f"conv2d_winograd: tile must be 2 or 4, got {tile}")
    if c.s.C == 0:
        raise ValueError("conv2d_winograd: needs at least one input channel")
    if U.shape[0] != c.s.alpha * c.s.alpha or U.shape[1] != <long> c.s.Mp * c.s.C:
        raise ValueError(f"conv2d_winograd: U has shape {tuple(U.shape)[:2]}, needs "
                         f"({c.s.alpha * c.s.alpha}, {c.s.Mp * c.s.C})")
    cdef long have = scratch.shape[0]
    cdef long skip = (16 - (<long> (<size_t> &scratch[0] // 4)) % 16) % 16 if have else 0   # 64 bytes
    have -= skip + c.s.prepared
    c.slots = <int> min(<long> c.s.slots, have // c.s.slot_floats) if c.s.slot_floats and \
        have > 0 else 0
    if c.slots < 1:
        raise ValueError(f"conv2d_winograd: scratch holds {scratch.shape[0]} floats, needs "
                         f"{c.s.prepared + c.s.slot_floats + 16}")
    cdef float[::1] bias_view
    c.bias = NULL
    if bias is not None:
        bias_view = bias
        c.bias = &bias_view[0]
    c.x, c.U, c.y = &x[0, 0, 0, 0], &U[0, 0], &y[0, 0, 0, 0]
    c.planes = &scratch[0] + skip
    c.scratch = c.planes + c.s.prepared
    return 0


cdef struct WinoPhase:
    # one block of tiles, one of its three phases split over the pool (wino_run)
    WinoCall *c
    float *V
    float *Mx
    long T0
    int nb
    int ok


cdef void wino_prepare_task(void *ctx, long ch, int worker) noexcept nogil:
    cdef WinoCall *c = <WinoCall *> ctx
    prepare_channel(c.x, c.planes, &c.s, <int> ch)


cdef void wino_block_task(void *ctx, long blk, int worker) noexcept nogil:
    """A whole block of tiles on one thread, in the worker's own scratch slot."""
    cdef WinoPhase *p = <WinoPhase *> ctx
    cdef WinoCall *c = p.c
    if not block_serial(c, c.scratch + worker * c.s.slot_floats, <int> blk):
        p.ok = 0


cdef void wino_input_task(void *ctx, long ch, int worker) noexcept nogil:
    cdef WinoPhase *p = <WinoPhase *> ctx
    input_channel(p.c.planes, p.V, &p.c.s, &p.c.tiles, <int> ch, p.T0, p.nb)


cdef void wino_gemm_task(void *ctx, long xi, int worker) noexcept nogil:
    cdef WinoPhase *p = <WinoPhase *> ctx
    if not gemm_position(p.c.U, p.V, p.Mx, &p.c.s, <int> xi, p.nb):
        p.ok = 0


cdef void wino_output_task(void *ctx, long mo, int worker) noexcept nogil:
    cdef WinoPhase *p = <WinoPhase *> ctx
    cdef WinoCall *c = p.c
    output_channel(p.Mx, c.bias, c.y, &c.s, &c.tiles, <int> mo, p.T0, p.nb)


cdef int wino_run(WinoCall *c) noexcept nogil:
    """The convolution, GIL-free: 0, or 1 when the GEMM's packing buffers cannot be allocated."""
    cdef WinoShape *s = &c.s
    cdef int blk, ch, ok = 1, nthreads = c.nthreads
    cdef float *sp = c.scratch
    cdef WinoPhase p
    p.c = c
    p.V = sp
    p.Mx = sp + <long> s.alpha * s.alpha * s.C * s.ldv
    p.ok = 1
    if c.empty:
        return 0
    if nthreads > 1:
        ember_parallel(nthreads, s.C, wino_prepare_task, c)
    else:
        for ch in range(s.C):
            prepare_channel(c.x, c.planes, s, ch)
    if c.slots > 1:
        ember_parallel(c.slots, s.nblocks, wino_block_task, &p)
        ok = p.ok
    elif nthreads == 1 or <double> s.alpha * s.alpha * s.Mp * s.C * s.TB < 8e6:
        # one thread, or too little work for three team barriers per block (on a busy machine
        # each may wait a time slice for a descheduled thread)
        for blk in range(s.nblocks):
            ok = block_serial(c, sp, blk) and ok
    else:   # few tiles: each phase of a block split over the team
        for blk in range(s.nblocks):
            p.T0 = block_first(s, blk)
            p.nb = block_tiles(s, blk)
            ember_parallel(nthreads, s.C, wino_input_task, &p)
            ember_parallel(nthreads, s.alpha * s.alpha, wino_gemm_task, &p)
            ember_parallel(nthreads, s.M, wino_output_task, &p)
        ok = p.ok
    return 0 if ok else 1


def conv2d_winograd(float[:, :, :, ::1] x, float[:, ::1] U, bias, float[:, :, :, ::1] y,
                    float[::1] scratch, int tile, int pad_top, int pad_left, int act,
                    float act_a, float act_b, int nthreads):
    """y = act(conv3x3(x, w) + bias) for stride 1, dilation 1, group 1, with U =
    winograd_weights(w, tile); bottom/right pads are implied by y's size.
    ``scratch`` holds at least one slot (winograd_scratch_floats with nthreads = 1)."""
    cdef WinoCall c
    cdef int rc
    wino_prepare(&c, x, U, bias, y, scratch, tile, pad_top, pad_left, act, act_a, act_b,
                 nthreads)
    with nogil:
        rc = wino_run(&c)
    if rc:
        raise MemoryError("conv2d_winograd: cannot allocate GEMM packing buffers")


cdef int wino_native(void *state) noexcept nogil:
    return wino_run(<WinoCall *> state)


cdef class WinogradStep:
    """conv2d_winograd with its arguments resolved once (bind time), runnable by
    ``plan.PlanRunner`` with no Python in between (constant weights: U is fixed). Holds its
    arrays, so their buffers outlive the step."""
    cdef WinoCall call
    cdef ember_native_step native
    cdef object keep
    cdef public int winograd_tile

    def __init__(self, float[:, :, :, ::1] x, float[:, ::1] U, bias, float[:, :, :, ::1] y,
                 float[::1] scratch, int tile, int pad_top, int pad_left, int act, float act_a,
                 float act_b, int nthreads):
        wino_prepare(&self.call, x, U, bias, y, scratch, tile, pad_top, pad_left, act, act_a,
                     act_b, nthreads)
        self.keep = (x, U, bias, y, scratch)
        self.winograd_tile = tile
        self.native.fn = wino_native
        self.native.state = &self.call

    def __call__(self):
        cdef int rc
        with nogil:
            rc = wino_run(&self.call)
        if rc:
            self.raise_for(rc)

    def raise_for(self, int rc):
        raise MemoryError("conv2d_winograd: cannot allocate GEMM packing buffers")

    @property
    def _native(self):
        """A capsule holding the step's C entry point, for plan.PlanRunner."""
        return PyCapsule_New(&self.native, EMBER_NATIVE_CAPSULE, NULL)
