"""Softmax / LogSoftmax gradients and the softmax cross-entropy loss with its gradient."""
from cpython.pycapsule cimport PyCapsule_New
from libc.math cimport NAN
from libc.stdint cimport int64_t

from kernels.activation cimport ACT_EXP
from kernels.elementwise_simd cimport (ember_act_unary, ember_softmax_grad_line,
                                       ember_softmax_line)
from kernels.native_step cimport ember_native_step, EMBER_NATIVE_CAPSULE
from kernels.parallel cimport threads_for, ember_parallel
from kernels.simd cimport use_simd

use_simd()


cdef struct SoftmaxGradJob:
    const float *dy
    const float *y
    float *dx
    long n, inner
    int log


cdef void softmax_grad_line_task(void *ctx, long line, int worker) noexcept nogil:
    """One line (o, j) of n values, strided by inner."""
    cdef const SoftmaxGradJob *job = <const SoftmaxGradJob *> ctx
    cdef long o = line // job.inner, j = line % job.inner
    cdef long first = o * job.n * job.inner + j
    ember_softmax_grad_line(job.dy + first, job.y + first, job.dx + first, job.n, job.inner,
                            job.log)


def softmax_grad(float[:, :, ::1] dy, float[:, :, ::1] y, float[:, :, ::1] dx, bint log,
                 int nthreads):
    """Gradient of softmax (or log-softmax) along the middle axis of (outer, n, inner)."""
    cdef long O = y.shape[0], n = y.shape[1], I = y.shape[2]
    cdef SoftmaxGradJob job
    if O * n * I == 0:
        return
    job.dy = &dy[0, 0, 0]
    job.y = &y[0, 0, 0]
    job.dx = &dx[0, 0, 0]
    job.n, job.inner, job.log = n, I, log
    with nogil:
        ember_parallel(threads_for(nthreads, O * n * I), O * I, softmax_grad_line_task, &job)


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


# One softmax_xent or softmax_xent_grad call with its arguments resolved (see XentStep).
cdef struct XentCall:
    bint grad
    const float *scores        # forward: the class scores
    const float *dloss         # gradient: dL/dloss (1 value, or N for NONE)
    float *log_prob            # forward: written; gradient: read
    float *out                 # forward: the loss (1 or N); gradient: dscores (N, C)
    const int64_t *labels
    const float *weights       # NULL: all 1
    long N, C
    int reduction
    int64_t ignore_index
    bint has_ignore
    int nthreads
    long bad                   # the first bad label's row, after a run that returned non-zero
    double scale               # gradient, within a run: dL/dloss, over Σ w for MEAN


cdef void log_softmax_row_task(void *ctx, long i, int worker) noexcept nogil:
    cdef const XentCall *c = <const XentCall *> ctx
    ember_softmax_line(c.scores + i * c.C, c.log_prob + i * c.C, c.C, 1, True)


cdef int xent_forward(XentCall *c) noexcept nogil:
    cdef long N = c.N, C = c.C, i
    cdef double s, total = 0.0, denom = 0.0, wi
    cdef const int64_t *lp = c.labels
    if N == 0:
        if c.reduction != NONE:
            c.out[0] = NAN if c.reduction == MEAN else 0.0
        return 0
    c.bad = first_bad_label(lp, N, C, c.ignore_index, c.has_ignore)
    if c.bad >= 0:
        return 1
    if C == 0:
        return 0
    ember_parallel(c.nthreads, N, log_softmax_row_task, c)
    for i in range(N):
        wi = label_weight(lp[i], c.weights, c.ignore_index, c.has_ignore)
        s = -wi * c.log_prob[i * C + lp[i]] if wi != 0.0 else 0.0
        if c.reduction == NONE:
            c.out[i] = <float> s
        total = total + s
        denom = denom + wi
    if c.reduction == SUM:
        c.out[0] = <float> total
    elif c.reduction == MEAN:
        c.out[0] = <float> (total / denom) if denom != 0.0 else NAN
    return 0


