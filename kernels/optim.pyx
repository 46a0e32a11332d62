"""Optimizer update kernels: one fused pass per optimizer over a flat float32 parameter buffer,
its gradient and its state buffers, updated in place.

The per-element arithmetic follows torch.optim's single-tensor code (float32 throughout, the
scalar hyper-parameters rounded to float32 once): the result of one call is bit-identical
whether it runs on one thread or many, and on every instruction set (elementwise work, no FMA
contraction: the loops are kernels/elementwise_kernel.h's). Small buffers (below
SERIAL_THRESHOLD elements) run on one thread: a parallel region costs more than it saves there
(kernels/parallel.pxd). Nothing is allocated; the gradient is only read.
"""
from cython.parallel cimport prange
from libc.math cimport pow, sqrt

from kernels.elementwise_simd cimport (ember_sgd_span, ember_rmsprop_span, ember_adam_span,
                                       ember_axpy_span)
from kernels.parallel cimport threads_for, PARALLEL_MIN_WORK
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


# ---- SGD ---------------------------------------------------------------------------------------
def sgd(float[::1] p not None, float[::1] g not None, float[::1] buf, double lr,
        double momentum, double dampening, double weight_decay, bint nesterov, bint first_step,
        int nthreads):
    """torch SGD: d = g + wd·p; with momentum (``buf`` not None) buf = g on the first step, else
    buf = μ·buf + (1 − dampening)·d; d = d + μ·buf (nesterov) or buf; p −= lr·d."""
    cdef long n = p.shape[0], c, nchunks = (n + CHUNK - 1) // CHUNK, off
    _check_len("gradient", g, n)
    _check_len("momentum buffer", buf, n)
    if n == 0:
        return
    cdef float *pp = &p[0]
    cdef const float *gp = &g[0]
    cdef float *bp = _ptr(buf) if momentum != 0.0 else NULL
    if momentum != 0.0 and bp == NULL:
        raise ValueError("sgd with momentum needs a momentum buffer")
    cdef float lr_f = <float>lr, mu = <float>momentum, wd = <float>weight_decay
    cdef float damp1 = <float>(1.0 - dampening)
    with nogil:
        if threads_for(nthreads, n) == 1:
            ember_sgd_span(pp, gp, bp, n, lr_f, mu, damp1, wd, nesterov, first_step)
        else:
            for c in prange(nchunks, num_threads=nthreads, schedule='static'):
                off = c * CHUNK
                ember_sgd_span(pp + off, gp + off, _at(bp, off), min(CHUNK, n - off), lr_f,
                               mu, damp1, wd, nesterov, first_step)


# ---- RMSprop -----------------------------------------------------------------------------------
def rmsprop(float[::1] p not None, float[::1] g not None, float[::1] square_avg not None,
            float[::1] grad_avg, float[::1] momentum_buffer, double lr, double alpha, double eps,
            double weight_decay, double momentum, int nthreads):
    """torch RMSprop: d = g + wd·p; s = α·s + (1 − α)·d²; centered (``grad_avg`` not None):
    ḡ = lerp(ḡ, d, 1 − α), s̃ = s − ḡ²; avg = √s̃ + ε; with momentum (``momentum_buffer`` not
    None and μ > 0) b = μ·b + d/avg, p −= lr·b; else p −= lr·d/avg."""
    cdef long n = p.shape[0], c, nchunks = (n + CHUNK - 1) // CHUNK, off
    _check_len("gradient", g, n)
    _check_len("square_avg", square_avg, n)
    _check_len("grad_avg", grad_avg, n)
    _check_len("momentum buffer", momentum_buffer, n)
    if n == 0:
        return
    cdef float *pp = &p[0]
    cdef const float *gp = &g[0]
    cdef float *sp = &square_avg[0]
    cdef float *ap = _ptr(grad_avg)
    cdef float *bp = _ptr(momentum_buffer) if momentum > 0.0 else NULL
    if momentum > 0.0 and bp == NULL:
        raise ValueError("rmsprop with momentum needs a momentum buffer")
    cdef float lr_f = <float>lr, alpha_f = <float>alpha, one_m_alpha = <float>(1.0 - alpha)
    cdef float eps_f = <float>eps, wd = <float>weight_decay, mu = <float>momentum
    with nogil:
        if threads_for(nthreads, n) == 1:
            ember_rmsprop_span(pp, gp, sp, ap, bp, n, lr_f, alpha_f, one_m_alpha, eps_f, wd, mu)
        else:
            for c in prange(nchunks, num_threads=nthreads, schedule='static'):
                off = c * CHUNK
                ember_rmsprop_span(pp + off, gp + off, sp + off, _at(ap, off), _at(bp, off),
                                   min(CHUNK, n - off), lr_f, alpha_f, one_m_alpha, eps_f, wd,
                                   mu)


