"""Hostile models and bad feeds: every malformed model is an ``ember.ModelError`` (or subclass)
naming where it went wrong, through ``ember.load`` and ``ember.backend.prepare`` alike; every bad
feed is an ``ember.InputError`` and leaves the Session giving correct answers.

Cases already in tests/test_importer.py (random/truncated bytes, TensorProto bytes, cycles,
dangling inputs, two producers, initializer length, future opset, external data escaping) and
tests/test_session.py (wrong feed names/dtypes/ranks/dims, strided/Fortran/big-endian feeds,
memory cap) are not repeated one by one; here each class is checked through both entry points
and with the name the message must carry.
Oracle for numbers: onnxruntime on the same bytes. rtol = atol = 1e-5: a 27-product conv summed
in a different order differs by a few float32 ulps.
"""
from __future__ import annotations

import os
import stat
import tracemalloc

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import ember
import ember.backend
from ember import InputError, ModelError

RTOL = ATOL = 1e-5
BIG = 1_000_000_000_000  # 1e12 elements


def vi(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def model(nodes, inputs, outputs, inits=(), opset=17, ir_version=8):
    g = helper.make_graph(nodes, "hostile", inputs, outputs, initializer=list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = ir_version
    return m


def const(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def conv(name="conv", **attrs):
    """x[1,3,8,8] → Conv(w[4,3,3,3]) named ``name`` with ``attrs`` → y."""
    w = const("w", np.ones((4, 3, 3, 3), np.float32))
    node = helper.make_node("Conv", ["x", "w"], ["y"], name=name)
    for k, v in attrs.items():
        node.attribute.append(v)
    return model([node], [vi("x", [1, 3, 8, 8])], [vi("y", None)], [w])


def conv_input(shape):
    """A Conv whose declared input shape is hostile (found by the fuzzer: dims past int32
    reached the kernel's C int arguments)."""
    m = conv()
    dims = m.graph.input[0].type.tensor_type.shape.dim
    for d, v in zip(dims, shape):
        d.dim_value = v
    return m


def attr(name, value, type_=None):
    """An AttributeProto of an explicit (possibly wrong) type."""
    a = helper.make_attribute(name, value)
    if type_ is not None:
        a.type = type_
    return a


def relu_model():
    return model([helper.make_node("Relu", ["x"], ["y"], name="r")], [vi("x", [2, 3])],
                 [vi("y", [2, 3])])


def one_node(op, inputs, inits, out_shape=None, name="n", in_shape=(2, 3, 4), **attrs):
    node = helper.make_node(op, ["x"] + list(inputs), ["y"], name=name, **attrs)
    return model([node], [vi("x", list(in_shape))], [vi("y", out_shape)],
                 [const(k, v) for k, v in inits.items()])


def _bytes(m):
    return m.SerializeToString() if isinstance(m, onnx.ModelProto) else m


def _cycle():
    nodes = [helper.make_node("Relu", ["b"], ["a"], name="n1"),
             helper.make_node("Relu", ["a"], ["b"], name="n2"),
             helper.make_node("Add", ["x", "b"], ["y"], name="n3")]
    return model(nodes, [vi("x", [2])], [vi("y", [2])])


def _duplicate_outputs():
    nodes = [helper.make_node("Relu", ["x"], ["t"], name="a"),
             helper.make_node("Neg", ["x"], ["t"], name="b"),
             helper.make_node("Identity", ["t"], ["y"], name="c")]
    return model(nodes, [vi("x", [2])], [vi("y", [2])])


def _duplicate_initializer():
    return model([helper.make_node("Add", ["x", "w"], ["y"], name="add")], [vi("x", [2])],
                 [vi("y", [2])], [const("w", np.ones(2, np.float32)),
                                  const("w", np.ones(2, np.float32))])


def _duplicate_input():
    return model([helper.make_node("Add", ["x", "x"], ["y"], name="add")],
                 [vi("x", [2]), vi("x", [2])], [vi("y", [2])])


def _init_len(raw: bool):
    if raw:
        w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4], raw_data=b"\0" * 12)
    else:
        w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4], float_data=[1.0] * 3)
    return model([helper.make_node("Add", ["x", "w"], ["y"], name="add")], [vi("x", [4])],
                 [vi("y", [4])], [w])


def _init_negative_dim():
    w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[-2, -2],
                    float_data=[1.0] * 4)
    return model([helper.make_node("Add", ["x", "w"], ["y"], name="add")], [vi("x", [2, 2])],
                 [vi("y", [2, 2])], [w])


def _init_huge_dims_no_data():
    w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1 << 40, 1 << 40],
                    raw_data=b"")
    return model([helper.make_node("Add", ["x", "w"], ["y"], name="add")], [vi("x", [2])],
                 [vi("y", None)], [w])


def _input_dims(dims):
    return model([helper.make_node("Relu", ["x"], ["y"], name="r")], [vi("x", dims)],
                 [vi("y", None)])


