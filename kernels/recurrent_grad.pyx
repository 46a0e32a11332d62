"""Backpropagation through time for RNN, GRU and LSTM (ONNX gate order, sigmoid/tanh cells).

The forward kernel (kernels/recurrent.pyx) left every step's activated gates in the saved-gates
output ``S`` ``[rows, D·G·H]`` (rows in X's order: (t, b), or (b, t) for layout 1) and the
states in Y. One call, per direction:

1. Rebuild, in the order the forward ran, each step's previous state ``Hprev`` (and for LSTM
   the cell states before and after, from the saved gates: Cₜ = f ⊙ Cₜ₋₁ + i ⊙ c̃), each
   ``[rows, H]``; GRU with ``linear_before_reset``: ``M = Hprev·Rhᵀ + Rbh`` in one GEMM.
2. Walk the steps backwards: the gate gradients of the step's batch rows (threads over batch
   rows) into ``dXW`` (the gradient of the input projection) and ``dA`` (of the recurrent
   product's input; it differs from ``dXW`` only in GRU ``linear_before_reset``'s h gate), then
   one product ``dH += dAₜ·R`` for the previous state, computed as ``Rᵀ·dAₜᵀ`` on Rᵀ packed
   once per direction as the GEMM packs A, with dAₜ packed into its batch columns, threads
   over bands of Rᵀ's rows (``ember_packed_gemm``, the forward's form; GRU without
   ``linear_before_reset`` calls ``ember_sgemm`` twice: first ``dAₕ·Rh``, which r's gradient
   needs, then the z, r rows).
3. The weight gradients as single GEMMs over every step: ``dR = dAᵀ·Hprev`` (GRU's h rows
   without ``linear_before_reset``: ``dAₕᵀ·(r ⊙ Hprev)``); biases and peepholes as column sums
   (threads over bands of columns, rows outermost, in double).

After both directions: ``dX = dXW·W`` and ``dW = dXWᵀ·X``, one GEMM each. A step at or past a
row's sequence length has zero gate gradients and passes the state gradient through; a row of
length 0 ends in zeros (as onnxruntime), so its final states' gradients are dropped.
"""
from libc.string cimport memcpy, memset

from kernels.parallel cimport threads_for, ember_parallel
from kernels.activation cimport ACT_TANH
from kernels.sgemm cimport (ember_bias_act, ember_gemm_mr, ember_gemm_nr, ember_packed_gemm,
                            ember_sgemm)
from kernels.simd cimport use_simd

cdef extern from "simd.h" nogil:
    void ember_act_span(float *p, long n, int code, float a, float b)

use_simd()

CELL_RNN = 0
CELL_GRU = 1
CELL_LSTM = 2


cdef struct Back:
    int cell, T, B, H, D, G, layout, lbr, input_forget
    long long GH, DGH
    const float *S          # saved gates [rows, D·G·H]
    const float *Y
    const float *dY         # or NULL
    const float *P          # this direction's peepholes (3H) or NULL
    const int *lens         # or NULL
    float *dXW              # [rows, D·G·H]
    float *dA               # == dXW except GRU linear_before_reset
    float *Hprev            # [rows, H]
    float *Cprev            # LSTM [rows, H]
    float *Cnew             # LSTM [rows, H]
    float *M                # GRU lbr=1: Hprev·Rhᵀ + Rbh; lbr=0: r ⊙ Hprev; LSTM: tanh(Cnew)
    float *dh               # [B, H]
    float *dh_next          # [B, H]
    float *dc               # LSTM [B, H]
    float *drh              # GRU lbr=0 [B, H]
    bint packed             # the per-step product on R packed once (not GRU lbr=0)
    int mr, nr, Mp, ncols, nblk
    float *U                # Rᵀ packed as the GEMM's A: [Mp × G·H] in MR-row micro-panels
    float *V                # dAₜᵀ packed as its B: [G·H × ncols] in NR-column panels
    float *Mx               # (dAₜ·R)ᵀ: [Mp × ncols]


