/* Template (compiled once per instruction set, see simd_instance.h): activation spans. */
#include "activation.h"

/* p[0:n] = act(p[0:n]): the branch-free vector loops where the code has one, else the table */
static void ember_act_span_here(float *restrict p, long n, int code, float a, float b)
{
    if (ember_act_row_vec(p, n, code, a, b)) return;
    for (long i = 0; i < n; ++i) p[i] = ember_apply_act(p[i], code, a, b);
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
    } else {
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
