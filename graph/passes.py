"""Graph passes: each takes a typed graph (``graph.types`` filled by ``infer_shapes``) and
returns an equivalent typed graph. The Session runs ``fold_constants`` always and ``optimize``
unless asked not to.

Every pass keeps graph input and output names unchanged (callers feed and fetch by name) and
gives every new value a type. ``fold_constants`` builds its result from a copy and leaves its
argument as it was; the other passes rewrite the nodes and initializers of the graph they are
given and return it, so their callers pass a copy they own (the Session's per-shape copy).
"""
from __future__ import annotations

import numpy as np

from .ir import Graph, TensorType
from .ops import REGISTRY
from .ops.activation import FUSABLE, FUSED_DOMAIN
from .patterns import fuse_patterns
from .rewrite import FreshNames, add_const, sole_reader

# Producers that can run an activation on their output before it leaves the kernel.
FUSE_PRODUCERS = ("Conv", "Gemm", "MatMul", "Add")
# Ops whose output is their input, at inference: removed by ``eliminate_identity``.
IDENTITY_OPS = ("Identity", "Dropout")


def fold_constants(graph: Graph, known: dict) -> Graph:
    """Replace every node whose outputs are all known at compile time (``known`` comes from
    ``infer_shapes``) by initializers, keeping only the constants something still reads."""
    g = graph.copy()
    kept = []
    for n in g.nodes:
        if all((not o) or o in known for o in n.outputs) and any(n.outputs):
            continue
        kept.append(n)
    g.nodes = kept
    needed = {i for n in kept for i in n.inputs if i} | set(g.outputs)
    g.initializers = {name: known[name] for name in needed
                      if name in known and name not in g.inputs}
    return eliminate_dead_nodes(g)


def eliminate_dead_nodes(graph: Graph) -> Graph:
    """Drop nodes none of whose outputs reach a graph output, and unread initializers."""
    live = set(graph.outputs)
    kept = []
    for n in reversed(graph.nodes):
        if any(o in live for o in n.outputs if o):
            kept.append(n)
            live.update(i for i in n.inputs if i)
    graph.nodes = kept[::-1]
    graph.initializers = {k: v for k, v in graph.initializers.items() if k in live}
    return graph


# ---- helpers -------------------------------------------------------------------------------------
def _is_inference_identity(graph: Graph, outputs: set, node, consumers: dict) -> bool:
    if node.op_type == "Identity":
        return len(node.inputs) == 1 and bool(node.inputs[0])
    if node.op_type != "Dropout" or not node.inputs[0]:
        return False
    training = node.input(2)
    if training:
        value = graph.initializers.get(training)
        if value is None or bool(np.asarray(value).any()):
            return False  # training mode on, or only known at run time
    mask = node.outputs[1] if len(node.outputs) > 1 else ""
    return not mask or (mask not in consumers and mask not in outputs)


# ---- passes --------------------------------------------------------------------------------------
def eliminate_identity(graph: Graph) -> Graph:
    """Remove Identity and inference-mode Dropout, rewiring readers to the input.

    When the removed node's output is a graph output, that name must survive: the producer of
    the input is renamed to write the output name directly. If the input has no producer to
    rename (a graph input or a constant) or is itself a graph output, the node stays."""
    consumers = graph.consumers()
    producers = graph.producers()
    outputs = set(graph.outputs)
    alias: dict = {}            # removed or renamed value -> the value standing for it
    readers: dict = {}          # value -> kept nodes reading it
    kept, kept_ids = [], set()

    def standing(v):
        """The value now standing for ``v`` (aliases followed, and the chain shortened)."""
        root = v
        while root in alias:
            root = alias[root]
        while v in alias and alias[v] != root:
            alias[v], v = root, alias[v]
        return root

    def keep(node):
        kept.append(node)
        kept_ids.add(id(node))
        for i in node.inputs:
            readers.setdefault(i, []).append(node)

    for n in graph.nodes:
        n.inputs = [standing(i) for i in n.inputs]
        if not _is_inference_identity(graph, outputs, n, consumers):
            keep(n)
            continue
        src, out = n.inputs[0], n.outputs[0]
        if out not in outputs:
            alias[out] = src
            continue
        producer = producers.get(src)
        if producer is None or src in outputs or id(producer) not in kept_ids:
            keep(n)
            continue
        # rename src -> out everywhere: the producer writes the graph output's name
        producer.outputs = [out if o == src else o for o in producer.outputs]
        for m in readers.pop(src, ()):
            m.inputs = [out if i == src else i for i in m.inputs]
            readers.setdefault(out, []).append(m)
        alias[src] = out
        producers[out] = producer
    graph.nodes = kept
    return graph


