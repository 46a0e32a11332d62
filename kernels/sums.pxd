# The row sums of kernels/sums_kernel.h (one instance per instruction set) through the dispatch
# table (simd.h; a module using these calls simd.use_simd() at import): float lanes flushed into
# double every EMBER_SUM_BLOCK values, nothing reassociated.

cdef extern from "simd.h" nogil:
    # Σ p[i]
    double ember_sum(const float *p, long n)
    # s[0] += Σd, s[1] += Σd², d = x − shift; with g (else NULL): s[2] += Σg, s[3] += Σg·d
    void ember_moment_sums(const float *x, const float *g, long n, float shift, double *s)
    # 1/√(var + eps) of n ≥ 1 floats (population variance); *centred = mean − x[0]
    double ember_row_inv_std(const float *x, long n, double eps, double *centred)
