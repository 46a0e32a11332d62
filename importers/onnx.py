"""ONNX → ember IR.

Every ONNX quirk lives here so the rest of ember sees one form per op: the newest opset's. The
importer parses defensively (a bad file is a ``ModelError``, never a protobuf traceback), lists
*all* unsupported ops at once, converts attributes to plain Python/numpy values, loads external
data only from inside the model's folder, and rewrites older-opset forms (see ``UPGRADES``).

Loading never imports ``onnx``: models are decoded by ``onnx_wire`` (weights viewing the file's
bytes), an ``onnx.ModelProto`` the caller already holds is serialized and decoded the same way,
and the dtypes and ranks a few old-opset rewrites need come from ember's own shape inference
(``value_types``).
"""
from __future__ import annotations

import math
import os
import stat
import sys

import numpy as np

from ..graph.errors import ModelError, UnsupportedOpError
from ..graph.infer import MAX_ELEMENTS, MAX_RANK, span
from ..graph.ir import Graph, Node, TensorType, fresh_name
from ..graph.ops import REGISTRY, is_supported
from .onnx_wire import parse_model, parse_subgraphs
from .value_types import ValueTypes

_DEFAULT_DOMAINS = ("", "ai.onnx")
_MAX_DENSE_ELEMENTS = 1 << 31  # a sparse constant expanding past this is hostile, not a model
# dtypes ember's runtime can hold; anything else (strings, float8, int4, …) is refused clearly.
_SUPPORTED_DTYPES = {np.dtype(t) for t in ("float16", "float32", "float64", "int8", "int16",
                                           "int32", "int64", "uint8", "uint16", "uint32",
                                           "uint64", "bool")}


# the newest default-domain opset whose semantics ember's op table and upgrades follow (onnx
# 1.23's); a model needing a newer one is refused rather than run with guessed semantics
NEWEST_OPSET = 28

# ONNX TensorProto.DataType: code -> name, and the numpy dtype of the codes ember supports
_ONNX_TYPE_NAMES = ("UNDEFINED", "FLOAT", "UINT8", "INT8", "UINT16", "INT16", "INT32", "INT64",
                    "STRING", "BOOL", "FLOAT16", "DOUBLE", "UINT32", "UINT64", "COMPLEX64",
                    "COMPLEX128", "BFLOAT16", "FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2",
                    "FLOAT8E5M2FNUZ", "UINT4", "INT4", "FLOAT4E2M1", "FLOAT8E8M0", "UINT2",
                    "INT2", "FLOAT6E2M3", "FLOAT6E3M2")
_ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32",
                7: "int64", 9: "bool", 10: "float16", 11: "float64", 12: "uint32", 13: "uint64"}
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL
# AttributeProto.AttributeType
_A_NAMES = ("UNDEFINED", "FLOAT", "INT", "STRING", "TENSOR", "GRAPH", "FLOATS", "INTS",
            "STRINGS", "TENSORS", "GRAPHS", "SPARSE_TENSOR", "SPARSE_TENSORS", "TYPE_PROTO",
            "TYPE_PROTOS")
(_A_FLOAT, _A_INT, _A_STRING, _A_TENSOR, _A_GRAPH, _A_FLOATS, _A_INTS, _A_STRINGS, _A_TENSORS,
 _A_GRAPHS, _A_SPARSE_TENSOR) = range(1, 12)


# ---- parsing ------------------------------------------------------------------------------------
def _parse(src):
    """Return (decoded model, folder for external data or None). Paths and bytes are decoded by
    ``onnx_wire``; an ``onnx.ModelProto`` is serialized and decoded the same way (one reader, one
    behaviour), recognised only when the caller has imported onnx already."""
    if isinstance(src, (bytes, bytearray, memoryview)):
        data, folder = bytes(src), None  # a copy of a mutable buffer: weights will view it
    elif isinstance(src, (str, os.PathLike)):
        path = os.fspath(src)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise ModelError(f"cannot read model file {path!r}: {e.strerror or e}") from None
        folder = os.path.dirname(os.path.abspath(path))
    elif "onnx" in sys.modules and isinstance(src, sys.modules["onnx"].ModelProto):
        try:
            data = src.SerializeToString()
        except Exception as e:  # e.g. a message over protobuf's 2 GiB limit
            raise ModelError(f"cannot serialize the onnx.ModelProto ({type(e).__name__}: "
                             f"{e}); save it with external data and load the path") from None
        return parse_model(data), None
    else:
        raise ModelError(f"cannot load a model from {type(src).__name__}; pass a path, the "
                         f"file's bytes or an onnx.ModelProto")
    return parse_model(data), folder


def _default_opset(model) -> int:
    versions = [o.version for o in model.opset_import if o.domain in _DEFAULT_DOMAINS]
    if not versions:
        if any(n.domain in _DEFAULT_DOMAINS for n in model.graph.node):
            raise ModelError("the model uses default-domain ops but imports no default-domain "
                             "opset")
        return 0
    opset = max(versions)
    if opset > NEWEST_OPSET:
        raise ModelError(f"the model needs ONNX opset {opset}, newer than opset {NEWEST_OPSET}, "
                         f"the newest ember knows")
    if opset < 1:
        raise ModelError(f"invalid default-domain opset {opset}")
    return opset


