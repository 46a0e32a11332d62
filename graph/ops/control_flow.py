"""Control flow: ``If``, ``Loop`` and ``Scan``, whose attributes hold subgraphs.

Subgraphs. An If branch or a Loop/Scan body is an ember ``Graph`` held in the node's attributes
(``then_branch``/``else_branch``, ``body``). ONNX lets a subgraph read any value of an enclosing
graph by name; the importer makes those reads explicit: every outer value a node's subgraphs
read (at any nesting depth) is appended to the node's inputs and, under the same positions, to
each subgraph's inputs — the *captures*, ``attrs["captured"]`` of them, after the op's own
inputs. So the enclosing graph's passes, planner and liveness see the dependency like any other
input, and a subgraph refers to a capture by its position, whatever a pass renames outside.

Running. A subgraph is compiled as a plan of its own by the node's binder
(``runtime/binders/control_flow.py``): a Session over the subgraph, planned once per input-shape
signature it meets and cached on the binder's state. ``If`` runs the taken branch's plan;
``Loop`` and ``Scan`` run the body's plan once per iteration, the loop-carried values copied
from its outputs to its inputs — no Python per node, only per iteration.

Run-time-shaped values. A value whose shape only running decides — an If output whose branches
disagree on its shape (with a condition not known when compiling), a Loop scan output whose
length depends on when the body's condition turns false — is given a symbolic shape by
inference. The planner gives such a value no arena bytes: the step that produces it allocates it
when it runs (bounded by the Session's memory cap, else an ``InputError`` naming the node), and
the Session returns that array. Such a value may only be a graph output; a node that reads one
needs its shape when compiling, so inference then asks for the condition's (or trip count's)
value — ``NeedsValue`` when graph inputs decide it (the Session keys its plans on them), else a
``ShapeError`` naming the node.

A body whose shapes depend on the iteration number or on a loop-carried value (a Slice at
``i``) is inferred at its first iteration and compiled per value met, as a top-level graph is per
value of a shape-deciding input: correct, but it compiles once per iteration (each iteration's
outputs are checked against the shapes inferred).

Memory. A subgraph's Session has an arena of its own, allocated when the node is bound, with the
bytes the memory cap leaves beside the enclosing arena as its own cap.

Limits. Loop-carried values and Scan states keep their dtype and shape from one iteration to
the next (ONNX allows them to change; ember refuses such a body, naming the node). Scan-8's
batched form is imported as a Scan over the batch whose body is a Scan over time;
``sequence_lens`` is refused.

Bounds. A Loop runs at most ``MAX_LOOP_ITERATIONS`` iterations (an ``InputError`` naming the
node, before the first iteration when the trip count says so); its scan outputs, grown as the
loop runs, must fit in the bytes the memory cap leaves beside the arena. The limit holds per
Loop node and run: loops nested in a body multiply their bounds.

Gradients: through ``If`` (the gradient of the branch taken, see ``_if_gradient``); not through
``Loop`` or ``Scan``.
"""
from __future__ import annotations

import numpy as np

from ..errors import InputError, ModelError, ShapeError
from ..ir import Graph, Node, TensorType
from .base import REFERENCE_STEP_WORK, REQUIRED, NeedsValue, Op, get_op, register

MAX_LOOP_ITERATIONS = 1 << 20


class Machinery:
    """Shape inference and autodiff, which subgraphs need but which import the op registry (so
    an op module may not import them): ``graph.infer`` and ``graph.autodiff`` hand their
    functions over here when they load."""

    infer_shapes = infer_node = backward = None


# ---- captures ---------------------------------------------------------------------------------
def attach_captures(node: Node, free_names: dict) -> None:
    """Append every outer value the node's subgraphs read (``free_names``: attribute -> names
    it reads from enclosing graphs) to the node's inputs and to each subgraph's inputs."""
    captures = list(dict.fromkeys(n for names in free_names.values() for n in names))
    for attr in free_names:
        node.attrs[attr].inputs = list(node.attrs[attr].inputs) + captures
    node.inputs = list(node.inputs) + captures
    node.attrs["captured"] = len(captures)


