"""The ONNX wire reader (importers/onnx_wire.py) against onnx's own protobuf parser.

Oracle: ``onnx.ModelProto.FromString`` / ``onnx.TensorProto.FromString`` and
``onnx.numpy_helper.to_array``. Every model in tests/models.py, every model file ONNX ships for
its backend tests and every generated node-test model is decoded by both and compared field by
field; hand-made wire bytes (written here with a tiny encoder, not the reader's) cover packed
and unpacked repeated fields, merged messages, oneofs, negative varints and hostile input.
"""
from __future__ import annotations

import glob
import math
import os
import struct
import sys
import tracemalloc
import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import ember
from ember.importers import onnx_wire
from ember.importers.onnx import _tensor_to_array, load_onnx

sys.path.insert(0, os.path.dirname(__file__))
import models  # noqa: E402

DATA_ROOT = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data")
SHIPPED_MODELS = sorted(glob.glob(os.path.join(DATA_ROOT, "**", "*.onnx"), recursive=True))
SHIPPED_TENSORS = sorted(glob.glob(os.path.join(DATA_ROOT, "**", "*.pb"), recursive=True))


# ---- a tiny protobuf encoder, independent of the reader ------------------------------------------
def enc_varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def key(field: int, wire: int) -> bytes:
    return enc_varint(field << 3 | wire)


def ld(field: int, payload: bytes) -> bytes:
    return key(field, 2) + enc_varint(len(payload)) + payload


def vi(field: int, value: int) -> bytes:
    return key(field, 0) + enc_varint(value)


def f32(field: int, x: float) -> bytes:
    return key(field, 5) + struct.pack("<f", x)


def f64(field: int, x: float) -> bytes:
    return key(field, 1) + struct.pack("<d", x)


def packed_varints(field: int, values) -> bytes:
    return ld(field, b"".join(enc_varint(v) for v in values))


# ---- field-by-field comparison with onnx's parser ----------------------------------------------
def _same_floats(mine, theirs, dtype) -> bool:
    return np.asarray(mine, dtype).tobytes() == np.asarray(list(theirs), dtype).tobytes()


def check_entries(mine, theirs, where):
    assert [(e.key, e.value) for e in mine] == [(e.key, e.value) for e in theirs], where


def check_tensor(m, p: TensorProto, where: str):
    assert m.dims == list(p.dims), where
    assert m.data_type == p.data_type, where
    assert m.name == p.name, where
    assert (m.raw_data is not None) == p.HasField("raw_data"), where
    if m.raw_data is not None:
        assert bytes(m.raw_data) == p.raw_data, where
    assert _same_floats(m.float_data, p.float_data, "<f4"), where
    assert _same_floats(m.double_data, p.double_data, "<f8"), where
    assert m.int32_data.tolist() == list(p.int32_data), where
    assert m.int64_data.tolist() == list(p.int64_data), where
    assert m.uint64_data.tolist() == list(p.uint64_data), where
    assert m.string_data == list(p.string_data), where
    check_entries(m.external_data, p.external_data, where)
    assert m.data_location == p.data_location, where


def check_sparse(m, p, where):
    check_tensor(m.values, p.values, where + ".values")
    check_tensor(m.indices, p.indices, where + ".indices")
    assert m.dims == list(p.dims), where


def check_value_info(m, p, where):
    assert m.name == p.name, where
    assert (m.type is not None) == p.HasField("type"), where
    if m.type is None:
        return
    assert m.type.kind == p.type.WhichOneof("value"), where
    if m.type.kind != "tensor_type":
        assert m.type.tensor_type is None, where
        return
    mt, pt = m.type.tensor_type, p.type.tensor_type
    assert mt.elem_type == pt.elem_type, where
    assert (mt.shape is not None) == pt.HasField("shape"), where
    if mt.shape is not None:
        assert len(mt.shape) == len(pt.shape.dim), where
        for md, pd in zip(mt.shape, pt.shape.dim):
            which = pd.WhichOneof("value")
            assert md.dim_value == (pd.dim_value if which == "dim_value" else None), where
            assert md.dim_param == (pd.dim_param if which == "dim_param" else None), where