def _check_supported(model, opset: int) -> None:
    """One UnsupportedOpError listing every unsupported op — those inside subgraphs (If
    branches, Loop/Scan bodies) too, named by their path — before converting anything. Only
    default-domain ops are read from a file: ember's training ops (``MSELoss``,
    ``ConvGradInput``, …) live in its own training domain, so a file naming them — in the
    default domain or in that one — is refused like any op ember does not run."""
    domain_opsets = {o.domain: o.version for o in model.opset_import}
    missing: dict = {}
    pending = [(model.graph, "", 0)]
    while pending:
        graph_proto, prefix, depth = pending.pop()
        for k, n in enumerate(graph_proto.node):
            name = prefix + (n.name or f"{n.op_type}_{k}")
            domain = "" if n.domain in _DEFAULT_DOMAINS else n.domain
            if domain == "":
                needs = UPGRADE_TARGETS.get(n.op_type, (n.op_type,))
                ok = all(is_supported(t) for t in needs)
            else:
                ok = False
            if not ok:
                key = (n.op_type, domain,
                       opset if domain == "" else domain_opsets.get(domain, "?"))
                missing.setdefault(key, []).append(name)
            for a in n.attribute:
                if a.g is None and not a.graphs:
                    continue
                if depth + 1 > MAX_SUBGRAPH_DEPTH:
                    where = name if len(name) <= 120 else "…" + name[-120:]
                    raise ModelError(f"node {where!r} ({n.op_type}): subgraphs nested more "
                                     f"than {MAX_SUBGRAPH_DEPTH} deep")
                for sub in parse_subgraphs(model, a):
                    pending.append((sub, f"{name}/{a.name}/", depth + 1))
    if missing:
        raise UnsupportedOpError(missing)


MAX_SUBGRAPH_DEPTH = 16     # If/Loop bodies nest a few deep; a file nesting more is hostile


# ---- types, tensors, attributes -----------------------------------------------------------------
def _type_name(elem_type: int) -> str:
    if 0 <= elem_type < len(_ONNX_TYPE_NAMES):
        return _ONNX_TYPE_NAMES[elem_type]
    return str(elem_type)


def _np_dtype(elem_type: int, what: str) -> np.dtype:
    dt = _ONNX_DTYPES.get(elem_type)
    if dt is None:
        raise ModelError(f"{what} has element type {_type_name(elem_type)}, which ember does not "
                         f"support (supported: {sorted(d.name for d in _SUPPORTED_DTYPES)})")
    return np.dtype(dt)


def _value_type(vi) -> TensorType:
    what = f"graph input {vi.name!r}"
    if vi.type is None or vi.type.tensor_type is None:
        raise ModelError(f"{what} is not a tensor (sequences, maps and optionals are not "
                         f"supported)")
    tt = vi.type.tensor_type
    dtype = _np_dtype(tt.elem_type, what)
    if tt.shape is None:
        raise ModelError(f"{what} has no shape (unknown rank); ember needs every input's rank")
    dims = []
    for i, d in enumerate(tt.shape):
        # a negative dim_value (exporters write -1) or an empty dim_param is symbolic, as
        # onnxruntime reads it; a declared 0 is a fixed zero-size dim
        if d.dim_value is not None and d.dim_value >= 0:
            dims.append(int(d.dim_value))
        else:
            dims.append(d.dim_param or f"?{i}")
    return TensorType(dtype, tuple(dims))


def _typed_values(t, dtype: np.dtype) -> np.ndarray:
    """A tensor's typed data field as ``dtype`` (the field each dtype lives in, per onnx.proto:
    16-bit floats as their bit patterns in int32_data, narrow ints and bool widened there)."""
    if dtype == np.float32:
        return t.float_data
    if dtype == np.float64:
        return t.double_data
    if dtype == np.int64:
        return t.int64_data
    if dtype in (np.uint64, np.uint32):
        return t.uint64_data.astype(dtype, copy=False)
    if dtype == np.float16:
        return t.int32_data.astype(np.uint16).view(np.float16)
    if dtype == np.bool_:
        return t.int32_data != 0
    return t.int32_data.astype(dtype, copy=False)


def _tensor_to_array(t, folder, what: str) -> np.ndarray:
    """The tensor as a C-contiguous array. ``raw_data`` becomes a read-only view of the model's
    bytes (or of the external file's), never a copy."""
    dtype = _np_dtype(t.data_type, what)
    _check_rank(len(t.dims), what)
    raw = t.raw_data
    if t.data_location == _EXTERNAL:
        raw = _load_external(t, folder, what)
    count = 1
    for d in t.dims:
        if d < 0:
            raise ModelError(f"{what} has negative dim {d}")
        count *= int(d)
    if span(t.dims) > MAX_ELEMENTS:
        raise ModelError(f"{what}: shape {tuple(t.dims)} spans {span(t.dims)} elements (0 dims "
                         f"counted as 1), more than ember accepts")
    if raw is not None:
        have, need = len(raw), count * dtype.itemsize
    else:
        data = _typed_values(t, dtype)
        have, need = len(data), count
    if have != need:
        raise ModelError(f"{what}: shape {tuple(t.dims)} needs {need} "
                         f"{'bytes' if raw is not None else 'values'} of {dtype.name} "
                         f"data, the file holds {have}")
    shape = tuple(int(d) for d in t.dims)
    if raw is not None:
        arr = np.frombuffer(raw, dtype=dtype.newbyteorder("<"), count=count)
        arr = arr.astype(dtype, copy=False)  # a no-op on little-endian machines
    else:
        arr = np.asarray(data, dtype=dtype)
    return np.require(arr.reshape(shape), requirements="C")