def _zero_dim_conv():
    w = const("w", np.ones((4, 3, 3, 3), np.float32))
    return model([helper.make_node("Conv", ["x", "w"], ["y"], name="conv")],
                 [vi("x", [1, 3, 0, 8])], [vi("y", None)], [w])


def _constant_of_shape(shape):
    return model([helper.make_node("ConstantOfShape", ["s"], ["y"], name="cos")], [],
                 [vi("y", None)], [const("s", np.array(shape, np.int64))])


def _expand(shape, x_shape=(1, 1)):
    return model([helper.make_node("Expand", ["x", "s"], ["y"], name="expand")],
                 [vi("x", list(x_shape))], [vi("y", None)], [const("s", np.array(shape, np.int64))])


def _future_opset():
    m = relu_model()
    m.opset_import[0].version = onnx.defs.onnx_opset_version() + 5
    return m


def _unknown_op():
    return model([helper.make_node("FooBar", ["x"], ["y"], name="foo")], [vi("x", [2])],
                 [vi("y", [2])])


def _not_a_model_graph():
    return relu_model().graph.SerializeToString()


def _not_a_model_tensor():
    return const("t", np.arange(10, dtype=np.float32)).SerializeToString()


# name → (model or bytes, regex the message must match: the node/initializer/input it names)
HOSTILE = {
    "empty bytes": (b"", "not an ONNX model|not a valid"),
    "random bytes": (np.random.default_rng(0).bytes(2048), "not an ONNX model|not a valid"),
    "truncated": (relu_model().SerializeToString()[:-7], "not an ONNX model|not a valid"),
    "truncated half": (relu_model().SerializeToString()[:20], "not an ONNX model|not a valid"),
    "tensorproto bytes": (_not_a_model_tensor(), "not an ONNX model|not a valid"),
    "graphproto bytes": (_not_a_model_graph(), "not an ONNX model|not a valid"),
    "cycle": (_cycle(), "cycle"),
    "dangling input": (model([helper.make_node("Add", ["x", "ghost"], ["y"], name="add")],
                             [vi("x", [2])], [vi("y", [2])]), "ghost"),
    "output nothing produces": (model([helper.make_node("Relu", ["x"], ["y"], name="r")],
                                      [vi("x", [2])], [vi("nowhere", [2])]), "nowhere"),
    "duplicate node outputs": (_duplicate_outputs(), "'t'"),
    "duplicate initializer": (_duplicate_initializer(), "'w'"),
    "duplicate graph input": (_duplicate_input(), "'x'"),
    "initializer raw length": (_init_len(True), "initializer 'w'"),
    "initializer typed length": (_init_len(False), "initializer 'w'"),
    "initializer negative dims": (_init_negative_dim(), "initializer 'w'"),
    "initializer enormous dims": (_init_huge_dims_no_data(), "initializer 'w'"),
    "input zero dim into conv": (_zero_dim_conv(), "conv"),
    "input 1e12 elements": (_input_dims([BIG, 1]), "'x'|memory cap"),
    "input dim over int32 into conv": (conv_input([1, 3, 1 << 31, 7]), "'x'"),
    "input dims overflow int64": (_input_dims([1 << 40, 1 << 40, 1 << 40]), "'x'"),
    "ConstantOfShape 1e12": (_constant_of_shape([BIG]), "cos|memory cap"),
    "ConstantOfShape negative": (_constant_of_shape([2, -3]), "cos"),
    "ConstantOfShape overflow": (_constant_of_shape([1 << 62, 1 << 62, 4]), "cos"),
    "Expand 1e12": (_expand([1000000, 1000000]), "expand|memory cap"),
    "Expand overflow": (_expand([1 << 62, 1 << 62]), "expand"),
    "Expand incompatible": (_expand([4, 5], (2, 3)), "expand"),
    "Reshape two -1": (one_node("Reshape", ["s"], {"s": np.array([-1, -1], np.int64)}),
                       "'n'"),
    "Reshape wrong count": (one_node("Reshape", ["s"], {"s": np.array([5, 7], np.int64)}),
                            "'n'"),
    "Reshape below -1": (one_node("Reshape", ["s"], {"s": np.array([-4, 6], np.int64)}), "'n'"),
    "Reshape huge": (one_node("Reshape", ["s"], {"s": np.array([1 << 62, 0, 4], np.int64)}),
                     "'n'"),
    "Reshape 0 past rank": (one_node("Reshape", ["s"],
                                     {"s": np.array([0, 0, 0, 0, 1], np.int64)}), "'n'"),
    "Slice axis out of range": (one_node("Slice", ["st", "en", "ax"],
                                         {"st": np.array([0], np.int64),
                                          "en": np.array([1], np.int64),
                                          "ax": np.array([7], np.int64)}), "'n'"),
    "Slice step 0": (one_node("Slice", ["st", "en", "ax", "sp"],
                              {"st": np.array([0], np.int64), "en": np.array([1], np.int64),
                               "ax": np.array([0], np.int64), "sp": np.array([0], np.int64)}),
                     "'n'"),
    "Slice lengths differ": (one_node("Slice", ["st", "en"], {"st": np.array([0, 0], np.int64),
                                                              "en": np.array([1], np.int64)}),
                             "'n'"),
    "Gather index out of range": (one_node("Gather", ["i"], {"i": np.array([0, 9], np.int64)}),
                                  "'n'"),
    "Gather axis out of range": (one_node("Gather", ["i"], {"i": np.array([0], np.int64)},
                                          axis=5), "'n'"),
    "Gather float indices": (one_node("Gather", ["i"], {"i": np.array([0.5], np.float32)}),
                             "'n'"),
    "Concat axis out of range": (model([helper.make_node("Concat", ["x", "x"], ["y"], name="n",
                                                         axis=3)],
                                       [vi("x", [2, 3])], [vi("y", None)]), "'n'"),
    "Softmax axis out of range": (model([helper.make_node("Softmax", ["x"], ["y"], name="n",
                                                          axis=-4)],
                                        [vi("x", [2, 3])], [vi("y", None)]), "'n'"),
    "Flatten axis out of range": (model([helper.make_node("Flatten", ["x"], ["y"], name="n",
                                                          axis=9)],
                                        [vi("x", [2, 3])], [vi("y", None)]), "'n'"),
    "ConvTranspose strides 0": (model([helper.make_node("ConvTranspose", ["x", "w"], ["y"],
                                                        name="n", strides=[0, 0])],
                                      [vi("x", [1, 1, 3, 3])], [vi("y", None)],
                                      [const("w", np.ones((1, 1, 2, 2), np.float32))]), "'n'"),
    "Transpose perm repeats": (model([helper.make_node("Transpose", ["x"], ["y"], name="n",
                                                       perm=[0, 0])],
                                     [vi("x", [2, 3])], [vi("y", None)]), "'n'"),
    "Resize scales NaN": (model([helper.make_node("Resize", ["x", "", "s"], ["y"], name="n")],
                                [vi("x", [1, 1, 3, 4])], [vi("y", None)],
                                [const("s", np.array([1, 1, np.nan, 1], np.float32))]), "'n'"),
    "Resize scales enormous": (model([helper.make_node("Resize", ["x", "", "s"], ["y"],
                                                       name="n")],
                                     [vi("x", [1, 1, 3, 4])], [vi("y", None)],
                                     [const("s", np.array([1, 1, 1e10, 1e10], np.float32))]),
                               "'n'"),
    "Split sizes wrong": (model([helper.make_node("Split", ["x", "s"], ["y", "z"], name="n",
                                                  axis=1)],
                                [vi("x", [3, 4])], [vi("y", None), vi("z", None)],
                                [const("s", np.array([1, 9], np.int64))]), "'n'"),
    "future opset": (_future_opset(), "opset"),
    "unknown op": (_unknown_op(), "FooBar"),
    "Conv strides float": (conv(s=attr("strides", 2.0)), "conv"),
    "Conv strides floats": (conv(s=attr("strides", [1.5, 1.5])), "conv"),
    "Conv kernel_shape string": (conv(k=attr("kernel_shape", "3x3")), "conv"),
    "Conv kernel_shape wrong": (conv(k=attr("kernel_shape", [5, 5])), "conv"),
    "Conv group 0": (conv(g=attr("group", 0)), "conv"),
    "Conv group negative": (conv(g=attr("group", -3)), "conv"),
    "Conv group not dividing": (conv(g=attr("group", 2)), "conv"),
    "Conv strides 0": (conv(s=attr("strides", [0, 0])), "conv"),
    "Conv strides negative": (conv(s=attr("strides", [-1, 1])), "conv"),
    "Conv dilations 0": (conv(d=attr("dilations", [0, 1])), "conv"),
    "Conv pads negative huge": (conv(p=attr("pads", [-100, 0, 0, 0])), "conv"),
    "Conv pads wrong length": (conv(p=attr("pads", [1, 1, 1])), "conv"),
    "Conv auto_pad junk": (conv(a=attr("auto_pad", "SIDEWAYS")), "conv"),
    "Conv pads enormous": (conv(p=attr("pads", [1 << 40, 1 << 40, 1 << 40, 1 << 40])),
                           "conv|memory cap"),
    "Conv strides past int32": (conv(s=attr("strides", [1 << 31, 1])), "conv.*'strides'"),
    "Conv window past int32": (conv(d=attr("dilations", [1 << 30, 1]),
                                    p=attr("pads", [1 << 30, 0, 1 << 30, 0])),
                               "conv.*'dilations'"),
    "Conv strides as tensor": (conv(s=attr("strides", numpy_helper.from_array(
        np.array([1, 1], np.int64)))), "conv"),
    "Conv kernel too big": (conv(p=attr("pads", [0, 0, 0, 0]),
                                 d=attr("dilations", [5, 5])), "conv"),
    "MaxPool kernel 0": (model([helper.make_node("MaxPool", ["x"], ["y"], name="pool",
                                                 kernel_shape=[0, 0])],
                               [vi("x", [1, 1, 4, 4])], [vi("y", None)]), "pool"),
    "MaxPool no kernel": (model([helper.make_node("MaxPool", ["x"], ["y"], name="pool")],
                                [vi("x", [1, 1, 4, 4])], [vi("y", None)]), "pool"),
    "Gemm shapes": (model([helper.make_node("Gemm", ["x", "w"], ["y"], name="gemm")],
                          [vi("x", [2, 3])], [vi("y", None)],
                          [const("w", np.ones((4, 5), np.float32))]), "gemm"),
    "Cast to junk": (model([helper.make_node("Cast", ["x"], ["y"], name="cast", to=999)],
                           [vi("x", [2])], [vi("y", None)]), "cast"),
    "input of sequence type": (model([helper.make_node("Identity", ["x"], ["y"], name="i")],
                                     [helper.make_tensor_sequence_value_info(
                                         "x", TensorProto.FLOAT, [2])],
                                     [vi("y", None)]), "'x'"),
    "input without shape": (model([helper.make_node("Relu", ["x"], ["y"], name="r")],
                                  [vi("x", None)], [vi("y", None)]), "'x'"),
    "input of string type": (model([helper.make_node("Identity", ["x"], ["y"], name="i")],
                                   [vi("x", [2], TensorProto.STRING)], [vi("y", None)]), "'x'"),
    "If subgraph": (model([helper.make_node("If", ["c"], ["y"], name="if",
                                            then_branch=relu_model().graph,
                                            else_branch=relu_model().graph)],
                          [vi("c", [], TensorProto.BOOL)], [vi("y", None)]), "If"),
}