cdef inline long long row_of(const Back *k, int t, int b) noexcept nogil:
    return (<long long>b * k.T + t) if k.layout else (<long long>t * k.B + b)


cdef inline long long y_off(const Back *k, int t, int d, int b) noexcept nogil:
    if k.layout:
        return ((<long long>b * k.T + t) * k.D + d) * k.H
    return ((<long long>t * k.D + d) * k.B + b) * k.H


cdef inline long long state_off(const Back *k, int d, int b) noexcept nogil:
    return ((<long long>b * k.D + d) * k.H) if k.layout else ((<long long>d * k.B + b) * k.H)


cdef inline bint live(const Back *k, int t, int b) noexcept nogil:
    return k.lens == NULL or t < k.lens[b]


cdef void rebuild_states(Back *k, int d, bint reverse, const float *h0,
                         const float *c0) noexcept nogil:
    """Hprev (and LSTM's Cprev, Cnew) of every step, zeros where a step is not live; dh holds
    the running state, dc the running cell state."""
    cdef int s, t, b, j, H = k.H
    cdef long long row
    cdef const float *g
    cdef float cn
    for b in range(k.B):
        for j in range(H):
            k.dh[b * H + j] = h0[state_off(k, d, b) + j] if h0 != NULL else 0.0
            if k.cell == 2:
                k.dc[b * H + j] = c0[state_off(k, d, b) + j] if c0 != NULL else 0.0
    for s in range(k.T):
        t = k.T - 1 - s if reverse else s
        for b in range(k.B):
            row = row_of(k, t, b)
            if not live(k, t, b):
                memset(k.Hprev + row * H, 0, sizeof(float) * H)
                if k.cell == 2:
                    memset(k.Cprev + row * H, 0, sizeof(float) * H)
                    memset(k.Cnew + row * H, 0, sizeof(float) * H)
                continue
            memcpy(k.Hprev + row * H, k.dh + b * H, sizeof(float) * H)
            memcpy(k.dh + b * H, k.Y + y_off(k, t, d, b), sizeof(float) * H)
            if k.cell == 2:
                g = k.S + row * k.DGH + d * k.GH
                for j in range(H):
                    k.Cprev[row * H + j] = k.dc[b * H + j]
                    cn = g[2 * H + j] * k.dc[b * H + j] + g[j] * g[3 * H + j]
                    k.Cnew[row * H + j] = cn
                    k.M[row * H + j] = cn
                    k.dc[b * H + j] = cn
                ember_act_span(k.M + row * H, H, ACT_TANH, 0, 0)


cdef void rnn_row(Back *k, int d, int t, int b) noexcept nogil:
    cdef int j, H = k.H
    cdef long long row = row_of(k, t, b)
    cdef const float *g = k.S + row * k.DGH + d * k.GH
    cdef float *dx = k.dXW + row * k.DGH + d * k.GH
    cdef float *dh = k.dh + b * H
    for j in range(H):
        dx[j] = dh[j] * (1.0 - g[j] * g[j])
        k.dh_next[b * H + j] = 0.0


cdef void lstm_row(Back *k, int d, int t, int b) noexcept nogil:
    cdef int j, H = k.H
    cdef long long row = row_of(k, t, b)
    cdef const float *g = k.S + row * k.DGH + d * k.GH
    cdef float *dx = k.dXW + row * k.DGH + d * k.GH
    cdef float *dh = k.dh + b * H
    cdef float *dc = k.dc + b * H
    cdef float i, o, f, cc, cp, tc, gh, da_o, dcn, dfg, di, da_i, da_f
    for j in range(H):
        i, o, f, cc = g[j], g[H + j], g[2 * H + j], g[3 * H + j]
        cp = k.Cprev[row * H + j]
        tc = k.M[row * H + j]
        gh = dh[j]
        da_o = gh * tc * o * (1.0 - o)
        dcn = dc[j] + gh * o * (1.0 - tc * tc)
        if k.P != NULL:
            dcn = dcn + da_o * k.P[H + j]
        dfg = dcn * cp
        di = dcn * cc
        if k.input_forget:
            di = di - dfg
            da_f = 0.0
        else:
            da_f = dfg * f * (1.0 - f)
        da_i = di * i * (1.0 - i)
        dx[j] = da_i
        dx[H + j] = da_o
        dx[2 * H + j] = da_f
        dx[3 * H + j] = dcn * i * (1.0 - cc * cc)
        dc[j] = dcn * f
        if k.P != NULL:
            dc[j] = dc[j] + da_i * k.P[j] + da_f * k.P[2 * H + j]
        k.dh_next[b * H + j] = 0.0


