"""Optimizer update kernels: one fused pass per optimizer over a flat float32 parameter buffer,
its gradient and its state buffers, updated in place.

The per-element arithmetic follows torch.optim's single-tensor code (float32 throughout, the
scalar hyper-parameters rounded to float32 once): the result of one call is bit-identical
whether it runs on one thread or many, and on every instruction set (elementwise work, no FMA
contraction: the loops are kernels/elementwise_kernel.h's). Small buffers (below
SERIAL_THRESHOLD elements) run on one thread: a parallel region costs more than it saves there
(kernels/parallel.pxd). Nothing is allocated; the gradient is only read.
"""
from libc.math cimport pow, sqrt

from kernels.elementwise_simd cimport (ember_sgd_span, ember_rmsprop_span, ember_adam_span,
                                       ember_axpy_span)
from kernels.parallel cimport threads_for, ember_parallel, PARALLEL_MIN_WORK
from kernels.simd cimport use_simd

use_simd()

cdef enum:
    CHUNK = 16384           # elements per parallel work item

SERIAL_THRESHOLD = PARALLEL_MIN_WORK   # below this many elements one thread does the update


cdef inline float *_at(float *ptr, long off) noexcept nogil:
    """``ptr + off``, or NULL for an absent (NULL) state buffer."""
    return NULL if ptr == NULL else ptr + off


cdef inline float *_ptr(float[::1] a):
    return NULL if a is None or a.shape[0] == 0 else &a[0]


cdef int _check_len(str what, float[::1] a, long n) except -1:
    if a is not None and a.shape[0] != n:
        raise ValueError(f"{what} has {a.shape[0]} elements, the parameter has {n}")
    return 0


cdef inline long chunk_len(long c, long n) noexcept nogil:
    """Elements in chunk c of an n-element buffer (the last chunk may be short)."""
    return min(CHUNK, n - c * CHUNK)


# ---- SGD ---------------------------------------------------------------------------------------
cdef struct SgdJob:
    float *p
    const float *g
    float *buf
    long n
    float lr, mu, damp1, wd
    int nesterov, first_step


cdef inline void sgd_span(const SgdJob *j, long off, long count) noexcept nogil:
    ember_sgd_span(j.p + off, j.g + off, _at(j.buf, off), count, j.lr, j.mu, j.damp1, j.wd,
                   j.nesterov, j.first_step)


cdef void sgd_chunk_task(void *ctx, long c, int worker) noexcept nogil:
    cdef const SgdJob *j = <const SgdJob *> ctx
    sgd_span(j, c * CHUNK, chunk_len(c, j.n))


