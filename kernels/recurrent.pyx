"""RNN, GRU and LSTM forward (ONNX gate order, sigmoid/tanh cells) with the time loop in C.

How one call runs (graph/ops/recurrent.py is the definition it is tested against):

1. ``xw`` = X·Wᵀ + biases for every step, batch row and direction: one GEMM (``ember_sgemm``).
2. For each direction, for each step: each thread takes whole *blocks* of hidden units and, for
   its block, computes the recurrent product of the state with the block's rows of R (every
   gate of those units, so a block's epilogue needs no other thread's product), then the fused
   epilogue: gate pre-activations, nonlinearities (the vector sigmoid/tanh of the activation
   table), the state update, Y. One barrier per step (GRU without ``linear_before_reset``: two,
   since (r ⊙ Hₜ₋₁)·Rhᵀ needs every unit's r).
3. The activated gates of every step are left in ``xw`` (slot of gate g, unit j at
   ``xw[row(t, b), d·G·H + g·H + j]``; zeros at a step past a row's length): what the
   backward (kernels/recurrent_grad.pyx) reads when ``xw`` is a training graph's saved-gates
   output.

The recurrent product has two forms, picked at bind time by the batch (``panels``):
``panels`` — R's block rows packed as the GEMM packs A (MR-row micro-panels) and the state kept
packed as its B (NR-column panels, batch as columns), so each step is ``ember_packed_gemm`` with
no packing at all; otherwise (a batch far below NR) R's block rows are stored transposed,
``H × rows``, and the product is a row update per state element (``axpy``), which wastes no
columns. State element (b, j) lives at ``(b / nr)·H·nr + j·nr + b % nr`` (nr = 1 for axpy).
"""
from libc.string cimport memset

from kernels.activation cimport ACT_SIGMOID, ACT_TANH
from kernels.parallel cimport threads_for, ember_parallel
from kernels.sgemm cimport (ember_bias_act, ember_gemm_mr, ember_gemm_nr, ember_packed_gemm,
                            ember_sgemm)
from kernels.simd cimport use_simd

cdef extern from "simd.h" nogil:
    void ember_act_span(float *p, long n, int code, float a, float b)
    void ember_axpy_span(float *y, const float *x, long n, float alpha)

use_simd()

CELL_RNN = 0
CELL_GRU = 1
CELL_LSTM = 2


def gemm_mr():
    """Rows of the GEMM micro-panel (the packed R's row granularity) at the level in use."""
    return ember_gemm_mr()


def gemm_nr():
    """Columns of the GEMM micro-panel (the packed state's batch granularity)."""
    return ember_gemm_nr()


def gather(const float[::1] src, const long long[::1] index, float[::1] dst):
    """dst[i] = src[index[i]], 0 where index[i] < 0: packs R by the map the binder built."""
    cdef Py_ssize_t i, n = dst.shape[0]
    with nogil:
        for i in range(n):
            dst[i] = src[index[i]] if index[i] >= 0 else 0.0


cdef struct Cell:
    int cell, T, B, H, D, G, layout, nblocks, nparts, nr, panels, ncols, lbr, input_forget
    int has_clip
    float clip
    long long vsize          # floats of one state buffer
    const float *U           # packed R, every direction
    const long long *part_off
    const int *part_rows
    const int *part_padded
    const long long *mx_off
    const int *j0s
    float *xw
    float *V0
    float *V1
    float *V2
    float *C                 # LSTM cell state, B × H
    float *tmp               # B × H
    float *Mx
    float *Y
    const float *P           # LSTM peepholes of the direction in use, 3H (or NULL)
    const float *Rbh         # GRU linear_before_reset: Rb of the h gate, per direction (or NULL)
    const int *lens


cdef inline long long xw_row(const Cell *c, int t, int b) noexcept nogil:
    return (<long long>b * c.T + t) if c.layout else (<long long>t * c.B + b)


cdef inline long long y_off(const Cell *c, int t, int d, int b) noexcept nogil:
    if c.layout:
        return ((<long long>b * c.T + t) * c.D + d) * c.H
    return ((<long long>t * c.D + d) * c.B + b) * c.H


