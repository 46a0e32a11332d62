"""Elementwise kernels: activations (`unary`), same-shape and broadcast binary ops.

Output may alias an input (y is x): every element is read before it is written at the same
index, so in-place runs are safe.
"""
from cython.parallel cimport prange
from libc.math cimport powf

from kernels cimport activation
from kernels.activation cimport apply_act
from kernels.parallel cimport threads_for

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

OP_ADD = 0
OP_SUB = 1
OP_MUL = 2
OP_DIV = 3
OP_MAX = 4
OP_MIN = 5
OP_POW = 6
OP_PRELU = 7

cdef enum:
    CHUNK = 16384   # elements per parallel work item: big enough to amortise scheduling


cdef void unary_span(const float *x, float *y, long n, int act, float a, float b) noexcept nogil:
    cdef long i
    if act == activation.ACT_IDENTITY:
        for i in range(n):
            y[i] = x[i]
    elif act == activation.ACT_RELU:
        for i in range(n):
            y[i] = 0.0 if x[i] < 0.0 else x[i]   # NaN passes through
    elif act == activation.ACT_NEG:
        for i in range(n):
            y[i] = -x[i]
    else:
        for i in range(n):
            y[i] = apply_act(x[i], act, a, b)


def unary(float[::1] x, float[::1] y, int act, float a, float b, int nthreads):
    cdef long n = x.shape[0], c, nchunks = (n + CHUNK - 1) // CHUNK
    if n == 0:
        return
    cdef const float *xp = &x[0]
    cdef float *yp = &y[0]
    with nogil:
        if threads_for(nthreads, n) == 1:
            unary_span(xp, yp, n, act, a, b)
        else:
            for c in prange(nchunks, num_threads=nthreads, schedule='static'):
                unary_span(xp + c * CHUNK, yp + c * CHUNK, min(CHUNK, n - c * CHUNK), act, a, b)


cdef inline float binop(float u, float v, int op) noexcept nogil:
    if op == 0:
        return u + v
    elif op == 1:
        return u - v
    elif op == 2:
        return u * v
    elif op == 3:
        return u / v
    elif op == 4:
        return u if (u >= v or u != u) else v
    elif op == 5:
        return u if (u <= v or u != u) else v
    elif op == 6:
        return powf(u, v)
    else:
        return u if u >= 0.0 else u * v


cdef void binary_span(const float *a, long sa, const float *b, long sb, float *y, long n,
                      int op) noexcept nogil:
    """y[i] = a[i*sa] op b[i*sb]; the common stride patterns get their own loops so the
    compiler can vectorise them (the op switch is hoisted out by loop unswitching)."""
    cdef long i
    cdef float s
    if sa == 1 and sb == 1:
        if op == 0:
            for i in range(n):
                y[i] = a[i] + b[i]
        elif op == 2:
            for i in range(n):
                y[i] = a[i] * b[i]
        else:
            for i in range(n):
                y[i] = binop(a[i], b[i], op)
    elif sa == 1 and sb == 0:
        s = b[0]
        if op == 0:
            for i in range(n):
                y[i] = a[i] + s
        elif op == 2:
            for i in range(n):
                y[i] = a[i] * s
        else:
            for i in range(n):
                y[i] = binop(a[i], s, op)
    elif sa == 0 and sb == 1:
        s = a[0]
        for i in range(n):
            y[i] = binop(s, b[i], op)
    else:
        for i in range(n):
            y[i] = binop(a[i * sa], b[i * sb], op)


def binary(float[::1] a, float[::1] b, float[::1] y, int op, int nthreads):
    cdef long n = y.shape[0], c, nchunks = (n + CHUNK - 1) // CHUNK
    if n == 0:
        return
    cdef const float *ap = &a[0]
    cdef const float *bp = &b[0]
    cdef float *yp = &y[0]
    with nogil:
        if threads_for(nthreads, n) == 1:
            binary_span(ap, 1, bp, 1, yp, n, op)
        else:
            for c in prange(nchunks, num_threads=nthreads, schedule='static'):
                binary_span(ap + c * CHUNK, 1, bp + c * CHUNK, 1, yp + c * CHUNK,
                            min(CHUNK, n - c * CHUNK), op)


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
        binary_span(a + offa, sa[rank - 1], b + offb, sb[rank - 1], y + r * inner, inner, op)
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
                binary_span(ap + c * CHUNK * sa[0], sa[0], bp + c * CHUNK * sb[0], sb[0],
                            yp + c * CHUNK, min(CHUNK, sh[0] - c * CHUNK), op)
        elif nt == 1:
            broadcast_rows(ap, sa, bp, sb, yp, sh, rank, 0, rows, op)
        else:
            per = (rows + nt - 1) // nt
            for t in prange(nt, num_threads=nt, schedule='static'):
                broadcast_rows(ap, sa, bp, sb, yp, sh, rank, t * per, min(rows, (t + 1) * per),
                               op)


# The activation codes `apply_act` (activation.pxd) branches on, by op type (SiLU: the fused
# x·sigmoid(x) a pass matches, which has no ONNX op). Binders derive every code table from this.
ACTIVATION_CODES = {
    "Relu": ACT_RELU, "LeakyRelu": ACT_LEAKY_RELU, "Elu": ACT_ELU, "Selu": ACT_SELU,
    "Sigmoid": ACT_SIGMOID, "HardSigmoid": ACT_HARD_SIGMOID, "HardSwish": ACT_HARD_SWISH,
    "Tanh": ACT_TANH, "Softplus": ACT_SOFTPLUS, "Clip": ACT_CLIP, "Exp": ACT_EXP, "Log": ACT_LOG,
    "Sqrt": ACT_SQRT, "Neg": ACT_NEG, "Abs": ACT_ABS, "Reciprocal": ACT_RECIPROCAL,
    "SiLU": ACT_SILU,
}
