"""Gemm and MatMul, each with the ember-only fused activation a pass may attach."""
from __future__ import annotations

import numpy as np

from ..ir import TensorType
from .activation import FUSED_DOMAIN, apply_activation, check_activation
from .base import Op, register
from .elementwise import broadcast_shapes, same_dtype, unidirectional

FUSED_ATTRS = {"activation": "", "activation_alpha": 0.0, "activation_beta": 0.0}


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


@register
class FusedMatMul(Op):
    """MatMul(A, B) + bias (a vector along the last axis), with the fused activation: the
    ``x @ W + b`` torch.onnx writes for a Linear layer on inputs of rank above 2 (MatMul, then
    Add), which ``graph.patterns`` turns into one GEMM with bias and activation in its epilogue.
    Export writes MatMul, Add, then the activation's own node."""
    op_type = "MatMul"
    domain = FUSED_DOMAIN
    num_inputs = (3, 3)
    parameter_inputs = (0, 1, 2)
    attrs = dict(FUSED_ATTRS)

    def infer(self, ctx):
        check_activation(ctx)
        dtype = same_dtype(ctx, 3)
        shape = matmul_shape(ctx, ctx.shape(0), ctx.shape(1))
        bias = ctx.shape(2)
        ctx.check(len(bias) == 1 and len(shape) >= 1 and dims_agree(bias[0], shape[-1]),
                  f"expected a bias of shape ({shape[-1] if shape else '?'},), got {bias}")
        return [TensorType(dtype, shape)]

    def macs(self, node, types):
        return MatMul.macs(self, node, types)

    def compute(self, node, inputs):
        a, b, bias = inputs
        y = np.matmul(_wide(a), _wide(b)) + _wide(bias)
        return [finish(np.asarray(y), a.dtype, node.attrs)]

    def export(self, ctx, node, inputs, outputs, attrs):
        product = ctx.fresh(f"{outputs[0]}_matmul")
        ctx.add("MatMul", inputs[:2], [product], ctx.fresh(f"{node.name}/MatMul"), {}, node)
        ctx.add("Add", [product, inputs[2]], outputs, ctx.fresh(f"{node.name}/Add"), {}, node)


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


# ---- Einsum ----------------------------------------------------------------------------------
ELLIPSIS = "..."


def einsum_terms(equation, ranks: list, fail) -> tuple:
    """(input subscripts, output subscript) of ``equation`` with spaces removed and the output
    made explicit (implicit mode: the broadcast ``...`` dims, then every letter used once, in
    alphabetical order — numpy's and ONNX's rule). ``fail(msg)`` raises the caller's error."""
    if isinstance(equation, bytes):
        equation = equation.decode("utf-8", "replace")
    if not isinstance(equation, str):
        fail(f"equation must be a string, got {type(equation).__name__}")
    eq = equation.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ranks):
        fail(f"equation {equation!r} has {len(terms)} operand(s), the node {len(ranks)}")
    for term in terms + ([rhs] if arrow else []):
        letters = term.replace(ELLIPSIS, "", 1)
        if not all(c.isascii() and c.isalpha() for c in letters):
            fail(f"equation {equation!r}: {term!r} is not letters with at most one '...'")
    for term, rank in zip(terms, ranks):
        letters = len(term.replace(ELLIPSIS, ""))
        if letters > rank or (ELLIPSIS not in term and letters != rank):
            fail(f"equation {equation!r}: {term!r} does not fit an operand of rank {rank}")
    if not arrow:
        counts = {}
        for c in "".join(t.replace(ELLIPSIS, "") for t in terms):
            counts[c] = counts.get(c, 0) + 1
        ell = ELLIPSIS if any(ELLIPSIS in t for t in terms) else ""
        rhs = ell + "".join(sorted(c for c, n in counts.items() if n == 1))
    used = set("".join(terms))
    if any(c not in used for c in rhs.replace(ELLIPSIS, "")) or \
            len(set(rhs.replace(ELLIPSIS, ""))) != len(rhs.replace(ELLIPSIS, "")):
        fail(f"equation {equation!r}: output {rhs!r} names a letter twice or one no operand has")
    if ELLIPSIS in rhs and not any(ELLIPSIS in t for t in terms):
        fail(f"equation {equation!r}: the output has '...' and no operand does")
    return terms, rhs


def _labelled_dims(term: str, shape: tuple) -> tuple:
    """(the ``...`` dims, {letter: [dims]}) of one operand."""
    if ELLIPSIS in term:
        head, tail = term.split(ELLIPSIS)
        k = len(shape) - len(head) - len(tail)
        ell = tuple(shape[len(head):len(head) + k])
        letters = list(zip(head, shape[:len(head)])) + list(zip(tail, shape[len(head) + k:]))
    else:
        ell, letters = (), list(zip(term, shape))
    dims = {}
    for c, d in letters:
        dims.setdefault(c, []).append(d)
    return ell, dims


