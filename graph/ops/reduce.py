"""Reductions (opset-18 form: ``axes`` is an optional int64 input, known at compile time).

No axes (absent or empty) reduces every axis, unless ``noop_with_empty_axes=1`` makes the op
reduce none: an identity for Sum/Mean/Max/Min/Prod, while L1, L2, SumSquare, LogSum and
LogSumExp still apply |x|, x², log or exp (as onnx.reference and onnxruntime do)."""
from __future__ import annotations

import numpy as np

from ..errors import InputError, ModelError
from ..ir import TensorType
from .base import Op, register


def reduce_axes(axes, rank: int, noop: bool):
    """Normalized sorted axes, or None for "identity"; raises ValueError on bad axes."""
    axes = [] if axes is None else [int(a) for a in np.asarray(axes).reshape(-1)]
    if not axes:
        return None if noop else tuple(range(rank))
    norm = [a + rank if a < 0 else a for a in axes]
    if any(not 0 <= a < max(rank, 1) for a in norm):
        raise ValueError(f"expected axes in [{-rank}, {rank - 1}], got {axes}")
    return tuple(sorted({a for a in norm if a < rank}))   # a repeated axis reduces once


class _Reduce(Op):
    num_inputs = (1, 2)
    attrs = {"keepdims": 1, "noop_with_empty_axes": 0}
    float_only = False
    axes_input_since = 18   # the opset from which ONNX takes ``axes`` as an input
    # what the op still does to x when ``noop_with_empty_axes`` leaves every axis (the export
    # to an opset without that attribute writes these ops instead)
    pointwise = ("Identity",)
    empty_defined = True    # ONNX defines the reduction of an empty set (0, 1, ±inf)

    def infer(self, ctx):
        t = ctx.type(0)
        if self.float_only:
            ctx.check(t.dtype.kind == "f", f"expected a float input, got {t.dtype}")
        axes_value = ctx.const(1, "axes") if ctx.has(1) else None
        try:
            axes = reduce_axes(axes_value, t.rank, bool(ctx.attrs["noop_with_empty_axes"]))
        except ValueError as e:
            ctx.fail(str(e))
        if axes is None:
            return [t]
        if not self.empty_defined:
            kept = [d for i, d in enumerate(t.shape) if i not in axes]
            ctx.check(0 not in [t.shape[i] for i in axes] or 0 in kept,
                      f"{self.op_type} of an empty set is undefined in ONNX: axes "
                      f"{list(axes)} of {t.shape} include an empty one")
        if ctx.attrs["keepdims"]:
            shape = tuple(1 if i in axes else d for i, d in enumerate(t.shape))
        else:
            shape = tuple(d for i, d in enumerate(t.shape) if i not in axes)
        return [TensorType(t.dtype, shape)]

    def export(self, ctx, node, inputs, outputs, attrs):
        """Before ``axes_input_since``, constant axes become the ``axes`` attribute, and empty
        axes with ``noop_with_empty_axes`` the op's pointwise part alone (``pointwise``)."""
        if ctx.opset >= self.axes_input_since:
            return super().export(ctx, node, inputs, outputs, attrs)
        noop = bool(attrs.pop("noop_with_empty_axes", 0))
        axes = None
        if len(inputs) > 1 and inputs[1]:
            value = ctx.value(inputs[1])
            if value is None:
                raise ModelError(f"{node}: axes computed at run time need opset ≥ "
                                 f"{self.axes_input_since} (exporting at {ctx.opset})")
            axes = [int(a) for a in value.reshape(-1)]
        if not axes:
            if noop:   # no axis reduced, yet the op's pointwise part (|x|, x², log, exp) applies
                x = inputs[0]
                for step, op_type in enumerate(self.pointwise):
                    last = step == len(self.pointwise) - 1
                    y = outputs[0] if last else ctx.fresh(f"{node.name}_{op_type}")
                    name = node.name if last else ctx.fresh(f"{node.name}_{op_type}_node")
                    ctx.add(op_type, [x, x] if op_type == "Mul" else [x], [y], name, {}, node)
                    x = y
                return
            axes = None
        if axes is not None:
            attrs["axes"] = axes
        ctx.add(node.op_type, inputs[:1], outputs, node.name, attrs, node)

    def compute(self, node, inputs):
        x = inputs[0]
        axes_value = inputs[1] if len(inputs) > 1 else None
        axes = reduce_axes(axes_value, x.ndim, bool(node.attrs["noop_with_empty_axes"]))
        if axes is None:   # no axis reduced, yet |x|, x², log, exp apply (as onnx.reference)
            axes = ()
        xw = x.astype(np.float32) if x.dtype == np.float16 else x
        with np.errstate(all="ignore"):
            y = self.fn(xw, axes, bool(node.attrs["keepdims"]))
        return [np.asarray(y).astype(x.dtype)]


@register
class ReduceSum(_Reduce):
    axes_input_since = 13

    @staticmethod
    def fn(x, axes, keep):
        return np.sum(x, axis=axes, keepdims=keep)


