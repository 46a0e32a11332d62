/* Template (compiled once per instruction set, see simd_instance.h): the per-element kernels —
 * binary ops, activation gradients, Dropout's mask, softmax rows and their gradients, the
 * optimizer updates. The Cython modules keep the shapes and the parallel split; these are the
 * spans each task runs.
 *
 * Most loops are plain C the compiler vectorises for the level; EMBER_EW_IVDEP tells it that an
 * output may be its input (y is x) but never a shifted copy of it, so no overlap check is
 * needed: each element is read before it is written at the same index. The reductions (a row's
 * maximum, double sums) are written with vectors, since the compiler may not reorder them. */
#include "activation.h"
#include "dropout_hash.h"
/* and, from activation_kernel.h (included before this in simd_instance.h): vector_exp.h */

#if defined(__clang__)
#define EMBER_EW_IVDEP _Pragma("clang loop vectorize(assume_safety)")
#else
#define EMBER_EW_IVDEP _Pragma("GCC ivdep")
#endif

/* ---- binary ops -------------------------------------------------------------------------- */

/* One op; Max and Min pass a NaN u through, as onnxruntime does. */
static inline float ember_ew_binop(float u, float v, int op)
{
    switch (op) {
    case EMBER_OP_ADD: return u + v;
    case EMBER_OP_SUB: return u - v;
    case EMBER_OP_MUL: return u * v;
    case EMBER_OP_DIV: return u / v;
    case EMBER_OP_MAX: return (u >= v || u != u) ? u : v;
    case EMBER_OP_MIN: return (u <= v || u != u) ? u : v;
    case EMBER_OP_POW: return powf(u, v);
    }
    return u >= 0.0f ? u : u * v; /* PRelu */
}

/* y[i] = a[i·sa] op b[i·sb] for one op known at compile time (inlined with a constant), with
 * a loop per common stride pattern so each vectorises. */
static inline __attribute__((always_inline)) void
ember_ew_binary_pattern(const float *a, long sa, const float *b, long sb, float *y, long n,
                     const int op)
{
    if (sa == 1 && sb == 1) {
        EMBER_EW_IVDEP
        for (long i = 0; i < n; ++i) y[i] = ember_ew_binop(a[i], b[i], op);
    } else if (sa == 1 && sb == 0) {
        const float s = b[0];
        EMBER_EW_IVDEP
        for (long i = 0; i < n; ++i) y[i] = ember_ew_binop(a[i], s, op);
    } else if (sa == 0 && sb == 1) {
        const float s = a[0];
        EMBER_EW_IVDEP
        for (long i = 0; i < n; ++i) y[i] = ember_ew_binop(s, b[i], op);
    } else {
        for (long i = 0; i < n; ++i) y[i] = ember_ew_binop(a[i * sa], b[i * sb], op);
    }
}

static void ember_binary_span_here(const float *a, long sa, const float *b, long sb, float *y,
                                   long n, int op)
{
    switch (op) {
    case EMBER_OP_ADD: ember_ew_binary_pattern(a, sa, b, sb, y, n, EMBER_OP_ADD); break;
    case EMBER_OP_SUB: ember_ew_binary_pattern(a, sa, b, sb, y, n, EMBER_OP_SUB); break;
    case EMBER_OP_MUL: ember_ew_binary_pattern(a, sa, b, sb, y, n, EMBER_OP_MUL); break;
    case EMBER_OP_DIV: ember_ew_binary_pattern(a, sa, b, sb, y, n, EMBER_OP_DIV); break;
    case EMBER_OP_MAX: ember_ew_binary_pattern(a, sa, b, sb, y, n, EMBER_OP_MAX); break;
    case EMBER_OP_MIN: ember_ew_binary_pattern(a, sa, b, sb, y, n, EMBER_OP_MIN); break;
    case EMBER_OP_POW: ember_ew_binary_pattern(a, sa, b, sb, y, n, EMBER_OP_POW); break;
    default: ember_ew_binary_pattern(a, sa, b, sb, y, n, EMBER_OP_PRELU); break;
    }
}

/* ---- activation gradients ---------------------------------------------------------------- */

