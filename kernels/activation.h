/* The activation codes every kernel shares (the unary kernel, the fused epilogues of gemm, conv
 * and Winograd, the activation gradients), and the row loops of the codes that have a
 * branch-free vector form. activation.pxd gives Cython the same codes as ACT_RELU, …; the
 * binders pass them as ints; kernels/CONTRACT.md tabulates their formulas. */
#ifndef EMBER_ACTIVATION_H
#define EMBER_ACTIVATION_H

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
};

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
