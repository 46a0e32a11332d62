"""Elementwise kernels: activations (`unary`), same-shape and broadcast binary ops.

Output may alias an input (y is x): every element is read before it is written at the same
index, so in-place runs are safe.
"""
from cpython.pycapsule cimport PyCapsule_New

from kernels cimport activation
from kernels cimport elementwise_simd as ew
from kernels.elementwise_simd cimport ember_act_unary, ember_binary_span
from kernels.native_step cimport ember_native_step, EMBER_NATIVE_CAPSULE
from kernels.parallel cimport threads_for, ember_parallel
from kernels.simd cimport use_simd

use_simd()

# the activation codes for the binders, from kernels/activation.h
ACT_IDENTITY = activation.ACT_IDENTITY
ACT_RELU = activation.ACT_RELU
ACT_LEAKY_RELU = activation.ACT_LEAKY_RELU
ACT_ELU = activation.ACT_ELU
ACT_SELU = activation.ACT_SELU
ACT_SIGMOID = activation.ACT_SIGMOID
ACT_HARD_SIGMOID = activation.ACT_HARD_SIGMOID
ACT_HARD_SWISH = activation.ACT_HARD_SWISH
ACT_TANH = activation.ACT_TANH
ACT_SOFTPLUS = activation.ACT_SOFTPLUS
ACT_CLIP = activation.ACT_CLIP
ACT_EXP = activation.ACT_EXP
ACT_LOG = activation.ACT_LOG
ACT_SQRT = activation.ACT_SQRT
ACT_NEG = activation.ACT_NEG
ACT_ABS = activation.ACT_ABS
ACT_RECIPROCAL = activation.ACT_RECIPROCAL
ACT_SILU = activation.ACT_SILU
ACT_ERF = activation.ACT_ERF
ACT_GELU = activation.ACT_GELU

OP_ADD = ew.OP_ADD
OP_SUB = ew.OP_SUB
OP_MUL = ew.OP_MUL
OP_DIV = ew.OP_DIV
OP_MAX = ew.OP_MAX
OP_MIN = ew.OP_MIN
OP_POW = ew.OP_POW
OP_PRELU = ew.OP_PRELU

cdef enum:
    CHUNK = 16384   # elements per parallel work item: big enough to amortise scheduling


# One elementwise call with its arguments resolved (see ElementwiseStep).
cdef enum EwKind:
    EW_UNARY, EW_BINARY, EW_BROADCAST

cdef struct EwCall:
    int kind
    const float *a
    const float *b
    float *y
    long n                     # elements of y
    int op                     # binary op code (OP_*)
    int act                    # activation applied to y (ACT_IDENTITY: none)
    float pa, pb               # the activation's parameters
    int rank                   # broadcast: y's shape after merging, with a's and b's strides
    long rows                  # broadcast: product of all dims but the innermost
    long sh[8]
    long sa[8]
    long sb[8]
    int nthreads


cdef struct UnaryJob:
    const float *x
    float *y
    long n
    int act
    float pa, pb


cdef void unary_chunk_task(void *ctx, long c, int worker) noexcept nogil:
    cdef UnaryJob *j = <UnaryJob *> ctx
    ember_act_unary(j.x + c * CHUNK, j.y + c * CHUNK, min(<long> CHUNK, j.n - c * CHUNK), j.act,
                    j.pa, j.pb)


