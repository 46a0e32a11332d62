"""The ONNX importer: bad files fail with ModelError, unsupported ops are listed at once, and the
old-opset forms it upgrades compute what onnxruntime computes for the original model."""
from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import ember
from ember.importers.onnx import load_onnx


def _model(nodes, inputs, outputs, initializers=(), opset=13, ir_version=None):
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    if ir_version is not None:
        m.ir_version = ir_version
    return m


def _vi(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def _relu_model():
    return _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x", [2, 3])], [_vi("y", [2, 3])])


# ---- malformed files ------------------------------------------------------------------------
def test_random_bytes():
    junk = np.random.default_rng(0).bytes(4096)
    with pytest.raises(ember.ModelError):
        load_onnx(junk)


def test_truncated_model():
    data = _relu_model().SerializeToString()
    with pytest.raises(ember.ModelError):
        load_onnx(data[: len(data) // 2])


def test_protobuf_that_is_not_a_model():
    tensor = numpy_helper.from_array(np.arange(10, dtype=np.float32), "t")
    with pytest.raises(ember.ModelError, match="not an ONNX model|not a valid ONNX model"):
        load_onnx(tensor.SerializeToString())


def test_missing_file(tmp_path):
    with pytest.raises(ember.ModelError, match="cannot read"):
        load_onnx(tmp_path / "nope.onnx")


def test_error_has_no_protobuf_traceback():
    try:
        load_onnx(b"\xff\xff\xff\xff")
    except ember.ModelError as e:
        assert e.__cause__ is None and (e.__context__ is None or e.__suppress_context__)
    else:
        pytest.fail("no error for junk bytes")


def test_cycle():
    nodes = [helper.make_node("Relu", ["b"], ["a"], name="n1"),
             helper.make_node("Relu", ["a"], ["b"], name="n2"),
             helper.make_node("Add", ["x", "b"], ["y"], name="n3")]
    m = _model(nodes, [_vi("x", [2])], [_vi("y", [2])])
    with pytest.raises(ember.ModelError, match="cycle"):
        load_onnx(m)


def test_dangling_input():
    m = _model([helper.make_node("Add", ["x", "ghost"], ["y"])], [_vi("x", [2])],
               [_vi("y", [2])])
    with pytest.raises(ember.ModelError, match="ghost"):
        load_onnx(m)


def test_two_producers_of_one_value():
    nodes = [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Neg", ["x"], ["y"])]
    with pytest.raises(ember.ModelError, match="more than once"):
        load_onnx(_model(nodes, [_vi("x", [2])], [_vi("y", [2])]))


def test_node_output_named_like_initializer():
    w = numpy_helper.from_array(np.ones(2, np.float32), "w")
    nodes = [helper.make_node("Relu", ["x"], ["w"]), helper.make_node("Add", ["x", "w"], ["y"])]
    with pytest.raises(ember.ModelError, match="'w'"):
        load_onnx(_model(nodes, [_vi("x", [2])], [_vi("y", [2])], [w]))


def test_node_output_named_like_graph_input():
    nodes = [helper.make_node("Relu", ["y"], ["x"]), helper.make_node("Neg", ["x"], ["y"])]
    with pytest.raises(ember.ModelError, match="'x'"):
        load_onnx(_model(nodes, [_vi("x", [2])], [_vi("y", [2])]))


def test_initializer_length_mismatch_typed_field():
    w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[2, 3], float_data=[1.0] * 5)
    m = _model([helper.make_node("Add", ["x", "w"], ["y"])], [_vi("x", [2, 3])],
               [_vi("y", [2, 3])], [w])
    with pytest.raises(ember.ModelError, match="initializer 'w'"):
        load_onnx(m)


def test_unsupported_dtype_input():
    m = _model([helper.make_node("Identity", ["x"], ["y"])], [_vi("x", [2], TensorProto.STRING)],
               [_vi("y", [2], TensorProto.STRING)])
    with pytest.raises(ember.ModelError, match="STRING"):
        load_onnx(m)


def test_initializer_length_mismatch():
    w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4], raw_data=b"\0" * 8)
    m = _model([helper.make_node("Add", ["x", "w"], ["y"])], [_vi("x", [4])], [_vi("y", [4])],
               [w])
    with pytest.raises(ember.ModelError, match="initializer 'w'"):
        load_onnx(m)


def test_future_opset():
    m = _relu_model()
    m.opset_import[0].version = onnx.defs.onnx_opset_version() + 5
    with pytest.raises(ember.ModelError, match="opset"):
        load_onnx(m)


def _external_model(tmp_path, location):
    """A model whose initializer 'w' lives in an external file at ``location``."""
    w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[3])
    w.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", "12")):
        e = w.external_data.add()
        e.key, e.value = k, v
    m = _model([helper.make_node("Add", ["x", "w"], ["y"])], [_vi("x", [3])], [_vi("y", [3])],
               [w])
    path = tmp_path / "model" / "m.onnx"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(m.SerializeToString())
    return path