cdef void xent_grad_row_task(void *ctx, long i, int worker) noexcept nogil:
    """dscores row i: coef_i·(exp(log_prob[i]) − onehot(l_i)), zeros for an ignored row."""
    cdef const XentCall *c = <const XentCall *> ctx
    cdef long C = c.C, k, label = c.labels[i]
    cdef float *out = c.out + i * C
    cdef double wi = label_weight(label, c.weights, c.ignore_index, c.has_ignore)
    cdef float coef = <float> (wi * (c.dloss[i] if c.reduction == NONE else c.scale)) \
        if wi != 0.0 else 0.0
    if wi == 0.0:
        for k in range(C):
            out[k] = 0.0
    else:
        ember_act_unary(c.log_prob + i * C, out, C, ACT_EXP, 0.0, 0.0)
        for k in range(C):
            out[k] = coef * out[k]
        out[label] = out[label] - coef


cdef int xent_backward(XentCall *c) noexcept nogil:
    cdef long N = c.N, C = c.C, i
    cdef double denom = 0.0
    cdef const int64_t *lp = c.labels
    if N == 0 or C == 0:
        return 0
    c.bad = first_bad_label(lp, N, C, c.ignore_index, c.has_ignore)
    if c.bad >= 0:
        return 1
    if c.reduction == MEAN:
        for i in range(N):
            denom = denom + label_weight(lp[i], c.weights, c.ignore_index, c.has_ignore)
        c.scale = c.dloss[0] / denom if denom != 0.0 else NAN
    else:
        c.scale = c.dloss[0]
    ember_parallel(c.nthreads, N, xent_grad_row_task, c)
    return 0


cdef int xent_run(XentCall *c) noexcept nogil:
    """The loss or its gradient, GIL-free: 0, or 1 when a label is out of range (``bad``; then
    nothing was written)."""
    c.bad = -1
    return xent_backward(c) if c.grad else xent_forward(c)


cdef int xent_native(void *state) noexcept nogil:
    return xent_run(<XentCall *> state)


cdef class XentStep:
    """softmax_xent or softmax_xent_grad with its arguments resolved once (bind time): calling
    it, or running it inside a ``plan.PlanRunner`` with no Python in between. A bad label makes
    the call raise what ``on_bad_label(row)`` returns (default ValueError). Made by
    ``softmax_xent_step`` / ``softmax_xent_grad_step``; holds its arrays."""
    cdef XentCall call
    cdef ember_native_step native
    cdef object keep
    cdef object on_bad_label

    def __cinit__(self):
        self.call.N = 0
        self.call.C = 0
        self.call.bad = -1
        self.native.fn = xent_native
        self.native.state = &self.call

    def run(self):
        """One call; returns −1, or the first bad label's row (nothing written then)."""
        cdef int rc
        with nogil:
            rc = xent_run(&self.call)
        return self.call.bad if rc else -1

    def __call__(self):
        if self.run() >= 0:
            self.raise_for(1)

    def raise_for(self, int rc):
        row = self.call.bad
        if self.on_bad_label is not None:
            raise self.on_bad_label(row)
        raise ValueError(f"softmax_xent: the label of row {row} is outside [0, {self.call.C})")

    @property
    def _native(self):
        """A capsule holding the step's C entry point, for plan.PlanRunner."""
        return PyCapsule_New(&self.native, EMBER_NATIVE_CAPSULE, NULL)


cdef const float *weights_ptr(weights, long C) except? NULL:
    cdef const float[::1] w_view
    if weights is None:
        return NULL
    w_view = weights
    if w_view.shape[0] != C:
        raise ValueError(f"softmax_xent: {w_view.shape[0]} class weights for {C} classes")
    return &w_view[0] if C > 0 else NULL