/* The factor a select picks must stay a select for the loops to vectorise: with GCC's default
 * -ftrapping-math, `g * (c ? 1 : a)` becomes `c ? g : g * a`, a multiply under a condition.
 * (Clang does not trap-track by default.) */
#if defined(__clang__)
#define EMBER_SELECTS_BEGIN
#define EMBER_SELECTS_END
#else
#define EMBER_SELECTS_BEGIN \
    _Pragma("GCC push_options") _Pragma("GCC optimize(\"no-trapping-math\")")
#define EMBER_SELECTS_END _Pragma("GCC pop_options")
#endif

EMBER_SELECTS_BEGIN

/* dx = dy·act'(…) over n elements, g = dY; t is the forward output Y (Relu, Sigmoid, Tanh) or
 * input X (the rest). dx may be g. Every branch multiplies dY by a factor picked with a select,
 * so no load sits under a condition. */
static void ember_act_grad_span_here(const float *g, const float *t, float *dx, long n,
                                     int code, float a, float b)
{
    switch (code) {
    case EMBER_ACT_RELU:
        EMBER_EW_IVDEP
        for (long i = 0; i < n; ++i) dx[i] = t[i] > 0.0f ? g[i] : 0.0f;
        break;
    case EMBER_ACT_SIGMOID:
        EMBER_EW_IVDEP
        for (long i = 0; i < n; ++i) dx[i] = g[i] * t[i] * (1.0f - t[i]);
        break;
    case EMBER_ACT_TANH:
        EMBER_EW_IVDEP
        for (long i = 0; i < n; ++i) dx[i] = g[i] * (1.0f - t[i] * t[i]);
        break;
    case EMBER_ACT_LEAKY_RELU: /* a = slope */
        EMBER_EW_IVDEP
        for (long i = 0; i < n; ++i) dx[i] = g[i] * (t[i] > 0.0f ? 1.0f : a);
        break;
    case EMBER_ACT_ELU:
        for (long i = 0; i < n; ++i) dx[i] = g[i] * (t[i] > 0.0f ? 1.0f : a * expf(t[i]));
        break;
    case EMBER_ACT_CLIP: /* a = min, b = max */
        EMBER_EW_IVDEP
        for (long i = 0; i < n; ++i) dx[i] = g[i] * ((t[i] >= a) & (t[i] <= b) ? 1.0f : 0.0f);
        break;
    case EMBER_ACT_HARD_SIGMOID:
        EMBER_EW_IVDEP
        for (long i = 0; i < n; ++i) {
            const float u = a * t[i] + b;
            dx[i] = g[i] * ((u > 0.0f) & (u < 1.0f) ? a : 0.0f);
        }
        break;
    case EMBER_ACT_HARD_SWISH:
        EMBER_EW_IVDEP
        for (long i = 0; i < n; ++i) {
            const float x = t[i];
            dx[i] = g[i] * (x < -3.0f ? 0.0f : (x > 3.0f ? 1.0f : (2.0f * x + 3.0f) / 6.0f));
        }
        break;
    case EMBER_ACT_SOFTPLUS: /* σ(x), stable on both sides */
        for (long i = 0; i < n; ++i)
            dx[i] = g[i] * ember_apply_act(t[i], EMBER_ACT_SIGMOID, 0.0f, 0.0f);
        break;
    case EMBER_ACT_ERF: /* 2/√π·e^(−x²) */
        for (long i = 0; i < n; ++i)
            dx[i] = g[i] * (float)(1.1283791670955126 * exp(-(double)t[i] * t[i]));
        break;
    case EMBER_ACT_GELU: /* a = 0: Φ(x) + x·φ(x); else the derivative of the tanh form */
        for (long i = 0; i < n; ++i) {
            const double x = t[i];
            double d;
            if (a == 0.0f) {
                d = 0.5 * (1.0 + erf(x * 0.7071067811865476)) +
                    x * 0.3989422804014327 * exp(-0.5 * x * x);
            } else {
                const double th = tanh(EMBER_GELU_TANH_K * (x + EMBER_GELU_TANH_C * x * x * x));
                d = 0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * EMBER_GELU_TANH_K *
                                           (1.0 + 3.0 * EMBER_GELU_TANH_C * x * x);
            }
            dx[i] = g[i] * (float)d;
        }
        break;
    default:
        if (dx != g)
            for (long i = 0; i < n; ++i) dx[i] = g[i];
    }
}

