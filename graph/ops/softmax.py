"""Softmax and LogSoftmax along one axis (opset-13 semantics: a single axis, default −1),
computed with the maximum subtracted so large logits do not overflow."""
from __future__ import annotations

import numpy as np

from .base import Op, register


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