def _own_inputs(node: Node) -> int:
    """How many of ``node``'s inputs are the op's own (the rest are captures)."""
    return len(node.inputs) - int(node.attrs.get("captured", 0))


def subgraph_of(ctx_or_node, attr: str) -> Graph:
    """Subgraph attribute ``attr`` of a node (or of an InferContext's node)."""
    node = getattr(ctx_or_node, "node", ctx_or_node)
    g = node.attrs.get(attr)
    if not isinstance(g, Graph):
        raise ModelError(f"{node}: attribute {attr!r} must be a subgraph, got "
                         f"{type(g).__name__}")
    return g


# ---- evaluating a subgraph (the numpy reference) ----------------------------------------------
def evaluate(graph: Graph, feeds: list) -> list:
    """Run ``graph`` on ``feeds`` (one array per input, in order) through every node's numpy
    reference; its outputs as arrays."""
    g = graph.copy()
    values = dict(g.initializers)
    for name, a in values.items():
        g.types[name] = TensorType(a.dtype, a.shape)
    for name, a in zip(g.inputs, feeds):
        a = np.asarray(a)
        values[name] = a
        g.types[name] = TensorType(a.dtype, a.shape)
    g.toposort()
    for node in g.nodes:
        op = get_op(node.op_type, node.domain)
        Machinery.infer_node(g, op, node, values, set())
        outs = op.compute(node, [values[i] if i else None for i in node.inputs])
        for o, v in zip(node.outputs, outs):
            if o:
                values[o] = np.asarray(v)
    return [values[o] for o in g.outputs]


def subgraph_types(graph: Graph, feeds: list) -> list:
    """The output types of ``graph`` on ``feeds`` (values known), without running it."""
    g = graph.copy()
    consts = {}
    for name, a in zip(g.inputs, feeds):
        a = np.asarray(a)
        g.types[name] = TensorType(a.dtype, a.shape)
        consts[name] = a
    Machinery.infer_shapes(g, consts)
    return [g.types[o] for o in g.outputs]


def infersubgraph_of(ctx, attr: str, input_types: list, input_values: dict | None = None,
                   first_values: dict | None = None):
    """(output types, known values) of subgraph ``attr`` given its formal inputs' types (its
    captures take the node's input types and known values). ``first_values``: formal input
    position -> value to assume when the subgraph's shapes need it (a loop's first iteration;
    the runtime checks every later iteration against the shapes inferred here). A need for the
    value of a capture is passed on to the enclosing graph (``ctx.const``)."""
    node, sub = ctx.node, subgraph_of(ctx, attr)
    g = sub.copy()
    own = len(g.inputs) - int(node.attrs.get("captured", 0))
    if own != len(input_types):
        raise ModelError(f"{node}: subgraph {attr!r} takes {own} inputs, the node gives it "
                         f"{len(input_types)}")
    consts = dict(input_values or {})
    first = {}
    for k, name in enumerate(g.inputs):
        if k < own:
            g.types[name] = input_types[k]
            continue
        outer = node.inputs[_own_inputs(node) + k - own]
        g.types[name] = ctx.graph.types[outer]
        value = ctx.consts.get(outer)
        if value is not None:
            consts[name] = value
    for k, value in (first_values or {}).items():
        first[g.inputs[k]] = value
    while True:
        try:
            known = Machinery.infer_shapes(g, consts)
            break
        except NeedsValue as e:
            if e.name in first and e.name not in consts:
                consts[e.name] = first[e.name]
                continue
            pos = g.inputs.index(e.name) if e.name in g.inputs else -1
            if pos >= own:
                ctx.const(_own_inputs(node) + pos - own, f"read by subgraph {attr!r} to decide "
                          f"a shape")
            raise ShapeError(f"{node}: subgraph {attr!r} needs the value of {e.name!r} to "
                             f"infer its shapes, which is only known when it runs") from None
        except (ModelError, ShapeError) as e:
            if str(e).startswith(f"{node}:"):
                raise
            raise type(e)(f"{node}: in subgraph {attr!r}: {e}") from None
    return [g.types[o] for o in g.outputs], known