def _check_rank(rank: int, what: str) -> None:
    if rank > MAX_RANK:
        raise ModelError(f"{what} has {rank} dims, more than the {MAX_RANK} ember (numpy) "
                         f"supports")


def _load_external(t, folder, what: str) -> bytes:
    """The tensor's external bytes, refusing locations outside ``folder``."""
    info = {e.key: e.value for e in t.external_data}
    loc = info.get("location", "")
    if folder is None:
        raise ModelError(f"{what} keeps its data in an external file ({loc!r}); load the model "
                         f"from its path so ember knows where to look (not from bytes)")
    parts = loc.replace("\\", "/").split("/")
    if not loc or os.path.isabs(loc) or loc.startswith(("/", "\\")) or ":" in loc \
            or ".." in parts:
        raise ModelError(f"{what}: external data location {loc!r} is refused: it must be a "
                         f"relative path inside the model's folder")
    root = os.path.realpath(folder)
    path = os.path.realpath(os.path.join(root, loc))
    if os.path.commonpath([root, path]) != root:
        raise ModelError(f"{what}: external data location {loc!r} resolves outside the "
                         f"model's folder (via a symlink?); refused")
    try:
        offset = int(info.get("offset", 0))
        length = int(info["length"]) if "length" in info else None
    except ValueError:
        offset = -1
    if offset < 0 or (length is not None and length < 0):
        raise ModelError(f"{what}: bad external data offset/length {info}")
    try:
        with _open_regular_file(path, loc, what) as f:
            f.seek(offset)
            raw = f.read() if length is None else f.read(length)
    except OSError as e:
        raise ModelError(f"{what}: cannot read external data {loc!r}: {e.strerror or e}") \
            from None
    if length is not None and len(raw) != length:
        raise ModelError(f"{what}: external data {loc!r} is shorter than its declared length")
    return raw


def _open_regular_file(path: str, loc: str, what: str):
    """``path`` opened for binary reading, refusing anything but a regular file: a FIFO would
    block the load, a device (``/dev/zero``) would never end, a directory is no data. Checked
    before opening, then again on the opened descriptor (the path may have been swapped in
    between); ``O_NONBLOCK`` keeps that open from waiting on a FIFO's writer."""
    def refuse(mode):
        return ModelError(f"{what}: external data location {loc!r} is not a regular file "
                          f"({_file_kind(mode)}); refused")
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise refuse(mode)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    f = os.fdopen(fd, "rb")
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        f.close()
        raise refuse(mode)
    return f


def _file_kind(mode: int) -> str:
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISSOCK, "a socket"))
    return next((name for test, name in kinds if test(mode)), "another kind of file")


def _dtype_name(to, node_name: str) -> str:
    if isinstance(to, (bytes, str)):  # Cast-1 spelled the type ("FLOAT")
        to = to.decode() if isinstance(to, bytes) else to
        if to.upper() not in _ONNX_TYPE_NAMES:
            raise ModelError(f"node {node_name!r}: unknown type name {to!r}")
        to = _ONNX_TYPE_NAMES.index(to.upper())
    return _np_dtype(int(to), f"node {node_name!r} (target type)").name


def _attributes(node_proto, folder, node_name: str, subgraph=None) -> dict:
    """The node's attributes as plain values; a GRAPH attribute becomes what ``subgraph(a)``
    (the importer's subgraph converter) returns."""
    attrs = {}
    for a in node_proto.attribute:
        what = f"attribute {a.name!r} of node {node_name!r}"
        if a.ref_attr_name:
            raise ModelError(f"{what} refers to a function attribute; not supported")
        if a.type == _A_FLOAT:
            v = float(a.f)
        elif a.type == _A_INT:
            v = int(a.i)
        elif a.type == _A_STRING:
            v = a.s.decode("utf-8", "replace")
        elif a.type == _A_FLOATS:
            v = [float(x) for x in a.floats]
        elif a.type == _A_INTS:
            v = [int(x) for x in a.ints]
        elif a.type == _A_STRINGS:
            v = [s.decode("utf-8", "replace") for s in a.strings]
        elif a.type == _A_TENSOR:
            if a.t is None:
                raise ModelError(f"{what} is a tensor attribute without a tensor")
            v = _tensor_to_array(a.t, folder, what)
        elif a.type == _A_SPARSE_TENSOR:
            if a.sparse_tensor is None:
                raise ModelError(f"{what} is a sparse tensor attribute without a tensor")
            v = _sparse_to_dense(a.sparse_tensor, folder, what)
        elif a.type == _A_GRAPH and subgraph is not None and a.g is not None:
            v = subgraph(a)
        elif a.type in (_A_GRAPH, _A_GRAPHS):
            raise ModelError(f"{what} is a list of subgraphs or has no graph; ember's "
                             f"control-flow ops (If, Loop, Scan) take one graph per attribute")
        else:
            raise ModelError(f"{what} has an attribute type ember does not support "
                             f"({_A_NAMES[a.type]})")
        attrs[a.name] = v
    return attrs


