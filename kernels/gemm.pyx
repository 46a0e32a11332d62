"""Y = act(alpha·op(A)·op(B) + beta·Y + bias): the packed, blocked GEMM of sgemm_kernel.h."""
from cpython.pycapsule cimport PyCapsule_New

from kernels.native_step cimport ember_native_step, EMBER_NATIVE_CAPSULE
from kernels.sgemm cimport ember_sgemm, ember_bias_act, epilogue_for
from kernels.simd cimport use_simd

use_simd()


# One gemm call with its arguments resolved (see GemmStep).
cdef struct GemmCall:
    bint trans_a, trans_b
    int M, N, K
    float alpha, beta
    const float *a
    const float *b
    float *y
    long lda, ldb, ldy
    ember_bias_act epi
    int nthreads
    bint empty


cdef int gemm_run(GemmCall *c) noexcept nogil:
    """The product, GIL-free: 0, or 1 when the packing buffers cannot be allocated."""
    if c.empty:
        return 0
    return 0 if ember_sgemm(c.trans_a, c.trans_b, c.M, c.N, c.K, c.alpha, c.a, c.lda, c.b,
                            c.ldb, c.beta, c.y, c.ldy, epilogue_for(&c.epi), c.nthreads) else 1


cdef int gemm_native(void *state) noexcept nogil:
    return gemm_run(<GemmCall *> state)


cdef class GemmStep:
    """gemm with its arguments resolved once (bind time): calling it, or running it inside a
    ``plan.PlanRunner`` with no Python in between. Holds its arrays."""
    cdef GemmCall call
    cdef ember_native_step native
    cdef object keep

    def __init__(self, float[:, ::1] A, float[:, ::1] B, float[:, ::1] Y, bint trans_a,
                 bint trans_b, float alpha, float beta, bias, int bias_axis, int act,
                 float act_a, float act_b, int nthreads):
        cdef GemmCall *c = &self.call
        cdef float[::1] bias_view
        c.trans_a, c.trans_b, c.alpha, c.beta, c.nthreads = trans_a, trans_b, alpha, beta, nthreads
        c.M, c.N = Y.shape[0], Y.shape[1]
        c.K = A.shape[0] if trans_a else A.shape[1]
        c.epi.bias = NULL
        if bias is not None:
            bias_view = bias
            if bias_view.shape[0] > 0:
                c.epi.bias = &bias_view[0]
        c.epi.bias_axis, c.epi.act, c.epi.act_a, c.epi.act_b = bias_axis, act, act_a, act_b
        c.empty = c.M == 0 or c.N == 0
        c.a = &A[0, 0] if A.shape[0] * A.shape[1] > 0 else NULL
        c.b = &B[0, 0] if B.shape[0] * B.shape[1] > 0 else NULL
        c.y = &Y[0, 0] if not c.empty else NULL
        c.lda, c.ldb, c.ldy = A.shape[1], B.shape[1], Y.shape[1]
        self.keep = (A, B, Y, bias)
        self.native.fn = gemm_native
        self.native.state = &self.call

    def __call__(self):
        cdef int rc
        with nogil:
            rc = gemm_run(&self.call)
        if rc:
            self.raise_for(rc)

    def raise_for(self, int rc):
        raise MemoryError("ember gemm: cannot allocate packing buffers")

    @property
    def _native(self):
        """A capsule holding the step's C entry point, for plan.PlanRunner."""
        return PyCapsule_New(&self.native, EMBER_NATIVE_CAPSULE, NULL)


def gemm(A, B, Y, bint trans_a, bint trans_b, float alpha, float beta, bias, int bias_axis,
         int act, float act_a, float act_b, int nthreads):
    GemmStep(A, B, Y, trans_a, trans_b, alpha, beta, bias, bias_axis, act, act_a, act_b,
             nthreads)()
