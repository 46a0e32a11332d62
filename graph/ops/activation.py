"""Unary activations and elementwise math (Relu … Reciprocal, Erf, Gelu), plus the
fused-activation helper that Conv/Gemm/MatMul/Add apply to their output after a pass folds a
following activation into them, and the inference-only fused ops the pattern passes
(``graph.patterns``) create in ``FUSED_DOMAIN``.
"""
from __future__ import annotations

import math

import numpy as np

from ..ir import TensorType
from .base import REGISTRY, TRAINING_DOMAIN, Op, register
from .elementwise import broadcast_shapes, same_dtype


def _f(x):
    """The dtype to compute in: float16 is evaluated in float32 (numpy's float16 transcendental
    functions lose more precision than ONNX runtimes do)."""
    return x.astype(np.float32) if x.dtype == np.float16 else x


_ERF = np.frompyfunc(math.erf, 1, 1)
GELU_TANH_K = math.sqrt(2 / math.pi)   # the tanh form: 0.5·x·(1 + tanh(K·(x + C·x³)))
GELU_TANH_C = 0.044715

# Ember's domain for inference ops the passes fuse from several ONNX nodes: SiLU (x·σ(x)) and an
# Add carrying a fused activation. Unlike the training domain, export writes each of them back
# as the standard nodes it came from; the importer refuses the domain like any other.
FUSED_DOMAIN = "ai.ember.fused"


def erf(x):
    """erf elementwise in float64 (numpy has none; math.erf per element, a reference only)."""
    return _ERF(np.asarray(x, np.float64)).astype(np.float64)


def gelu(x, approximate: str = "none"):
    """GELU in float64: x·Φ(x), or the tanh approximation."""
    x = np.asarray(x, np.float64)
    if approximate == "tanh":
        return 0.5 * x * (1 + np.tanh(GELU_TANH_K * (x + GELU_TANH_C * x ** 3)))
    return 0.5 * x * (1 + erf(x / math.sqrt(2)))


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

    def fused_params(self, node, consts):
        """(alpha, beta) the fused epilogue of a Conv/Gemm/MatMul applies for ``node`` (the
        passes fuse only ops whose class says ``fusable``), or None when this node cannot be
        fused. ``consts`` maps value names to compile-time arrays."""
        return (0.0, 0.0)

    def export_fused(self, ctx, source, x: str, y: str, alpha: float, beta: float) -> None:
        """Write this activation, fused into ``source`` with parameters (alpha, beta), back as
        its own ONNX node reading ``x`` and writing ``y`` (the export of a fused Conv/Gemm)."""
        ctx.add(self.op_type, [x], [y], ctx.fresh(f"{source.name}/{self.op_type}"), {}, source)

    def fn(self, x, attrs):  # pragma: no cover - every subclass defines it
        raise NotImplementedError


@register
class Relu(_Unary):
    fusable = True
    float_only = False

    def fn(self, x, a):
        return np.maximum(x, x.dtype.type(0))


@register
class LeakyRelu(_Unary):
    fusable = True
    attrs = {"alpha": 0.01}

    def fused_params(self, node, consts):
        return (float(node.attrs.get("alpha", 0.01)), 0.0)

    def export_fused(self, ctx, source, x, y, alpha, beta):
        ctx.add("LeakyRelu", [x], [y], ctx.fresh(f"{source.name}/LeakyRelu"),
                {"alpha": float(alpha)}, source)

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
    fusable = True
    def fn(self, x, a):
        return stable_sigmoid(x)


@register
class HardSigmoid(_Unary):
    fusable = True
    attrs = {"alpha": 0.2, "beta": 0.5}

    def fused_params(self, node, consts):
        return (float(node.attrs.get("alpha", 0.2)), float(node.attrs.get("beta", 0.5)))

    def export_fused(self, ctx, source, x, y, alpha, beta):
        ctx.add("HardSigmoid", [x], [y], ctx.fresh(f"{source.name}/HardSigmoid"),
                {"alpha": float(alpha), "beta": float(beta)}, source)

    def fn(self, x, a):
        return np.clip(x * a["alpha"] + a["beta"], 0, 1)


