"""Loss ops and their gradients: SoftmaxCrossEntropyLoss (the ONNX op), cross entropy against
probability targets, BCE with logits, MSE, L1 and Huber.

Every op here but ONNX's SoftmaxCrossEntropyLoss is in ember's training domain; that one is
registered twice, in the default domain for ONNX files and in the training domain for the loss
a Trainer appends.

Every loss takes ``reduction`` in {"mean", "sum", "none"}. "mean" averages over every element
(torch's rule), except SoftmaxCrossEntropyLoss, which divides by the summed weights of the labels
not equal to ``ignore_index`` (ONNX's rule), and SoftmaxCrossEntropyProb, which averages over the
N (·d…) rows. Scalar losses have shape ``()``. Forward and gradient are computed in float64 with
stable forms (log-sum-exp; BCE as max(x, 0) − x·t + log(1 + e^−|x|)).
"""
from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..ir import TensorType
from .activation import stable_sigmoid
from .base import TRAINING_DOMAIN, Op, register

REDUCTIONS = ("mean", "sum", "none")


def _log_softmax(x, axis=1):
    shifted = x - np.max(x, axis=axis, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


def _reduced_shape(ctx, elem_shape) -> tuple:
    red = ctx.attrs["reduction"]
    ctx.check(red in REDUCTIONS, f"expected reduction among {REDUCTIONS}, got {red!r}")
    return tuple(elem_shape) if red == "none" else ()


def _reduce(elems, reduction, count=None):
    if reduction == "none":
        return elems
    total = np.sum(elems)
    if reduction == "sum":
        return total
    with np.errstate(all="ignore"):
        return total / (elems.size if count is None else count)


def _coefficient(dloss, shape, reduction, count=None):
    """d loss / d element, per element, from the incoming gradient ``dloss``."""
    d = np.asarray(dloss, np.float64)
    if reduction == "none":
        return d.reshape(shape)
    d = d.reshape(())
    if reduction == "mean":
        with np.errstate(all="ignore"):
            d = d / (int(np.prod(shape)) if count is None else count)
    return np.broadcast_to(d, shape)


def _check_dloss(ctx, elem_shape, dtype):
    want = _reduced_shape(ctx, elem_shape)
    ctx.check(tuple(ctx.shape(0)) == want, f"expected dloss of the loss's shape {want}, got "
                                           f"{tuple(ctx.shape(0))}")
    ctx.check(ctx.dtype(0) == dtype, f"expected dloss of dtype {dtype}, got {ctx.dtype(0)}")


# ---- softmax cross entropy with class labels ----------------------------------------------------
def _check_scores_labels(ctx, si: int, li: int, wi: int):
    """Check scores [N, C, d…], labels [N, d…] (int), optional weights [C]; return the
    per-element (labels) shape."""
    s, l = tuple(ctx.shape(si)), tuple(ctx.shape(li))
    ctx.check(len(s) >= 2, f"expected scores of rank ≥ 2 (N, C, …), got {s}")
    ctx.check(ctx.dtype(si).kind == "f", f"expected float scores, got {ctx.dtype(si)}")
    ctx.check(ctx.dtype(li).kind in "iu", f"expected integer labels, got {ctx.dtype(li)}")
    ctx.check(l == s[:1] + s[2:], f"expected labels of shape {s[:1] + s[2:]} for scores {s}, "
                                  f"got {l}")
    if ctx.has(wi):
        ctx.check(tuple(ctx.shape(wi)) == (s[1],), f"expected weights of shape ({s[1]},), got "
                                                   f"{tuple(ctx.shape(wi))}")
        ctx.check(ctx.dtype(wi) == ctx.dtype(si), f"expected weights of dtype {ctx.dtype(si)}, "
                                                  f"got {ctx.dtype(wi)}")
    return l


def _label_weights(node, labels, weights, c):
    """(safe labels, per-element weight with ignored elements 0); InputError on a label
    outside [0, C)."""
    labels = np.asarray(labels, np.int64)
    ignore = node.attrs.get("ignore_index")
    keep = np.ones(labels.shape, bool) if ignore is None else labels != int(ignore)
    bad = keep & ((labels < 0) | (labels >= c))
    if bad.any():
        raise InputError(f"{node}: label {labels[bad][0]} is outside [0, {c}) (and is not "
                         f"ignore_index {ignore})")
    safe = np.where(keep, labels, 0)
    w = np.ones(labels.shape) if weights is None else weights.astype(np.float64)[safe]
    return safe, w * keep


@register
class SoftmaxCrossEntropyLoss(Op):
    """ONNX SoftmaxCrossEntropyLoss: −weight[label]·log_softmax(scores)[label] per element;
    ``mean`` divides by the summed weights of the non-ignored labels."""
    num_inputs = (2, 3)
    num_outputs = (1, 2)
    attrs = {"reduction": "mean", "ignore_index": None}

    def infer(self, ctx):
        elem = _check_scores_labels(ctx, 0, 1, 2)
        return [TensorType(ctx.dtype(0), _reduced_shape(ctx, elem)), ctx.type(0)]

    def compute(self, node, inputs):
        scores, labels = inputs[0], inputs[1]
        weights = inputs[2] if len(inputs) > 2 else None
        logp = _log_softmax(scores.astype(np.float64))
        safe, w = _label_weights(node, labels, weights, scores.shape[1])
        picked = np.take_along_axis(logp, safe[:, None], axis=1)[:, 0]
        loss = _reduce(-picked * w, node.attrs["reduction"], np.sum(w))
        return [np.asarray(loss).astype(scores.dtype), logp.astype(scores.dtype)]


@register
class TrainingSoftmaxCrossEntropyLoss(SoftmaxCrossEntropyLoss):
    """The cross entropy a Trainer appends (``runtime/losses.py``): ONNX's op, under its name in
    ember's training domain like every other loss a Trainer adds, so that a training graph's
    loss is never taken for a model's op (refused on export, never read from a file)."""
    op_type = "SoftmaxCrossEntropyLoss"
    domain = TRAINING_DOMAIN


@register
class SoftmaxCrossEntropyLossGrad(Op):
    """dscores = (softmax − onehot(label))·weight[label]·dloss (÷ summed weights for mean)."""
    domain = TRAINING_DOMAIN
    num_inputs = (3, 4)
    attrs = {"reduction": "mean", "ignore_index": None}

    def infer(self, ctx):
        elem = _check_scores_labels(ctx, 1, 2, 3)
        _check_dloss(ctx, elem, ctx.dtype(1))
        return [ctx.type(1)]

    def compute(self, node, inputs):
        dloss, logp, labels = inputs[:3]
        weights = inputs[3] if len(inputs) > 3 else None
        c = logp.shape[1]
        safe, w = _label_weights(node, labels, weights, c)
        coef = _coefficient(dloss, w.shape, node.attrs["reduction"], np.sum(w)) * w
        d = np.exp(logp.astype(np.float64))
        np.put_along_axis(d, safe[:, None], np.take_along_axis(d, safe[:, None], axis=1) - 1,
                          axis=1)
        return [(d * coef[:, None]).astype(logp.dtype)]


# ---- softmax cross entropy with probability targets ---------------------------------------------
def _check_pair(ctx, a: int, b: int, what_a: str, what_b: str):
    sa, sb = tuple(ctx.shape(a)), tuple(ctx.shape(b))
    ctx.check(sa == sb, f"expected {what_a} and {what_b} of one shape, got {sa} and {sb}")
    ctx.check(ctx.dtype(a).kind == "f" and ctx.dtype(b) == ctx.dtype(a),
              f"expected float {what_a} and {what_b} of one dtype, got {ctx.dtype(a)} and "
              f"{ctx.dtype(b)}")
    return sa


def _rows(shape):
    """Per-row (class axis 1 removed) shape of a [N, C, d…] tensor."""
    return tuple(shape[:1]) + tuple(shape[2:])


@register
class SoftmaxCrossEntropyProb(Op):
    """−Σ_c target·log_softmax(scores) per row (class axis 1); mean averages over the rows."""
    domain = TRAINING_DOMAIN
    num_inputs = (2, 2)
    num_outputs = (1, 2)
    attrs = {"reduction": "mean"}

    def infer(self, ctx):
        s = _check_pair(ctx, 0, 1, "scores", "target")
        ctx.check(len(s) >= 2, f"expected scores of rank ≥ 2 (N, C, …), got {s}")
        return [TensorType(ctx.dtype(0), _reduced_shape(ctx, _rows(s))), ctx.type(0)]

    def compute(self, node, inputs):
        scores, target = inputs
        logp = _log_softmax(scores.astype(np.float64))
        rows = -np.sum(target.astype(np.float64) * logp, axis=1)
        loss = _reduce(rows, node.attrs["reduction"])
        return [np.asarray(loss).astype(scores.dtype), logp.astype(scores.dtype)]


@register
class SoftmaxCrossEntropyProbGrad(Op):
    """dscores = (softmax·Σ_c target − target)·dloss per row (÷ rows for mean)."""
    domain = TRAINING_DOMAIN
    num_inputs = (3, 3)
    attrs = {"reduction": "mean"}

    def infer(self, ctx):
        s = _check_pair(ctx, 1, 2, "log_prob", "target")
        ctx.check(len(s) >= 2, f"expected log_prob of rank ≥ 2 (N, C, …), got {s}")
        _check_dloss(ctx, _rows(s), ctx.dtype(1))
        return [ctx.type(1)]

    def compute(self, node, inputs):
        dloss, logp, target = inputs
        t = target.astype(np.float64)
        coef = _coefficient(dloss, _rows(logp.shape), node.attrs["reduction"])
        d = np.exp(logp.astype(np.float64)) * np.sum(t, axis=1, keepdims=True) - t
        return [(d * np.expand_dims(coef, 1)).astype(logp.dtype)]


# ---- elementwise losses -------------------------------------------------------------------------
class _PairLoss(Op):
    """loss(pred, target) per element, reduced; the gradient op is ``<op_type>Grad``."""
    domain = TRAINING_DOMAIN
    num_inputs = (2, 2)
    attrs = {"reduction": "mean"}
    target_has_gradient = True   # the loss is a function of pred − target

    def infer(self, ctx):
        s = _check_pair(ctx, 0, 1, "input", "target")
        return [TensorType(ctx.dtype(0), _reduced_shape(ctx, s))]

    def compute(self, node, inputs):
        p, t = (v.astype(np.float64) for v in inputs)
        with np.errstate(all="ignore"):
            elems = self.elementwise(p, t, node.attrs)
        return [np.asarray(_reduce(elems, node.attrs["reduction"])).astype(inputs[0].dtype)]


class _PairLossGrad(Op):
    domain = TRAINING_DOMAIN
    num_inputs = (3, 3)
    attrs = {"reduction": "mean"}

    def infer(self, ctx):
        s = _check_pair(ctx, 1, 2, "input", "target")
        _check_dloss(ctx, s, ctx.dtype(1))
        return [ctx.type(1)]

    def compute(self, node, inputs):
        dloss, p, t = inputs
        coef = _coefficient(dloss, p.shape, node.attrs["reduction"])
        with np.errstate(all="ignore"):
            d = self.derivative(p.astype(np.float64), t.astype(np.float64), node.attrs)
        return [(d * coef).astype(p.dtype)]


@register
class BCEWithLogitsLoss(_PairLoss):
    """max(x, 0) − x·t + log(1 + e^−|x|): binary cross entropy of sigmoid(x), without
    overflow."""
    target_has_gradient = False

    @staticmethod
    def elementwise(x, t, attrs):
        return np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))


