"""The memory planner: no two live values share bytes unless a view or in-place pair allows it,
offsets are aligned, everything fits the arena, and the arena is close to the lower bound.

The checks below recompute lifetimes, allowed sharing and the lower bound from the graph
itself (not from the planner's groups), so a planner bug cannot hide behind its own bookkeeping.
"""
from __future__ import annotations

import numpy as np
import pytest

import ember
from ember.graph.ir import Graph, Node, TensorType
from ember.runtime import binders
from ember.runtime.planner import ALIGN, align, make_plan

import models

F32 = np.dtype("float32")


# ---- an independent checker --------------------------------------------------------------------
class _Sets:
    def __init__(self):
        self.parent = {}

    def find(self, x):
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            x = self.parent[x]
        return x

    def union(self, a, b):
        self.parent[self.find(b)] = self.find(a)


def lifetimes(graph):
    """value -> (first step, last step); graph inputs start at 0, graph outputs end after the
    last node (they are read after the run)."""
    life = {n: [0, 0] for n in graph.inputs if n not in graph.initializers}
    for i, node in enumerate(graph.nodes):
        for v in node.inputs:
            if v in life:
                life[v][1] = max(life[v][1], i)
        for v in node.outputs:
            if v and v not in graph.initializers:
                life[v] = [i, i]
    for v in graph.outputs:
        if v in life:
            life[v][1] = len(graph.nodes)
    return {k: tuple(v) for k, v in life.items()}


def sharing_sets(graph, plan, is_view, inplace_inputs):
    """Values allowed to share bytes: view outputs with their input, and an in-place output
    with an input whose whole view set dies at that node and has the same type — but only when
    the plan actually placed them together (in-place is optional)."""
    life = lifetimes(graph)
    sets = _Sets()
    for n in graph.nodes:
        if is_view(n) and n.inputs[0] in life and n.outputs[0] in life:
            sets.union(n.inputs[0], n.outputs[0])
    for i, n in enumerate(graph.nodes):
        out = n.outputs[0] if n.outputs else ""
        if is_view(n) or out not in life:
            continue
        for k in inplace_inputs(n):
            src = n.input(k)
            if src not in life or graph.types[src] != graph.types[out]:
                continue
            if plan.offsets[src] != plan.offsets[out]:
                continue
            root = sets.find(src)
            if max(life[v][1] for v in life if sets.find(v) == root) == i:
                sets.union(src, out)
                break
    return life, sets


def check_plan(graph, plan, is_view=lambda n: False, inplace_inputs=lambda n: ()):
    """Assert the plan is safe; return the independently computed lower bound (bytes)."""
    life, sets = sharing_sets(graph, plan, is_view, inplace_inputs)
    assert set(plan.offsets) == set(life)
    extents = {v: (plan.offsets[v], plan.offsets[v] + graph.types[v].nbytes) for v in life}
    for v, (lo, hi) in extents.items():
        assert lo % ALIGN == 0, f"{v} at offset {lo} is not {ALIGN}-byte aligned"
        assert hi <= plan.arena_bytes, f"{v} [{lo}, {hi}) overflows the arena"
    names = sorted(life)
    for a_i, a in enumerate(names):
        for b in names[a_i + 1:]:
            (fa, la), (fb, lb) = life[a], life[b]
            if fa > lb or fb > la:
                continue                           # lives do not overlap
            (a0, a1), (b0, b1) = extents[a], extents[b]
            if a0 >= b1 or b0 >= a1 or a1 == a0 or b1 == b0:
                continue                           # bytes do not overlap
            assert sets.find(a) == sets.find(b), \
                f"{a} {life[a]} and {b} {life[b]} overlap in time and in bytes"
            assert a0 == b0, f"view/in-place pair {a}, {b} at different offsets"
    for idx, (off, nb) in plan.scratch.items():
        assert off % ALIGN == 0 and off + nb <= plan.arena_bytes
        for v, (lo, hi) in extents.items():
            if life[v][0] <= idx <= life[v][1]:
                assert off >= hi or lo >= off + nb, f"scratch of node {idx} overlaps {v}"
    # lower bound: largest total live at any step, each sharing set counted once
    steps = len(graph.nodes) + 1
    live = np.zeros(steps, dtype=np.int64)
    by_set = {}
    for v in life:
        by_set.setdefault(sets.find(v), []).append(v)
    for members in by_set.values():
        first = min(life[v][0] for v in members)
        last = max(life[v][1] for v in members)
        live[first:last + 1] += max(graph.types[v].nbytes for v in members)
    for idx, (off, nb) in plan.scratch.items():
        live[idx] += nb
    assert plan.naive_bytes >= plan.arena_bytes
    return int(live.max()) if steps else 0


