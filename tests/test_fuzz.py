"""Fuzz harness: mutated models must load and run, or fail with an ``ember.EmberError``.

Starting from valid models (lenet5, the fusion-pattern models, and single-node Conv / pooling /
Gemm / Reshape / Slice / Concat models), hypothesis (a) mutates the serialized bytes — bit
flips, truncation, insertion, splicing — and (b) mutates protobuf fields — dims, attribute
values and types, initializer dims and data length, node input/output names, opset, op_type.
Each result goes through ``ember.load`` and, if it loads, ``run`` with a random feed of the
declared shapes. Any exception other than an EmberError fails the test.

Seeded (``derandomize=True``) so a run is reproducible. ``EMBER_FUZZ_EXAMPLES=N`` runs N
examples per test instead of the default (chosen so this file takes well under 60 s).
``EMBER_FUZZ_SAVE=dir`` writes every crashing input there; crashes found that way live in
``tests/fuzz_regressions/`` and are replayed by ``test_regression``. A segfault would kill
pytest itself, so longer campaigns are run in a subprocess:
``EMBER_FUZZ_EXAMPLES=3000 EMBER_FUZZ_SAVE=/tmp/crash python -m pytest tests/test_fuzz.py``.
"""
from __future__ import annotations

import hashlib
import os
import pathlib
import sys

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import ember

sys.path.insert(0, os.path.dirname(__file__))
from models import PATTERNS, lenet5, pattern_model  # noqa: E402

EXAMPLES = int(os.environ.get("EMBER_FUZZ_EXAMPLES", "0")) or None
# EMBER_FUZZ_SEED=k explores a different (still reproducible) stream of examples than the
# default fixed one, for campaigns run several times.
FUZZ_SEED = os.environ.get("EMBER_FUZZ_SEED")
REGRESSIONS = pathlib.Path(__file__).parent / "fuzz_regressions"
MEMORY_CAP = 64 << 20        # keeps a mutated 1e12-element tensor from ever being allocated
MAX_FEED_ELEMENTS = 1 << 20  # a declared input larger than this is not fed (the load is tested)


# ---- seed models ------------------------------------------------------------------------------
def _single(op, x_shape, inits=(), out=None, extra_inputs=(), **attrs):
    node = helper.make_node(op, ["x"] + [n for n, _ in inits] + list(extra_inputs), ["y"],
                            name=f"{op.lower()}_node", **attrs)
    g = helper.make_graph([node], op, [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                     x_shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, out)],
                          [numpy_helper.from_array(np.asarray(a), n) for n, a in inits])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _split_model():
    m = _single("Split", [4, 6], [("sp", np.array([2, 4], np.int64))], axis=1)
    m.graph.node[0].output.append("z")
    m.graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, None))
    return m