cdef void unary_chunks(const float *x, float *y, long n, int act, float pa, float pb,
                       int nthreads) noexcept nogil:
    cdef UnaryJob j
    if threads_for(nthreads, n) == 1:
        ember_act_unary(x, y, n, act, pa, pb)
    else:
        j.x = x; j.y = y; j.n = n; j.act = act; j.pa = pa; j.pb = pb
        ember_parallel(nthreads, (n + CHUNK - 1) // CHUNK, unary_chunk_task, &j)


cdef void binary_chunk_task(void *ctx, long c, int worker) noexcept nogil:
    """Chunk c of y = act(a op b), activated while still in cache."""
    cdef const EwCall *e = <const EwCall *> ctx
    cdef long lo = c * CHUNK, m = min(<long> CHUNK, e.n - c * CHUNK)
    ember_binary_span(e.a + lo, 1, e.b + lo, 1, e.y + lo, m, e.op)
    if e.act != activation.ACT_IDENTITY:
        ember_act_unary(e.y + lo, e.y + lo, m, e.act, e.pa, e.pb)


cdef void binary_chunks(const EwCall *e) noexcept nogil:
    """y = act(a op b) for same-shape operands."""
    ember_parallel(threads_for(e.nthreads, e.n), (e.n + CHUNK - 1) // CHUNK, binary_chunk_task,
                   <void *> e)


cdef void broadcast_rows(const float *a, const long *sa, const float *b, const long *sb,
                         float *y, const long *shape, int rank, long r0, long r1,
                         int op) noexcept nogil:
    """Rows [r0, r1) of y (a row = the innermost dimension), walking an index counter over the
    outer dimensions so a and b offsets advance by their strides."""
    cdef long idx[8]
    cdef long offa = 0, offb = 0, rem = r0, inner = shape[rank - 1], r
    cdef int d
    for d in range(rank - 2, -1, -1):
        idx[d] = rem % shape[d]
        rem = rem // shape[d]
        offa += idx[d] * sa[d]
        offb += idx[d] * sb[d]
    for r in range(r0, r1):
        ember_binary_span(a + offa, sa[rank - 1], b + offb, sb[rank - 1], y + r * inner, inner,
                          op)
        d = rank - 2
        while d >= 0:
            idx[d] += 1
            offa += sa[d]
            offb += sb[d]
            if idx[d] < shape[d]:
                break
            offa -= idx[d] * sa[d]
            offb -= idx[d] * sb[d]
            idx[d] = 0
            d -= 1


cdef void broadcast_chunk_task(void *ctx, long c, int worker) noexcept nogil:
    """Chunk c of a rank-1 broadcast (one long row)."""
    cdef const EwCall *e = <const EwCall *> ctx
    ember_binary_span(e.a + c * CHUNK * e.sa[0], e.sa[0], e.b + c * CHUNK * e.sb[0], e.sb[0],
                      e.y + c * CHUNK, min(<long> CHUNK, e.sh[0] - c * CHUNK), e.op)


cdef struct RowsJob:
    const EwCall *e
    long per               # rows per task


cdef void broadcast_rows_task(void *ctx, long t, int worker) noexcept nogil:
    cdef RowsJob *j = <RowsJob *> ctx
    cdef const EwCall *e = j.e
    broadcast_rows(e.a, e.sa, e.b, e.sb, e.y, e.sh, e.rank, t * j.per,
                   min(e.rows, (t + 1) * j.per), e.op)


cdef void broadcast_run(const EwCall *e) noexcept nogil:
    cdef int nt = max(1, min(e.nthreads, <int> min(e.rows, e.n // 4096 + 1)))
    cdef long nchunks = (e.sh[0] + CHUNK - 1) // CHUNK
    cdef RowsJob rows
    if e.rank == 1 and e.nthreads > 1 and nchunks > 1:   # one long row: split it
        ember_parallel(e.nthreads, nchunks, broadcast_chunk_task, <void *> e)
    elif nt == 1:
        broadcast_rows(e.a, e.sa, e.b, e.sb, e.y, e.sh, e.rank, 0, e.rows, e.op)
    else:
        rows.e = e
        rows.per = (e.rows + nt - 1) // nt
        ember_parallel(nt, (e.rows + rows.per - 1) // rows.per, broadcast_rows_task, &rows)
    if e.act != activation.ACT_IDENTITY:
        unary_chunks(e.y, e.y, e.n, e.act, e.pa, e.pb, e.nthreads)


cdef int ew_run(EwCall *e) noexcept nogil:
    """The call itself, GIL-free; always 0."""
    if e.n == 0:
        return 0
    if e.kind == EW_UNARY:
        unary_chunks(e.a, e.y, e.n, e.act, e.pa, e.pb, e.nthreads)
    elif e.kind == EW_BINARY:
        binary_chunks(e)
    else:
        broadcast_run(e)
    return 0


cdef int ew_native(void *state) noexcept nogil:
    return ew_run(<EwCall *> state)


cdef class ElementwiseStep:
    """An elementwise call with its arguments resolved once (bind time): calling it, or running
    it inside a ``plan.PlanRunner`` with no Python in between. Made by ``unary_step``,
    ``binary_step`` and ``broadcast_step``; holds its arrays."""
    cdef EwCall call
    cdef ember_native_step native
    cdef object keep

    def __cinit__(self):
        self.call.n = 0
        self.call.act = activation.ACT_IDENTITY
        self.native.fn = ew_native
        self.native.state = &self.call

    def __call__(self):
        with nogil:
            ew_run(&self.call)

    @property
    def _native(self):
        """A capsule holding the step's C entry point, for plan.PlanRunner."""
        return PyCapsule_New(&self.native, EMBER_NATIVE_CAPSULE, NULL)


def unary_step(float[::1] x, float[::1] y, int act, float a, float b, int nthreads):
    """y = act(x) (y may be x)."""
    if x.shape[0] != y.shape[0]:
        raise ValueError("unary: x and y differ in size")
    cdef ElementwiseStep step = ElementwiseStep()
    cdef EwCall *e = &step.call
    step.keep = (x, y)
    e.kind, e.n, e.act, e.pa, e.pb, e.nthreads = EW_UNARY, y.shape[0], act, a, b, nthreads
    if e.n:
        e.a, e.y = &x[0], &y[0]
    return step


def binary_step(float[::1] a, float[::1] b, float[::1] y, int op, int act, float pa, float pb,
                int nthreads):
    """y = act(a op b) for same-shape operands (y may be a or b)."""
    if not a.shape[0] == b.shape[0] == y.shape[0]:
        raise ValueError("binary: a, b and y differ in size")
    cdef ElementwiseStep step = ElementwiseStep()
    cdef EwCall *e = &step.call
    step.keep = (a, b, y)
    e.kind, e.n, e.op, e.act, e.pa, e.pb = EW_BINARY, y.shape[0], op, act, pa, pb
    e.nthreads = nthreads
    if e.n:
        e.a, e.b, e.y = &a[0], &b[0], &y[0]
    return step


def broadcast_step(float[::1] a, long long[::1] a_strides, float[::1] b,
                   long long[::1] b_strides, float[::1] y, long long[::1] shape, int op,
                   int act, float pa, float pb, int nthreads):
    """y = act(a op b) with a, b read through element strides over y's shape (0 = broadcast);
    y must not alias a or b."""
    cdef ElementwiseStep step = ElementwiseStep()
    cdef EwCall *e = &step.call
    cdef int d, rank = 0
    cdef long total = 1
    if shape.shape[0] > 8:
        raise ValueError("binary_broadcast: rank above 8")
    if a_strides.shape[0] != shape.shape[0] or b_strides.shape[0] != shape.shape[0]:
        raise ValueError("binary_broadcast: strides and shape differ in rank")
    step.keep = (a, b, y)
    # merge adjacent dims that are contiguous for both operands (and drop size-1 dims) so the
    # inner loop is as long as possible
    for d in range(shape.shape[0]):
        total *= shape[d]
        if shape[d] == 1:
            continue
        if (rank > 0 and e.sa[rank - 1] == a_strides[d] * shape[d]
                and e.sb[rank - 1] == b_strides[d] * shape[d]):
            e.sh[rank - 1] *= shape[d]
            e.sa[rank - 1] = a_strides[d]
            e.sb[rank - 1] = b_strides[d]
        else:
            e.sh[rank] = shape[d]
            e.sa[rank] = a_strides[d]
            e.sb[rank] = b_strides[d]
            rank += 1
    if total != y.shape[0]:
        raise ValueError("binary_broadcast: y's size is not the shape's")
    if rank == 0:
        e.sh[0], e.sa[0], e.sb[0] = 1, 0, 0
        rank = 1
    e.kind, e.n, e.rank, e.rows = EW_BROADCAST, total, rank, 1
    for d in range(rank - 1):
        e.rows *= e.sh[d]
    e.op, e.act, e.pa, e.pb, e.nthreads = op, act, pa, pb, nthreads
    if total:
        e.a, e.b, e.y = &a[0], &b[0], &y[0]
    return step


def unary(x, y, int act, float a, float b, int nthreads):
    unary_step(x, y, act, a, b, nthreads)()


def binary(a, b, y, int op, int nthreads):
    binary_step(a, b, y, op, activation.ACT_IDENTITY, 0.0, 0.0, nthreads)()


def binary_act(a, b, y, int op, int act, float pa, float pb, int nthreads):
    """y = act(a op b) for same-shape operands, the activation applied to each chunk while it is
    still in cache (the residual Add + Relu)."""
    binary_step(a, b, y, op, act, pa, pb, nthreads)()


def binary_broadcast(a, a_strides, b, b_strides, y, shape, int op, int nthreads):
    """y = a op b with a, b read through element strides over y's shape (0 = broadcast)."""
    broadcast_step(a, a_strides, b, b_strides, y, shape, op, activation.ACT_IDENTITY, 0.0, 0.0,
                   nthreads)()


# The activation codes `apply_act` (activation.pxd) branches on, by op type (SiLU: the fused
# x·sigmoid(x) a pass matches, which has no ONNX op; Gelu: a = 0 exact, a = 1 tanh form).
# Binders derive every code table from this.
ACTIVATION_CODES = {
    "Relu": ACT_RELU, "LeakyRelu": ACT_LEAKY_RELU, "Elu": ACT_ELU, "Selu": ACT_SELU,
    "Sigmoid": ACT_SIGMOID, "HardSigmoid": ACT_HARD_SIGMOID, "HardSwish": ACT_HARD_SWISH,
    "Tanh": ACT_TANH, "Softplus": ACT_SOFTPLUS, "Clip": ACT_CLIP, "Exp": ACT_EXP, "Log": ACT_LOG,
    "Sqrt": ACT_SQRT, "Neg": ACT_NEG, "Abs": ACT_ABS, "Reciprocal": ACT_RECIPROCAL,
    "SiLU": ACT_SILU, "Erf": ACT_ERF, "Gelu": ACT_GELU,
}