def _check_condition(ctx, t: TensorType, what: str):
    if t.dtype != np.bool_ or not t.is_static or t.size != 1:
        ctx.fail(f"{what} must be a bool scalar (one element), got {t}")


def _read_by_nodes(ctx, name: str) -> bool:
    return any(name in n.inputs for n in ctx.graph.nodes)


def _branch_work(g: Graph) -> int:
    return REFERENCE_STEP_WORK * max(len(g.nodes), 1)


def _export(ctx, node, inputs, outputs, attrs, formal_types: dict) -> None:
    """Write a control-flow node: its subgraphs as GraphProtos reading the captured values by
    their outer names, the captures dropped from its inputs."""
    captured = int(attrs.pop("captured", 0))
    own, outer = inputs[:len(inputs) - captured], inputs[len(inputs) - captured:]
    for attr, formal in formal_types.items():
        attrs[attr] = ctx.subgraph(subgraph_of(node, attr), formal, outer, node)
    ctx.add(node.op_type, own, outputs, node.name, attrs, node)


# ---- If ----------------------------------------------------------------------------------------
@register
class If(Op):
    attrs = {"then_branch": REQUIRED, "else_branch": REQUIRED, "captured": 0}
    num_inputs = (1, None)
    num_outputs = (1, None)

    def infer(self, ctx):
        node = ctx.node
        _check_condition(ctx, ctx.type(0), "input 0 (cond)")
        counts = [len(subgraph_of(ctx, a).outputs) for a in ("then_branch", "else_branch")]
        if counts[0] != counts[1]:
            raise ModelError(f"{node}: then_branch has {counts[0]} outputs, else_branch "
                             f"{counts[1]}; both must have one per If output")
        if len(node.outputs) > counts[0]:
            raise ModelError(f"{node}: has {len(node.outputs)} outputs, its branches "
                             f"{counts[0]}")
        cond = ctx.maybe_const(0)
        if cond is not None:   # only the branch taken must fit these shapes
            return infersubgraph_of(ctx, "then_branch" if _truth(cond) else "else_branch", [])[0]
        then_t, _ = infersubgraph_of(ctx, "then_branch", [])
        else_t, _ = infersubgraph_of(ctx, "else_branch", [])
        out = []
        for k, (a, b) in enumerate(zip(then_t, else_t)):
            if a.dtype != b.dtype:
                ctx.fail(f"output {k}: then_branch gives {a}, else_branch {b} (the dtypes "
                         f"must agree)")
            if a.shape == b.shape:
                out.append(a)
                continue
            name = node.outputs[k] if k < len(node.outputs) else ""
            if a.rank != b.rank or (name and _read_by_nodes(ctx, name)):
                # a node reading it needs its shape now: decided by the condition's value
                ctx.const(0, f"the condition: the branches give output {k} the shapes "
                             f"{a.shape} and {b.shape}")
            out.append(TensorType(a.dtype, tuple(
                da if da == db else f"{node.name}:out{k}:d{axis}"
                for axis, (da, db) in enumerate(zip(a.shape, b.shape)))))
        return out

    def work(self, node, types):
        return max(_branch_work(subgraph_of(node, "then_branch")),
                   _branch_work(subgraph_of(node, "else_branch")))

    def export(self, ctx, node, inputs, outputs, attrs):
        _export(ctx, node, inputs, outputs, attrs, {"then_branch": [], "else_branch": []})

    def compute(self, node, inputs):
        attr = "then_branch" if bool(np.asarray(inputs[0]).reshape(-1)[0]) else "else_branch"
        return evaluate(subgraph_of(node, attr), inputs[_own_inputs(node):])