def check_attribute(m, p, where):
    where = f"{where} attribute {p.name!r}"
    assert (m.name, m.ref_attr_name, m.type) == (p.name, p.ref_attr_name, p.type), where
    assert struct.pack("<f", m.f) == struct.pack("<f", p.f), where
    assert (m.i, m.s) == (p.i, p.s), where
    assert (m.t is not None) == p.HasField("t"), where
    if m.t is not None:
        check_tensor(m.t, p.t, where + ".t")
    assert (m.g is not None) == p.HasField("g"), where
    assert (m.sparse_tensor is not None) == p.HasField("sparse_tensor"), where
    if m.sparse_tensor is not None:
        check_sparse(m.sparse_tensor, p.sparse_tensor, where)
    assert _same_floats(m.floats, p.floats, "<f4"), where
    assert m.ints == list(p.ints), where
    assert m.strings == list(p.strings), where
    assert len(m.tensors) == len(p.tensors), where
    for mt, pt in zip(m.tensors, p.tensors):
        check_tensor(mt, pt, where + ".tensors")
    assert len(m.graphs) == len(p.graphs), where
    assert len(m.sparse_tensors) == len(p.sparse_tensors), where
    for ms, ps in zip(m.sparse_tensors, p.sparse_tensors):
        check_sparse(ms, ps, where + ".sparse_tensors")
    assert m.has_tp == p.HasField("tp"), where
    assert m.type_protos == len(p.type_protos), where


def check_model(m, p: onnx.ModelProto, where: str = "model"):
    assert (m.ir_version, m.model_version) == (p.ir_version, p.model_version), where
    assert (m.producer_name, m.producer_version, m.domain) == \
        (p.producer_name, p.producer_version, p.domain), where
    assert [(o.domain, o.version) for o in m.opset_import] == \
        [(o.domain, o.version) for o in p.opset_import], where
    check_entries(m.metadata_props, p.metadata_props, where)
    g, pg = m.graph, p.graph
    assert g.name == pg.name, where
    assert len(g.node) == len(pg.node), where
    for k, (mn, pn) in enumerate(zip(g.node, pg.node)):
        w = f"{where} node {k} ({pn.op_type})"
        assert (mn.input, mn.output) == (list(pn.input), list(pn.output)), w
        assert (mn.name, mn.op_type, mn.domain) == (pn.name, pn.op_type, pn.domain), w
        assert len(mn.attribute) == len(pn.attribute), w
        for ma, pa in zip(mn.attribute, pn.attribute):
            check_attribute(ma, pa, w)
    for mine, theirs, what in ((g.initializer, pg.initializer, "initializer"),):
        assert len(mine) == len(theirs), where
        for mt, pt in zip(mine, theirs):
            check_tensor(mt, pt, f"{where} {what} {pt.name!r}")
    assert len(g.sparse_initializer) == len(pg.sparse_initializer), where
    for ms, ps in zip(g.sparse_initializer, pg.sparse_initializer):
        check_sparse(ms, ps, f"{where} sparse initializer")
    for field in ("input", "output", "value_info"):
        mine, theirs = getattr(g, field), getattr(pg, field)
        assert len(mine) == len(theirs), f"{where} {field}"
        for mv, pv in zip(mine, theirs):
            check_value_info(mv, pv, f"{where} {field} {pv.name!r}")


def check_arrays_match_numpy_helper(model: onnx.ModelProto, decoded, folder=None):
    """Every tensor the importer would convert (initializers, tensor attributes) gives the
    array numpy_helper gives, same dtype and shape, for the dtypes ember supports."""
    pairs = list(zip(decoded.graph.initializer, model.graph.initializer))
    for mn, pn in zip(decoded.graph.node, model.graph.node):
        pairs += [(ma.t, pa.t) for ma, pa in zip(mn.attribute, pn.attribute)
                  if pa.type == onnx.AttributeProto.TENSOR]
    checked = 0
    for mt, pt in pairs:
        try:
            got = _tensor_to_array(mt, folder, pt.name)
        except ember.ModelError:
            continue  # an unsupported dtype: refused by both paths alike (tested elsewhere)
        want = numpy_helper.to_array(pt)
        assert got.dtype == want.dtype and got.shape == want.shape, pt.name
        assert got.tobytes() == want.tobytes(), pt.name
        checked += 1
    return checked


# ---- 1. same fields as onnx's parser, on real models --------------------------------------------
@pytest.mark.parametrize("name", sorted(models.ALL_MODELS))
def test_test_models_match_onnx_parser(name):
    model = models.ALL_MODELS[name](batch="N" if name == "lenet5" else 1, seed=3)
    data = model.SerializeToString()
    decoded = onnx_wire.parse_model(data)
    check_model(decoded, onnx.ModelProto.FromString(data), name)
    assert check_arrays_match_numpy_helper(model, decoded) == len(model.graph.initializer)


