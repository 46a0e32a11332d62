"""A small, strict reader of the ONNX protobuf wire format, so loading a model needs no ``onnx``.

Why: ``import onnx`` costs 0.1-0.3 s, most of a model's load time, and protobuf copies every
weight. This reader decodes exactly the messages the importer uses (ModelProto, GraphProto,
NodeProto, AttributeProto, TensorProto, SparseTensorProto, ValueInfoProto, TypeProto,
TensorShapeProto, OperatorSetIdProto, StringStringEntryProto) into light objects whose attribute
names are onnx's. ``raw_data`` stays a memoryview of the input and packed float/double data a
numpy view of it: the importer's weights view the file's bytes (no copy). ``parse_model``
decodes a model, ``parse_tensor`` a lone TensorProto (a ``.pb`` tensor file).

Semantics follow protobuf's: fields in any order; unknown fields skipped by wire type; a field of
an unexpected wire type is treated as unknown; a singular message field that occurs twice is
merged (its occurrences are parsed as one concatenated message, which is protobuf's definition of
merging); the last occurrence of a scalar wins; repeated numeric fields may be packed, unpacked or
both. Unlike protobuf, groups (wire types 3 and 4, never used by ONNX) and invalid UTF-8 in
string fields are errors.

Hostile input: every length is checked against what is left of its enclosing message before
anything is allocated, varints longer than 10 bytes are refused, and a bad byte is a
``ModelError`` naming the field and its offset. Recursive messages are never parsed: subgraph
attributes (If branches, Loop/Scan bodies) and non-tensor types (sequences, maps, optionals) are
recorded by kind and span only, so nesting depth is fixed by the schema and a deeply nested file
cannot exhaust the stack; the importer decodes a subgraph on demand (``parse_subgraphs``), one
level at a time, up to its depth limit.
"""
from __future__ import annotations

import struct

import numpy as np

from ..graph.errors import ModelError

_F32 = struct.Struct("<f")
_MASK64 = (1 << 64) - 1
_VARINT_MAX_BYTES = 10
_SMALL_PACKED = 64  # packed varint fields longer than this (bytes) are decoded with numpy
_WINDOW = 1 << 20   # … a window of this many bytes at a time

# wire types
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


# ---- errors -------------------------------------------------------------------------------------
def _bad(what: str, pos: int, why: str):
    return ModelError(f"not an ONNX model: {why} in {what} at byte {pos} (is the file truncated "
                      f"or another format?)")


# ---- primitive decoding -------------------------------------------------------------------------
def _varint(data, pos: int, end: int, what: str):
    """(unsigned value, next position) of the varint at ``pos``, which must end before ``end``."""
    if pos >= end:
        raise _bad(what, pos, "truncated varint")
    b = data[pos]
    if b < 0x80:
        return b, pos + 1
    result, shift, start = b & 0x7F, 7, pos
    pos += 1
    while True:
        if pos >= end:
            raise _bad(what, start, "truncated varint")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result & _MASK64, pos
        shift += 7
        if pos - start >= _VARINT_MAX_BYTES:
            raise _bad(what, start, "varint longer than 10 bytes")


def _int64(u: int) -> int:
    return u - (1 << 64) if u >> 63 else u


def _int32(u: int) -> int:
    u &= 0xFFFFFFFF
    return u - (1 << 32) if u >> 31 else u


def _fields(data, spans, what: str):
    """Yield ``(field number, wire type, value)`` over the fields in ``spans`` (a list of
    ``(start, end)``: the occurrences of one message, merged). ``value`` is the integer of a
    varint, the ``(start, end)`` of a length-delimited field and the position of a fixed field."""
    for start, end in spans:
        pos = start
        while pos < end:
            key_at = pos
            key, pos = _varint(data, pos, end, what)
            number, wire = key >> 3, key & 7
            if number == 0:
                raise _bad(what, key_at, "field number 0")
            if wire == _VARINT:
                value, pos = _varint(data, pos, end, what)
                yield number, wire, value
            elif wire == _LEN:
                length, at = _varint(data, pos, end, what)
                if length > end - at:
                    raise _bad(what, pos, f"truncated field {number}: it declares {length} "
                                          f"bytes, {end - at} are left")
                pos = at + length
                yield number, wire, (at, pos)
            elif wire == _I64:
                if end - pos < 8:
                    raise _bad(what, pos, f"truncated field {number} (64-bit)")
                yield number, wire, pos
                pos += 8
            elif wire == _I32:
                if end - pos < 4:
                    raise _bad(what, pos, f"truncated field {number} (32-bit)")
                yield number, wire, pos
                pos += 4
            else:
                raise _bad(what, key_at, f"field {number} has wire type {wire} (groups and "
                                         f"unknown wire types are not used by ONNX)")


