# The per-element kernels (kernels/elementwise_kernel.h, one instance per instruction set)
# through the dispatch table (simd.h; a module using these calls simd.use_simd() at import).
from libc.stdint cimport uint8_t, uint32_t


cdef extern from "simd.h" nogil:
    cdef enum ember_binary_op:
        OP_ADD "EMBER_OP_ADD"
        OP_SUB "EMBER_OP_SUB"
        OP_MUL "EMBER_OP_MUL"
        OP_DIV "EMBER_OP_DIV"
        OP_MAX "EMBER_OP_MAX"
        OP_MIN "EMBER_OP_MIN"
        OP_POW "EMBER_OP_POW"
        OP_PRELU "EMBER_OP_PRELU"
    void ember_act_unary(const float *x, float *y, long n, int code, float a, float b)
    void ember_binary_span(const float *a, long sa, const float *b, long sb, float *y, long n,
                           int op)
    void ember_act_grad_span(const float *g, const float *t, float *dx, long n, int code,
                             float a, float b)
    void ember_dropout_span(const float *x, float *y, uint8_t *mask, long first, long n,
                            uint32_t k1, uint32_t k2, uint32_t threshold, float scale)
    void ember_softmax_line(const float *x, float *y, long n, long stride, int log)
    void ember_softmax_grad_line(const float *g, const float *y, float *dx, long n, long stride,
                                 int log)
    void ember_sgd_span(float *p, const float *g, float *buf, long n, float lr, float mu,
                        float damp1, float wd, int nesterov, int first)
    void ember_rmsprop_span(float *p, const float *g, float *sq, float *gavg, float *buf, long n,
                            float lr, float alpha, float one_m_alpha, float eps, float wd,
                            float mu)
    void ember_adam_span(float *p, const float *g, float *m, float *v, long n, float step_size,
                         float one_m_beta1, float beta2, float one_m_beta2, float eps,
                         float bc2_sqrt, float wd, float decay)
    void ember_axpy_span(float *y, const float *x, long n, float alpha)