def softmax_xent_step(const float[:, ::1] scores, const int64_t[::1] labels, weights,
                      float[:, ::1] log_prob, float[::1] loss, int reduction,
                      long long ignore_index, bint has_ignore, int nthreads,
                      on_bad_label=None):
    """softmax_xent resolved once: an XentStep."""
    cdef XentStep step = XentStep()
    cdef XentCall *c = &step.call
    c.grad = False
    c.N, c.C = scores.shape[0], scores.shape[1]
    if labels.shape[0] != c.N or log_prob.shape[0] != c.N or log_prob.shape[1] != c.C:
        raise ValueError("softmax_xent: scores, labels and log_prob disagree on N or C")
    if loss.shape[0] < (c.N if reduction == NONE else 1):
        raise ValueError(f"softmax_xent: loss holds {loss.shape[0]} values")
    c.weights = weights_ptr(weights, c.C)
    c.scores = &scores[0, 0] if c.N * c.C > 0 else NULL
    c.log_prob = &log_prob[0, 0] if c.N * c.C > 0 else NULL
    c.labels = &labels[0] if c.N > 0 else NULL
    c.out = &loss[0] if loss.shape[0] > 0 else NULL
    c.reduction, c.ignore_index, c.has_ignore = reduction, ignore_index, has_ignore
    c.nthreads = threads_for(nthreads, c.N * c.C * 8)
    step.keep = (scores, labels, weights, log_prob, loss)
    step.on_bad_label = on_bad_label
    return step


def softmax_xent_grad_step(const float[::1] dloss, const float[:, ::1] log_prob,
                           const int64_t[::1] labels, weights, float[:, ::1] dscores,
                           int reduction, long long ignore_index, bint has_ignore, int nthreads,
                           on_bad_label=None):
    """softmax_xent_grad resolved once: an XentStep."""
    cdef XentStep step = XentStep()
    cdef XentCall *c = &step.call
    c.grad = True
    c.N, c.C = log_prob.shape[0], log_prob.shape[1]
    if labels.shape[0] != c.N or dscores.shape[0] != c.N or dscores.shape[1] != c.C:
        raise ValueError("softmax_xent_grad: log_prob, labels and dscores disagree on N or C")
    if c.N * c.C > 0 and dloss.shape[0] < (c.N if reduction == NONE else 1):
        raise ValueError(f"softmax_xent_grad: dloss holds {dloss.shape[0]} values")
    c.weights = weights_ptr(weights, c.C)
    c.dloss = &dloss[0] if dloss.shape[0] > 0 else NULL
    c.log_prob = <float *> &log_prob[0, 0] if c.N * c.C > 0 else NULL
    c.labels = &labels[0] if c.N > 0 else NULL
    c.out = &dscores[0, 0] if c.N * c.C > 0 else NULL
    c.reduction, c.ignore_index, c.has_ignore = reduction, ignore_index, has_ignore
    c.nthreads = threads_for(nthreads, c.N * c.C * 4)
    step.keep = (dloss, log_prob, labels, weights, dscores)
    step.on_bad_label = on_bad_label
    return step


def softmax_xent(scores, labels, weights, log_prob, loss, int reduction,
                 long long ignore_index, bint has_ignore, int nthreads):
    """log_prob = log-softmax of scores (N, C) along C; the loss of row i is −w[l_i]·log_prob[i,
    l_i] (0 when has_ignore and l_i = ignore_index). reduction NONE writes loss (N), SUM their
    sum, MEAN their sum over Σ w[l_i] of the rows not ignored (ONNX; NaN when every label is
    ignored) into loss (1).
    Returns −1, or the first row whose label is outside [0, C) and not ignore_index (nothing is
    written then)."""
    return softmax_xent_step(scores, labels, weights, log_prob, loss, reduction, ignore_index,
                             has_ignore, nthreads).run()


def softmax_xent_grad(dloss, log_prob, labels, weights, dscores, int reduction,
                      long long ignore_index, bint has_ignore, int nthreads):
    """dscores[i, c] = coef_i·(exp(log_prob[i, c]) − [c = l_i]), coef_i = w[l_i]·dloss (over
    Σ w of the rows not ignored for MEAN; dloss[i] per row for NONE), 0 for an ignored row.
    Returns −1, or the first row with a bad label (nothing written)."""
    return softmax_xent_grad_step(dloss, log_prob, labels, weights, dscores, reduction,
                                  ignore_index, has_ignore, nthreads).run()
