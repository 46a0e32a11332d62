"""Pattern passes: what exporters write op by op, rewritten to the one op it spells.

torch.onnx and its peers write hard-swish as Add/Clip/Mul/Div, GELU as Div/Erf/Add/Mul/Mul,
layer norm as two ReduceMeans and five more nodes. Each pattern here recognises one such
spelling (operand orders and the Div-by-c / Mul-by-1/c variants included) and replaces it by
the standard op, which runs as one kernel and which ``passes.fuse_activation`` may then fold into
its producer's epilogue:

=======================================================  ========================================
spelled as                                               becomes
=======================================================  ========================================
``Pow(x, 2)`` / ``Pow(x, 0.5)``                           ``Mul(x, x)`` / ``Sqrt(x)``
``Clip(x + 3, 0, 6) / 6``                                 ``HardSigmoid(x)`` (alpha 1/6, beta 1/2)
``x · Clip(x + 3, 0, 6) / 6``, ``x · HardSigmoid(x)``     ``HardSwish(x)``
``x · Sigmoid(x)``                                        ``SiLU(x)`` (ember's fused domain)
``0.5 · x · (1 + Erf(x / √2))``                           ``Gelu(x)``
``0.5 · x · (1 + Tanh(√(2/π) · (x + 0.044715 · x³)))``    ``Gelu(x, approximate="tanh")``
ReduceMean/Sub/Pow/ReduceMean/Add ε/Sqrt/Div (·γ, +β)     ``LayerNormalization(x, γ, β)``
``MatMul(x, W) + b`` (W of rank 2, b a constant vector)   ``MatMul(x, W, b)`` (ember's fused domain)
=======================================================  ========================================

A spelling is rewritten only when every intermediate it swallows is read by the pattern alone
and is not a graph output, when its constants are the ones the formula names (to the precision
of the constant's own dtype: 1/√2 written as a float32 is accepted, 0.7 is not) and of a shape
that does not broadcast the result beyond ``x``'s shape, and when ``x`` is floating point.
"""
from __future__ import annotations

import math

import numpy as np

from .ir import Graph, Node
from .ops.activation import FUSED_DOMAIN, GELU_TANH_C, GELU_TANH_K
from .rewrite import FreshNames, add_const, sole_reader


class _Match:
    """A rewrite found: ``root`` (whose output the new node takes over) becomes ``node``; the
    ``interior`` nodes disappear."""

    def __init__(self, root: Node, node: Node, interior: list):
        self.root, self.node, self.interior = root, node, interior


class _View:
    """What the matchers ask of the graph: producers, private intermediates, scalar constants."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.producers = graph.producers()
        self.consumers = graph.consumers()
        self.outputs = set(graph.outputs)

    def private(self, value: str, reader: Node) -> bool:
        return sole_reader(self.outputs, value, reader, self.consumers)

    def made_by(self, value: str, reader: Node, *op_types: str):
        """The node of one of ``op_types`` producing ``value`` when ``reader`` is its only
        reader (and it is no graph output), else None."""
        node = self.producers.get(value)
        if node is None or node.domain != "" or node.op_type not in op_types:
            return None
        return node if self.private(value, reader) else None

    def is_float(self, value: str) -> bool:
        t = self.graph.types.get(value)
        return t is not None and t.dtype.kind == "f"

    def scalar(self, value: str, like: str):
        """The value of the one-element constant ``value`` as a float, when broadcasting it
        against ``like`` leaves ``like``'s shape (rank not above it), else None."""
        array = self.graph.initializers.get(value)
        t = self.graph.types.get(like)
        if array is None or t is None or array.size != 1 or array.ndim > t.rank:
            return None
        if array.dtype.kind != "f":
            return None
        return float(np.asarray(array).reshape(()))

    def const_is(self, value: str, like: str, target: float) -> bool:
        """``value`` is a scalar constant equal to ``target`` rounded to the constant's dtype."""
        v = self.scalar(value, like)
        return v is not None and _close(v, target, self.graph.initializers[value].dtype)

    def same_type(self, a: str, b: str) -> bool:
        ta, tb = self.graph.types.get(a), self.graph.types.get(b)
        return ta is not None and ta == tb


def _close(v: float, target: float, dtype) -> bool:
    """``v`` is ``target`` as ``dtype`` stores it (the product of two such constants allowed
    one more rounding)."""
    return abs(v - target) <= 2 * np.finfo(dtype).eps * abs(target)