@register
class HardSwish(_Unary):
    fusable = True
    def fn(self, x, a):
        return x * np.clip(x / 6 + 0.5, 0, 1)


@register
class Erf(_Unary):
    def fn(self, x, a):
        return erf(x)


@register
class Gelu(_Unary):
    """ONNX opset 20: approximate "none" (x·Φ(x)) or "tanh". Fused, the approximation is the
    epilogue's alpha: 0 for "none", 1 for "tanh"."""
    fusable = True
    attrs = {"approximate": "none"}
    APPROXIMATIONS = ("none", "tanh")

    def infer(self, ctx):
        ctx.check(ctx.attrs["approximate"] in self.APPROXIMATIONS,
                  f"expected attribute approximate among {self.APPROXIMATIONS}, got "
                  f"{ctx.attrs['approximate']!r}")
        return super().infer(ctx)

    def fused_params(self, node, consts):
        return (float(node.attrs.get("approximate", "none") == "tanh"), 0.0)

    def export(self, ctx, node, inputs, outputs, attrs):
        self.export_fused(ctx, node, inputs[0], outputs[0],
                          float(attrs.get("approximate", "none") == "tanh"), 0.0)

    def export_fused(self, ctx, source, x, y, alpha, beta):
        """Gelu from opset 20; below it, the formula written out with Erf or Tanh."""
        approximate = "tanh" if alpha else "none"
        if ctx.opset >= 20:
            ctx.add("Gelu", [x], [y], ctx.fresh(f"{source.name}/Gelu"),
                    {"approximate": approximate}, source)
            return
        dt = ctx.dtype(y)

        def step(op, ins, what):
            out = ctx.fresh(f"{y}_gelu_{what}")
            ctx.add(op, ins, [out], ctx.fresh(f"{source.name}/Gelu_{what}"), {}, source)
            return out

        def const(what, v):
            return ctx.const(f"{source.name}_gelu_{what}", np.array(v, dt))

        if approximate == "none":
            inner = step("Erf", [step("Div", [x, const("sqrt2", math.sqrt(2))], "scaled")], "erf")
        else:
            cube = step("Mul", [step("Mul", [x, x], "square"), x], "cube")
            poly = step("Add", [x, step("Mul", [cube, const("c", GELU_TANH_C)], "cubic")], "poly")
            inner = step("Tanh", [step("Mul", [poly, const("k", GELU_TANH_K)], "scaled")], "tanh")
        gate = step("Add", [inner, const("one", 1.0)], "gate")
        half = step("Mul", [x, const("half", 0.5)], "half")
        ctx.add("Mul", [half, gate], [y], ctx.fresh(f"{source.name}/Gelu"), {}, source)

    def fn(self, x, a):
        return gelu(x, a["approximate"])


@register
class Tanh(_Unary):
    fusable = True
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
    fusable = True
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

    def fused_params(self, node, consts):
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

    def export_fused(self, ctx, source, x, y, alpha, beta):
        """The fused bounds (alpha = min, beta = max) become constant inputs; an infinite one is
        left absent."""
        dt = ctx.dtype(y)
        lo = "" if alpha == -np.inf else ctx.const(f"{source.name}_clip_min", np.array(alpha, dt))
        hi = "" if beta == np.inf else ctx.const(f"{source.name}_clip_max", np.array(beta, dt))
        ctx.add("Clip", [x, lo, hi], [y], ctx.fresh(f"{source.name}/Clip"), {}, source)

    def compute(self, node, inputs):
        x = inputs[0]
        y = x
        if len(inputs) > 1 and inputs[1] is not None:
            y = np.maximum(y, inputs[1].reshape(()))
        if len(inputs) > 2 and inputs[2] is not None:
            y = np.minimum(y, inputs[2].reshape(()))
        return [np.array(y, dtype=x.dtype, copy=True)]