@register
class ReduceMean(_Reduce):
    empty_defined = False   # onnxruntime answers 0, onnx.reference and numpy NaN

    @staticmethod
    def fn(x, axes, keep):
        return np.mean(x, axis=axes, keepdims=keep)


def extreme(x, largest: bool):
    """The identity of max (min): what ONNX returns when reducing an empty set."""
    if x.dtype == np.bool_:
        return not largest
    if x.dtype.kind == "f":
        return -np.inf if largest else np.inf
    info = np.iinfo(x.dtype)
    return info.min if largest else info.max


@register
class ReduceMax(_Reduce):
    @staticmethod
    def fn(x, axes, keep):
        return np.max(x, axis=axes, keepdims=keep, initial=extreme(x, True))


@register
class ReduceMin(_Reduce):
    @staticmethod
    def fn(x, axes, keep):
        return np.min(x, axis=axes, keepdims=keep, initial=extreme(x, False))


@register
class ReduceProd(_Reduce):
    @staticmethod
    def fn(x, axes, keep):
        return np.prod(x, axis=axes, keepdims=keep)


@register
class ReduceL1(_Reduce):
    pointwise = ("Abs",)
    @staticmethod
    def fn(x, axes, keep):
        return np.sum(np.abs(x), axis=axes, keepdims=keep)


@register
class ReduceL2(_Reduce):
    pointwise = ("Abs",)
    @staticmethod
    def fn(x, axes, keep):
        return np.sqrt(np.sum(np.square(x.astype(np.float64) if x.dtype.kind in "iu" else x),
                              axis=axes, keepdims=keep))


@register
class ReduceSumSquare(_Reduce):
    pointwise = ("Mul",)
    @staticmethod
    def fn(x, axes, keep):
        return np.sum(np.square(x), axis=axes, keepdims=keep)


@register
class ReduceLogSum(_Reduce):
    pointwise = ("Log",)
    float_only = True

    @staticmethod
    def fn(x, axes, keep):
        return np.log(np.sum(x, axis=axes, keepdims=keep))


@register
class ReduceLogSumExp(_Reduce):
    pointwise = ("Exp", "Log")
    float_only = True

    @staticmethod
    def fn(x, axes, keep):
        m = np.max(x, axis=axes, keepdims=True, initial=-np.inf)
        m = np.where(np.isfinite(m), m, 0)
        s = np.log(np.sum(np.exp(x - m), axis=axes, keepdims=True)) + m
        return s if keep else np.squeeze(s, axis=axes)


# ---- gradients -------------------------------------------------------------------------------
def _reduce_gradient(self, node, grads, g):
    """ReduceSum/ReduceMean: dY given back its reduced axes (keepdims shape) and broadcast to
    X's shape with Expand; ReduceMean divides by the number of elements reduced."""
    out = [None] * len(node.inputs)
    if not g.needs(0):
        return out
    x_shape = g.shape(g.input(0))
    axes_value = g.value(g.input(1)) if g.input(1) else None
    if g.input(1) and axes_value is None:
        g.fail("axes must be a constant")
    axes = reduce_axes(axes_value, len(x_shape), bool(node.attrs["noop_with_empty_axes"]))
    if axes is None:
        out[0] = grads[0]
        return out
    dy = grads[0]
    dtype = g.type(dy).dtype
    if self.op_type == "ReduceMean":
        count = int(np.prod([x_shape[a] for a in axes])) if axes else 1
        dy = g.op("Mul", [dy, g.const(np.array(1.0 / max(count, 1), dtype), "inv_count")])
    kept = tuple(1 if i in axes else d for i, d in enumerate(x_shape))
    dy = g.reshape(dy, kept)
    if kept != x_shape:
        dy = g.op("Expand", [dy, g.const(np.array(x_shape, np.int64), "shape")])
    out[0] = dy
    return out


ReduceSum.gradient = ReduceMean.gradient = _reduce_gradient


# ---- running sums ----------------------------------------------------------------------------
@register
class CumSum(Op):
    """Running sum along one axis (the constant ``axis`` input); ``exclusive`` leaves each
    element out of its own sum, ``reverse`` sums from the end."""
    num_inputs = (2, 2)
    attrs = {"exclusive": 0, "reverse": 0}

    def infer(self, ctx):
        t = ctx.type(0)
        ctx.check(t.dtype.kind in "fiu", f"CumSum takes numbers, got {t.dtype}")
        axis = np.asarray(ctx.const(1, "axis"))
        ctx.check(axis.dtype.kind in "iu" and axis.size == 1 and axis.ndim <= 1,
                  f"axis (input 1) must be one integer, got {axis.dtype} of shape {axis.shape}")
        a = int(axis.reshape(-1)[0])
        ctx.check(t.rank > 0 and -t.rank <= a < t.rank,
                  f"axis {a} is out of range for rank {t.rank}")
        return [t]

    def compute(self, node, inputs):
        x = inputs[0]
        axis = int(np.asarray(inputs[1]).reshape(-1)[0]) % x.ndim
        if node.attrs["reverse"]:
            x = np.flip(x, axis)
        y = np.cumsum(x, axis=axis, dtype=x.dtype)
        if node.attrs["exclusive"] and y.shape[axis]:
            y = np.roll(y, 1, axis=axis)
            y[(slice(None),) * axis + (0,)] = 0
        if node.attrs["reverse"]:
            y = np.flip(y, axis)
        return [np.ascontiguousarray(y)]

    def gradient(self, node, grads, g):
        """dX is the running sum of dY the other way round, with the same ``exclusive``."""
        return [g.op("CumSum", [grads[0], g.input(1)], exclusive=node.attrs["exclusive"],
                     reverse=1 - int(node.attrs["reverse"])), None]


