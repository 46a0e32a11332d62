"""Fuzz harness: mutated models must load and run, or fail with an ``ember.EmberError``.

Starting from valid models (lenet5, the fusion-pattern models, and single-node Conv / pooling /
Gemm / Reshape / Slice / Concat models), hypothesis (a) mutates the serialized bytes — bit
flips, truncation, insertion, splicing — and (b) mutates protobuf fields — dims, attribute
values and types, initializer dims and data length, node input/output names, opset, op_type.
Each result goes through ``ember.load`` and, if it loads, ``run`` with a random feed of the
declared shapes. Any exception other than an EmberError fails the test. Further, (d) the
attributes of one ONNX conformance model per op are mutated knowing what they are (extreme
integers, wrong types, geometry near 2^31) and (e) real checkpoints are forged and re-signed;
those run in a child process with a memory limit and a timeout (a crash, a hang or memory
without bound is a finding, not the end of pytest), and a model ember runs must agree with
onnxruntime (or, where onnxruntime departs from it, the ONNX reference).

Seeded (``derandomize=True``) so a run is reproducible. ``EMBER_FUZZ_EXAMPLES=N`` runs N
examples per test instead of the default (chosen so this file takes well under 60 s).
``EMBER_FUZZ_SAVE=dir`` writes every crashing input there; crashes found that way live in
``tests/fuzz_regressions/`` (see its README, which also gives the coverage-guided atheris
command) and are replayed by ``test_regression`` and ``test_checkpoint_regression``:
``EMBER_FUZZ_EXAMPLES=3000 EMBER_FUZZ_SAVE=/tmp/crash python -m pytest tests/test_fuzz.py``.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import pathlib
import struct
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
def test_regression(child, path):
    assert_no_finding(child, "model", path.read_bytes())


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


# ---- (d) structure-aware attribute mutations of every op's conformance models ----------------
# Each mutation knows what an attribute is: it replaces a value by an extreme integer, a whole
# geometry list by values near 2^31, or the attribute by one of another type (a float, a
# string, a list, a tensor where an int is expected). Mutators take ``pick(sequence)``, so the
# hypothesis tests here and the coverage-guided run (tools/fuzz_atheris.py) share them.
B31 = 1 << 31
EXTREME_INTS = [0, 1, -1, 2, B31 - 1, B31, -B31, (1 << 63) - 1, -(1 << 63), B31 - 2, 1 << 30,
                46341]          # 46341^2 > 2^31: a product of two "small" sizes overflows
NEAR_2_31 = [B31 - 1, B31 - 2, B31 - 3, 1 << 30, (1 << 30) + 1, 46341, 65536]
HOSTILE_FLOATS = [float("nan"), float("inf"), -float("inf"), 1e38, -0.0, 1.5, 2.0 ** 31]


def _geometry(a, pick):
    """An INTS attribute as a kernel/stride/pad/dilation list of values near 2^31."""
    n = max(len(a.ints), 1)
    values = [pick(NEAR_2_31 + [1, 0]) for _ in range(n)]
    del a.ints[:]
    a.ints.extend(values)
    a.type = onnx.AttributeProto.INTS


def _retype(a, pick):
    """The attribute replaced by one of another type, keeping its name."""
    A = onnx.AttributeProto
    kind = pick(["float", "floats", "string", "strings", "ints", "int", "tensor", "tensor2d",
                 "empty_ints", "long_ints"])
    for field in ("ints", "floats", "strings"):
        del getattr(a, field)[:]
    a.ClearField("t")
    if kind == "float":
        a.f, a.type = pick(HOSTILE_FLOATS), A.FLOAT
    elif kind == "floats":
        a.floats.extend([pick(HOSTILE_FLOATS), 1.0])
        a.type = A.FLOATS
    elif kind == "string":
        a.s, a.type = pick([b"", b"1", b"NOTSET", b"\xff\xfe", b"VALID" * 64]), A.STRING
    elif kind == "strings":
        a.strings.extend([b"a", b"b"])
        a.type = A.STRINGS
    elif kind == "ints":
        a.ints.extend([pick(EXTREME_INTS), pick(EXTREME_INTS)])
        a.type = A.INTS
    elif kind == "int":
        a.i, a.type = pick(EXTREME_INTS), A.INT
    elif kind in ("tensor", "tensor2d"):
        shape = (2, 2) if kind == "tensor2d" else ()
        dtype = pick([np.int64, np.float32, np.int32, np.bool_])
        a.t.CopyFrom(numpy_helper.from_array(np.full(shape, pick([0, 1, -1, 7]), dtype)))
        a.type = A.TENSOR
    elif kind == "empty_ints":
        a.type = A.INTS
    else:   # more entries than any tensor has dims
        a.ints.extend([1] * pick([9, 65, 200]))
        a.type = A.INTS


def _extreme(a, pick):
    A = onnx.AttributeProto
    if a.type == A.INTS and a.ints:
        a.ints[pick(range(len(a.ints)))] = pick(EXTREME_INTS)
    elif a.type == A.FLOAT:
        a.f = pick(HOSTILE_FLOATS)
    elif a.type == A.FLOATS and a.floats:
        a.floats[pick(range(len(a.floats)))] = pick(HOSTILE_FLOATS)
    else:
        a.ClearField("t")
        a.i, a.type = pick(EXTREME_INTS), A.INT


def _schema_attributes(node, opset) -> list:
    """The attribute names ONNX defines for ``node``'s op (none for an unknown op)."""
    try:
        return sorted(onnx.defs.get_schema(node.op_type, opset, node.domain).attributes)
    except Exception:   # onnx.defs.SchemaError: an op or opset onnx does not know
        return []