# ---- small hand-made graphs --------------------------------------------------------------------
def make_graph(nodes, inputs, outputs, sizes):
    """Nodes as (op, inputs, outputs); ``sizes`` maps each value to a float32 element count."""
    g = Graph(nodes=[Node(op, list(i), list(o), {}, f"{op}_{k}") for k, (op, i, o) in
                     enumerate(nodes)],
              inputs=list(inputs), outputs=list(outputs))
    g.types = {v: TensorType(F32, (n,)) for v, n in sizes.items()}
    return g


KB = 256  # float32 elements in 1 KiB


def test_chain_ping_pongs_between_two_buffers():
    g = make_graph([("Relu", ["x"], ["a"]), ("Relu", ["a"], ["b"]), ("Relu", ["b"], ["c"]),
                    ("Relu", ["c"], ["y"])], ["x"], ["y"], dict.fromkeys("xabcy", KB))
    plan = make_plan(g, allow_inplace=False)
    bound = check_plan(g, plan)
    # every step holds exactly a node's input and output: 2 KiB, and two buffers suffice
    assert bound == 2048 and plan.arena_bytes == 2048 and plan.naive_bytes == 5 * 1024


def test_chain_in_place_uses_one_buffer():
    g = make_graph([("Relu", ["x"], ["a"]), ("Relu", ["a"], ["b"]), ("Relu", ["b"], ["y"])],
                   ["x"], ["y"], dict.fromkeys("xaby", KB))
    inplace = lambda n: (0,)  # noqa: E731
    plan = make_plan(g, inplace_inputs=inplace)
    check_plan(g, plan, inplace_inputs=inplace)
    assert plan.arena_bytes == 1024
    assert len({plan.offsets[v] for v in "xaby"}) == 1


def test_diamond():
    # x → a, x → b, (a, b) → y: at step 1 x, a, b are all live, so 3 KiB is the minimum
    g = make_graph([("Relu", ["x"], ["a"]), ("Sigmoid", ["x"], ["b"]), ("Add", ["a", "b"], ["y"])],
                   ["x"], ["y"], dict.fromkeys("xaby", KB))
    plan = make_plan(g, allow_inplace=False)
    assert check_plan(g, plan) == 3072
    assert plan.arena_bytes == 3072


def test_in_place_refused_while_the_input_is_still_read():
    # x is read by node 0 and node 1: node 0 must not overwrite it even though Relu may
    g = make_graph([("Relu", ["x"], ["a"]), ("Sigmoid", ["x"], ["b"]), ("Add", ["a", "b"], ["y"])],
                   ["x"], ["y"], dict.fromkeys("xaby", KB))
    inplace = lambda n: (0,) if n.op_type != "Sigmoid" else ()  # noqa: E731
    plan = make_plan(g, inplace_inputs=inplace)
    check_plan(g, plan, inplace_inputs=inplace)
    assert plan.offsets["a"] != plan.offsets["x"]
    assert plan.offsets["y"] in (plan.offsets["a"], plan.offsets["b"])  # a dies at Add: reused


def test_value_read_late_keeps_its_bytes():
    # big value a is read again by the last node: b and c must go elsewhere while a lives
    g = make_graph([("Relu", ["x"], ["a"]), ("Relu", ["a"], ["b"]), ("Relu", ["b"], ["c"]),
                    ("Add", ["a", "c"], ["y"])], ["x"], ["y"],
                   {"x": KB, "a": 4 * KB, "b": KB, "c": KB, "y": 4 * KB})
    plan = make_plan(g, allow_inplace=False)
    bound = check_plan(g, plan)
    # step 0: x+a = 5 KiB; step 1: a+b = 5; step 2: a+b+c = 6; step 3: a+c+y = 9 KiB
    assert bound == 9 * 1024
    assert plan.arena_bytes == bound
    a0 = plan.offsets["a"]
    for v in "bcy":
        lo = plan.offsets[v]
        assert lo >= a0 + 4096 or lo + g.types[v].nbytes <= a0