def _divisor_or_factor(view: _View, node: Node, like: str):
    """For ``Div(a, c)`` / ``Mul(a, c)`` / ``Mul(c, a)`` with ``c`` a scalar constant: (a, the
    factor it multiplies by: 1/c or c, c's dtype), else None."""
    if node.op_type == "Div" and len(node.inputs) == 2:
        c = view.scalar(node.inputs[1], like)
        if c is not None and c != 0:
            return node.inputs[0], 1.0 / c, view.graph.initializers[node.inputs[1]].dtype
        return None
    if node.op_type == "Mul" and len(node.inputs) == 2:
        for a, k in (node.inputs, node.inputs[::-1]):
            c = view.scalar(k, like)
            if c is not None:
                return a, c, view.graph.initializers[k].dtype
    return None


def _other(node: Node, value: str):
    """The other input of a two-input node reading ``value``, or None."""
    if len(node.inputs) != 2 or value not in node.inputs:
        return None
    return node.inputs[1] if node.inputs[0] == value else node.inputs[0]


# ---- Pow ---------------------------------------------------------------------------------------
def _match_pow(view: _View, node: Node):
    if node.op_type != "Pow" or node.domain != "" or len(node.inputs) != 2:
        return None
    x, e = node.inputs
    if not view.is_float(x) or not view.same_type(x, node.outputs[0]):
        return None
    if view.const_is(e, x, 2.0):
        return _Match(node, Node("Mul", [x, x], [node.outputs[0]], {}, node.name), [])
    if view.const_is(e, x, 0.5):
        return _Match(node, Node("Sqrt", [x], [node.outputs[0]], {}, node.name), [])
    return None


# ---- hard-sigmoid and hard-swish ---------------------------------------------------------------
def _relu6_of_x_plus_3(view: _View, value: str, reader: Node):
    """For ``value = Clip(Add(x, 3), 0, 6)`` read by ``reader`` alone: (x, [Clip, Add])."""
    clip = view.made_by(value, reader, "Clip")
    if clip is None or len(clip.inputs) != 3:
        return None
    add = view.made_by(clip.inputs[0], clip, "Add")
    if add is None:
        return None
    for x, three in (add.inputs, add.inputs[::-1]):
        if (view.is_float(x) and view.same_type(x, add.outputs[0])
                and view.const_is(three, x, 3.0) and view.const_is(clip.inputs[1], x, 0.0)
                and view.const_is(clip.inputs[2], x, 6.0)):
            return x, [clip, add]
    return None


def _match_hard_sigmoid(view: _View, node: Node):
    """``Clip(x + 3, 0, 6) / 6`` (or ``· 1/6``, either order)."""
    if node.domain != "" or node.op_type not in ("Div", "Mul"):
        return None
    for clipped in node.inputs:
        scaled = _divisor_or_factor(view, node, clipped)
        if scaled is None or scaled[0] != clipped or not _close(scaled[1], 1 / 6, scaled[2]):
            continue
        found = _relu6_of_x_plus_3(view, clipped, node)
        if found is None or not view.same_type(found[0], node.outputs[0]):
            continue
        x, interior = found
        return _Match(node, Node("HardSigmoid", [x], [node.outputs[0]],
                                 {"alpha": 1 / 6, "beta": 0.5}, node.name), interior)
    return None


def _match_hard_swish(view: _View, node: Node):
    """``Mul(x, HardSigmoid(x))`` with alpha 1/6, beta 1/2, and ``x · Clip(x + 3, 0, 6) / 6``
    (or ``· 1/6``)."""
    if node.domain != "" or node.op_type not in ("Div", "Mul") or len(node.inputs) != 2:
        return None
    out = node.outputs[0]
    if node.op_type == "Mul":
        for x, h in (node.inputs, node.inputs[::-1]):
            hs = view.made_by(h, node, "HardSigmoid")
            if (hs is not None and hs.inputs[0] == x and view.same_type(x, out)
                    and _close(float(hs.attrs.get("alpha", 0.2)), 1 / 6, np.float32)
                    and float(hs.attrs.get("beta", 0.5)) == 0.5):
                return _Match(node, Node("HardSwish", [x], [out], {}, node.name), [hs])
    for product in node.inputs:
        scaled = _divisor_or_factor(view, node, product)
        if scaled is None or scaled[0] != product or not _close(scaled[1], 1 / 6, scaled[2]):
            continue
        mul = view.made_by(product, node, "Mul")
        if mul is None or len(mul.inputs) != 2:
            continue
        for x, clipped in (mul.inputs, mul.inputs[::-1]):
            found = _relu6_of_x_plus_3(view, clipped, mul)
            if found is not None and found[0] == x and view.same_type(x, out):
                return _Match(node, Node("HardSwish", [x], [out], {}, node.name),
                              [mul] + found[1])
    return None


