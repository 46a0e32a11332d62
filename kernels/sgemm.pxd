# The GEMM core (kernels/sgemm_kernel.h, one instance per instruction set) through the dispatch
# table (simd.h; a module using these calls simd.use_simd() at import), and its epilogue.
from kernels.activation cimport ACT_IDENTITY


cdef extern from "simd.h" nogil:
    ctypedef struct ember_bias_act:
        const float *bias    # NULL for none
        int bias_axis        # 0: one per row of C, 1: one per column
        int act
        float act_a
        float act_b
    ctypedef struct ember_im2col_src:
        const float *x
        int H, W, KH, KW, OW
        int sh, sw, pt, pl, dh, dw
    int ember_sgemm(int trans_a, int trans_b, int M, int N, int K, float alpha,
                    const float *A, long lda, const float *B, long ldb, float beta, float *C,
                    long ldc, const ember_bias_act *epi, int nthreads)
    int ember_sgemm_im2col(int M, int N, int K, const float *A, long lda, float beta, float *C,
                           long ldc, const ember_bias_act *epi, int nthreads,
                           const ember_im2col_src *src)
    void ember_packed_gemm(const float *U, const float *V, float *Mx, int Mp, int C, int ncols,
                           long ldc)
    int ember_sgemm_packed_a(int M, int N, int K, const float *Ap, const float *B, long ldb,
                             float *C, long ldc, const ember_bias_act *epi, int nthreads)
    void ember_packed_gemm_strided(const float *U, const float *V, long ldv, float *Mx, int Mp,
                                   int C, int ncols, long ldc)
    void ember_packed_gemm_sliced(const float *U, const float *V, long ldv, int j0, float *Mx,
                                  int rows, int K, int ncols, long ldc)
    int ember_gemm_mr()
    int ember_gemm_kc()
    int ember_gemm_nr()


cdef inline const ember_bias_act *epilogue_for(ember_bias_act *e) noexcept nogil:
    """NULL when there is nothing to do after the product (saves a pass per tile)."""
    if e.bias == NULL and e.act == ACT_IDENTITY:
        return NULL
    return e