def sgd(float[::1] p not None, float[::1] g not None, float[::1] buf, double lr,
        double momentum, double dampening, double weight_decay, bint nesterov, bint first_step,
        int nthreads):
    """torch SGD: d = g + wd·p; with momentum (``buf`` not None) buf = g on the first step, else
    buf = μ·buf + (1 − dampening)·d; d = d + μ·buf (nesterov) or buf; p −= lr·d."""
    cdef long n = p.shape[0]
    cdef SgdJob j
    _check_len("gradient", g, n)
    _check_len("momentum buffer", buf, n)
    if n == 0:
        return
    j.p = &p[0]
    j.g = &g[0]
    j.buf = _ptr(buf) if momentum != 0.0 else NULL
    if momentum != 0.0 and j.buf == NULL:
        raise ValueError("sgd with momentum needs a momentum buffer")
    j.n = n
    j.lr, j.mu, j.wd = <float>lr, <float>momentum, <float>weight_decay
    j.damp1 = <float>(1.0 - dampening)
    j.nesterov, j.first_step = nesterov, first_step
    with nogil:
        if threads_for(nthreads, n) == 1:
            sgd_span(&j, 0, n)
        else:
            ember_parallel(nthreads, (n + CHUNK - 1) // CHUNK, sgd_chunk_task, &j)


# ---- RMSprop -----------------------------------------------------------------------------------
cdef struct RmspropJob:
    float *p
    const float *g
    float *square_avg
    float *grad_avg
    float *buf
    long n
    float lr, alpha, one_m_alpha, eps, wd, mu


cdef inline void rmsprop_span(const RmspropJob *j, long off, long count) noexcept nogil:
    ember_rmsprop_span(j.p + off, j.g + off, j.square_avg + off, _at(j.grad_avg, off),
                       _at(j.buf, off), count, j.lr, j.alpha, j.one_m_alpha, j.eps, j.wd, j.mu)


cdef void rmsprop_chunk_task(void *ctx, long c, int worker) noexcept nogil:
    cdef const RmspropJob *j = <const RmspropJob *> ctx
    rmsprop_span(j, c * CHUNK, chunk_len(c, j.n))


def rmsprop(float[::1] p not None, float[::1] g not None, float[::1] square_avg not None,
            float[::1] grad_avg, float[::1] momentum_buffer, double lr, double alpha, double eps,
            double weight_decay, double momentum, int nthreads):
    """torch RMSprop: d = g + wd·p; s = α·s + (1 − α)·d²; centered (``grad_avg`` not None):
    ḡ = lerp(ḡ, d, 1 − α), s̃ = s − ḡ²; avg = √s̃ + ε; with momentum (``momentum_buffer`` not
    None and μ > 0) b = μ·b + d/avg, p −= lr·b; else p −= lr·d/avg."""
    cdef long n = p.shape[0]
    cdef RmspropJob j
    _check_len("gradient", g, n)
    _check_len("square_avg", square_avg, n)
    _check_len("grad_avg", grad_avg, n)
    _check_len("momentum buffer", momentum_buffer, n)
    if n == 0:
        return
    j.p = &p[0]
    j.g = &g[0]
    j.square_avg = &square_avg[0]
    j.grad_avg = _ptr(grad_avg)
    j.buf = _ptr(momentum_buffer) if momentum > 0.0 else NULL
    if momentum > 0.0 and j.buf == NULL:
        raise ValueError("rmsprop with momentum needs a momentum buffer")
    j.n = n
    j.lr, j.alpha, j.one_m_alpha = <float>lr, <float>alpha, <float>(1.0 - alpha)
    j.eps, j.wd, j.mu = <float>eps, <float>weight_decay, <float>momentum
    with nogil:
        if threads_for(nthreads, n) == 1:
            rmsprop_span(&j, 0, n)
        else:
            ember_parallel(nthreads, (n + CHUNK - 1) // CHUNK, rmsprop_chunk_task, &j)


# ---- Adam / AdamW ------------------------------------------------------------------------------
cdef struct AdamJob:
    float *p
    const float *g
    float *exp_avg
    float *exp_avg_sq
    long n
    float step_size, one_m_beta1, beta2, one_m_beta2, eps, bc2_sqrt, wd, decay


cdef inline void adam_span(const AdamJob *j, long off, long count) noexcept nogil:
    ember_adam_span(j.p + off, j.g + off, j.exp_avg + off, j.exp_avg_sq + off, count,
                    j.step_size, j.one_m_beta1, j.beta2, j.one_m_beta2, j.eps, j.bc2_sqrt, j.wd,
                    j.decay)


cdef void adam_chunk_task(void *ctx, long c, int worker) noexcept nogil:
    cdef const AdamJob *j = <const AdamJob *> ctx
    adam_span(j, c * CHUNK, chunk_len(c, j.n))


def adam(float[::1] p not None, float[::1] g not None, float[::1] exp_avg not None,
         float[::1] exp_avg_sq not None, double lr, double beta1, double beta2, double eps,
         double weight_decay, bint decoupled, long step, int nthreads):
    """torch Adam (``decoupled`` False: d = g + wd·p) or AdamW (``decoupled`` True: p *= 1 −
    lr·wd before the update); m = lerp(m, d, 1 − β1); v = β2·v + (1 − β2)·d²;
    p −= lr/(1 − β1ᵗ) · m / (√v/√(1 − β2ᵗ) + ε), with ε outside the root. ``step`` is t ≥ 1,
    the number of this update; the bias corrections are computed in double, as torch does."""
    cdef long n = p.shape[0]
    cdef AdamJob j
    _check_len("gradient", g, n)
    _check_len("exp_avg", exp_avg, n)
    _check_len("exp_avg_sq", exp_avg_sq, n)
    if step < 1:
        raise ValueError(f"adam step must be >= 1, got {step}")
    if n == 0:
        return
    cdef double bc1 = 1.0 - pow(beta1, <double>step)
    cdef double bc2 = 1.0 - pow(beta2, <double>step)
    j.step_size = <float>(lr / bc1)
    j.bc2_sqrt = <float>sqrt(bc2)
    j.decay = <float>(1.0 - lr * weight_decay) if decoupled else 1.0
    j.wd = 0.0 if decoupled else <float>weight_decay
    j.one_m_beta1, j.beta2 = <float>(1.0 - beta1), <float>beta2
    j.one_m_beta2, j.eps = <float>(1.0 - beta2), <float>eps
    j.p = &p[0]
    j.g = &g[0]
    j.exp_avg = &exp_avg[0]
    j.exp_avg_sq = &exp_avg_sq[0]
    j.n = n
    with nogil:
        if threads_for(nthreads, n) == 1:
            adam_span(&j, 0, n)
        else:
            ember_parallel(nthreads, (n + CHUNK - 1) // CHUNK, adam_chunk_task, &j)


# ---- axpy --------------------------------------------------------------------------------------
cdef struct AxpyJob:
    float *y
    const float *x
    long n
    float alpha


cdef void axpy_chunk_task(void *ctx, long c, int worker) noexcept nogil:
    cdef const AxpyJob *j = <const AxpyJob *> ctx
    cdef long off = c * CHUNK
    ember_axpy_span(j.y + off, j.x + off, chunk_len(c, j.n), j.alpha)


def axpy(float[::1] y not None, float[::1] x not None, float alpha, int nthreads):
    """y += alpha·x (gradient accumulation, decoupled decay, L2 terms)."""
    cdef long n = y.shape[0]
    cdef AxpyJob j
    _check_len("x", x, n)
    if n == 0:
        return
    j.y = &y[0]
    j.x = &x[0]
    j.n = n
    j.alpha = alpha
    with nogil:
        if threads_for(nthreads, n) == 1:
            ember_axpy_span(j.y, j.x, n, alpha)
        else:
            ember_parallel(nthreads, (n + CHUNK - 1) // CHUNK, axpy_chunk_task, &j)
