"""The math, logic, selection and indexing ops beyond the core set (Floor … Hardmax, ArgMax,
TopK, GatherElements … EyeLike), checked where ONNX's own node cases do not reach.

Oracle: onnxruntime on the same single-node ONNX model, random seeded inputs. Float outputs
agree within rtol 1e-5 / atol 1e-6: numpy and onnxruntime evaluate the transcendental functions
(sin, tanh, exp, …) with different polynomial approximations, each within a few float32 ulps;
everything else (indices, selections, data movement, rounding, logic) is exact. Bad input: out-of-
range indices are an ``InputError`` naming the node when fed, a ``ShapeError`` naming it when
constant; shapes decided by values (NonZero's count, TopK's K fed at run time) are compiled per
value.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper, shape_inference

import ember
from ember import InputError, ShapeError

OPSET = 18
rng = np.random.default_rng(7)


def normal(*shape):
    return rng.standard_normal(shape).astype(np.float32)


def uniform(lo, hi, *shape):
    return rng.uniform(lo, hi, shape).astype(np.float32)


def ints(lo, hi, *shape, dtype=np.int64):
    return rng.integers(lo, hi, shape).astype(dtype)


def booleans(*shape):
    return rng.random(shape) > 0.5


def model(op_type, feeds, consts=None, attrs=None, n_out=1, opset=OPSET):
    """One ``op_type`` node named ``node`` reading ``feeds`` (graph inputs) then ``consts``
    (initializers), inputs in the order given."""
    consts = consts or {}
    vinfo = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
             for n, a in feeds.items()]
    inits = [numpy_helper.from_array(a, n) for n, a in consts.items()]
    outs = [f"y{k}" for k in range(n_out)]
    node = helper.make_node(op_type, [*feeds, *consts], outs, name="node", **(attrs or {}))
    graph = helper.make_graph([node], "g", vinfo,
                              [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None)
                               for o in outs], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 9
    return m.SerializeToString()


def onnxruntime_outputs(blob, feeds):
    """onnxruntime's answer; it wants typed outputs, which ONNX's shape inference gives."""
    m = shape_inference.infer_shapes(onnx.load_from_string(blob))
    for out in m.graph.output:
        out.type.tensor_type.ClearField("shape")
    return ort.InferenceSession(m.SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, feeds)


def assert_agree(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape, (g.dtype, g.shape, w.dtype, w.shape)
        if w.dtype.kind == "f":
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
        else:
            np.testing.assert_array_equal(g, w)


def halves(*shape):
    """Floats with many exact halves (Round's ties) and integers."""
    return (ints(-12, 12, *shape) / 2).astype(np.float32)


# (id, op, feeds, consts, attrs, outputs)
CASES = [
    ("floor", "Floor", {"x": normal(3, 5)}, {}, {}, 1),
    ("ceil", "Ceil", {"x": normal(3, 5)}, {}, {}, 1),
    ("round", "Round", {"x": halves(4, 6)}, {}, {}, 1),
    ("sign", "Sign", {"x": normal(3, 5)}, {}, {}, 1),
    ("sign_int", "Sign", {"x": ints(-3, 4, 10, dtype=np.int32)}, {}, {}, 1),
    ("sin", "Sin", {"x": normal(4, 5)}, {}, {}, 1),
    ("cos", "Cos", {"x": normal(4, 5)}, {}, {}, 1),
    ("tan", "Tan", {"x": uniform(-1.4, 1.4, 4, 5)}, {}, {}, 1),
    ("asin", "Asin", {"x": uniform(-0.99, 0.99, 4, 5)}, {}, {}, 1),
    ("acos", "Acos", {"x": uniform(-0.99, 0.99, 4, 5)}, {}, {}, 1),
    ("atan", "Atan", {"x": normal(4, 5)}, {}, {}, 1),
    ("sinh", "Sinh", {"x": normal(4, 5)}, {}, {}, 1),
    ("cosh", "Cosh", {"x": normal(4, 5)}, {}, {}, 1),
    ("asinh", "Asinh", {"x": normal(4, 5)}, {}, {}, 1),
    ("acosh", "Acosh", {"x": uniform(1.0, 5.0, 4, 5)}, {}, {}, 1),
    ("atanh", "Atanh", {"x": uniform(-0.99, 0.99, 4, 5)}, {}, {}, 1),
    ("softsign", "Softsign", {"x": normal(4, 5)}, {}, {}, 1),
    ("thresholdedrelu", "ThresholdedRelu", {"x": normal(4, 5)}, {}, {"alpha": 0.3}, 1),
    ("celu", "Celu", {"x": normal(4, 5)}, {}, {"alpha": 0.7}, 1),
    ("mish", "Mish", {"x": normal(4, 5) * 4}, {}, {}, 1),
    ("shrink", "Shrink", {"x": normal(4, 5)}, {}, {"lambd": 0.4, "bias": 0.1}, 1),
    ("hardmax", "Hardmax", {"x": ints(0, 3, 3, 4, 5).astype(np.float32)}, {}, {"axis": 1}, 1),
    ("mod_int", "Mod", {"a": ints(-20, 20, 3, 4), "b": ints(1, 7, 4) * np.array([1, -1, 1, -1])},
     {}, {}, 1),
    ("fmod_float", "Mod", {"a": normal(3, 4) * 5, "b": uniform(0.5, 2, 3, 1)}, {}, {"fmod": 1}, 1),
    ("and", "And", {"a": booleans(3, 4), "b": booleans(4)}, {}, {}, 1),
    ("or", "Or", {"a": booleans(3, 4), "b": booleans(3, 1)}, {}, {}, 1),
    ("xor", "Xor", {"a": booleans(3, 4), "b": booleans(3, 4)}, {}, {}, 1),
    ("isnan", "IsNaN", {"x": np.array([1, np.nan, -np.inf, 0, np.inf], np.float32)}, {}, {}, 1),
    ("isinf_negative", "IsInf", {"x": np.array([1, np.nan, -np.inf, 0, np.inf], np.float32)},
     {}, {"detect_positive": 0}, 1),
    ("argmax_last", "ArgMax", {"x": ints(0, 3, 3, 4, 5).astype(np.float32)}, {},
     {"axis": 1, "select_last_index": 1}, 1),
    ("argmin", "ArgMin", {"x": ints(0, 3, 3, 4, 5).astype(np.float32)}, {},
     {"axis": -1, "keepdims": 0}, 1),
    ("topk_largest", "TopK", {"x": ints(0, 5, 3, 8).astype(np.float32)},
     {"k": np.array([4], np.int64)}, {"axis": 1}, 2),
    ("topk_smallest_int", "TopK", {"x": ints(0, 5, 6, 3, dtype=np.int32)},
     {"k": np.array([2], np.int64)}, {"axis": 0, "largest": 0}, 2),
    ("gather_elements", "GatherElements", {"x": normal(3, 4, 5), "i": ints(-4, 4, 3, 2, 5)}, {},
     {"axis": 1}, 1),
    ("gather_elements_int32", "GatherElements",
     {"x": ints(0, 9, 4, 3, dtype=np.int32), "i": ints(-4, 4, 5, 3, dtype=np.int32)}, {}, {}, 1),
    ("gathernd", "GatherND", {"x": normal(3, 4, 5), "i": ints(-3, 3, 2, 2)}, {}, {}, 1),
    ("gathernd_batch", "GatherND", {"x": normal(3, 4, 5), "i": ints(0, 4, 3, 2, 1)}, {},
     {"batch_dims": 1}, 1),
    ("scatter_elements_add", "ScatterElements",
     {"x": normal(4, 5), "i": ints(-4, 4, 3, 5), "u": normal(3, 5)}, {},
     {"axis": 0, "reduction": "add"}, 1),
    ("scatter_elements_max", "ScatterElements",
     {"x": normal(4, 5), "i": ints(0, 5, 4, 2), "u": normal(4, 2)}, {},
     {"axis": 1, "reduction": "max"}, 1),
    ("scatter_elements_int32_none", "ScatterElements",
     {"x": normal(4, 5), "i": np.array([[0, 1, 2, 3, -4], [3, -2, 1, 0, 2]], np.int32),
      "u": normal(2, 5)}, {}, {}, 1),   # distinct rows per column: ONNX leaves repeats undefined
    ("scatternd", "ScatterND",
     {"x": normal(4, 5, 2), "i": np.array([[1, 2], [3, -1]], np.int64), "u": normal(2, 2)}, {},
     {}, 1),
    ("scatternd_mul", "ScatterND",
     {"x": normal(4, 5), "i": np.array([[1], [3], [1]], np.int64), "u": normal(3, 5)}, {},
     {"reduction": "mul"}, 1),
    ("onehot", "OneHot", {"i": ints(-4, 4, 2, 3)},
     {"depth": np.array(4, np.int64), "v": np.array([-1.0, 2.0], np.float32)}, {"axis": 1}, 1),
    ("depthtospace_crd", "DepthToSpace", {"x": normal(2, 8, 3, 2)}, {},
     {"blocksize": 2, "mode": "CRD"}, 1),
    ("depthtospace_dcr", "DepthToSpace", {"x": normal(1, 18, 2, 2)}, {}, {"blocksize": 3}, 1),
    ("spacetodepth", "SpaceToDepth", {"x": normal(2, 3, 4, 6)}, {}, {"blocksize": 2}, 1),
    ("reversesequence", "ReverseSequence",
     {"x": normal(5, 3, 2), "lens": np.array([5, 0, 3], np.int64)}, {}, {}, 1),
    ("reversesequence_batch", "ReverseSequence",
     {"x": normal(3, 5), "lens": np.array([1, 4, 5], np.int64)}, {},
     {"batch_axis": 0, "time_axis": 1}, 1),
    ("eyelike", "EyeLike", {"x": normal(4, 6)}, {}, {"k": -1, "dtype": TensorProto.INT32}, 1),
    ("nonzero", "NonZero", {"x": ints(0, 2, 3, 4)}, {}, {}, 1),
]


@pytest.mark.parametrize("op_type, feeds, consts, attrs, n_out",
                         [pytest.param(*c[1:], id=c[0]) for c in CASES])
def test_agrees_with_onnxruntime(op_type, feeds, consts, attrs, n_out):
    blob = model(op_type, feeds, consts, attrs, n_out)
    got = ember.load(blob).run(None, feeds)
    assert_agree(got, onnxruntime_outputs(blob, feeds))


# ---- out-of-range indices --------------------------------------------------------------------
BAD_INDICES = [
    ("GatherElements", {"x": normal(3, 4), "i": np.array([[0, 4]], np.int64)}, {"axis": 1}),
    ("GatherND", {"x": normal(3, 4), "i": np.array([[2, -5]], np.int64)}, {}),
    ("ScatterElements", {"x": normal(3, 4), "i": np.array([[3, 0]], np.int64),
                         "u": normal(1, 2)}, {}),
    ("ScatterND", {"x": normal(3, 4), "i": np.array([[-4]], np.int64), "u": normal(1, 4)}, {}),
]


@pytest.mark.parametrize("op_type, feeds, attrs", BAD_INDICES,
                         ids=[c[0] for c in BAD_INDICES])
def test_fed_indices_out_of_range_are_input_errors(op_type, feeds, attrs):
    sess = ember.load(model(op_type, feeds, attrs=attrs))
    with pytest.raises(InputError, match=r"node.*out of range"):
        sess.run(None, feeds)
    ok = {k: (np.zeros_like(v) if k == "i" else v) for k, v in feeds.items()}
    assert_agree(sess.run(None, ok), onnxruntime_outputs(model(op_type, ok, attrs=attrs), ok))


@pytest.mark.parametrize("op_type, feeds, attrs", BAD_INDICES,
                         ids=[c[0] for c in BAD_INDICES])
def test_constant_indices_out_of_range_are_refused_while_loading(op_type, feeds, attrs):
    consts = {"i": feeds["i"]}
    fed = {k: v for k, v in feeds.items() if k != "i"}
    order = ["x", "i", "u"][:len(feeds)]
    vinfo = [helper.make_tensor_value_info(n, TensorProto.FLOAT, feeds[n].shape) for n in fed]
    node = helper.make_node(op_type, order, ["y"], name="node", **attrs)
    graph = helper.make_graph([node], "g", vinfo,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(consts["i"], "i")])
    blob = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    with pytest.raises(ShapeError, match=r"node.*out of range"):
        ember.load(blob.SerializeToString()).run(None, fed)


