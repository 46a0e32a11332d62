"""If, Loop and Scan: imported with subgraphs reading outer values, run through their own plans,
exported back, differentiated through If.

Oracles: onnxruntime on the same ONNX model (float32 outputs compared at rtol 1e-5 / atol 1e-6:
the same float32 arithmetic in another order), onnx.reference where onnxruntime is not used,
finite differences in float64 for the If gradient (central differences, step 1e-6: error
~1e-10, checked at 1e-7).
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as TP
from onnx import helper as h
from onnx.reference import ReferenceEvaluator

import ember
from ember.graph.autodiff import backward
from ember.graph.errors import EmberError, InputError, ModelError, ShapeError
from ember.graph.infer import infer_shapes
from ember.graph.ir import Graph, TensorType
from ember.graph.ops import control_flow
from ember.graph.serialize import from_bytes, to_bytes
from ember.importers.onnx import load_onnx
from ember.importers.onnx_export import to_onnx
from ember.runtime.session import Session

F, I64, B = TP.FLOAT, TP.INT64, TP.BOOL
OPSET = 17


def vi(name, elem, shape):
    return h.make_tensor_value_info(name, elem, shape)


def model(nodes, inputs, outputs, inits=(), opset=OPSET):
    g = h.make_graph(nodes, "g", inputs, outputs, list(inits))
    m = h.make_model(g, opset_imports=[h.make_opsetid("", opset)])
    return m


def const(name, array):
    return h.make_tensor(name, onnx.helper.np_dtype_to_tensor_dtype(array.dtype), array.shape,
                         array.reshape(-1).tolist())


def check(m, feeds, oracle="ort"):
    """ember's outputs against onnxruntime's (or onnx.reference's) on the same model."""
    data = m.SerializeToString()
    got = ember.load(data).run(None, feeds)
    if oracle == "ort":
        want = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)
    else:
        want = ReferenceEvaluator(m).run(None, feeds)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape, (g.dtype, g.shape, w.dtype, w.shape)
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    return got


# ---- If ----------------------------------------------------------------------------------------
def if_model(then_shape=(2, 3), else_slice=False, consumer=False):
    """If on cond = sum(x) > 0; then: tanh(x·w) reading an outer initializer and an outer
    computed value; else: x + w, or a slice of it (another shape) when ``else_slice``."""
    then = h.make_graph([h.make_node("Mul", ["x2", "w"], ["t0"]),
                         h.make_node("Tanh", ["t0"], ["t"])],
                        "then", [], [vi("t", F, list(then_shape))])
    else_nodes = [h.make_node("Add", ["x", "w"], ["e"])]
    else_out = "e"
    if else_slice:
        else_nodes += [h.make_node("Slice", ["e", "starts", "ends", "axes"], ["es"])]
        else_out = "es"
    els = h.make_graph(else_nodes, "else", [], [vi(else_out, F, None)])
    nodes = [h.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
             h.make_node("Greater", ["s", "zero"], ["c"]),
             h.make_node("Mul", ["x", "two"], ["x2"]),
             h.make_node("If", ["c"], ["y"], then_branch=then, else_branch=els)]
    out = "y"
    if consumer:
        nodes.append(h.make_node("Relu", ["y"], ["z"]))
        out = "z"
    inits = [const("w", np.arange(6, dtype=np.float32).reshape(2, 3) / 6),
             const("zero", np.array(0, np.float32)), const("two", np.array(2, np.float32)),
             const("starts", np.array([1], np.int64)), const("ends", np.array([3], np.int64)),
             const("axes", np.array([1], np.int64))]
    return model(nodes, [vi("x", F, [2, 3])], [vi(out, F, None)], inits)


@pytest.mark.parametrize("sign", [1, -1], ids=["then", "else"])
def test_if_branches_read_outer_values(sign):
    x = sign * np.abs(np.random.default_rng(0).standard_normal((2, 3))).astype(np.float32)
    check(if_model(), {"x": x})


def test_if_branch_outputs_of_different_shapes_are_run_time_shaped():
    m = if_model(else_slice=True)
    sess = ember.load(m.SerializeToString())
    shape = sess.get_outputs()[0].shape
    assert shape[0] == 2 and isinstance(shape[1], str)   # decided when it runs
    plan = sess.plan()
    assert "y" not in plan.offsets                          # no arena bytes: the step's array
    for sign, want in ((1, (2, 3)), (-1, (2, 2))):
        x = sign * np.ones((2, 3), np.float32)
        assert check(m, {"x": x})[0].shape == want


