"""What graph-rewriting passes share: fresh value names, new constants, and whether a value
can disappear into a fused node (graph/passes.py and graph/patterns.py use them)."""
from __future__ import annotations

import numpy as np

from .ir import Graph, TensorType, fresh_name


def sole_reader(outputs: set, value: str, node, consumers: dict) -> bool:
    """True when ``node`` is the only reader of ``value`` and ``value`` is not one of the graph's
    ``outputs``, i.e. the value can disappear into a fused node."""
    readers = consumers.get(value, [])
    return value not in outputs and bool(readers) and all(r is node for r in readers)


class FreshNames:
    """Names no value of ``graph`` has yet, drawn from one set of the names taken (built once,
    so a pass adding many constants stays linear in the graph's size)."""

    def __init__(self, graph: Graph):
        self.taken = set(graph.types) | set(graph.initializers) | set(graph.inputs)
        self.taken.update(o for n in graph.nodes for o in n.outputs)

    def take(self, base: str) -> str:
        return fresh_name(self.taken, base)


def add_const(graph: Graph, names: FreshNames, base: str, array: np.ndarray) -> str:
    name = names.take(base)
    graph.initializers[name] = array
    graph.types[name] = TensorType(array.dtype, array.shape)
    return name