def _sparse_to_dense(sp, folder, what) -> np.ndarray:
    values = _tensor_to_array(sp.values, folder, what + " (values)")
    indices = _tensor_to_array(sp.indices, folder, what + " (indices)").astype(np.int64)
    shape = tuple(int(d) for d in sp.dims)
    _check_rank(len(shape), what)
    size = 1
    for d in shape:
        size *= d
    if any(d < 0 for d in shape) or span(shape) > _MAX_DENSE_ELEMENTS:
        raise ModelError(f"{what}: dense shape {shape} is negative or too large")
    dense = np.zeros(size, dtype=values.dtype)
    try:
        flat = indices if indices.ndim == 1 else np.ravel_multi_index(indices.T, shape)
    except ValueError:
        raise ModelError(f"{what}: sparse indices out of range") from None
    if flat.size != values.size or (flat.size and (flat.min() < 0 or flat.max() >= size)):
        raise ModelError(f"{what}: sparse indices out of range or not one per value")
    dense[flat] = values.reshape(-1)
    return dense.reshape(shape)


# ---- the importer ---------------------------------------------------------------------------------
def load_onnx(src) -> Graph:
    """Import an ONNX model (path, bytes or ``onnx.ModelProto``) as an ember ``Graph``."""
    model, folder = _parse(src)
    opset = _default_opset(model)
    gp = model.graph
    _check_supported(model, opset)

    graph = Graph(name=gp.name or "graph", opset=opset)
    graph.metadata = {p.key: p.value for p in model.metadata_props}
    graph.metadata.setdefault("producer", f"{model.producer_name} {model.producer_version}"
                              .strip())
    for init in gp.initializer:
        if not init.name:
            raise ModelError("an initializer has no name")
        if init.name in graph.initializers:
            raise ModelError(f"initializer {init.name!r} is defined twice")
        graph.initializers[init.name] = _tensor_to_array(init, folder,
                                                         f"initializer {init.name!r}")
    for sp in gp.sparse_initializer:
        name = sp.values.name
        if name in graph.initializers:
            raise ModelError(f"initializer {name!r} is defined twice")
        graph.initializers[name] = _sparse_to_dense(sp, folder, f"sparse initializer {name!r}")
    for vi in gp.input:
        if vi.name in graph.initializers:
            continue  # IR < 4 lists initializers among inputs too: they are constants
        if not vi.name:
            raise ModelError("a graph input has no name")
        if vi.name in graph.types:
            raise ModelError(f"graph input {vi.name!r} is declared twice")
        graph.inputs.append(vi.name)
        graph.types[vi.name] = _value_type(vi)
    graph.outputs = [vo.name for vo in gp.output]
    declared = {}
    for vo in gp.output:  # best effort: outputs may omit shapes; inference gives the truth
        try:
            declared[vo.name] = _value_type(vo)
        except ModelError:
            pass
    graph.metadata["declared_output_types"] = declared
    if not all(graph.outputs):
        raise ModelError("a graph output has no name")
    if len(set(graph.outputs)) != len(graph.outputs):
        raise ModelError(f"graph outputs repeat a name: {graph.outputs}")

    _convert_nodes(graph, gp, _Scope(model, folder, opset, [_names_of(gp)]), "")
    graph.toposort()
    return graph


# ---- nodes and subgraphs ------------------------------------------------------------------------
class _Scope:
    """What converting a graph's nodes needs: the model (its buffer holds the subgraphs), the
    external-data folder, the opset, and the names each enclosing graph defines, outermost
    first (a subgraph's free names must resolve in one of them)."""

    def __init__(self, model, folder, opset: int, names: list):
        self.model, self.folder, self.opset, self.names = model, folder, opset, names

    def inner(self, names: set) -> "_Scope":
        return _Scope(self.model, self.folder, self.opset, self.names + [names])


def _names_of(gp) -> set:
    """Every value name a GraphProto defines: its inputs, initializers and node outputs."""
    names = {vi.name for vi in gp.input} | {t.name for t in gp.initializer}
    names.update(sp.values.name for sp in gp.sparse_initializer)
    names.update(o for n in gp.node for o in n.output if o)
    return names