def test_external_data_inside_folder_loads(tmp_path):
    path = _external_model(tmp_path, "weights.bin")
    (path.parent / "weights.bin").write_bytes(np.array([1, 2, 3], np.float32).tobytes())
    g = load_onnx(path)
    np.testing.assert_array_equal(g.initializers["w"], [1, 2, 3])
    with pytest.raises(ember.ModelError, match="bytes"):
        load_onnx(path.read_bytes())  # no folder to resolve the location against


@pytest.mark.parametrize("where", ["absolute", "dotdot", "symlink"])
def test_external_data_outside_folder_refused(tmp_path, where):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.zeros(3, np.float32).tobytes())
    if where == "absolute":
        path = _external_model(tmp_path, str(secret))
    elif where == "dotdot":
        path = _external_model(tmp_path, "../secret.bin")
    else:
        path = _external_model(tmp_path, "link.bin")
        os.symlink(secret, path.parent / "link.bin")
    with pytest.raises(ember.ModelError, match="external data"):
        load_onnx(path)


# ---- unsupported ops ----------------------------------------------------------------------------
def test_all_unsupported_ops_listed_at_once():
    nodes = [helper.make_node("NonMaxSuppression", ["x", "x"], ["a"], name="nms1"),
             helper.make_node("Relu", ["x"], ["r"], name="ok"),
             helper.make_node("NonMaxSuppression", ["x", "x"], ["b"], name="nms2"),
             helper.make_node("FancyOp", ["x"], ["y"], name="fancy", domain="com.example")]
    m = _model(nodes, [_vi("x", [2])], [_vi("y", [2])])
    m.opset_import.append(helper.make_opsetid("com.example", 1))
    with pytest.raises(ember.UnsupportedOpError) as info:
        load_onnx(m)
    found = info.value.unsupported
    assert found[("NonMaxSuppression", "", 13)] == ["nms1", "nms2"]
    assert found[("FancyOp", "com.example", 1)] == ["fancy"]
    assert len(found) == 2
    assert "nms2" in str(info.value) and "FancyOp" in str(info.value)


# ---- conversion details ----------------------------------------------------------------------------
def test_inputs_types_and_symbolic_dims():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, None])
    w = numpy_helper.from_array(np.ones(3, np.float32), "w")
    # IR 3 style: the initializer is listed among the inputs too; it is still a constant
    m = _model([helper.make_node("Mul", ["x", "w"], ["y"]), helper.make_node("Relu", ["y"], ["z"])],
               [x, _vi("w", [3])], [_vi("z", None)], [w])
    g = load_onnx(m)
    assert g.inputs == ["x"]
    assert g.types["x"].shape == ("batch", 3, "?2")
    assert g.types["x"].dtype == np.float32
    assert [n.name for n in g.nodes] == ["Mul_0", "Relu_1"]


def test_cast_to_becomes_dtype_name_and_constant_value_forms():
    nodes = [helper.make_node("Constant", [], ["c"], value_floats=[1.0, 2.0]),
             helper.make_node("Cast", ["c"], ["y"], to=TensorProto.INT64)]
    g = load_onnx(_model(nodes, [], [_vi("y", [2], TensorProto.INT64)]))
    const, cast = g.nodes
    assert cast.attrs["to"] == "int64"
    assert const.attrs["value"].dtype == np.float32
    np.testing.assert_array_equal(const.attrs["value"], [1.0, 2.0])


# ---- opset upgrades, checked against onnxruntime on the original model ------------------------
RNG = np.random.default_rng(0)
X4 = RNG.standard_normal((2, 3, 4, 5)).astype(np.float32)