cdef void gru_row(Back *k, int d, int t, int b, int phase) noexcept nogil:
    """linear_before_reset: everything (phase 0). Otherwise phase 0: the h gate's gradient
    (what dAₕ·Rh needs); phase 1, after that product: z's and r's, and r ⊙ Hprev."""
    cdef int j, H = k.H
    cdef long long row = row_of(k, t, b)
    cdef const float *g = k.S + row * k.DGH + d * k.GH
    cdef float *dx = k.dXW + row * k.DGH + d * k.GH
    cdef float *da = k.dA + row * k.DGH + d * k.GH
    cdef float *dh = k.dh + b * H
    cdef float z, r, hh, hp, da_h, dr, m
    for j in range(H):
        z, r, hh = g[j], g[H + j], g[2 * H + j]
        hp = k.Hprev[row * H + j]
        if phase == 0:
            da_h = dh[j] * (1.0 - z) * (1.0 - hh * hh)
            dx[2 * H + j] = da_h
            if not k.lbr:
                continue
            m = k.M[row * H + j]
            da[2 * H + j] = da_h * r
            dr = da_h * m
            k.dh_next[b * H + j] = dh[j] * z
        else:
            dr = k.drh[b * H + j] * hp
            k.M[row * H + j] = r * hp
            k.dh_next[b * H + j] = dh[j] * z + k.drh[b * H + j] * r
        dx[j] = dh[j] * (hp - hh) * z * (1.0 - z)
        dx[H + j] = dr * r * (1.0 - r)
        if k.lbr:
            da[j] = dx[j]
            da[H + j] = dx[H + j]


cdef void dead_row(Back *k, int d, int t, int b) noexcept nogil:
    """A step past row b's length: no gate gradient, the state gradient passes through."""
    cdef long long row = row_of(k, t, b)
    memset(k.dXW + row * k.DGH + d * k.GH, 0, sizeof(float) * k.GH)
    if k.dA != k.dXW:
        memset(k.dA + row * k.DGH + d * k.GH, 0, sizeof(float) * k.GH)
    memcpy(k.dh_next + b * k.H, k.dh + b * k.H, sizeof(float) * k.H)
    if k.cell == 1 and not k.lbr:
        memset(k.drh + b * k.H, 0, sizeof(float) * k.H)
        memset(k.M + row * k.H, 0, sizeof(float) * k.H)


cdef void add_dy(Back *k, int d, int t, int b) noexcept nogil:
    cdef int j
    if k.dY != NULL:
        for j in range(k.H):
            k.dh[b * k.H + j] += k.dY[y_off(k, t, d, b) + j]


# One backward step of direction d at time t, shared by its tasks (batch rows, or bands of
# Rᵀ's rows of width `band`).
cdef struct StepBackJob:
    Back *k
    int d, t, band


cdef void gate_row_task(void *ctx, long b, int worker) noexcept nogil:
    """Batch row b's gate gradients at the step (GRU without linear_before_reset: z, r's
    first half)."""
    cdef const StepBackJob *j = <const StepBackJob *> ctx
    cdef Back *k = j.k
    if not live(k, j.t, <int> b):
        dead_row(k, j.d, j.t, <int> b)
        return
    add_dy(k, j.d, j.t, <int> b)
    if k.cell == 0:
        rnn_row(k, j.d, j.t, <int> b)
    elif k.cell == 2:
        lstm_row(k, j.d, j.t, <int> b)
    else:
        gru_row(k, j.d, j.t, <int> b, 0)