def _assert_refused(data, pattern, entry):
    with pytest.raises(ModelError, match=pattern) as exc:
        if entry == "load":
            ember.load(data, memory_cap=1 << 30)
        else:
            ember.backend.prepare(_proto_or_bytes(data), memory_cap=1 << 30)
    assert str(exc.value)


def _proto_or_bytes(data):
    """The backend gets a ModelProto when the bytes parse as one (as onnx's harness passes),
    else the raw bytes."""
    m = onnx.ModelProto()
    try:
        m.ParseFromString(data)
    except Exception:
        return data
    return m


@pytest.mark.parametrize("entry", ["load", "backend"])
@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_model_is_a_model_error(case, entry):
    data, pattern = HOSTILE[case]
    _assert_refused(_bytes(data), pattern, entry)


@pytest.mark.parametrize("shape", [[0, 3], [2, 0], [0, 0]])
def test_zero_size_input_runs_like_onnxruntime_or_is_refused(shape):
    """Zero-size tensors are legal ONNX: ember either runs them as onnxruntime does or refuses
    them cleanly at load, never crashes."""
    data = model([helper.make_node("Relu", ["x"], ["r"], name="relu"),
                  helper.make_node("Add", ["r", "x"], ["y"], name="add")],
                 [vi("x", shape)], [vi("y", shape)]).SerializeToString()
    x = np.zeros(shape, np.float32)
    try:
        sess = ember.load(data)
    except ModelError as e:
        assert "'x'" in str(e) or "relu" in str(e) or "add" in str(e), str(e)
        return
    (y,) = sess.run(None, {"x": x})
    (ry,) = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert y.shape == ry.shape and y.dtype == ry.dtype