@pytest.mark.parametrize("name", sorted(models.ALL_MODELS))
def test_imported_graph_matches_onnx_parser(name):
    """The imported Graph, built from the reader, holds what onnx's parser reads: every node's
    op, inputs, outputs and attributes, every initializer's values, every input's type."""
    model = models.ALL_MODELS[name](batch=1, seed=4)
    graph = load_onnx(model.SerializeToString())
    by_name = {n.name: n for n in graph.nodes}
    assert len(by_name) == len(model.graph.node)
    for pn in model.graph.node:
        node = by_name[pn.name]
        assert (node.op_type, node.inputs, node.outputs) == \
            (pn.op_type, list(pn.input), list(pn.output))
        for pa in pn.attribute:
            want = helper.get_attribute_value(pa)
            got = node.attrs[pa.name]
            if isinstance(want, bytes):
                want = want.decode()
            if isinstance(want, TensorProto):
                np.testing.assert_array_equal(got, numpy_helper.to_array(want))
            else:
                assert got == want, (pn.name, pa.name)
    for init in model.graph.initializer:
        np.testing.assert_array_equal(graph.initializers[init.name],
                                      numpy_helper.to_array(init))
    for vi in model.graph.input:
        dims = tuple(d.dim_value for d in vi.type.tensor_type.shape.dim)
        assert graph.types[vi.name].shape == dims


@pytest.mark.parametrize("path", SHIPPED_MODELS, ids=lambda p: os.path.relpath(p, DATA_ROOT))
def test_shipped_backend_models_match_onnx_parser(path):
    with open(path, "rb") as f:
        data = f.read()
    model = onnx.ModelProto.FromString(data)
    decoded = onnx_wire.parse_model(data)
    check_model(decoded, model, os.path.basename(path))
    check_arrays_match_numpy_helper(model, decoded)


@pytest.mark.parametrize("path", SHIPPED_TENSORS, ids=lambda p: os.path.relpath(p, DATA_ROOT))
def test_shipped_tensor_files_match_onnx_parser(path):
    with open(path, "rb") as f:
        data = f.read()
    proto = TensorProto.FromString(data)
    if not proto.dims and not proto.data_type:
        pytest.skip("not a TensorProto (a sequence or optional value file)")
    mine = onnx_wire.parse_tensor(data)
    check_tensor(mine, proto, os.path.basename(path))
    try:
        got = _tensor_to_array(mine, None, "t")
    except ember.ModelError:
        return
    want = numpy_helper.to_array(proto)
    assert got.dtype == want.dtype and got.tobytes() == want.tobytes()


def test_every_generated_node_test_model_matches_onnx_parser():
    """All of ONNX's node-test cases (every op, every attribute form, ~1,900 models)."""
    from onnx.backend.test.case.node import collect_testcases
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = collect_testcases(None)
    assert len(cases) > 1000
    failures, arrays = [], 0
    for case in cases:
        data = case.model.SerializeToString()
        try:
            decoded = onnx_wire.parse_model(data)
            check_model(decoded, onnx.ModelProto.FromString(data), case.name)
            arrays += check_arrays_match_numpy_helper(case.model, decoded)
        except (AssertionError, ember.ModelError) as e:
            failures.append(f"{case.name}: {type(e).__name__} {e}")
    assert not failures, "\n".join(failures[:20])
    assert arrays > 300


# ---- 2. hand-made wire forms ------------------------------------------------------------------
def _tensor_bytes_mixed_packing() -> bytes:
    return b"".join([
        vi(1, 2), packed_varints(1, [3]),              # dims: one unpacked, one packed
        vi(2, TensorProto.FLOAT), ld(8, b"t"),
        ld(4, struct.pack("<2f", 1.5, -2.0)),          # float_data packed …
        f32(4, 3.25),                                  # … unpacked …
        ld(4, struct.pack("<3f", 4, 5, float("nan"))),  # … and packed again
    ])