# ---- SiLU --------------------------------------------------------------------------------------
def _match_silu(view: _View, node: Node):
    """``Mul(x, Sigmoid(x))``, either order, after any producer (x may have other readers)."""
    if node.op_type != "Mul" or node.domain != "" or len(node.inputs) != 2:
        return None
    for x, s in (node.inputs, node.inputs[::-1]):
        sig = view.made_by(s, node, "Sigmoid")
        if (sig is not None and sig.inputs[0] == x and x != s and view.is_float(x)
                and view.same_type(x, node.outputs[0])):
            return _Match(node, Node("SiLU", [x], [node.outputs[0]], {}, node.name,
                                     FUSED_DOMAIN), [sig])
    return None


# ---- GELU ----------------------------------------------------------------------------------------
class _Product:
    """A value written as a product: its non-constant factors (value, the node reading it),
    repeats included; the product of its scalar constant factors (Div by c counts as 1/c) and
    its dtype; the nodes the product was spread over."""

    def __init__(self):
        self.factors, self.const, self.dtype, self.nodes = [], 1.0, None, []

    @property
    def values(self) -> list:
        return [v for v, _ in self.factors]

    def scaled(self, target: float) -> bool:
        return self.dtype is not None and _close(self.const, target, self.dtype)


def _is_product_node(view: _View, node: Node, like: str) -> bool:
    """Mul, Div by a scalar constant, or Pow by 2 or 3."""
    if node.domain != "" or len(node.inputs) != 2:
        return False
    if node.op_type == "Mul":
        return True
    if node.op_type == "Div":
        return view.scalar(node.inputs[1], like) not in (None, 0.0)
    return node.op_type == "Pow" and view.scalar(node.inputs[1], like) in (2.0, 3.0)


def _expand(view: _View, prod: _Product, node: Node, like: str) -> None:
    """Add the factors of product node ``node`` to ``prod``."""
    a, b = node.inputs
    if node.op_type == "Pow":
        for _ in range(int(view.scalar(b, like))):
            _walk(view, prod, a, node, like)
        return
    for k, operand in enumerate((a, b)):
        c = view.scalar(operand, like)
        if c is None:
            _walk(view, prod, operand, node, like)
            continue
        prod.const = prod.const / c if node.op_type == "Div" else prod.const * c
        prod.dtype = view.graph.initializers[operand].dtype


def _walk(view: _View, prod: _Product, value: str, reader: Node, like: str) -> None:
    """Descend into ``value`` when a product node makes it for ``reader`` alone, else keep it
    as a factor."""
    node = view.producers.get(value)
    if node is not None and _is_product_node(view, node, like) and view.private(value, reader):
        prod.nodes.append(node)
        _expand(view, prod, node, like)
    else:
        prod.factors.append((value, reader))


def _product(view: _View, value: str, reader: Node, like: str) -> _Product:
    prod = _Product()
    _walk(view, prod, value, reader, like)
    return prod


def _one_plus(view: _View, value: str, reader: Node, op_type: str, like: str):
    """For ``value = Add(1, op_type(u))`` (either order) read by ``reader`` alone: (u, its
    reader, nodes)."""
    add = view.made_by(value, reader, "Add")
    if add is None or len(add.inputs) != 2:
        return None
    for one, t in (add.inputs, add.inputs[::-1]):
        inner = view.made_by(t, add, op_type)
        if inner is not None and view.const_is(one, like, 1.0):
            return inner.inputs[0], inner, [add, inner]
    return None


def _gelu_erf(view: _View, x: str, gate: str, reader: Node):
    found = _one_plus(view, gate, reader, "Erf", x)
    if found is None:
        return None
    u, erf, nodes = found
    scaled = _product(view, u, erf, x)
    if scaled.values == [x] and scaled.scaled(1 / math.sqrt(2)):
        return nodes + scaled.nodes
    return None


def _gelu_tanh(view: _View, x: str, gate: str, reader: Node):
    found = _one_plus(view, gate, reader, "Tanh", x)
    if found is None:
        return None
    u, tanh, nodes = found
    outer = _product(view, u, tanh, x)
    if len(outer.factors) != 1 or not outer.scaled(GELU_TANH_K):
        return None
    poly = view.made_by(*outer.factors[0], "Add")
    if poly is None or len(poly.inputs) != 2:
        return None
    for lin, cubic in (poly.inputs, poly.inputs[::-1]):
        cube = _product(view, cubic, poly, x)
        if lin == x and cube.values == [x, x, x] and cube.scaled(GELU_TANH_C):
            return nodes + outer.nodes + [poly] + cube.nodes
    return None