def test_if_of_different_shapes_read_by_a_node_keys_the_plan_on_the_condition():
    """The Relu after the If needs its shape: the condition comes from the graph input, so the
    Session keys its plans on that input's value (as for a fed Reshape shape)."""
    m = if_model(else_slice=True, consumer=True)
    for sign in (1, -1):
        check(m, {"x": sign * np.ones((2, 3), np.float32)})


def test_if_of_different_shapes_read_by_a_node_with_a_run_time_condition_is_refused():
    """The condition comes out of a Loop (run-time data nothing folds): the Relu reading the If
    output cannot be planned, and the error names the If and its condition."""
    m = if_model(else_slice=True, consumer=True)
    g = m.graph
    body = h.make_graph([h.make_node("Identity", ["c_in"], ["c_out"]),
                         h.make_node("Identity", ["v_in"], ["v_out"])], "body",
                        [vi("i", I64, []), vi("c_in", B, []), vi("v_in", B, [])],
                        [vi("c_out", B, []), vi("v_out", B, [])])
    g.node[1].output[0] = "c0"
    g.node.insert(2, h.make_node("Loop", ["", "c0", "c0"], ["c"], body=body))
    with pytest.raises(ShapeError, match=r"If node.*input 0 \('c', the condition"):
        ember.load(m.SerializeToString())


def test_if_shape_inference():
    g = load_onnx(if_model().SerializeToString())
    infer_shapes(g)
    assert g.types["y"] == TensorType(np.float32, (2, 3))


# ---- Loop --------------------------------------------------------------------------------------
def loop_model(with_m=True, with_cond=True, limit=None, nested_if=False, scan=True):
    """y_{i+1} = y_i·a + i (a: an outer initializer), scan output y_i + b (b: an outer value);
    the body's condition is ``y < limit`` when ``limit`` is given, else passed through. With
    ``nested_if`` the step adds +1 in the first two iterations, -1 after, by an If (reading a
    value of the body and an outer initializer)."""
    body_nodes = [h.make_node("Cast", ["i"], ["fi"], to=F),
                  h.make_node("Mul", ["y_in", "a"], ["ya"])]
    if nested_if:
        then = h.make_graph([h.make_node("Add", ["ya", "one"], ["p"])], "then", [],
                            [vi("p", F, [2])])
        els = h.make_graph([h.make_node("Sub", ["ya", "one"], ["q"])], "else", [],
                           [vi("q", F, [2])])
        body_nodes += [h.make_node("Less", ["i", "two_i"], ["early"]),
                       h.make_node("If", ["early"], ["ya2"], then_branch=then, else_branch=els)]
        step = "ya2"
    else:
        step = "ya"
    body_nodes += [h.make_node("Add", [step, "fi"], ["y_out"]),
                   h.make_node("Add", ["y_in", "b"], ["scan"])]
    if limit is None:
        body_nodes.append(h.make_node("Identity", ["c_in"], ["c_out"]))
    else:
        body_nodes += [h.make_node("ReduceMax", ["y_out"], ["mx"], keepdims=0),
                       h.make_node("Less", ["mx", "limit"], ["c_out"])]
    outs = [vi("c_out", B, []), vi("y_out", F, [2])] + ([vi("scan", F, [2])] if scan else [])
    body = h.make_graph(body_nodes, "body", [vi("i", I64, []), vi("c_in", B, []),
                                             vi("y_in", F, [2])], outs)
    inputs = [vi("y0", F, [2])]
    loop_in = ["", "", "y0"]
    if with_m:
        inputs.append(vi("M", I64, []))
        loop_in[0] = "M"
    if with_cond:
        inputs.append(vi("cond", B, []))
        loop_in[1] = "cond"
    loop_out = ["y_final"] + (["scanned"] if scan else [])
    nodes = [h.make_node("Neg", ["y0"], ["b"]),
             h.make_node("Loop", loop_in, loop_out, body=body)]
    inits = [const("a", np.array([0.5, 1.5], np.float32)), const("one", np.array(1, np.float32)),
             const("two_i", np.array(2, np.int64)),
             const("limit", np.array(limit if limit is not None else 0, np.float32))]
    return model(nodes, inputs, [vi(o, F, None) for o in loop_out], inits)


LOOPS = {"M and cond": dict(), "M only": dict(with_cond=False),
         "cond only": dict(with_m=False, limit=40.0),
         "M and an early exit": dict(limit=10.0),
         "nested If": dict(nested_if=True)}


@pytest.mark.parametrize("kw", LOOPS.values(), ids=LOOPS.keys())
def test_loop(kw):
    m = loop_model(**kw)
    feeds = {"y0": np.array([1.0, 2.0], np.float32)}
    if kw.get("with_m", True):
        feeds["M"] = np.array(6, np.int64)
    if kw.get("with_cond", True):
        feeds["cond"] = np.array(True)
    got = check(m, feeds)
    assert got[1].shape[1:] == (2,)


