"""Softmax / LogSoftmax gradients and the softmax cross-entropy loss with its gradient."""
from cython.parallel cimport prange
from libc.math cimport NAN
from libc.stdint cimport int64_t

from kernels.activation cimport ACT_EXP
from kernels.elementwise_simd cimport (ember_act_unary, ember_softmax_grad_line,
                                       ember_softmax_line)
from kernels.parallel cimport threads_for
from kernels.simd cimport use_simd

use_simd()


def softmax_grad(float[:, :, ::1] dy, float[:, :, ::1] y, float[:, :, ::1] dx, bint log,
                 int nthreads):
    """Gradient of softmax (or log-softmax) along the middle axis of (outer, n, inner)."""
    cdef long O = y.shape[0], n = y.shape[1], I = y.shape[2], line, o, j
    if O * n * I == 0:
        return
    cdef const float *gp = &dy[0, 0, 0]
    cdef const float *yp = &y[0, 0, 0]
    cdef float *dxp = &dx[0, 0, 0]
    with nogil:
        for line in prange(O * I, num_threads=threads_for(nthreads, O * n * I),
                           schedule='static'):
            o = line // I
            j = line % I
            ember_softmax_grad_line(gp + o * n * I + j, yp + o * n * I + j, dxp + o * n * I + j,
                                    n, I, log)


cdef enum Reduction:
    NONE = 0
    SUM = 1
    MEAN = 2

# the same codes for the binder
REDUCTION_NONE, REDUCTION_SUM, REDUCTION_MEAN = NONE, SUM, MEAN


cdef double label_weight(int64_t label, const float *w, int64_t ignore_index,
                         bint has_ignore) noexcept nogil:
    """The weight of one row's term: 0 for an ignored label, w[label] (or 1) otherwise."""
    if has_ignore and label == ignore_index:
        return 0.0
    return w[label] if w != NULL else 1.0


cdef long first_bad_label(const int64_t *labels, long N, long C, int64_t ignore_index,
                          bint has_ignore) noexcept nogil:
    cdef long i
    for i in range(N):
        if (labels[i] < 0 or labels[i] >= C) and not (has_ignore and labels[i] == ignore_index):
            return i
    return -1


def softmax_xent(const float[:, ::1] scores, const int64_t[::1] labels, weights,
                 float[:, ::1] log_prob, float[::1] loss, int reduction, long long ignore_index,
                 bint has_ignore, int nthreads):
    """log_prob = log-softmax of scores (N, C) along C; the loss of row i is −w[l_i]·log_prob[i,
    l_i] (0 when has_ignore and l_i = ignore_index). reduction NONE writes loss (N), SUM their
    sum, MEAN their sum over Σ w[l_i] of the rows not ignored (ONNX; NaN when every label is
    ignored) into loss (1).
    Returns −1, or the first row whose label is outside [0, C) and not ignore_index (nothing is
    written then)."""
    cdef long N = scores.shape[0], C = scores.shape[1], i
    cdef double s, total = 0.0, denom = 0.0, wi
    cdef const float[::1] w_view
    cdef const float *wp = NULL
    cdef int64_t ig = ignore_index
    cdef long bad
    if weights is not None:
        w_view = weights
        wp = &w_view[0] if C > 0 else NULL
    if N == 0:
        if reduction != NONE:
            loss[0] = NAN if reduction == MEAN else 0.0
        return -1
    cdef const int64_t *lp = &labels[0]
    bad = first_bad_label(lp, N, C, ig, has_ignore)
    if bad >= 0 or C == 0:
        return bad
    cdef const float *sp = &scores[0, 0]
    cdef float *lpp = &log_prob[0, 0]
    with nogil:
        for i in prange(N, num_threads=threads_for(nthreads, N * C * 8), schedule='static'):
            ember_softmax_line(sp + i * C, lpp + i * C, C, 1, True)
        for i in range(N):
            wi = label_weight(lp[i], wp, ig, has_ignore)
            s = -wi * lpp[i * C + lp[i]] if wi != 0.0 else 0.0
            if reduction == NONE:
                loss[i] = <float> s
            total = total + s
            denom = denom + wi
    if reduction == SUM:
        loss[0] = <float> total
    elif reduction == MEAN:
        loss[0] = <float> (total / denom) if denom != 0.0 else NAN
    return -1


def softmax_xent_grad(const float[::1] dloss, const float[:, ::1] log_prob,
                      const int64_t[::1] labels, weights, float[:, ::1] dscores, int reduction,
                      long long ignore_index, bint has_ignore, int nthreads):
    """dscores[i, c] = coef_i·(exp(log_prob[i, c]) − [c = l_i]), coef_i = w[l_i]·dloss (over
    Σ w of the rows not ignored for MEAN; dloss[i] per row for NONE), 0 for an ignored row.
    Returns −1, or the first row with a bad label (nothing written)."""
    cdef long N = log_prob.shape[0], C = log_prob.shape[1], i, k
    cdef double denom = 0.0, scale, wi
    cdef float coef
    cdef const float *row
    cdef float *out
    cdef const float[::1] w_view
    cdef const float *wp = NULL
    cdef int64_t ig = ignore_index
    cdef long bad
    if N == 0 or C == 0:
        return -1
    if weights is not None:
        w_view = weights
        wp = &w_view[0]
    cdef const int64_t *lp = &labels[0]
    bad = first_bad_label(lp, N, C, ig, has_ignore)
    if bad >= 0:
        return bad
    cdef const float *gp = &dloss[0]
    cdef const float *lpp = &log_prob[0, 0]
    cdef float *dp = &dscores[0, 0]
    if reduction == MEAN:
        for i in range(N):
            denom = denom + label_weight(lp[i], wp, ig, has_ignore)
        scale = gp[0] / denom if denom != 0.0 else NAN
    else:
        scale = gp[0]
    with nogil:
        for i in prange(N, num_threads=threads_for(nthreads, N * C * 4), schedule='static'):
            out = dp + i * C
            row = lpp + i * C
            wi = label_weight(lp[i], wp, ig, has_ignore)
            coef = <float> (wi * (gp[i] if reduction == NONE else scale)) if wi != 0.0 else 0.0
            if wi == 0.0:
                for k in range(C):
                    out[k] = 0.0
            else:
                ember_act_unary(row, out, C, ACT_EXP, 0.0, 0.0)
                for k in range(C):
                    out[k] = coef * out[k]
                out[lp[i]] = out[lp[i]] - coef
    return -1