ATTRIBUTE_MUTATIONS = {"extreme": _extreme, "geometry": _geometry, "retype": _retype}


def mutate_attributes(model: onnx.ModelProto, pick) -> bytes:
    """``model`` (not modified) with 1-3 of its nodes' attributes mutated: existing ones, or
    ones its op's schema defines but the model leaves at their defaults; or one removed."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    opset = max([o.version for o in m.opset_import if o.domain in ("", "ai.onnx")] or [1])
    for _ in range(pick([1, 1, 2, 3])):
        node = m.graph.node[pick(range(len(m.graph.node)))]
        names = sorted({a.name for a in node.attribute} | set(_schema_attributes(node, opset)))
        if not names:
            continue
        name = pick(names)
        found = [a for a in node.attribute if a.name == name]
        if found and pick([False, False, False, True]):
            node.attribute.remove(found[0])
            continue
        a = found[0] if found else node.attribute.add()
        if not found:
            a.name, a.type = name, onnx.AttributeProto.INT
        ATTRIBUTE_MUTATIONS[pick(sorted(ATTRIBUTE_MUTATIONS))](a, pick)
    return m.SerializeToString()


def conformance_seeds() -> dict:
    """op -> (case name, model, feeds): one ONNX backend conformance model per op ember
    supports (the case with the most attributes set; ties by name), collected as
    test_onnx_conformance collects them, with its first data set's inputs."""
    from test_onnx_conformance import CASES
    best = {}
    for case in sorted(CASES, key=lambda c: c.name):
        nodes = case.model.graph.node
        if len(nodes) != 1 or not case.data_sets:
            continue
        op = nodes[0].op_type
        score = len(nodes[0].attribute)
        if op not in best or score > best[op][0]:
            best[op] = (score, case)
    return {op: (case.name, case.model,
                 {i.name: np.asarray(a) for i, a in zip(case.model.graph.input,
                                                        case.data_sets[0][0])})
            for op, (_, case) in best.items()}


# ---- the child: every mutated input runs in a process with a memory limit and a timeout ------
CHILD_MEMORY = 3 << 30     # RLIMIT_AS of the child: an unbounded allocation fails, not the host
CHILD_TIMEOUT = 60         # seconds per input (the machine is shared): beyond it, a hang
_LEN4 = struct.Struct("<I")


def run_model(data: bytes, feeds: dict | None = None, ran=lambda: None) -> str:
    """The property for one model: "ok" (ran, and agrees with onnxruntime when onnxruntime
    runs it too), "refused" (an EmberError), or a finding's description; a foreign exception
    propagates. ``feeds`` (the conformance case's inputs) are used where the declared inputs
    still take them. ``ran()`` is called once ember is done, before the oracle runs."""
    try:
        sess = ember.load(data, threads=1, memory_cap=MEMORY_CAP)
        rng = np.random.default_rng(0)
        arrays = {}
        for info in sess.get_inputs():
            given = (feeds or {}).get(info.name)
            if given is not None and given.dtype == _np_dtype(info) and all(
                    not isinstance(d, int) or d == s for d, s in zip(info.shape, given.shape)) \
                    and len(info.shape) == given.ndim:
                arrays[info.name] = given
                continue
            shape = [d if isinstance(d, int) and d >= 0 else 1 for d in info.shape]
            if int(np.prod(shape, dtype=object)) > MAX_FEED_ELEMENTS:
                return "refused"
            arrays[info.name] = (rng.standard_normal(shape) * 3).astype(_np_dtype(info))
        outputs = sess.run(None, arrays)
    except ember.EmberError as e:
        return "refused" if str(e) else "an EmberError without a message"
    ran()
    return _agrees_with_onnxruntime(data, arrays, outputs)


