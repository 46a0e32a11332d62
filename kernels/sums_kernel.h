/* Template (compiled once per instruction set, see simd_instance.h): per-row sums for the
 * normalisations and the gradient reductions, reached through the sums table of simd.h
 * (ember_sum, ember_moment_sums, ember_row_inv_std).
 *
 * Vectorised without -ffast-math: EMBER_SUM_LANES independent float lanes (two registers of the
 * level: 8, 16 or 32; each lane is its own sequential sum, so nothing is reassociated), flushed
 * into double every EMBER_SUM_BLOCK elements so float rounding never builds up over a long row.
 * Values are shifted by a caller-chosen `shift` (≈ the mean) before squaring, so a variance
 * E[(x−s)²] − E[x−s]² does not cancel catastrophically. */
#define EMBER_SUM_BLOCK 512
#define EMBER_SUM_LANES (2 * EMBER_VW)

/* EMBER_SUM_LANES float lanes as two registers of the level (a wider vector type would be split
 * by the compiler through memory) */
typedef struct {
    ember_vf lo, hi;
} ember_sum_lanes;

static inline ember_sum_lanes ember_lanes_load(const float *p)
{
    return (ember_sum_lanes){ember_vload(p), ember_vload(p + EMBER_VW)};
}

static inline double ember_lanes_flush(ember_sum_lanes v)
{
    double t = 0.0;
    for (int l = 0; l < EMBER_VW; ++l) t += v.lo[l];
    for (int l = 0; l < EMBER_VW; ++l) t += v.hi[l];
    return t;
}

/* Σ p[i] */
static double ember_sum_here(const float *p, long n)
{
    double total = 0.0;
    for (long b = 0; b < n; b += EMBER_SUM_BLOCK) {
        const long m = n - b < EMBER_SUM_BLOCK ? n - b : EMBER_SUM_BLOCK;
        const float *q = p + b;
        ember_sum_lanes acc = {{0}, {0}};
        long k = 0;
        for (; k + EMBER_SUM_LANES <= m; k += EMBER_SUM_LANES) {
            const ember_sum_lanes v = ember_lanes_load(q + k);
            acc.lo += v.lo;
            acc.hi += v.hi;
        }
        float tail = 0.0f;
        for (; k < m; ++k) tail += q[k];
        total += ember_lanes_flush(acc) + tail;
    }
    return total;
}

/* s[0] += Σ d, s[1] += Σ d², d = x − shift; with g (else NULL): s[2] += Σ g, s[3] += Σ g·d. */
static void ember_moment_sums_here(const float *x, const float *g, long n, float shift,
                                   double *s)
{
    const ember_vf sh = ember_vsplat(shift);
    for (long b = 0; b < n; b += EMBER_SUM_BLOCK) {
        const long m = n - b < EMBER_SUM_BLOCK ? n - b : EMBER_SUM_BLOCK;
        const float *xq = x + b;
        ember_sum_lanes a1 = {{0}, {0}}, a2 = {{0}, {0}}, a3 = {{0}, {0}}, a4 = {{0}, {0}};
        float t1 = 0.0f, t2 = 0.0f, t3 = 0.0f, t4 = 0.0f;
        long k = 0;
        if (g) {
            const float *gq = g + b;
            for (; k + EMBER_SUM_LANES <= m; k += EMBER_SUM_LANES) {
                const ember_sum_lanes xv = ember_lanes_load(xq + k), gv = ember_lanes_load(gq + k);
                const ember_vf dlo = xv.lo - sh, dhi = xv.hi - sh;
                a1.lo += dlo;         a1.hi += dhi;
                a2.lo += dlo * dlo;   a2.hi += dhi * dhi;
                a3.lo += gv.lo;       a3.hi += gv.hi;
                a4.lo += gv.lo * dlo; a4.hi += gv.hi * dhi;
            }
            for (; k < m; ++k) {
                const float d = xq[k] - shift, gv = gq[k];
                t1 += d; t2 += d * d; t3 += gv; t4 += gv * d;
            }
        } else {
            for (; k + EMBER_SUM_LANES <= m; k += EMBER_SUM_LANES) {
                const ember_sum_lanes xv = ember_lanes_load(xq + k);
                const ember_vf dlo = xv.lo - sh, dhi = xv.hi - sh;
                a1.lo += dlo;         a1.hi += dhi;
                a2.lo += dlo * dlo;   a2.hi += dhi * dhi;
            }
            for (; k < m; ++k) {
                const float d = xq[k] - shift;
                t1 += d; t2 += d * d;
            }
        }
        s[0] += ember_lanes_flush(a1) + t1;
        s[1] += ember_lanes_flush(a2) + t2;
        s[2] += ember_lanes_flush(a3) + t3;
        s[3] += ember_lanes_flush(a4) + t4;
    }
}

/* One row's statistics for LayerNormalization's forward and gradient kernels: returns
 * 1/√(var + eps) (population variance) of n ≥ 1 floats and sets *centred = mean − x[0], from one
 * pass of sums shifted by x[0]. */
static double ember_row_inv_std_here(const float *x, long n, double eps, double *centred)
{
    double s[4] = {0.0, 0.0, 0.0, 0.0};
    ember_moment_sums_here(x, NULL, n, x[0], s);
    const double m = s[0] / n;
    double var = s[1] / n - m * m;
    if (var < 0.0) var = 0.0;
    *centred = m;
    return 1.0 / sqrt(var + eps);
}

static const struct ember_sums_kernels ember_sums_here = {
    .sum = ember_sum_here,
    .moment_sums = ember_moment_sums_here,
    .row_inv_std = ember_row_inv_std_here,
};
