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
#include "thread_pool.h"

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
    /* C (M x N) = epi(Ap . B), A packed once in MR-row panels over the whole K, B row-major */
    int (*sgemm_packed_a)(int M, int N, int K, const float *Ap, const float *B, long ldb,
                          float *C, long ldc, const ember_bias_act *epi, int nthreads);
    /* Mx (Mp x ncols) = U . V with U packed as A and V as B (winograd_transform.h) */
    void (*packed_gemm)(const float *U, const float *V, float *Mx, int Mp, int C, int ncols,
                        long ldc);
    /* the same with V packed in K slices of kc rows (packed_gemm.h), columns [j0, j0 + ncols) */
    void (*packed_gemm_sliced)(const float *U, const float *V, long ldv, int j0, float *Mx,
                               int rows, int K, int ncols, long ldc);
    /* the same with V row-major, row stride ldv, read in place */
    void (*packed_gemm_strided)(const float *U, const float *V, long ldv, float *Mx, int Mp,
                                int C, int ncols, long ldc);
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

/* The tiles of one Winograd conv (winograd.pyx, winograd_kernel.h): tH × tW an image, numbered
 * t = (n·tH + th)·tW + tw; in the phase planes at (n·PR + th)·PWt + tw; y images img floats
 * apart, OH × OW each; the epilogue's activation. */
typedef struct {
    long PR, PWt, img;
    int tH, tW, OH, OW;
    int act;
    float act_a, act_b;
} ember_wino_tiles;

struct ember_winograd_kernels {
    /* one channel's V rows ξ (vs apart) for tiles [T0, T0 + nb), from its phase planes xc */
    void (*input_block)(int m, const float *xc, long PS, const ember_wino_tiles *g, long T0,
                        int nb, float *Vc, long vs);
    /* one output channel: y = act(Aᵀ·M·A + bias) for tiles [T0, T0 + nb) */
    void (*output_block)(int m, const float *Mrow, long ms, const ember_wino_tiles *g, long T0,
                         int nb, float bias, float *yc);
    /* one channel's m² phase planes, every image */
    void (*phases)(int m, const float *xc, long cstride, int N, int H, int W, int pt, int pl,
                   long PR, long PWt, long PS, float *planes);
};

/* ---- direct convolution for few input channels (conv_direct_kernel.h) --------------------- */

/* One conv's geometry over its prepared input (conv.pyx direct_sizes): per input channel CS
 * floats of phase planes, each PH rows of PW columns; tap[t] (t = kh·KW + kw) the offset of tap t
 * from an output position j = oh·PW + ow; nv the register block's vectors of positions. */
typedef struct {
    int C, M, KH, KW, OH, OW;
    long PW, CS;
    const long *tap;
    int nv;     /* rows kernel: vectors of positions a register block */
    int mbv;    /* pixels kernel: vectors of output channels a register block */
    int act;
    float act_a, act_b;
} ember_dc_geom;

/* The prepared input's geometry (conv.pyx direct_sizes): the image H × W, pads, strides; shp ×
 * swp phase planes of PH rows × PW columns, PS floats apart. */
typedef struct {
    long H, W, pt, pl, sh, sw;
    long shp, swp, PH, PW, PS;
} ember_dc_prep;

struct ember_conv_direct_kernels {
    int mb;     /* output channels a register block: the weights are packed in blocks of mb */
    int vw;     /* floats a vector: a register block spans nv·vw positions */
    int mbv;    /* the pixels kernel's most vectors of output channels a register block */
    /* positions in the lanes: output rows [oh0, oh1) and channel blocks [mb0, mb1) (of mb
     * channels) of one image, y = act(conv + bias) */
    void (*rows)(const ember_dc_geom *g, const float *xp, const float *wp, const float *bias,
                 float *y, int oh0, int oh1, int mb0, int mb1);
    /* output channels in the lanes: output pixels [q0, q1) and channel blocks [mb0, mb1) (of
     * g->mbv·vw channels) of one image */
    void (*pixels)(const ember_dc_geom *g, const float *xp, const float *wp, const float *bias,
                   float *y, long q0, long q1, int mb0, int mb1);
    /* rows [r0, r1) of one channel's phase planes, from its H × W plane xc */
    void (*prepare)(const ember_dc_prep *p, const float *xc, long r0, long r1, float *dst);
};