# ---- Loop --------------------------------------------------------------------------------------
def loop_layout(node: Node) -> tuple:
    """(N loop-carried values, K scan outputs) of a Loop node."""
    body = subgraph_of(node, "body")
    n = _own_inputs(node) - 2
    k = len(body.outputs) - 1 - n
    if n < 0 or k < 0 or len(body.inputs) != 2 + n + int(node.attrs.get("captured", 0)):
        raise ModelError(f"{node}: the body takes {len(body.inputs)} inputs and gives "
                         f"{len(body.outputs)} outputs; a Loop with {max(n, 0)} loop-carried "
                         f"values needs 2 + {max(n, 0)} inputs and 1 + {max(n, 0)} + K outputs")
    return n, k


def passes_condition_through(body: Graph, known: dict) -> bool:
    """Whether the body's condition output is always true when its condition input is: the
    input itself (through Identity nodes) or a constant true."""
    producers = body.producers()
    name = body.outputs[0]
    while True:
        if name == body.inputs[1]:
            return True
        if name in known:
            return bool(np.asarray(known[name]).reshape(-1)[0])
        p = producers.get(name)
        if p is None or p.op_type != "Identity":
            return False
        name = p.inputs[0]


def _truth(a) -> bool:
    return bool(np.asarray(a).reshape(-1)[0])


def exact_trip_count(node: Node, m, cond, body_known: dict):
    """The number of iterations when it is known before running (``m``/``cond``: the known
    values of M and cond, None when absent or decided at run time): 0 when cond is false, M
    when it is true (or absent) and the body passes it through unchanged; else None."""
    if node.input(1) and cond is not None and not _truth(cond):
        return 0
    if (node.input(1) and cond is None) or not node.input(0) or m is None:
        return None
    if not passes_condition_through(subgraph_of(node, "body"), body_known):
        return None
    return max(int(np.asarray(m).reshape(-1)[0]), 0)


@register
class Loop(Op):
    attrs = {"body": REQUIRED, "captured": 0}
    num_inputs = (2, None)
    num_outputs = (1, None)
    foldable = False

    def infer(self, ctx):
        node = ctx.node
        n, k = loop_layout(node)
        if len(node.outputs) > n + k:
            raise ModelError(f"{node}: has {len(node.outputs)} outputs, its body gives {n} "
                             f"loop-carried values and {k} scan outputs")
        if ctx.has(0):
            t = ctx.type(0)
            if t.dtype != np.int64 or not t.is_static or t.size != 1:
                ctx.fail(f"input 0 (M, the trip count) must be an int64 scalar, got {t}")
        if ctx.has(1):
            _check_condition(ctx, ctx.type(1), "input 1 (cond)")
        carried = [ctx.type(2 + i) for i in range(n)]
        formal = [TensorType(np.int64, ()), TensorType(np.bool_, ()), *carried]
        first = {0: np.array(0, np.int64), 1: np.array(True)}
        first.update({2 + i: ctx.consts[node.inputs[2 + i]] for i in range(n)
                      if node.inputs[2 + i] in ctx.consts})
        out_t, known = infersubgraph_of(ctx, "body", formal, first_values=first)
        _check_condition(ctx, out_t[0], "the body's output 0 (its condition)")
        for i in range(n):
            if out_t[1 + i] != carried[i]:
                ctx.fail(f"loop-carried value {i} enters the body as {carried[i]} and leaves "
                         f"it as {out_t[1 + i]}; ember needs it to keep its dtype and shape")
        trips = exact_trip_count(node, ctx.maybe_const(0), ctx.maybe_const(1), known)
        scans = []
        for j in range(k):
            t = out_t[1 + n + j]
            name = node.outputs[n + j] if n + j < len(node.outputs) else ""
            if trips is None and name and _read_by_nodes(ctx, name):
                why = f"scan output {name!r}, read by other nodes, is as long as the loop runs"
                for i in (0, 1):
                    if ctx.has(i):
                        ctx.const(i, why)   # NeedsValue when graph inputs decide it
                ctx.fail(f"scan output {name!r} is read by other nodes, but its length is only "
                         f"known when the loop runs (no trip count, or a body condition that "
                         f"may end it early); ember plans such a value only as a graph output")
            length = trips if trips is not None else f"{node.name}:trips"
            scans.append(TensorType(t.dtype, (length, *t.shape)))
        return carried + scans

    def work(self, node, types):
        return _branch_work(subgraph_of(node, "body"))

    def export(self, ctx, node, inputs, outputs, attrs):
        n, _ = loop_layout(node)
        carried = [ctx.types.get(i) for i in inputs[2:2 + n]]
        formal = [TensorType(np.int64, ()), TensorType(np.bool_, ()), *carried]
        _export(ctx, node, inputs, outputs, attrs, {"body": formal})

    def compute(self, node, inputs):
        n, k = loop_layout(node)
        body = subgraph_of(node, "body")
        own = _own_inputs(node)
        m, cond = inputs[0], inputs[1]
        trips = None if m is None else int(np.asarray(m).reshape(-1)[0])
        go = True if cond is None else bool(np.asarray(cond).reshape(-1)[0])
        carried, captures = list(inputs[2:own]), inputs[own:]
        scans = [[] for _ in range(k)]
        i = 0
        while go and (trips is None or i < trips):
            check_iterations(node, i + 1)
            outs = evaluate(body, [np.array(i, np.int64), np.array(go), *carried, *captures])
            go = bool(np.asarray(outs[0]).reshape(-1)[0])
            carried = outs[1:1 + n]
            for j in range(k):
                scans[j].append(outs[1 + n + j])
            i += 1
        result = list(carried)
        if k and not i:   # no iteration ran: the scan outputs' slices come from inference
            types = subgraph_types(body, [np.array(0, np.int64), np.array(True), *carried,
                                          *captures])
            return result + [np.zeros((0, *t.shape), t.dtype) for t in types[1 + n:]]
        return result + [np.stack(s) for s in scans]


