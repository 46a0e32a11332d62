"""An imported ONNX model, cut at a named value, as an ``ember.nn.Module`` (transfer learning).

    backbone = nn.load_onnx("digits04.onnx", until="features/Flatten", freeze=True)
    model = nn.Sequential(backbone, nn.Linear(64, 5))     # a new head
    trainer = ember.Trainer(model, input_shape=(1, 8, 8))  # trains the head only

``forward`` writes the imported nodes from the data input up to the producer of ``until`` into
the graph being traced, as the file wrote them (inference semantics: the Trainer switches
BatchNormalization and Dropout to their training forms itself). The float initializers that
feed an op's ``parameter_inputs`` / ``buffer_inputs`` (``graph/ops``; the same rule as
``Trainer.from_onnx``) become this module's Parameters and Buffers, named after the
initializers, so the cut model's ``state_dict`` keys are the exporting model's; every other
initializer (shapes, axes) stays a constant.
"""
from __future__ import annotations

import difflib
import re

import numpy as np

from .graph.errors import ModelError, ShapeError
from .graph.ir import Graph
from .graph.ops import get_op
from .nn import Buffer, Module, Parameter, _value

__all__ = ["OnnxModule", "load_onnx"]

_BUILDER_ARGS = ("num_outputs", "name", "domain")   # attribute names Builder.op takes itself
_LISTED = 12    # value names an error message lists before eliding the rest


class OnnxModule(Module):
    """The part of an ONNX model (path, bytes or ``onnx.ModelProto``) that computes ``until``
    (None: the model's single output) from the data input ``input_name`` (None: the model's
    single non-initializer input). ``freeze=True`` freezes every parameter
    (``requires_grad_(False)``); BatchNorm nodes whose scale and bias are both frozen, or all
    of them while this module is in eval mode inside a model in training mode, keep their
    running statistics in training (``frozen_statistics``)."""

    def __init__(self, src, until: str | None = None, freeze: bool = True,
                 input_name: str | None = None):
        super().__init__()
        from .importers.onnx import load_onnx as import_onnx
        graph = import_onnx(src)
        self.input_name = _data_input(graph, input_name)
        self.input_type = graph.types[self.input_name]
        self.until = _output(graph, until)
        self._nodes = _cut(graph, self.input_name, self.until)
        self._constants, self._state = {}, {}    # initializer -> array / Parameter or Buffer
        self._batch_norms = []                   # (scale, bias, mean, var) initializer names
        self._collect_state(graph)
        if freeze:
            self.freeze()

    def _collect_state(self, graph: Graph):
        keys: set = set()
        for node in self._nodes:
            op = get_op(node.op_type, node.domain)
            for slots, kind in ((op.parameter_inputs, Parameter), (op.buffer_inputs, Buffer)):
                for i in slots:
                    name = node.input(i)
                    a = graph.initializers.get(name)
                    if a is None or name in self._state or np.asarray(a).dtype.kind != "f" \
                            or np.ndim(a) < 1:
                        continue
                    a = np.asarray(a)
                    p = kind(a, dtype=a.dtype)
                    self._state[name] = p
                    store = self._buffers if kind is Buffer else self._parameters
                    store[_state_key(name, keys)] = p
            if node.op_type == "BatchNormalization":
                self._batch_norms.append(tuple(node.input(i) for i in range(1, 5)))
        for node in self._nodes:
            for name in node.inputs:
                if name in graph.initializers and name not in self._state:
                    self._constants[name] = np.asarray(graph.initializers[name])

    def _fixed_statistics(self, model_training: bool):
        fixed = []
        for names in self._batch_norms:
            scale, bias, mean, var = (self._state.get(n) for n in names)
            if not (isinstance(mean, Buffer) and isinstance(var, Buffer)):
                continue
            affine = [p for p in (scale, bias) if isinstance(p, Parameter)]
            if (model_training and not self.training) or \
                    (affine and not any(p.requires_grad for p in affine)):
                fixed += [mean, var]
        return fixed

    def forward(self, x):
        self._check_input(x)
        b = x.builder
        env = {self.input_name: x}
        for name, p in self._state.items():
            env[name] = _value(p)
        for name, a in self._constants.items():
            env[name] = b.constant(a, dtype=a.dtype)
        for node in self._nodes:
            outs = list(node.outputs)
            while len(outs) > 1 and not outs[-1]:
                outs.pop()
            attrs = {k: v for k, v in node.attrs.items() if k not in _BUILDER_ARGS}
            b.scope.append(node.name)     # node names carry the imported node's name
            try:
                ys = b.op(node.op_type, [env[i] if i else None for i in node.inputs],
                          num_outputs=len(outs), domain=node.domain, **attrs)
            finally:
                b.scope.pop()
            b.graph.nodes[-1].attrs.update((k, v) for k, v in node.attrs.items()
                                           if k in _BUILDER_ARGS)
            env.update((o, y) for o, y in zip(outs, ys if len(outs) > 1 else (ys,)) if o)
        return env[self.until]

    def _check_input(self, x):
        want = self.input_type.shape
        if x.dtype != self.input_type.dtype or x.ndim != len(want) or any(
                isinstance(w, (int, np.integer)) and isinstance(d, (int, np.integer)) and w != d
                for w, d in zip(want[1:], x.shape[1:])):
            raise ShapeError(f"OnnxModule: input {self.input_name!r} of the imported model is "
                             f"{self.input_type}, got {x.dtype}[{'×'.join(map(str, x.shape))}]")

    def extra_repr(self):
        return (f"input={self.input_name!r}, until={self.until!r}, nodes={len(self._nodes)}, "
                f"params={self.num_parameters()}")