def _value_input_model(op, value_name, value_shape, **attrs):
    node = helper.make_node(op, ["x", value_name], ["y"], name="n", **attrs)
    return model([node], [vi("x", [3, 4]), vi(value_name, value_shape, TensorProto.INT64)],
                 [vi("y", None)]).SerializeToString()


RUNTIME_VALUES = {  # shape-giving inputs fed at run time: checked when the value arrives
    "Gather index out of range": ("Gather", "i", [2], np.array([0, 99]), [0, 2]),
    "Gather negative index out of range": ("Gather", "i", [2], np.array([-99, 0]), [1, 0]),
    "Reshape count mismatch": ("Reshape", "s", [2], np.array([5, 5]), [4, 3]),
    "Reshape overflow": ("Reshape", "s", [2], np.array([1 << 62, 0]), [2, 6]),
    "Expand enormous": ("Expand", "s", [3], np.array([1 << 20, 1 << 20, 4]), [2, 3, 4]),
    "Tile negative": ("Tile", "s", [2], np.array([-1, 2]), [2, 1]),
}


@pytest.mark.parametrize("case", sorted(RUNTIME_VALUES))
def test_bad_runtime_shape_values_are_input_errors(case):
    op, name, shape, bad, good = RUNTIME_VALUES[case]
    data = _value_input_model(op, name, shape)
    sess = ember.load(data)
    ref = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    with pytest.raises(InputError, match="'n'"):
        sess.run(None, {"x": x, name: bad})
    feeds = {"x": x, name: np.array(good, np.int64)}
    np.testing.assert_array_equal(sess.run(None, feeds)[0], ref.run(None, feeds)[0])


# ---- memory cap: refused before allocating ----------------------------------------------------
@pytest.mark.parametrize("entry", ["load", "backend"])
def test_tiny_memory_cap_refused(entry):
    data = conv().SerializeToString()
    load = ember.load if entry == "load" else ember.backend.prepare
    with pytest.raises(ModelError, match="memory cap"):
        load(data, memory_cap=64)


