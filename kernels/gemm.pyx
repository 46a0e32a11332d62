"""Y = act(alpha·op(A)·op(B) + beta·Y + bias): the packed, blocked GEMM of sgemm_kernel.h."""
from kernels.sgemm cimport ember_sgemm, ember_bias_act, epilogue_for
from kernels.simd cimport use_simd

use_simd()


def gemm(float[:, ::1] A, float[:, ::1] B, float[:, ::1] Y, bint trans_a, bint trans_b,
         float alpha, float beta, bias, int bias_axis, int act, float act_a, float act_b,
         int nthreads):
    cdef int M = Y.shape[0]
    cdef int N = Y.shape[1]
    cdef int K = A.shape[0] if trans_a else A.shape[1]
    cdef float[::1] bias_view
    cdef ember_bias_act ctx
    cdef int ok
    ctx.bias = NULL
    if bias is not None:
        bias_view = bias
        if bias_view.shape[0] > 0:
            ctx.bias = &bias_view[0]
    ctx.bias_axis = bias_axis
    ctx.act = act
    ctx.act_a = act_a
    ctx.act_b = act_b
    if M == 0 or N == 0:
        return
    cdef const float *a_ptr = &A[0, 0] if A.shape[0] * A.shape[1] > 0 else NULL
    cdef const float *b_ptr = &B[0, 0] if B.shape[0] * B.shape[1] > 0 else NULL
    cdef const ember_bias_act *epi = epilogue_for(&ctx)
    with nogil:
        ok = ember_sgemm(trans_a, trans_b, M, N, K, alpha, a_ptr, A.shape[1], b_ptr, B.shape[1],
                         beta, &Y[0, 0], Y.shape[1], epi, nthreads)
    if not ok:
        raise MemoryError("ember gemm: cannot allocate packing buffers")