def _agrees_with_onnxruntime(data, feeds, outputs) -> str:
    """"ok" unless ember's outputs differ from onnxruntime's and from the ONNX reference's
    (the spec: where the two oracles disagree, e.g. on a non-finite epsilon, ember follows
    the spec)."""
    import onnxruntime as ort
    try:
        expected = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)
    except Exception:   # onnxruntime refuses what ember runs: no oracle for this input
        return "ok"
    differs = _difference(outputs, expected, "onnxruntime")
    if differs is None:
        return "ok"
    try:
        from onnx.reference import ReferenceEvaluator
        spec = ReferenceEvaluator(onnx.load_from_string(data)).run(None, feeds)
    except Exception:
        return differs
    return "ok" if _difference(outputs, spec, "the reference") is None else differs


def _difference(outputs, expected, oracle: str):
    for i, (got, want) in enumerate(zip(outputs, expected)):
        want = np.asarray(want)
        if got.shape != want.shape:
            return f"wrong answer: output {i} has shape {got.shape}, {oracle}'s {want.shape}"
        if want.dtype.kind in "fc" and got.size:
            if not np.allclose(got, want, rtol=1e-3, atol=1e-4, equal_nan=True):
                return f"wrong answer: output {i} differs from {oracle}'s"
        elif not np.array_equal(got, want):
            return f"wrong answer: output {i} differs from {oracle}'s"
    return None


def run_checkpoint(data: bytes, ran=lambda: None) -> str:
    """The property for one checkpoint: restore, then a training step and a prediction with
    the restored Trainer; "ok", "refused" or a finding (a foreign exception propagates)."""
    import tempfile
    with tempfile.TemporaryDirectory() as folder:
        path = pathlib.Path(folder, "forged.ember")
        path.write_bytes(data)
        try:
            t = ember.Trainer.restore(path, threads=1, memory_cap=MEMORY_CAP)
            shape = (2,) + t.input_shape
            if int(np.prod(shape, dtype=object)) > MAX_FEED_ELEMENTS:
                return "refused"
            x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
            t.train_step(x, np.zeros(2, np.int64))
            t.predict(x)
        except ember.EmberError as e:
            return "refused" if str(e) else "an EmberError without a message"
    ran()
    return "ok"


_ANSWERS = []   # the child's answer channel: the original stdout (see serve)


def _reply(message: str) -> None:
    out = _ANSWERS[0]
    out.write(_LEN4.pack(len(message.encode())) + message.encode())
    out.flush()


def serve() -> None:
    """The child's loop: read (kind, payload) messages from stdin, answer each. A foreign
    exception is answered as a finding; a crash or a hang is seen by the parent."""
    import pickle
    import resource
    import traceback
    resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY, CHILD_MEMORY))
    # answers go out on a copy of stdout; anything else printed (by Python or C) to stderr
    _ANSWERS.append(os.fdopen(os.dup(1), "wb"))
    os.dup2(2, 1)
    inp = sys.stdin.buffer
    while True:
        head = inp.read(_LEN4.size)
        if len(head) < _LEN4.size:
            return
        kind, payload, feeds = pickle.loads(inp.read(_LEN4.unpack(head)[0]))
        try:
            # after "ember ok", what runs is the oracle: a crash there is onnxruntime's
            ran = lambda: _reply("ember ok")  # noqa: E731
            outcome = run_model(payload, feeds, ran) if kind == "model" else \
                run_checkpoint(payload, ran)
        except BaseException as e:   # the finding: anything but an EmberError
            outcome = f"{type(e).__name__}: {e!s:.300}\n{traceback.format_exc()[-1500:]}"
        _reply(outcome)