@register
class BCEWithLogitsLossGrad(_PairLossGrad):
    """(sigmoid(x) − t)·dloss."""
    @staticmethod
    def derivative(x, t, attrs):
        return stable_sigmoid(x) - t


@register
class MSELoss(_PairLoss):
    @staticmethod
    def elementwise(p, t, attrs):
        return (p - t) ** 2


@register
class MSELossGrad(_PairLossGrad):
    @staticmethod
    def derivative(p, t, attrs):
        return 2 * (p - t)


@register
class L1Loss(_PairLoss):
    @staticmethod
    def elementwise(p, t, attrs):
        return np.abs(p - t)


@register
class L1LossGrad(_PairLossGrad):
    """sign(pred − target), 0 where they are equal."""
    @staticmethod
    def derivative(p, t, attrs):
        return np.sign(p - t)


def _check_delta(ctx):
    ctx.check(float(ctx.attrs["delta"]) > 0, f"expected delta > 0, got {ctx.attrs['delta']}")


@register
class HuberLoss(_PairLoss):
    """torch's HuberLoss: ½d² where |d| ≤ delta, else delta·(|d| − ½delta)."""
    attrs = {"reduction": "mean", "delta": 1.0}

    def infer(self, ctx):
        _check_delta(ctx)
        return super().infer(ctx)

    @staticmethod
    def elementwise(p, t, attrs):
        d, delta = p - t, float(attrs["delta"])
        a = np.abs(d)
        return np.where(a <= delta, 0.5 * d * d, delta * (a - 0.5 * delta))


