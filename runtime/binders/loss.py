"""SoftmaxCrossEntropyLoss (ONNX's and the training domain's) and its gradient
(``kernels/softmax_grad``): class scores of shape (N, C) with int64 labels, both bound as native
steps (a bad label raises the node's InputError through the step's ``raise_for``)."""
from __future__ import annotations

import numpy as np

from ...graph.errors import InputError
from ...graph.ops import loss as ops
from ...kernels import softmax_grad
from .common import F32, all_float32, contiguous_f32, has_empty_output, noop, optional_at
from .registry import binds

_REDUCTION = {"none": 0, "sum": 1, "mean": 2}


def _xent_args(node, labels, weights, n_classes):
    """(reduction code, ignore_index, has_ignore) or None when the kernel does not cover it."""
    red = _REDUCTION.get(node.attrs.get("reduction", "mean"))
    if red is None or labels.dtype != np.int64 or labels.ndim != 1 or \
            (weights is not None and weights.shape != (n_classes,)):
        return None
    ignore = node.attrs.get("ignore_index")
    return red, (0 if ignore is None else int(ignore)), ignore is not None


def _bad_label(node, labels, row, n_classes):
    return InputError(f"{node}: label {int(labels.reshape(-1)[row])} is outside [0, "
                      f"{n_classes}) (and is not ignore_index {node.attrs.get('ignore_index')})")


@binds(ops.SoftmaxCrossEntropyLoss, ops.TrainingSoftmaxCrossEntropyLoss, kernel="softmax_grad")
def bind_softmax_xent(node, ins, outs, scratch_buf, ctx):
    scores, labels, weights = ins[0], ins[1], optional_at(ins, 2)
    loss, logp = outs[0], optional_at(outs, 1)
    if scores.ndim != 2 or not all_float32(scores, weights, loss, logp):
        return None
    args = _xent_args(node, labels, weights, scores.shape[1])
    if args is None:
        return None
    red, ignore, has_ignore = args
    s2, w1, loss1 = contiguous_f32(scores), contiguous_f32(weights), loss.reshape(-1)
    lp = logp if logp is not None else np.empty(scores.shape, F32)   # bind time, reused
    C = scores.shape[1]
    return softmax_grad.softmax_xent_step(s2, labels, w1, lp, loss1, red, ignore, has_ignore,
                                          ctx.threads,
                                          lambda row: _bad_label(node, labels, row, C))


@binds(ops.SoftmaxCrossEntropyLossGrad, kernel="softmax_grad")
def bind_softmax_xent_grad(node, ins, outs, scratch_buf, ctx):
    dloss, logp, labels, weights = ins[0], ins[1], ins[2], optional_at(ins, 3)
    dscores = outs[0]
    if logp.ndim != 2 or not all_float32(dloss, logp, weights, dscores):
        return None
    args = _xent_args(node, labels, weights, logp.shape[1])
    if args is None:
        return None
    if has_empty_output(outs):
        return noop
    red, ignore, has_ignore = args
    d1, lp2, w1 = contiguous_f32(dloss).reshape(-1), contiguous_f32(logp), contiguous_f32(weights)
    C = logp.shape[1]
    return softmax_grad.softmax_xent_grad_step(d1, lp2, labels, w1, dscores, red, ignore,
                                               has_ignore, ctx.threads,
                                               lambda row: _bad_label(node, labels, row, C))