def _c(name, arr):
    return numpy_helper.from_array(np.asarray(arr), name)


UPGRADE_CASES = {
    "softmax_opset11_axis1": (11, [helper.make_node("Softmax", ["x"], ["y"], axis=1)], []),
    "softmax_opset11_default": (11, [helper.make_node("Softmax", ["x"], ["y"])], []),
    "logsoftmax_opset9_axis2": (9, [helper.make_node("LogSoftmax", ["x"], ["y"], axis=2)], []),
    "softmax_opset12_last": (12, [helper.make_node("Softmax", ["x"], ["y"], axis=3)], []),
    "clip_opset6": (6, [helper.make_node("Clip", ["x"], ["y"], min=-0.5, max=0.7)], []),
    "clip_opset6_max_only": (6, [helper.make_node("Clip", ["x"], ["y"], max=0.2)], []),
    "pad_opset2_constant": (2, [helper.make_node("Pad", ["x"], ["y"], pads=[0, 0, 1, 2, 0, 1, 0, 1],
                                                 value=1.5)], []),
    "pad_opset2_reflect": (2, [helper.make_node("Pad", ["x"], ["y"], mode="reflect",
                                                pads=[0, 0, 1, 2, 0, 0, 2, 1])], []),
    "upsample_opset7_nearest": (7, [helper.make_node("Upsample", ["x"], ["y"], mode="nearest",
                                                     scales=[1.0, 1.0, 2.0, 3.0])], []),
    "upsample_opset9_nearest": (9, [helper.make_node("Upsample", ["x", "s"], ["y"])],
                                [_c("s", np.array([1, 1, 2, 2], np.float32))]),
    "upsample_opset9_linear": (9, [helper.make_node("Upsample", ["x", "s"], ["y"], mode="linear")],
                               [_c("s", np.array([1, 1, 2, 2], np.float32))]),
    "resize_opset10_nearest": (10, [helper.make_node("Resize", ["x", "s"], ["y"])],
                               [_c("s", np.array([1, 1, 2, 3], np.float32))]),
    "resize_opset10_nearest_shrink": (10, [helper.make_node("Resize", ["x", "s"], ["y"])],
                                      [_c("s", np.array([1, 1, 0.6, 0.45], np.float32))]),
    "resize_opset10_nearest_mixed": (10, [helper.make_node("Resize", ["x", "s"], ["y"])],
                                     [_c("s", np.array([1, 1, 1.7, 0.45], np.float32))]),
    "resize_opset10_linear": (10, [helper.make_node("Resize", ["x", "s"], ["y"], mode="linear")],
                              [_c("s", np.array([1, 1, 2, 2], np.float32))]),
    "reducemean_opset11": (11, [helper.make_node("ReduceMean", ["x"], ["y"], axes=[1, 3],
                                                 keepdims=0)], []),
    "reducesum_opset11": (11, [helper.make_node("ReduceSum", ["x"], ["y"], axes=[-1])], []),
    "reducesum_opset11_all": (11, [helper.make_node("ReduceSum", ["x"], ["y"], keepdims=0)], []),
    "reducemax_opset12": (12, [helper.make_node("ReduceMax", ["x"], ["y"], axes=[2])], []),
    "split_opset11_parts": (11, [helper.make_node("Split", ["x"], ["y", "z"], axis=3,
                                                  split=[2, 3])], []),
    "split_opset11_equal": (11, [helper.make_node("Split", ["x"], ["y", "z"], axis=0)], []),
    "squeeze_unsqueeze_opset11": (11, [helper.make_node("Unsqueeze", ["x"], ["u"], axes=[0, 5]),
                                       helper.make_node("Squeeze", ["u"], ["y"], axes=[5])], []),
    "slice_opset9": (9, [helper.make_node("Slice", ["x"], ["y"], starts=[1, -3], ends=[3, 100],
                                          axes=[1, 3])], []),
    "dropout_opset10": (10, [helper.make_node("Dropout", ["x"], ["y"], ratio=0.3)], []),
    "batchnorm_opset7": (7, [helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"],
                                              ["y"], spatial=1, epsilon=1e-3)],
                         [_c("s", RNG.random(3, np.float32) + 0.5),
                          _c("b", RNG.standard_normal(3).astype(np.float32)),
                          _c("m", RNG.standard_normal(3).astype(np.float32)),
                          _c("v", RNG.random(3, np.float32) + 0.5)]),
    "resize_opset11_sizes_empty_scales": (
        11, [helper.make_node("Resize", ["x", "roi", "sc", "sz"], ["y"], mode="nearest")],
        [_c("roi", np.zeros(0, np.float32)), _c("sc", np.zeros(0, np.float32)),
         _c("sz", np.array([2, 3, 7, 9], np.int64))]),
    "resize_opset13_linear_half_pixel": (
        13, [helper.make_node("Resize", ["x", "", "sc"], ["y"], mode="linear")],
        [_c("sc", np.array([1, 1, 1.5, 0.8], np.float32))]),
    "cast_opset9": (9, [helper.make_node("Cast", ["x"], ["y"], to=TensorProto.DOUBLE)], []),
    "gemm_opset9": (9, [helper.make_node("Flatten", ["x"], ["f"]),
                        helper.make_node("Gemm", ["f", "w", "c"], ["y"], transB=1, alpha=0.5)],
                    [_c("w", RNG.standard_normal((4, 60)).astype(np.float32)),
                     _c("c", RNG.standard_normal(4).astype(np.float32))]),
    "reshape_concat_opset11": (11, [helper.make_node("Reshape", ["x", "shp"], ["r"]),
                                    helper.make_node("Concat", ["r", "r"], ["y"], axis=1)],
                               [_c("shp", np.array([2, -1], np.int64))]),
}