cdef void gru_reset_row_task(void *ctx, long b, int worker) noexcept nogil:
    """GRU without linear_before_reset, once dAₕ·Rh is known: batch row b's r gradient."""
    cdef const StepBackJob *j = <const StepBackJob *> ctx
    if live(j.k, j.t, <int> b):
        gru_row(j.k, j.d, j.t, <int> b, 1)


cdef int step_back(Back *k, int d, int t, const float *Rd, int nt, int nthreads) noexcept nogil:
    """One step's gate gradients and dh_next = (elementwise part) + dAₜ·R."""
    cdef int H = k.H, ok = 1
    cdef long long lda = k.DGH * k.T if k.layout else k.DGH
    cdef long long first = row_of(k, t, 0) * k.DGH + d * k.GH
    cdef StepBackJob step
    step.k, step.d, step.t, step.band = k, d, t, 0
    ember_parallel(nt, k.B, gate_row_task, &step)
    if k.cell == 1 and not k.lbr:
        ok = ember_sgemm(0, 0, k.B, H, H, 1.0, k.dXW + first + 2 * H, lda, Rd + 2 * H * H, H,
                         0.0, k.drh, H, NULL, nthreads)
        ember_parallel(nt, k.B, gru_reset_row_task, &step)
        ok = ok & ember_sgemm(0, 0, k.B, H, 2 * H, 1.0, k.dXW + first, lda, Rd, H, 1.0,
                              k.dh_next, H, NULL, nthreads)
        return ok
    if not k.packed:
        return ember_sgemm(0, 0, k.B, H, <int>k.GH, 1.0, k.dA + first, lda, Rd, H, 1.0,
                           k.dh_next, H, NULL, nthreads)
    packed_product(&step, nt)
    return 1