# ---- external data: what tests/test_importer.py does not cover ---------------------------------
def _external(tmp_path, location, offset=None, length=None):
    w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[2])
    w.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", offset), ("length", length)):
        if v is not None:
            e = w.external_data.add()
            e.key, e.value = k, str(v)
    m = model([helper.make_node("Add", ["x", "w"], ["y"], name="add")], [vi("x", [2])],
              [vi("y", [2])], [w])
    path = tmp_path / "m.onnx"
    path.write_bytes(m.SerializeToString())
    return path, m


@pytest.mark.parametrize("entry", ["load", "backend"])
@pytest.mark.parametrize("how", ["symlink", "missing", "bytes", "bad offset", "short",
                                 "directory", "empty"])
def test_external_data_refused(tmp_path, how, entry):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.bin").write_bytes(np.ones(2, np.float32).tobytes())
    folder = tmp_path / "model"
    folder.mkdir()
    loc, offset, length = "w.bin", None, None
    (folder / "w.bin").write_bytes(np.ones(2, np.float32).tobytes())
    if how == "symlink":
        os.symlink(outside / "secret.bin", folder / "link.bin")
        loc = "link.bin"
    elif how == "missing":
        loc = "nothing.bin"
    elif how == "bad offset":
        offset = "-8"
    elif how == "short":
        length = 64
    elif how == "directory":
        os.mkdir(folder / "sub")
        loc = "sub"
    elif how == "empty":
        loc = ""
    path, m = _external(folder, loc, offset, length)
    src = m.SerializeToString() if how == "bytes" else str(path)
    load = ember.load if entry == "load" else ember.backend.prepare
    with pytest.raises(ModelError, match="'w'"):
        load(src)


@pytest.mark.parametrize("entry", ["load", "backend"])
@pytest.mark.parametrize("kind", ["fifo", "device", "symlink to a directory", "symlink to a fifo"])
def test_external_data_that_is_not_a_regular_file_refused(tmp_path, kind, entry):
    """Refused before any read: a FIFO would block the load (here a writer holds it open with
    the declared 8 bytes queued, so reading it would succeed), a device never ends."""
    folder = tmp_path / "model"
    folder.mkdir()
    fifo = folder / "pipe"
    os.mkfifo(fifo)
    writer = os.open(fifo, os.O_RDWR)
    try:
        os.write(writer, np.ones(2, np.float32).tobytes())
        if kind == "fifo":
            loc = "pipe"
        elif kind == "device":
            loc = "zero"
            try:
                os.mknod(folder / loc, 0o600 | stat.S_IFCHR, os.makedev(1, 5))  # /dev/zero
            except (PermissionError, AttributeError):
                pytest.skip("this process may not create device nodes")
        elif kind == "symlink to a directory":
            (folder / "sub").mkdir()
            os.symlink(folder / "sub", folder / "link")
            loc = "link"
        else:
            os.symlink(fifo, folder / "link")
            loc = "link"
        path, _ = _external(folder, loc, length=8)
        load = ember.load if entry == "load" else ember.backend.prepare
        with pytest.raises(ModelError, match="'w'.*not a regular file"):
            load(str(path))
    finally:
        os.close(writer)