def test_packed_and_unpacked_repeated_fields_mix():
    data = _tensor_bytes_mixed_packing()
    proto = TensorProto.FromString(data)
    mine = onnx_wire.parse_tensor(data)
    check_tensor(mine, proto, "mixed")
    assert mine.dims == [2, 3]
    got = _tensor_to_array(mine, None, "t")
    np.testing.assert_array_equal(got, numpy_helper.to_array(proto))
    assert got.shape == (2, 3) and math.isnan(got[1, 2])

    data = b"".join([vi(2, TensorProto.DOUBLE), vi(1, 4), f64(10, 1.0),
                     ld(10, struct.pack("<2d", 2.0, -0.0)), f64(10, -3.5)])
    proto = TensorProto.FromString(data)
    mine = onnx_wire.parse_tensor(data)
    check_tensor(mine, proto, "doubles")
    assert _tensor_to_array(mine, None, "t").tolist() == [1.0, 2.0, -0.0, -3.5]


@pytest.mark.parametrize("elem", [TensorProto.INT64, TensorProto.INT32, TensorProto.INT8,
                                  TensorProto.UINT64, TensorProto.UINT32, TensorProto.UINT16,
                                  TensorProto.FLOAT16, TensorProto.BOOL, TensorProto.DOUBLE,
                                  TensorProto.FLOAT, TensorProto.UINT8, TensorProto.INT16])
@pytest.mark.parametrize("n, window", [(3, None), (500, None), (500, 13)])
def test_typed_data_fields_every_dtype(elem, n, window, monkeypatch):
    """Values in the typed fields (not raw_data), including negative varints of 10 bytes and
    the extremes of each type, decode as numpy_helper decodes them. Short packed fields decode
    in Python, long ones with numpy a window at a time (13 bytes: varints cross windows)."""
    if window:
        monkeypatch.setattr(onnx_wire, "_WINDOW", window)
    dt = helper.tensor_dtype_to_np_dtype(elem)
    rng = np.random.default_rng(elem * 1000 + n)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        vals = rng.integers(info.min, info.max, n, dtype=dt, endpoint=True)
        vals[:2] = [info.min, info.max]
    elif dt.kind == "b":
        vals = rng.integers(0, 2, n).astype(bool)
    else:
        vals = rng.standard_normal(n).astype(dt)
        vals[:2] = [np.inf, -0.0]
    proto = helper.make_tensor("t", elem, [n], vals, raw=False)
    assert not proto.HasField("raw_data")
    data = proto.SerializeToString()
    mine = onnx_wire.parse_tensor(data)
    check_tensor(mine, TensorProto.FromString(data), "typed")
    got = _tensor_to_array(mine, None, "t")
    want = numpy_helper.to_array(proto)
    assert got.dtype == want.dtype and got.tobytes() == want.tobytes()
    np.testing.assert_array_equal(got, vals)


def test_negative_int64_varints_unpacked_and_packed():
    lo = -(1 << 63)
    data = b"".join([vi(2, TensorProto.INT64), vi(1, 4),
                     vi(7, -1), packed_varints(7, [-5, lo]), vi(7, (1 << 63) - 1)])
    proto = TensorProto.FromString(data)
    mine = onnx_wire.parse_tensor(data)
    check_tensor(mine, proto, "neg")
    assert mine.int64_data.tolist() == [-1, -5, lo, (1 << 63) - 1]
    attr = b"".join([ld(1, b"a"), vi(20, onnx.AttributeProto.INT), vi(3, -7),
                     vi(8, -1), packed_varints(8, [lo, 3])])
    m = onnx_wire._parse_attribute(attr, [(0, len(attr))])
    p = onnx.AttributeProto.FromString(attr)
    check_attribute(m, p, "neg")
    assert (m.i, m.ints) == (-7, [-1, lo, 3])


def _every_attribute_type():
    t = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "t")
    sub = helper.make_graph([helper.make_node("Relu", ["a"], ["b"])], "sub", [], [])
    sp = helper.make_sparse_tensor(numpy_helper.from_array(np.array([1.0, 2.0], np.float32), "v"),
                                   numpy_helper.from_array(np.array([0, 3], np.int64), "i"),
                                   [2, 2])
    tp = helper.make_tensor_type_proto(TensorProto.FLOAT, [1, "N"])
    return [
        helper.make_attribute("f", 0.1), helper.make_attribute("i", -3),
        helper.make_attribute("s", b"\xc3\xa9t\xc3\xa9"), helper.make_attribute("t", t),
        helper.make_attribute("g", sub), helper.make_attribute("floats", [1.0, -0.5, 1e-30]),
        helper.make_attribute("ints", [1, -(1 << 63), 5]),
        helper.make_attribute("strings", [b"a", b"", b"bc"]),
        helper.make_attribute("tensors", [t, t]), helper.make_attribute("graphs", [sub, sub]),
        helper.make_attribute("sparse", sp), helper.make_attribute("sparses", [sp]),
        helper.make_attribute("tp", tp), helper.make_attribute("tps", [tp, tp]),
        helper.make_attribute("empty_ints", [], attr_type=onnx.AttributeProto.INTS),
        helper.make_attribute_ref("ref", onnx.AttributeProto.FLOAT),
    ]


