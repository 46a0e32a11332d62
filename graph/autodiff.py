"""Reverse-mode autodiff on the IR: append gradient nodes to a forward+loss graph.

``backward`` walks the forward nodes in reverse topological order and asks each node's op for
its ``gradient`` rule (the op class's ``gradient`` method, set in its family module's gradients
section; graph/TRAINING.md §1). Rules emit
ordinary registered ops through a ``GradContext``, so the gradient part of the graph is planned,
bound to kernels and run exactly like the forward part. A rule names the ops it emits by type
(``ops.op_named``): the gradient ops and ``SumToShape`` land in ember's training domain, the ONNX
ops it reuses (Mul, Reshape, Gemm, …) in the default one. ``to_training`` switches a graph's
BatchNormalization and Dropout nodes to their training forms first.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .errors import ModelError
from .infer import infer_node
from .ir import Graph, Node, TensorType, fresh_name
from .ops import control_flow, get_op, op_named

GRAD_PREFIX = "grad/"


# ---- training mode -------------------------------------------------------------------------
DROPOUT_STEP = "dropout_step"


def to_training(graph: Graph, seed: int = 0) -> Graph:
    """A copy of ``graph`` with BatchNormalization in training mode (batch statistics, running
    statistics updated through two new outputs recorded in ``metadata["buffer_updates"]``, the
    running variance updated with the unbiased batch variance as torch does:
    ``running_var_unbiased=1``; a node whose statistics are not both buffers, or are listed in
    ``metadata["frozen_statistics"]`` — a frozen layer — stays in eval mode) and Dropout active (constant ``training_mode`` input, a
    ``mask`` output, a ``seed`` attribute, and as 4th input one shared int64 scalar graph input
    ``dropout_step`` — its name is in ``metadata["dropout_step"]`` — the training step the masks
    are drawn for, which the caller binds and advances once per step)."""
    g = graph.copy()
    g.metadata = {k: (dict(v) if isinstance(v, dict) else list(v) if isinstance(v, list)
                      else v) for k, v in g.metadata.items()}
    buffers = set(g.metadata.get("buffers", ()))
    frozen = set(g.metadata.get("frozen_statistics", ()))
    updates = g.metadata.setdefault("buffer_updates", {})
    taken = _taken_names(g)
    true_name = step_name = None
    for index, node in enumerate(g.nodes):
        if node.op_type == "BatchNormalization":
            mean, var = node.input(3), node.input(4)
            if int(node.attrs.get("training_mode", 0)):
                continue   # already traced in training mode
            if mean not in buffers or var not in buffers or mean in frozen or var in frozen:
                continue   # frozen statistics: stays in eval mode, gradients still flow
            node.attrs["training_mode"] = 1
            node.attrs["running_var_unbiased"] = 1
            outs = list(node.outputs) + [""] * (3 - len(node.outputs))
            for k, stat in ((1, mean), (2, var)):
                if not outs[k]:
                    outs[k] = fresh_name(taken, f"{stat}/updated")
                if stat in g.types:
                    g.types[outs[k]] = g.types[stat]
                updates[stat] = outs[k]
            node.outputs = outs
        elif node.op_type == "Dropout":
            if true_name is None:
                true_name = fresh_name(taken, "dropout/training_mode")
                g.initializers[true_name] = np.array(True)
                g.types[true_name] = TensorType(np.bool_, ())
                step_name = g.metadata.get("dropout_step")
                if step_name not in g.inputs:
                    step_name = fresh_name(taken, DROPOUT_STEP)
                    g.inputs = list(g.inputs) + [step_name]
                    g.types[step_name] = TensorType(np.int64, ())
                    g.metadata["dropout_step"] = step_name
            ins = list(node.inputs) + [""] * (4 - len(node.inputs))
            ins[2], ins[3] = true_name, step_name
            node.inputs = ins
            if len(node.outputs) < 2 or not node.outputs[1]:
                mask = fresh_name(taken, f"{node.outputs[0]}/mask")
                node.outputs = [node.outputs[0], mask]
                if node.inputs[0] in g.types:
                    g.types[mask] = TensorType(np.bool_, g.types[node.inputs[0]].shape)
            node.attrs["seed"] = int(seed) + index
    return g


# ---- the rules' view of the graph being built ------------------------------------------------
class GradContext:
    """What a gradient rule sees: its forward node, and a way to emit typed nodes."""

    def __init__(self, builder: "_Backward", node: Node, needs: list):
        self._b, self.node, self._needs = builder, node, needs

    def needs(self, i: int) -> bool:
        return i < len(self._needs) and self._needs[i]

    def input(self, i: int) -> str:
        return self.node.input(i)

    def output(self, k: int, what: str = "") -> str:
        """Name of forward output ``k``; an absent optional output (a Dropout mask, a loss's
        log_prob) is added to the node, typed and named ``<output 0>/<what>``, so the rule can
        read it."""
        node = self.node
        if k < len(node.outputs) and node.outputs[k]:
            return node.outputs[k]
        outs = list(node.outputs) + [""] * (k + 1 - len(node.outputs))
        outs[k] = self._b.fresh(f"{node.outputs[0]}/{what or f'out{k}'}")
        node.outputs = outs
        op = get_op(node.op_type, node.domain)
        infer_node(self._b.graph, op, node, dict(self._b.known), set())
        return outs[k]

    def type(self, name: str) -> TensorType:
        return self._b.graph.types[name]

    @property
    def known(self) -> dict:
        """Values known at compile time (initializers and values folded from them): constant
        bounds, axes, ratios."""
        return self._b.known

    def value(self, name: str):
        """The constant value of ``name``, or None when it is computed at run time."""
        return self._b.known.get(name) if name else None

    def shape(self, name: str) -> tuple:
        return tuple(int(d) for d in self.type(name).shape)

    def const(self, array, base: str = "const") -> str:
        return self._b.const(np.asarray(array), f"{GRAD_PREFIX}{self.node.name}/{base}")

    def op(self, op_type: str, inputs, num_outputs: int = 1, used=None, **attrs):
        """Emit one node; its output name (a list of names when ``num_outputs`` > 1, with
        ``""`` for the outputs ``used`` marks False: left absent, the op skips them)."""
        return self._b.emit(op_type, inputs, num_outputs, attrs, self.node, used)

    def sum_to(self, grad: str, shape) -> str:
        """``grad`` summed down to ``shape`` (numpy broadcasting), or ``grad`` when it already
        has that shape."""
        shape = tuple(int(d) for d in shape)
        if self.shape(grad) == shape:
            return grad
        return self.op("SumToShape", [grad], shape=list(shape))

    def reshape(self, grad: str, shape) -> str:
        shape = tuple(int(d) for d in shape)
        if self.shape(grad) == shape:
            return grad
        return self.op("Reshape", [grad, self.const(np.array(shape, np.int64), "shape")])

    def fail(self, msg: str):
        raise ModelError(f"{self.node}: cannot differentiate: {msg}")


# ---- backward ---------------------------------------------------------------------------------
def backward(graph: Graph, loss: str, wrt: Sequence[str]) -> tuple:
    """(new graph, {name in wrt: its gradient value}) — see graph/TRAINING.md §1."""
    return _Backward(graph, loss, list(wrt)).run()


# Constant propagation in ``backward`` stops at values bigger than this: it is there for small
# constants (Clip bounds, Pad amounts, axes), not to run a network whose weights are constants.
SMALL_FOLD_ELEMENTS = 4096


def _known_values(g: Graph) -> dict:
    """Values known before running: initializers plus small values computed from them (e.g.
    Clip bounds or Pad amounts an imported model makes with Constant nodes)."""
    known = dict(g.initializers)
    for node in g.nodes:
        op = get_op(node.op_type, node.domain)
        outs = [o for o in node.outputs if o]
        if not op.foldable or not all((not i) or i in known for i in node.inputs) or not all(
                o in g.types and g.types[o].size <= SMALL_FOLD_ELEMENTS for o in outs):
            continue
        try:
            values = op.compute(node, [known[i] if i else None for i in node.inputs])
        except Exception:   # the forward graph's own problems surface when it is compiled
            continue
        known.update((o, np.asarray(v)) for o, v in zip(node.outputs, values) if o)
    return known


def _taken_names(g: Graph) -> set:
    taken = set(g.types) | set(g.initializers) | set(g.inputs) | set(g.outputs)
    taken.update(o for n in g.nodes for o in n.outputs if o)
    return taken


class _Backward:
    def __init__(self, graph: Graph, loss: str, wrt: list):
        self.graph = g = graph.copy()
        self.loss, self.wrt = loss, wrt
        self._check(g)
        g.toposort()
        self.known = _known_values(g)
        self.taken = _taken_names(g)
        self.node_names = {n.name for n in g.nodes}
        self.new_nodes: list = []
        self.temps: set = set()       # values a rule just made: renamed to grad/<value>
        # value -> the new nodes naming it, and -> the values whose contributions list it, so a
        # rename touches only those (a scan of everything made the walk quadratic)
        self.users: dict = {}
        self.listed_in: dict = {}

    # checks -----------------------------------------------------------------------------------
    def _check(self, g: Graph):
        missing = [v for v in [self.loss, *self.wrt] if v not in g.types]
        if missing:
            raise ModelError(f"backward: value {missing[0]!r} is not in the graph (or the graph "
                             f"is not shape-inferred)")
        for n in g.nodes:
            for o in n.outputs:
                if o and o not in g.types:
                    raise ModelError(f"backward: {n} output {o!r} has no type; run "
                                     f"infer_shapes first")
        for name, t in g.types.items():
            if not t.is_static:
                raise ModelError(f"backward needs static shapes; value {name!r} has shape "
                                 f"{t.shape} (infer shapes with a concrete batch size)")
        t = g.types[self.loss]
        if t.dtype.kind != "f" or t.size != 1:
            raise ModelError(f"backward: loss {self.loss!r} must be a float value with one "
                             f"element, got {t}")
        for v in self.wrt:
            if g.types[v].dtype.kind != "f":
                raise ModelError(f"backward: cannot differentiate with respect to {v!r} of "
                                 f"dtype {g.types[v].dtype} (not floating point)")

    # emitting -----------------------------------------------------------------------------------
    def fresh(self, base: str) -> str:
        return fresh_name(self.taken, base)

    def const(self, array: np.ndarray, base: str) -> str:
        name = self.fresh(base)
        self.graph.initializers[name] = array
        self.graph.types[name] = TensorType(array.dtype, array.shape)
        self.known[name] = array
        return name

    def emit(self, op_type, inputs, num_outputs, attrs, fwd: Node, used=None):
        op = op_named(op_type)
        base = f"{GRAD_PREFIX}{fwd.name}/{op_type}"
        node_name = fresh_name(self.node_names, base)
        used = [True] * num_outputs if used is None else list(used)
        outs = [self.fresh(base if num_outputs == 1 else f"{base}:{k}") if used[k] else ""
                for k in range(num_outputs)]
        node = Node(op_type, [i or "" for i in inputs], list(outs), dict(attrs), node_name,
                    op.domain)
        while node.inputs and not node.inputs[-1]:
            node.inputs.pop()
        while node.outputs and not node.outputs[-1]:
            node.outputs.pop()
        infer_node(self.graph, op, node, dict(self.known), set())
        self.graph.nodes.append(node)
        self.new_nodes.append(node)
        for v in {*node.inputs, *node.outputs} - {""}:
            self.users.setdefault(v, []).append(node)
        self.temps.update(o for o in outs if o)
        return outs[0] if num_outputs == 1 else outs

    def _rename(self, old: str, new: str):
        nodes = self.users.pop(old, [])
        for n in nodes:
            n.inputs = [new if i == old else i for i in n.inputs]
            n.outputs = [new if o == old else o for o in n.outputs]
        self.users.setdefault(new, []).extend(nodes)
        self.graph.types[new] = self.graph.types.pop(old)
        keys = self.listed_in.pop(old, set())
        for key in keys:
            lst = self.contrib[key]
            lst[:] = [new if c == old else c for c in lst]
        self.listed_in.setdefault(new, set()).update(keys)
        self.temps.discard(old)
        self.taken.discard(old)

    def _contribute(self, value: str, grad: str) -> None:
        self.contrib.setdefault(value, []).append(grad)
        self.listed_in.setdefault(grad, set()).add(value)

    # the walk -----------------------------------------------------------------------------------
    def _finalize(self, value: str) -> str:
        """The gradient of ``value``: its one contribution (renamed grad/<value> when a rule
        just made it) or the Sum of several."""
        if value in self.final:
            return self.final[value]
        parts = self.contrib[value]
        if len(parts) == 1:
            name = parts[0]
            if name in self.temps:
                new = self.fresh(GRAD_PREFIX + value)
                self._rename(name, new)
                name = new
        else:
            dummy = Node("Sum", [], [], name=value)
            name = self.emit("Sum", parts, 1, {}, dummy)
            new = self.fresh(GRAD_PREFIX + value)
            self._rename(name, new)
            name = new
        self.final[value] = name
        return name

    def run(self):
        g = self.graph
        forward = list(g.nodes)
        # values depending on a wrt value, and values the loss depends on
        ahead = set(self.wrt)
        for n in forward:
            if any(i in ahead for i in n.inputs if i):
                ahead.update(o for o in n.outputs if o)
        behind = {self.loss}
        for n in reversed(forward):
            if any(o in behind for o in n.outputs if o):
                behind.update(i for i in n.inputs if i)
        needed = {v for v in ahead & behind if g.types[v].dtype.kind == "f"}

        self.contrib: dict = {}
        self.final: dict = {}
        if self.loss in needed:
            t = g.types[self.loss]
            seed = self.const(np.ones(t.shape, t.dtype), GRAD_PREFIX + self.loss)
            self.contrib[self.loss] = [seed]
        for node in reversed(forward):
            if not any(o in self.contrib for o in node.outputs if o):
                continue
            needs = [bool(i) and i in needed for i in node.inputs]
            if not any(needs):
                continue
            op = get_op(node.op_type, node.domain)
            rule = op.gradient
            if rule is None:
                raise ModelError(f"{node}: op {node.op_type} has no gradient rule, and it lies "
                                 f"between {self.wrt} and the loss {self.loss!r}")
            grads = [self._finalize(o) if o and o in self.contrib else None
                     for o in node.outputs]
            ctx = GradContext(self, node, needs)
            result = list(rule(node, grads, ctx))
            result += [None] * (len(node.inputs) - len(result))
            for i, r in enumerate(result[:len(node.inputs)]):
                if r is None or not needs[i]:
                    continue
                want, got = g.types[node.inputs[i]], g.types[r]
                if tuple(want.shape) != tuple(got.shape) or want.dtype != got.dtype:
                    raise ModelError(f"{node}: gradient rule gave {got} for input {i} "
                                     f"({node.inputs[i]!r}), expected {want}")
                self._contribute(node.inputs[i], r)

        grads, outputs = {}, set(g.outputs)
        for v in self.wrt:
            if v in grads:
                continue
            if v in self.contrib:
                name = self._finalize(v)
            else:
                t = g.types[v]
                name = self.const(np.zeros(t.shape, t.dtype), GRAD_PREFIX + v)
            if name in outputs or name in g.inputs:
                dummy = Node("Identity", [], [], name=v)
                name = self.emit("Identity", [name], 1, {}, dummy)
                new = self.fresh(f"{GRAD_PREFIX}{v}")
                self._rename(name, new)
                name = new
            outputs.add(name)
            grads[v] = name
        g.outputs = list(g.outputs) + [grads[v] for v in dict.fromkeys(self.wrt)]
        g.metadata = dict(g.metadata)
        return g, grads


control_flow.Machinery.backward = backward   # the If gradient differentiates its branch
