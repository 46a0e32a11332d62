"""Softmax and LogSoftmax along one axis (opset-13 semantics: a single axis, default −1),
computed with the maximum subtracted so large logits do not overflow."""
from __future__ import annotations

import numpy as np

from .base import TRAINING_DOMAIN, Op, register


class _SoftmaxBase(Op):
    attrs = {"axis": -1}
    inplace = (0,)

    def infer(self, ctx):
        t = ctx.type(0)
        r = t.rank
        ctx.check(t.dtype.kind == "f", f"expected a float input, got {t.dtype}")
        axis = int(ctx.attrs["axis"])
        ctx.check(-r <= axis < r if r else axis in (0, -1),
                  f"expected axis in [{-r}, {r - 1}], got {axis}")
        return [t]

    def compute(self, node, inputs):
        x = inputs[0]
        xw = x.astype(np.float32) if x.dtype == np.float16 else x
        axis = int(node.attrs["axis"]) if x.ndim else None
        shifted = xw - np.max(xw, axis=axis, keepdims=True)
        with np.errstate(all="ignore"):
            y = self.finish(shifted, axis)
        return [y.astype(x.dtype)]


@register
class Softmax(_SoftmaxBase):
    @staticmethod
    def finish(shifted, axis):
        e = np.exp(shifted)
        return e / np.sum(e, axis=axis, keepdims=True)


@register
class LogSoftmax(_SoftmaxBase):
    @staticmethod
    def finish(shifted, axis):
        return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


# ---- gradients -------------------------------------------------------------------------------
class _SoftmaxGradBase(Op):
    domain = TRAINING_DOMAIN
    num_inputs = (2, 2)
    attrs = {"axis": -1}
    inplace = (0,)

    def infer(self, ctx):
        dy, y = ctx.type(0), ctx.type(1)
        ctx.check(tuple(dy.shape) == tuple(y.shape), f"expected dY and Y of one shape, got "
                                                     f"{dy.shape} and {y.shape}")
        ctx.check(dy.dtype.kind == "f" and dy.dtype == y.dtype,
                  f"expected float dY and Y of one dtype, got {dy.dtype} and {y.dtype}")
        r = max(y.rank, 1)
        axis = int(ctx.attrs["axis"])
        ctx.check(-r <= axis < r, f"expected axis in [{-r}, {r - 1}], got {axis}")
        return [dy]

    def compute(self, node, inputs):
        dy, y = (v.astype(np.float64) for v in inputs)
        axis = int(node.attrs["axis"]) if dy.ndim else None
        return [self.fn(dy, y, axis).astype(inputs[0].dtype)]


@register
class SoftmaxGrad(_SoftmaxGradBase):
    """dX = Y·(dY − Σ_axis dY·Y), Y the softmax output."""
    @staticmethod
    def fn(dy, y, axis):
        return y * (dy - np.sum(dy * y, axis=axis, keepdims=True))


@register
class LogSoftmaxGrad(_SoftmaxGradBase):
    """dX = dY − exp(Y)·Σ_axis dY, Y the log-softmax output."""
    @staticmethod
    def fn(dy, y, axis):
        return dy - np.exp(y) * np.sum(dy, axis=axis, keepdims=True)


def _softmax_gradient(self, node, grads, g):
    if not g.needs(0):
        return [None]
    return [g.op(self.grad_op, [grads[0], g.output(0)], axis=int(node.attrs["axis"]))]


Softmax.gradient = LogSoftmax.gradient = _softmax_gradient
Softmax.grad_op, LogSoftmax.grad_op = "SoftmaxGrad", "LogSoftmaxGrad"