def test_every_attribute_type():
    attrs = _every_attribute_type()
    assert {a.type for a in attrs} >= set(range(1, 15))
    node = helper.make_node("Foo", ["x"], ["y"], name="n", domain="custom")
    node.attribute.extend(attrs)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", 1, [1])],
                          [helper.make_tensor_value_info("y", 1, None)])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17),
                                                helper.make_opsetid("custom", 1)])
    data = model.SerializeToString()
    decoded = onnx_wire.parse_model(data)
    check_model(decoded, onnx.ModelProto.FromString(data))
    a = {x.name: x for x in decoded.graph.node[0].attribute}
    assert a["g"].g is not None and len(a["graphs"].graphs) == 2
    np.testing.assert_array_equal(_tensor_to_array(a["t"].t, None, "t"),
                                  np.arange(6, dtype=np.float32).reshape(2, 3))


def test_repeated_message_occurrences_merge_like_protobuf():
    """A singular message field given twice is merged (repeated fields concatenate, scalars:
    the last wins); a oneof keeps its last member."""
    m = models.lenet5(batch=1, seed=0)
    first, second = onnx.GraphProto(), onnx.GraphProto()
    first.node.extend(m.graph.node[:3])
    first.name = "first"
    second.node.extend(m.graph.node[3:])
    second.initializer.extend(m.graph.initializer)
    second.input.extend(m.graph.input)
    second.output.extend(m.graph.output)
    second.name = "second"
    head = onnx.ModelProto()
    head.CopyFrom(m)
    head.ClearField("graph")
    dim_both = ld(1, vi(1, 5) + ld(2, b"N"))           # dim_value then dim_param: dim_param
    dim_back = ld(1, ld(2, b"M") + vi(1, 7))           # dim_param then dim_value: dim_value
    tensor_type = vi(1, TensorProto.FLOAT) + ld(2, dim_both + dim_back)
    dropped = vi(1, TensorProto.DOUBLE) + ld(2, ld(1, vi(1, 3)))
    # the type: a tensor, then a sequence (another oneof member: the tensor is cleared), then
    # a tensor again in two merged pieces
    vinfo = ld(1, b"extra") + ld(2, ld(1, dropped) + ld(4, b"") + ld(1, b"")
                                 + ld(1, tensor_type))
    data = (head.SerializeToString() + ld(7, first.SerializeToString())
            + ld(7, second.SerializeToString() + ld(13, vinfo)) + vi(1, 9))
    proto = onnx.ModelProto.FromString(data)
    decoded = onnx_wire.parse_model(data)
    check_model(decoded, proto)
    assert decoded.graph.name == "second" and decoded.ir_version == 9
    assert len(decoded.graph.node) == len(m.graph.node)
    dims = decoded.graph.value_info[0].type.tensor_type.shape
    assert [(d.dim_value, d.dim_param) for d in dims] == [(None, "N"), (7, None)]
    assert decoded.graph.value_info[0].type.tensor_type.elem_type == TensorProto.FLOAT


def test_unknown_fields_and_unexpected_wire_types_are_skipped():
    m = models.lenet5(batch=1, seed=0)
    data = (vi(99, 5) + ld(100, b"\xff\xfe junk") + f64(101, 1.0) + f32(102, 2.0)
            + m.SerializeToString() + vi(2, 7) + f32(7, 1.0))  # producer_name, graph: wrong wire
    proto = onnx.ModelProto.FromString(data)
    check_model(onnx_wire.parse_model(data), proto)