def _seeds() -> dict:
    rng = np.random.default_rng(0)
    f32 = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    i64 = lambda *v: np.array(v, np.int64)  # noqa: E731
    seeds = {"lenet5": lenet5()}
    seeds.update({p: pattern_model(p) for p in PATTERNS})
    seeds.update({
        "conv": _single("Conv", [1, 3, 7, 7], [("w", f32(4, 3, 3, 3)), ("b", f32(4))],
                        kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], group=1),
        "conv_group": _single("Conv", [1, 4, 6, 6], [("w", f32(4, 2, 3, 3))], group=2,
                              dilations=[2, 2], auto_pad="SAME_UPPER"),
        "maxpool": _single("MaxPool", [1, 2, 7, 7], kernel_shape=[3, 3], strides=[2, 2],
                           pads=[1, 1, 1, 1], ceil_mode=1),
        "avgpool": _single("AveragePool", [1, 2, 6, 6], kernel_shape=[2, 2], strides=[2, 2],
                           count_include_pad=1),
        "gemm": _single("Gemm", [2, 5], [("w", f32(3, 5)), ("b", f32(3))], transB=1,
                        alpha=0.5, beta=2.0),
        "reshape": _single("Reshape", [2, 3, 4], [("s", i64(0, -1, 2))]),
        "slice": _single("Slice", [4, 6], [("st", i64(1, -5)), ("en", i64(3, 100)),
                                           ("ax", i64(0, 1)), ("sp", i64(1, 2))]),
        "concat": _single("Concat", [2, 3], [("c", f32(2, 4))], axis=1),
        "transpose": _single("Transpose", [2, 3, 4], perm=[2, 0, 1]),
        "pad": _single("Pad", [1, 2, 3, 3], [("p", i64(0, 0, 1, 2, 0, 0, 2, 1))],
                       mode="reflect"),
        "resize": _single("Resize", [1, 1, 3, 4], [("roi", np.zeros(0, np.float32)),
                                                   ("sc", np.array([1, 1, 2, 1.5], np.float32))],
                          mode="linear"),
        "gather": _single("Gather", [5, 3], [("i", i64(4, 0, -1))], axis=0),
        "split": _split_model(),
        "dynamic_conv": _single("Conv", ["N", 3, "H", "W"], [("w", f32(2, 3, 3, 3))],
                                pads=[1, 1, 1, 1]),
    })
    return seeds


SEEDS = _seeds()
SEED_BYTES = {k: m.SerializeToString() for k, m in SEEDS.items()}
SEED_NAMES = sorted(SEEDS)


# ---- the property -----------------------------------------------------------------------------
def _np_dtype(info):
    """IOInfo.type as onnxruntime spells it ("tensor(float)") or a numpy dtype."""
    t = info.type
    if isinstance(t, str) and t.startswith("tensor("):
        name = t[7:-1]
        return np.dtype({"float": "float32", "double": "float64", "float16": "float16",
                         "bool": "bool"}.get(name, name))
    return np.dtype(t)


def fuzz_settings(default_examples: int):
    """Fixed-seed hypothesis settings: the default stream, or EMBER_FUZZ_SEED's."""
    conf = settings(derandomize=FUZZ_SEED is None, max_examples=EXAMPLES or default_examples,
                    deadline=None, database=None, suppress_health_check=list(HealthCheck))

    def wrap(test):
        test = conf(test)
        return seed(int(FUZZ_SEED))(test) if FUZZ_SEED is not None else test
    return wrap


def load_and_run(data: bytes) -> None:
    """The fuzzing property: success or an EmberError, nothing else."""
    try:
        sess = ember.load(data, threads=1, memory_cap=MEMORY_CAP)
        rng = np.random.default_rng(0)
        feeds = {}
        for info in sess.get_inputs():
            shape = [d if isinstance(d, int) and d >= 0 else 1 for d in info.shape]
            if int(np.prod(shape, dtype=object)) > MAX_FEED_ELEMENTS:
                return
            feeds[info.name] = (rng.standard_normal(shape) * 3).astype(_np_dtype(info))
        sess.run(None, feeds)
        sess.run(None, feeds)  # a second run through the same plan
    except ember.EmberError as e:
        assert str(e), "an EmberError without a message"
    except BaseException:
        save = os.environ.get("EMBER_FUZZ_SAVE")
        if save:
            os.makedirs(save, exist_ok=True)
            digest = hashlib.sha1(data).hexdigest()[:12]
            pathlib.Path(save, f"crash_{digest}.onnx").write_bytes(data)
        raise


# ---- (a) byte mutations -----------------------------------------------------------------------
@st.composite
def mutated_bytes(draw):
    seed = draw(st.sampled_from(SEED_NAMES))
    data = bytearray(SEED_BYTES[seed])
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "byte", "truncate", "insert", "delete", "splice"]))
        n = len(data)
        if n == 0:
            break
        pos = draw(st.integers(0, n - 1))
        if kind == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "byte":
            data[pos] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF, draw(st.integers(0, 255))]))
        elif kind == "truncate":
            del data[pos:]
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[pos:pos + draw(st.integers(1, 16))]
        else:
            other = SEED_BYTES[draw(st.sampled_from(SEED_NAMES))]
            a = draw(st.integers(0, len(other) - 1))
            data[pos:pos + draw(st.integers(0, 64))] = other[a:a + draw(st.integers(1, 64))]
    return bytes(data)