@register
class Einsum(Op):
    """Sums of products over labelled axes (numpy's ``einsum``): batched products, transposes,
    traces, the attention scores ``bhqd,bhkd->bhqk``. numpy's contraction order (BLAS where a
    pair of operands is a matrix product) is the kernel."""
    num_inputs = (1, None)
    attrs = {"equation": None}

    def infer(self, ctx):
        ctx.check(ctx.attrs["equation"] is not None, "the equation attribute is required")
        same_dtype(ctx, ctx.n_inputs)
        ctx.check(ctx.dtype(0).kind in "fiu", f"Einsum takes numbers, got {ctx.dtype(0)}")
        shapes = [ctx.shape(i) for i in range(ctx.n_inputs)]
        terms, rhs = einsum_terms(ctx.attrs["equation"], [len(s) for s in shapes], ctx.fail)
        ctx.node.attrs["equation"] = ",".join(terms) + "->" + rhs
        sizes, ells = {}, []
        for term, shape in zip(terms, shapes):
            ell, dims = _labelled_dims(term, shape)
            ells.append(ell)
            for c, ds in dims.items():
                for d in ds:
                    prev = sizes.setdefault(c, d)
                    if isinstance(prev, (int, np.integer)) and isinstance(d, (int, np.integer)):
                        ctx.check(prev == d, f"label {c!r} is {prev} in one place and {d} in "
                                             f"another (shapes {shapes})")
                    elif not isinstance(prev, (int, np.integer)):
                        sizes[c] = d
        ell = broadcast_shapes(ctx, ells) if any(ells) else ()
        head, _, tail = rhs.partition(ELLIPSIS)
        shape = [sizes[c] for c in head] + (list(ell) if ELLIPSIS in rhs else []) + \
            [sizes[c] for c in tail]
        return [TensorType(ctx.dtype(0), tuple(shape))]

    def macs(self, node, types):
        terms = node.attrs["equation"].split("->")[0].split(",")
        sizes = {}
        for term, name in zip(terms, node.inputs):
            if name in types and types[name].is_static:
                for c, ds in _labelled_dims(term, types[name].shape)[1].items():
                    sizes[c] = int(ds[0])
        n = 1
        for d in sizes.values():
            n *= d
        return n if len(terms) > 1 else 0

    def compute(self, node, inputs):
        dtype = inputs[0].dtype
        out = np.einsum(node.attrs["equation"], *inputs, optimize=len(inputs) > 1)
        return [np.ascontiguousarray(np.asarray(out, dtype=dtype))]

    def gradient(self, node, grads, g):
        """dA of ``…->out`` is the einsum of dY with the other operands back to A's subscript;
        letters only A has (summed away) come back by broadcasting. A repeated letter within
        one operand (a diagonal) has no rule here."""
        terms, rhs = node.attrs["equation"].split("->")
        terms = terms.split(",")
        out = [None] * len(node.inputs)
        for i, term in enumerate(terms):
            if not g.needs(i):
                continue
            letters = term.replace(ELLIPSIS, "")
            if len(set(letters)) != len(letters):
                g.fail(f"operand {i} repeats a letter in {term!r} (a diagonal)")
            if ELLIPSIS in term and ELLIPSIS not in rhs:
                g.fail(f"operand {i}'s '...' dims are summed away in {term!r}->{rhs!r}")
            others = set(rhs) | set("".join(t for j, t in enumerate(terms) if j != i))
            kept = "".join(c for c in term if c in others or c == ".")
            eq = ",".join([rhs] + [t for j, t in enumerate(terms) if j != i]) + "->" + kept
            names = [grads[0]] + [node.inputs[j] for j in range(len(terms)) if j != i]
            grad = g.op("Einsum", names, equation=eq)
            shape = g.shape(node.inputs[i])
            head, _, tail = term.partition(ELLIPSIS)
            axes = list(head) + [None] * (len(shape) - len(head) - len(tail)) + list(tail)
            summed = [k for k, c in enumerate(axes) if c is not None and c not in others]
            kept_shape = [d for k, d in enumerate(shape) if k not in summed]
            if g.shape(grad) != tuple(kept_shape):   # '...' dims this operand broadcast
                if not term.startswith(ELLIPSIS):
                    g.fail(f"operand {i} broadcasts the '...' dims inside {term!r}")
                grad = g.sum_to(grad, kept_shape)
            if summed:   # letters only this operand has: size-1 axes, broadcast back
                grad = g.reshape(grad, [1 if k in summed else d for k, d in enumerate(shape)])
                grad = g.op("Expand", [grad, g.const(np.array(shape, np.int64), "shape")])
            out[i] = grad
        return out