EMBER_SELECTS_END

/* ---- Dropout ----------------------------------------------------------------------------- */

/* Elements [first, first + n) (n ≤ 2³², not straddling a multiple of 2³²): keep (mask 1,
 * y = x·scale) when the draw ember_dropout_draw reaches threshold, else mask 0 and y = 0. */
static void ember_dropout_span_here(const float *restrict x, float *restrict y,
                                    uint8_t *restrict mask, long first, long n, uint32_t k1,
                                    uint32_t k2, uint32_t threshold, float scale)
{
    const uint32_t lo = (uint32_t)first, salt = k2 ^ (uint32_t)(first >> 32);
    for (long j = 0; j < n; ++j) {
        const uint32_t keep = ember_dropout_draw(lo + (uint32_t)j, k1, salt) >= threshold;
        mask[j] = (uint8_t)keep;
        y[j] = x[j] * (keep ? scale : 0.0f);
    }
}

/* ---- softmax rows ------------------------------------------------------------------------ */

/* max of x[0:n] (n ≥ 1) as the walk `if (x[k] > m) m = x[k]` from m = x[0] finds it: a NaN
 * counts only in x[0] */
static float ember_ew_row_max(const float *x, long n)
{
    float m = x[0];
    long k = 0;
    if (n >= EMBER_VW) {
        ember_vf mv = ember_vsplat(m);
        for (; k + EMBER_VW <= n; k += EMBER_VW) {
            const ember_vf v = ember_vload(x + k);
            mv = ember_vblend(v > mv, v, mv);
        }
        for (int l = 0; l < EMBER_VW; ++l)
            if (mv[l] > m) m = mv[l];
    }
    for (; k < n; ++k)
        if (x[k] > m) m = x[k];
    return m;
}

/* Half a vector of floats, and as many doubles in one register: the double sums widen each
 * half (a vector of EMBER_VW doubles would not fit a register and live in memory). */
typedef float ember_ew_vh __attribute__((vector_size(EMBER_VW * 2), aligned(4)));
typedef double ember_ew_vd __attribute__((vector_size(EMBER_VW * 4)));

static inline ember_ew_vd ember_ew_widen(const float *p)
{
    return __builtin_convertvector(*(const ember_ew_vh *)p, ember_ew_vd);
}

static double ember_ew_hsum(ember_ew_vd v)
{
    double s = 0.0;
    for (int l = 0; l < EMBER_VW / 2; ++l) s += v[l];
    return s;
}

/* Σ g[k] in double */
static double ember_ew_row_sum(const float *g, long n)
{
    const int h = EMBER_VW / 2;
    ember_ew_vd lo = {0}, hi = {0};
    long k = 0;
    for (; k + EMBER_VW <= n; k += EMBER_VW) {
        lo += ember_ew_widen(g + k);
        hi += ember_ew_widen(g + k + h);
    }
    double s = ember_ew_hsum(lo + hi);
    for (; k < n; ++k) s += g[k];
    return s;
}

/* Σ g[k]·y[k] in double */
static double ember_ew_row_dot(const float *g, const float *y, long n)
{
    const int h = EMBER_VW / 2;
    ember_ew_vd lo = {0}, hi = {0};
    long k = 0;
    for (; k + EMBER_VW <= n; k += EMBER_VW) {
        lo += ember_ew_widen(g + k) * ember_ew_widen(y + k);
        hi += ember_ew_widen(g + k + h) * ember_ew_widen(y + k + h);
    }
    double s = ember_ew_hsum(lo + hi);
    for (; k < n; ++k) s += (double)g[k] * y[k];
    return s;
}

/* y[k] = exp(x[k] − m) for k < n (y may be x); returns Σ y[k] in double */
static double ember_ew_row_exp_store_sum(const float *x, float m, float *y, long n)
{
    const int h = EMBER_VW / 2;
    const ember_vf mv = ember_vsplat(m);
    ember_ew_vd lo = {0}, hi = {0};
    long k = 0;
    for (; k + EMBER_VW <= n; k += EMBER_VW) {
        ember_vstore(y + k, ember_vexp(ember_vload(x + k) - mv));
        lo += ember_ew_widen(y + k);
        hi += ember_ew_widen(y + k + h);
    }
    double s = ember_ew_hsum(lo + hi);
    for (; k < n; ++k) {
        y[k] = expf(x[k] - m);
        s += y[k];
    }
    return s;
}

