"""Static cost of a typed graph: multiply-accumulates per node and parameter counts.

Used by ``ember info`` and the benchmarks (GFLOP/s = 2·MACs / time). Each op counts its own
multiply-accumulates (``Op.macs``).
"""
from __future__ import annotations

import numpy as np

from .ir import Graph, Node
from .ops import REGISTRY


def node_macs(node: Node, types: dict) -> int:
    """Multiply-accumulates of one node (0 for ops that do no arithmetic worth counting, and for
    a node whose output has no known type)."""
    op = REGISTRY.get((node.domain, node.op_type))
    if op is None or not node.outputs or not node.outputs[0] \
            or node.outputs[0] not in types:
        return 0
    return int(op.macs(node, types))


def graph_macs(graph: Graph) -> int:
    return sum(node_macs(n, graph.types) for n in graph.nodes)


def parameter_count(graph: Graph) -> int:
    """Elements in floating-point initializers (weights, biases, BN statistics)."""
    return int(sum(v.size for v in graph.initializers.values()
                   if np.asarray(v).dtype.kind == "f"))
