"""Softmax and LogSoftmax (``kernels/softmax``) and their gradients (``kernels/softmax_grad``),
each over one axis of an (outer, axis, inner) view."""
from __future__ import annotations

import numpy as np

from ...graph.ops import softmax as ops
from ...kernels import softmax, softmax_grad
from .common import all_float32, contiguous_f32, has_empty_output, noop
from .registry import binds


def _outer_axis_inner(shape, axis):
    outer = int(np.prod(shape[:axis], dtype=np.int64))
    inner = int(np.prod(shape[axis + 1:], dtype=np.int64))
    return outer, shape[axis], inner


@binds(ops.Softmax, ops.LogSoftmax, inplace=(), kernel="softmax")
def bind_softmax(node, ins, outs, scratch_buf, ctx):
    x, y = ins[0], outs[0]
    if x.ndim == 0 or not all_float32(x, y):
        return None
    if has_empty_output(outs):
        return noop
    axis = int(node.attrs.get("axis", -1))
    axis = axis + x.ndim if axis < 0 else axis
    if not 0 <= axis < x.ndim:
        return None
    shape3 = _outer_axis_inner(x.shape, axis)
    x3, y3, log = contiguous_f32(x).reshape(shape3), y.reshape(shape3), node.op_type == "LogSoftmax"
    return softmax.SoftmaxStep(x3, y3, log, ctx.threads)


@binds(ops.SoftmaxGrad, ops.LogSoftmaxGrad, kernel="softmax_grad")
def bind_softmax_grad(node, ins, outs, scratch_buf, ctx):
    dy, y, dx = ins[0], ins[1], outs[0]
    if y.ndim == 0 or not all_float32(dy, y, dx) or dy.shape != y.shape:
        return None
    if has_empty_output(outs):
        return noop
    shape3 = _outer_axis_inner(y.shape, int(node.attrs.get("axis", -1)) % y.ndim)
    g3, y3 = contiguous_f32(dy).reshape(shape3), contiguous_f32(y).reshape(shape3)
    dx3 = dx.reshape(shape3)
    log, fn, threads = node.op_type == "LogSoftmaxGrad", softmax_grad.softmax_grad, ctx.threads
    return lambda: fn(g3, y3, dx3, log, threads)