cdef void pack_rt(Back *k, const float *Rd) noexcept nogil:
    """U = Rᵀ in the GEMM's A micro-panels (once per direction)."""
    cdef int j, q
    cdef long long GH = k.GH
    memset(k.U, 0, sizeof(float) * k.Mp * GH)
    for j in range(k.H):
        for q in range(<int>GH):
            k.U[(j // k.mr) * GH * k.mr + <long long>q * k.mr + j % k.mr] = Rd[q * k.H + j]


cdef void rt_band_task(void *ctx, long blk, int worker) noexcept nogil:
    """Band blk of Rᵀ's rows times the packed dAₜᵀ."""
    cdef const StepBackJob *j = <const StepBackJob *> ctx
    cdef const Back *k = j.k
    cdef int i0 = <int> blk * j.band
    cdef int rows = k.Mp - i0 if k.Mp - i0 < j.band else j.band
    if rows > 0:
        ember_packed_gemm(k.U + <long long>i0 * k.GH, k.V, k.Mx + <long long>i0 * k.ncols,
                          rows, <int>k.GH, k.ncols, k.ncols)


cdef void add_product_row_task(void *ctx, long b, int worker) noexcept nogil:
    """dh_next[b] += column b of the transposed product."""
    cdef const Back *k = (<const StepBackJob *> ctx).k
    cdef int j
    for j in range(k.H):
        k.dh_next[b * k.H + j] += k.Mx[<long long>j * k.ncols + b]


cdef void packed_product(StepBackJob *step, int nt) noexcept nogil:
    """dh_next += dAₜ·R as (Rᵀ·dAₜᵀ): dAₜ packed into V's batch columns, each thread taking
    a band of Rᵀ's rows, then the transposed product added in."""
    cdef Back *k = step.k
    cdef int b, q
    cdef long long GH = k.GH
    cdef const float *src
    step.band = ((k.Mp // k.mr + k.nblk - 1) // k.nblk) * k.mr
    for b in range(k.B):
        src = k.dA + row_of(k, step.t, b) * k.DGH + step.d * GH
        for q in range(<int>GH):
            k.V[(b // k.nr) * GH * k.nr + <long long>q * k.nr + b % k.nr] = src[q]
    ember_parallel(nt, k.nblk, rt_band_task, step)
    ember_parallel(nt, k.B, add_product_row_task, step)


cdef enum:
    SUM_COLUMNS = 64    # columns one column_sums call accumulates (rows outer: unit stride)


cdef void column_sums(const float *a, long long lda, long long rows, int q0, int n,
                      const float *w, long long ldw, float *out) noexcept nogil:
    """out[q] = Σ_r a[r·lda + q]·w[r·ldw + q] (w NULL: 1) for q in [q0, min(q0 + SUM_COLUMNS,
    n)), in double, walking rows outermost so each row is read along its length."""
    cdef double acc[SUM_COLUMNS]
    cdef int q, q1 = q0 + SUM_COLUMNS if q0 + SUM_COLUMNS < n else n
    cdef long long r
    for q in range(q1 - q0):
        acc[q] = 0.0
    for r in range(rows):
        if w == NULL:
            for q in range(q0, q1):
                acc[q - q0] += a[r * lda + q]
        else:
            for q in range(q0, q1):
                acc[q - q0] += a[r * lda + q] * w[r * ldw + q]
    for q in range(q0, q1):
        out[q] = <float>acc[q - q0]


# The column sums of one direction's bias or peephole gradient, tasks over SUM_COLUMNS blocks.
cdef struct ColumnSumsJob:
    const Back *k
    long long col0, GH, rows  # col0: the direction's first column of dXW / dA (d·GH)
    float *out                # this direction's dB (2·GH) or dP (3·H)


cdef void bias_sums_task(void *ctx, long q, int worker) noexcept nogil:
    """dB block q: Σ over rows of dXW (Wb) and of dA (Rb)."""
    cdef const ColumnSumsJob *j = <const ColumnSumsJob *> ctx
    cdef const Back *k = j.k
    cdef int q0 = <int> q * SUM_COLUMNS
    column_sums(k.dXW + j.col0, k.DGH, j.rows, q0, <int>j.GH, NULL, 0, j.out)
    column_sums(k.dA + j.col0, k.DGH, j.rows, q0, <int>j.GH, NULL, 0, j.out + j.GH)


cdef void peephole_sums_task(void *ctx, long q, int worker) noexcept nogil:
    """dP block q: the i, o, f gates' gradients times the cell states they saw."""
    cdef const ColumnSumsJob *j = <const ColumnSumsJob *> ctx
    cdef const Back *k = j.k
    cdef int H = k.H, q0 = <int> q * SUM_COLUMNS
    cdef const float *dXW = k.dXW + j.col0
    column_sums(dXW, k.DGH, j.rows, q0, H, k.Cprev, H, j.out)
    column_sums(dXW + H, k.DGH, j.rows, q0, H, k.Cnew, H, j.out + H)
    column_sums(dXW + 2 * H, k.DGH, j.rows, q0, H, k.Cprev, H, j.out + 2 * H)


cdef inline float *opt(float[::1] a) noexcept:
    return &a[0] if a is not None and a.shape[0] else NULL


cdef inline const float *copt(const float[::1] a) noexcept:
    return &a[0] if a is not None and a.shape[0] else NULL


def _flat(a):
    return None if a is None else a.reshape(-1)


def recurrent_backward(int cell, const float[:, ::1] X, const float[:, ::1] W_all,
                       const float[::1] R, const float[:, ::1] S, Y, dY, dY_h, dY_c, init_h,
                       init_c, P, Rbh, lens, dX, dW, dR, dB, d_init_h, d_init_c, dP,
                       float[::1] work, int T, int B, int H, int D, str direction, int layout,
                       int lbr, int input_forget, int nthreads):
    """The gradients of one RNN (cell 0), GRU (1) or LSTM (2) node, float32 (see the module
    docstring). X ``[rows, input]``, ``W_all`` ``[D·G·H, input]``, R flat ``[D·G·H·H]``, S the
    saved gates ``[rows, D·G·H]``; Y and the gradients in the forward's own shapes; ``Rbh``
    GRU ``linear_before_reset``'s recurrent h bias ``[D·H]``; ``lens`` int32 ``[B]`` checked to
    lie in [0, T]. Optional arrays are None (an absent output is not computed). ``work``:
    ``backward_work_floats`` floats."""
    cdef Back k
    cdef int G = (1, 3, 4)[cell]
    cdef long long rows = <long long>T * B, GH = <long long>G * H, DGH = D * GH
    cdef const float[::1] kY = _flat(Y), kdY = _flat(dY), kdYh = _flat(dY_h)
    cdef const float[::1] kdYc = _flat(dY_c), kh0 = _flat(init_h), kc0 = _flat(init_c)
    cdef const float[::1] kP = _flat(P), kRbh = _flat(Rbh)
    cdef const int[::1] klens = lens
    cdef float[::1] kdX = _flat(dX), kdW = _flat(dW), kdR = _flat(dR), kdB = _flat(dB)
    cdef float[::1] kdh0 = _flat(d_init_h), kdc0 = _flat(d_init_c), kdP = _flat(dP)
    cdef const float *h0 = copt(kh0)
    cdef const float *c0 = copt(kc0)
    cdef const float *dYh = copt(kdYh)
    cdef const float *dYc = copt(kdYc)
    cdef const float *Pall = copt(kP)
    cdef const float *Rball = copt(kRbh)
    cdef float *pdR = opt(kdR)
    cdef float *pdB = opt(kdB)
    cdef float *pdh0 = opt(kdh0)
    cdef float *pdc0 = opt(kdc0)
    cdef float *pdP = opt(kdP)
    cdef const float *Rd
    cdef float *w = &work[0]
    cdef bint reverse_all = direction == "reverse"
    cdef int d, s, t, b, j, q, nt, ok = 1
    cdef bint empty
    cdef long long r
    cdef ember_bias_act epi
    cdef ColumnSumsJob sums
    k.cell, k.T, k.B, k.H, k.D, k.G, k.layout = cell, T, B, H, D, G, layout
    k.lbr, k.input_forget, k.GH, k.DGH = lbr, input_forget, GH, DGH
    k.S, k.Y, k.dY = &S[0, 0], &kY[0], copt(kdY)
    k.lens = &klens[0] if klens is not None and klens.shape[0] else NULL
    k.dXW = w
    w += _round16(rows * DGH)
    k.dA = k.dXW
    if cell == 1 and lbr:
        k.dA = w
        w += _round16(rows * DGH)
    k.Hprev = w
    w += _round16(rows * H)
    k.Cprev, k.Cnew, k.M = w, w + _round16(rows * H), w + 2 * _round16(rows * H)
    w += 3 * _round16(rows * H)
    k.dh, k.dh_next, k.dc, k.drh = w, w + _round16(B * H), w + 2 * _round16(B * H), \
        w + 3 * _round16(B * H)
    w += 4 * _round16(B * H)
    nt = threads_for(nthreads, <long>B * G * H * 8)
    k.packed = not (cell == 1 and not lbr)
    k.mr, k.nr = ember_gemm_mr(), ember_gemm_nr()
    k.Mp, k.ncols = _round_to(H, k.mr), _round_to(B, k.nr)
    k.nblk = nt
    k.U = w
    w += _round16(<long long>k.Mp * GH)
    k.V = w
    w += _round16(<long long>k.ncols * GH)
    k.Mx = w
    if k.packed:
        memset(k.V, 0, sizeof(float) * k.ncols * GH)
    sums.k, sums.GH, sums.rows = &k, GH, rows
    with nogil:
        for d in range(D):
            Rd = &R[0] + d * GH * H
            k.P = Pall + d * 3 * H if Pall != NULL else NULL
            rebuild_states(&k, d, reverse_all or d == 1, h0, c0)
            if k.packed:
                pack_rt(&k, Rd)
            if cell == 1 and lbr:
                epi.bias, epi.bias_axis, epi.act, epi.act_a, epi.act_b = \
                    Rball + d * H, 1, 0, 0.0, 0.0
                ok = ok & ember_sgemm(0, 1, <int>rows, H, H, 1.0, k.Hprev, H, Rd + 2 * H * H, H,
                                      0.0, k.M, H, &epi, nthreads)
            for b in range(B):
                empty = k.lens != NULL and k.lens[b] == 0   # its final states are zeros
                for j in range(H):
                    k.dh[b * H + j] = dYh[state_off(&k, d, b) + j] \
                        if dYh != NULL and not empty else 0.0
                    k.dc[b * H + j] = dYc[state_off(&k, d, b) + j] \
                        if dYc != NULL and not empty else 0.0
            for s in range(T - 1, -1, -1):
                t = T - 1 - s if reverse_all or d == 1 else s
                ok = ok & step_back(&k, d, t, Rd, nt, nthreads)
                k.dh, k.dh_next = k.dh_next, k.dh
            for b in range(B):
                for j in range(H):
                    if pdh0 != NULL:
                        pdh0[state_off(&k, d, b) + j] = k.dh[b * H + j]
                    if pdc0 != NULL:
                        pdc0[state_off(&k, d, b) + j] = k.dc[b * H + j]
            if pdR != NULL:
                if cell == 1 and not lbr:
                    ok = ok & ember_sgemm(1, 0, 2 * H, H, <int>rows, 1.0, k.dA + d * GH, DGH,
                                          k.Hprev, H, 0.0, pdR + d * GH * H, H, NULL, nthreads)
                    ok = ok & ember_sgemm(1, 0, H, H, <int>rows, 1.0, k.dA + d * GH + 2 * H,
                                          DGH, k.M, H, 0.0, pdR + d * GH * H + 2 * H * H, H,
                                          NULL, nthreads)
                else:
                    ok = ok & ember_sgemm(1, 0, <int>GH, H, <int>rows, 1.0, k.dA + d * GH, DGH,
                                          k.Hprev, H, 0.0, pdR + d * GH * H, H, NULL, nthreads)
            sums.col0 = d * GH
            if pdB != NULL:
                sums.out = pdB + d * 2 * GH
                ember_parallel(nt, (GH + SUM_COLUMNS - 1) // SUM_COLUMNS, bias_sums_task,
                               &sums)
            if pdP != NULL:
                sums.out = pdP + d * 3 * H
                ember_parallel(nt, (H + SUM_COLUMNS - 1) // SUM_COLUMNS, peephole_sums_task,
                               &sums)
        if kdX is not None and rows and X.shape[1]:
            ok = ok & ember_sgemm(0, 0, <int>rows, X.shape[1], <int>DGH, 1.0, k.dXW, DGH,
                                  &W_all[0, 0], X.shape[1], 0.0, &kdX[0], X.shape[1], NULL,
                                  nthreads)
        if kdW is not None and X.shape[1]:
            ok = ok & ember_sgemm(1, 0, <int>DGH, X.shape[1], <int>rows, 1.0, k.dXW, DGH,
                                  &X[0, 0], X.shape[1], 0.0, &kdW[0], X.shape[1], NULL,
                                  nthreads)
    if not ok:
        raise MemoryError("ember recurrent_grad: cannot allocate GEMM packing buffers")


cdef inline long long _round16(long long n) noexcept nogil:
    return (n + 15) // 16 * 16


cdef inline int _round_to(int n, int m) noexcept nogil:
    return (n + m - 1) // m * m


def backward_work_floats(int cell, int T, int B, int H, int D, int lbr):
    """Floats of ``work``: dXW (and GRU linear_before_reset's dA), Hprev, LSTM's cell states
    or GRU's product, four per-step [B, H] buffers, and the packed Rᵀ, dAₜᵀ and product."""
    cdef int G = (1, 3, 4)[cell]
    cdef long long rows = <long long>T * B
    cdef long long n = _round16(rows * D * G * H) * (2 if cell == 1 and lbr else 1)
    cdef long long Mp = _round_to(H, ember_gemm_mr()), ncols = _round_to(B, ember_gemm_nr())
    return (n + 4 * _round16(rows * H) + 4 * _round16(<long long>B * H)
            + _round16(Mp * G * H) + _round16(ncols * G * H) + _round16(Mp * ncols))
