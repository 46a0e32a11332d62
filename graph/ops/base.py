"""The op registry: one ``Op`` subclass per op, each owning its attributes, shape inference and a
numpy reference (used for constant folding, for dtypes without a fast kernel, and as the
definition of the op's meaning).

An op module looks like::

    @register
    class Relu(Op):
        inplace = (0,)
        def infer(self, ctx):
            return [ctx.type(0)]
        def compute(self, node, inputs):
            return [np.maximum(inputs[0], 0)]

Conventions:

* ``attrs`` maps every attribute name to its default (``REQUIRED`` when it has none). Before
  ``infer``/``compute`` run, ``node.attrs`` holds every attribute with defaults filled in.
* ``infer(ctx)`` returns one ``TensorType`` per output (``None`` for an absent optional output).
  It may rewrite ``ctx.node.attrs`` to resolve shape-dependent attributes (e.g. Conv's
  ``auto_pad`` into explicit ``pads``): the graph it sees is a per-shape copy.
* ``compute(node, inputs)`` takes numpy arrays (``None`` for absent optional inputs) and returns
  one array per output, with exactly the dtypes and shapes ``infer`` promised.
* ``view = True``: output 0 is input 0 reinterpreted with another shape (same bytes, C order), so
  the planner lets them share storage and the runtime runs nothing.
* ``inplace``: indices of inputs whose buffer output 0 may overwrite (same shape and dtype).
* ``foldable = False`` for ops whose output must not be precomputed (randomness, training mode).
* ``parameter_inputs`` / ``buffer_inputs``: indices of inputs that hold a model's trainable
  parameters / its non-trained state (BatchNormalization's running statistics) when they are
  float initializers. ONNX has no notion of a trainable tensor: ``Trainer.from_onnx`` reads
  these to find what to train in an imported file.
* ``gradient(node, grads, g)``: the op's gradient rule for ``graph.autodiff``
  (graph/TRAINING.md §1); ``None`` for an op autodiff cannot differentiate through.
* ``domain``: "" for the ONNX ops; ``TRAINING_DOMAIN`` for the ops only training creates (the
  gradient ops, ``SumToShape``, the loss ops), which no ONNX file may name and export never
  writes.
* ``macs(node, types)`` and ``work(node, types)``: the node's cost — multiply-accumulates, and
  the element operations its numpy reference performs (what bounds constant folding and
  reference fallbacks, see ``graph.cost``).
"""
from __future__ import annotations

import numpy as np

from ..errors import ModelError, ShapeError, UnsupportedOpError
from ..ir import Graph, Node, TensorType

REQUIRED = object()
REGISTRY: dict = {}   # (domain, op_type) -> Op

# Ember's own op domain: the ops autodiff and the losses add to a training graph. Keeping them
# out of the default domain is what lets the importer refuse them and the exporter never write
# them, whatever their names.
TRAINING_DOMAIN = "ai.ember.training"

# One Python-level step of a numpy reference (a kernel tap of a windowed op: a slice and a
# handful of numpy calls, ~10 µs) costs about as much as this many element operations.
REFERENCE_STEP_WORK = 10_000


class NeedsValue(Exception):
    """Shape inference needs the *value* of a graph input (e.g. Reshape's ``shape`` fed at run
    time). The Session catches it, treats that input as part of the plan's cache key, and
    re-infers with the value known."""

    def __init__(self, name):
        super().__init__(name)
        self.name = name