@fuzz_settings(400)
@given(mutated_bytes())
def test_byte_mutations(data):
    load_and_run(data)


# ---- (b) protobuf field mutations -------------------------------------------------------------
INTS = [0, 1, -1, 2, 3, 5, -2, 7, 64, 1 << 31, 1 << 40, 10 ** 12, (1 << 63) - 1, -(1 << 63)]
ATTR_NAMES = ["strides", "kernel_shape", "pads", "dilations", "group", "axis", "transA",
              "transB", "alpha", "beta", "auto_pad", "ceil_mode", "epsilon", "perm", "to",
              "count_include_pad", "allowzero", "keepdims", "mode", "value"]
OP_TYPES = ["Conv", "MaxPool", "AveragePool", "Gemm", "MatMul", "Reshape", "Slice", "Concat",
            "Relu", "Add", "Mul", "Flatten", "Transpose", "Gather", "Softmax", "Clip",
            "BatchNormalization", "GlobalAveragePool", "Squeeze", "Unsqueeze", "Expand",
            "ConstantOfShape", "Shape", "Cast", "Pad", "Resize", "Split", "ReduceMean", "Tile",
            "Identity", "Sigmoid", "Where", "Range", "NoSuchOp"]


def _value_infos(m):
    return list(m.graph.input) + list(m.graph.output)


def _names(m):
    names = {i.name for i in m.graph.initializer} | {v.name for v in _value_infos(m)}
    for n in m.graph.node:
        names.update(n.input)
        names.update(n.output)
    return sorted(names) + ["", "ghost"]


def _mutate_dim(m, draw):
    vis = [v for v in _value_infos(m) if v.type.tensor_type.shape.dim]
    if not vis:
        return
    v = draw(st.sampled_from(vis))
    dims = v.type.tensor_type.shape.dim
    d = dims[draw(st.integers(0, len(dims) - 1))]
    choice = draw(st.sampled_from(["value", "param", "drop", "add"]))
    if choice == "value":
        d.dim_value = draw(st.sampled_from(INTS))
    elif choice == "param":
        d.dim_param = "N"
    elif choice == "drop":
        del dims[-1]
    else:
        dims.add().dim_value = draw(st.sampled_from(INTS[:8]))


def _mutate_attribute(m, draw):
    nodes = list(m.graph.node)
    node = draw(st.sampled_from(nodes))
    A = onnx.AttributeProto
    if node.attribute and draw(st.booleans()):
        a = draw(st.sampled_from(list(node.attribute)))
    else:
        a = node.attribute.add()
        a.name = draw(st.sampled_from(ATTR_NAMES))
        a.type = A.INT
    kind = draw(st.sampled_from(["int", "ints", "float", "floats", "string", "type", "empty",
                                 "tensor"]))
    if kind == "int":
        a.i = draw(st.sampled_from(INTS))
        a.type = A.INT
    elif kind == "ints":
        del a.ints[:]
        a.ints.extend(draw(st.lists(st.sampled_from(INTS), max_size=6)))
        a.type = A.INTS
    elif kind == "float":
        a.f = draw(st.sampled_from([0.0, -1.0, 1.5, float("nan"), float("inf"), 1e30]))
        a.type = A.FLOAT
    elif kind == "floats":
        del a.floats[:]
        a.floats.extend(draw(st.lists(st.sampled_from([0.0, 1.5, -2.0, float("nan")]),
                                      max_size=4)))
        a.type = A.FLOATS
    elif kind == "string":
        a.s = draw(st.sampled_from([b"", b"VALID", b"SAME_LOWER", b"\xff\xfe", b"3x3"]))
        a.type = A.STRING
    elif kind == "type":
        a.type = draw(st.sampled_from(list(A.AttributeType.values())))
    elif kind == "empty":
        del a.ints[:]
        a.type = A.INTS
    else:
        a.t.CopyFrom(numpy_helper.from_array(np.array(draw(st.sampled_from(INTS[:8])),
                                                      np.int64)))
        a.type = A.TENSOR