def _string(data, span, what: str) -> str:
    try:
        return bytes(data[span[0]:span[1]]).decode("utf-8")
    except UnicodeDecodeError:
        raise _bad(what, span[0], "a string field that is not valid UTF-8") from None


def _bytes(data, span) -> bytes:
    return bytes(data[span[0]:span[1]])


def _packed_varints(data, span, what: str) -> np.ndarray:
    """The varints of a packed field as uint64 (vectorized for long fields: an int64 tensor),
    in windows so that temporaries stay small next to the output (8 bytes per value, as in
    protobuf)."""
    start, end = span
    n = end - start
    if n <= _SMALL_PACKED:
        out, pos = [], start
        while pos < end:
            v, pos = _varint(data, pos, end, what)
            out.append(v)
        return np.array(out, dtype=np.uint64)
    raw = np.frombuffer(data, dtype=np.uint8, count=n, offset=start)
    if raw[-1] >= 0x80:
        raise _bad(what, start, "truncated packed varints")
    count = sum(int(np.count_nonzero(raw[w:w + _WINDOW] < 0x80))
                for w in range(0, n, _WINDOW))
    out = np.empty(count, dtype=np.uint64)
    done, w = 0, 0
    while w < n:
        chunk = raw[w:w + _WINDOW]
        last = np.flatnonzero(chunk < 0x80)
        if last.size == 0:  # a window without a terminator holds an overlong varint
            raise _bad(what, start + w, "varint longer than 10 bytes")
        chunk = chunk[:last[-1] + 1]
        first = np.empty_like(last)
        first[0] = 0
        first[1:] = last[:-1] + 1
        lengths = last - first + 1
        if lengths.max() > _VARINT_MAX_BYTES:
            at = start + w + int(first[np.argmax(lengths)])
            raise _bad(what, at, "varint longer than 10 bytes")
        shift = (np.arange(chunk.size, dtype=np.int64) - np.repeat(first, lengths)) * 7
        parts = (chunk & 0x7F).astype(np.uint64) << shift.astype(np.uint64)
        out[done:done + last.size] = np.bitwise_or.reduceat(parts, first)
        done += last.size
        w += chunk.size
    return out


