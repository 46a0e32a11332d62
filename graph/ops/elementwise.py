"""Broadcasting binary and variadic arithmetic: Add, Sub, Mul, Div, Pow, Sum, Max, Min, Mean,
PRelu. Shapes broadcast numpy-style (multidirectional; PRelu's slope unidirectionally)."""
from __future__ import annotations

import numpy as np

from ..ir import TensorType
from .base import TRAINING_DOMAIN, Op, register


def broadcast_shapes(ctx, shapes) -> tuple:
    """numpy's multidirectional broadcast of shapes that may hold symbolic (str) dims; a
    ShapeError naming the node when two static dims disagree."""
    rank = max(len(s) for s in shapes)
    padded = [(1,) * (rank - len(s)) + tuple(s) for s in shapes]
    out = []
    for axis, dims in enumerate(zip(*padded)):
        static = {int(d) for d in dims if not isinstance(d, str) and int(d) != 1}
        symbolic = [d for d in dims if isinstance(d, str)]
        if len(static) > 1:
            ctx.fail(f"expected shapes that broadcast, got {' and '.join(map(str, shapes))} "
                     f"(axis {axis}: {sorted(static)})")
        if static:
            out.append(static.pop())
        elif symbolic:
            out.append(symbolic[0])
        else:
            out.append(1)
    return tuple(out)


def unidirectional(ctx, target: tuple, shape: tuple, what: str):
    """Check that ``shape`` broadcasts to ``target`` without changing it."""
    ok = len(shape) <= len(target) and broadcast_shapes(ctx, [target, shape]) == tuple(target)
    ctx.check(ok, f"expected {what} of a shape broadcastable to {target}, got {shape}")


def same_dtype(ctx, n: int):
    d0 = ctx.dtype(0)
    for i in range(1, n):
        ctx.check(ctx.dtype(i) == d0, f"expected every input of dtype {d0}, got {ctx.dtype(i)} "
                                      f"for input {i}")
    return d0


class _Binary(Op):
    num_inputs = (2, 2)
    inplace = (0,)

    def infer(self, ctx):
        dtype = same_dtype(ctx, 2)
        return [TensorType(dtype, broadcast_shapes(ctx, [ctx.shape(0), ctx.shape(1)]))]

    def compute(self, node, inputs):
        a, b = inputs
        with np.errstate(all="ignore"):
            y = self.fn(a, b)
        return [np.asarray(y).astype(a.dtype, copy=False)]


@register
class Add(_Binary):
    fn = staticmethod(np.add)
    parameter_inputs = (0, 1)


@register
class Sub(_Binary):
    fn = staticmethod(np.subtract)
    parameter_inputs = (0, 1)


@register
class Mul(_Binary):
    fn = staticmethod(np.multiply)
    parameter_inputs = (0, 1)


@register
class Div(_Binary):
    parameter_inputs = (1,)

    @staticmethod
    def fn(a, b):
        if a.dtype.kind in "iu":
            # ONNX integer division truncates toward zero (numpy's // floors).
            return (a - np.fmod(a, b)) // np.where(b == 0, 1, b)
        return np.true_divide(a, b)


@register
class Pow(_Binary):
    """The exponent may have another dtype than the base; the result keeps the base's."""

    def infer(self, ctx):
        return [TensorType(ctx.dtype(0), broadcast_shapes(ctx, [ctx.shape(0), ctx.shape(1)]))]

    @staticmethod
    def fn(a, b):
        if a.dtype.kind in "iu" and b.dtype.kind in "iu" and not np.all(b >= 0):
            return np.power(a.astype(np.float64), b)
        if a.dtype == np.float16:
            return np.power(a.astype(np.float32), b)
        return np.power(a, b)


class _Variadic(Op):
    num_inputs = (1, None)

    def infer(self, ctx):
        dtype = same_dtype(ctx, ctx.n_inputs)
        return [TensorType(dtype, broadcast_shapes(ctx, [ctx.shape(i)
                                                         for i in range(ctx.n_inputs)]))]

    def compute(self, node, inputs):
        with np.errstate(all="ignore"):
            y = inputs[0]
            for x in inputs[1:]:
                y = self.fn(y, x)
            y = self.finish(y, len(inputs))
        shape = np.broadcast_shapes(*(x.shape for x in inputs))
        return [np.array(np.broadcast_to(y, shape), dtype=inputs[0].dtype)]

    def finish(self, y, n):
        return y


@register
class Sum(_Variadic):
    fn = staticmethod(np.add)