class Op:
    op_type: str = ""
    domain: str = ""
    attrs: dict = {}
    num_inputs: tuple = (1, 1)      # (min, max); max None = variadic
    num_outputs: tuple = (1, 1)
    view: bool = False
    inplace: tuple = ()
    foldable: bool = True
    parameter_inputs: tuple = ()
    buffer_inputs: tuple = ()
    gradient = None

    def infer(self, ctx: "InferContext") -> list:
        raise NotImplementedError(self.op_type)

    def macs(self, node: Node, types: dict) -> int:
        """Multiply-accumulates of ``node`` given every value's type (``ember info``, the
        benchmarks' GFLOP/s); 0 for ops that do no arithmetic worth counting."""
        return 0

    def reference_steps(self, node: Node, types: dict) -> int:
        """Python-level steps of the numpy reference on ``node``: 1 for a vectorised one. A
        windowed op (one with a ``kernel_shape``, resolved by ``infer``) steps through its
        window one kernel tap at a time."""
        kernel = node.attrs.get("kernel_shape")
        return _product(kernel) if kernel else 1

    def reference_temporaries(self, node: Node, types: dict) -> int:
        """Elements of the largest array the numpy reference builds besides its inputs and
        outputs (a windowed op's padded image); 0 when it builds none larger than them."""
        return 0

    def work(self, node: Node, types: dict) -> int:
        """Element operations the numpy reference performs on ``node``, from the types alone:
        its multiply-accumulates, every input, output and temporary element touched once, and
        each Python-level step's overhead plus one pass over the output
        (``REFERENCE_STEP_WORK``). An upper estimate in exact integers, never evaluated by
        running anything."""
        touched = sum(_product(types[v].shape) for v in (*node.inputs, *node.outputs)
                      if v and v in types and types[v].is_static)
        touched += self.reference_temporaries(node, types)
        out = sum(_product(types[v].shape) for v in node.outputs
                  if v and v in types and types[v].is_static)
        steps = self.reference_steps(node, types)
        return int(self.macs(node, types)) + touched + steps * (REFERENCE_STEP_WORK + out)

    def export(self, ctx, node: Node, inputs: list, outputs: list, attrs: dict) -> None:
        """Write ``node`` as ONNX at ``ctx.opset`` through ``ctx`` (the exporter's
        ``ExportContext``). ``inputs``, ``outputs`` and ``attrs`` are the node's own, with any
        fused activation already taken off (the exporter writes it after). Ops whose ONNX form
        differs from the IR's, or from one opset to another, override this."""
        ctx.add(node.op_type, inputs, outputs, node.name, attrs, node)

    def export_refusal(self, node: Node, graph: Graph) -> str | None:
        """Why ``node`` has no ONNX inference form (e.g. it runs in training mode), else None."""
        return None

    def compute(self, node: Node, inputs: list) -> list:
        raise NotImplementedError(self.op_type)


def _product(dims) -> int:
    n = 1
    for d in dims:
        n *= int(d)
    return n


def register(cls):
    """Class decorator: instantiate the op and add it to the registry under its op_type."""
    inst = cls()
    if not inst.op_type:
        inst.op_type = cls.__name__
    REGISTRY[(inst.domain, inst.op_type)] = inst
    return cls


def get_op(op_type: str, domain: str = "") -> Op:
    try:
        return REGISTRY[(domain, op_type)]
    except KeyError:
        raise UnsupportedOpError({(op_type, domain, "?"): ["?"]}) from None


def is_supported(op_type: str, domain: str = "") -> bool:
    return (domain, op_type) in REGISTRY


def op_named(op_type: str) -> Op:
    """The op a bare name means when ember's own code builds a graph (``Builder.op``, gradient
    rules): the default domain's op of that name, else ember's training domain's. Only
    ``SoftmaxCrossEntropyLoss`` is registered in both (ONNX defines it); by name it is ONNX's."""
    op = REGISTRY.get(("", op_type)) or REGISTRY.get((TRAINING_DOMAIN, op_type))
    if op is None:
        raise UnsupportedOpError({(op_type, "", "?"): ["?"]})
    return op


def fill_attrs(op: Op, node: Node) -> None:
    """Fill defaults into ``node.attrs``; ModelError naming the node for a missing required one."""
    for name, default in op.attrs.items():
        if name not in node.attrs:
            if default is REQUIRED:
                raise ModelError(f"{node}: required attribute {name!r} is missing")
            node.attrs[name] = list(default) if isinstance(default, list) else default