cdef inline long long state_at(const Cell *c, int b, int j) noexcept nogil:
    return (<long long>(b // c.nr)) * c.H * c.nr + <long long>j * c.nr + b % c.nr


cdef inline void clip_span(const Cell *c, float *p, int n) noexcept nogil:
    cdef int i
    if c.has_clip:
        for i in range(n):
            p[i] = c.clip if p[i] > c.clip else (-c.clip if p[i] < -c.clip else p[i])


cdef void block_product(const Cell *c, int d, int k, int part, const float *V,
                        long long *rs, long long *bs) noexcept nogil:
    """Mx block = this block-part's rows of R · state (every batch column); (rs, bs): the
    strides of (row, batch) in the result."""
    cdef int q = k * c.nparts + part
    cdef int rows = c.part_rows[q]
    cdef const float *U = c.U + c.part_off[(d * c.nblocks + k) * c.nparts + part]
    cdef float *M = c.Mx + c.mx_off[q]
    cdef int ch, b
    cdef float hv
    cdef const float *urow
    if c.panels:
        ember_packed_gemm(U, V, M, c.part_padded[q], c.H, c.ncols, c.ncols)
        rs[0], bs[0] = c.ncols, 1
        return
    memset(M, 0, sizeof(float) * rows * c.B)
    for ch in range(c.H):
        urow = U + <long long>ch * rows
        for b in range(c.B):
            hv = V[<long long>b * c.H + ch]
            ember_axpy_span(M + <long long>b * rows, urow, rows, hv)   # the level's vectors
    rs[0], bs[0] = 1, rows


cdef void freeze(const Cell *c, int d, int t, int b, int j0, int u, const float *Vin,
                 float *Vout) noexcept nogil:
    """A step at or past batch row b's length: the state carries over, Y and the saved gates
    get zeros."""
    cdef int j, gate
    cdef float *g = c.xw + xw_row(c, t, b) * c.D * c.G * c.H + d * c.G * c.H
    for j in range(j0, j0 + u):
        for gate in range(c.G):
            g[gate * c.H + j] = 0.0
        Vout[state_at(c, b, j)] = Vin[state_at(c, b, j)]
        if c.Y != NULL:
            c.Y[y_off(c, t, d, b) + j] = 0.0


cdef inline void emit(const Cell *c, int d, int t, int b, int j, float h, float *Vout) noexcept nogil:
    Vout[state_at(c, b, j)] = h
    if c.Y != NULL:
        c.Y[y_off(c, t, d, b) + j] = h


cdef void phase_one(const Cell *c, int d, int k, int t, const float *Vin,
                    float *Vout) noexcept nogil:
    """Block k's product and epilogue at step t (GRU without linear_before_reset: its z and r,
    and r ⊙ Hₜ₋₁ into V2)."""
    cdef int j0 = c.j0s[k], u = c.j0s[k + 1] - c.j0s[k], H = c.H
    cdef long long rs, bs
    cdef int b, j, jj
    cdef float *g
    cdef const float *M = c.Mx + c.mx_off[k * c.nparts]
    cdef float hp, cn, z
    block_product(c, d, k, 0, Vin, &rs, &bs)
    for b in range(c.B):
        if c.lens != NULL and t >= c.lens[b]:
            if c.cell == 1 and not c.lbr:
                for j in range(j0, j0 + u):
                    c.V2[state_at(c, b, j)] = 0.0
            else:
                freeze(c, d, t, b, j0, u, Vin, Vout)
            continue
        g = c.xw + xw_row(c, t, b) * c.D * c.G * H + d * c.G * H
        if c.cell == 0:
            for jj in range(u):
                g[j0 + jj] += M[jj * rs + b * bs]
            clip_span(c, g + j0, u)
            ember_act_span(g + j0, u, ACT_TANH, 0, 0)
            for j in range(j0, j0 + u):
                emit(c, d, t, b, j, g[j], Vout)
        elif c.cell == 2:
            for jj in range(u):
                j = j0 + jj
                g[j] += M[jj * rs + b * bs]                                  # i
                g[H + j] += M[(u + jj) * rs + b * bs]                        # o
                g[2 * H + j] += M[(2 * u + jj) * rs + b * bs]                # f
                g[3 * H + j] += M[(3 * u + jj) * rs + b * bs]                # c
                if c.P != NULL:
                    g[j] += c.P[j] * c.C[b * H + j]
                    g[2 * H + j] += c.P[2 * H + j] * c.C[b * H + j]
            clip_span(c, g + j0, u)
            clip_span(c, g + 2 * H + j0, u)
            clip_span(c, g + 3 * H + j0, u)
            ember_act_span(g + j0, u, ACT_SIGMOID, 0, 0)
            if c.input_forget:
                for j in range(j0, j0 + u):
                    g[2 * H + j] = 1.0 - g[j]
            else:
                ember_act_span(g + 2 * H + j0, u, ACT_SIGMOID, 0, 0)
            ember_act_span(g + 3 * H + j0, u, ACT_TANH, 0, 0)
            for j in range(j0, j0 + u):
                cn = g[2 * H + j] * c.C[b * H + j] + g[j] * g[3 * H + j]
                c.C[b * H + j] = cn
                c.tmp[b * H + j] = cn
                if c.P != NULL:
                    g[H + j] += c.P[H + j] * cn
            clip_span(c, g + H + j0, u)
            ember_act_span(g + H + j0, u, ACT_SIGMOID, 0, 0)
            ember_act_span(c.tmp + b * H + j0, u, ACT_TANH, 0, 0)
            for j in range(j0, j0 + u):
                emit(c, d, t, b, j, g[H + j] * c.tmp[b * H + j], Vout)
        else:
            for jj in range(u):
                j = j0 + jj
                g[j] += M[jj * rs + b * bs]                                  # z
                g[H + j] += M[(u + jj) * rs + b * bs]                        # r
            clip_span(c, g + j0, u)
            clip_span(c, g + H + j0, u)
            ember_act_span(g + j0, u, ACT_SIGMOID, 0, 0)
            ember_act_span(g + H + j0, u, ACT_SIGMOID, 0, 0)
            if not c.lbr:
                for j in range(j0, j0 + u):
                    c.V2[state_at(c, b, j)] = g[H + j] * Vin[state_at(c, b, j)]
                continue
            for jj in range(u):
                j = j0 + jj
                g[2 * H + j] += g[H + j] * (M[(2 * u + jj) * rs + b * bs] + c.Rbh[j])
            clip_span(c, g + 2 * H + j0, u)
            ember_act_span(g + 2 * H + j0, u, ACT_TANH, 0, 0)
            for j in range(j0, j0 + u):
                z = g[j]
                hp = Vin[state_at(c, b, j)]
                emit(c, d, t, b, j, (1.0 - z) * g[2 * H + j] + z * hp, Vout)


cdef void phase_two(const Cell *c, int d, int k, int t, const float *Vin,
                    float *Vout) noexcept nogil:
    """GRU without linear_before_reset, once every unit's r is known: block k's
    (r ⊙ Hₜ₋₁)·Rhᵀ, then h̃ and the state update."""
    cdef int j0 = c.j0s[k], u = c.j0s[k + 1] - c.j0s[k], H = c.H
    cdef long long rs, bs
    cdef int b, j, jj
    cdef float *g
    cdef const float *M = c.Mx + c.mx_off[k * c.nparts + 1]
    cdef float z
    block_product(c, d, k, 1, c.V2, &rs, &bs)
    for b in range(c.B):
        if c.lens != NULL and t >= c.lens[b]:
            freeze(c, d, t, b, j0, u, Vin, Vout)
            continue
        g = c.xw + xw_row(c, t, b) * c.D * c.G * H + d * c.G * H
        for jj in range(u):
            g[2 * H + j0 + jj] += M[jj * rs + b * bs]
        clip_span(c, g + 2 * H + j0, u)
        ember_act_span(g + 2 * H + j0, u, ACT_TANH, 0, 0)
        for j in range(j0, j0 + u):
            z = g[j]
            emit(c, d, t, b, j, (1.0 - z) * g[2 * H + j] + z * Vin[state_at(c, b, j)], Vout)


cdef struct StepJob:
    const Cell *c
    int d, t
    const float *Vin
    float *Vout


cdef void phase_one_task(void *ctx, long k, int worker) noexcept nogil:
    cdef const StepJob *j = <const StepJob *> ctx
    phase_one(j.c, j.d, <int> k, j.t, j.Vin, j.Vout)


cdef void phase_two_task(void *ctx, long k, int worker) noexcept nogil:
    cdef const StepJob *j = <const StepJob *> ctx
    phase_two(j.c, j.d, <int> k, j.t, j.Vin, j.Vout)


cdef void run_direction(Cell *c, int d, bint reverse, int nt) noexcept nogil:
    """The time loop of direction d: each step's blocks shared by nt threads, the state
    buffers swapping roles every step; a parallel call's return is the step's barrier."""
    cdef int s
    cdef StepJob step
    step.c = c
    step.d = d
    for s in range(c.T):
        step.t = c.T - 1 - s if reverse else s
        step.Vin = c.V0 if s % 2 == 0 else c.V1
        step.Vout = c.V1 if s % 2 == 0 else c.V0
        ember_parallel(nt, c.nblocks, phase_one_task, &step)
        if c.cell == 1 and not c.lbr:
            ember_parallel(nt, c.nblocks, phase_two_task, &step)


cdef inline float *out_ptr(float[::1] a) noexcept:
    return &a[0] if a is not None and a.shape[0] else NULL


cdef inline const float *in_ptr(const float[::1] a) noexcept:
    return &a[0] if a is not None and a.shape[0] else NULL


def _flat(a):
    return None if a is None else a.reshape(-1)


def recurrent_forward(int cell, const float[:, ::1] X, const float[:, ::1] W_all,
                      const float[::1] bias_all, float[:, ::1] xw, const float[::1] U,
                      const long long[::1] part_off, const int[::1] part_rows,
                      const int[::1] part_padded, const long long[::1] mx_off,
                      const int[::1] j0s, float[::1] work, Y, Y_h, Y_c, init_h, init_c, P,
                      Rbh, lens, int T, int B, int H, int D, str direction, int layout,
                      int nr, bint panels, int nparts, int lbr, int input_forget, clip,
                      int nthreads):
    """The forward of one RNN (cell 0), GRU (1) or LSTM (2) node, float32 (see the module
    docstring). X is ``[rows, input]`` with rows (t, b) (layout 0) or (b, t) (layout 1);
    ``W_all`` ``[D·G·H, input]`` and ``bias_all`` ``[D·G·H]`` (biases folded into the input
    projection); ``xw`` ``[rows, D·G·H]`` receives the activated gates. ``work``: the state,
    product and temporary buffers (``recurrent_work_floats``). ``lens`` is int32 ``[B]`` already
    checked to lie in [0, T], or None. Optional arrays are None when absent."""
    cdef Cell c
    cdef int G = (1, 3, 4)[cell]
    cdef int ncols = ((B + nr - 1) // nr) * nr
    cdef long long vsize = _round16(<long long>ncols * H)
    cdef int nblocks = j0s.shape[0] - 1
    cdef long long mx_total = mx_off[mx_off.shape[0] - 1]
    cdef float[::1] kY = _flat(Y), kYh = _flat(Y_h), kYc = _flat(Y_c)
    cdef const float[::1] kh0 = _flat(init_h), kc0 = _flat(init_c), kP = _flat(P)
    cdef const float[::1] kRbh = _flat(Rbh)
    cdef const int[::1] klens = lens
    cdef bint reverse_all = direction == "reverse"
    cdef const float *h0
    cdef const float *c0
    cdef float *Yh
    cdef float *Yc
    cdef const float *Pall
    cdef const float *Rball
    cdef int d, b, j, nt, ok = 1
    cdef bint empty
    cdef long long so
    cdef ember_bias_act epi
    c.cell, c.T, c.B, c.H, c.D, c.G, c.layout = cell, T, B, H, D, G, layout
    c.nblocks, c.nparts, c.nr, c.panels, c.ncols = nblocks, nparts, nr, panels, ncols
    c.lbr, c.input_forget = lbr, input_forget
    c.has_clip = clip is not None
    c.clip = float(clip) if clip is not None else 0.0
    c.vsize = vsize
    c.U = &U[0]
    c.part_off, c.part_rows, c.part_padded = &part_off[0], &part_rows[0], &part_padded[0]
    c.mx_off, c.j0s = &mx_off[0], &j0s[0]
    c.xw = &xw[0, 0] if xw.shape[0] else NULL
    c.V0 = &work[0]
    c.V1 = c.V0 + vsize
    c.V2 = c.V1 + vsize
    c.C = c.V2 + vsize
    c.tmp = c.C + _round16(<long long>B * H)
    c.Mx = c.tmp + _round16(<long long>B * H)
    c.Y = out_ptr(kY)
    Yh = out_ptr(kYh)
    Yc = out_ptr(kYc)
    h0 = in_ptr(kh0)
    c0 = in_ptr(kc0)
    Pall = in_ptr(kP)
    Rball = in_ptr(kRbh)
    c.lens = &klens[0] if klens is not None and klens.shape[0] else NULL
    nt = threads_for(nthreads, <long>B * G * H * H)
    epi.bias, epi.bias_axis, epi.act, epi.act_a, epi.act_b = &bias_all[0], 1, 0, 0.0, 0.0
    with nogil:
        if X.shape[0] > 0:
            ok = ember_sgemm(0, 1, X.shape[0], D * G * H, X.shape[1], 1.0,
                             &X[0, 0] if X.shape[1] else NULL, X.shape[1], &W_all[0, 0]
                             if X.shape[1] else NULL, X.shape[1], 0.0, c.xw, D * G * H, &epi,
                             nthreads)
        for d in range(D):
            memset(c.V0, 0, sizeof(float) * 3 * vsize)
            memset(c.Mx, 0, sizeof(float) * mx_total)
            for b in range(B):
                for j in range(H):
                    so = (<long long>b * D + d) * H + j if layout else (<long long>d * B + b) * H + j
                    c.V0[state_at(&c, b, j)] = h0[so] if h0 != NULL else 0.0
                    c.C[b * H + j] = c0[so] if c0 != NULL else 0.0
            c.P = Pall + d * 3 * H if Pall != NULL else NULL
            c.Rbh = Rball + d * H if Rball != NULL else NULL
            run_direction(&c, d, reverse_all or d == 1, nt)
            for b in range(B):
                empty = c.lens != NULL and c.lens[b] == 0   # ends in zeros, as onnxruntime's
                for j in range(H):
                    so = (<long long>b * D + d) * H + j if layout else (<long long>d * B + b) * H + j
                    if Yh != NULL:
                        Yh[so] = 0.0 if empty else (c.V0 if T % 2 == 0 else c.V1)[state_at(&c, b, j)]
                    if Yc != NULL:
                        Yc[so] = 0.0 if empty else c.C[b * H + j]
    if not ok:
        raise MemoryError("ember recurrent: cannot allocate GEMM packing buffers")


cdef inline long long _round16(long long n) noexcept nogil:
    return (n + 15) // 16 * 16


def recurrent_work_floats(int B, int H, int nr, long long mx_total):
    """Floats of ``work`` for batch B, hidden size H, state panel width nr and a product buffer
    of ``mx_total`` floats: three state buffers, the cell state, a temporary, the product."""
    cdef long long ncols = ((B + nr - 1) // nr) * nr
    return 3 * _round16(ncols * H) + 2 * _round16(<long long>B * H) + mx_total
