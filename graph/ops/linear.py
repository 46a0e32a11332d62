"""Gemm and MatMul, each with the ember-only fused activation a pass may attach."""
from __future__ import annotations

import numpy as np

from ..ir import TensorType
from .activation import ACTIVATIONS, apply_activation
from .base import Op, register
from .elementwise import broadcast_shapes, same_dtype, unidirectional

FUSED_ATTRS = {"activation": "", "activation_alpha": 0.0, "activation_beta": 0.0}


def check_activation(ctx):
    ctx.check(ctx.attrs["activation"] in ACTIVATIONS,
              f"expected a fused activation among {ACTIVATIONS[1:]}, "
              f"got {ctx.attrs['activation']!r}")


def finish(y, dtype, attrs):
    """Fused activation, then back to the op's dtype (float16 is accumulated in float32)."""
    y = apply_activation(y, attrs["activation"], attrs["activation_alpha"],
                         attrs["activation_beta"])
    return y.astype(dtype, copy=False)


def _wide(x):
    return x.astype(np.float32) if x.dtype == np.float16 else x


def dims_agree(a, b) -> bool:
    return isinstance(a, str) or isinstance(b, str) or int(a) == int(b)


@register
class Gemm(Op):
    """Y = alpha·A'·B' + beta·C with A' = A or Aᵀ, B' = B or Bᵀ, C broadcast to M×N."""
    num_inputs = (2, 3)
    attrs = {"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 0, **FUSED_ATTRS}
    parameter_inputs = (1, 2)

    def infer(self, ctx):
        check_activation(ctx)
        dtype = same_dtype(ctx, ctx.n_inputs if ctx.has(2) else 2)
        a, b = ctx.shape(0), ctx.shape(1)
        ctx.check(len(a) == 2 and len(b) == 2, f"expected A and B of rank 2, got {a} and {b}")
        m, ka = (a[1], a[0]) if ctx.attrs["transA"] else a
        kb, n = (b[1], b[0]) if ctx.attrs["transB"] else b
        ctx.check(dims_agree(ka, kb), f"expected A' columns == B' rows, got A' {m}×{ka} and "
                                      f"B' {kb}×{n}")
        if ctx.has(2):
            unidirectional(ctx, (m, n), ctx.shape(2), "C")
        return [TensorType(dtype, (m, n))]

    def macs(self, node, types):
        """M·N outputs, each a dot product of length K."""
        y, a = types[node.outputs[0]].shape, types[node.inputs[0]].shape
        k = a[0] if node.attrs.get("transA") else a[1]
        return int(np.prod(y, dtype=np.int64)) * int(k)

    def compute(self, node, inputs):
        a, b = inputs[0], inputs[1]
        c = inputs[2] if len(inputs) > 2 else None
        at = node.attrs
        A = _wide(a).T if at["transA"] else _wide(a)
        B = _wide(b).T if at["transB"] else _wide(b)
        y = A @ B
        if at["alpha"] != 1.0:
            y = y * at["alpha"]
        if c is not None and at["beta"] != 0.0:
            y = y + (_wide(c) * at["beta"] if at["beta"] != 1.0 else _wide(c))
        y = np.broadcast_to(y, (A.shape[0], B.shape[1]))
        return [finish(np.asarray(y), a.dtype, at)]


def matmul_shape(ctx, a: tuple, b: tuple) -> tuple:
    """numpy.matmul's output shape: 1-D operands get a dim added then removed, batch dims
    broadcast."""
    ctx.check(len(a) >= 1 and len(b) >= 1, f"expected operands of rank ≥ 1, got {a} and {b}")
    a2 = (1,) + tuple(a) if len(a) == 1 else tuple(a)
    b2 = tuple(b) + (1,) if len(b) == 1 else tuple(b)
    ctx.check(dims_agree(a2[-1], b2[-2]),
              f"expected A's last dim == B's second-to-last, got {a} and {b}")
    batch = broadcast_shapes(ctx, [a2[:-2], b2[:-2]]) if (a2[:-2] or b2[:-2]) else ()
    out = batch + (a2[-2], b2[-1])
    if len(a) == 1:
        out = out[:-2] + out[-1:]
    if len(b) == 1:
        out = out[:-1]
    return out


@register
class MatMul(Op):
    num_inputs = (2, 2)
    parameter_inputs = (0, 1)
    attrs = dict(FUSED_ATTRS)

    def infer(self, ctx):
        check_activation(ctx)
        dtype = same_dtype(ctx, 2)
        return [TensorType(dtype, matmul_shape(ctx, ctx.shape(0), ctx.shape(1)))]

    def macs(self, node, types):
        """Every output element is a dot product along A's last axis."""
        y, a = types[node.outputs[0]].shape, types[node.inputs[0]].shape
        return int(np.prod(y, dtype=np.int64)) * int(a[-1])

    def compute(self, node, inputs):
        a, b = inputs
        return [finish(np.asarray(np.matmul(_wide(a), _wide(b))), a.dtype, node.attrs)]


# ---- gradients -------------------------------------------------------------------------------
def _gemm_gradient(self, node, grads, g):
    """Y = α·A'·B' + β·C: dA' = α·dY·B'ᵀ, dB' = α·A'ᵀ·dY, dC = β·dY summed to C's shape; each
    written as one Gemm whose trans flags undo A's and B's."""
    from .activation import fused_activation_grad
    dy = fused_activation_grad(node, grads[0], g)
    a, b = g.input(0), g.input(1)
    at = node.attrs
    alpha, beta = float(at["alpha"]), float(at["beta"])
    ta, tb = int(at["transA"]), int(at["transB"])
    da = db = dc = None
    if g.needs(0):
        if ta:   # A = A'ᵀ: dA = α·B'·dYᵀ
            da = g.op("Gemm", [b, dy], alpha=alpha, beta=0.0, transA=tb, transB=1)
        else:    # dA = α·dY·B'ᵀ
            da = g.op("Gemm", [dy, b], alpha=alpha, beta=0.0, transA=0, transB=1 - tb)
    if g.needs(1):
        if tb:   # B = B'ᵀ: dB = α·dYᵀ·A'
            db = g.op("Gemm", [dy, a], alpha=alpha, beta=0.0, transA=1, transB=ta)
        else:    # dB = α·A'ᵀ·dY
            db = g.op("Gemm", [a, dy], alpha=alpha, beta=0.0, transA=1 - ta, transB=0)
    if len(node.inputs) > 2 and g.needs(2):
        c_shape = g.shape(g.input(2))
        if c_shape == (g.shape(dy)[1],):
            dc = g.op("BiasGrad", [dy], axis=1)
        else:
            dc = g.sum_to(dy, c_shape)
        if beta != 1.0:
            dc = g.op("Mul", [dc, g.const(np.array(beta, g.type(dy).dtype), "beta")])
    return [da, db, dc][:len(node.inputs)]


def _swap_last(g, v):
    r = len(g.shape(v))
    return g.op("Transpose", [v], perm=list(range(r - 2)) + [r - 1, r - 2])


def _matmul_gradient(self, node, grads, g):
    """numpy matmul: 1-D operands get a unit dim, batch dims broadcast (summed back)."""
    from .activation import fused_activation_grad
    dy = fused_activation_grad(node, grads[0], g)
    a, b = g.input(0), g.input(1)
    sa, sb = g.shape(a), g.shape(b)
    sa2 = (1,) + sa if len(sa) == 1 else sa
    sb2 = sb + (1,) if len(sb) == 1 else sb
    batch = tuple(np.broadcast_shapes(sa2[:-2], sb2[:-2]))
    dy2 = g.reshape(dy, batch + (sa2[-2], sb2[-1]))
    da = db = None
    if g.needs(0):
        d = g.op("MatMul", [dy2, _swap_last(g, g.reshape(b, sb2))])
        da = g.reshape(g.sum_to(d, sa2), sa)
    if g.needs(1):
        d = g.op("MatMul", [_swap_last(g, g.reshape(a, sa2)), dy2])
        db = g.reshape(g.sum_to(d, sb2), sb)
    return [da, db]


Gemm.gradient = _gemm_gradient
MatMul.gradient = _matmul_gradient