/* Σ exp(x[k] − m) for k < n, in double */
static double ember_ew_row_exp_sum(const float *x, float m, long n)
{
    float e[EMBER_VW];
    const ember_vf mv = ember_vsplat(m);
    ember_ew_vd lo = {0}, hi = {0};
    long k = 0;
    for (; k + EMBER_VW <= n; k += EMBER_VW) {
        ember_vstore(e, ember_vexp(ember_vload(x + k) - mv));
        lo += ember_ew_widen(e);
        hi += ember_ew_widen(e + EMBER_VW / 2);
    }
    double s = ember_ew_hsum(lo + hi);
    for (; k < n; ++k) s += expf(x[k] - m);
    return s;
}

/* One softmax (or log-softmax) over n values `stride` apart, max-subtracted; y may be x. */
static void ember_softmax_line_here(const float *x, float *y, long n, long stride, int log)
{
    double s = 0.0;
    float m, v;
    if (stride == 1) {
        m = ember_ew_row_max(x, n);
        if (log) {
            v = logf((float)ember_ew_row_exp_sum(x, m, n));
            /* (x - m) is exact-ish; folding m into v would round at |m|'s ulp */
            EMBER_EW_IVDEP
            for (long k = 0; k < n; ++k) y[k] = (x[k] - m) - v;
        } else {
            v = (float)(1.0 / ember_ew_row_exp_store_sum(x, m, y, n));
            EMBER_EW_IVDEP
            for (long k = 0; k < n; ++k) y[k] *= v;
        }
        return;
    }
    m = x[0];
    for (long k = 1; k < n; ++k)
        if (x[k * stride] > m) m = x[k * stride];
    if (log) {
        for (long k = 0; k < n; ++k) s += expf(x[k * stride] - m);
        v = logf((float)s);
        for (long k = 0; k < n; ++k) y[k * stride] = (x[k * stride] - m) - v;
    } else {
        for (long k = 0; k < n; ++k) {
            y[k * stride] = expf(x[k * stride] - m);
            s += y[k * stride];
        }
        v = (float)(1.0 / s);
        for (long k = 0; k < n; ++k) y[k * stride] *= v;
    }
}

/* One line of the softmax gradient, n elements `stride` apart. Softmax: dx = y·(g − Σ g·y);
 * log-softmax (y = log p): dx = g − exp(y)·Σ g. */
static void ember_softmax_grad_line_here(const float *g, const float *y, float *dx, long n,
                                         long stride, int log)
{
    double s = 0.0;
    if (stride == 1) {
        if (log) {
            s = ember_ew_row_sum(g, n);
            long k = 0;
            for (; k + EMBER_VW <= n; k += EMBER_VW) {
                float e[EMBER_VW];
                ember_vstore(e, ember_vexp(ember_vload(y + k)));
                for (int l = 0; l < EMBER_VW; ++l) dx[k + l] = (float)(g[k + l] - e[l] * s);
            }
            for (; k < n; ++k) dx[k] = (float)(g[k] - expf(y[k]) * s);
        } else {
            s = ember_ew_row_dot(g, y, n);
            EMBER_EW_IVDEP
            for (long k = 0; k < n; ++k) dx[k] = (float)(y[k] * (g[k] - s));
        }
        return;
    }
    if (log) {
        for (long k = 0; k < n; ++k) s += g[k * stride];
        for (long k = 0; k < n; ++k)
            dx[k * stride] = (float)(g[k * stride] - expf(y[k * stride]) * s);
    } else {
        for (long k = 0; k < n; ++k) s += (double)g[k * stride] * y[k * stride];
        for (long k = 0; k < n; ++k)
            dx[k * stride] = (float)(y[k * stride] * (g[k * stride] - s));
    }
}

/* ---- optimizer updates ------------------------------------------------------------------- */

/* No fused multiply-add contraction in the updates: every operation rounds once, as torch's
 * single-tensor code does, so an update does not depend on the level or on the thread split. */