def test_loop_zero_iterations():
    feeds = {"y0": np.array([1.0, 2.0], np.float32), "M": np.array(0, np.int64),
             "cond": np.array(True)}
    got = check(loop_model(), feeds)
    assert got[1].shape == (0, 2)


def test_loop_with_a_constant_trip_count_plans_its_scan_output():
    """M known when compiling and the body passing its condition through: the scan output has
    a static shape and lives in the arena."""
    m = loop_model(with_cond=False)
    g = load_onnx(m.SerializeToString())
    g.initializers["M"] = np.array(5, np.int64)
    g.inputs.remove("M")
    sess = Session(g)
    assert sess.get_outputs()[1].shape == (5, 2)
    out = sess.run(None, {"y0": np.array([1.0, 2.0], np.float32)})
    want = ort.InferenceSession(m.SerializeToString()).run(
        None, {"y0": np.array([1.0, 2.0], np.float32), "M": np.array(5, np.int64)})
    np.testing.assert_allclose(out[1], want[1], rtol=1e-5)


# ---- Scan --------------------------------------------------------------------------------------
def scan_model(in_axes, in_dirs, out_axes, out_dirs):
    """A running sum over the scanned axis of x (and a second input read reversed), with an
    outer initializer added to every output slice."""
    body = h.make_graph([h.make_node("Add", ["s_in", "xa"], ["s_mid"]),
                         h.make_node("Add", ["s_mid", "xb"], ["s_out"]),
                         h.make_node("Mul", ["s_out", "scale"], ["y"])],
                        "body", [vi("s_in", F, [3]), vi("xa", F, [3]), vi("xb", F, [3])],
                        [vi("s_out", F, [3]), vi("y", F, [3])])
    x_shape = [4, 3] if in_axes[0] == 0 else [3, 4]
    node = h.make_node("Scan", ["s0", "xa", "xb"], ["s_final", "ys"], body=body,
                       num_scan_inputs=2, scan_input_axes=in_axes,
                       scan_input_directions=in_dirs, scan_output_axes=out_axes,
                       scan_output_directions=out_dirs)
    return model([node], [vi("s0", F, [3]), vi("xa", F, x_shape), vi("xb", F, [4, 3])],
                 [vi("s_final", F, None), vi("ys", F, None)],
                 [const("scale", np.array([1.0, -2.0, 0.5], np.float32))])


SCANS = {"forward": ([0, 0], [0, 0], [0], [0]),
         "reverse inputs": ([0, 0], [1, 0], [0], [0]),
         "axis 1, reverse output": ([1, 0], [0, 1], [1], [1]),
         "negative axes": ([-1, -2], [1, 1], [-1], [0])}


@pytest.mark.parametrize("axes", SCANS.values(), ids=SCANS.keys())
def test_scan(axes):
    m = scan_model(*axes)
    rng = np.random.default_rng(1)
    xa_shape = (4, 3) if axes[0][0] in (0, -2) else (3, 4)
    feeds = {"s0": rng.standard_normal(3).astype(np.float32),
             "xa": rng.standard_normal(xa_shape).astype(np.float32),
             "xb": rng.standard_normal((4, 3)).astype(np.float32)}
    check(m, feeds, oracle="ort")
    if not any(axes[1] + axes[3]):   # onnx.reference scans forward only
        check(m, feeds, oracle="reference")


# ---- export, serialization ----------------------------------------------------------------------
EXPORTED = {"if": (lambda: if_model(else_slice=True), {"x": -np.ones((2, 3), np.float32)}),
            "loop with nested if": (lambda: loop_model(nested_if=True),
                                    {"y0": np.array([1.0, 2.0], np.float32),
                                     "M": np.array(4, np.int64), "cond": np.array(True)}),
            "scan": (lambda: scan_model([1, 0], [0, 1], [1], [1]),
                     {"s0": np.ones(3, np.float32), "xa": np.ones((3, 4), np.float32),
                      "xb": np.arange(12, dtype=np.float32).reshape(4, 3)})}


@pytest.mark.parametrize("case", EXPORTED.values(), ids=EXPORTED.keys())
def test_export_round_trip_runs_in_onnxruntime(case):
    make, feeds = case
    m = make()
    exported = to_onnx(load_onnx(m.SerializeToString()))
    got = ort.InferenceSession(exported.SerializeToString()).run(None, feeds)
    want = ort.InferenceSession(m.SerializeToString()).run(None, feeds)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-6)