def _match_gelu(view: _View, node: Node):
    """``0.5 · x · gate`` in any association and order (``/ 2`` too), gate = 1 + Erf(x/√2)
    or 1 + Tanh(√(2/π)·(x + 0.044715·x³))."""
    out = node.outputs[0]
    if node.op_type not in ("Mul", "Div") or not _is_product_node(view, node, out):
        return None
    top = _Product()
    _expand(view, top, node, out)
    if len(top.factors) != 2 or not top.scaled(0.5):
        return None
    for (x, _), (gate, reader) in (top.factors, top.factors[::-1]):
        if not view.is_float(x) or not view.same_type(x, out):
            continue
        for approximate, match in (("none", _gelu_erf), ("tanh", _gelu_tanh)):
            interior = match(view, x, gate, reader)
            if interior is not None:
                return _Match(node, Node("Gelu", [x], [out], {"approximate": approximate},
                                         node.name), top.nodes + interior)
    return None


# ---- layer norm --------------------------------------------------------------------------------
def _mean_over_last(view: _View, value: str, reader: Node, of: str | None = None):
    """``value = ReduceMean(t, axes=[last], keepdims=1)`` read by ``reader`` alone (and with
    t == ``of`` when given): the ReduceMean node."""
    mean = view.made_by(value, reader, "ReduceMean")
    if mean is None or (of is not None and mean.inputs[0] != of):
        return None
    t = view.graph.types.get(mean.inputs[0])
    axes = view.graph.initializers.get(mean.input(1))
    if t is None or t.rank < 1 or axes is None or int(mean.attrs.get("keepdims", 1)) != 1:
        return None
    axes = np.asarray(axes).reshape(-1)
    return mean if axes.size == 1 and int(axes[0]) in (-1, t.rank - 1) else None


def _last_axis_param(view: _View, value: str, x: str):
    """A constant of shape (C,) or (1, …, 1, C) with C x's last dimension (rank not above x's),
    as a (C,) array, else None."""
    array = view.graph.initializers.get(value)
    t = view.graph.types.get(x)
    if array is None or t is None or array.ndim > t.rank or array.ndim == 0:
        return None
    if array.shape[-1] != t.shape[-1] or any(d != 1 for d in array.shape[:-1]):
        return None
    if array.dtype != t.dtype:
        return None
    return np.ascontiguousarray(array.reshape(-1))


def _match_layer_norm(view: _View, node: Node, names: FreshNames):
    """``(x − mean(x)) / √(mean((x − mean(x))²) + ε)`` over the last axis, then optionally
    ``· γ`` and ``+ β`` (constants of the last axis' length)."""
    if node.op_type != "Div" or node.domain != "" or len(node.inputs) != 2:
        return None
    d, s = node.inputs
    sqrt = view.made_by(s, node, "Sqrt")
    sub = view.producers.get(d)
    if sqrt is None or sub is None or sub.op_type != "Sub" or sub.domain != "":
        return None
    add_eps = view.made_by(sqrt.inputs[0], sqrt, "Add")
    if add_eps is None or len(add_eps.inputs) != 2:
        return None
    for var_value, eps_value in (add_eps.inputs, add_eps.inputs[::-1]):
        eps = view.scalar(eps_value, var_value)
        var = _mean_over_last(view, var_value, add_eps)
        if eps is not None and eps >= 0 and var is not None:
            break
    else:
        return None
    square = view.made_by(var.inputs[0], var, "Mul", "Pow")
    if square is None or len(square.inputs) != 2 or square.inputs[0] != d:
        return None
    if square.op_type == "Mul" and square.inputs[1] != d:
        return None
    if square.op_type == "Pow" and not view.const_is(square.inputs[1], d, 2.0):
        return None
    readers = view.consumers.get(d, [])
    if d in view.outputs or {id(r) for r in readers} != {id(node), id(square)}:
        return None
    x = sub.inputs[0]
    mean = _mean_over_last(view, sub.inputs[1], sub, of=x)
    if mean is None or not view.is_float(x) or not view.same_type(x, node.outputs[0]):
        return None
    interior = [mean, sub, square, var, add_eps, sqrt]
    root, out = node, node.outputs[0]
    t = view.graph.types[x]
    scale = bias = None
    consumers = [c for c in view.consumers.get(out, []) if c.domain == ""]
    if len(consumers) == 1 and consumers[0].op_type == "Mul" and view.private(out, consumers[0]):
        scale = _last_axis_param(view, _other(consumers[0], out), x)
        if scale is not None and view.same_type(consumers[0].outputs[0], x):
            interior.append(root)
            root, out = consumers[0], consumers[0].outputs[0]
        else:
            scale = None
    consumers = [c for c in view.consumers.get(out, []) if c.domain == ""]
    if len(consumers) == 1 and consumers[0].op_type == "Add" and view.private(out, consumers[0]):
        bias = _last_axis_param(view, _other(consumers[0], out), x)
        if bias is not None and view.same_type(consumers[0].outputs[0], x):
            interior.append(root)
            root, out = consumers[0], consumers[0].outputs[0]
        else:
            bias = None
    graph = view.graph
    if scale is None:
        scale = np.ones(t.shape[-1], t.dtype)
    inputs = [x, add_const(graph, names, f"{root.name}_ln_scale", scale)]
    if bias is not None:
        inputs.append(add_const(graph, names, f"{root.name}_ln_bias", bias))
    ln = Node("LayerNormalization", inputs, [out],
              {"axis": -1, "epsilon": float(eps), "stash_type": 1}, root.name)
    return _Match(root, ln, interior)