# ---- fused activations ---------------------------------------------------------------------

ACTIVATIONS = ("", "Relu", "LeakyRelu", "Clip", "Sigmoid", "Tanh", "SiLU", "HardSwish",
               "HardSigmoid", "Gelu")


def check_activation(ctx):
    ctx.check(ctx.attrs["activation"] in ACTIVATIONS,
              f"expected a fused activation among {ACTIVATIONS[1:]}, "
              f"got {ctx.attrs['activation']!r}")


def apply_activation(y, name: str, alpha: float = 0.0, beta: float = 0.0):
    """Apply the fused activation of a Conv/Gemm/MatMul (its ``activation`` attribute) to ``y``;
    returns an array of ``y``'s dtype. Clip uses alpha=min, beta=max; LeakyRelu uses alpha;
    HardSigmoid alpha·x + beta; Gelu alpha = 0 for the exact form, 1 for the tanh form."""
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
        elif name == "HardSigmoid":
            r = np.clip(x * alpha + beta, 0, 1)
        elif name == "Gelu":
            r = gelu(x, "tanh" if alpha else "none")
        else:
            raise ValueError(f"unknown fused activation {name!r}; expected one of {ACTIVATIONS}")
    return np.asarray(r).astype(y.dtype, copy=False)


@register
class SiLU(_Unary):
    """x·σ(x), the fused form of ``Mul(x, Sigmoid(x))`` (no ONNX op names it before opset 24's
    Swish); export writes it back as Sigmoid + Mul."""
    domain = FUSED_DOMAIN
    fusable = True

    def export(self, ctx, node, inputs, outputs, attrs):
        self.export_fused(ctx, node, inputs[0], outputs[0], 0.0, 0.0)

    def export_fused(self, ctx, source, x, y, alpha, beta):
        s = ctx.fresh(f"{y}_sigmoid")
        ctx.add("Sigmoid", [x], [s], ctx.fresh(f"{source.name}/SiLU_sigmoid"), {}, source)
        ctx.add("Mul", [x, s], [y], ctx.fresh(f"{source.name}/SiLU_mul"), {}, source)

    def fn(self, x, a):
        return x * stable_sigmoid(x)


@register
class FusedAdd(Op):
    """ONNX Add followed by a fused activation (the ``activation`` attributes Conv/Gemm/MatMul
    carry): the residual Add + Relu of a ResNet in one pass over memory. Export writes Add, then
    the activation's own node."""
    op_type = "Add"
    domain = FUSED_DOMAIN
    num_inputs = (2, 2)
    inplace = (0, 1)
    attrs = {"activation": "", "activation_alpha": 0.0, "activation_beta": 0.0}

    def infer(self, ctx):
        check_activation(ctx)
        dtype = same_dtype(ctx, 2)
        return [TensorType(dtype, broadcast_shapes(ctx, [ctx.shape(0), ctx.shape(1)]))]

    def compute(self, node, inputs):
        a, b = inputs
        with np.errstate(all="ignore"):
            y = np.add(a, b)
        at = node.attrs
        return [np.asarray(apply_activation(np.asarray(y, a.dtype), at["activation"],
                                            at["activation_alpha"], at["activation_beta"]))]


# op_type (which is also the fused activation name) → fn(node, consts) -> (alpha, beta) or None,
# derived from the ops whose class says ``fusable`` (SiLU's op is ember's fused one).
FUSABLE = {t: op.fused_params for (d, t), op in REGISTRY.items()
           if d in ("", FUSED_DOMAIN) and getattr(op, "fusable", False)}


# ---- gradients -------------------------------------------------------------------------------
# Activations whose derivative ActivationGrad reads from the forward output Y (the rest read X).
FROM_OUTPUT = ("Relu", "Sigmoid", "Tanh")
GRAD_ACTIVATIONS = FROM_OUTPUT + ("LeakyRelu", "Elu", "Clip", "HardSigmoid", "HardSwish",
                                  "Softplus", "Erf", "Gelu")