def _fixed_array(data, span, dtype: str, what: str) -> np.ndarray:
    """A packed fixed-width field as a read-only array viewing ``data`` (no copy)."""
    size = np.dtype(dtype).itemsize
    start, end = span
    if (end - start) % size:
        raise _bad(what, start, f"packed field of {end - start} bytes is not a whole number of "
                                f"{size}-byte values")
    return np.frombuffer(data, dtype=dtype, count=(end - start) // size, offset=start)


def _collect_ints(data, chunks: list, wire: int, value, what: str) -> None:
    """Append one occurrence of a repeated varint field (packed span or single value)."""
    if wire == _LEN:
        chunks.append(_packed_varints(data, value, what))
    elif wire == _VARINT:
        chunks.append(value)


def _ints_result(chunks: list) -> np.ndarray:
    """uint64 array of the collected varints, in order."""
    if not chunks:
        return np.zeros(0, np.uint64)
    if all(isinstance(c, int) for c in chunks):
        return np.array(chunks, dtype=np.uint64)
    parts = [np.array([c], np.uint64) if isinstance(c, int) else c for c in chunks]
    return np.concatenate(parts)


def _collect_fixed(data, chunks: list, wire: int, value, dtype: str, size_wire: int,
                   what: str) -> None:
    """Append one occurrence of a repeated fixed-width field: a packed span becomes a view,
    a single value is kept as its position (gathered in one go by ``_fixed_result``)."""
    if wire == _LEN:
        chunks.append(_fixed_array(data, value, dtype, what))
    elif wire == size_wire:
        chunks.append(value)


def _fixed_result(data, chunks: list, dtype: str) -> np.ndarray:
    if not chunks:
        return np.zeros(0, dtype)
    if len(chunks) == 1 and not isinstance(chunks[0], int):
        return chunks[0]  # a view of the file's bytes
    size = np.dtype(dtype).itemsize
    raw = np.frombuffer(data, dtype=np.uint8)
    parts, positions = [], []

    def gather():
        if positions:
            at = np.array(positions, dtype=np.int64)[:, None] + np.arange(size)
            parts.append(raw[at].reshape(-1).view(dtype))
            positions.clear()

    for c in chunks:
        if isinstance(c, int):
            positions.append(c)
        else:
            gather()
            parts.append(c)
    gather()
    return np.concatenate(parts)


def _append(spans, span) -> list:
    """Add one occurrence of a singular message field (None: not seen yet)."""
    if spans is None:
        return [span]
    spans.append(span)
    return spans


def _as_int64_list(a: np.ndarray) -> list:
    return a.view(np.int64).tolist()


# ---- the messages -------------------------------------------------------------------------------
class Entry:
    """StringStringEntryProto."""
    __slots__ = ("key", "value")

    def __init__(self):
        self.key, self.value = "", ""


class OperatorSetId:
    __slots__ = ("domain", "version")

    def __init__(self):
        self.domain, self.version = "", 0


class Tensor:
    """TensorProto. ``raw_data`` is a memoryview of the input (None if absent); the typed data
    fields are numpy arrays (int fields already cast to their proto type); ``dims`` a list."""
    __slots__ = ("dims", "data_type", "name", "raw_data", "float_data", "int32_data",
                 "string_data", "int64_data", "double_data", "uint64_data", "external_data",
                 "data_location", "offset")

    def __init__(self):
        self.dims, self.data_type, self.name, self.raw_data = [], 0, "", None
        self.string_data, self.external_data, self.data_location, self.offset = [], [], 0, 0


class SparseTensor:
    __slots__ = ("values", "indices", "dims")

    def __init__(self):
        self.values, self.indices, self.dims = Tensor(), Tensor(), []


class Dimension:
    """TensorShapeProto.Dimension: exactly one of ``dim_value``/``dim_param`` is set, or none."""
    __slots__ = ("dim_value", "dim_param")

    def __init__(self):
        self.dim_value, self.dim_param = None, None


class TensorType:
    """TypeProto.Tensor: ``shape`` is a list of Dimension, or None when the rank is unknown."""
    __slots__ = ("elem_type", "shape")

    def __init__(self):
        self.elem_type, self.shape = 0, None


class TypeInfo:
    """TypeProto: ``kind`` names the oneof member set ("tensor_type", "sequence_type", …, or
    None); only a tensor's contents are decoded (``tensor_type``)."""
    __slots__ = ("kind", "tensor_type")

    def __init__(self):
        self.kind, self.tensor_type = None, None


class ValueInfo:
    __slots__ = ("name", "type")

    def __init__(self):
        self.name, self.type = "", None


class Attribute:
    """AttributeProto. Subgraphs (``g``, ``graphs``) are kept as byte spans, never decoded."""
    __slots__ = ("name", "ref_attr_name", "type", "f", "i", "s", "t", "g", "sparse_tensor",
                 "floats", "ints", "strings", "tensors", "graphs", "sparse_tensors", "has_tp",
                 "type_protos")

    def __init__(self):
        self.name = self.ref_attr_name = ""
        self.type, self.f, self.i, self.s = 0, 0.0, 0, b""
        self.t = self.g = self.sparse_tensor = None
        self.strings, self.tensors, self.graphs, self.sparse_tensors = [], [], [], []
        self.has_tp, self.type_protos = False, 0


class Node:
    __slots__ = ("input", "output", "name", "op_type", "domain", "attribute")

    def __init__(self):
        self.input, self.output, self.attribute = [], [], []
        self.name = self.op_type = self.domain = ""


class GraphInfo:
    """GraphProto."""
    __slots__ = ("node", "name", "initializer", "sparse_initializer", "input", "output",
                 "value_info")

    def __init__(self):
        self.node, self.initializer, self.sparse_initializer = [], [], []
        self.input, self.output, self.value_info = [], [], []
        self.name = ""


class Model:
    """ModelProto. ``graph`` is None when the data holds none."""
    __slots__ = ("ir_version", "opset_import", "producer_name", "producer_version", "domain",
                 "model_version", "graph", "metadata_props", "buffer")

    def __init__(self):
        self.ir_version, self.opset_import = 0, []
        self.producer_name = self.producer_version = self.domain = ""
        self.model_version, self.graph, self.metadata_props, self.buffer = 0, None, [], None


# ---- message parsers: each takes the input and the spans of one (merged) message ---------------
def _parse_entry(data, spans) -> Entry:
    e = Entry()
    for number, wire, v in _fields(data, spans, "StringStringEntryProto"):
        if wire == _LEN:
            if number == 1:
                e.key = _string(data, v, "StringStringEntryProto.key")
            elif number == 2:
                e.value = _string(data, v, "StringStringEntryProto.value")
    return e


def _parse_opset(data, spans) -> OperatorSetId:
    o = OperatorSetId()
    for number, wire, v in _fields(data, spans, "OperatorSetIdProto"):
        if number == 1 and wire == _LEN:
            o.domain = _string(data, v, "OperatorSetIdProto.domain")
        elif number == 2 and wire == _VARINT:
            o.version = _int64(v)
    return o


def _parse_tensor(data, spans, what="TensorProto") -> Tensor:
    t = Tensor()
    dims, f32, i32, i64, f64, u64 = [], [], [], [], [], []
    for number, wire, v in _fields(data, spans, what):
        if number == 1:
            _collect_ints(data, dims, wire, v, what + ".dims")
        elif number == 2 and wire == _VARINT:
            t.data_type = _int32(v)
        elif number == 9 and wire == _LEN:
            t.raw_data = memoryview(data)[v[0]:v[1]]
            t.offset = v[0]
        elif number == 4:
            _collect_fixed(data, f32, wire, v, "<f4", _I32, what + ".float_data")
        elif number == 5:
            _collect_ints(data, i32, wire, v, what + ".int32_data")
        elif number == 7:
            _collect_ints(data, i64, wire, v, what + ".int64_data")
        elif number == 10:
            _collect_fixed(data, f64, wire, v, "<f8", _I64, what + ".double_data")
        elif number == 11:
            _collect_ints(data, u64, wire, v, what + ".uint64_data")
        elif number == 8 and wire == _LEN:
            t.name = _string(data, v, what + ".name")
        elif number == 6 and wire == _LEN:
            t.string_data.append(_bytes(data, v))
        elif number == 13 and wire == _LEN:
            t.external_data.append(_parse_entry(data, [v]))
        elif number == 14 and wire == _VARINT:
            if v in (0, 1):  # protobuf keeps an unknown enum value out of the field
                t.data_location = v
    t.dims = _as_int64_list(_ints_result(dims))
    t.float_data = _fixed_result(data, f32, "<f4")
    t.double_data = _fixed_result(data, f64, "<f8")
    t.int32_data = _ints_result(i32).astype(np.uint32).view(np.int32)  # int32: low 32 bits
    t.int64_data = _ints_result(i64).view(np.int64)
    t.uint64_data = _ints_result(u64)
    return t


def _parse_sparse(data, spans, what="SparseTensorProto") -> SparseTensor:
    values, indices, dims = [], [], []
    for number, wire, v in _fields(data, spans, what):
        if number == 1 and wire == _LEN:
            values.append(v)
        elif number == 2 and wire == _LEN:
            indices.append(v)
        elif number == 3:
            _collect_ints(data, dims, wire, v, what + ".dims")
    sp = SparseTensor()
    sp.values = _parse_tensor(data, values, what + ".values")
    sp.indices = _parse_tensor(data, indices, what + ".indices")
    sp.dims = _as_int64_list(_ints_result(dims))
    return sp


def _parse_dim(data, spans) -> Dimension:
    d = Dimension()
    for number, wire, v in _fields(data, spans, "TensorShapeProto.Dimension"):
        if number == 1 and wire == _VARINT:
            d.dim_value, d.dim_param = _int64(v), None  # a oneof: the last member set wins
        elif number == 2 and wire == _LEN:
            d.dim_param, d.dim_value = _string(data, v, "Dimension.dim_param"), None
    return d


def _parse_shape(data, spans) -> list:
    return [_parse_dim(data, [v]) for number, wire, v
            in _fields(data, spans, "TensorShapeProto") if number == 1 and wire == _LEN]


def _parse_tensor_type(data, spans) -> TensorType:
    tt, shape = TensorType(), None
    for number, wire, v in _fields(data, spans, "TypeProto.Tensor"):
        if number == 1 and wire == _VARINT:
            tt.elem_type = _int32(v)
        elif number == 2 and wire == _LEN:
            shape = _append(shape, v)
    tt.shape = None if shape is None else _parse_shape(data, shape)
    return tt


_TYPE_KINDS = {1: "tensor_type", 4: "sequence_type", 5: "map_type", 7: "opaque_type",
               8: "sparse_tensor_type", 9: "optional_type"}


def _parse_type(data, spans) -> TypeInfo:
    ti, tensor = TypeInfo(), []
    for number, wire, v in _fields(data, spans, "TypeProto"):
        if wire == _LEN and number in _TYPE_KINDS:
            kind = _TYPE_KINDS[number]
            if kind != ti.kind:
                tensor = []  # setting another member of the oneof clears the previous one
            ti.kind = kind
            if number == 1:
                tensor.append(v)
    if ti.kind == "tensor_type":
        ti.tensor_type = _parse_tensor_type(data, tensor)
    return ti


def _parse_value_info(data, spans) -> ValueInfo:
    vi, type_spans = ValueInfo(), None
    for number, wire, v in _fields(data, spans, "ValueInfoProto"):
        if number == 1 and wire == _LEN:
            vi.name = _string(data, v, "ValueInfoProto.name")
        elif number == 2 and wire == _LEN:
            type_spans = _append(type_spans, v)
    if type_spans is not None:
        vi.type = _parse_type(data, type_spans)
    return vi


def _parse_attribute(data, spans) -> Attribute:
    a, what = Attribute(), "AttributeProto"
    t = sp = g = None
    floats, ints = [], []
    for number, wire, v in _fields(data, spans, what):
        if wire == _LEN:
            if number == 1:
                a.name = _string(data, v, what + ".name")
            elif number == 4:
                a.s = _bytes(data, v)
            elif number == 5:
                t = _append(t, v)
            elif number == 6:
                g = _append(g, v)
            elif number == 7:
                _collect_fixed(data, floats, wire, v, "<f4", _I32, what + ".floats")
            elif number == 8:
                _collect_ints(data, ints, wire, v, what + ".ints")
            elif number == 9:
                a.strings.append(_bytes(data, v))
            elif number == 10:
                a.tensors.append(_parse_tensor(data, [v], what + ".tensors"))
            elif number == 11:
                a.graphs.append(v)
            elif number == 14:
                a.has_tp = True
            elif number == 15:
                a.type_protos += 1
            elif number == 21:
                a.ref_attr_name = _string(data, v, what + ".ref_attr_name")
            elif number == 22:
                sp = _append(sp, v)
            elif number == 23:
                a.sparse_tensors.append(_parse_sparse(data, [v], what + ".sparse_tensors"))
        elif number == 2 and wire == _I32:
            a.f = _F32.unpack_from(data, v)[0]
        elif number == 3 and wire == _VARINT:
            a.i = _int64(v)
        elif number == 7 and wire == _I32:
            _collect_fixed(data, floats, wire, v, "<f4", _I32, what + ".floats")
        elif number == 8 and wire == _VARINT:
            ints.append(v)
        elif number == 20 and wire == _VARINT:
            if v <= 14:  # protobuf keeps an unknown enum value out of the field
                a.type = v
    a.floats = _fixed_result(data, floats, "<f4").tolist()
    a.ints = _as_int64_list(_ints_result(ints))
    if t is not None:
        a.t = _parse_tensor(data, t, what + ".t")
    if sp is not None:
        a.sparse_tensor = _parse_sparse(data, sp, what + ".sparse_tensor")
    a.g = g  # spans of a subgraph: recorded, never decoded
    return a


def _parse_node(data, spans) -> Node:
    n, what = Node(), "NodeProto"
    for number, wire, v in _fields(data, spans, what):
        if wire != _LEN:
            continue
        if number == 1:
            n.input.append(_string(data, v, what + ".input"))
        elif number == 2:
            n.output.append(_string(data, v, what + ".output"))
        elif number == 3:
            n.name = _string(data, v, what + ".name")
        elif number == 4:
            n.op_type = _string(data, v, what + ".op_type")
        elif number == 7:
            n.domain = _string(data, v, what + ".domain")
        elif number == 5:
            n.attribute.append(_parse_attribute(data, [v]))
    return n


def _parse_graph(data, spans) -> GraphInfo:
    gi, what = GraphInfo(), "GraphProto"
    for number, wire, v in _fields(data, spans, what):
        if wire != _LEN:
            continue
        if number == 1:
            gi.node.append(_parse_node(data, [v]))
        elif number == 2:
            gi.name = _string(data, v, what + ".name")
        elif number == 5:
            gi.initializer.append(_parse_tensor(data, [v], "initializer TensorProto"))
        elif number == 15:
            gi.sparse_initializer.append(_parse_sparse(data, [v], "sparse initializer"))
        elif number == 11:
            gi.input.append(_parse_value_info(data, [v]))
        elif number == 12:
            gi.output.append(_parse_value_info(data, [v]))
        elif number == 13:
            gi.value_info.append(_parse_value_info(data, [v]))
    return gi


def parse_subgraphs(model: Model, attribute: Attribute) -> list:
    """The GraphInfos of a graph-valued attribute (an If branch, a Loop or Scan body), decoded
    on demand from the spans the attribute recorded in the model's buffer."""
    found = [_parse_graph(model.buffer, attribute.g)] if attribute.g is not None else []
    return found + [_parse_graph(model.buffer, [span]) for span in attribute.graphs]


def parse_model(data) -> Model:
    """Decode a serialized ModelProto (``bytes``, or any buffer: arrays made from it view it).

    Raises ModelError for anything that is not well-formed protobuf or holds no graph, IR
    version or opset (protobuf itself accepts almost any bytes as a message)."""
    if not isinstance(data, bytes):
        data = memoryview(data).cast("B")
    m, what = Model(), "ModelProto"
    m.buffer = data
    graph = None
    for number, wire, v in _fields(data, [(0, len(data))], what):
        if wire == _VARINT:
            if number == 1:
                m.ir_version = _int64(v)
            elif number == 5:
                m.model_version = _int64(v)
        elif wire == _LEN:
            if number == 7:
                graph = _append(graph, v)
            elif number == 8:
                m.opset_import.append(_parse_opset(data, [v]))
            elif number == 2:
                m.producer_name = _string(data, v, what + ".producer_name")
            elif number == 3:
                m.producer_version = _string(data, v, what + ".producer_version")
            elif number == 4:
                m.domain = _string(data, v, what + ".domain")
            elif number == 14:
                m.metadata_props.append(_parse_entry(data, [v]))
    if graph is None or m.ir_version < 1 or not m.opset_import:
        raise ModelError("not an ONNX model: the data has no graph, IR version or opset_import "
                         "(is it truncated or another kind of file?)")
    m.graph = _parse_graph(data, graph)
    return m


def parse_tensor(data) -> Tensor:
    """Decode a serialized TensorProto (a ``.pb`` tensor file, as in ONNX's test data)."""
    if not isinstance(data, bytes):
        data = memoryview(data).cast("B")
    return _parse_tensor(data, [(0, len(data))])