@pytest.mark.parametrize("name", sorted(UPGRADE_CASES))
def test_opset_upgrade_matches_onnxruntime(name):
    opset, nodes, inits = UPGRADE_CASES[name]
    outs = [o for n in nodes for o in n.output if o in ("y", "z")]
    m = _model(nodes, [_vi("x", X4.shape)], [helper.make_empty_tensor_value_info(o) for o in outs],
               inits, opset=opset,
               ir_version=7)
    expected = ort.InferenceSession(m.SerializeToString(),
                                    providers=["CPUExecutionProvider"]).run(None, {"x": X4})
    got = ember.load(m).run(None, {"x": X4})
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.shape == e.shape and g.dtype == e.dtype
        # float32 results from different summation orders: a few ulps
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)


# ---- ember.backend ------------------------------------------------------------------------------
def test_backend_prepare_run_and_run_node():
    import ember.backend as eb
    x = np.array([[-1.0, 2.0, -3.0], [4.0, -5.0, 6.0]], np.float32)
    assert eb.supports_device("CPU") and not eb.supports_device("CUDA")
    rep = eb.prepare(_relu_model())
    np.testing.assert_array_equal(rep.run([x])[0], np.maximum(x, 0))
    np.testing.assert_array_equal(rep.run({"x": x})[0], np.maximum(x, 0))
    np.testing.assert_array_equal(eb.run_model(_relu_model(), [x])[0], np.maximum(x, 0))
    (y,) = eb.run_node(helper.make_node("Add", ["a", "b"], ["c"]), [x, x])
    np.testing.assert_array_equal(y, x + x)
    with pytest.raises(ember.InputError):
        rep.run([x, x])


def test_legacy_broadcast_axis_opset6():
    """Opset < 7 Add with broadcast=1, axis=1 aligns B with A's axis 1 (onnxruntime does not run
    opset 6, so numpy is the oracle)."""
    b = np.array([1.0, 2.0, 3.0], np.float32)
    node = helper.make_node("Add", ["x", "b"], ["y"], broadcast=1, axis=1)
    m = _model([node], [_vi("x", X4.shape)], [_vi("y", X4.shape)], [_c("b", b)], opset=6)
    (got,) = ember.load(m).run(None, {"x": X4})
    np.testing.assert_allclose(got, X4 + b[None, :, None, None], rtol=1e-6)


def test_sparse_constant_becomes_dense():
    values = numpy_helper.from_array(np.array([5.0, 7.0], np.float32), "v")
    indices = numpy_helper.from_array(np.array([1, 4], np.int64), "i")
    sp = helper.make_sparse_tensor(values, indices, [2, 3])
    node = helper.make_node("Constant", [], ["y"], sparse_value=sp)
    g = load_onnx(_model([node], [], [_vi("y", [2, 3])]))
    np.testing.assert_array_equal(g.nodes[0].attrs["value"], [[0, 5, 0], [0, 7, 0]])