def _convert_nodes(graph: Graph, gp, scope: _Scope, prefix: str) -> None:
    """Append ``gp``'s nodes to ``graph`` as IR nodes (opset upgrades applied). A node with
    subgraph attributes gets every outer value its subgraphs read appended to its inputs
    (``control_flow.attach_captures``)."""
    from ..graph.ops.control_flow import attach_captures
    rewriter = Rewriter(_GraphHolder(gp), graph, scope.opset)
    used_names: set = set()
    for k, n in enumerate(gp.node):
        name = prefix + (n.name or f"{n.op_type}_{k}")
        while name in used_names:  # names only label errors and plans, but must be unique
            name = f"{name}_{k}"
        used_names.add(name)
        subgraphs: dict = {}

        def subgraph(a, name=name, subgraphs=subgraphs):
            sub, free = _convert_subgraph(parse_subgraphs(scope.model, a)[0], scope,
                                          f"{name}/{a.name}/", name)
            subgraphs[a.name] = free
            return sub
        attrs = _attributes(n, scope.folder, name, subgraph)
        attrs = {a: v for a, v in attrs.items() if a != "consumed_inputs"}  # opset<6 relic
        node = Node(n.op_type, list(n.input), list(n.output), attrs, name, "")
        optional_first = n.op_type == "Loop" or (n.op_type == "Scan" and scope.opset < 9
                                                 and len(node.inputs) > 1)
        if not optional_first:
            _check_first_slots(node)
        elif not node.outputs or not node.outputs[0]:   # (input 0 is optional there)
            raise ModelError(f"{node}: output 0 is required but absent")
        if subgraphs:
            attach_captures(node, subgraphs)
        upgrade = UPGRADES.get(n.op_type)
        nodes = upgrade(node, rewriter) if upgrade else [node]
        graph.nodes.extend(nodes)


class _GraphHolder:
    """The ``model.graph`` a ``Rewriter`` reads names from, for a subgraph."""

    def __init__(self, gp):
        self.graph = gp


def _convert_subgraph(gp, scope: _Scope, prefix: str, node_name: str):
    """(ember Graph, free names) for an If branch or a Loop/Scan body. Its ``inputs`` are the
    formal ones (types where the file declares them: a body's inputs often have none, the op
    infers them); a name its nodes or outputs read that it does not define is free: it must be
    defined by an enclosing graph, else ModelError naming the node and the name."""
    sub = Graph(name=gp.name or prefix.rstrip("/"), opset=scope.opset)
    for init in gp.initializer:
        sub.initializers[init.name] = _tensor_to_array(init, scope.folder,
                                                       f"initializer {init.name!r} of {prefix}")
    for sp in gp.sparse_initializer:
        sub.initializers[sp.values.name] = _sparse_to_dense(
            sp, scope.folder, f"sparse initializer {sp.values.name!r} of {prefix}")
    for vi in gp.input:
        if not vi.name:
            raise ModelError(f"node {node_name!r}: an input of subgraph {prefix!r} has no name")
        sub.inputs.append(vi.name)
        try:
            sub.types[vi.name] = _value_type(vi)
        except ModelError:
            pass   # the op infers it from the node's inputs
    sub.outputs = [vo.name for vo in gp.output]
    if not all(sub.outputs):
        raise ModelError(f"node {node_name!r}: an output of subgraph {prefix!r} has no name")
    own = _names_of(gp)
    _convert_nodes(sub, gp, scope.inner(own), prefix)
    defined = set(sub.inputs) | set(sub.initializers)
    defined.update(o for n in sub.nodes for o in n.outputs if o)
    free = []
    for name in [i for n in sub.nodes for i in n.inputs] + sub.outputs:
        if name and name not in defined and name not in free:
            if not any(name in names for names in scope.names):
                raise ModelError(f"node {node_name!r}: subgraph {prefix.rstrip('/')!r} reads "
                                 f"{name!r}, which neither it nor any enclosing graph defines")
            free.append(name)
    return sub, free


def _check_first_slots(node: Node) -> None:
    """ModelError unless ``node`` has its first output and, when its op takes inputs, its first
    input: every ONNX op requires both, and the opset upgrades read them (the old forms'
    attributes become inputs placed after input 0, typed like it). Ops whose outputs are all
    optional (RNN/GRU/LSTM) say so with a minimum of 0 outputs."""
    target = REGISTRY[("", UPGRADE_TARGETS.get(node.op_type, (node.op_type,))[0])]
    if target.num_inputs[0] >= 1 and not node.input(0):
        raise ModelError(f"{node}: input 0 is required but absent")
    if target.num_outputs[0] >= 1 and (not node.outputs or not node.outputs[0]):
        raise ModelError(f"{node}: output 0 is required but absent")


# ---- opset upgrades: older forms → the newest opset's semantics -------------------------------
class Rewriter:
    """What an upgrade needs: the model's opset, fresh value names, new constants (added as
    initializers) and, when an old form hides a dtype or rank, the types of the values the nodes
    converted so far compute (``ValueTypes``)."""

    def __init__(self, model, graph: Graph, opset: int):
        self.graph, self.opset = graph, opset
        gp = model.graph
        self._taken = set(graph.initializers) | {vi.name for vi in gp.input}
        self._taken.update(vo.name for vo in gp.output)
        for n in gp.node:
            self._taken.update(n.input)
            self._taken.update(n.output)
        self._types = ValueTypes(graph)

    def fresh(self, base: str) -> str:
        return fresh_name(self._taken, base)

    def const(self, base: str, value) -> str:
        name = self.fresh(base)
        self.graph.initializers[name] = np.require(value, requirements="C")
        return name

    def dtype_of(self, name, default="float32") -> np.dtype:
        return np.dtype(self._types.lookup(name)[0] or default)

    def rank_of(self, name):
        return self._types.lookup(name)[1]


# An upgrade turns attributes into constants and shapes: a value of the wrong kind (a list where
# an int belongs, a string, a NaN scale) is refused here, naming the node and the attribute,
# rather than surfacing as a numpy exception or a garbage constant.
def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return _is_int(v) or isinstance(v, (float, np.floating))


