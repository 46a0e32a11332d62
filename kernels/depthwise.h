/* Depthwise convolution: the geometry and buffer sizes both sides need — Cython, which plans the
 * calls, and the kernels of depthwise_kernel.h (compiled once per instruction set, reached
 * through the depthwise table of simd.h). Nothing here is a hot loop.
 *
 * Two layouts of a plane's padded input window (see depthwise_kernel.h):
 *  - per plane: sh·sw phase planes of Hq × Wq, so that every tap of every stride reads at unit
 *    stride (ember_dw_init, ember_dw_set_taps, ember_dw_buffer_floats);
 *  - per channel group: `group` channels interleaved, padded pixel (r, c) of channel k at
 *    P[(r·Wp + c)·group + k], one vector of the instruction set per pixel (ember_dw_hp/wp,
 *    ember_dw_group_buffer_floats).
 *
 * Input dilation (ih_step, iw_step > 1: source pixel (i, j) sits at padded (i·ih_step + pt,
 * j·iw_step + pl), zeros between) turns the input gradient of a strided conv into a stride-1
 * correlation of the zero-inserted dY with the flipped kernel.
 */
#ifndef EMBER_DEPTHWISE_H
#define EMBER_DEPTHWISE_H

#include <stdlib.h>

/* A per-thread plane buffer of n floats, 64-byte aligned (the channel-group path does vector
 * read-modify-writes: misaligned ones would split cache lines and miss store forwarding); NULL
 * when out of memory. Release with free(). */
static inline float *ember_dw_alloc(long n)
{
    void *p = NULL;
    if (posix_memalign(&p, 64, sizeof(float) * (size_t)(n > 0 ? n : 1)) != 0) return NULL;
    return (float *)p;
}

typedef struct {
    int H, W;              /* source plane */
    int OH, OW;            /* output plane */
    int KH, KW, sh, sw, dh, dw;
    int pt, pl;            /* padded row/column of source pixel (0, 0); may be negative */
    int ih_step, iw_step;  /* input dilation (1: none) */
    int Hq, Wq;            /* phase plane size (ember_dw_init) */
    const long *tap;       /* KH·KW offsets of each tap into the buffer (ember_dw_set_taps) */
} ember_dw_geom;

static inline void ember_dw_init(ember_dw_geom *g)
{
    g->Hq = g->OH + ((g->KH - 1) * g->dh) / g->sh;
    g->Wq = g->OW + ((g->KW - 1) * g->dw) / g->sw;
}

/* Floats of per-thread buffer one plane needs: the phase planes, the flat output row block and
 * a flipped copy of the kernel and one padded row (stride-2 packing). */
static inline long ember_dw_buffer_floats(const ember_dw_geom *g)
{
    return (long)g->sh * g->sw * g->Hq * g->Wq + (long)g->OH * g->Wq + (long)g->KH * g->KW
           + 2L * g->Wq + 16;
}

/* Where each tap (kh, kw) reads: its phase plane, shifted by the tap's offset inside it.
 * Computed once per call (integer divisions per plane would cost more than a small plane). */
static inline void ember_dw_set_taps(ember_dw_geom *g, long *tap)
{
    for (int kh = 0; kh < g->KH; ++kh)
        for (int kw = 0; kw < g->KW; ++kw) {
            int a = kh * g->dh, b = kw * g->dw;
            tap[kh * g->KW + kw] = ((long)(a % g->sh) * g->sw + b % g->sw) * g->Hq * g->Wq
                                   + (long)(a / g->sh) * g->Wq + b / g->sw;
        }
    g->tap = tap;
}

/* Geometry of the input gradient of a depthwise conv as a stride-1 correlation: dY (OH × OW),
 * zero-inserted by the stride, padded by (K − 1)·dil − pad, correlated with the flipped kernel,
 * gives dX (H × W). `fwd` is the forward geometry. */
static inline ember_dw_geom ember_dw_input_grad_geom(const ember_dw_geom *fwd)
{
    ember_dw_geom g;
    g.H = fwd->OH; g.W = fwd->OW;
    g.OH = fwd->H; g.OW = fwd->W;
    g.KH = fwd->KH; g.KW = fwd->KW; g.sh = 1; g.sw = 1; g.dh = fwd->dh; g.dw = fwd->dw;
    g.pt = (fwd->KH - 1) * fwd->dh - fwd->pt;
    g.pl = (fwd->KW - 1) * fwd->dw - fwd->pl;
    g.ih_step = fwd->sh; g.iw_step = fwd->sw;
    g.tap = 0;
    ember_dw_init(&g);
    return g;
}

/* Padded window of one channel group: rows/columns of the padded image that taps reach. */
static inline int ember_dw_hp(const ember_dw_geom *g)
{
    return (g->OH - 1) * g->sh + (g->KH - 1) * g->dh + 1;
}

static inline int ember_dw_wp(const ember_dw_geom *g)
{
    return (g->OW - 1) * g->sw + (g->KW - 1) * g->dw + 1;
}

/* Floats of per-thread buffer one group of `group` channels needs, forward or strided input
 * gradient: the interleaved window, the interleaved output (dY for the scatter) and the
 * interleaved weights. */
static inline long ember_dw_group_buffer_floats(const ember_dw_geom *g, int group)
{
    return (long)group * ember_dw_hp(g) * ember_dw_wp(g)
           + (long)group * ((long)g->OH * g->OW + 4) + (long)group * g->KH * g->KW + 16;
}

/* The same for the weight gradient: the interleaved window and the interleaved dY. */
static inline long ember_dw_group_grad_buffer_floats(const ember_dw_geom *g, int group)
{
    return (long)group * ember_dw_hp(g) * ember_dw_wp(g)
           + (long)group * ((long)g->OH * g->OW + 4) + 16;
}

/* Row copies written as loops the compiler must not turn into memcpy/memset calls: the rows of
 * small planes are a few floats long and a library call per row would cost more than the copy. */
#if defined(__GNUC__) && !defined(__clang__)
#define EMBER_NO_LIBCALLS __attribute__((optimize("no-tree-loop-distribute-patterns")))
#else
#define EMBER_NO_LIBCALLS
#endif

#endif