def test_reverse_sequence_length_beyond_the_steps_is_an_input_error():
    feeds = {"x": normal(4, 2), "lens": np.array([2, 5], np.int64)}
    with pytest.raises(InputError, match=r"node.*sequence_lens\[1\] = 5"):
        ember.load(model("ReverseSequence", feeds)).run(None, feeds)


def test_onehot_out_of_range_index_gives_an_all_off_row():
    """ONNX defines it so (not an error): index 5 of depth 3 matches no position."""
    feeds = {"i": np.array([1, 5, -3, -4], np.int64)}
    consts = {"depth": np.array([3], np.int64), "v": np.array([0, 1], np.int32)}
    (got,) = ember.load(model("OneHot", feeds, consts)).run(None, feeds)
    np.testing.assert_array_equal(got, [[0, 1, 0], [0, 0, 0], [1, 0, 0], [0, 0, 0]])


# ---- shapes decided by values ----------------------------------------------------------------
def test_nonzero_of_a_fed_input_feeds_a_later_op():
    """NonZero(Greater(x, 0)) → Transpose: each x's count of positives decides the shapes; the
    Session compiles per value and answers like numpy's nonzero."""
    nodes = [helper.make_node("Greater", ["x", "zero"], ["mask"], name="positive"),
             helper.make_node("NonZero", ["mask"], ["where"], name="nonzero"),
             helper.make_node("Transpose", ["where"], ["y"], name="rows")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, None)],
        [numpy_helper.from_array(np.array(0, np.float32), "zero")])
    sess = ember.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
                      .SerializeToString())
    for seed in range(3):
        x = np.random.default_rng(seed).standard_normal((3, 4)).astype(np.float32)
        (got,) = sess.run(None, {"x": x})
        np.testing.assert_array_equal(got, np.argwhere(x > 0))