/* ---- pooling (pool_kernel.h) --------------------------------------------------------------- */

/* One pooling geometry over H×W planes, 64-bit (window.h): kh×kw taps dh, dw apart, strides sh,
 * sw, pads top/left/bottom/right; count_include_pad for the average's divisor. */
typedef struct {
    long H, W, OH, OW;
    long kh, kw, sh, sw, dh, dw;
    long pt, pl, pb, pr;
    int count_include_pad;
} ember_pool_window;

struct ember_pool_kernels {
    /* y (planes×OH×OW) = max / average pooling of `planes` consecutive planes x (planes×H×W):
     * a batch per call, so that small planes cost no call each and the kernel knows how far
     * past a plane it may read (whole vectors over narrow rows) */
    void (*max_planes)(const float *x, float *y, long planes, const ember_pool_window *g);
    void (*avg_planes)(const float *x, float *y, long planes, const ember_pool_window *g);
    /* y[r] = max or mean of each of `rows` rows of L floats */
    void (*global_rows)(const float *x, float *y, long rows, long L, int is_max);
    /* dx (planes×H×W, overwritten) of `planes` planes from dy (planes×OH×OW); the max's from x */
    void (*max_grad_planes)(const float *dy, const float *x, float *dx, long planes,
                            const ember_pool_window *g);
    void (*avg_grad_planes)(const float *dy, float *dx, long planes, const ember_pool_window *g);
};

/* ---- row sums (sums_kernel.h) -------------------------------------------------------------- */

struct ember_sums_kernels {
    /* Σ p[i] */
    double (*sum)(const float *p, long n);
    /* s[0] += Σd, s[1] += Σd², d = x − shift; with g (else NULL): s[2] += Σg, s[3] += Σg·d */
    void (*moment_sums)(const float *x, const float *g, long n, float shift, double *s);
    /* 1/√(var + eps) of n ≥ 1 floats (population variance); *centred = mean − x[0] */
    double (*row_inv_std)(const float *x, long n, double eps, double *centred);
};

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
    const struct ember_conv_direct_kernels *conv_direct;
    const struct ember_activation_kernels *activation;
    const struct ember_depthwise_kernels *depthwise;
    const struct ember_winograd_kernels *winograd;
    const struct ember_pool_kernels *pool;
    const struct ember_sums_kernels *sums;
    const struct ember_elementwise_kernels *elementwise;
    const struct ember_thread_pool *threads; /* the same pool in every table */
} ember_simd;

extern const ember_simd ember_simd_generic, ember_simd_avx2, ember_simd_avx512,
    ember_simd_avx512_on_avx2;

#ifndef EMBER_ISA_LEVEL /* in the kernel modules that call the tables */
static const ember_simd *ember_simd_in_use = 0;

/* fn(ctx, task, worker) for every task in [0, ntasks) on up to nthreads threads (thread_pool.h) */
static inline void ember_parallel(int nthreads, long ntasks, ember_task_fn fn, void *ctx)
{
    ember_simd_in_use->threads->run(nthreads, ntasks, fn, ctx);
}

static inline void ember_pool_hold(int delta) { ember_simd_in_use->threads->hold(delta); }
static inline int ember_pool_workers(void) { return ember_simd_in_use->threads->workers(); }

static inline int ember_sgemm_packed_a(int M, int N, int K, const float *Ap, const float *B,
                                       long ldb, float *C, long ldc, const ember_bias_act *epi,
                                       int nthreads)
{
    return ember_simd_in_use->sgemm->sgemm_packed_a(M, N, K, Ap, B, ldb, C, ldc, epi, nthreads);
}

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

static inline void ember_packed_gemm_strided(const float *U, const float *V, long ldv,
                                             float *Mx, int Mp, int C, int ncols, long ldc)
{
    ember_simd_in_use->sgemm->packed_gemm_strided(U, V, ldv, Mx, Mp, C, ncols, ldc);
}

static inline void ember_packed_gemm_sliced(const float *U, const float *V, long ldv, int j0,
                                            float *Mx, int rows, int K, int ncols, long ldc)
{
    ember_simd_in_use->sgemm->packed_gemm_sliced(U, V, ldv, j0, Mx, rows, K, ncols, ldc);
}