@register
class Max(_Variadic):
    fn = staticmethod(np.maximum)


@register
class Min(_Variadic):
    fn = staticmethod(np.minimum)


@register
class Mean(_Variadic):
    fn = staticmethod(np.add)

    def compute(self, node, inputs):
        dt = inputs[0].dtype
        wide = [x.astype(np.float32) if dt == np.float16 else x for x in inputs]
        y = super().compute(node, wide)[0]
        return [y.astype(dt, copy=False)]

    def finish(self, y, n):
        return y / n


@register
class PRelu(Op):
    """y = x if x ≥ 0 else slope·x, slope broadcast unidirectionally to x."""
    num_inputs = (2, 2)
    parameter_inputs = (1,)
    inplace = (0,)

    def infer(self, ctx):
        same_dtype(ctx, 2)
        unidirectional(ctx, ctx.shape(0), ctx.shape(1), "slope")
        return [ctx.type(0)]

    def compute(self, node, inputs):
        x, slope = inputs
        return [np.where(x < 0, x * slope, x).astype(x.dtype, copy=False)]


# ---- gradients -------------------------------------------------------------------------------
def sum_to_shape(x, shape):
    """``x`` summed down to ``shape`` under numpy broadcasting (float64 accumulation)."""
    shape = tuple(int(d) for d in shape)
    lead = x.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(lead + i for i, d in enumerate(shape)
                                      if d == 1 and x.shape[lead + i] != 1)
    y = np.sum(x.astype(np.float64), axis=axes, keepdims=True) if axes else x
    return y.reshape(shape).astype(x.dtype)


@register
class SumToShape(Op):
    """The adjoint of broadcasting: dY summed down to ``shape`` (right-aligned; size-1 dims
    summed with keepdims)."""
    domain = TRAINING_DOMAIN
    attrs = {"shape": []}

    def infer(self, ctx):
        dy = tuple(ctx.shape(0))
        shape = tuple(int(d) for d in ctx.attrs["shape"])
        ok = len(shape) <= len(dy) and all(
            s in (1, d) for s, d in zip(shape, dy[len(dy) - len(shape):]))
        ctx.check(ok, f"expected a shape {shape} that broadcasts to dY's {dy}")
        ctx.check(ctx.dtype(0).kind == "f", f"expected a float dY, got {ctx.dtype(0)}")
        return [TensorType(ctx.dtype(0), shape)]

    def compute(self, node, inputs):
        return [sum_to_shape(inputs[0], node.attrs["shape"])]


@register
class BiasGrad(Op):
    """Gradient of a bias added along ``axis``: dY summed over every other axis."""
    domain = TRAINING_DOMAIN
    attrs = {"axis": 1}

    def infer(self, ctx):
        dy = tuple(ctx.shape(0))
        r = len(dy)
        axis = int(ctx.attrs["axis"])
        ctx.check(-r <= axis < r, f"expected axis in [{-r}, {r - 1}] for dY {dy}, got {axis}")
        ctx.check(ctx.dtype(0).kind == "f", f"expected a float dY, got {ctx.dtype(0)}")
        return [TensorType(ctx.dtype(0), (dy[axis % r],))]

    def compute(self, node, inputs):
        dy = inputs[0]
        axis = int(node.attrs["axis"]) % dy.ndim
        others = tuple(i for i in range(dy.ndim) if i != axis)
        return [np.sum(dy.astype(np.float64), axis=others).astype(dy.dtype)]


def _sum_grads(g, dy, n):
    return [g.sum_to(dy, g.shape(g.input(i))) if g.needs(i) else None for i in range(n)]


def _add_gradient(self, node, grads, g):
    return _sum_grads(g, grads[0], 2)


def _sub_gradient(self, node, grads, g):
    da, db = _sum_grads(g, grads[0], 2)
    return [da, g.op("Neg", [db]) if db is not None else None]


def _mul_gradient(self, node, grads, g):
    a, b = g.input(0), g.input(1)
    dy = grads[0]
    da = g.sum_to(g.op("Mul", [dy, b]), g.shape(a)) if g.needs(0) else None
    db = g.sum_to(g.op("Mul", [dy, a]), g.shape(b)) if g.needs(1) else None
    return [da, db]


def _div_gradient(self, node, grads, g):
    """y = a/b: da = dy/b, db = −dy·y/b."""
    a, b = g.input(0), g.input(1)
    dy = grads[0]
    da = g.sum_to(g.op("Div", [dy, b]), g.shape(a)) if g.needs(0) else None
    db = None
    if g.needs(1):
        t = g.op("Div", [g.op("Mul", [dy, g.output(0)]), b])
        db = g.sum_to(g.op("Neg", [t]), g.shape(b))
    return [da, db]