def dropout_then_nonzero(read_by_a_node: bool):
    """x → training-mode Dropout (a random mask: run-time data) → NonZero (→ Transpose)."""
    nodes = [helper.make_node("Dropout", ["x", "ratio", "training"], ["r", "mask"], name="drop"),
             helper.make_node("NonZero", ["mask"], ["where"], name="nonzero")]
    if read_by_a_node:
        nodes.append(helper.make_node("Transpose", ["where"], ["rows"], name="rows"))
    outs = ["mask", "rows" if read_by_a_node else "where"]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])],
        [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in outs],
        [numpy_helper.from_array(np.array(0.5, np.float32), "ratio"),
         numpy_helper.from_array(np.array(True), "training")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]) \
        .SerializeToString()


def test_nonzero_of_run_time_data_as_a_graph_output_is_shaped_when_it_runs():
    """Only a graph output: its count is a symbolic dim, the array made by the step."""
    sess = ember.load(dropout_then_nonzero(read_by_a_node=False))
    counts = set()
    for _ in range(4):
        mask, where = sess.run(None, {"x": np.ones((4, 8), np.float32)})
        np.testing.assert_array_equal(where, np.array(np.nonzero(mask)))
        counts.add(where.shape[1])
    assert len(counts) > 1, "four random masks of 32 elements gave one count"