# ---- MatMul + bias -------------------------------------------------------------------------------
def _match_matmul_bias(view: _View, node: Node):
    """``Add(MatMul(x, W), b)`` (either operand order) with W of rank 2 and b a float constant
    of N values (shape (N,) or 1s then N, not raising the rank): torch.onnx's Linear on inputs of
    rank above 2. One GEMM then adds b (and the activation a later pass fuses) while each tile of
    the product is in cache."""
    if node.op_type != "Add" or node.domain != "" or len(node.inputs) != 2:
        return None
    out = node.outputs[0]
    for product, b in (node.inputs, node.inputs[::-1]):
        mm = view.made_by(product, node, "MatMul")
        if mm is None or mm.attrs.get("activation", "") or len(mm.inputs) != 2:
            continue
        w_type, y_type = view.graph.types.get(mm.inputs[1]), view.graph.types.get(product)
        bias = view.graph.initializers.get(b)
        if w_type is None or y_type is None or w_type.rank != 2 or bias is None:
            continue
        if not view.same_type(product, out) or not view.is_float(product):
            continue
        n = y_type.shape[-1] if y_type.rank else None
        if bias.dtype != y_type.dtype or bias.ndim > y_type.rank or bias.ndim < 1 or \
                not isinstance(n, (int, np.integer)) or bias.shape[-1] != n or \
                any(int(d) != 1 for d in bias.shape[:-1]):
            continue
        flat = view.graph.initializers.get(b).reshape(-1)
        return _Match(node, Node("MatMul", [mm.inputs[0], mm.inputs[1], b], [out], {},
                                 node.name, FUSED_DOMAIN), [mm]), flat, b
    return None


def _matmul_bias(graph: Graph, view: _View, node: Node, names: FreshNames):
    found = _match_matmul_bias(view, node)
    if found is None:
        return None
    match, flat, b = found
    if flat.shape != graph.initializers[b].shape:   # (1, …, N): the op takes the vector
        match.node.inputs[2] = add_const(graph, names, f"{node.name}_bias", flat.copy())
    return match


# ---- driver ------------------------------------------------------------------------------------
def _rewrite(graph: Graph, match_fn) -> bool:
    """One sweep of ``match_fn`` over the graph, applying every match that shares no node
    with an earlier one; True when something was rewritten."""
    view = _View(graph)
    names = FreshNames(graph)
    replaced, dropped = {}, set()
    for node in graph.nodes:
        if id(node) in dropped or id(node) in replaced:
            continue
        m = match_fn(view, node, names)
        if m is None:
            continue
        swallowed = {id(n) for n in m.interior} | {id(m.root)}
        if swallowed & (dropped | set(replaced)):
            continue
        replaced[id(m.root)] = m.node
        dropped.update(id(n) for n in m.interior)
    if not replaced:
        return False
    graph.nodes = [replaced.get(id(n), n) for n in graph.nodes if id(n) not in dropped]
    return True


def _plain(match):
    return lambda view, node, names: match(view, node)


# In order: Pow first (layer norm's square and √ read as Mul and Sqrt after it), hard-sigmoid
# before hard-swish (which reads x·HardSigmoid(x)).
PATTERNS = (_plain(_match_pow), _plain(_match_hard_sigmoid), _plain(_match_hard_swish),
            _plain(_match_silu), _plain(_match_gelu), _match_layer_norm,
            lambda view, node, names: _matmul_bias(view.graph, view, node, names))


def fuse_patterns(graph: Graph) -> Graph:
    """Rewrite every pattern of ``PATTERNS`` (each to a fixed point) in the graph given."""
    for match in PATTERNS:
        while _rewrite(graph, match):
            pass
    return graph
