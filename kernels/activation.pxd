# The activation codes (kernels/activation.h, tabulated in CONTRACT.md) and the activation
# every kernel fuses: unary, the gemm/conv/Winograd epilogues, the depthwise planes.
from libc.math cimport expf, logf, tanhf, sqrtf, fabsf, log1pf


cdef extern from "activation.h" nogil:
    cdef enum ember_activation:
        ACT_IDENTITY "EMBER_ACT_IDENTITY"
        ACT_RELU "EMBER_ACT_RELU"
        ACT_LEAKY_RELU "EMBER_ACT_LEAKY_RELU"
        ACT_ELU "EMBER_ACT_ELU"
        ACT_SELU "EMBER_ACT_SELU"
        ACT_SIGMOID "EMBER_ACT_SIGMOID"
        ACT_HARD_SIGMOID "EMBER_ACT_HARD_SIGMOID"
        ACT_HARD_SWISH "EMBER_ACT_HARD_SWISH"
        ACT_TANH "EMBER_ACT_TANH"
        ACT_SOFTPLUS "EMBER_ACT_SOFTPLUS"
        ACT_CLIP "EMBER_ACT_CLIP"
        ACT_EXP "EMBER_ACT_EXP"
        ACT_LOG "EMBER_ACT_LOG"
        ACT_SQRT "EMBER_ACT_SQRT"
        ACT_NEG "EMBER_ACT_NEG"
        ACT_ABS "EMBER_ACT_ABS"
        ACT_RECIPROCAL "EMBER_ACT_RECIPROCAL"
        ACT_SILU "EMBER_ACT_SILU"
    int ember_act_row_vec(float *y, long n, int code, float a, float b)
    int ember_bias_act_row(float *y, long n, float bv, int code, float a, float b)


cdef inline float apply_act(float v, int code, float a, float b) noexcept nogil:
    """One activation, branch on `code`; stable sigmoid/softplus."""
    cdef float e
    if code == ACT_IDENTITY:
        return v
    elif code == ACT_RELU:
        return 0.0 if v < 0.0 else v   # NaN passes through, as in onnxruntime
    elif code == ACT_LEAKY_RELU:
        return v if v >= 0.0 else a * v
    elif code == ACT_ELU:
        return v if v > 0.0 else a * (expf(v) - 1.0)
    elif code == ACT_SELU:
        return b * v if v > 0.0 else b * a * (expf(v) - 1.0)
    elif code == ACT_SIGMOID or code == ACT_SILU:
        if v >= 0.0:
            e = 1.0 / (1.0 + expf(-v))
        else:
            e = expf(v)
            e = e / (1.0 + e)
        return e if code == ACT_SIGMOID else v * e
    elif code == ACT_HARD_SIGMOID:
        e = a * v + b
        return 0.0 if e < 0.0 else (1.0 if e > 1.0 else e)
    elif code == ACT_HARD_SWISH:
        # v times the clipped gate, as the spec writes it: HardSwish(-inf) is NaN, a negative
        # v below -3 gives -0
        e = v / 6.0 + 0.5
        return v * (0.0 if e <= 0.0 else (1.0 if e >= 1.0 else e))
    elif code == ACT_TANH:
        return tanhf(v)
    elif code == ACT_SOFTPLUS:
        return (v if v > 0.0 else 0.0) + log1pf(expf(-fabsf(v)))
    elif code == ACT_CLIP:
        e = a if v < a else v          # comparisons written so NaN passes through
        return b if e > b else e
    elif code == ACT_EXP:
        return expf(v)
    elif code == ACT_LOG:
        return logf(v)
    elif code == ACT_SQRT:
        return sqrtf(v)
    elif code == ACT_NEG:
        return -v
    elif code == ACT_ABS:
        return fabsf(v)
    elif code == ACT_RECIPROCAL:
        return 1.0 / v
    return v


cdef inline void apply_act_span(float* p, Py_ssize_t n, int code, float a, float b) noexcept nogil:
    """In-place activation of n contiguous floats: the vector row loops where the code has one
    (identity, Relu, Clip), else the table per element."""
    cdef Py_ssize_t i
    if ember_act_row_vec(p, n, code, a, b):
        return
    for i in range(n):
        p[i] = apply_act(p[i], code, a, b)