def test_subgraphs_survive_serialization():
    m = loop_model(nested_if=True)
    g = from_bytes(to_bytes(load_onnx(m.SerializeToString())))
    feeds = {"y0": np.array([1.0, 2.0], np.float32), "M": np.array(3, np.int64),
             "cond": np.array(True)}
    got = Session(g).run(None, feeds)
    want = ort.InferenceSession(m.SerializeToString()).run(None, feeds)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-6)


# ---- gradients through If ---------------------------------------------------------------------
def _branch(op):
    b = Graph(name=op, inputs=["x", "w"], outputs=["t"])
    b.add_node(op, ["x", "w"], ["o"])
    b.add_node("Tanh", ["o"], ["t"])
    return b


@pytest.mark.parametrize("cond", [True, False, None], ids=["const then", "const else", "fed"])
def test_if_gradient_matches_finite_differences(cond):
    g = Graph(inputs=["x", "w"] + (["c"] if cond is None else []), outputs=["l"])
    g.types.update(x=TensorType(np.float64, (3,)), w=TensorType(np.float64, (3,)))
    if cond is None:
        g.types["c"] = TensorType(np.bool_, ())
    else:
        g.initializers["c"] = np.array(cond)
    g.add_node("If", ["c", "x", "w"], ["y"], then_branch=_branch("Mul"),
               else_branch=_branch("Add"), captured=2)
    g.add_node("ReduceSum", ["y"], ["l"], keepdims=0)
    infer_shapes(g)
    trained, grads = backward(g, "l", ["x", "w"])
    sess = Session(trained)
    rng = np.random.default_rng(2)
    x, w = rng.standard_normal(3), rng.standard_normal(3)
    eps = 1e-6
    for taken in ([cond] if cond is not None else [True, False]):
        feeds = {"x": x, "w": w} | ({"c": np.array(taken)} if cond is None else {})
        out = dict(zip(trained.outputs, sess.run(None, feeds)))

        def f(x, w):
            return np.tanh(x * w if taken else x + w).sum()
        for name, at in (("x", 0), ("w", 1)):
            fd = np.array([(f(*[(v + eps * e) if k == at else v for k, v in enumerate((x, w))])
                            - f(*[(v - eps * e) if k == at else v for k, v in enumerate((x, w))]))
                           / (2 * eps) for e in np.eye(3)])
            np.testing.assert_allclose(out[grads[name]], fd, atol=1e-7)


# ---- bad input ---------------------------------------------------------------------------------
def test_branch_output_count_mismatch_names_the_node():
    then = h.make_graph([h.make_node("Identity", ["x"], ["a"]),
                         h.make_node("Identity", ["x"], ["b"])],
                        "then", [], [vi("a", F, [2]), vi("b", F, [2])])
    els = h.make_graph([h.make_node("Identity", ["x"], ["e"])], "else", [], [vi("e", F, [2])])
    m = model([h.make_node("If", ["c"], ["y"], then_branch=then, else_branch=els, name="choose")],
              [vi("c", B, []), vi("x", F, [2])], [vi("y", F, [2])])
    with pytest.raises(ModelError, match="choose.*then_branch has 2 outputs, else_branch 1"):
        ember.load(m.SerializeToString())


def test_subgraph_reading_a_missing_name_names_node_and_name():
    then = h.make_graph([h.make_node("Identity", ["nowhere"], ["a"])], "then", [],
                        [vi("a", F, [2])])
    els = h.make_graph([h.make_node("Identity", ["x"], ["e"])], "else", [], [vi("e", F, [2])])
    m = model([h.make_node("If", ["c"], ["y"], then_branch=then, else_branch=els, name="choose")],
              [vi("c", B, []), vi("x", F, [2])], [vi("y", F, [2])])
    with pytest.raises(ModelError, match="'choose'.*'nowhere'"):
        ember.load(m.SerializeToString())


def test_condition_must_be_a_bool_scalar():
    then = h.make_graph([h.make_node("Identity", ["x"], ["a"])], "then", [], [vi("a", F, [2])])
    els = h.make_graph([h.make_node("Neg", ["x"], ["e"])], "else", [], [vi("e", F, [2])])
    m = model([h.make_node("If", ["c"], ["y"], then_branch=then, else_branch=els, name="choose")],
              [vi("c", F, [2]), vi("x", F, [2])], [vi("y", F, [2])])
    with pytest.raises(ShapeError, match="choose.*bool scalar"):
        ember.load(m.SerializeToString())


