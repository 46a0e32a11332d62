/* The dispatch tables: every kernel whose hot loops are compiled once per instruction set is
 * reached through one of these, and one table per level exists (kernels/simd_<level>.c, each
 * the templates *_kernel.h compiled under that level's target, see simd_instance.h).
 *
 * Which table runs is chosen once, when ember.kernels.simd is imported (kernels/simd.pyx); every
 * other kernel module asks it for the table at its own import (simd.pxd: use_simd) and keeps the
 * pointer in `ember_simd_in_use`, a static of its own, which the inline wrappers below read. So
 * the CPU is asked once per process, the choice cannot differ between modules, and the wrappers
 * keep the kernels' call sites what they were. */
#ifndef EMBER_SIMD_H
#define EMBER_SIMD_H

#include "isa.h"

/* ---- GEMM (sgemm_kernel.h) ----------------------------------------------------------------- */

/* What runs on each finished tile of C while it is in L1: C += bias (per row: axis 0, per
 * column: axis 1), then the activation `act` (kernels/activation.h). */
typedef struct {
    const float *bias; /* NULL for none */
    int bias_axis;
    int act;
    float act_a, act_b;
} ember_bias_act;

/* Implicit im2col: B (rows (c, kh, kw), columns (oh, ow)) read straight from one image-group. */
typedef struct {
    const float *x; /* C x H x W */
    int H, W, KH, KW, OW;
    int sh, sw, pt, pl, dh, dw;
} ember_im2col_src;

struct ember_sgemm_kernels {
    int mr, nr;       /* micro-kernel rows and columns: the packed layouts follow them */
    int mc, kc, nc;   /* cache blocking: A blocks mc x kc (L2), B panels kc x nr (L1) */
    /* C = epi(alpha op(A) op(B) + beta C); 0 on allocation failure (see sgemm_kernel.h) */
    int (*sgemm)(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A,
                 long lda, const float *B, long ldb, float beta, float *C, long ldc,
                 const ember_bias_act *epi, int nthreads);
    /* the same with B = im2col(src) (M x K weights A times K x N columns), never materialised */
    int (*sgemm_im2col)(int M, int N, int K, const float *A, long lda, float beta, float *C,
                        long ldc, const ember_bias_act *epi, int nthreads,
                        const ember_im2col_src *src);
    /* Mx (Mp x ncols) = U . V with U packed as A and V as B (winograd_transform.h) */
    void (*packed_gemm)(const float *U, const float *V, float *Mx, int Mp, int C, int ncols,
                        long ldc);
};

/* ---- activations (activation_kernel.h) ----------------------------------------------------- */

struct ember_activation_kernels {
    /* p[0:n] = act(p[0:n]) in place */
    void (*span)(float *p, long n, int code, float a, float b);
    /* y[0:n] = act(x[0:n]); y may be x */
    void (*unary)(const float *x, float *y, long n, int code, float a, float b);
};

/* ---- depthwise (depthwise_kernel.h) -------------------------------------------------------- */
struct ember_depthwise_kernels;

/* ---- Winograd transforms (winograd_kernel.h) ----------------------------------------------- */
struct ember_winograd_kernels;

/* ---- pooling rows (pool_kernel.h) ---------------------------------------------------------- */
struct ember_pool_kernels;

/* ---- row sums (sums_kernel.h) -------------------------------------------------------------- */
struct ember_sums_kernels;

/* ---- elementwise (elementwise_kernel.h) ---------------------------------------------------- */
#include <stdint.h>

enum ember_binary_op {
    EMBER_OP_ADD = 0,
    EMBER_OP_SUB = 1,
    EMBER_OP_MUL = 2,
    EMBER_OP_DIV = 3,
    EMBER_OP_MAX = 4,
    EMBER_OP_MIN = 5,
    EMBER_OP_POW = 6,
    EMBER_OP_PRELU = 7,
};

/* The spans the Cython modules split a tensor into (in-place: y may be x, never shifted). */
struct ember_elementwise_kernels {
    /* y[i] = a[i·sa] op b[i·sb], i < n */
    void (*binary_span)(const float *a, long sa, const float *b, long sb, float *y, long n,
                        int op);
    /* dx = g·act'(t), t the forward output or input as the code wants (act_grad.pyx) */
    void (*act_grad_span)(const float *g, const float *t, float *dx, long n, int code,
                          float a, float b);
    /* Dropout's mask and output for global elements [first, first + n) (dropout_hash.h) */
    void (*dropout_span)(const float *x, float *y, uint8_t *mask, long first, long n,
                         uint32_t k1, uint32_t k2, uint32_t threshold, float scale);
    /* softmax (log: log-softmax) of n values `stride` apart */
    void (*softmax_line)(const float *x, float *y, long n, long stride, int log);
    /* its gradient, from dY = g and the forward output y */
    void (*softmax_grad_line)(const float *g, const float *y, float *dx, long n, long stride,
                              int log);
    /* optimizer updates in place, as torch.optim's single-tensor code (optim.pyx) */
    void (*sgd_span)(float *p, const float *g, float *buf, long n, float lr, float mu,
                     float damp1, float wd, int nesterov, int first);
    void (*rmsprop_span)(float *p, const float *g, float *sq, float *gavg, float *buf, long n,
                         float lr, float alpha, float one_m_alpha, float eps, float wd,
                         float mu);
    void (*adam_span)(float *p, const float *g, float *m, float *v, long n, float step_size,
                      float one_m_beta1, float beta2, float one_m_beta2, float eps,
                      float bc2_sqrt, float wd, float decay);
    void (*axpy_span)(float *y, const float *x, long n, float alpha);
};