@pytest.mark.parametrize("axis", [2**62, -2**62, -2**31, 4, -5])
def test_legacy_broadcast_absurd_axis_refused_without_allocating(axis):
    """Opset 6 Add with ``broadcast=1`` and an axis far outside the first input's rank: the
    upgrade would reshape B to rank ~axis (4 GB of shape tuple from a 120-byte file)."""
    node = helper.make_node("Add", ["x", "b"], ["y"], name="add", broadcast=1, axis=axis)
    data = model([node], [vi("x", [2, 3, 4, 5])], [vi("y", None)],
                 [const("b", np.ones(3, np.float32))], opset=6, ir_version=3).SerializeToString()
    tracemalloc.start()
    try:
        with pytest.raises(ModelError, match="'add'.*'axis'"):
            ember.load(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20


NAN = float("nan")
# (opset, op type, attributes, the attribute named in the error): each upgrade path fed an
# attribute of the wrong kind (a list for an int, a string, a float for ints) or a NaN
UPGRADE_ATTRS = {
    "softmax axis list": (11, "Softmax", {"axis": [1]}, "axis"),
    "softmax axis string": (11, "Softmax", {"axis": "1"}, "axis"),
    "logsoftmax axis float": (12, "LogSoftmax", {"axis": 1.5}, "axis"),
    "clip min string": (6, "Clip", {"min": "low"}, "min"),
    "clip max nan": (6, "Clip", {"max": NAN}, "max"),
    "clip min list": (10, "Clip", {"min": [0.0]}, "min"),
    "pad pads floats": (2, "Pad", {"pads": [0.5] * 6}, "pads"),
    "pad paddings string": (1, "Pad", {"paddings": "all"}, "paddings"),
    "pad value nan": (10, "Pad", {"pads": [0] * 6, "value": NAN}, "value"),
    "pad value string": (10, "Pad", {"pads": [0] * 6, "value": "zero"}, "value"),
    "upsample scales nan": (7, "Upsample", {"scales": [1.0, NAN, 2.0]}, "scales"),
    "upsample scales zero": (7, "Upsample", {"scales": [1.0, 0.0, 2.0]}, "scales"),
    "upsample scales string": (7, "Upsample", {"scales": "2"}, "scales"),
    "upsample mode int": (7, "Upsample", {"scales": [1.0, 1.0, 2.0], "mode": 1}, "mode"),
    "upsample-1 height inf": (1, "Upsample", {"height_scale": float("inf")}, "height_scale"),
    "upsample-1 width list": (1, "Upsample", {"width_scale": [2.0]}, "width_scale"),
    "split split floats": (11, "Split", {"split": [1.0, 2.0]}, "split"),
    "split split string": (12, "Split", {"split": "1,2"}, "split"),
    "slice starts floats": (9, "Slice", {"starts": [0.5], "ends": [2]}, "starts"),
    "slice ends string": (9, "Slice", {"starts": [0], "ends": "end"}, "ends"),
    "slice axes nan": (9, "Slice", {"starts": [0], "ends": [2], "axes": [NAN]}, "axes"),
    "dropout ratio nan": (10, "Dropout", {"ratio": NAN}, "ratio"),
    "dropout ratio string": (11, "Dropout", {"ratio": "half"}, "ratio"),
    "squeeze axes floats": (11, "Squeeze", {"axes": [0.0]}, "axes"),
    "unsqueeze axes string": (12, "Unsqueeze", {"axes": "0"}, "axes"),
    "reducesum axes nan": (11, "ReduceSum", {"axes": [NAN]}, "axes"),
    "reducemean axes int": (17, "ReduceMean", {"axes": "1"}, "axes"),
    "reshape shape floats": (4, "Reshape", {"shape": [3.0, 8.0]}, "shape"),
    "add axis list": (6, "Add", {"broadcast": 1, "axis": [1]}, "axis"),
    "mul axis float": (6, "Mul", {"broadcast": 1, "axis": 1.0}, "axis"),
    "cast to list": (9, "Cast", {"to": [1]}, "to"),
    "cast to nan": (9, "Cast", {"to": NAN}, "to"),
    "constant value_int float": (13, "Constant", {"value_int": 1.5}, "value_int"),
    "constant value_ints strings": (13, "Constant", {"value_ints": ["a"]}, "value_ints"),
    "constant value_float string": (13, "Constant", {"value_float": "x"}, "value_float"),
    "constant value_floats int": (13, "Constant", {"value_floats": 2}, "value_floats"),
}


@pytest.mark.parametrize("case", sorted(UPGRADE_ATTRS))
def test_upgrade_attribute_of_the_wrong_kind_is_a_model_error(case):
    opset, op, attrs, bad = UPGRADE_ATTRS[case]
    inputs = [] if op == "Constant" else ["x", "b"] if op in ("Add", "Mul") else ["x"]
    node = helper.make_node(op, inputs, ["y"], name="n", **attrs)
    inits = [const("b", np.ones(3, np.float32))] if "b" in inputs else []
    x = [vi("x", [2, 3, 4])] if inputs else []
    data = model([node], x, [vi("y", None)], inits, opset=opset, ir_version=3).SerializeToString()
    with pytest.raises(ModelError, match=f"'n'.*'{bad}'"):
        ember.load(data)


# ---- run-time feeds -----------------------------------------------------------------------------
def conv_relu_bytes():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    m = model([helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
               helper.make_node("Relu", ["c"], ["y"], name="relu")],
              [vi("x", [2, 3, 5, 5])], [vi("y", [2, 4, 5, 5])], [const("w", w), const("b", b)])
    return m.SerializeToString()


@pytest.fixture(scope="module")
def conv_bytes():
    return conv_relu_bytes()


@pytest.fixture(scope="module")
def ort_sess(conv_bytes):
    return ort.InferenceSession(conv_bytes, providers=["CPUExecutionProvider"])


def _x(seed):
    return np.random.default_rng(seed).standard_normal((2, 3, 5, 5)).astype(np.float32)


def _check(sess, ort_sess, seed=11):
    x = _x(seed)
    (y,) = sess.run(None, {"x": x})
    np.testing.assert_allclose(y, ort_sess.run(None, {"x": x})[0], rtol=RTOL, atol=ATOL)


BAD_FEEDS = {  # beyond tests/test_session.py: odd Python objects, scalars, object arrays
    "list of lists": lambda: {"x": _x(0).tolist()},
    "python scalar": lambda: {"x": 1.0},
    "None": lambda: {"x": None},
    "string": lambda: {"x": "hello"},
    "0-d array": lambda: {"x": np.float32(1.0)},
    "object array": lambda: {"x": np.empty((2, 3, 5, 5), dtype=object)},
    "complex": lambda: {"x": _x(0).astype(np.complex64)},
    "int32": lambda: {"x": _x(0).astype(np.int32)},
    "float16": lambda: {"x": _x(0).astype(np.float16)},
    "rank 5": lambda: {"x": _x(0)[None]},
    "empty batch": lambda: {"x": np.zeros((0, 3, 5, 5), np.float32)},
    "transposed shape": lambda: {"x": np.ascontiguousarray(_x(0).transpose(0, 1, 3, 2))
                                 .reshape(2, 3, 5, 5)[:, :, :, :4]},
    "non-string key": lambda: {0: _x(0)},
    "wrong name": lambda: {"X": _x(0)},
}


@pytest.mark.parametrize("case", sorted(BAD_FEEDS))
def test_bad_feed_is_input_error_and_session_survives(conv_bytes, ort_sess, case):
    sess = ember.load(conv_bytes)
    _check(sess, ort_sess)
    feeds = BAD_FEEDS[case]()
    if case == "list of lists":
        # onnxruntime refuses lists too; ember may accept a float32-convertible nested list
        try:
            (y,) = sess.run(None, feeds)
        except InputError as e:
            assert "'x'" in str(e)
        else:
            np.testing.assert_allclose(y, ort_sess.run(None, {"x": _x(0)})[0],
                                       rtol=RTOL, atol=ATOL)
    else:
        with pytest.raises(InputError) as exc:
            sess.run(None, feeds)
        msg = str(exc.value)
        assert "'x'" in msg or "'X'" in msg or "0" in msg, msg
    _check(sess, ort_sess)


def test_bad_feeds_through_backend(conv_bytes, ort_sess):
    rep = ember.backend.prepare(onnx.load_from_string(conv_bytes))
    for bad in ([], [_x(0), _x(1)], [_x(0)[0]], [_x(0).astype(np.float64)]):
        with pytest.raises(InputError):
            rep.run(bad)
    x = _x(4)
    np.testing.assert_allclose(rep.run([x])[0], ort_sess.run(None, {"x": x})[0],
                               rtol=RTOL, atol=ATOL)


def _nan_models():
    """Small models whose NaN/Inf behaviour is compared with onnxruntime's."""
    rng = np.random.default_rng(8)
    w = const("w", rng.standard_normal((4, 3, 3, 3)).astype(np.float32))
    x = [vi("x", [2, 3, 5, 5])]
    conv_node = helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1])
    return {
        "conv": model([conv_node], x, [vi("c", [2, 4, 5, 5])], [w]),
        "conv_relu": conv_relu_bytes(),
        "relu": model([helper.make_node("Relu", ["x"], ["y"], name="relu")], x,
                      [vi("y", [2, 3, 5, 5])]),
        "maxpool": model([helper.make_node("MaxPool", ["x"], ["y"], name="pool",
                                           kernel_shape=[2, 2])], x, [vi("y", None)]),
        "conv_pool_gemm": model(
            [conv_node, helper.make_node("GlobalAveragePool", ["c"], ["p"], name="gap"),
             helper.make_node("Flatten", ["p"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "g"], ["y"], name="gemm", transB=1)],
            x, [vi("y", [2, 2])],
            [w, const("g", rng.standard_normal((2, 4)).astype(np.float32))]),
    }


