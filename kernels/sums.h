/* Per-row sums for the gradient reductions, vectorised without -ffast-math: 8 independent float
 * lanes (GCC/Clang vector extension: AVX on x86 with -march=native, two SSE/NEON halves
 * otherwise; each lane is its own sequential sum, so nothing is reassociated), flushed into
 * double every EMBER_SUM_BLOCK elements so float rounding never builds up over a long row.
 * Values are shifted by a caller-chosen `shift` (≈ the mean) before squaring, so a variance
 * E[(x−s)²] − E[x−s]² does not cancel catastrophically. */
#ifndef EMBER_SUMS_H
#define EMBER_SUMS_H

#include <math.h>
#include <string.h>

#define EMBER_SUM_BLOCK 512

typedef float ember_v8f __attribute__((vector_size(32)));

static inline ember_v8f ember_load8(const float *p)
{
    ember_v8f v;
    memcpy(&v, p, sizeof v);   /* unaligned load */
    return v;
}

static inline double ember_hsum8(ember_v8f v)
{
    double t = 0.0;
    for (int l = 0; l < 8; ++l) t += v[l];
    return t;
}

/* Σ p[i] */
static double ember_sum(const float *p, long n)
{
    double total = 0.0;
    for (long b = 0; b < n; b += EMBER_SUM_BLOCK) {
        const long m = n - b < EMBER_SUM_BLOCK ? n - b : EMBER_SUM_BLOCK;
        const float *q = p + b;
        ember_v8f acc = {0};
        long k = 0;
        for (; k + 8 <= m; k += 8) acc += ember_load8(q + k);
        float tail = 0.0f;
        for (; k < m; ++k) tail += q[k];
        total += ember_hsum8(acc) + tail;
    }
    return total;
}

/* s[0] += Σ d, s[1] += Σ d², d = x − shift; with g (else NULL): s[2] += Σ g, s[3] += Σ g·d. */
static void ember_moment_sums(const float *x, const float *g, long n, float shift, double *s)
{
    const ember_v8f sh = {shift, shift, shift, shift, shift, shift, shift, shift};
    for (long b = 0; b < n; b += EMBER_SUM_BLOCK) {
        const long m = n - b < EMBER_SUM_BLOCK ? n - b : EMBER_SUM_BLOCK;
        const float *xq = x + b;
        ember_v8f a1 = {0}, a2 = {0}, a3 = {0}, a4 = {0};
        float t1 = 0.0f, t2 = 0.0f, t3 = 0.0f, t4 = 0.0f;
        long k = 0;
        if (g) {
            const float *gq = g + b;
            for (; k + 8 <= m; k += 8) {
                const ember_v8f d = ember_load8(xq + k) - sh, gv = ember_load8(gq + k);
                a1 += d;
                a2 += d * d;
                a3 += gv;
                a4 += gv * d;
            }
            for (; k < m; ++k) {
                const float d = xq[k] - shift, gv = gq[k];
                t1 += d; t2 += d * d; t3 += gv; t4 += gv * d;
            }
        } else {
            for (; k + 8 <= m; k += 8) {
                const ember_v8f d = ember_load8(xq + k) - sh;
                a1 += d;
                a2 += d * d;
            }
            for (; k < m; ++k) {
                const float d = xq[k] - shift;
                t1 += d; t2 += d * d;
            }
        }
        s[0] += ember_hsum8(a1) + t1;
        s[1] += ember_hsum8(a2) + t2;
        s[2] += ember_hsum8(a3) + t3;
        s[3] += ember_hsum8(a4) + t4;
    }
}

/* One row's statistics for LayerNormalization's forward and gradient kernels: returns
 * 1/√(var + eps) (population variance) of n ≥ 1 floats and sets *centred = mean − x[0], from one
 * pass of sums shifted by x[0]. */
static inline double ember_row_inv_std(const float *x, long n, double eps, double *centred)
{
    double s[4] = {0.0, 0.0, 0.0, 0.0};
    ember_moment_sums(x, NULL, n, x[0], s);
    const double m = s[0] / n;
    double var = s[1] / n - m * m;
    if (var < 0.0) var = 0.0;
    *centred = m;
    return 1.0 / sqrt(var + eps);
}
#endif
