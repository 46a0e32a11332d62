# The activation codes (kernels/activation.h, tabulated in CONTRACT.md) and the activation
# every kernel fuses: unary, the gemm/conv/Winograd epilogues, the depthwise planes.

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
        ACT_ERF "EMBER_ACT_ERF"
        ACT_GELU "EMBER_ACT_GELU"
    int ember_act_row_vec(float *y, long n, int code, float a, float b)
    int ember_bias_act_row(float *y, long n, float bv, int code, float a, float b)
    # one activation, branch on `code`; stable sigmoid/softplus
    float apply_act "ember_apply_act"(float v, int code, float a, float b)


cdef extern from "simd.h" nogil:
    # p[0:n] = act(p[0:n]) with the unary kernel of the level in use (vector loops for every
    # code that has one); needs the table: a module calling it runs use_simd() at import
    void ember_act_span(float *p, long n, int code, float a, float b)


cdef inline void apply_act_span(float* p, Py_ssize_t n, int code, float a, float b) noexcept nogil:
    """In-place activation of n contiguous floats: the unary kernel's loops (vector for
    identity, Relu, Clip, the selects, the exp/tanh/erf family), else the table per element."""
    if ember_act_row_vec(p, n, code, a, b):
        return
    ember_act_span(p, n, code, a, b)