def activation_grad(dy, t, name: str, alpha: float, beta: float):
    """dX of activation ``name`` given dY and T (Y or X, see FROM_OUTPUT), computed in the
    widest of float64 and T's dtype."""
    d, t = dy.astype(np.float64), t.astype(np.float64)
    if name == "Relu":
        r = d * (t > 0)
    elif name == "Sigmoid":
        r = d * t * (1 - t)
    elif name == "Tanh":
        r = d * (1 - t * t)
    elif name == "LeakyRelu":
        r = np.where(t > 0, d, alpha * d)
    elif name == "Elu":
        r = np.where(t > 0, d, d * alpha * np.exp(np.minimum(t, 0)))
    elif name == "Clip":
        r = d * ((t >= alpha) & (t <= beta))
    elif name == "HardSigmoid":
        u = alpha * t + beta
        r = np.where((u > 0) & (u < 1), alpha * d, 0.0)
    elif name == "HardSwish":
        r = np.where(t < -3, 0.0, np.where(t > 3, d, d * (2 * t + 3) / 6))
    elif name == "Softplus":
        r = d * stable_sigmoid(t)
    elif name == "Erf":
        r = d * (2 / math.sqrt(math.pi)) * np.exp(-t * t)
    elif name == "Gelu" and alpha:
        th = np.tanh(GELU_TANH_K * (t + GELU_TANH_C * t ** 3))
        r = d * (0.5 * (1 + th) + 0.5 * t * (1 - th * th) * GELU_TANH_K
                 * (1 + 3 * GELU_TANH_C * t * t))
    elif name == "Gelu":
        r = d * (0.5 * (1 + erf(t / math.sqrt(2))) + t * np.exp(-0.5 * t * t)
                 / math.sqrt(2 * math.pi))
    else:
        raise ValueError(f"unknown activation {name!r}")
    return r


@register
class ActivationGrad(Op):
    """dX of a unary activation from dY and T: T is the forward output Y for Relu, Sigmoid and
    Tanh, the forward input X otherwise (alpha/beta as the forward op reads them; Gelu: alpha 1
    for the tanh form)."""
    domain = TRAINING_DOMAIN
    num_inputs = (2, 2)
    attrs = {"activation": "Relu", "alpha": 0.0, "beta": 0.0}
    inplace = (0,)

    def infer(self, ctx):
        dy, t = ctx.type(0), ctx.type(1)
        ctx.check(ctx.attrs["activation"] in GRAD_ACTIVATIONS,
                  f"expected activation among {GRAD_ACTIVATIONS}, got "
                  f"{ctx.attrs['activation']!r}")
        ctx.check(dy.dtype.kind == "f" and dy.dtype == t.dtype,
                  f"expected float dY and T of one dtype, got {dy.dtype} and {t.dtype}")
        ctx.check(tuple(dy.shape) == tuple(t.shape),
                  f"expected dY and T of one shape, got {dy.shape} and {t.shape}")
        return [dy]

    def compute(self, node, inputs):
        a = node.attrs
        with np.errstate(all="ignore"):
            r = activation_grad(inputs[0], inputs[1], a["activation"], float(a["alpha"]),
                                float(a["beta"]))
        return [r.astype(inputs[0].dtype)]


def _unary_grad(self, node, grads, g):
    """Shared rule of the unary activations: one ActivationGrad, given the forward op's alpha
    and beta where it has them."""
    if grads[0] is None or not g.needs(0):
        return [None]
    name = node.op_type
    t = g.output(0) if name in FROM_OUTPUT else g.input(0)
    alpha, beta = (float(node.attrs[k]) if k in self.attrs else 0.0 for k in ("alpha", "beta"))
    return [g.op("ActivationGrad", [grads[0], t], activation=name, alpha=alpha, beta=beta)]


