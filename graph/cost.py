"""Static cost of a typed graph: multiply-accumulates per node, the work of a node's numpy
reference, and parameter counts.

MACs are used by ``ember info`` and the benchmarks (GFLOP/s = 2·MACs / time); each op counts its
own (``Op.macs``). Work (``Op.work``, element operations of the numpy reference) bounds what
ember agrees to compute with numpy: constant folding skips a node above ``FOLD_BUDGET`` (the
node then runs at run time, usually as a kernel), and a node left to its numpy reference at run
time is refused above ``REFERENCE_LIMIT``. One element operation is roughly a nanosecond.
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


# Work (element operations) constant folding spends on one node at load time (~0.1 s).
FOLD_BUDGET = 1 << 26
# Work a node may take when it runs as its numpy reference at run time (~4 s per run): above it
# the model is refused at compile time, since no kernel covers that case.
REFERENCE_LIMIT = 1 << 32


def node_work(node: Node, types: dict) -> int:
    """Element operations of one node's numpy reference (``Op.work``); 0 for an unknown op."""
    op = REGISTRY.get((node.domain, node.op_type))
    return 0 if op is None else int(op.work(node, types))


def graph_macs(graph: Graph) -> int:
    return sum(node_macs(n, graph.types) for n in graph.nodes)


def parameter_count(graph: Graph) -> int:
    """Elements in floating-point initializers (weights, biases, BN statistics)."""
    return int(sum(v.size for v in graph.initializers.values()
                   if np.asarray(v).dtype.kind == "f"))