def check_iterations(node: Node, count: int) -> None:
    if count > MAX_LOOP_ITERATIONS:
        raise InputError(f"{node}: the loop would run {count:,} iterations or more, past "
                         f"ember's limit of {MAX_LOOP_ITERATIONS:,} "
                         f"(ember.graph.ops.control_flow.MAX_LOOP_ITERATIONS)")


# ---- Scan --------------------------------------------------------------------------------------
def scan_layout(node: Node, n_inputs: int | None = None) -> tuple:
    """(N states, M scan inputs, K scan outputs) of a Scan node."""
    body = subgraph_of(node, "body")
    m = int(node.attrs["num_scan_inputs"])
    own = _own_inputs(node) if n_inputs is None else n_inputs
    n = own - m
    k = len(body.outputs) - n
    if m < 1 or n < 0 or k < 0 or len(body.inputs) != own + int(node.attrs.get("captured", 0)):
        raise ModelError(f"{node}: num_scan_inputs = {m} with {own} inputs and a body of "
                         f"{len(body.inputs)} inputs and {len(body.outputs)} outputs do not "
                         f"fit (N states + M scan inputs in, N states + K scan outputs out)")
    return n, m, k


def _scan_attr(node, name, count):
    values = node.attrs.get(name)
    if values is None:
        return [0] * count
    if len(values) != count:
        raise ModelError(f"{node}: attribute {name!r} has {len(values)} entries, expected "
                         f"{count}")
    return [int(v) for v in values]


