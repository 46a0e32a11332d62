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
#include "depthwise.h"

struct ember_depthwise_kernels {
    int group; /* channels the group kernels interleave: one vector of the level (4, 8, 16) */
    /* per plane (g: forward geometry, or ember_dw_input_grad_geom for the input gradient) */
    int (*forward_plane)(const ember_dw_geom *g, const float *x, const float *w, float bv,
                         float *y, float *buf, int act, float a, float b);
    void (*input_grad_plane)(const ember_dw_geom *g, const float *dy, const float *w,
                             float *dx, float *buf);
    void (*weight_grad_plane)(const ember_dw_geom *g, const float *x, const float *dy,
                              double *acc, float *buf);
    /* per group of up to `group` channels, channel-interleaved */
    int (*group_forward)(const ember_dw_geom *g, const float *x, long plane_in, const float *w,
                         const float *bias, float *y, long plane_out, int nch, float *buf,
                         int act, float a, float b);
    void (*group_weight_grad)(const ember_dw_geom *g, const float *x, long plane_in,
                              const float *dy, long plane_out, int nch, float *buf,
                              double *acc);
    void (*group_input_grad_scatter)(const ember_dw_geom *g, const float *dy, long plane_out,
                                     const float *w, float *dx, long plane_in, int nch,
                                     float *buf);
};

/* ---- Winograd transforms (winograd_kernel.h) ----------------------------------------------- */
struct ember_winograd_kernels;

/* ---- pooling rows (pool_kernel.h) ---------------------------------------------------------- */
struct ember_pool_kernels;

/* ---- row sums (sums_kernel.h) -------------------------------------------------------------- */
struct ember_sums_kernels;

/* ---- elementwise (elementwise_kernel.h) ---------------------------------------------------- */
struct ember_elementwise_kernels;

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

/* depthwise: the ember_dw8_* names are the channel-group kernels, whatever the group width */
static inline int ember_dw_group(void) { return ember_simd_in_use->depthwise->group; }

static inline long ember_dw8_buffer_floats(const ember_dw_geom *g)
{
    return ember_dw_group_buffer_floats(g, ember_dw_group());
}

static inline long ember_dw8_grad_buffer_floats(const ember_dw_geom *g)
{
    return ember_dw_group_grad_buffer_floats(g, ember_dw_group());
}

static inline int ember_dw_forward_plane(const ember_dw_geom *g, const float *x, const float *w,
                                         float bv, float *y, float *buf, int act, float a,
                                         float b)
{
    return ember_simd_in_use->depthwise->forward_plane(g, x, w, bv, y, buf, act, a, b);
}

static inline void ember_dw_input_grad_plane(const ember_dw_geom *g, const float *dy,
                                             const float *w, float *dx, float *buf)
{
    ember_simd_in_use->depthwise->input_grad_plane(g, dy, w, dx, buf);
}

static inline void ember_dw_weight_grad_plane(const ember_dw_geom *g, const float *x,
                                              const float *dy, double *acc, float *buf)
{
    ember_simd_in_use->depthwise->weight_grad_plane(g, x, dy, acc, buf);
}

static inline int ember_dw8_forward(const ember_dw_geom *g, const float *x, long plane_in,
                                    const float *w, const float *bias, float *y, long plane_out,
                                    int nch, float *buf, int act, float a, float b)
{
    return ember_simd_in_use->depthwise->group_forward(g, x, plane_in, w, bias, y, plane_out,
                                                       nch, buf, act, a, b);
}

static inline void ember_dw8_weight_grad(const ember_dw_geom *g, const float *x, long plane_in,
                                         const float *dy, long plane_out, int nch, float *buf,
                                         double *acc)
{
    ember_simd_in_use->depthwise->group_weight_grad(g, x, plane_in, dy, plane_out, nch, buf,
                                                    acc);
}

static inline void ember_dw8_input_grad_scatter(const ember_dw_geom *g, const float *dy,
                                                long plane_out, const float *w, float *dx,
                                                long plane_in, int nch, float *buf)
{
    ember_simd_in_use->depthwise->group_input_grad_scatter(g, dy, plane_out, w, dx, plane_in,
                                                           nch, buf);
}
#endif

#endif