def test_views_share_storage_and_count_once():
    g = make_graph([("Relu", ["x"], ["a"]), ("Reshape", ["a"], ["v"]), ("Relu", ["v"], ["y"])],
                   ["x"], ["y"], dict.fromkeys("xavy", KB))
    is_view = lambda n: n.op_type == "Reshape"  # noqa: E731
    plan = make_plan(g, is_view=is_view, allow_inplace=False)
    assert check_plan(g, plan, is_view=is_view) == 2048
    assert plan.offsets["a"] == plan.offsets["v"]
    assert plan.arena_bytes == 2048


def test_scratch_is_planned_beside_live_values():
    g = make_graph([("Conv", ["x"], ["a"]), ("Conv", ["a"], ["y"])], ["x"], ["y"],
                   dict.fromkeys("xay", KB))
    plan = make_plan(g, scratch_bytes={0: 3000, 1: 100})
    bound = check_plan(g, plan)
    assert set(plan.scratch) == {0, 1} and plan.scratch[0][1] == 3000
    assert bound == 2048 + 3000          # step 0: x, a and 3000 bytes of scratch
    assert plan.arena_bytes == align(3000) + 2048


def test_odd_sizes_are_aligned():
    g = make_graph([("Relu", ["x"], ["a"]), ("Relu", ["a"], ["b"]), ("Add", ["a", "b"], ["y"])],
                   ["x"], ["y"], {"x": 3, "a": 5, "b": 7, "y": 1})
    plan = make_plan(g, allow_inplace=False)
    check_plan(g, plan)
    assert all(off % ALIGN == 0 for off in plan.offsets.values())
    assert plan.arena_bytes == 3 * ALIGN   # at most three values live at once, each in one line


def test_graph_output_lives_to_the_end():
    # y0 is an output produced first: nothing later may reuse its bytes
    g = make_graph([("Relu", ["x"], ["y0"]), ("Relu", ["x"], ["a"]), ("Relu", ["a"], ["b"]),
                    ("Relu", ["b"], ["y1"])], ["x"], ["y0", "y1"], dict.fromkeys(
                        ["x", "y0", "a", "b", "y1"], KB))
    plan = make_plan(g, allow_inplace=False)
    check_plan(g, plan)
    y0 = plan.offsets["y0"]
    assert all(plan.offsets[v] != y0 for v in ("a", "b", "y1"))


# ---- the real models ---------------------------------------------------------------------------
MODEL_NAMES = list(models.ALL_MODELS)


@pytest.fixture(scope="module")
def sessions():
    return {}


def compiled(name, cache, optimize=True):
    key = (name, optimize)
    if key not in cache:
        sess = ember.load(models.ALL_MODELS[name](), optimize=optimize)
        cache[key] = sess.compile()
    return cache[key]


def model_check(c):
    types = c.graph.types
    return check_plan(c.graph, c.plan, is_view=binders.is_view,
                      inplace_inputs=lambda n: binders.inplace_inputs(n, types))


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("optimize", [True, False])
def test_model_plans_are_safe(name, optimize, sessions):
    c = compiled(name, sessions, optimize)
    bound = model_check(c)
    assert bound <= c.plan.arena_bytes <= c.plan.naive_bytes


@pytest.mark.parametrize("name", ["resnet18", "mobilenetv2"])
def test_arena_close_to_lower_bound(name, sessions):
    c = compiled(name, sessions)
    bound = model_check(c)
    ratio = c.plan.arena_bytes / bound
    print(f"{name}: arena {c.plan.arena_bytes:,} B, lower bound {bound:,} B, "
          f"ratio {ratio:.3f}, naive {c.plan.naive_bytes:,} B")
    assert ratio <= 1.10
    assert c.plan.naive_bytes >= c.plan.arena_bytes


def test_session_plan_matches_compiled_graph(sessions):
    sess = ember.load(models.lenet5())
    plan = sess.plan()
    assert plan.arena_bytes > 0 and plan.order == sess.compile().graph.nodes