# ---- Adam / AdamW ------------------------------------------------------------------------------
def adam(float[::1] p not None, float[::1] g not None, float[::1] exp_avg not None,
         float[::1] exp_avg_sq not None, double lr, double beta1, double beta2, double eps,
         double weight_decay, bint decoupled, long step, int nthreads):
    """torch Adam (``decoupled`` False: d = g + wd·p) or AdamW (``decoupled`` True: p *= 1 −
    lr·wd before the update); m = lerp(m, d, 1 − β1); v = β2·v + (1 − β2)·d²;
    p −= lr/(1 − β1ᵗ) · m / (√v/√(1 − β2ᵗ) + ε), with ε outside the root. ``step`` is t ≥ 1,
    the number of this update; the bias corrections are computed in double, as torch does."""
    cdef long n = p.shape[0], c, nchunks = (n + CHUNK - 1) // CHUNK, off
    _check_len("gradient", g, n)
    _check_len("exp_avg", exp_avg, n)
    _check_len("exp_avg_sq", exp_avg_sq, n)
    if step < 1:
        raise ValueError(f"adam step must be >= 1, got {step}")
    if n == 0:
        return
    cdef double bc1 = 1.0 - pow(beta1, <double>step)
    cdef double bc2 = 1.0 - pow(beta2, <double>step)
    cdef float step_size = <float>(lr / bc1)
    cdef float bc2_sqrt = <float>sqrt(bc2)
    cdef float decay = <float>(1.0 - lr * weight_decay) if decoupled else 1.0
    cdef float wd = 0.0 if decoupled else <float>weight_decay
    cdef float one_m_beta1 = <float>(1.0 - beta1), beta2_f = <float>beta2
    cdef float one_m_beta2 = <float>(1.0 - beta2), eps_f = <float>eps
    cdef float *pp = &p[0]
    cdef const float *gp = &g[0]
    cdef float *mp = &exp_avg[0]
    cdef float *vp = &exp_avg_sq[0]
    with nogil:
        if threads_for(nthreads, n) == 1:
            ember_adam_span(pp, gp, mp, vp, n, step_size, one_m_beta1, beta2_f, one_m_beta2,
                            eps_f, bc2_sqrt, wd, decay)
        else:
            for c in prange(nchunks, num_threads=nthreads, schedule='static'):
                off = c * CHUNK
                ember_adam_span(pp + off, gp + off, mp + off, vp + off, min(CHUNK, n - off),
                                step_size, one_m_beta1, beta2_f, one_m_beta2, eps_f, bc2_sqrt,
                                wd, decay)


# ---- axpy --------------------------------------------------------------------------------------
def axpy(float[::1] y not None, float[::1] x not None, float alpha, int nthreads):
    """y += alpha·x (gradient accumulation, decoupled decay, L2 terms)."""
    cdef long n = y.shape[0], c, nchunks = (n + CHUNK - 1) // CHUNK, off
    _check_len("x", x, n)
    if n == 0:
        return
    cdef float *yp = &y[0]
    cdef const float *xp = &x[0]
    with nogil:
        if threads_for(nthreads, n) == 1:
            ember_axpy_span(yp, xp, n, alpha)
        else:
            for c in prange(nchunks, num_threads=nthreads, schedule='static'):
                off = c * CHUNK
                ember_axpy_span(yp + off, xp + off, min(CHUNK, n - off), alpha)