@register
class HuberLossGrad(_PairLossGrad):
    attrs = {"reduction": "mean", "delta": 1.0}

    def infer(self, ctx):
        _check_delta(ctx)
        return super().infer(ctx)

    @staticmethod
    def derivative(p, t, attrs):
        d, delta = p - t, float(attrs["delta"])
        return np.clip(d, -delta, delta)


# ---- gradients -------------------------------------------------------------------------------
def _softmax_cross_entropy_gradient(self, node, grads, g):
    if g.needs(2):
        g.fail("no gradient for the class weights")
    if not g.needs(0) or grads[0] is None:
        return [None] * len(node.inputs)
    ins = [grads[0], g.output(1, "log_prob"), g.input(1), g.input(2)]
    return [g.op("SoftmaxCrossEntropyLossGrad", ins, reduction=node.attrs["reduction"],
                 ignore_index=node.attrs["ignore_index"]), None, None][:len(node.inputs)]


def _softmax_cross_entropy_prob_gradient(self, node, grads, g):
    if g.needs(1):
        g.fail("no gradient for the target probabilities")
    if not g.needs(0) or grads[0] is None:
        return [None, None]
    ins = [grads[0], g.output(1, "log_prob"), g.input(1)]
    return [g.op("SoftmaxCrossEntropyProbGrad", ins, reduction=node.attrs["reduction"]),
            None]


def _pair_loss_gradient(self, node, grads, g):
    if grads[0] is None or not (g.needs(0) or g.needs(1)):
        return [None, None]
    if g.needs(1) and not self.target_has_gradient:
        g.fail("no gradient for the target")
    attrs = {k: node.attrs[k] for k in self.attrs}
    dp = g.op(self.op_type + "Grad", [grads[0], g.input(0), g.input(1)], **attrs)
    return [dp if g.needs(0) else None, g.op("Neg", [dp]) if g.needs(1) else None]


SoftmaxCrossEntropyLoss.gradient = _softmax_cross_entropy_gradient
SoftmaxCrossEntropyProb.gradient = _softmax_cross_entropy_prob_gradient
_PairLoss.gradient = _pair_loss_gradient