def test_symbolic_batch_plans_scale_with_batch():
    sess = ember.load(models.lenet5(batch="N"))
    plans = {}
    for n in (1, 4):
        c = sess.compile({"input": (n, 1, 32, 32)})
        model_check(c)
        plans[n] = c.plan
    assert plans[4].arena_bytes > plans[1].arena_bytes
    assert plans[4].sizes["input"] == 4 * 32 * 32 * 4


# ---- the planner's cost: work per node counted, never timed ------------------------------------
def relu_chain(n):
    """x → Relu → … → Relu (n nodes) → y, every value 1 KiB."""
    names = ["x"] + [f"v{k}" for k in range(n - 1)] + ["y"]
    return make_graph([("Relu", [a], [b]) for a, b in zip(names, names[1:])], ["x"], ["y"],
                      dict.fromkeys(names, KB))


def fan_out(n):
    """x read by n Relus, each output a graph output: everything lives to the end."""
    outs = [f"y{k}" for k in range(n)]
    return make_graph([("Relu", ["x"], [y]) for y in outs], ["x"], outs,
                      dict.fromkeys(["x"] + outs, KB))


def work_per_node(graph, **kw):
    plan = make_plan(graph, **kw)
    return plan, plan.work / len(graph.nodes)


@pytest.mark.parametrize("shape", ["chain", "chain in place", "fan-out"])
def test_planner_work_per_node_grows_at_most_logarithmically(shape):
    """From 1,000 to 10,000 nodes log2 n grows by a third; a scan over every live or placed
    value per node (the quadratic planner) would make the work per node 10× larger."""
    per_node, plans = {}, {}
    for n in (1_000, 10_000):
        if shape == "fan-out":
            g, kw = fan_out(n), {"allow_inplace": False}
        elif shape == "chain":
            g, kw = relu_chain(n), {"allow_inplace": False}
        else:
            g, kw = relu_chain(n), {"inplace_inputs": lambda node: (0,)}
        plans[n], per_node[n] = work_per_node(g, **kw)
    print(shape, per_node)
    assert per_node[10_000] <= 1.5 * per_node[1_000]
    plan = plans[10_000]
    # and the plan is as good as ever: the lower bound, reached
    if shape == "chain":
        assert plan.lower_bound_bytes == plan.arena_bytes == 2048
    elif shape == "chain in place":
        assert plan.arena_bytes == 1024 and len(set(plan.offsets.values())) == 1
    else:
        assert plan.lower_bound_bytes == plan.arena_bytes == 10_001 * 1024


def test_long_chain_plan_is_safe():
    g = relu_chain(300)
    plan = make_plan(g, allow_inplace=False)
    assert check_plan(g, plan) == plan.arena_bytes == 2048


def random_graph(rng, n):
    """n nodes reading random earlier values: Relu (in-place), Add, Reshape (a view), odd sizes."""
    values, spec = ["x0", "x1"], []
    sizes = {"x0": int(rng.integers(1, 600)), "x1": int(rng.integers(1, 600))}
    for k in range(n):
        op = ("Relu", "Add", "Reshape")[int(rng.integers(0, 3))]
        ins = [str(v) for v in rng.choice(values, size=1 if op != "Add" else 2)]
        out = f"v{k}"
        sizes[out] = sizes[ins[0]] if op == "Reshape" or rng.random() < 0.5 else \
            int(rng.integers(1, 600))
        spec.append((op, ins, [out]))
        values.append(out)
    outs = [str(v) for v in rng.choice(values[2:], size=min(3, n), replace=False)]
    return make_graph(spec, ["x0", "x1"], outs, sizes)


def test_random_graphs_plan_safely():
    rng = np.random.default_rng(19)
    is_view = lambda n: n.op_type == "Reshape"  # noqa: E731
    inplace = lambda n: (0, 1) if n.op_type != "Reshape" else ()  # noqa: E731
    for _ in range(60):
        n = int(rng.integers(3, 30))
        g = random_graph(rng, n)
        scratch = {i: int(rng.integers(1, 3000)) for i in range(n) if rng.random() < 0.3}
        plan = make_plan(g, scratch, is_view=is_view, inplace_inputs=inplace)
        assert check_plan(g, plan, is_view, inplace) <= plan.arena_bytes