def _bad_attr(node: Node, attr: str, value, want: str) -> ModelError:
    return ModelError(f"{node}: attribute {attr!r} must be {want}, got "
                      f"{type(value).__name__} {value!r:.60}")


def _str_attr(node: Node, attr: str, default: str) -> str:
    """A string attribute an upgrade reads (a tensor or list compared with a string would
    raise numpy's ValueError or pass silently)."""
    value = node.attrs.get(attr, default)
    if not isinstance(value, str):
        raise _bad_attr(node, attr, value, "a string")
    return value


def _int_attr(node: Node, attr: str, value) -> int:
    if not _is_int(value):
        raise _bad_attr(node, attr, value, "an int")
    return int(value)


def _ints_attr(node: Node, attr: str, value) -> list:
    if not isinstance(value, list) or not all(_is_int(v) for v in value):
        raise _bad_attr(node, attr, value, "a list of ints")
    return [int(v) for v in value]


def _float_attr(node: Node, attr: str, value, finite: bool = False) -> float:
    """A number that is not NaN, and finite when ``finite`` (elsewhere infinities are meaningful:
    Pad ``value=-inf``, an infinite Clip bound)."""
    if not _is_number(value) or math.isnan(value) or (finite and math.isinf(value)):
        raise _bad_attr(node, attr, value, "a finite number" if finite else "a number (not NaN)")
    return float(value)


def _scale_attr(node: Node, attr: str, value) -> float:
    if not _is_number(value) or not math.isfinite(value) or value <= 0:
        raise _bad_attr(node, attr, value, "a finite positive number")
    return float(value)


def _set_input(node: Node, i: int, name: str) -> None:
    while len(node.inputs) <= i:
        node.inputs.append("")
    node.inputs[i] = name


def _trim_inputs(node: Node) -> None:
    while node.inputs and not node.inputs[-1]:
        node.inputs.pop()


def _attr_to_input(attr: str, index: int, before: int):
    """Upgrade for ops whose ints attribute ``attr`` became input ``index`` at opset ``before``."""
    def upgrade(node, rw):
        if rw.opset < before and attr in node.attrs:
            value = _ints_attr(node, attr, node.attrs.pop(attr))
            _set_input(node, index, rw.const(f"{node.name}_{attr}", np.array(value, np.int64)))
        return [node]
    return upgrade


def _softmax(node, rw):
    """Softmax/LogSoftmax/Hardmax < 13 coerce the input to 2-D at ``axis``; 13+ work on one
    axis."""
    if rw.opset >= 13:
        return [node]
    axis = _int_attr(node, "axis", node.attrs.pop("axis", 1))
    rank = rw.rank_of(node.inputs[0])
    if rank is not None and axis in (rank - 1, -1):
        node.attrs["axis"] = -1  # the 2-D coercion changes nothing here
        return [node]
    x, y, base = node.inputs[0], node.outputs[0], node.name
    shape, flat, soft = rw.fresh(f"{base}_shape"), rw.fresh(f"{base}_2d"), rw.fresh(f"{base}_out")
    return [Node("Shape", [x], [shape], {}, f"{base}/shape"),
            Node("Flatten", [x], [flat], {"axis": axis}, f"{base}/flatten"),
            Node(node.op_type, [flat], [soft], {"axis": -1}, base),
            Node("Reshape", [soft, shape], [y], {}, f"{base}/reshape")]


def _topk(node, rw):
    """TopK-1 takes ``k`` as an attribute; from opset 10 it is input 1 (int64, shape [1])."""
    if "k" in node.attrs:
        k = _int_attr(node, "k", node.attrs.pop("k"))
        _set_input(node, 1, rw.const(f"{node.name}_k", np.array([k], np.int64)))
    return [node]


def _clip(node, rw):
    if rw.opset < 11:
        for i, attr in ((1, "min"), (2, "max")):
            if attr in node.attrs:
                bound = _float_attr(node, attr, node.attrs.pop(attr))
                _set_input(node, i, rw.const(f"{node.name}_{attr}",
                                             np.array(bound, rw.dtype_of(node.inputs[0]))))
        _trim_inputs(node)
    return [node]


def _pad(node, rw):
    if rw.opset < 11:
        attr = "pads" if "pads" in node.attrs else "paddings"
        pads = node.attrs.pop("pads", node.attrs.pop("paddings", None))
        if pads is None:
            raise ModelError(f"{node}: attribute 'pads' is missing")
        pads = _ints_attr(node, attr, pads)
        value = _float_attr(node, "value", node.attrs.pop("value", 0.0))
        _set_input(node, 1, rw.const(f"{node.name}_pads", np.array(pads, np.int64)))
        if _str_attr(node, "mode", "constant") == "constant" and value != 0.0:
            _set_input(node, 2, rw.const(f"{node.name}_value",
                                         np.array(value, rw.dtype_of(node.inputs[0]))))
    return [node]