# ---- 3. hostile bytes -------------------------------------------------------------------------
def _small_model_bytes() -> bytes:
    w = numpy_helper.from_array(np.arange(18, dtype=np.float32).reshape(2, 1, 3, 3), "w")
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])
    g = helper.make_graph([node], "small", [helper.make_tensor_value_info("x", 1, [1, 1, 4, 4])],
                          [helper.make_tensor_value_info("y", 1, [1, 2, 4, 4])], [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_truncated_at_every_byte_is_a_model_error():
    data = _small_model_bytes()
    assert load_onnx(data).initializers["w"].shape == (2, 1, 3, 3)
    for n in range(len(data)):
        with pytest.raises(ember.ModelError, match="not an ONNX model"):
            load_onnx(data[:n])


def _peak_alloc(fn) -> int:
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


@pytest.mark.parametrize("where", ["top", "nested"])
def test_huge_declared_length_refused_before_allocating(where):
    huge = 1 << 62
    if where == "top":
        data = vi(1, 8) + key(7, 2) + enc_varint(huge) + b"abc"
    else:  # a raw_data inside an initializer inside the graph claims 2^62 bytes
        tensor = vi(2, 1) + key(9, 2) + enc_varint(huge) + b"\0" * 16
        data = vi(1, 8) + ld(8, vi(2, 17)) + ld(7, ld(5, tensor))
    errors = []

    def parse():
        try:
            load_onnx(data)
        except ember.ModelError as e:
            errors.append(str(e))

    assert _peak_alloc(parse) < 1 << 20
    assert errors and "truncated field" in errors[0] and str(huge) in errors[0]


GARBAGE = {
    "varint longer than 10 bytes": vi(1, 8)[:1] + b"\xff" * 10 + b"\x01",
    "wire type 3": vi(1, 8) + key(5, 3) + b"\0",
    "wire type 7": vi(1, 8) + key(5, 7),
    "field number 0": b"\x02\x00",
    "invalid utf-8 name": vi(1, 8) + ld(8, vi(2, 17)) + ld(7, ld(2, b"\xff\xfe")),
    "packed floats not a multiple of 4": vi(1, 8) + ld(8, vi(2, 17))
    + ld(7, ld(5, ld(8, b"w") + vi(2, 1) + ld(4, b"\0" * 5))),
    "truncated packed varints (short)": vi(1, 8) + ld(8, vi(2, 17))
    + ld(7, ld(5, vi(2, 7) + ld(7, b"\x80\x80"))),
    "truncated packed varints (long)": vi(1, 8) + ld(8, vi(2, 17))
    + ld(7, ld(5, vi(2, 7) + ld(7, b"\x01" * 100 + b"\x80"))),
    "overlong varint in a long packed field": vi(1, 8) + ld(8, vi(2, 17))
    + ld(7, ld(5, vi(2, 7) + ld(7, b"\x01" * 100 + b"\xff" * 11 + b"\x01"))),
    "truncated 32-bit float": vi(1, 8) + ld(8, vi(2, 17))
    + ld(7, ld(1, ld(5, ld(1, b"a") + key(2, 5) + b"\0\0"))),
    "random bytes": bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)),
    "empty": b"",
    "a tensor, not a model": numpy_helper.from_array(np.ones(3, np.float32)).SerializeToString(),
}


@pytest.mark.parametrize("case", sorted(GARBAGE))
def test_garbage_is_a_model_error(case):
    with pytest.raises(ember.ModelError, match="not an ONNX model"):
        load_onnx(GARBAGE[case])


def _nested_if(depth: int) -> bytes:
    """A model whose If node nests ``depth`` subgraphs (onnx's parser stops at 100)."""
    graph = ld(1, ld(4, b"Relu") + ld(1, b"a") + ld(2, b"b"))
    for _ in range(depth):
        attr = ld(1, b"then_branch") + vi(20, 5) + ld(6, graph)
        graph = ld(1, ld(1, b"c") + ld(2, b"y") + ld(4, b"If") + ld(5, attr))
    return vi(1, 8) + ld(8, vi(2, 17)) + ld(7, graph)


def _nested_sequence_input(depth: int) -> bytes:
    """A graph input typed sequence(sequence(…(tensor))) ``depth`` deep."""
    typ = ld(1, vi(1, 1))
    for _ in range(depth):
        typ = ld(4, ld(1, typ))
    graph = ld(11, ld(1, b"x") + ld(2, typ)) + ld(1, ld(4, b"Relu") + ld(1, b"x") + ld(2, b"y"))
    return vi(1, 8) + ld(8, vi(2, 17)) + ld(7, graph)