def test_nonzero_of_run_time_data_read_by_a_node_is_a_shape_error_naming_it():
    """A node reading NonZero needs its count to compile; a random mask gives none."""
    with pytest.raises(ShapeError, match=r"nonzero.*run-time data"):
        ember.load(dropout_then_nonzero(read_by_a_node=True)).run(
            None, {"x": np.ones((4, 8), np.float32)})


def test_topk_with_k_fed_at_run_time():
    x = normal(4, 9)
    blob = model("TopK", {"x": x, "k": np.array([1], np.int64)}, attrs={"axis": -1}, n_out=2)
    sess = ember.load(blob)
    for k in (1, 5, 9, 0):
        feeds = {"x": x, "k": np.array([k], np.int64)}
        got = sess.run(None, feeds)
        assert got[0].shape == (4, k)
        assert_agree(got, onnxruntime_outputs(blob, feeds))
    with pytest.raises(InputError, match=r"node.*K = 10"):   # a fed value that fits no plan
        sess.run(None, {"x": x, "k": np.array([10], np.int64)})


def test_onehot_depth_fed_at_run_time():
    i = np.array([0, 2, -1], np.int64)
    blob = model("OneHot", {"i": i, "depth": np.array(3, np.int64)},
                 {"v": np.array([0, 1], np.float32)})
    sess = ember.load(blob)
    for depth in (3, 5):
        feeds = {"i": i, "depth": np.array(depth, np.int64)}
        assert_agree(sess.run(None, feeds), onnxruntime_outputs(blob, feeds))