class InferContext:
    """What an op's ``infer`` sees: its node, its inputs' types and any known constant values."""

    def __init__(self, graph: Graph, node: Node, consts: dict, runtime_inputs: set,
                 producers: dict | None = None):
        self.graph, self.node, self.consts = graph, node, consts
        self._runtime_inputs = runtime_inputs
        self._producers = producers   # the graph's value -> producer map, when the caller has it
        self.attrs = node.attrs

    # inputs ---------------------------------------------------------------------------------
    @property
    def n_inputs(self) -> int:
        return len(self.node.inputs)

    def has(self, i: int) -> bool:
        return bool(self.node.input(i))

    def type(self, i: int) -> TensorType:
        name = self.node.input(i)
        if not name:
            self.fail(f"input {i} is required but absent")
        return self.graph.types[name]

    def shape(self, i: int) -> tuple:
        return self.type(i).shape

    def dtype(self, i: int) -> np.dtype:
        return self.type(i).dtype

    def const(self, i: int, what: str = "") -> np.ndarray:
        """Value of input ``i`` when it is known at compile time (an initializer, a folded
        value, or a graph input the Session has bound by value)."""
        name = self.node.input(i)
        if name in self.consts:
            return self.consts[name]
        if name in self._runtime_inputs:
            raise NeedsValue(name)
        upstream = self._runtime_inputs_feeding(name)
        if upstream:
            # computed from fed inputs only: the Session keys its plans on their values
            raise NeedsValue(sorted(upstream)[0])
        unfolded = self._unfolded_upstream(name)
        if unfolded is not None:
            self.fail(f"input {i} ({name!r}{', ' + what if what else ''}) must be known before "
                      f"running, but it depends on {unfolded}, too large or too costly to "
                      f"evaluate while loading")
        self.fail(f"input {i} ({name!r}{', ' + what if what else ''}) must be known before "
                  f"running, but it is computed from run-time data (data-dependent shapes are "
                  f"not supported)")

    def _producer_map(self) -> dict:
        return self._producers if self._producers is not None else self.graph.producers()

    def _unfolded_upstream(self, name: str):
        """The first node upstream of ``name`` that folding left to run time, or None."""
        producers = self._producer_map()
        stack, seen = [name], set()
        while stack:
            v = stack.pop()
            if v in seen or v in self.consts or not v:
                continue
            seen.add(v)
            node = producers.get(v)
            if node is None:
                continue
            if self._left_unfolded(node):
                return node
            stack.extend(node.inputs)
        return None

    def _left_unfolded(self, node: Node) -> bool:
        """A foldable node all of whose inputs are known but whose outputs are not: constant
        folding left it to run time (its outputs too large, its work above the budget)."""
        return get_op(node.op_type, node.domain).foldable and \
            all((not i) or i in self.consts for i in node.inputs)

    def _runtime_inputs_feeding(self, name: str) -> set:
        """Graph inputs ``name`` is computed from, when everything upstream of it is either such
        an input or a constant; empty when a random or otherwise unfoldable op, or a node that
        folding left to run time, intervenes."""
        producers = self._producer_map()
        found, stack, seen = set(), [name], set()
        while stack:
            v = stack.pop()
            if v in seen or v in self.consts or not v:
                continue
            seen.add(v)
            if v in self._runtime_inputs:
                found.add(v)
                continue
            node = producers.get(v)
            if node is None:
                return set()
            if not get_op(node.op_type, node.domain).foldable or self._left_unfolded(node):
                return set()   # feeding values would not make it known either
            stack.extend(node.inputs)
        return found

    def maybe_const(self, i: int):
        name = self.node.input(i)
        return self.consts.get(name) if name else None

    # errors ---------------------------------------------------------------------------------
    def fail(self, msg: str):
        ins = ", ".join(f"{n or '<absent>'}: {self.graph.types.get(n, '?')}"
                        for n in self.node.inputs)
        raise ShapeError(f"{self.node}: {msg} (inputs: {ins})")

    def check(self, cond: bool, msg: str):
        if not cond:
            self.fail(msg)