def _scan_identity(**attrs):
    body = h.make_graph([h.make_node("Identity", ["x"], ["y"])], "b", [vi("x", F, [2])],
                        [vi("y", F, [2])])
    return model([h.make_node("Scan", ["x"], ["y"], body=body, name="scan", **attrs)],
                 [vi("x", F, [3, 2])], [vi("y", F, None)])


def _growing_loop():
    body = h.make_graph([h.make_node("Identity", ["c"], ["co"]),
                         h.make_node("Concat", ["v", "v"], ["vo"], axis=0)], "b",
                        [vi("i", I64, []), vi("c", B, []), vi("v", F, [1])],
                        [vi("co", B, []), vi("vo", F, None)])
    return model([h.make_node("Loop", ["M", "", "v0"], ["o"], body=body, name="grow")],
                 [vi("M", I64, []), vi("v0", F, [1])], [vi("o", F, None)])


def _if_of_two_dtypes():
    then = h.make_graph([h.make_node("Identity", ["x"], ["a"])], "t", [], [vi("a", F, [2])])
    els = h.make_graph([h.make_node("Cast", ["x"], ["e"], to=I64)], "e", [], [vi("e", I64, [2])])
    return model([h.make_node("If", ["c"], ["y"], then_branch=then, else_branch=els,
                              name="choose")],
                 [vi("c", B, []), vi("x", F, [2])], [vi("y", F, [2])])


BAD = {"scan axis out of range": (lambda: _scan_identity(num_scan_inputs=1, scan_input_axes=[5]),
                                  ModelError, "'scan'.*scan_input_axes.*out of range"),
       "scan with no scan input": (lambda: _scan_identity(num_scan_inputs=0), ModelError,
                                   "'scan'.*num_scan_inputs = 0"),
       "loop-carried value growing": (_growing_loop, ShapeError,
                                      r"'grow'.*loop-carried value 0.*\[1\].*\[2\]"),
       "branches of two dtypes": (_if_of_two_dtypes, ShapeError, "'choose'.*dtypes must agree")}


@pytest.mark.parametrize("case", BAD.values(), ids=BAD.keys())
def test_bad_control_flow_is_refused_naming_the_node(case):
    make, error, pattern = case
    with pytest.raises(error, match=pattern):
        ember.load(make().SerializeToString())


def test_huge_trip_count_is_refused_before_running():
    sess = ember.load(loop_model().SerializeToString())
    feeds = {"y0": np.ones(2, np.float32), "M": np.array(1 << 40, np.int64),
             "cond": np.array(True)}
    with pytest.raises(InputError, match="Loop.*iterations.*MAX_LOOP_ITERATIONS"):
        sess.run(None, feeds)
    feeds["M"] = np.array(3, np.int64)   # the Session is still usable
    assert sess.run(None, feeds)[1].shape == (3, 2)


def test_scan_outputs_honour_the_memory_cap():
    """A loop with no trip count and a condition that stays true grows its scan output until
    the bytes the memory cap leaves run out: an InputError naming the node, not an allocation
    of everything the loop would produce."""
    sess = ember.load(loop_model(with_m=False).SerializeToString(), memory_cap=1 << 16)
    with pytest.raises(InputError, match="Loop.*scan output.*memory cap"):
        sess.run(None, {"y0": np.array([1.0, 2.0], np.float32), "cond": np.array(True)})


def test_iteration_limit_bounds_a_loop_without_trip_count(monkeypatch):
    monkeypatch.setattr(control_flow, "MAX_LOOP_ITERATIONS", 50)
    sess = ember.load(loop_model(with_m=False, limit=1e30, scan=False).SerializeToString())
    with pytest.raises(InputError, match="Loop.*limit of 50"):
        sess.run(None, {"y0": np.array([1.0, 2.0], np.float32), "cond": np.array(True)})


def test_errors_are_embers_own():
    assert issubclass(InputError, EmberError) and issubclass(ModelError, EmberError)


def test_constant_condition_needs_only_the_branch_taken_to_fit():
    """With the condition known when compiling, the branch not taken is neither inferred nor
    compiled: here it adds shapes that do not broadcast."""
    then = h.make_graph([h.make_node("Neg", ["x"], ["a"])], "then", [], [vi("a", F, [2, 3])])
    els = h.make_graph([h.make_node("Add", ["x", "bad"], ["e"])], "else", [], [vi("e", F, None)])
    m = model([h.make_node("If", ["c"], ["y"], then_branch=then, else_branch=els)],
              [vi("x", F, [2, 3])], [vi("y", F, [2, 3])],
              [const("c", np.array(True)), const("bad", np.zeros(4, np.float32))])
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(ember.load(m.SerializeToString()).run(None, {"x": x})[0], -x)