NAN_MODELS = _nan_models()


@pytest.mark.parametrize("name", sorted(NAN_MODELS))
def test_nan_and_inf_propagate_like_onnxruntime(name):
    data = _bytes(NAN_MODELS[name])
    sess = ember.load(data)
    ref = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    x = _x(5)
    x[0, 0, 1, 1] = np.nan
    x[0, 1, 3, 3] = np.inf
    x[1, 2, 0, 4] = -np.inf
    x[1, 0, 2, 2] = np.finfo(np.float32).max
    (y,) = sess.run(None, {"x": x})
    (ry,) = ref.run(None, {"x": x})
    # where onnxruntime gives NaN/±Inf ember must give the same; elsewhere the usual tolerance
    if name == "maxpool":
        # onnxruntime's MaxPool keeps NaN only when it is the first element of a window
        # (``if (v > max)``); ember's max lets any NaN in the window through, as numpy does.
        # ONNX leaves this unspecified: require ember's NaNs to cover onnxruntime's.
        assert np.isnan(y)[np.isnan(ry)].all()
        finite = np.isfinite(ry) & np.isfinite(y)
    else:
        np.testing.assert_array_equal(np.isnan(y), np.isnan(ry))
        finite = np.isfinite(ry)
    np.testing.assert_array_equal(np.isposinf(y), np.isposinf(ry))
    np.testing.assert_array_equal(np.isneginf(y), np.isneginf(ry))
    np.testing.assert_allclose(y[finite], ry[finite], rtol=RTOL, atol=ATOL)
    x = _x(6)  # a NaN run leaves no residue in the arena
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], ref.run(None, {"x": x})[0],
                               rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("layout", ["strided", "fortran", "big-endian", "negative strides",
                                    "readonly", "broadcast view", "unaligned"])
