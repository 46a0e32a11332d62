# The C GEMM core (sgemm_kernel.h) and the bias + activation epilogue shared by gemm and conv.
from kernels.activation cimport ACT_IDENTITY, apply_act_span, ember_bias_act_row


cdef extern from "sgemm_kernel.h" nogil:
    ctypedef void (*ember_epilogue_fn)(float *c, long ldc, int m, int n, int row0, int col0,
                                       void *ctx) noexcept nogil
    int ember_sgemm(int trans_a, int trans_b, int M, int N, int K, float alpha,
                    const float *A, long lda, const float *B, long ldb, float beta, float *C,
                    long ldc, ember_epilogue_fn epi, void *ctx, int nthreads)


cdef struct EpilogueCtx:
    const float *bias    # NULL for none
    int bias_axis        # 0: one per row of C, 1: one per column
    int act
    float act_a
    float act_b


cdef inline void bias_act_epilogue(float *c, long ldc, int m, int n, int row0, int col0,
                                   void *ctx) noexcept nogil:
    """Runs on each finished m x n tile of C while it is still in L1: a row's bias and its
    activation in one vector pass where the code has a vector form (Relu and Clip: every conv
    of a ResNet or a MobileNet), else the bias, then the table."""
    cdef EpilogueCtx *e = <EpilogueCtx *> ctx
    cdef int i, j
    cdef float *row
    for i in range(m):
        row = c + i * ldc
        if e.bias != NULL and e.bias_axis == 0:
            if ember_bias_act_row(row, n, e.bias[row0 + i], e.act, e.act_a, e.act_b):
                continue
        elif e.bias != NULL:
            for j in range(n):
                row[j] += e.bias[col0 + j]
        apply_act_span(row, n, e.act, e.act_a, e.act_b)


cdef inline ember_epilogue_fn epilogue_for(EpilogueCtx *e) noexcept nogil:
    """NULL when there is nothing to do after the product (saves a call per tile)."""
    if e.bias == NULL and e.act == ACT_IDENTITY:
        return NULL
    return bias_act_epilogue
