"""The dtype and rank of values inside a model being imported, from ember's own shape inference.

Some old-opset forms hide what their upgrade needs: Softmax < 13 the rank of its input, Clip and
Pad < 11 the dtype of the constants they become, legacy broadcast (opset < 7) the ranks of both
operands. ``ValueTypes`` answers from the graph's inputs and initializers, and otherwise runs the
op registry's ``infer`` over the nodes converted so far (newest-opset forms, in file order) until
the value is known. It never imports ``onnx``.

Inference is a help here, never a requirement: a node whose inputs are unknown, or that ember's
inference refuses, leaves its outputs unknown, and compilation later reports the real error. Each
node is inferred once, on a copy, so the imported nodes keep their attributes as the file gave
them; only small values (shapes, scalars) are folded to constants, which is what the inference
of shape-taking ops (Reshape, Expand, ConstantOfShape, …) needs.
"""
from __future__ import annotations

from collections import ChainMap

import numpy as np

from ..graph.errors import EmberError
from ..graph.infer import infer_node
from ..graph.ir import Graph, Node, TensorType
from ..graph.ops import NeedsValue, get_op

# the largest value folded while importing: shape tensors and scalars, never weights
MAX_FOLD_BYTES = 1 << 16


class ValueTypes:
    """(dtype, rank) of a value of ``graph`` while its nodes are still being appended."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self._scratch = Graph(inputs=list(graph.inputs), initializers=graph.initializers,
                              types=dict(graph.types), opset=graph.opset)
        self._folded: dict = {}
        self._known = ChainMap(self._folded, graph.initializers)
        self._runtime_inputs = set(graph.inputs)
        self._inferred = 0  # graph.nodes[:_inferred] have been inferred

    def lookup(self, name: str):
        """(dtype, rank) of value ``name``; either is None when unknown."""
        found = self._type(name)
        while found is None and self._inferred < len(self.graph.nodes):
            self._infer(self.graph.nodes[self._inferred])
            self._inferred += 1
            found = self._type(name)
        return (found.dtype, found.rank) if found is not None else (None, None)

    def _type(self, name: str):
        if name in self.graph.initializers:
            a = self.graph.initializers[name]
            return TensorType(a.dtype, a.shape)
        return self._scratch.types.get(name)

    def _infer(self, node: Node) -> None:
        types = self._scratch.types
        for i in node.inputs:
            if i and i not in types:
                t = self._type(i)
                if t is None:
                    return
                types[i] = t
        copy = Node(node.op_type, list(node.inputs), list(node.outputs),
                    {k: list(v) if isinstance(v, list) else v for k, v in node.attrs.items()},
                    node.name, node.domain)
        self._scratch.nodes.append(copy)
        try:
            op = get_op(copy.op_type, copy.domain)
            out_types = infer_node(self._scratch, op, copy, self._known, self._runtime_inputs)
        except (EmberError, NeedsValue):
            return
        if op.foldable and all(not i or i in self._known for i in copy.inputs) \
                and all(t is None or (t.is_static and t.nbytes <= MAX_FOLD_BYTES)
                        for t in out_types):
            self._fold(op, copy, out_types)

    def _fold(self, op, node: Node, out_types) -> None:
        try:
            values = op.compute(node, [self._known[i] if i else None for i in node.inputs])
        except Exception:  # a malformed constant: compilation names it, not the importer
            return
        for name, v, t in zip(node.outputs, values, out_types):
            v = np.asarray(v)
            if name and t is not None and v.shape == tuple(t.shape) and v.dtype == t.dtype:
                self._folded[name] = v
