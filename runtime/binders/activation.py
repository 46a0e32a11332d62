"""Unary activations and elementwise math (``kernels/elementwise.unary``), Clip, and their
gradient ``ActivationGrad`` (``kernels/act_grad``)."""
from __future__ import annotations

import math

from ...graph.ops import activation as ops
from ...kernels import act_grad, elementwise
from ...kernels.elementwise import ACTIVATION_CODES
from .common import all_float32, contiguous_f32, has_empty_output, noop, optional_at
from .registry import binds

UNARY_OPS = (ops.Relu, ops.LeakyRelu, ops.Elu, ops.Selu, ops.Sigmoid, ops.HardSigmoid,
             ops.HardSwish, ops.Tanh, ops.Softplus, ops.Exp, ops.Log, ops.Sqrt, ops.Neg, ops.Abs,
             ops.Reciprocal, ops.Erf, ops.Gelu, ops.SiLU)
UNARY_NAMES = tuple(cls.__name__ for cls in UNARY_OPS)

# op type -> attrs -> the kernel's (a, b), for the activations that take parameters
_PARAMS = {
    "LeakyRelu": lambda at: (at.get("alpha", 0.01), 0.0),
    "Elu": lambda at: (at.get("alpha", 1.0), 0.0),
    "Selu": lambda at: (at.get("alpha", 1.67326319217681884765625),
                        at.get("gamma", 1.05070102214813232421875)),
    "HardSigmoid": lambda at: (at.get("alpha", 0.2), at.get("beta", 0.5)),
    "Gelu": lambda at: (float(at.get("approximate", "none") == "tanh"), 0.0),
}

# The activations ActivationGrad's kernel differentiates (the graph's GRAD_ACTIVATIONS).
GRAD_CODES = {name: ACTIVATION_CODES[name] for name in ops.GRAD_ACTIVATIONS}
CLIP = ACTIVATION_CODES["Clip"]


@binds(*UNARY_OPS, kernel="elementwise", activations=UNARY_NAMES)
def bind_unary(node, ins, outs, scratch_buf, ctx):
    x, y, threads = ins[0], outs[0], ctx.threads
    if not all_float32(x, y) or x.shape != y.shape:
        return None
    if has_empty_output(outs):
        return noop
    code = ACTIVATION_CODES[node.op_type]
    params = _PARAMS.get(node.op_type)
    a, b = (float(v) for v in params(node.attrs)) if params else (0.0, 0.0)
    return elementwise.unary_step(contiguous_f32(x).reshape(-1), y.reshape(-1), code, a, b,
                                  threads)


@binds(ops.Clip, kernel="elementwise", activations=("Clip",))
def bind_clip(node, ins, outs, scratch_buf, ctx):
    """min/max are optional scalar inputs; run-time ones are read in the step (one float)."""
    x, y, threads = ins[0], outs[0], ctx.threads
    lo, hi = optional_at(ins, 1), optional_at(ins, 2)
    if not all_float32(x, y, lo, hi) or x.shape != y.shape:
        return None
    if any(v is not None and v.size != 1 for v in (lo, hi)):
        return None
    if has_empty_output(outs):
        return noop
    xf, yf, unary = contiguous_f32(x).reshape(-1), y.reshape(-1), elementwise.unary
    if ctx.is_runtime(lo) or ctx.is_runtime(hi):
        lof = lo.reshape(-1) if lo is not None else None
        hif = hi.reshape(-1) if hi is not None else None

        def step():
            a = float(lof[0]) if lof is not None else -math.inf
            b = float(hif[0]) if hif is not None else math.inf
            unary(xf, yf, CLIP, a, b, threads)
        return step
    a = float(lo.reshape(-1)[0]) if lo is not None else -math.inf
    b = float(hi.reshape(-1)[0]) if hi is not None else math.inf
    return elementwise.unary_step(xf, yf, CLIP, a, b, threads)


@binds(ops.ActivationGrad, kernel="act_grad", activations=tuple(GRAD_CODES))
def bind_activation_grad(node, ins, outs, scratch_buf, ctx):
    dy, t, dx, threads = ins[0], ins[1], outs[0], ctx.threads
    code = GRAD_CODES.get(node.attrs.get("activation"))
    if code is None or not all_float32(dy, t, dx) or dy.shape != t.shape:
        return None
    if has_empty_output(outs):
        return noop
    a, b = float(node.attrs.get("alpha", 0.0)), float(node.attrs.get("beta", 0.0))
    if code == CLIP:   # absent bounds arrive as ±inf, which float32 keeps
        a, b = (-math.inf if math.isnan(a) else a), (math.inf if math.isnan(b) else b)
    g1, t1, dx1 = contiguous_f32(dy).reshape(-1), contiguous_f32(t).reshape(-1), dx.reshape(-1)
    return act_grad.ActivationGradStep(g1, t1, dx1, code, a, b, threads)