def scan_axes(node: Node, types: list, k: int, out_ranks: list | None = None) -> tuple:
    """(input axes, input directions, output axes, output directions), axes made
    non-negative: ``types`` are the scan inputs' types, ``out_ranks`` the ranks of the ``k``
    scan outputs (whole outputs; None: output axes are left as given)."""
    m = len(types)
    in_axes = _scan_attr(node, "scan_input_axes", m)
    in_dirs = _scan_attr(node, "scan_input_directions", m)
    out_axes = _scan_attr(node, "scan_output_axes", k)
    out_dirs = _scan_attr(node, "scan_output_directions", k)
    checks = [("scan_input_axes", in_axes, [t.rank for t in types])]
    if out_ranks is not None:
        checks.append(("scan_output_axes", out_axes, out_ranks))
    for what, axes, ranks in checks:
        for j, (a, r) in enumerate(zip(axes, ranks)):
            if not -r <= a < r:
                raise ModelError(f"{node}: attribute {what!r}[{j}] = {a} is out of range for "
                                 f"rank {r}")
            axes[j] = a + r if a < 0 else a
    for what, dirs in (("scan_input_directions", in_dirs), ("scan_output_directions", out_dirs)):
        if any(d not in (0, 1) for d in dirs):
            raise ModelError(f"{node}: attribute {what!r} must hold 0 (forward) or 1 "
                             f"(reverse), got {dirs}")
    return in_axes, in_dirs, out_axes, out_dirs


@register
class Scan(Op):
    attrs = {"body": REQUIRED, "num_scan_inputs": REQUIRED, "scan_input_axes": None,
             "scan_input_directions": None, "scan_output_axes": None,
             "scan_output_directions": None, "captured": 0}
    num_inputs = (1, None)
    num_outputs = (1, None)
    foldable = False

    def infer(self, ctx):
        node = ctx.node
        n, m, k = scan_layout(node)
        if len(node.outputs) > n + k:
            raise ModelError(f"{node}: has {len(node.outputs)} outputs, its body gives {n + k}")
        states = [ctx.type(i) for i in range(n)]
        scans = [ctx.type(n + j) for j in range(m)]
        in_axes, _, _, _ = scan_axes(node, scans, k)
        lengths = {t.shape[a] for t, a in zip(scans, in_axes)}
        if len(lengths) != 1:
            ctx.fail(f"the scan inputs' scanned axes have different lengths "
                     f"{sorted(map(str, lengths))}")
        length = lengths.pop()
        slices = [TensorType(t.dtype, t.shape[:a] + t.shape[a + 1:])
                  for t, a in zip(scans, in_axes)]
        out_t, _ = infersubgraph_of(ctx, "body", states + slices)
        for i in range(n):
            if out_t[i] != states[i]:
                ctx.fail(f"state {i} enters the body as {states[i]} and leaves it as "
                         f"{out_t[i]}; it must keep its dtype and shape")
        per = out_t[n:]
        _, _, out_axes, _ = scan_axes(node, scans, k, [t.rank + 1 for t in per])
        outs = [TensorType(t.dtype, t.shape[:a] + (length,) + t.shape[a:])
                for t, a in zip(per, out_axes)]
        return states + outs

    def work(self, node, types):
        return _branch_work(subgraph_of(node, "body"))

    def export(self, ctx, node, inputs, outputs, attrs):
        n, m, k = scan_layout(node)
        formal = [ctx.types.get(i) for i in inputs[:n + m]]
        scans = formal[n:]
        if all(t is not None for t in scans):
            axes, _, _, _ = scan_axes(node, scans, k)
            formal[n:] = [TensorType(t.dtype, t.shape[:a] + t.shape[a + 1:])
                          for t, a in zip(scans, axes)]
        _export(ctx, node, inputs, outputs, attrs, {"body": formal})

    def compute(self, node, inputs):
        n, m, k = scan_layout(node)
        own = _own_inputs(node)
        body = subgraph_of(node, "body")
        states, xs, captures = list(inputs[:n]), inputs[n:n + m], inputs[own:]
        xs_types = [TensorType(x.dtype, x.shape) for x in xs]
        in_axes, in_dirs, _, _ = scan_axes(node, xs_types, k)
        length = xs[0].shape[in_axes[0]]
        per = [[] for _ in range(k)]
        for t in range(length):
            slices = [np.take(x, length - 1 - t if d else t, axis=a)
                      for x, a, d in zip(xs, in_axes, in_dirs)]
            outs = evaluate(body, [*states, *slices, *captures])
            states = outs[:n]
            for j in range(k):
                per[j].append(outs[n + j])
        result = list(states)
        if not length:   # no step ran: the scan outputs' slices come from inference
            slices = [np.take(x, [], axis=a).sum(axis=a) for x, a in zip(xs, in_axes)]
            types = subgraph_types(body, [*states, *slices, *captures])
            per = [[np.zeros(t.shape, t.dtype)] for t in types[n:]]
        ranks = [per[j][0].ndim + 1 for j in range(k)]
        _, _, out_axes, out_dirs = scan_axes(node, xs_types, k, ranks)
        for j in range(k):
            seq = per[j][::-1] if out_dirs[j] else per[j]
            stacked = np.stack(seq, axis=out_axes[j])
            result.append(stacked if length else np.take(stacked, [], axis=out_axes[j]))
        return result


