/* Row primitives for max pooling and its gradient, in C so that `restrict` tells the compiler
 * rows never overlap and the selects stay selects: on real data "is this tap bigger" is a coin
 * toss, and a mispredicted branch per tap costs more than the tap, so running maxima (and the
 * gradient's argmax) are updated with masks or blends, never with a jump. */
#ifndef EMBER_POOL_ROWS_H
#define EMBER_POOL_ROWS_H

#include <stdint.h>
#include <string.h>

/* max that lets a NaN through, as a select. The quiet comparison builtins never trap, so the
 * compiler may evaluate them unconditionally (no branch). */
static inline float ember_nan_max(float m, float v)
{
    return (__builtin_isgreater(v, m) | __builtin_isunordered(v, v)) ? v : m;
}

/* y[i] = max(y[i], r[i*stride]) for i < n; a NaN in either wins. */
static inline void ember_max_row(float *restrict y, const float *restrict r, long n, long stride)
{
    if (stride == 1) {
        for (long i = 0; i < n; ++i) y[i] = ember_nan_max(y[i], r[i]);
    } else if (stride == 2) {
        for (long i = 0; i < n; ++i) y[i] = ember_nan_max(y[i], r[2 * i]);
    } else {
        for (long i = 0; i < n; ++i) y[i] = ember_nan_max(y[i], r[i * stride]);
    }
}

/* 1 when v replaces the running maximum m: v > m, or v is the first NaN. */
static inline int ember_takes(float v, float m)
{
    return __builtin_isgreater(v, m) | (__builtin_isunordered(v, v) & !__builtin_isunordered(m, m));
}

/* Offset (in x) of the first maximum of the window whose taps are rows h0 + i*dh, i in
 * [ilo, ihi), columns w0 + j*dw, j in [jlo, jhi), in row-major order; a NaN beats any number
 * and the first NaN stays. The window must hold at least one tap. */
static inline long ember_window_argmax(const float *x, long W, long h0, long dh, long ilo,
                                       long ihi, long w0, long dw, long jlo, long jhi)
{
    long best_at = (h0 + ilo * dh) * W + w0 + jlo * dw;
    float best = x[best_at];
    for (long i = ilo; i < ihi; ++i) {
        const long row = (h0 + i * dh) * W + w0;
        for (long j = jlo; j < jhi; ++j) {
            const long at = row + j * dw;
            const float v = x[at];
            const int take = ember_takes(v, best);
            const long keep_at = -(long)take;          /* all ones when v takes over */
            uint32_t vb, bb;
            memcpy(&vb, &v, 4);
            memcpy(&bb, &best, 4);
            bb = (vb & (uint32_t)keep_at) | (bb & ~(uint32_t)keep_at);
            memcpy(&best, &bb, 4);
            best_at = (at & keep_at) | (best_at & ~keep_at);
        }
    }
    return best_at;
}

/* The common 2x2, stride-2 window over n output columns whose windows lie inside rows r0, r1:
 * dY goes to the first maximum of (r0[2j], r0[2j+1], r1[2j], r1[2j+1]) — the first NaN when
 * there is one — and the window's other three gradients are written as 0 (windows do not
 * overlap, so nothing accumulates). Written as masks over the window's maximum so that the
 * compiler vectorises it. The index is a long: with Python's -fwrapv an int 2·j may wrap, and
 * GCC then gives up on the strided accesses. */
static void ember_max2x2_grad_row(const float *restrict r0, const float *restrict r1,
                                  const float *restrict g, float *restrict d0,
                                  float *restrict d1, long n)
{
    for (long j = 0; j < n; ++j) {
        const float a = r0[2 * j], b = r0[2 * j + 1], c = r1[2 * j], d = r1[2 * j + 1];
        const float m = ember_nan_max(ember_nan_max(ember_nan_max(a, b), c), d);
        /* "is the maximum": equal to it, or a NaN (then m is a NaN too) */
        const int ia = (a == m) | __builtin_isunordered(a, a);
        const int ib = (!ia) & ((b == m) | __builtin_isunordered(b, b));
        const int ic = (!ia) & (!ib) & ((c == m) | __builtin_isunordered(c, c));
        const int id = (!ia) & (!ib) & (!ic);
        const float gj = g[j];
        d0[2 * j] = ia ? gj : 0.0f;
        d0[2 * j + 1] = ib ? gj : 0.0f;
        d1[2 * j] = ic ? gj : 0.0f;
        d1[2 * j + 1] = id ? gj : 0.0f;
    }
}
#endif
