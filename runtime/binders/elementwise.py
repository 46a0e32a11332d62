"""Binary and variadic elementwise ops (``kernels/elementwise``: same-shape and broadcasting
loops), the fused Add + activation, and the gradient reductions ``SumToShape`` and
``BiasGrad`` (``kernels/reduce_grad``)."""
from __future__ import annotations

import numpy as np

from ...graph.ops import elementwise as ops
from ...graph.ops import get_op
from ...graph.ops.activation import FusedAdd
from ...kernels import elementwise, reduce_grad
from .common import (FUSED_ACTIVATIONS, FUSED_CODES, all_float32, contiguous_f32,
                     has_empty_output, noop)
from .registry import binds

# op type -> the operation code of elementwise.binary / binary_broadcast
BINARY_CODES = {"Add": 0, "Sub": 1, "Mul": 2, "Div": 3, "Max": 4, "Min": 5, "Pow": 6,
                "PRelu": 7}
_ADD = BINARY_CODES["Add"]
ACT_NONE = elementwise.ACT_IDENTITY


def broadcast_strides(shape, yshape):
    """Element strides of a C-contiguous array of ``shape`` broadcast over ``yshape``."""
    r = len(yshape)
    s = (1,) * (r - len(shape)) + tuple(shape)
    strides, acc = [0] * r, 1
    for i in reversed(range(r)):
        strides[i] = acc if s[i] != 1 else 0
        acc *= s[i]
    return np.array(strides, dtype=np.int64)


def _binary_step(a, b, y, op, threads, act=ACT_NONE, pa=0.0, pb=0.0):
    """A native step computing y = act(a ∘ b) (broadcasting), or None when the rank is too
    high."""
    af, bf, yf = contiguous_f32(a).reshape(-1), contiguous_f32(b).reshape(-1), y.reshape(-1)
    if a.shape == b.shape == y.shape:
        return elementwise.binary_step(af, bf, yf, op, act, pa, pb, threads)
    if y.ndim > 8:
        return None
    sa, sb = broadcast_strides(a.shape, y.shape), broadcast_strides(b.shape, y.shape)
    return elementwise.broadcast_step(af, sa, bf, sb, yf, np.array(y.shape, dtype=np.int64), op,
                                      act, pa, pb, threads)


def _chain(arrays, y, op, threads):
    """y = a0 ∘ a1 ∘ … for same-shape inputs (the kernel may write y over its input)."""
    if any(a.shape != y.shape for a in arrays):
        return None
    flats = [contiguous_f32(a).reshape(-1) for a in arrays]
    yf, fn = y.reshape(-1), elementwise.binary
    first, rest = flats[:2], flats[2:]

    def step():
        fn(first[0], first[1], yf, op, threads)
        for f in rest:
            fn(yf, f, yf, op, threads)
    return step


def _same_shape_inplace(node, types, allowed=None):
    """In-place only when every input has the output's shape (then the kernel is ``binary``,
    which tolerates y being an input); ``binary_broadcast`` promises no aliasing."""
    op = get_op(node.op_type, node.domain)
    out_t = types.get(node.outputs[0])
    ins = [types.get(i) for i in node.inputs if i]
    if out_t is None or any(t is None or t.shape != out_t.shape for t in ins):
        return ()
    return tuple(k for k in op.inplace if allowed is None or k in allowed)


def _first_two_inplace(node, types):
    """A chain writes y before it reads inputs 2.., so only inputs 0 and 1 may share y's bytes."""
    return _same_shape_inplace(node, types, allowed=(0, 1))


@binds(ops.Max, ops.Min, inplace=_first_two_inplace, kernel="elementwise")
@binds(ops.Add, ops.Sub, ops.Mul, ops.Div, ops.Pow, ops.PRelu, inplace=_same_shape_inplace,
       kernel="elementwise")