# ---- gradients -------------------------------------------------------------------------------
def _branch_gradient(node: Node, attr: str, grads: list, g) -> dict:
    """Emit into the training graph the gradient of branch ``attr`` with respect to the
    captures ``g`` needs: the branch recomputed, then differentiated by ``graph.autodiff`` as
    the scalar Σₖ sum(yₖ·dyₖ) (whose gradient is the vector-Jacobian product wanted), every node
    re-emitted through ``g.op``. Returns {input position: gradient name}."""
    own = _own_inputs(node)
    d = subgraph_of(node, attr).copy()
    outer = dict(zip(d.inputs, node.inputs[own:]))
    for name, o in outer.items():
        d.types[name] = g.type(o)
    consts = {name: g.value(o) for name, o in outer.items() if g.value(o) is not None}
    terms = []
    for k, (y, dy) in enumerate(zip(d.outputs, grads)):
        if dy is None:
            continue
        seed = d.unique_name(f"{y}/seed")
        d.inputs.append(seed)
        d.types[seed] = g.type(dy)
        outer[seed] = dy
        prod = d.add_node("Mul", [y, seed], [d.unique_name(f"{y}/weighted")]).outputs[0]
        terms.append(d.add_node("ReduceSum", [prod], [d.unique_name(f"{y}/sum")],
                                keepdims=0).outputs[0])
    loss = d.unique_name("vjp")
    d.add_node("Sum", terms, [loss])
    d.outputs = [loss]
    Machinery.infer_shapes(d, consts)
    wrt = [name for pos, name in enumerate(d.inputs[:len(node.inputs) - own])
           if g.needs(own + pos) and d.types[name].dtype.kind == "f"]
    d, found = Machinery.backward(d, loss, wrt)
    rename = dict(outer)
    for name, a in d.initializers.items():
        if name in d.inputs:
            continue
        rename[name] = g.const(a, f"{attr}/{name}")
    for n in d.nodes:
        outs = g.op(n.op_type, [rename.get(i, i) if i else "" for i in n.inputs],
                    len(n.outputs), used=[bool(o) for o in n.outputs], **n.attrs)
        for o, new in zip(n.outputs, [outs] if len(n.outputs) == 1 else outs):
            if o:
                rename[o] = new
    return {own + d.inputs.index(name): rename[found[name]] for name in wrt}


def _if_gradient(self, node, grads, g):
    """The gradient of the branch taken: with the condition known when the training graph is
    built (a constant, or computed from constants), that branch's; otherwise both branches'
    gradients, chosen between by ``Where`` on the condition at run time (both are computed;
    the branches' outputs must then agree in shape, as training needs static shapes)."""
    cond = g.value(node.input(0))
    if cond is not None:
        taken = "then_branch" if _truth(cond) else "else_branch"
        found = _branch_gradient(node, taken, grads, g)
    else:
        then = _branch_gradient(node, "then_branch", grads, g)
        other = _branch_gradient(node, "else_branch", grads, g)
        found = {pos: g.op("Where", [node.input(0), then[pos], other[pos]]) for pos in then}
    return [found.get(i) for i in range(len(node.inputs))]


If.gradient = _if_gradient