/* ---- the table ------------------------------------------------------------------------------ */

typedef struct ember_simd {
    const char *name;  /* "generic", "avx2", "avx512", "avx512-on-avx2" */
    int isa;           /* the level whose kernels these are (EMBER_ISA_*; -1: not built) */
    int needs;         /* the level the CPU must have to run them */
    const struct ember_sgemm_kernels *sgemm;
    const struct ember_activation_kernels *activation;
    const struct ember_depthwise_kernels *depthwise;
    const struct ember_winograd_kernels *winograd;
    const struct ember_pool_kernels *pool;
    const struct ember_sums_kernels *sums;
    const struct ember_elementwise_kernels *elementwise;
} ember_simd;

extern const ember_simd ember_simd_generic, ember_simd_avx2, ember_simd_avx512,
    ember_simd_avx512_on_avx2;

#ifndef EMBER_ISA_LEVEL /* in the kernel modules that call the tables */
static const ember_simd *ember_simd_in_use = 0;

static inline int ember_sgemm(int trans_a, int trans_b, int M, int N, int K, float alpha,
                              const float *A, long lda, const float *B, long ldb, float beta,
                              float *C, long ldc, const ember_bias_act *epi, int nthreads)
{
    return ember_simd_in_use->sgemm->sgemm(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb,
                                           beta, C, ldc, epi, nthreads);
}

static inline int ember_sgemm_im2col(int M, int N, int K, const float *A, long lda, float beta,
                                     float *C, long ldc, const ember_bias_act *epi,
                                     int nthreads, const ember_im2col_src *src)
{
    return ember_simd_in_use->sgemm->sgemm_im2col(M, N, K, A, lda, beta, C, ldc, epi, nthreads,
                                                  src);
}

static inline void ember_packed_gemm(const float *U, const float *V, float *Mx, int Mp, int C,
                                     int ncols, long ldc)
{
    ember_simd_in_use->sgemm->packed_gemm(U, V, Mx, Mp, C, ncols, ldc);
}

static inline int ember_gemm_mr(void) { return ember_simd_in_use->sgemm->mr; }
static inline int ember_gemm_nr(void) { return ember_simd_in_use->sgemm->nr; }

static inline void ember_act_span(float *p, long n, int code, float a, float b)
{
    ember_simd_in_use->activation->span(p, n, code, a, b);
}

static inline void ember_act_unary(const float *x, float *y, long n, int code, float a, float b)
{
    ember_simd_in_use->activation->unary(x, y, n, code, a, b);
}

/* elementwise */
static inline void ember_binary_span(const float *a, long sa, const float *b, long sb, float *y,
                                     long n, int op)
{
    ember_simd_in_use->elementwise->binary_span(a, sa, b, sb, y, n, op);
}

static inline void ember_act_grad_span(const float *g, const float *t, float *dx, long n,
                                       int code, float a, float b)
{
    ember_simd_in_use->elementwise->act_grad_span(g, t, dx, n, code, a, b);
}

static inline void ember_dropout_span(const float *x, float *y, uint8_t *mask, long first,
                                      long n, uint32_t k1, uint32_t k2, uint32_t threshold,
                                      float scale)
{
    ember_simd_in_use->elementwise->dropout_span(x, y, mask, first, n, k1, k2, threshold, scale);
}

static inline void ember_softmax_line(const float *x, float *y, long n, long stride, int log)
{
    ember_simd_in_use->elementwise->softmax_line(x, y, n, stride, log);
}

static inline void ember_softmax_grad_line(const float *g, const float *y, float *dx, long n,
                                           long stride, int log)
{
    ember_simd_in_use->elementwise->softmax_grad_line(g, y, dx, n, stride, log);
}

static inline void ember_sgd_span(float *p, const float *g, float *buf, long n, float lr,
                                  float mu, float damp1, float wd, int nesterov, int first)
{
    ember_simd_in_use->elementwise->sgd_span(p, g, buf, n, lr, mu, damp1, wd, nesterov, first);
}

static inline void ember_rmsprop_span(float *p, const float *g, float *sq, float *gavg,
                                      float *buf, long n, float lr, float alpha,
                                      float one_m_alpha, float eps, float wd, float mu)
{
    ember_simd_in_use->elementwise->rmsprop_span(p, g, sq, gavg, buf, n, lr, alpha, one_m_alpha,
                                                 eps, wd, mu);
}

static inline void ember_adam_span(float *p, const float *g, float *m, float *v, long n,
                                   float step_size, float one_m_beta1, float beta2,
                                   float one_m_beta2, float eps, float bc2_sqrt, float wd,
                                   float decay)
{
    ember_simd_in_use->elementwise->adam_span(p, g, m, v, n, step_size, one_m_beta1, beta2,
                                              one_m_beta2, eps, bc2_sqrt, wd, decay);
}

static inline void ember_axpy_span(float *y, const float *x, long n, float alpha)
{
    ember_simd_in_use->elementwise->axpy_span(y, x, n, alpha);
}
#endif

#endif