static inline void ember_direct_conv_rows(const ember_dc_geom *g, const float *xp,
                                          const float *wp, const float *bias, float *y, int oh0,
                                          int oh1, int mb0, int mb1)
{
    ember_simd_in_use->conv_direct->rows(g, xp, wp, bias, y, oh0, oh1, mb0, mb1);
}
static inline void ember_direct_conv_pixels(const ember_dc_geom *g, const float *xp,
                                            const float *wp, const float *bias, float *y,
                                            long q0, long q1, int mb0, int mb1)
{
    ember_simd_in_use->conv_direct->pixels(g, xp, wp, bias, y, q0, q1, mb0, mb1);
}
static inline void ember_direct_prepare(const ember_dc_prep *p, const float *xc, long r0,
                                        long r1, float *dst)
{
    ember_simd_in_use->conv_direct->prepare(p, xc, r0, r1, dst);
}
static inline int ember_direct_conv_mb(void) { return ember_simd_in_use->conv_direct->mb; }
static inline int ember_direct_conv_mbv(void) { return ember_simd_in_use->conv_direct->mbv; }
static inline int ember_direct_conv_vw(void) { return ember_simd_in_use->conv_direct->vw; }

static inline int ember_gemm_mr(void) { return ember_simd_in_use->sgemm->mr; }
static inline int ember_gemm_kc(void) { return ember_simd_in_use->sgemm->kc; }
static inline int ember_gemm_nr(void) { return ember_simd_in_use->sgemm->nr; }

static inline void ember_act_span(float *p, long n, int code, float a, float b)
{
    ember_simd_in_use->activation->span(p, n, code, a, b);
}

static inline void ember_act_unary(const float *x, float *y, long n, int code, float a, float b)
{
    ember_simd_in_use->activation->unary(x, y, n, code, a, b);
}

/* Winograd transforms */
static inline void ember_wino_input_block(int m, const float *xc, long PS,
                                          const ember_wino_tiles *g, long T0, int nb, float *Vc,
                                          long vs)
{
    ember_simd_in_use->winograd->input_block(m, xc, PS, g, T0, nb, Vc, vs);
}

static inline void ember_wino_phases(int m, const float *xc, long cstride, int N, int H, int W,
                                     int pt, int pl, long PR, long PWt, long PS, float *planes)
{
    ember_simd_in_use->winograd->phases(m, xc, cstride, N, H, W, pt, pl, PR, PWt, PS, planes);
}

static inline void ember_wino_output_block(int m, const float *Mrow, long ms,
                                           const ember_wino_tiles *g, long T0, int nb,
                                           float bias, float *yc)
{
    ember_simd_in_use->winograd->output_block(m, Mrow, ms, g, T0, nb, bias, yc);
}

/* pooling */
static inline void ember_max_pool_planes(const float *x, float *y, long planes,
                                         const ember_pool_window *g)
{
    ember_simd_in_use->pool->max_planes(x, y, planes, g);
}

static inline void ember_avg_pool_planes(const float *x, float *y, long planes,
                                         const ember_pool_window *g)
{
    ember_simd_in_use->pool->avg_planes(x, y, planes, g);
}

static inline void ember_global_pool_rows(const float *x, float *y, long rows, long L,
                                          int is_max)
{
    ember_simd_in_use->pool->global_rows(x, y, rows, L, is_max);
}

static inline void ember_max_pool_grad_planes(const float *dy, const float *x, float *dx,
                                              long planes, const ember_pool_window *g)
{
    ember_simd_in_use->pool->max_grad_planes(dy, x, dx, planes, g);
}

static inline void ember_avg_pool_grad_planes(const float *dy, float *dx, long planes,
                                              const ember_pool_window *g)
{
    ember_simd_in_use->pool->avg_grad_planes(dy, dx, planes, g);
}

/* row sums */
static inline double ember_sum(const float *p, long n)
{
    return ember_simd_in_use->sums->sum(p, n);
}

static inline void ember_moment_sums(const float *x, const float *g, long n, float shift,
                                     double *s)
{
    ember_simd_in_use->sums->moment_sums(x, g, n, shift, s);
}

static inline double ember_row_inv_std(const float *x, long n, double eps, double *centred)
{
    return ember_simd_in_use->sums->row_inv_std(x, n, eps, centred);
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
