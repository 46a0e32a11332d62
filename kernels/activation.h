/* The activation codes every kernel shares (the unary kernel, the fused epilogues of gemm, conv
 * and Winograd, the activation gradients), and the row loops of the codes that have a
 * branch-free vector form. activation.pxd gives Cython the same codes as ACT_RELU, …; the
 * binders pass them as ints; kernels/CONTRACT.md tabulates their formulas. */
#ifndef EMBER_ACTIVATION_H
#define EMBER_ACTIVATION_H

#include <math.h>

enum ember_activation {
    EMBER_ACT_IDENTITY = 0,
    EMBER_ACT_RELU = 1,
    EMBER_ACT_LEAKY_RELU = 2,
    EMBER_ACT_ELU = 3,
    EMBER_ACT_SELU = 4,
    EMBER_ACT_SIGMOID = 5,
    EMBER_ACT_HARD_SIGMOID = 6,
    EMBER_ACT_HARD_SWISH = 7,
    EMBER_ACT_TANH = 8,
    EMBER_ACT_SOFTPLUS = 9,
    EMBER_ACT_CLIP = 10,
    EMBER_ACT_EXP = 11,
    EMBER_ACT_LOG = 12,
    EMBER_ACT_SQRT = 13,
    EMBER_ACT_NEG = 14,
    EMBER_ACT_ABS = 15,
    EMBER_ACT_RECIPROCAL = 16,
    EMBER_ACT_SILU = 17,
    EMBER_ACT_ERF = 18,
    EMBER_ACT_GELU = 19, /* a = 0: 0.5·x·(1 + erf(x/√2)); a ≠ 0: the tanh approximation */
};

#define EMBER_GELU_TANH_K 0.7978845608028654 /* √(2/π) */
#define EMBER_GELU_TANH_C 0.044715

/* One activation, branching on `code`; stable sigmoid and softplus. NaN passes through every
 * comparison-based code, as in onnxruntime. (The double constants keep the arithmetic the
 * Cython table did.) */
static inline float ember_apply_act(float v, int code, float a, float b)
{
    float e;
    switch (code) {
    case EMBER_ACT_IDENTITY: return v;
    case EMBER_ACT_RELU: return v < 0.0f ? 0.0f : v;
    case EMBER_ACT_LEAKY_RELU: return v >= 0.0f ? v : a * v;
    case EMBER_ACT_ELU: return v > 0.0f ? v : (float)(a * (expf(v) - 1.0));
    case EMBER_ACT_SELU: return v > 0.0f ? b * v : (float)(b * a * (expf(v) - 1.0));
    case EMBER_ACT_SIGMOID:
    case EMBER_ACT_SILU:
        if (v >= 0.0f) {
            e = (float)(1.0 / (1.0 + expf(-v)));
        } else {
            e = expf(v);
            e = (float)(e / (1.0 + e));
        }
        return code == EMBER_ACT_SIGMOID ? e : v * e;
    case EMBER_ACT_HARD_SIGMOID:
        e = a * v + b;
        return e < 0.0f ? 0.0f : (e > 1.0f ? 1.0f : e);
    case EMBER_ACT_HARD_SWISH:
        /* v times the clipped gate, as the spec writes it (alpha = 1/6 in float, as onnxruntime
         * and onnx.reference compute it; the gate in double cost a vector division per element):
         * HardSwish(-inf) is NaN, a negative v below -3 gives -0 */
        e = v * (1.0f / 6.0f) + 0.5f;
        return v * (e <= 0.0f ? 0.0f : (e >= 1.0f ? 1.0f : e));
    case EMBER_ACT_TANH: return tanhf(v);
    case EMBER_ACT_SOFTPLUS: return (v > 0.0f ? v : 0.0f) + log1pf(expf(-fabsf(v)));
    case EMBER_ACT_CLIP:
        e = v < a ? a : v; /* comparisons written so NaN passes through */
        return e > b ? b : e;
    case EMBER_ACT_EXP: return expf(v);
    case EMBER_ACT_LOG: return logf(v);
    case EMBER_ACT_SQRT: return sqrtf(v);
    case EMBER_ACT_NEG: return -v;
    case EMBER_ACT_ABS: return fabsf(v);
    case EMBER_ACT_RECIPROCAL: return (float)(1.0 / v);
    case EMBER_ACT_ERF: return erff(v);
    case EMBER_ACT_GELU:
        if (a == 0.0f) return (float)(0.5 * v * (1.0 + erf(v * 0.7071067811865476)));
        return (float)(0.5 * v *
                       (1.0 + tanh(EMBER_GELU_TANH_K * (v + EMBER_GELU_TANH_C * v * v * v))));
    }
    return v;
}

/* The activations computed through the vector exp / tanh / erf polynomials (dozens of
 * operations an element): worth long spans rather than one GEMM tile at a time. */
static inline int ember_act_is_costly(int code)
{
    return code == EMBER_ACT_EXP || code == EMBER_ACT_TANH || code == EMBER_ACT_SIGMOID ||
           code == EMBER_ACT_SILU || code == EMBER_ACT_ERF || code == EMBER_ACT_GELU;
}

/* In-place activation of a row for the codes with a branch-free vector form (identity, Relu,
 * Clip); returns 0 for the others (the caller then runs the scalar table). Comparisons are
 * written so that NaN passes through, as in apply_act. */
static inline int ember_act_row_vec(float *restrict y, long n, int code, float a, float b)
{
    if (code == EMBER_ACT_IDENTITY) return 1;
    if (code == EMBER_ACT_RELU) {
        for (long i = 0; i < n; ++i) y[i] = y[i] < 0.0f ? 0.0f : y[i];
        return 1;
    }
    if (code == EMBER_ACT_CLIP) {
        for (long i = 0; i < n; ++i) {
            float v = y[i] < a ? a : y[i];
            y[i] = v > b ? b : v;
        }
        return 1;
    }
    return 0;
}

/* y[i] = act(y[i] + bv) for the vector codes; returns 0 (having added only the bias) otherwise */
static inline int ember_bias_act_row(float *restrict y, long n, float bv, int code, float a,
                                     float b)
{
    if (code == EMBER_ACT_IDENTITY) {
        for (long i = 0; i < n; ++i) y[i] += bv;
        return 1;
    }
    if (code == EMBER_ACT_RELU) {
        for (long i = 0; i < n; ++i) {
            float v = y[i] + bv;
            y[i] = v < 0.0f ? 0.0f : v;
        }
        return 1;
    }
    if (code == EMBER_ACT_CLIP) {
        for (long i = 0; i < n; ++i) {
            float v = y[i] + bv;
            v = v < a ? a : v;
            y[i] = v > b ? b : v;
        }
        return 1;
    }
    for (long i = 0; i < n; ++i) y[i] += bv;
    return 0;
}

#endif