def _resize_like(node, scales_input: str, rw) -> list:
    """Upsample and Resize-10 as Resize-19: asymmetric coordinates; nearest rounds down on
    axes that grow and up on axes that shrink (onnxruntime's rule for these old forms)."""
    mode = _str_attr(node, "mode", "nearest")
    mode = "linear" if mode in ("linear", "bilinear") else mode
    node.op_type = "Resize"
    node.inputs = [node.inputs[0], "", scales_input]
    node.attrs = {"mode": mode, "coordinate_transformation_mode": "asymmetric",
                  "nearest_mode": "floor"}
    scales = rw.graph.initializers.get(scales_input)
    if mode != "nearest" or scales is None or not (scales < 1).any():
        return [node]
    if not (scales > 1).any():
        node.attrs["nearest_mode"] = "ceil"
        return [node]
    # both directions: nearest is separable, so grow first (floor), then shrink (ceil)
    grow = rw.const(f"{node.name}_grow", np.where(scales > 1, scales, 1).astype(np.float32))
    shrink = rw.const(f"{node.name}_shrink", np.where(scales < 1, scales, 1).astype(np.float32))
    mid = rw.fresh(f"{node.name}_grown")
    first = Node("Resize", [node.inputs[0], "", grow], [mid], dict(node.attrs),
                 f"{node.name}/grow")
    node.inputs = [mid, "", shrink]
    node.attrs["nearest_mode"] = "ceil"
    return [first, node]


def _upsample(node, rw):
    """Upsample (every opset) is Resize with asymmetric coordinates and floor rounding."""
    if "scales" in node.attrs:
        values = node.attrs.pop("scales")
        if not isinstance(values, list):
            raise _bad_attr(node, "scales", values, "a list of finite positive numbers")
        values = [_scale_attr(node, "scales", v) for v in values]
        scales = rw.const(f"{node.name}_scales", np.array(values, np.float32))
    elif "height_scale" in node.attrs or "width_scale" in node.attrs:  # Upsample-1
        hw = [_scale_attr(node, a, node.attrs.pop(a, 1.0)) for a in ("height_scale", "width_scale")]
        scales = rw.const(f"{node.name}_scales", np.array([1.0, 1.0] + hw, np.float32))
    elif len(node.inputs) > 1 and node.inputs[1]:
        scales = node.inputs[1]
    else:
        raise ModelError(f"{node}: Upsample needs scales")
    return _resize_like(node, scales, rw)


def _resize(node, rw):
    if rw.opset < 11:  # Resize-10: (X, scales), asymmetric coordinates
        return _resize_like(node, node.input(1), rw)
    if _str_attr(node, "mode", "nearest") == "bilinear":
        node.attrs["mode"] = "linear"
    for i in (1, 2, 3):  # an empty constant means "not given" (Resize-11 had no optional inputs)
        name = node.input(i)
        if name in rw.graph.initializers and rw.graph.initializers[name].size == 0:
            node.inputs[i] = ""
    _trim_inputs(node)
    return [node]


def _split(node, rw):
    if rw.opset < 13 and "split" in node.attrs:
        split = _ints_attr(node, "split", node.attrs.pop("split"))
        _set_input(node, 1, rw.const(f"{node.name}_split", np.array(split, np.int64)))
    if not node.input(1) and "num_outputs" not in node.attrs:
        node.attrs["num_outputs"] = len(node.outputs)  # old "equal parts" = 18's num_outputs
    return [node]


def _slice(node, rw):
    if rw.opset < 10:
        for i, attr in ((1, "starts"), (2, "ends"), (3, "axes")):
            if attr in node.attrs:
                value = _ints_attr(node, attr, node.attrs.pop(attr))
                _set_input(node, i, rw.const(f"{node.name}_{attr}", np.array(value, np.int64)))
    return [node]


def _dropout(node, rw):
    node.attrs.pop("is_test", None)
    if rw.opset < 12:
        ratio = _float_attr(node, "ratio", node.attrs.pop("ratio", 0.5), finite=True)
        _set_input(node, 1, rw.const(f"{node.name}_ratio", np.array(ratio, np.float32)))
    return [node]


def _batchnorm(node, rw):
    node.attrs.pop("is_test", None)
    if _int_attr(node, "spatial", node.attrs.pop("spatial", 1)) != 1:
        raise ModelError(f"{node}: BatchNormalization with spatial=0 (opset < 9, statistics "
                         f"per element rather than per channel) is not supported")
    if rw.opset < 14 and len(node.outputs) > 1:
        node.outputs = node.outputs[:1]  # training-only outputs of the old forms
    return [node]


def _legacy_broadcast(node, rw):
    """Opset < 7 elementwise ops: ``broadcast=1, axis=k`` aligns B with A starting at k."""
    node.attrs.pop("broadcast", None)
    if "axis" not in node.attrs:
        return [node]
    axis = _int_attr(node, "axis", node.attrs.pop("axis"))
    a, b = node.inputs[0], node.input(1)
    rank_a, rank_b = rw.rank_of(a), rw.rank_of(b)
    if rank_a is None or rank_b is None:
        raise ModelError(f"{node}: legacy broadcast with axis={axis} needs known ranks")
    start = axis + rank_a if axis < 0 else axis
    if not 0 <= start <= rank_a - rank_b:
        raise ModelError(f"{node}: attribute 'axis' = {axis} does not place the second input "
                         f"(rank {rank_b}) inside the first (rank {rank_a})")
    trailing = rank_a - start - rank_b
    if trailing > 0:
        if b not in rw.graph.initializers:
            raise ModelError(f"{node}: legacy broadcast with axis={axis} is only supported "
                             f"for a constant second input")
        arr = rw.graph.initializers[b]
        node.inputs[1] = rw.const(f"{b}_bcast", arr.reshape(arr.shape + (1,) * trailing))
    return [node]