def _variadic_sum_gradient(self, node, grads, g):
    return _sum_grads(g, grads[0], len(node.inputs))


Add.gradient = _add_gradient
Sub.gradient = _sub_gradient
Mul.gradient = _mul_gradient
Div.gradient = _div_gradient
Sum.gradient = _variadic_sum_gradient


# ---- remainder, logic and float classification -----------------------------------------------
@register
class Mod(_Binary):
    """``fmod=0``: the remainder takes the divisor's sign (numpy's ``mod``); ``fmod=1``: the
    dividend's (C's ``fmod``). Integer division by zero gives 0 (ONNX leaves it undefined)."""
    attrs = {"fmod": 0}
    inplace = ()

    def infer(self, ctx):
        ctx.check(int(ctx.attrs["fmod"]) in (0, 1),
                  f"expected attribute fmod 0 or 1, got {ctx.attrs['fmod']!r}")
        ctx.check(ctx.dtype(0).kind in "fiu", f"expected numeric inputs, got {ctx.dtype(0)}")
        return super().infer(ctx)

    def export(self, ctx, node, inputs, outputs, attrs):
        """Before opset 28 ONNX allows only ``fmod=1`` on floats: a float ``fmod=0`` is written
        as that remainder moved by the divisor where it is non-zero and its sign differs from
        the divisor's (numpy's own definition of ``mod``)."""
        if ctx.opset >= 28 or int(attrs.get("fmod", 0)) or ctx.dtype(inputs[0]).kind != "f":
            return super().export(ctx, node, inputs, outputs, attrs)
        a, b = inputs
        zero = ctx.const(f"{node.name}_zero", np.array(0, ctx.dtype(a)))

        def step(op, ins, what, **kw):
            out = ctx.fresh(f"{outputs[0]}_{what}")
            ctx.add(op, ins, [out], ctx.fresh(f"{node.name}/{what}"), kw, node)
            return out

        r = step("Mod", [a, b], "fmod", fmod=1)
        signs_differ = step("Xor", [step("Less", [r, zero], "r_negative"),
                                    step("Less", [b, zero], "b_negative")], "signs_differ")
        nonzero = step("Not", [step("Equal", [r, zero], "r_zero")], "r_nonzero")
        moved = step("And", [nonzero, signs_differ], "moved")
        ctx.add("Where", [moved, step("Add", [r, b], "r_plus_b"), r], outputs, node.name, {},
                node)

    def compute(self, node, inputs):
        a, b = inputs
        fn = np.fmod if int(node.attrs["fmod"]) else np.mod
        with np.errstate(all="ignore"):
            if a.dtype == np.float16:
                y = fn(a.astype(np.float32), b.astype(np.float32))
            else:
                y = fn(a, b)
        return [np.asarray(y).astype(a.dtype, copy=False)]


class _Logical(_Binary):
    """Broadcasting boolean logic: bool in, bool out."""

    def infer(self, ctx):
        for i in (0, 1):
            ctx.check(ctx.dtype(i) == np.bool_, f"expected bool inputs, got {ctx.dtype(i)} "
                                                f"for input {i}")
        return super().infer(ctx)


@register
class And(_Logical):
    fn = staticmethod(np.logical_and)


@register
class Or(_Logical):
    fn = staticmethod(np.logical_or)


@register
class Xor(_Logical):
    fn = staticmethod(np.logical_xor)


class _Classify(Op):
    """A float tensor in, a bool tensor of the same shape out."""

    def infer(self, ctx):
        ctx.check(ctx.dtype(0).kind == "f", f"expected a floating-point input, got "
                                            f"{ctx.dtype(0)}")
        return [TensorType(np.bool_, ctx.shape(0))]


@register
class IsNaN(_Classify):
    def compute(self, node, inputs):
        return [np.isnan(inputs[0])]


@register
class IsInf(_Classify):
    """``detect_positive``/``detect_negative`` choose which infinities count."""
    attrs = {"detect_negative": 1, "detect_positive": 1}

    def compute(self, node, inputs):
        x = inputs[0]
        pos = np.isposinf(x) if node.attrs["detect_positive"] else np.zeros(x.shape, np.bool_)
        neg = np.isneginf(x) if node.attrs["detect_negative"] else np.zeros(x.shape, np.bool_)
        return [pos | neg]
