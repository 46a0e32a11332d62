"""The IR: a static dataflow graph of named values.

Values are referred to by name (a string). ``""`` in a node's inputs means "optional input
absent", as in ONNX. Constant tensors (initializers) live in ``Graph.initializers``; every other
value is produced by exactly one node or is a graph input. ``Graph.types`` holds the inferred
``TensorType`` of every value once shape inference has run (see ``graph.infer``).

Op semantics are those of the newest ONNX opset for the op (the importer upgrades older forms),
plus a few ember-only attributes that passes add (e.g. a fused activation on Conv/Gemm).
"""
from __future__ import annotations

import copy as _copy
from dataclasses import dataclass, field

import numpy as np

from .errors import ModelError

Dim = "int | str"  # a concrete size, or a symbolic name such as "batch"


@dataclass(frozen=True)
class TensorType:
    """dtype + shape. A dim is an ``int`` (static) or a ``str`` (symbolic, e.g. ``"N"``)."""

    dtype: np.dtype
    shape: tuple

    def __post_init__(self):
        object.__setattr__(self, "dtype", np.dtype(self.dtype))
        object.__setattr__(self, "shape", tuple(self.shape))

    @property
    def is_static(self) -> bool:
        return all(isinstance(d, (int, np.integer)) for d in self.shape)

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        n = 1
        for d in self.shape:
            n *= int(d)
        return n

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def __str__(self):
        dims = "×".join(str(d) for d in self.shape) if self.shape else "scalar"
        return f"{self.dtype.name}[{dims}]"


@dataclass
class Node:
    op_type: str
    inputs: list
    outputs: list
    attrs: dict = field(default_factory=dict)
    name: str = ""
    domain: str = ""

    def input(self, i: int) -> str:
        """Name of input ``i`` or ``""`` when absent (past the end or empty)."""
        return self.inputs[i] if i < len(self.inputs) else ""

    def __str__(self):
        return f"{self.op_type} node {self.name!r}"


def fresh_name(taken: set, base: str, claim: bool = True) -> str:
    """``base``, or ``base_1``, ``base_2``, … — the first not in ``taken`` (added to it when
    ``claim``): how every pass, rule and importer names what it adds."""
    name, k = base, 0
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    if claim:
        taken.add(name)
    return name


@dataclass
class Graph:
    nodes: list = field(default_factory=list)
    inputs: list = field(default_factory=list)          # names of runtime inputs (feeds)
    outputs: list = field(default_factory=list)         # names of graph outputs
    initializers: dict = field(default_factory=dict)    # name -> np.ndarray (constants)
    types: dict = field(default_factory=dict)           # name -> TensorType
    name: str = "graph"
    opset: int = 0                                      # default-domain opset it was imported at
    metadata: dict = field(default_factory=dict)

    # ---- construction helpers -------------------------------------------------------------
    def add_node(self, op_type, inputs, outputs, name=None, **attrs) -> Node:
        node = Node(op_type, list(inputs), list(outputs), dict(attrs),
                    name or f"{op_type}_{len(self.nodes)}")
        self.nodes.append(node)
        return node

    def copy(self) -> "Graph":
        """Copy nodes and dicts; constant arrays are shared (they are never written in place)."""
        g = Graph(nodes=[_copy.copy(n) for n in self.nodes], inputs=list(self.inputs),
                  outputs=list(self.outputs), initializers=dict(self.initializers),
                  types=dict(self.types), name=self.name, opset=self.opset,
                  metadata=dict(self.metadata))
        for n in g.nodes:
            n.inputs, n.outputs, n.attrs = list(n.inputs), list(n.outputs), dict(n.attrs)
        return g

    # ---- queries --------------------------------------------------------------------------
    def producers(self) -> dict:
        """value name -> node producing it."""
        return {o: n for n in self.nodes for o in n.outputs if o}

    def consumers(self) -> dict:
        """value name -> list of nodes reading it."""
        out: dict = {}
        for n in self.nodes:
            for i in n.inputs:
                if i:
                    out.setdefault(i, []).append(n)
        return out

    def is_const(self, name: str) -> bool:
        return name in self.initializers

    def unique_name(self, base: str) -> str:
        taken = set(self.types) | set(self.initializers) | set(self.inputs)
        taken.update(o for n in self.nodes for o in n.outputs)
        return fresh_name(taken, base, claim=False)

    # ---- structural checks ----------------------------------------------------------------
    def toposort(self) -> None:
        """Order ``nodes`` so every node follows its producers; ModelError on cycles or on an
        input nothing produces. Stable: an already-sorted graph keeps its order."""
        available = set(self.inputs) | set(self.initializers) | {""}
        produced_by = {}
        for n in self.nodes:
            for o in n.outputs:
                if not o:
                    continue
                if o in produced_by or o in self.initializers or o in self.inputs:
                    raise ModelError(f"value {o!r} is produced more than once "
                                     f"(by {n} and elsewhere)")
                produced_by[o] = n
        for n in self.nodes:
            for i in n.inputs:
                if i not in available and i not in produced_by:
                    raise ModelError(f"{n} reads {i!r}, which no node, input or initializer "
                                     f"provides")
        for o in self.outputs:
            if o not in available and o not in produced_by:
                raise ModelError(f"graph output {o!r} is not produced by any node")
        # Kahn's algorithm, visiting nodes in their current order for stability.
        pending = {id(n): sum(1 for i in set(n.inputs) if i in produced_by) for n in self.nodes}
        users: dict = {}
        for n in self.nodes:
            for i in set(n.inputs):
                if i in produced_by:
                    users.setdefault(i, []).append(n)
        ready = [n for n in self.nodes if pending[id(n)] == 0]
        order, pos = [], {id(n): k for k, n in enumerate(self.nodes)}
        import heapq
        heap = [(pos[id(n)], id(n), n) for n in ready]
        heapq.heapify(heap)
        while heap:
            _, _, n = heapq.heappop(heap)
            order.append(n)
            for o in n.outputs:
                for u in users.get(o, ()):
                    pending[id(u)] -= 1
                    if pending[id(u)] == 0:
                        heapq.heappush(heap, (pos[id(u)], id(u), u))
        if len(order) != len(self.nodes):
            stuck = [n.name for n in self.nodes if pending[id(n)] > 0][:5]
            raise ModelError(f"graph has a cycle through nodes {stuck}")
        self.nodes = order

    def summary(self) -> str:
        lines = [f"graph {self.name!r}: {len(self.nodes)} nodes"]
        for n in self.nodes:
            ins = ", ".join(n.inputs)
            outs = ", ".join(f"{o}:{self.types.get(o, '?')}" for o in n.outputs)
            lines.append(f"  {n.name}: {n.op_type}({ins}) -> {outs}")
        return "\n".join(lines)