def test_deep_nesting_is_a_model_error_not_a_recursion_error():
    with pytest.raises(ember.ModelError, match="nested more than"):
        load_onnx(_nested_if(3000))
    data = _nested_sequence_input(3000)
    assert onnx_wire.parse_model(data).graph.input[0].type.kind == "sequence_type"
    with pytest.raises(ember.ModelError, match="not a tensor"):
        load_onnx(data)
    with pytest.raises(Exception):  # the oracle's own parser refuses such depth
        onnx.ModelProto.FromString(data)


def test_mutated_bytes_agree_with_onnx_parser_or_are_model_errors():
    """Differential fuzz: whenever both parsers accept mutated bytes they read the same fields;
    the reader's only failure is a ModelError."""
    rng = np.random.default_rng(7)
    seeds = [_small_model_bytes(), models.lenet5(batch=1, seed=0).SerializeToString()[:4000]]
    agreed = 0
    for k in range(600):
        data = bytearray(seeds[k % 2])
        for _ in range(rng.integers(1, 4)):
            pos = int(rng.integers(0, len(data)))
            kind = rng.integers(0, 3)
            if kind == 0:
                data[pos] ^= 1 << int(rng.integers(0, 8))
            elif kind == 1:
                data[pos] = int(rng.choice([0, 1, 0x7F, 0x80, 0xFF]))
            else:
                del data[pos:pos + int(rng.integers(1, 8))]
        data = bytes(data)
        try:
            mine = onnx_wire.parse_model(data)
        except ember.ModelError:
            continue
        try:
            theirs = onnx.ModelProto.FromString(data)
        except Exception:
            continue
        check_model(mine, theirs, f"mutation {k}")
        agreed += 1
    assert agreed > 50


# ---- 4. zero copy, external data, no onnx import -----------------------------------------------
def _root(a):
    while isinstance(a, np.ndarray):
        a = a.base
    return a.obj if isinstance(a, memoryview) else a


def test_initializers_view_the_file_bytes(tmp_path):
    model = models.lenet5(batch=1, seed=0)
    data = model.SerializeToString()
    graph = load_onnx(data)
    big = [a for a in graph.initializers.values() if a.size > 100]
    assert big and all(_root(a) is data for a in big)
    assert all(not a.flags.writeable for a in big)

    path = tmp_path / "m.onnx"
    path.write_bytes(data)
    graph = load_onnx(str(path))
    roots = {id(_root(a)) for a in graph.initializers.values() if a.size > 100}
    assert len(roots) == 1  # one buffer: the file, read once
    root = _root(next(a for a in graph.initializers.values() if a.size > 100))
    assert isinstance(root, bytes) and root == data


def test_external_data_loads_and_views_its_bytes(tmp_path):
    model = models.lenet5(batch=1, seed=0)
    want = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    onnx.save_model(model, str(tmp_path / "m.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="weights.bin", size_threshold=64)
    graph = load_onnx(str(tmp_path / "m.onnx"))
    for name, a in want.items():
        np.testing.assert_array_equal(graph.initializers[name], a)
    big = [graph.initializers[n] for n, a in want.items() if a.nbytes >= 64]
    assert big and all(isinstance(_root(a), bytes) for a in big)
    with pytest.raises(ember.ModelError, match="bytes"):  # external data needs the folder
        load_onnx((tmp_path / "m.onnx").read_bytes())


@pytest.mark.parametrize("location", ["../weights.bin", "/etc/passwd", "sub/../../weights.bin",
                                      "link.bin"])
def test_external_data_outside_the_folder_refused(tmp_path, location):
    inner = tmp_path / "inner"
    inner.mkdir()
    (tmp_path / "weights.bin").write_bytes(np.ones(4, np.float32).tobytes())
    os.symlink(tmp_path / "weights.bin", inner / "link.bin")
    t = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4],
                    data_location=TensorProto.EXTERNAL)
    t.external_data.add(key="location", value=location)
    node = helper.make_node("Add", ["x", "w"], ["y"])
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", 1, [4])],
                          [helper.make_tensor_value_info("y", 1, [4])], [t])
    path = inner / "m.onnx"
    path.write_bytes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
                     .SerializeToString())
    with pytest.raises(ember.ModelError, match="external data location"):
        load_onnx(str(path))


def test_model_proto_input_still_works():
    model = models.lenet5(batch=1, seed=0)
    graph = load_onnx(model)
    for t in model.graph.initializer:
        np.testing.assert_array_equal(graph.initializers[t.name], numpy_helper.to_array(t))