# ---- bad models ------------------------------------------------------------------------------
@pytest.mark.parametrize("op_type, feeds, attrs, match", [
    ("DepthToSpace", {"x": normal(1, 6, 2, 2)}, {"blocksize": 2}, "multiple of blocksize"),
    ("SpaceToDepth", {"x": normal(1, 2, 3, 4)}, {"blocksize": 2}, "height 3"),
    ("DepthToSpace", {"x": normal(1, 4, 2, 2)}, {"blocksize": 2, "mode": "XYZ"}, "mode"),
    ("Mod", {"a": normal(3), "b": normal(3)}, {"fmod": 2}, "fmod"),
    ("And", {"a": normal(3), "b": normal(3)}, {}, "bool"),
    ("Floor", {"x": ints(0, 3, 3)}, {}, "floating-point"),
    ("ArgMax", {"x": normal(3, 4)}, {"axis": 2}, "axis 2"),
    ("Hardmax", {"x": normal(3, 4)}, {"axis": -3}, "axis -3"),
    ("ScatterElements", {"x": normal(3, 4), "i": ints(0, 2, 2, 2), "u": normal(2, 3)}, {},
     "share one shape"),
    ("GatherND", {"x": normal(3, 4), "i": ints(0, 2, 2, 3)}, {}, "index length 3"),
    ("ReverseSequence", {"x": normal(4, 3), "lens": ints(0, 2, 2)}, {}, "sequence_lens"),
    ("EyeLike", {"x": normal(2, 2, 2)}, {}, "2-D"),
])
def test_bad_models_are_shape_errors_naming_the_node(op_type, feeds, attrs, match):
    with pytest.raises(ShapeError, match=match) as e:
        ember.load(model(op_type, feeds, attrs=attrs)).run(None, feeds)
    assert "node" in str(e.value)


# ---- gradients ---------------------------------------------------------------------------------
@pytest.mark.parametrize("op_type, derivative", [("Sin", np.cos), ("Cos", lambda x: -np.sin(x))])
def test_sin_cos_gradients_are_the_closed_forms(op_type, derivative):
    """loss = Σ r·f(x): autodiff's dx, evaluated by each op's numpy reference, is r·f'(x)."""
    from ember.graph.autodiff import backward
    from ember.graph.builder import Builder
    from ember.graph.ops import get_op

    x0 = rng.uniform(-3, 3, (3, 4))
    r = rng.uniform(0.5, 1.5, (3, 4))
    b = Builder("g")
    x = b.parameter("x", x0.shape, init=x0, dtype="float64")
    b.output(b.op("ReduceSum", [b.op(op_type, [x]) * b.constant(r, dtype="float64")],
                  keepdims=0), "loss")
    graph, grads = backward(b.build(), "loss", ["x"])
    env = dict(graph.initializers)
    for node in graph.nodes:
        outs = get_op(node.op_type, node.domain).compute(node, [env.get(i) for i in node.inputs])
        env.update(zip(node.outputs, outs))
    np.testing.assert_allclose(env[grads["x"]], r * derivative(x0), rtol=1e-12, atol=1e-15)


# ---- older opsets' forms -----------------------------------------------------------------------
@pytest.mark.parametrize("op_type, feeds, attrs, opset, n_out", [
    ("Hardmax", {"x": normal(2, 3, 4)}, {"axis": 1}, 11, 1),    # coerced to 2-D at axis 1
    ("Hardmax", {"x": normal(2, 3, 4)}, {}, 11, 1),
    ("TopK", {"x": normal(3, 6)}, {"k": 4}, 1, 2),              # k an attribute
], ids=["hardmax11_axis1", "hardmax11_default", "topk1"])
def test_old_forms_agree_with_onnxruntime(op_type, feeds, attrs, opset, n_out):
    blob = model(op_type, feeds, attrs=attrs, n_out=n_out, opset=opset)
    m = onnx.load_from_string(blob)
    m.ir_version = 7
    blob = m.SerializeToString()
    assert_agree(ember.load(blob).run(None, feeds), onnxruntime_outputs(blob, feeds))


def test_and_1_legacy_broadcast_aligns_b_at_axis():
    """onnxruntime has no And-1: numpy is the oracle (b placed at axis 1 of a, then broadcast)."""
    a, b = booleans(2, 3, 4), booleans(3)
    blob = model("And", {"a": a}, {"b": b}, attrs={"broadcast": 1, "axis": 1}, opset=1)
    (got,) = ember.load(blob).run(None, {"a": a})
    np.testing.assert_array_equal(got, a & b[:, None])