# ---- dtypes and ranks an old form hides: learned from the nodes converted before it -----------
def _ops_and_model(opset, nodes, inputs, inits=()):
    m = _model(nodes, inputs, [helper.make_empty_tensor_value_info("y")], inits, opset=opset)
    g = load_onnx(m.SerializeToString())
    return g, m


def test_old_softmax_learns_its_input_rank_from_the_nodes_before_it():
    """Softmax-9 after Flatten → Gemm works on a rank-2 value whose last axis is 1: it stays
    one Softmax, with no 2-D coercion around it; the nodes inferred keep the file's attributes
    (no defaults filled in)."""
    nodes = [helper.make_node("Flatten", ["x"], ["f"]),
             helper.make_node("Gemm", ["f", "w", "c"], ["g"], transB=1),
             helper.make_node("Softmax", ["g"], ["y"], axis=1)]
    inits = [_c("w", RNG.standard_normal((4, 60)).astype(np.float32)),
             _c("c", np.zeros(4, np.float32))]
    g, m = _ops_and_model(9, nodes, [_vi("x", X4.shape)], inits)
    assert [n.op_type for n in g.nodes] == ["Flatten", "Gemm", "Softmax"]
    assert g.nodes[0].attrs == {} and g.nodes[1].attrs == {"transB": 1}
    assert g.nodes[2].attrs == {"axis": -1}
    expected = ort.InferenceSession(m.SerializeToString(),
                                    providers=["CPUExecutionProvider"]).run(None, {"x": X4})
    np.testing.assert_allclose(ember.load(m).run(None, {"x": X4})[0], expected[0],
                               rtol=1e-5, atol=1e-6)


def test_old_softmax_rank_through_a_reshape_of_a_constant_node():
    shape = helper.make_tensor("shape", TensorProto.INT64, [3], [2, 3, 20])
    nodes = [helper.make_node("Constant", [], ["s"], value=shape),
             helper.make_node("Reshape", ["x", "s"], ["r"]),
             helper.make_node("Softmax", ["r"], ["y"], axis=2)]
    g, _ = _ops_and_model(11, nodes, [_vi("x", X4.shape)])
    assert [n.op_type for n in g.nodes] == ["Constant", "Reshape", "Softmax"]


def test_old_softmax_on_a_rank_known_only_at_run_time_keeps_the_2d_coercion():
    """Reshape's target fed at run time: the rank is unknown while importing, so the upgrade
    spells out Softmax-11's coercion, which is right for any rank."""
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["r"]),
             helper.make_node("Softmax", ["r"], ["y"], axis=1)]
    inputs = [_vi("x", X4.shape), _vi("shape", [3], TensorProto.INT64)]
    g, m = _ops_and_model(11, nodes, inputs)
    assert "Flatten" in [n.op_type for n in g.nodes]
    feeds = {"x": X4, "shape": np.array([2, 12, 5], np.int64)}
    expected = ort.InferenceSession(m.SerializeToString(),
                                    providers=["CPUExecutionProvider"]).run(None, feeds)
    np.testing.assert_allclose(ember.load(m).run(None, feeds)[0], expected[0],
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [TensorProto.FLOAT16, TensorProto.DOUBLE])
def test_old_clip_and_pad_constants_take_the_computed_input_dtype(dtype):
    """Clip-6's bounds and Pad-2's fill value become constants of their input's dtype, here
    a value computed by an Identity, not declared anywhere in the file (numpy is the oracle:
    onnxruntime has no float64 Clip-6)."""
    np_dtype = helper.tensor_dtype_to_np_dtype(dtype)
    nodes = [helper.make_node("Identity", ["x"], ["i"]),
             helper.make_node("Clip", ["i"], ["c"], min=-0.5, max=0.7),
             helper.make_node("Pad", ["c"], ["y"], pads=[0, 1, 0, 0, 1, 0], value=2.0)]
    g, m = _ops_and_model(10, nodes, [_vi("x", [2, 3, 4], dtype)])
    clip, pad = g.nodes[1], g.nodes[2]
    assert [g.initializers[i].dtype for i in clip.inputs[1:]] == [np_dtype, np_dtype]
    assert g.initializers[pad.inputs[2]].dtype == np_dtype
    x = RNG.standard_normal((2, 3, 4)).astype(np_dtype)
    lo, hi = (np.float32(b).astype(np_dtype) for b in (-0.5, 0.7))  # attributes are float32
    expected = np.pad(np.clip(x, lo, hi), ((0, 0), (1, 1), (0, 0)), constant_values=2.0)
    (got,) = ember.load(m).run(None, {"x": x})
    assert got.dtype == np_dtype
    np.testing.assert_array_equal(got, expected)