for _cls in (Relu, Sigmoid, Tanh, HardSwish, Softplus, LeakyRelu, Elu, HardSigmoid, Erf):
    _cls.gradient = _unary_grad


def _gelu_gradient(self, node, grads, g):
    if grads[0] is None or not g.needs(0):
        return [None]
    alpha = float(node.attrs.get("approximate", "none") == "tanh")
    return [g.op("ActivationGrad", [grads[0], g.input(0)], activation="Gelu", alpha=alpha,
                 beta=0.0)]


Gelu.gradient = _gelu_gradient


def _clip_gradient(self, node, grads, g):
    """Passes dY where min ≤ x ≤ max; the bounds must be constants and get no gradient."""
    if grads[0] is None or not g.needs(0):
        return [None] * len(node.inputs)
    bounds = self.fused_params(node, g.known)
    if bounds is None:
        g.fail("Clip bounds must be constants")
    dx = g.op("ActivationGrad", [grads[0], g.input(0)], activation="Clip",
              alpha=float(bounds[0]), beta=float(bounds[1]))
    return [dx] + [None] * (len(node.inputs) - 1)


Clip.gradient = _clip_gradient


def _neg_gradient(self, node, grads, g):
    return [g.op("Neg", [grads[0]]) if grads[0] is not None and g.needs(0) else None]


Neg.gradient = _neg_gradient


def fused_activation_grad(node, dy: str, g) -> str:
    """dY before the fused activation of a Conv/Gemm/MatMul node, from its output Y. Only
    activations whose derivative Y determines are supported (LeakyRelu needs alpha > 0)."""
    name = node.attrs.get("activation", "")
    if not name:
        return dy
    alpha = float(node.attrs.get("activation_alpha", 0.0))
    if name not in FROM_OUTPUT and not (name == "LeakyRelu" and alpha > 0):
        g.fail(f"fused activation {name!r} cannot be differentiated from the output; "
               f"differentiate the graph before fusing")
    return g.op("ActivationGrad", [dy, g.output(0)], activation=name, alpha=alpha, beta=0.0)


def _exp_gradient(self, node, grads, g):       # d eˣ = eˣ
    return [g.op("Mul", [grads[0], g.output(0)])]


def _log_gradient(self, node, grads, g):       # d log x = 1/x
    return [g.op("Div", [grads[0], g.input(0)])]


def _sqrt_gradient(self, node, grads, g):      # d √x = 1/(2√x)
    two = g.const(np.array(2.0, g.type(node.outputs[0]).dtype), "two")
    return [g.op("Div", [grads[0], g.op("Mul", [g.output(0), two])])]


def _reciprocal_gradient(self, node, grads, g):  # d 1/x = −1/x²
    y = g.output(0)
    return [g.op("Neg", [g.op("Mul", [grads[0], g.op("Mul", [y, y])])])]


Exp.gradient, Log.gradient = _exp_gradient, _log_gradient
Sqrt.gradient, Reciprocal.gradient = _sqrt_gradient, _reciprocal_gradient


# ---- rounding, trigonometry and the rarer activations ------------------------------------------
# Floor/Ceil/Round/Sign are flat almost everywhere: their gradient is zero where defined, which
# autodiff would only ever need to propagate as "nothing", so they keep ``gradient = None``.
@register
class Floor(_Unary):
    def fn(self, x, a):
        return np.floor(x)


@register
class Ceil(_Unary):
    def fn(self, x, a):
        return np.ceil(x)


@register
class Round(_Unary):
    """Halves round to the even neighbour (ONNX's rule, numpy's ``round``)."""
    def fn(self, x, a):
        return np.round(x)


@register
class Sign(_Unary):
    float_only = False

    def infer(self, ctx):
        ctx.check(ctx.dtype(0).kind in "fiu", f"expected a numeric input, got {ctx.dtype(0)}")
        return super().infer(ctx)

    def fn(self, x, a):
        return np.sign(x)


