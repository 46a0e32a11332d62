# Activation codes shared by `unary` and the fused epilogues of gemm/conv (see CONTRACT.md).
from libc.math cimport expf, logf, tanhf, sqrtf, fabsf, log1pf


cdef inline float apply_act(float v, int code, float a, float b) noexcept nogil:
    """One activation, branch on `code` (the table in CONTRACT.md); stable sigmoid/softplus."""
    cdef float e
    if code == 0:
        return v
    elif code == 1:
        return 0.0 if v < 0.0 else v   # NaN passes through, as in onnxruntime
    elif code == 2:
        return v if v >= 0.0 else a * v
    elif code == 3:
        return v if v > 0.0 else a * (expf(v) - 1.0)
    elif code == 4:
        return b * v if v > 0.0 else b * a * (expf(v) - 1.0)
    elif code == 5 or code == 17:
        if v >= 0.0:
            e = 1.0 / (1.0 + expf(-v))
        else:
            e = expf(v)
            e = e / (1.0 + e)
        return e if code == 5 else v * e
    elif code == 6:
        e = a * v + b
        return 0.0 if e < 0.0 else (1.0 if e > 1.0 else e)
    elif code == 7:
        e = v / 6.0 + 0.5
        return 0.0 if e <= 0.0 else (v if e >= 1.0 else v * e)
    elif code == 8:
        return tanhf(v)
    elif code == 9:
        return (v if v > 0.0 else 0.0) + log1pf(expf(-fabsf(v)))
    elif code == 10:
        e = a if v < a else v          # comparisons written so NaN passes through
        return b if e > b else e
    elif code == 11:
        return expf(v)
    elif code == 12:
        return logf(v)
    elif code == 13:
        return sqrtf(v)
    elif code == 14:
        return -v
    elif code == 15:
        return fabsf(v)
    elif code == 16:
        return 1.0 / v
    return v


cdef inline void apply_act_span(float* p, Py_ssize_t n, int code, float a, float b) noexcept nogil:
    """In-place activation of n contiguous floats; identity, Relu and Clip get tight loops."""
    cdef Py_ssize_t i
    if code == 0:
        return
    cdef float v
    if code == 1:
        for i in range(n):
            p[i] = 0.0 if p[i] < 0.0 else p[i]
        return
    if code == 10:      # Clip (Relu6): comparisons written so that NaN passes through
        for i in range(n):
            v = p[i]
            v = a if v < a else v
            p[i] = b if v > b else v
        return
    for i in range(n):
        p[i] = apply_act(p[i], code, a, b)