def test_unusual_feed_layouts_are_correct(conv_bytes, ort_sess, layout):
    sess = ember.load(conv_bytes)
    x = _x(6)
    if layout == "strided":
        feed = np.repeat(x, 2, axis=3)[..., ::2]
    elif layout == "fortran":
        feed = np.asfortranarray(x)
    elif layout == "big-endian":
        feed = x.astype(">f4")
    elif layout == "negative strides":
        feed = x[:, :, ::-1, ::-1].copy()[:, :, ::-1, ::-1]
    elif layout == "readonly":
        feed = x.copy()
        feed.flags.writeable = False
    elif layout == "broadcast view":
        x = np.broadcast_to(x[:1], x.shape)
        feed = x
    else:
        buf = np.empty(x.nbytes + 1, np.uint8)
        feed = np.frombuffer(buf[1:].data, np.float32).reshape(x.shape)
        feed[...] = x
    (y,) = sess.run(None, {"x": feed})
    np.testing.assert_allclose(y, ort_sess.run(None, {"x": np.ascontiguousarray(x)})[0],
                               rtol=RTOL, atol=ATOL)
    _check(sess, ort_sess)


# ---- work without a bound: constant folding's budget, the numpy references' limit -----------
def _constant_conv(side):
    """ConstantOfShape → X and W of ones (1, 1, side, side) → Conv: a tiny file whose Conv
    output is one number but whose numpy reference steps through side² kernel taps."""
    shape = const("shape", np.array([1, 1, side, side], np.int64))
    one = helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["x"], name="x_ones", value=one),
             helper.make_node("ConstantOfShape", ["shape"], ["w"], name="w_ones", value=one),
             helper.make_node("Conv", ["x", "w"], ["y"], name="conv")]
    return _bytes(model(nodes, [], [vi("y", None)], [shape]))


def test_costly_constant_conv_is_left_to_its_kernel():
    from ember.graph.cost import FOLD_BUDGET, node_work
    data = _constant_conv(1024)
    assert len(data) < 300
    sess = ember.load(data)
    compiled = sess.compile()
    (conv,) = compiled.graph.nodes            # the cheap ConstantOfShapes folded, not the Conv
    assert conv.op_type == "Conv"
    assert node_work(conv, compiled.graph.types) > FOLD_BUDGET
    (y,) = sess.run(None, {})
    assert y.shape == (1, 1, 1, 1) and y.item() == 1024 * 1024


def test_cheap_constant_conv_still_folds():
    from ember.graph.cost import FOLD_BUDGET, node_work
    from ember.graph.infer import infer_shapes
    sess = ember.load(_constant_conv(8))
    graph = sess.graph.copy()
    infer_shapes(graph, fold=False)
    (conv,) = [n for n in graph.nodes if n.op_type == "Conv"]
    assert node_work(conv, graph.types) <= FOLD_BUDGET
    assert sess.compile().graph.nodes == []
    assert sess.run(None, {})[0].item() == 64


def test_numpy_reference_of_enormous_work_is_refused():
    """float64 MaxPool (no kernel: the numpy reference runs) with a 2^20 window over 8 values,
    two outputs: one Python step per tap would take seconds per run."""
    k = 1 << 20
    node = helper.make_node("MaxPool", ["x"], ["y"], name="huge_pool", kernel_shape=[k],
                            pads=[k - 4, k - 4], strides=[k])
    data = _bytes(model([node], [vi("x", [1, 1, 8], TensorProto.DOUBLE)],
                        [vi("y", None, TensorProto.DOUBLE)]))
    with pytest.raises(ModelError, match=r"huge_pool.*element operations.*more than"):
        ember.load(data)                      # binding the plan while loading, not at run
    # the same op with a small window still runs as its reference
    small = helper.make_node("MaxPool", ["x"], ["y"], name="pool", kernel_shape=[3])
    sess = ember.load(_bytes(model([small], [vi("x", [1, 1, 8], TensorProto.DOUBLE)],
                                   [vi("y", None, TensorProto.DOUBLE)])))
    x = np.arange(8.0).reshape(1, 1, 8)
    np.testing.assert_array_equal(sess.run(None, {"x": x})[0], x[..., 2:])


def test_shape_from_a_costly_constant_is_a_shape_error_naming_it():
    """A Reshape target computed by a Conv too costly to fold cannot be known while loading."""
    one = helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["x"], value=one),
             helper.make_node("Conv", ["x", "x"], ["c"], name="costly_conv"),
             helper.make_node("Cast", ["c"], ["ci"], to=TensorProto.INT64),
             helper.make_node("Reshape", ["ci", "minus_one"], ["s"], name="flat"),
             helper.make_node("Reshape", ["d", "s"], ["r"], name="reshape")]
    data = _bytes(model(nodes, [vi("d", [1 << 20])], [vi("r", None)],
                        [const("shape", np.array([1, 1, 1024, 1024], np.int64)),
                         const("minus_one", np.array([1], np.int64))]))
    with pytest.raises(ember.ShapeError, match=r"reshape.*costly_conv.*too costly"):
        ember.load(data)