def test_legacy_broadcast_ranks_of_computed_values():
    """Opset-6 Mul aligning a computed B (rank 2) at axis -2 of a computed A (rank 4): both
    ranks come from inferring the nodes before it (numpy is the oracle: onnxruntime does not
    run opset 6)."""
    b = RNG.standard_normal((4, 5)).astype(np.float32)
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Identity", ["b"], ["bi"]),
             helper.make_node("Mul", ["r", "bi"], ["y"], broadcast=1, axis=-2)]
    _, m = _ops_and_model(6, nodes, [_vi("x", X4.shape)], [_c("b", b)])
    (got,) = ember.load(m).run(None, {"x": X4})
    np.testing.assert_allclose(got, np.maximum(X4, 0) * b, rtol=1e-6)


@pytest.mark.parametrize("declared,fed", [([-1, 3], (5, 3)), ([-7, 3], (2, 3)),
                                          (["", 3], (4, 3))])
def test_negative_or_unnamed_dims_are_symbolic(declared, fed):
    """Exporters write -1 (and sometimes an empty dim_param) for a free dim: onnxruntime reads
    it as symbolic, and so does ember; a declared 0 stays a fixed zero-size dim."""
    import ember
    dims = [d if d != "" else None for d in declared]
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "free",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)])
    sess = ember.load(helper.make_model(
        g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    assert not isinstance(sess.get_inputs()[0].shape[0], int)
    x = np.random.default_rng(0).standard_normal(fed).astype(np.float32)
    np.testing.assert_array_equal(sess.run(None, {"x": x})[0], np.maximum(x, 0))


def test_declared_zero_dim_stays_fixed():
    import ember
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "zero",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [0, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [0, 3])])
    sess = ember.load(helper.make_model(
        g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    assert sess.get_inputs()[0].shape == (0, 3)
    with pytest.raises(ember.InputError):
        sess.run(None, {"x": np.zeros((2, 3), np.float32)})


def _if_model(then_graph, else_graph, name="outer"):
    node = helper.make_node("If", ["c"], ["y"], then_branch=then_graph, else_branch=else_graph,
                            name=name)
    return helper.make_graph([node], "m", [
        helper.make_tensor_value_info("c", TensorProto.BOOL, []),
        helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])


def _branch(nodes, name):
    return helper.make_graph(nodes, name, [],
                             [helper.make_tensor_value_info(nodes[-1].output[0],
                                                            TensorProto.FLOAT, [2])])


def test_unsupported_ops_inside_subgraphs_are_named_by_path():
    inner = helper.make_node("If", ["c"], ["o"], name="inner",
                             then_branch=_branch([helper.make_node("Det", ["x"], ["o"],
                                                                   name="det")], "t2"),
                             else_branch=_branch([helper.make_node("Relu", ["x"], ["o"])], "e2"))
    g = _if_model(_branch([inner], "t"),
                  _branch([helper.make_node("FancyOp", ["x"], ["y2"], name="fancy")], "e"))
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ember.UnsupportedOpError) as e:
        ember.load(model.SerializeToString())
    msg = str(e.value)
    assert "'outer/then_branch/inner/then_branch/det'" in msg
    assert "'outer/else_branch/fancy'" in msg and "Det" in msg and "FancyOp" in msg


def test_subgraphs_nested_absurdly_deep_are_refused():
    leaf = _branch([helper.make_node("Relu", ["x"], ["o"])], "leaf")
    body = leaf
    for depth in range(24):   # more than MAX_SUBGRAPH_DEPTH, fewer than protobuf's own limit
        node = helper.make_node("If", ["c"], ["o"], name=f"if{depth}",
                                then_branch=body, else_branch=leaf)
        body = _branch([node], f"level{depth}")
    model = helper.make_model(_if_model(body, leaf),
                              opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ember.ModelError, match="nested more than"):
        ember.load(model.SerializeToString())
