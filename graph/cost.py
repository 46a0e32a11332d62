"""Static cost of a typed graph: multiply-accumulates per node and parameter counts.

Used by ``ember info`` and the benchmarks (GFLOP/s = 2·MACs / time).
"""
from __future__ import annotations

import numpy as np

from .ir import Graph, Node


def node_macs(node: Node, types: dict) -> int:
    """Multiply-accumulates of one node (0 for ops that do no arithmetic worth counting)."""
    def shape(name):
        return types[name].shape if name and name in types else None

    op = node.op_type
    y = shape(node.outputs[0]) if node.outputs else None
    if y is None:
        return 0
    if op == "Conv":
        w = shape(node.inputs[1])
        return int(np.prod(y, dtype=np.int64)) * int(np.prod(w[1:], dtype=np.int64))
    if op == "ConvTranspose":
        x, w = shape(node.inputs[0]), shape(node.inputs[1])
        return int(np.prod(x, dtype=np.int64)) * int(np.prod(w[1:], dtype=np.int64))
    if op == "Gemm":
        a = shape(node.inputs[0])
        k = a[0] if node.attrs.get("transA") else a[1]
        return int(np.prod(y, dtype=np.int64)) * int(k)
    if op == "MatMul":
        a = shape(node.inputs[0])
        return int(np.prod(y, dtype=np.int64)) * int(a[-1])
    return 0


def graph_macs(graph: Graph) -> int:
    return sum(node_macs(n, graph.types) for n in graph.nodes)


def parameter_count(graph: Graph) -> int:
    """Elements in floating-point initializers (weights, biases, BN statistics)."""
    return int(sum(v.size for v in graph.initializers.values()
                   if np.asarray(v).dtype.kind == "f"))