def _mutate_initializer(m, draw):
    if not m.graph.initializer:
        return
    t = draw(st.sampled_from(list(m.graph.initializer)))
    kind = draw(st.sampled_from(["dim", "add_dim", "drop_dim", "raw_short", "raw_long",
                                 "dtype", "values"]))
    if kind == "dim" and t.dims:
        t.dims[draw(st.integers(0, len(t.dims) - 1))] = draw(st.sampled_from(INTS))
    elif kind == "add_dim":
        t.dims.append(draw(st.sampled_from(INTS[:8])))
    elif kind == "drop_dim" and t.dims:
        del t.dims[-1]
    elif kind == "raw_short" and t.raw_data:
        t.raw_data = t.raw_data[:draw(st.integers(0, len(t.raw_data) - 1))]
    elif kind == "raw_long":
        t.raw_data = bytes(t.raw_data) + b"\0" * draw(st.integers(1, 9))
    elif kind == "dtype":
        t.data_type = draw(st.sampled_from(list(TensorProto.DataType.values())))
    elif kind == "values" and len(t.raw_data) >= 8 and t.data_type == TensorProto.INT64:
        vals = np.frombuffer(t.raw_data[:len(t.raw_data) // 8 * 8], np.int64).copy()
        vals[draw(st.integers(0, vals.size - 1))] = draw(st.sampled_from(INTS))
        t.raw_data = vals.tobytes()
    elif kind == "values" and len(t.raw_data) >= 4 and t.data_type == TensorProto.FLOAT:
        vals = np.frombuffer(t.raw_data[:len(t.raw_data) // 4 * 4], np.float32).copy()
        vals[draw(st.integers(0, vals.size - 1))] = draw(st.sampled_from(
            [np.nan, np.inf, -np.inf, 0.0, 1e38]))
        t.raw_data = vals.tobytes()


def _mutate_names(m, draw):
    node = draw(st.sampled_from(list(m.graph.node)))
    names = _names(m)
    field = node.input if (draw(st.booleans()) or not node.output) else node.output
    kind = draw(st.sampled_from(["rename", "append", "drop"]))
    if kind == "rename" and field:
        field[draw(st.integers(0, len(field) - 1))] = draw(st.sampled_from(names))
    elif kind == "append":
        field.append(draw(st.sampled_from(names)))
    elif kind == "drop" and field:
        del field[-1]


def _mutate_graph(m, draw):
    kind = draw(st.sampled_from(["opset", "op_type", "delete_node", "duplicate_node",
                                 "swap_nodes", "domain", "ir_version", "drop_output"]))
    nodes = m.graph.node
    if kind == "opset":
        m.opset_import[0].version = draw(st.sampled_from([-1, 0, 1, 5, 6, 7, 9, 10, 11, 12,
                                                          13, 18, 21, 99]))
    elif kind == "op_type":
        draw(st.sampled_from(list(nodes))).op_type = draw(st.sampled_from(OP_TYPES))
    elif kind == "delete_node" and len(nodes) > 1:
        del nodes[draw(st.integers(0, len(nodes) - 1))]
    elif kind == "duplicate_node":
        nodes.add().CopyFrom(draw(st.sampled_from(list(nodes))))
    elif kind == "swap_nodes" and len(nodes) > 1:
        i, j = draw(st.integers(0, len(nodes) - 1)), draw(st.integers(0, len(nodes) - 1))
        a, b = onnx.NodeProto(), onnx.NodeProto()
        a.CopyFrom(nodes[i])
        b.CopyFrom(nodes[j])
        nodes[i].CopyFrom(b)
        nodes[j].CopyFrom(a)
    elif kind == "domain":
        draw(st.sampled_from(list(nodes))).domain = draw(st.sampled_from(["ai.onnx", "com.x"]))
    elif kind == "ir_version":
        m.ir_version = draw(st.sampled_from([0, 1, 3, 4, 99]))
    elif kind == "drop_output" and m.graph.output:
        del m.graph.output[-1]


MUTATORS = [_mutate_dim, _mutate_attribute, _mutate_initializer, _mutate_names, _mutate_graph]


@st.composite
def mutated_models(draw):
    m = onnx.ModelProto()
    m.CopyFrom(SEEDS[draw(st.sampled_from(SEED_NAMES))])
    for _ in range(draw(st.integers(1, 5))):
        draw(st.sampled_from(MUTATORS))(m, draw)
    return m.SerializeToString()


@fuzz_settings(1200)
@given(mutated_models())
def test_field_mutations(data):
    load_and_run(data)


# ---- the seeds themselves, and the crashes found so far ---------------------------------------
@pytest.mark.parametrize("name", SEED_NAMES)
def test_seed_models_run(name):
    sess = ember.load(SEED_BYTES[name], threads=1)
    assert sess.get_inputs()


@pytest.mark.parametrize("path", sorted(REGRESSIONS.glob("*.onnx")), ids=lambda p: p.name)
def test_regression(path):
    load_and_run(path.read_bytes())


# ---- (c) feed mutations: bad feeds are InputErrors and leave the Session correct ---------------
FEED_DTYPES = ["float32", "float64", "float16", "int64", "int32", "uint8", "bool", ">f4",
               "complex64", "object"]


@st.composite
def mutated_feeds(draw):
    shape = draw(st.lists(st.sampled_from([0, 1, 2, 3, 5, 7]), min_size=0, max_size=5))
    if draw(st.booleans()):
        shape = [1, 3, draw(st.sampled_from([1, 3, 7])), draw(st.sampled_from([1, 3, 7]))]
    dtype = draw(st.sampled_from(FEED_DTYPES))
    layout = draw(st.sampled_from(["c", "fortran", "strided", "scalar", "list", "none"]))
    name = draw(st.sampled_from(["x", "x", "x", "y", "", "X"]))
    return name, shape, dtype, layout


def _make_feed(shape, dtype, layout, rng):
    if layout == "none":
        return None
    if layout == "scalar":
        return 1.5
    x = rng.standard_normal(shape).astype(np.float32)
    if layout == "list":
        return x.tolist()
    x = x.astype(dtype) if dtype != "object" else x.astype(object)
    if layout == "fortran":
        return np.asfortranarray(x)
    if layout == "strided" and x.ndim:
        return np.repeat(x, 2, axis=-1)[..., ::2]
    return x


@pytest.fixture(scope="module")
def dynamic_conv():
    import onnxruntime as ort
    data = SEED_BYTES["dynamic_conv"]
    return ember.load(data, threads=1), ort.InferenceSession(
        data, providers=["CPUExecutionProvider"])


@fuzz_settings(150)
@given(mutated_feeds())
def test_feed_mutations(dynamic_conv, feed):
    sess, ref = dynamic_conv
    name, shape, dtype, layout = feed
    rng = np.random.default_rng(1)
    value = _make_feed(shape, dtype, layout, rng)
    try:
        sess.run(None, {name: value})
    except ember.InputError as e:
        assert str(e)
    except ember.EmberError as e:  # e.g. a spatial size the 3×3 kernel cannot cover
        assert str(e)
    x = rng.standard_normal((1, 3, 4, 5)).astype(np.float32)
    (y,) = sess.run(None, {"x": x})
    np.testing.assert_allclose(y, ref.run(None, {"x": x})[0], rtol=1e-5, atol=1e-5)