class Child:
    """A ``serve()`` process, restarted after each crash or hang. It runs in tests/, not the
    checkout root, whose ember/ folder would shadow the installed package."""

    def __init__(self):
        self.proc = None

    def _start(self):
        import subprocess
        tests = pathlib.Path(__file__).parent
        self.proc = subprocess.Popen([sys.executable, str(tests / "test_fuzz.py"), "--serve"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=tests)

    def _read(self, timeout):
        import select
        buf = b""
        fd = self.proc.stdout.fileno()
        for size in (_LEN4.size, None):
            want = size if size else _LEN4.unpack(buf)[0]
            got = b""
            while len(got) < want:
                if not select.select([fd], [], [], timeout)[0]:
                    return "timeout"
                chunk = os.read(fd, want - len(got))
                if not chunk:
                    return None
                got += chunk
            buf = got
        return buf.decode()

    def _stop(self):
        self.proc.kill()
        self.proc.wait()
        self.proc = None

    def check(self, kind: str, payload: bytes, feeds=None) -> str:
        """The outcome of one input: "ok", "refused" or a finding."""
        import pickle
        if self.proc is None:
            self._start()
        message = pickle.dumps((kind, payload, feeds))
        self.proc.stdin.write(_LEN4.pack(len(message)) + message)
        self.proc.stdin.flush()
        first = self._read(CHILD_TIMEOUT)
        if first in (None, "timeout"):
            code = self.proc.poll()
            self._stop()
            return (f"the child hung for more than {CHILD_TIMEOUT} s" if first else
                    f"the child crashed (exit status {code})")
        if first != "ember ok":
            return first
        second = self._read(CHILD_TIMEOUT)
        if second in (None, "timeout"):   # the oracle crashed or hung: no verdict
            self._stop()
            return "ok"
        return second

    def close(self):
        if self.proc is not None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
            self.proc = None


def save_finding(kind: str, data: bytes, outcome: str) -> None:
    save = os.environ.get("EMBER_FUZZ_SAVE")
    if save:
        os.makedirs(save, exist_ok=True)
        suffix = ".onnx" if kind == "model" else ".ember"
        name = f"{kind}_{hashlib.sha1(data).hexdigest()[:12]}"
        pathlib.Path(save, name + suffix).write_bytes(data)
        pathlib.Path(save, name + ".txt").write_text(outcome)


def assert_no_finding(child: Child, kind: str, data: bytes, feeds=None) -> None:
    outcome = child.check(kind, data, feeds)
    if outcome not in ("ok", "refused"):
        save_finding(kind, data, outcome)
        pytest.fail(f"{kind} finding: {outcome}")


@pytest.fixture(scope="module")
def child():
    c = Child()
    yield c
    c.close()


@pytest.fixture(scope="module")
def conformance():
    seeds = conformance_seeds()
    return sorted(seeds), seeds


def _picker(draw):
    return lambda seq: draw(st.sampled_from(list(seq)))


@fuzz_settings(600)
@given(data=st.data())
def test_conformance_attribute_mutations(child, conformance, data):
    ops, seeds = conformance
    pick = _picker(data.draw)
    _, model, feeds = seeds[pick(ops)]
    assert_no_finding(child, "model", mutate_attributes(model, pick), feeds)


def test_every_supported_op_seeds_the_fuzzer(conformance):
    """Every op ember supports that has a single-node conformance case is a seed."""
    from test_onnx_conformance import OP_SET
    ops, _ = conformance
    assert len(ops) > 0.8 * len(OP_SET), sorted(OP_SET - set(ops))


# ---- (e) forged checkpoints: structure-aware mutations of a real one, re-signed ----------------
NEST = "\u0000nest"   # stands for a deeply nested list, written into the JSON text directly
HOSTILE_JSON = [0, -1, B31, 1 << 63, 1 << 64, 10 ** 30, -(1 << 63), 1.5, float("nan"),
                float("inf"), -float("inf"), "", "x", None, True, [], {}, [1, 2], [[1]],
                {"__array__": 0}, {"__array__": 10 ** 6}, {"__tuple__": [1]}, {"__graph__": {}},
                {"__type__": ["float32", [-1]]}, {"__dict__": [[[1], 2]]}, NEST]
GEOMETRY_ATTRS = ["strides", "pads", "kernel_shape", "dilations", "group", "axis"]


def _slots(obj) -> list:
    """Every (container, key) inside ``obj``, depth first."""
    items = obj.items() if isinstance(obj, dict) else \
        enumerate(obj) if isinstance(obj, list) else ()
    out = []
    for k, v in items:
        out.append((obj, k))
        out.extend(_slots(v))
    return out


def _graph_geometry(h, pick):
    try:
        nodes = [n["attrs"] for n in h["state"]["graph"]["__graph__"]["nodes"]]
    except (TypeError, KeyError):   # an earlier mutation replaced the graph: nothing to mutate
        return
    attrs = nodes[pick(range(len(nodes)))] if nodes else None
    if not isinstance(attrs, dict):
        return
    name = pick(GEOMETRY_ATTRS)
    old = attrs.get(name)
    n = len(old) if isinstance(old, list) and old else pick([1, 2, 4])
    attrs[name] = pick([pick(EXTREME_INTS), [pick(NEAR_2_31 + [1, 0, -1]) for _ in range(n)]])


def _replace_value(h, pick):
    region = pick(["config", "optimizer", "scheduler", "rng", "graph", "history", "params",
                   "global_step", "trainable", None])
    root = h["state"] if region is None else h["state"].get(region)
    slots = _slots(root) or [(h["state"], region)]
    container, key = slots[pick(range(len(slots)))]
    value = copy.deepcopy(pick(HOSTILE_JSON + ["array_ref"]))   # never shared: no cycles
    if value == "array_ref":   # another stored array: a wrong shape or dtype for this slot
        value = {"__array__": pick(range(len(h["arrays"])))}
    container[key] = value


def _array_table(h, pick):
    entry = h["arrays"][pick(range(len(h["arrays"])))]
    i = pick(range(4))
    entry[i] = pick([["float64", "int64", "bool", "object"], [[], [0], [1 << 40], [-1]],
                     [0, 1, 1 << 62], [0, 4]][i])


CHECKPOINT_MUTATIONS = [_replace_value, _replace_value, _graph_geometry, _array_table]


def mutate_checkpoint(header: dict, payload: bytes, pick) -> bytes:
    """A re-signed checkpoint: ``header`` (not modified) with 1-3 structure-aware mutations."""
    from test_checkpoint import forge
    h = copy.deepcopy(header)
    for _ in range(pick([1, 1, 2, 3])):
        pick(CHECKPOINT_MUTATIONS)(h, pick)
    depth = pick([50, 101, 5000, 200000])
    text = json.dumps(h).replace(json.dumps(NEST), "[" * depth + "]" * depth)
    return forge(text.encode(), payload)


def seed_checkpoint(folder) -> tuple:
    """(header, payload) of a small real checkpoint: Conv, BatchNorm, MaxPool, Linear; Adam
    state after two steps; a StepLR schedule."""
    from test_checkpoint import split
    X = np.random.default_rng(0).standard_normal((4, 1, 6, 6)).astype(np.float32)
    m = ember.nn.Sequential(ember.nn.Conv2d(1, 2, 3, padding=1), ember.nn.BatchNorm2d(2),
                            ember.nn.ReLU(), ember.nn.MaxPool2d(2), ember.nn.Flatten(),
                            ember.nn.Linear(18, 3))
    t = ember.Trainer(m, input_shape=(1, 6, 6), batch_size=2, threads=1,
                      scheduler=ember.optim.lr_scheduler.StepLR(step_size=1))
    t.fit(X, np.arange(4) % 3, epochs=1, verbose=False)
    path = pathlib.Path(folder, "seed.ember")
    t.save(path)
    return split(path.read_bytes())


@pytest.fixture(scope="module")
def checkpoint_seed(tmp_path_factory):
    return seed_checkpoint(tmp_path_factory.mktemp("fuzz"))


@fuzz_settings(200)
@given(data=st.data())
def test_checkpoint_mutations(child, checkpoint_seed, data):
    header, payload = checkpoint_seed
    assert_no_finding(child, "checkpoint", mutate_checkpoint(header, payload,
                                                             _picker(data.draw)))


@pytest.mark.parametrize("path", sorted(REGRESSIONS.glob("*.ember")), ids=lambda p: p.name)
def test_checkpoint_regression(child, path):
    assert_no_finding(child, "checkpoint", path.read_bytes())


if __name__ == "__main__" and sys.argv[1:] == ["--serve"]:
    serve()
