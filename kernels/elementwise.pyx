"""Elementwise kernels: activations (`unary`), same-shape and broadcast binary ops.

Output may alias an input (y is x): every element is read before it is written at the same
index, so in-place runs are safe.
"""
from cython.parallel cimport prange

from kernels cimport activation
from kernels cimport elementwise_simd as ew
from kernels.elementwise_simd cimport ember_act_unary, ember_binary_span
from kernels.parallel cimport threads_for
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


def unary(float[::1] x, float[::1] y, int act, float a, float b, int nthreads):
    cdef long n = x.shape[0], c, nchunks = (n + CHUNK - 1) // CHUNK
    if n == 0:
        return
    cdef const float *xp = &x[0]
    cdef float *yp = &y[0]
    with nogil:
        if threads_for(nthreads, n) == 1:
            ember_act_unary(xp, yp, n, act, a, b)
        else:
            for c in prange(nchunks, num_threads=nthreads, schedule='static'):
                ember_act_unary(xp + c * CHUNK, yp + c * CHUNK, min(CHUNK, n - c * CHUNK), act,
                                a, b)


def binary(float[::1] a, float[::1] b, float[::1] y, int op, int nthreads):
    cdef long n = y.shape[0], c, nchunks = (n + CHUNK - 1) // CHUNK
    if n == 0:
        return
    cdef const float *ap = &a[0]
    cdef const float *bp = &b[0]
    cdef float *yp = &y[0]
    with nogil:
        if threads_for(nthreads, n) == 1:
            ember_binary_span(ap, 1, bp, 1, yp, n, op)
        else:
            for c in prange(nchunks, num_threads=nthreads, schedule='static'):
                ember_binary_span(ap + c * CHUNK, 1, bp + c * CHUNK, 1, yp + c * CHUNK,
                                  min(CHUNK, n - c * CHUNK), op)


def binary_act(float[::1] a, float[::1] b, float[::1] y, int op, int act, float pa, float pb,
               int nthreads):
    """y = act(a op b) for same-shape operands, the activation applied to each chunk while it is
    still in cache (the residual Add + Relu)."""
    cdef long n = y.shape[0], c, lo, m, nchunks = (n + CHUNK - 1) // CHUNK
    if n == 0:
        return
    cdef const float *ap = &a[0]
    cdef const float *bp = &b[0]
    cdef float *yp = &y[0]
    with nogil:
        for c in prange(nchunks, num_threads=threads_for(nthreads, n), schedule='static'):
            lo = c * CHUNK
            m = min(CHUNK, n - lo)
            ember_binary_span(ap + lo, 1, bp + lo, 1, yp + lo, m, op)
            ember_act_unary(yp + lo, yp + lo, m, act, pa, pb)


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


def binary_broadcast(float[::1] a, long long[::1] a_strides, float[::1] b,
                     long long[::1] b_strides, float[::1] y, long long[::1] shape, int op,
                     int nthreads):
    """y = a op b with a, b read through element strides over y's shape (0 = broadcast)."""
    cdef long sh[8]
    cdef long sa[8]
    cdef long sb[8]
    cdef int rank = 0, d, t, nt
    cdef long rows = 1, total = 1, per
    if shape.shape[0] > 8:
        raise ValueError("binary_broadcast: rank above 8")
    # merge adjacent dims that are contiguous for both operands (and drop size-1 dims) so the
    # inner loop is as long as possible
    for d in range(shape.shape[0]):
        total *= shape[d]
        if shape[d] == 1:
            continue
        if (rank > 0 and sa[rank - 1] == a_strides[d] * shape[d]
                and sb[rank - 1] == b_strides[d] * shape[d]):
            sh[rank - 1] *= shape[d]
            sa[rank - 1] = a_strides[d]
            sb[rank - 1] = b_strides[d]
        else:
            sh[rank] = shape[d]
            sa[rank] = a_strides[d]
            sb[rank] = b_strides[d]
            rank += 1
    if total == 0:
        return
    if rank == 0:
        sh[0] = 1
        sa[0] = 0
        sb[0] = 0
        rank = 1
    for d in range(rank - 1):
        rows *= sh[d]
    cdef const float *ap = &a[0]
    cdef const float *bp = &b[0]
    cdef float *yp = &y[0]
    nt = max(1, min(nthreads, <int> min(rows, total // 4096 + 1)))
    cdef long c, nchunks = (sh[0] + CHUNK - 1) // CHUNK
    with nogil:
        if rank == 1 and nthreads > 1 and nchunks > 1:   # one long row: split it
            for c in prange(nchunks, num_threads=nthreads, schedule='static'):
                ember_binary_span(ap + c * CHUNK * sa[0], sa[0], bp + c * CHUNK * sb[0], sb[0],
                                  yp + c * CHUNK, min(CHUNK, sh[0] - c * CHUNK), op)
        elif nt == 1:
            broadcast_rows(ap, sa, bp, sb, yp, sh, rank, 0, rows, op)
        else:
            per = (rows + nt - 1) // nt
            for t in prange(nt, num_threads=nt, schedule='static'):
                broadcast_rows(ap, sa, bp, sb, yp, sh, rank, t * per, min(rows, (t + 1) * per),
                               op)


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