#if defined(__clang__)
#define EMBER_NO_CONTRACT _Pragma("clang fp contract(off)")
#define EMBER_NO_CONTRACT_BEGIN
#define EMBER_NO_CONTRACT_END
#else
#define EMBER_NO_CONTRACT
#define EMBER_NO_CONTRACT_BEGIN \
    _Pragma("GCC push_options") _Pragma("GCC optimize(\"fp-contract=off\")")
#define EMBER_NO_CONTRACT_END _Pragma("GCC pop_options")
#endif

EMBER_NO_CONTRACT_BEGIN

/* torch SGD on n elements; buf NULL: no momentum */
static void ember_sgd_span_here(float *p, const float *g, float *buf, long n, float lr,
                                float mu, float damp1, float wd, int nesterov, int first)
{
    EMBER_NO_CONTRACT
    EMBER_EW_IVDEP
    for (long i = 0; i < n; ++i) {
        float d = g[i];
        if (wd != 0.0f) d = d + wd * p[i];
        if (buf) {
            const float m = first ? d : mu * buf[i] + damp1 * d;
            buf[i] = m;
            d = nesterov ? d + mu * m : m;
        }
        p[i] = p[i] - lr * d;
    }
}

/* torch RMSprop on n elements; gavg NULL: not centered, buf NULL: no momentum */
static void ember_rmsprop_span_here(float *p, const float *g, float *sq, float *gavg,
                                    float *buf, long n, float lr, float alpha,
                                    float one_m_alpha, float eps, float wd, float mu)
{
    EMBER_NO_CONTRACT
    EMBER_EW_IVDEP
    for (long i = 0; i < n; ++i) {
        float d = g[i];
        if (wd != 0.0f) d = d + wd * p[i];
        float s = alpha * sq[i] + one_m_alpha * (d * d);
        sq[i] = s;
        if (gavg) {
            const float avg = gavg[i] + one_m_alpha * (d - gavg[i]); /* lerp(ḡ, d, 1 − α) */
            gavg[i] = avg;
            s = s - avg * avg;
        }
        const float denom = sqrtf(s) + eps;
        if (buf) {
            const float m = mu * buf[i] + d / denom;
            buf[i] = m;
            p[i] = p[i] - lr * m;
        } else {
            p[i] = p[i] - lr * (d / denom);
        }
    }
}

/* torch Adam (wd: L2 folded into the gradient) / AdamW (decay = 1 − lr·wd applied to p
 * first) on n elements */
static void ember_adam_span_here(float *p, const float *g, float *m, float *v, long n,
                                 float step_size, float one_m_beta1, float beta2,
                                 float one_m_beta2, float eps, float bc2_sqrt, float wd,
                                 float decay)
{
    EMBER_NO_CONTRACT
    EMBER_EW_IVDEP
    for (long i = 0; i < n; ++i) {
        float pi = p[i];
        if (decay != 1.0f) pi = pi * decay;
        float d = g[i];
        if (wd != 0.0f) d = d + wd * pi;
        const float mi = m[i] + one_m_beta1 * (d - m[i]); /* lerp(m, d, 1 − β1) */
        const float vi = beta2 * v[i] + one_m_beta2 * (d * d);
        m[i] = mi;
        v[i] = vi;
        p[i] = pi - step_size * (mi / (sqrtf(vi) / bc2_sqrt + eps));
    }
}

/* y += alpha·x */
static void ember_axpy_span_here(float *y, const float *x, long n, float alpha)
{
    EMBER_NO_CONTRACT
    EMBER_EW_IVDEP
    for (long i = 0; i < n; ++i) y[i] = y[i] + alpha * x[i];
}

EMBER_NO_CONTRACT_END

static const struct ember_elementwise_kernels ember_elementwise_here = {
    .binary_span = ember_binary_span_here,
    .act_grad_span = ember_act_grad_span_here,
    .dropout_span = ember_dropout_span_here,
    .softmax_line = ember_softmax_line_here,
    .softmax_grad_line = ember_softmax_grad_line_here,
    .sgd_span = ember_sgd_span_here,
    .rmsprop_span = ember_rmsprop_span_here,
    .adam_span = ember_adam_span_here,
    .axpy_span = ember_axpy_span_here,
};
