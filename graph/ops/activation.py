"""Unary activations and elementwise math (Relu … Reciprocal), plus the fused-activation helper
that Conv/Gemm/MatMul apply to their output after a pass folds a following activation into them.
"""
from __future__ import annotations

import numpy as np

from .base import Op, register


def _f(x):
    """The dtype to compute in: float16 is evaluated in float32 (numpy's float16 transcendental
    functions lose more precision than ONNX runtimes do)."""
    return x.astype(np.float32) if x.dtype == np.float16 else x


def stable_sigmoid(x):
    """1/(1+e^-x) without overflow warnings for large |x|."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


class _Unary(Op):
    """Same shape and dtype out as in; the kernel may write over its input."""
    inplace = (0,)
    float_only = True

    def infer(self, ctx):
        t = ctx.type(0)
        if self.float_only:
            ctx.check(t.dtype.kind == "f", f"expected a floating-point input, got {t.dtype}")
        return [t]

    def compute(self, node, inputs):
        x = inputs[0]
        with np.errstate(all="ignore"):
            y = self.fn(_f(x) if self.float_only else x, node.attrs)
        return [np.asarray(y).astype(x.dtype, copy=False)]

    def fn(self, x, attrs):  # pragma: no cover - every subclass defines it
        raise NotImplementedError


@register
class Relu(_Unary):
    float_only = False

    def fn(self, x, a):
        return np.maximum(x, x.dtype.type(0))


@register
class LeakyRelu(_Unary):
    attrs = {"alpha": 0.01}

    def fn(self, x, a):
        return np.where(x < 0, x * a["alpha"], x)


@register
class Elu(_Unary):
    attrs = {"alpha": 1.0}

    def fn(self, x, a):
        return np.where(x < 0, a["alpha"] * np.expm1(x), x)


@register
class Selu(_Unary):
    attrs = {"alpha": 1.67326319217681884765625, "gamma": 1.05070102214813232421875}

    def fn(self, x, a):
        return np.where(x <= 0, a["gamma"] * a["alpha"] * np.expm1(x), a["gamma"] * x)


@register
class Sigmoid(_Unary):
    def fn(self, x, a):
        return stable_sigmoid(x)


@register
class HardSigmoid(_Unary):
    attrs = {"alpha": 0.2, "beta": 0.5}

    def fn(self, x, a):
        return np.clip(x * a["alpha"] + a["beta"], 0, 1)


@register
class HardSwish(_Unary):
    def fn(self, x, a):
        return x * np.clip(x / 6 + 0.5, 0, 1)


@register
class Tanh(_Unary):
    def fn(self, x, a):
        return np.tanh(x)


@register
class Softplus(_Unary):
    def fn(self, x, a):
        return np.logaddexp(0, x)


@register
class Exp(_Unary):
    def fn(self, x, a):
        return np.exp(x)


@register
class Log(_Unary):
    def fn(self, x, a):
        return np.log(x)


@register
class Sqrt(_Unary):
    def fn(self, x, a):
        return np.sqrt(x)


@register
class Reciprocal(_Unary):
    def fn(self, x, a):
        return 1 / x


@register
class Neg(_Unary):
    float_only = False

    def fn(self, x, a):
        return np.negative(x)


@register
class Abs(_Unary):
    float_only = False

    def fn(self, x, a):
        return np.abs(x)


@register
class Clip(Op):
    """min and max are optional scalar inputs (opset ≥ 11); min > max gives max everywhere."""
    num_inputs = (1, 3)
    inplace = (0,)

    def infer(self, ctx):
        t = ctx.type(0)
        for i, what in ((1, "min"), (2, "max")):
            if ctx.has(i):
                b = ctx.type(i)
                ctx.check(b.is_static and b.size == 1,
                          f"expected {what} to be a scalar, got shape {b.shape}")
                ctx.check(b.dtype == t.dtype, f"expected {what} of dtype {t.dtype}, got {b.dtype}")
        return [t]

    def compute(self, node, inputs):
        x = inputs[0]
        y = x
        if len(inputs) > 1 and inputs[1] is not None:
            y = np.maximum(y, inputs[1].reshape(()))
        if len(inputs) > 2 and inputs[2] is not None:
            y = np.minimum(y, inputs[2].reshape(()))
        return [np.array(y, dtype=x.dtype, copy=True)]


# ---- fused activations ---------------------------------------------------------------------

ACTIVATIONS = ("", "Relu", "LeakyRelu", "Clip", "Sigmoid", "Tanh", "SiLU", "HardSwish")


def apply_activation(y, name: str, alpha: float = 0.0, beta: float = 0.0):
    """Apply the fused activation of a Conv/Gemm/MatMul (its ``activation`` attribute) to ``y``;
    returns an array of ``y``'s dtype. Clip uses alpha=min, beta=max; LeakyRelu uses alpha."""
    if not name:
        return y
    x = _f(y)
    with np.errstate(all="ignore"):
        if name == "Relu":
            r = np.maximum(x, 0)
        elif name == "LeakyRelu":
            r = np.where(x < 0, x * alpha, x)
        elif name == "Clip":
            r = np.minimum(np.maximum(x, alpha), beta)
        elif name == "Sigmoid":
            r = stable_sigmoid(x)
        elif name == "Tanh":
            r = np.tanh(x)
        elif name == "SiLU":
            r = x * stable_sigmoid(x)
        elif name == "HardSwish":
            r = x * np.clip(x / 6 + 0.5, 0, 1)
        else:
            raise ValueError(f"unknown fused activation {name!r}; expected one of {ACTIVATIONS}")
    return np.asarray(r).astype(y.dtype, copy=False)


def _clip_params(node, consts):
    """Clip is fusable only when its bounds are compile-time constants."""
    bounds = []
    for i, default in ((1, float("-inf")), (2, float("inf"))):
        name = node.input(i)
        if not name:
            bounds.append(default)
        elif name in consts:
            bounds.append(float(np.asarray(consts[name]).reshape(())))
        else:
            return None
    return tuple(bounds)


# op_type (which is also the fused activation name) → fn(node, consts) -> (alpha, beta), or
# None when this node cannot be fused (e.g. Clip bounds computed at run time). ``consts`` maps
# value names to compile-time arrays. SiLU has no ONNX op: a pass matches x*Sigmoid(x) itself.
FUSABLE = {
    "Relu": lambda node, consts: (0.0, 0.0),
    "LeakyRelu": lambda node, consts: (float(node.attrs.get("alpha", 0.01)), 0.0),
    "Clip": _clip_params,
    "Sigmoid": lambda node, consts: (0.0, 0.0),
    "Tanh": lambda node, consts: (0.0, 0.0),
    "HardSwish": lambda node, consts: (0.0, 0.0),
}