def load_onnx(src, until: str | None = None, freeze: bool = True,
              input_name: str | None = None) -> OnnxModule:
    """``OnnxModule(src, until, freeze, input_name)``: an imported ONNX model, cut at value
    ``until``, as a Module to put in front of a new head."""
    return OnnxModule(src, until, freeze, input_name)


# ---- choosing the nodes ------------------------------------------------------------------------
def _data_input(graph: Graph, input_name):
    data = [n for n in graph.inputs if n not in graph.initializers]
    if input_name is None:
        if len(data) != 1:
            raise ModelError(f"load_onnx: the model has {len(data)} data inputs {data}; pass "
                             f"input_name= to choose the one the module's forward(x) feeds")
        return data[0]
    if input_name not in data:
        raise ModelError(f"load_onnx: input_name {input_name!r} is not a data input of the "
                         f"model (its data inputs: {data})")
    return input_name


def _output(graph: Graph, until):
    if until is not None:
        return str(until)
    if len(graph.outputs) != 1:
        raise ModelError(f"load_onnx: the model has {len(graph.outputs)} outputs "
                         f"{graph.outputs}; pass until= to name the value to cut at")
    return graph.outputs[0]


def _cut(graph: Graph, data: str, until: str) -> list:
    """The nodes that compute ``until`` from ``data`` and the initializers, in graph order."""
    producer = {o: n for n in graph.nodes for o in n.outputs if o}
    reachable = {data}
    for node in graph.nodes:
        if any(i in reachable for i in node.inputs if i):
            reachable.update(o for o in node.outputs if o)
    on_path = [o for n in graph.nodes for o in n.outputs if o in reachable]
    if until not in producer:
        what = ("is the data input itself" if until == data else
                "is an initializer (a constant), not a computed value"
                if until in graph.initializers else
                "is an input of the model, not a computed value" if until in graph.inputs else
                "names no value of the model")
        raise ModelError(f"load_onnx: until={until!r} {what}; {_nearby(until, on_path)}")
    if until not in reachable:
        raise ModelError(f"load_onnx: until={until!r} does not depend on the input {data!r}; "
                         f"{_nearby(until, on_path)}")
    needed, wanted = set(), [until]
    while wanted:
        node = producer.get(wanted.pop())
        if node is None or id(node) in needed:
            continue
        needed.add(id(node))
        for i in node.inputs:
            if not i or i == data or i in graph.initializers:
                continue
            if i not in producer:
                raise ModelError(f"load_onnx: until={until!r} needs {i!r}, an input of the "
                                 f"model other than {data!r}; pass input_name= or cut earlier")
            wanted.append(i)
    return [n for n in graph.nodes if id(n) in needed]


def _nearby(name: str, values: list) -> str:
    """Close matches to ``name``, then the values computed from the input, in order."""
    close = difflib.get_close_matches(name, values, n=3, cutoff=0.5)
    shown = values if len(values) <= 2 * _LISTED else \
        values[:_LISTED] + ["…"] + values[-_LISTED:]
    hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
    return f"{hint}values computed from the input, in order: {', '.join(shown)}"


_UNSAFE = re.compile(r"[^0-9A-Za-z_.]")


def _state_key(name: str, taken: set) -> str:
    """``name`` as a state_dict key: letters, digits, ``_`` and non-empty dotted parts."""
    key = ".".join(p for p in _UNSAFE.sub("_", name).split(".") if p) or "param"
    unique, k = key, 0
    while unique in taken:
        k += 1
        unique = f"{key}_{k}"
    taken.add(unique)
    return unique