def _trig(name: str, function):
    """A float-only unary op applying the numpy function ``function``."""
    cls = type(name, (_Unary,), {"fn": lambda self, x, a: function(x), "__module__": __name__,
                                 "__doc__": f"ONNX {name}: numpy's {function.__name__}."})
    return register(cls)


Sin = _trig("Sin", np.sin)
Cos = _trig("Cos", np.cos)
Tan = _trig("Tan", np.tan)
Asin = _trig("Asin", np.arcsin)
Acos = _trig("Acos", np.arccos)
Atan = _trig("Atan", np.arctan)
Sinh = _trig("Sinh", np.sinh)
Cosh = _trig("Cosh", np.cosh)
Asinh = _trig("Asinh", np.arcsinh)
Acosh = _trig("Acosh", np.arccosh)
Atanh = _trig("Atanh", np.arctanh)


@register
class Softsign(_Unary):
    def fn(self, x, a):
        return x / (1 + np.abs(x))


@register
class ThresholdedRelu(_Unary):
    """y = x where x > alpha, else 0."""
    attrs = {"alpha": 1.0}

    def fn(self, x, a):
        return np.where(x > a["alpha"], x, 0)


@register
class Celu(_Unary):
    """y = max(0, x) + min(0, alpha·(exp(x/alpha) − 1)); alpha must not be 0."""
    attrs = {"alpha": 1.0}

    def infer(self, ctx):
        ctx.check(float(ctx.attrs["alpha"]) != 0, "attribute alpha must not be 0")
        return super().infer(ctx)

    def fn(self, x, a):
        alpha = float(a["alpha"])
        return np.maximum(x, 0) + np.minimum(0, alpha * np.expm1(x / alpha))


@register
class Mish(_Unary):
    """y = x·tanh(softplus(x))."""
    def fn(self, x, a):
        return x * np.tanh(np.logaddexp(0, x))


@register
class Shrink(_Unary):
    """y = x − bias where x > lambd, x + bias where x < −lambd, else 0 (any numeric dtype)."""
    float_only = False
    attrs = {"lambd": 0.5, "bias": 0.0}

    def infer(self, ctx):
        ctx.check(ctx.dtype(0).kind in "fiu", f"expected a numeric input, got {ctx.dtype(0)}")
        return super().infer(ctx)

    def fn(self, x, a):
        lambd, bias = float(a["lambd"]), float(a["bias"])
        return np.where(x < -lambd, x + bias, np.where(x > lambd, x - bias, 0))


@register
class Hardmax(Op):
    """1 at the first maximum along ``axis``, 0 elsewhere (opset 13: one axis)."""
    attrs = {"axis": -1}

    def infer(self, ctx):
        t = ctx.type(0)
        ctx.check(t.dtype.kind == "f", f"expected a floating-point input, got {t.dtype}")
        ctx.check(t.rank > 0, "expected an input of rank ≥ 1, got a scalar")
        axis = int(ctx.attrs["axis"])
        ctx.check(-t.rank <= axis < t.rank,
                  f"axis {axis} is out of range for rank {t.rank} (expected "
                  f"{-t.rank}..{t.rank - 1})")
        return [t]

    def compute(self, node, inputs):
        x = inputs[0]
        axis = int(node.attrs["axis"]) % x.ndim
        y = np.zeros_like(x)
        if x.shape[axis]:
            first = np.expand_dims(np.argmax(x, axis=axis), axis)
            np.put_along_axis(y, first, 1, axis=axis)
        return [y]


def _sin_gradient(self, node, grads, g):       # d sin x = cos x
    return [g.op("Mul", [grads[0], g.op("Cos", [g.input(0)])])]


def _cos_gradient(self, node, grads, g):       # d cos x = −sin x
    return [g.op("Neg", [g.op("Mul", [grads[0], g.op("Sin", [g.input(0)])])])]


Sin.gradient, Cos.gradient = _sin_gradient, _cos_gradient
