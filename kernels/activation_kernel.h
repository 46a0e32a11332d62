/* Template (compiled once per instruction set, see simd_instance.h): activation spans. */
#include "activation.h"
#include "vector_exp.h"

static void ember_act_unary_here(const float *x, float *y, long n, int code, float a, float b);

/* p[0:n] = act(p[0:n]): the loops of the unary kernel (vector where the code has a vector form) */
static void ember_act_span_here(float *p, long n, int code, float a, float b)
{
    ember_act_unary_here(p, p, n, code, a, b);
}

/* y[0:n] = act(x[0:n]) for the comparison-based codes beyond Relu, as loops of selects the
 * compiler vectorises (the formulas of ember_apply_act); returns 0 for the other
 * codes. GCC's default -ftrapping-math would turn `v * (c ? 1 : e)` back into a multiply under
 * a condition, which does not vectorise: these loops do not need FP exceptions kept. */
#if !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("no-trapping-math")
#endif
static int ember_act_unary_selects(const float *x, float *y, long n, int code, float a, float b)
{
    switch (code) {
    case EMBER_ACT_LEAKY_RELU:
        for (long i = 0; i < n; ++i) y[i] = x[i] >= 0.0f ? x[i] : a * x[i];
        return 1;
    case EMBER_ACT_CLIP:
        for (long i = 0; i < n; ++i) {
            const float e = x[i] < a ? a : x[i];
            y[i] = e > b ? b : e;
        }
        return 1;
    case EMBER_ACT_HARD_SIGMOID:
        for (long i = 0; i < n; ++i) {
            const float e = a * x[i] + b;
            y[i] = e < 0.0f ? 0.0f : (e > 1.0f ? 1.0f : e);
        }
        return 1;
    case EMBER_ACT_HARD_SWISH:
        for (long i = 0; i < n; ++i) {
            const float v = x[i], e = v * (1.0f / 6.0f) + 0.5f;
            y[i] = v * (e <= 0.0f ? 0.0f : (e >= 1.0f ? 1.0f : e));
        }
        return 1;
    case EMBER_ACT_ABS:
        for (long i = 0; i < n; ++i) y[i] = fabsf(x[i]);
        return 1;
    }
    return 0;
}
#if !defined(__clang__)
#pragma GCC pop_options
#endif

/* y[0:n] = exp(x[0:n]) (Exp), tanh(x) (Tanh), σ(x) (Sigmoid) or x·σ(x) (SiLU) with the vector
 * exp — the last n mod VW elements too, in a padded vector: a fused epilogue calls this on short
 * spans (a GEMM tile's row, a direct conv's block), whose tails through libm's expf cost twice
 * what the vector loop does (YOLO's Conv + SiLU took 8.5 ms for what a separate Sigmoid and Mul
 * did in 4.4), and an element's result no longer depends on where in a span it falls; σ stable on both sides: e = exp(−|x|), σ = 1/(1 + e) for x ≥ 0, e/(1 + e) below.
 * erf(x) (Erf) and Gelu (a = 0: x·(1 + erf(x/√2))/2, else the tanh form) with the vector erf and
 * tanh. Returns 0 for the other codes. */
static int ember_act_unary_exp(const float *x, float *y, long n, int code, float a)
{
    if (code != EMBER_ACT_EXP && code != EMBER_ACT_TANH && code != EMBER_ACT_SIGMOID &&
        code != EMBER_ACT_SILU && code != EMBER_ACT_ERF && code != EMBER_ACT_GELU)
        return 0;
    const ember_vf one = ember_vsplat(1.0f), half = ember_vsplat(0.5f);
    long i = 0;
    /* one loop per code: the code is tested once, not per vector, so each loop body is just its
     * formula (a branch per vector kept GCC from scheduling the erf and exp polynomials) */
#define EMBER_ACT_LOOP(EXPR)                                                                  \
    for (; i + EMBER_VW <= n; i += EMBER_VW) {                                                \
        const ember_vf v = ember_vload(x + i);                                                \
        ember_vstore(y + i, (EXPR));                                                          \
    }                                                                                         \
    if (i < n) { /* the tail through the same formula, in a zero-padded vector */             \
        float t_[EMBER_VW] = {0};                                                             \
        for (long k = i; k < n; ++k) t_[k - i] = x[k];                                        \
        const ember_vf v = ember_vload(t_);                                                   \
        ember_vstore(t_, (EXPR));                                                             \
        for (long k = i; k < n; ++k) y[k] = t_[k - i];                                        \
        i = n;                                                                                \
    }
    switch (code) {
    case EMBER_ACT_EXP: EMBER_ACT_LOOP(ember_vexp(v)) break;
    case EMBER_ACT_TANH: EMBER_ACT_LOOP(ember_vtanh(v)) break;
    case EMBER_ACT_ERF: EMBER_ACT_LOOP(ember_verf(v)) break;
    case EMBER_ACT_GELU:
        if (a == 0.0f) {
            EMBER_ACT_LOOP(half * v * (one + ember_verf(v * 0.70710678118654752f)))
        } else {
            EMBER_ACT_LOOP(half * v * (one + ember_vtanh((float)EMBER_GELU_TANH_K *
                                                         (v + (float)EMBER_GELU_TANH_C *
                                                                  (v * v * v)))))
        }
        break;
    case EMBER_ACT_SIGMOID: EMBER_ACT_LOOP(ember_vsigmoid(v)) break;
    default: /* SiLU */ EMBER_ACT_LOOP(v * ember_vsigmoid(v)) break;
    }
#undef EMBER_ACT_LOOP
    return 1;
}

/* y[0:n] = act(x[0:n]); y may be x (each element is read before it is written) */
static void ember_act_unary_here(const float *x, float *y, long n, int code, float a, float b)
{
    if (code == EMBER_ACT_IDENTITY) {
        if (y != x)
            for (long i = 0; i < n; ++i) y[i] = x[i];
    } else if (code == EMBER_ACT_RELU) {
        for (long i = 0; i < n; ++i) y[i] = x[i] < 0.0f ? 0.0f : x[i]; /* NaN passes through */
    } else if (code == EMBER_ACT_NEG) {
        for (long i = 0; i < n; ++i) y[i] = -x[i];
    } else if (!ember_act_unary_selects(x, y, n, code, a, b) &&
               !ember_act_unary_exp(x, y, n, code, a)) {
        for (long i = 0; i < n; ++i) y[i] = ember_apply_act(x[i], code, a, b);
    }
}

/* The GEMM epilogue on one finished m x n tile of C (row0, col0: where it sits in C). */
static void ember_bias_act_tile(float *c, long ldc, int m, int n, int row0, int col0,
                                const ember_bias_act *e)
{
    for (int i = 0; i < m; ++i) {
        float *row = c + i * ldc;
        if (e->bias && e->bias_axis == 0) {
            if (ember_bias_act_row(row, n, e->bias[row0 + i], e->act, e->act_a, e->act_b))
                continue;
        } else if (e->bias) {
            const float *bias = e->bias + col0;
            for (int j = 0; j < n; ++j) row[j] += bias[j];
        }
        ember_act_span_here(row, n, e->act, e->act_a, e->act_b);
    }
}

static const struct ember_activation_kernels ember_activation_here = {
    .span = ember_act_span_here,
    .unary = ember_act_unary_here,
};