def fold_batchnorm(graph: Graph) -> Graph:
    """Fold an inference BatchNormalization into the Conv or Gemm producing its input.

    BN(y) = k·(y − mean) + bias with k = scale/√(var + ε) per channel (axis 1), so scaling the
    producer's weights per output channel by k and its bias to k·(b − mean) + bias gives the same
    result with one node less. Needs constant weights and BN parameters, no activation already
    fused into the producer, and the producer's output read by the BN only."""
    consumers = graph.consumers()
    producers = graph.producers()
    outputs = set(graph.outputs)
    names = FreshNames(graph)
    removed = set()
    for bn in graph.nodes:
        if bn.op_type != "BatchNormalization" or bn.attrs.get("training_mode", 0):
            continue
        if len([o for o in bn.outputs if o]) != 1 or not bn.outputs[0]:
            continue
        x = bn.inputs[0]
        prod = producers.get(x)
        params = bn.inputs[1:5]
        if prod is None or id(prod) in removed or len(params) != 4 \
                or not all(p and graph.is_const(p) for p in params):
            continue
        if prod.attrs.get("activation", "") or not sole_reader(outputs, x, bn, consumers):
            continue
        scale, bias, mean, var = (np.asarray(graph.initializers[p], np.float64) for p in params)
        k = scale / np.sqrt(var + float(bn.attrs.get("epsilon", 1e-5)))
        if prod.op_type == "Conv":
            ok = _fold_into_conv(graph, names, prod, k, bias, mean)
        elif prod.op_type == "Gemm":
            ok = _fold_into_gemm(graph, names, prod, k, bias, mean)
        else:
            ok = False
        if ok:
            prod.outputs[0] = bn.outputs[0]
            producers[bn.outputs[0]] = prod
            removed.add(id(bn))
    graph.nodes = [n for n in graph.nodes if id(n) not in removed]
    return graph


def _fold_into_conv(graph, names, conv, k, bn_bias, mean) -> bool:
    w_name, b_name = conv.input(1), conv.input(2)
    if not graph.is_const(w_name) or (b_name and not graph.is_const(b_name)):
        return False
    w = graph.initializers[w_name]
    if w.ndim < 2 or w.shape[0] != k.shape[0]:
        return False
    b = np.asarray(graph.initializers[b_name], np.float64) if b_name else np.zeros(w.shape[0])
    new_w = (w.astype(np.float64) * k.reshape((-1,) + (1,) * (w.ndim - 1))).astype(w.dtype)
    new_b = ((b - mean) * k + bn_bias).astype(w.dtype)
    conv.inputs = [conv.inputs[0], add_const(graph, names, f"{conv.name}_W_bnfold", new_w),
                   add_const(graph, names, f"{conv.name}_B_bnfold", new_b)]
    return True


def _fold_into_gemm(graph, names, gemm, k, bn_bias, mean) -> bool:
    b_name, c_name = gemm.input(1), gemm.input(2)
    if not graph.is_const(b_name) or (c_name and not graph.is_const(c_name)):
        return False
    b = graph.initializers[b_name]
    trans_b = bool(gemm.attrs.get("transB", 0))
    m = b.shape[0] if trans_b else b.shape[1]
    if b.ndim != 2 or m != k.shape[0]:
        return False
    new_b = b.astype(np.float64) * (k[:, None] if trans_b else k[None, :])
    c = np.asarray(graph.initializers[c_name], np.float64) if c_name else np.zeros(())
    c = float(gemm.attrs.get("beta", 1.0)) * c
    new_c = (c - mean) * k + bn_bias          # broadcasts to [M] or [N, M] like C itself
    gemm.inputs = [gemm.inputs[0],
                   add_const(graph, names, f"{gemm.name}_B_bnfold", new_b.astype(b.dtype)),
                   add_const(graph, names, f"{gemm.name}_C_bnfold", new_c.astype(b.dtype))]
    gemm.attrs["beta"] = 1.0
    return True


def _activation_params(graph: Graph, node):
    """(activation, alpha, beta) for a node of a fusable activation op (its class says
    ``fusable``; ``ops.activation.FUSABLE`` maps its parameters), or None."""
    if not getattr(REGISTRY.get((node.domain, node.op_type)), "fusable", False):
        return None
    params = FUSABLE[node.op_type](node, graph.initializers)
    return None if params is None else (node.op_type, float(params[0]), float(params[1]))


def fuse_activation(graph: Graph) -> Graph:
    """Fold an activation following a Conv/Gemm/MatMul/Add into the producer's ``activation``
    attributes (see ``ops.activation.apply_activation``), so the kernel applies it while the
    output is still in cache; an Add becomes ember's fused Add (``FusedAdd``). SiLU is the
    node ``graph.patterns`` makes of ``Mul(x, Sigmoid(x))``."""
    consumers = graph.consumers()
    producers = graph.producers()
    outputs = set(graph.outputs)
    removed = set()
    for n in graph.nodes:
        params = _activation_params(graph, n)
        if params is None:
            continue
        x = n.inputs[0]
        if not sole_reader(outputs, x, n, consumers):
            continue
        prod = producers.get(x)
        fused_matmul = prod is not None and (prod.domain, prod.op_type) == (FUSED_DOMAIN,
                                                                             "MatMul")
        if prod is None or (prod.domain != "" and not fused_matmul) \
                or prod.op_type not in FUSE_PRODUCERS \
                or prod.attrs.get("activation", "") or id(prod) in removed:
            continue
        if graph.types.get(x) != graph.types.get(n.outputs[0]):
            continue
        if prod.op_type == "Add":
            prod.domain = FUSED_DOMAIN
        prod.attrs["activation"], prod.attrs["activation_alpha"], prod.attrs["activation_beta"] = \
            params
        prod.outputs[0] = n.outputs[0]
        producers[n.outputs[0]] = prod
        removed.add(id(n))
    graph.nodes = [n for n in graph.nodes if id(n) not in removed]
    return graph


def optimize(graph: Graph) -> Graph:
    """The standard pipeline after constant folding: written-out patterns become single ops
    (``graph.patterns``) before activations are fused into their producers."""
    graph = eliminate_identity(graph)
    graph = fold_batchnorm(graph)
    graph = fuse_patterns(graph)
    graph = fuse_activation(graph)
    return eliminate_dead_nodes(graph)