# ---- index of the extreme, and the k extremes ------------------------------------------------
def _one_axis(ctx, t, what: str = "axis") -> int:
    axis = int(ctx.attrs["axis"])
    ctx.check(t.rank > 0, f"expected an input of rank ≥ 1, got a scalar")
    ctx.check(-t.rank <= axis < t.rank, f"{what} {axis} is out of range for rank {t.rank} "
                                        f"(expected {-t.rank}..{t.rank - 1})")
    return axis % t.rank


class _ArgExtreme(Op):
    """The int64 index of the first (``select_last_index=1``: last) extreme along ``axis``."""
    attrs = {"axis": 0, "keepdims": 1, "select_last_index": 0}
    largest = True

    def infer(self, ctx):
        t = ctx.type(0)
        ctx.check(t.dtype.kind in "fiu", f"expected a numeric input, got {t.dtype}")
        axis = _one_axis(ctx, t)
        ctx.check(t.shape[axis] != 0, f"axis {axis} of {t.shape} is empty: it has no "
                                      f"{'maximum' if self.largest else 'minimum'}")
        if ctx.attrs["keepdims"]:
            shape = tuple(1 if i == axis else d for i, d in enumerate(t.shape))
        else:
            shape = tuple(d for i, d in enumerate(t.shape) if i != axis)
        return [TensorType(np.int64, shape)]

    def compute(self, node, inputs):
        x = inputs[0]
        axis = int(node.attrs["axis"]) % x.ndim
        find = np.argmax if self.largest else np.argmin
        if node.attrs["select_last_index"]:
            idx = x.shape[axis] - 1 - find(np.flip(x, axis), axis=axis)
        else:
            idx = find(x, axis=axis)
        if node.attrs["keepdims"]:
            idx = np.expand_dims(idx, axis)
        return [np.asarray(idx, dtype=np.int64)]


@register
class ArgMax(_ArgExtreme):
    largest = True


@register
class ArgMin(_ArgExtreme):
    largest = False


def top_k(x, k: int, axis: int, largest: bool):
    """The k largest (smallest) values along ``axis`` and their int64 indices, in order, equal
    values by ascending index (ONNX's tie rule) — by a stable sort, so any dtype sorts."""
    if largest:
        flipped = np.flip(x, axis)
        order = np.flip(np.argsort(flipped, axis=axis, kind="stable"), axis)
        order = x.shape[axis] - 1 - order
    else:
        order = np.argsort(x, axis=axis, kind="stable")
    order = np.take(order, np.arange(k), axis=axis).astype(np.int64)
    return np.take_along_axis(x, order, axis=axis), order


@register
class TopK(Op):
    """Opset-11 form: ``K`` is a one-element int64 input. A K fed at run time is a value that
    decides the output shape: the Session compiles per value (``NeedsValue``). ``sorted=0``
    leaves the order free in ONNX; ember returns it sorted all the same."""
    attrs = {"axis": -1, "largest": 1, "sorted": 1}
    num_inputs = (2, 2)
    num_outputs = (1, 2)

    def infer(self, ctx):
        t = ctx.type(0)
        ctx.check(t.dtype.kind in "fiu", f"expected a numeric input, got {t.dtype}")
        axis = _one_axis(ctx, t)
        ctx.check(ctx.dtype(1) == np.int64, f"K (input 1) must be int64, got {ctx.dtype(1)}")
        k = np.asarray(ctx.const(1, "K"))
        ctx.check(k.size == 1 and k.ndim <= 1, f"K (input 1) must hold one value, got shape "
                                               f"{k.shape}")
        k = int(k.reshape(-1)[0])
        dim = t.shape[axis]
        ctx.check(k >= 0 and (isinstance(dim, str) or k <= dim),
                  f"K = {k} must be in [0, {dim}] (axis {axis} of {t.shape})")
        shape = tuple(k if i == axis else d for i, d in enumerate(t.shape))
        return [TensorType(t.dtype, shape), TensorType(np.int64, shape)]

    def compute(self, node, inputs):
        x, k = inputs
        axis = int(node.attrs["axis"]) % x.ndim
        k = int(np.asarray(k).reshape(-1)[0])
        if not 0 <= k <= x.shape[axis]:
            raise InputError(f"{node}: K = {k} must be in [0, {x.shape[axis]}] (axis {axis} "
                             f"of {x.shape})")
        return list(top_k(x, k, axis, bool(node.attrs["largest"])))