def _concat(node, rw):
    if rw.opset < 4:
        node.attrs.setdefault("axis", 1)
    return [node]


def _gemm(node, rw):
    node.attrs.pop("broadcast", None)
    return [node]


def _cast(node, rw):
    if "to" in node.attrs:
        to = node.attrs["to"]
        if not (_is_int(to) or isinstance(to, str)):
            raise _bad_attr(node, "to", to, "an int (a TensorProto type) or a type name")
        node.attrs["to"] = _dtype_name(to, node.name)
    return [node]


def _constant(node, rw):
    a = node.attrs
    given = sorted(k for k in a if k.startswith("value") or k == "sparse_value")
    if len(given) != 1:
        raise ModelError(f"{node}: a Constant needs exactly one value attribute, got {given}")
    for key in ("value", "sparse_value"):
        if key in a and not isinstance(a[key], np.ndarray):
            raise _bad_attr(node, key, a[key], "a tensor")
    forms = {"value_float": (np.float32, _is_number, "a number"),
             "value_floats": (np.float32, _is_number, "a list of numbers"),
             "value_int": (np.int64, _is_int, "an int"),
             "value_ints": (np.int64, _is_int, "a list of ints")}
    for key, (dt, ok, want) in forms.items():
        if key in a:
            v = a.pop(key)
            listed = key.endswith("s")
            if isinstance(v, list) != listed or not all(map(ok, v if listed else [v])):
                raise _bad_attr(node, key, v, want)
            a["value"] = np.array(v, dt)
    if "sparse_value" in a:
        a["value"] = a.pop("sparse_value")
    if "value_string" in a or "value_strings" in a:
        raise ModelError(f"{node}: string constants are not supported")
    return [node]


def _scan8(node, rw):
    """Scan-8 scans a batch: inputs (sequence_lens, states [B, …], scan inputs [B, T, …]), its
    body seeing one batch element. As Scan-9: an outer Scan over the batch axis whose body is
    the inner Scan-9 over time (``directions`` becoming ``scan_input_directions``)."""
    if rw.opset >= 9:
        return [node]
    captured = int(node.attrs.pop("captured", 0))
    own, captures = node.inputs[:len(node.inputs) - captured], node.inputs[len(node.inputs) -
                                                                             captured:]
    if own[0]:
        raise ModelError(f"{node}: Scan-8 with sequence_lens (sequences of different lengths "
                         f"in one batch) is not supported")
    if not isinstance(node.attrs.get("body"), Graph):
        raise ModelError(f"{node}: attribute 'body' (a graph) is missing")
    body = node.attrs["body"]
    m = _int_attr(node, "num_scan_inputs", node.attrs.get("num_scan_inputs"))
    per_batch = [rw.fresh(f"{node.name}/batch{i}") for i in range(len(own) - 1)]
    inner_captures = [rw.fresh(f"{node.name}/capture{i}") for i in range(captured)]
    inner_outs = [rw.fresh(f"{node.name}/out{i}") for i in range(len(node.outputs))]
    inner_attrs = {"body": body, "num_scan_inputs": m, "captured": captured}
    if "directions" in node.attrs:
        inner_attrs["scan_input_directions"] = _ints_attr(node, "directions",
                                                          node.attrs["directions"])
    inner = Node("Scan", per_batch + inner_captures, inner_outs, inner_attrs,
                 f"{node.name}/time")
    outer_body = Graph(nodes=[inner], inputs=per_batch + inner_captures, outputs=inner_outs,
                       name=f"{node.name}/batch", opset=rw.opset)
    return [Node("Scan", own[1:] + captures, list(node.outputs),
                 {"body": outer_body, "num_scan_inputs": len(own) - 1, "captured": captured},
                 node.name)]


UPGRADES = {
    "Scan": _scan8,
    "Softmax": _softmax, "LogSoftmax": _softmax, "Hardmax": _softmax, "TopK": _topk,
    "Clip": _clip, "Pad": _pad,
    "Upsample": _upsample, "Resize": _resize, "Split": _split, "Slice": _slice,
    "Dropout": _dropout, "BatchNormalization": _batchnorm, "Concat": _concat, "Gemm": _gemm,
    "Cast": _cast, "Constant": _constant,
    "Squeeze": _attr_to_input("axes", 1, 13), "Unsqueeze": _attr_to_input("axes", 1, 13),
    "ReduceSum": _attr_to_input("axes", 1, 13), "Reshape": _attr_to_input("shape", 1, 5),
}
for _op in ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
            "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"):
    UPGRADES[_op] = _attr_to_input("axes", 1, 18)
for _op in ("Add", "Sub", "Mul", "Div", "Pow", "PRelu", "And", "Or", "Xor"):
    UPGRADES[_op] = _legacy_broadcast
# ops an old form turns into: the importer accepts Upsample when Resize is supported
UPGRADE_TARGETS = {"Upsample": ("Resize",)}