def bind_binary(node, ins, outs, scratch_buf, ctx):
    y, threads = outs[0], ctx.threads
    present = [i for i in ins if i is not None]
    if not all_float32(*present, y):
        return None
    if has_empty_output(outs):
        return noop
    op = BINARY_CODES[node.op_type]
    if len(present) == 1:  # variadic Max/Min with one input
        x = present[0]
        return lambda: np.copyto(y, x)
    if len(present) == 2:
        return _binary_step(present[0], present[1], y, op, threads)
    return _chain(present, y, op, threads)


@binds(FusedAdd, inplace=_same_shape_inplace, kernel="elementwise",
       activations=FUSED_ACTIVATIONS)
def bind_fused_add(node, ins, outs, scratch_buf, ctx):
    """Add with a fused activation: one pass over same-shape operands (each chunk activated
    while in cache), else the broadcast add and the activation over its output, in one step."""
    a, b, y, threads = ins[0], ins[1], outs[0], ctx.threads
    if not all_float32(a, b, y):
        return None
    if has_empty_output(outs):
        return noop
    at = node.attrs
    return _binary_step(a, b, y, _ADD, threads, FUSED_CODES[at["activation"]],
                        float(at["activation_alpha"]), float(at["activation_beta"]))


@binds(ops.Sum, ops.Mean, inplace=_first_two_inplace, kernel="elementwise")
def bind_sum_mean(node, ins, outs, scratch_buf, ctx):
    y, threads = outs[0], ctx.threads
    present = [i for i in ins if i is not None]
    if not all_float32(*present, y):
        return None
    if has_empty_output(outs):
        return noop
    if len(present) == 1:
        x = present[0]
        return lambda: np.copyto(y, x)
    step = (_binary_step(present[0], present[1], y, _ADD, threads) if len(present) == 2
            else _chain(present, y, _ADD, threads))
    if step is None or node.op_type == "Sum":
        return step
    scale = np.float32(1.0 / len(present))

    def mean():
        step()
        np.multiply(y, scale, out=y)
    return mean


# ---- gradients: BiasGrad, SumToShape ------------------------------------------------------------
def _channel_sum_step(x, y, outer, c, inner, threads):
    return reduce_grad.ChannelSumStep(contiguous_f32(x).reshape(outer, c, inner), y.reshape(c),
                                      threads)


@binds(ops.BiasGrad, kernel="reduce_grad")
def bind_bias_grad(node, ins, outs, scratch_buf, ctx):
    x, y = ins[0], outs[0]
    if x.ndim == 0 or not all_float32(x, y):
        return None
    axis = int(node.attrs.get("axis", 1)) % x.ndim
    outer = int(np.prod(x.shape[:axis], dtype=np.int64))
    inner = int(np.prod(x.shape[axis + 1:], dtype=np.int64))
    return _channel_sum_step(x, y, outer, x.shape[axis], inner, ctx.threads)


@binds(ops.SumToShape, kernel="reduce_grad")
def bind_sum_to_shape(node, ins, outs, scratch_buf, ctx):
    """One kept block of axes (the usual bias-like shapes) → channel_sum; no summed axis → a
    copy; any other pattern → numpy's sum straight into the output."""
    x, y = ins[0], outs[0]
    if not all_float32(x, y):
        return None
    target = (1,) * (x.ndim - y.ndim) + tuple(y.shape)
    summed = [i for i in range(x.ndim) if target[i] == 1 and x.shape[i] != 1]
    if not summed:
        return lambda: np.copyto(y, x.reshape(y.shape))
    kept = [i for i in range(x.ndim) if i not in summed and x.shape[i] != 1]
    a, b = (min(kept), max(kept) + 1) if kept else (0, 0)
    if not any(a <= i < b for i in summed):
        outer = int(np.prod(x.shape[:a], dtype=np.int64))
        inner = int(np.prod(x.shape[b:], dtype=np.int64))
        return _channel_sum_step(x, y, outer, int(np.prod(x.shape[a:b], dtype=np.int64)),
                                 inner, ctx.threads)
    axes, yk = tuple(summed), y.reshape(target)
    return lambda: np.sum(x, axis=axes, keepdims=True, out=yk)
