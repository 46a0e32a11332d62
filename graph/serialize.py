"""IR Graph <-> bytes, and the safe encoding of nested data with arrays that it is built on.

Used by checkpoints. Nothing here can execute code from the data it reads: structure is JSON and
arrays are raw little-endian bytes described by (dtype, shape, offset) from a short list of
plain numeric dtypes — no pickle, no zip, no object arrays. A reader checks every offset, size
and dtype before touching the bytes, so a hostile file fails with ``ModelError`` instead.

Layout of ``to_bytes``: ``b"EMBERGRAPH1\\n"`` + 8-byte little-endian header length + header JSON
+ array bytes. (Checkpoints embed the graph's JSON and arrays in their own file instead.)
"""
from __future__ import annotations

import json
import struct

import numpy as np

from .errors import ModelError
from .ir import Graph, Node, TensorType
from .ops import TRAINING_DOMAIN, is_supported

# Dtypes an array may have (the IR's tensors, optimizer state, RNG state stays JSON).
ALLOWED_DTYPES = frozenset({"float16", "float32", "float64", "int8", "int16", "int32", "int64",
                            "uint8", "uint16", "uint32", "uint64", "bool"})
MAGIC = b"EMBERGRAPH1\n"
ALIGN = 64


# ---- nested data with arrays -----------------------------------------------------------------
class ArrayWriter:
    """Collects arrays for one byte payload; ``ref(array)`` returns the JSON stand-in. The
    arrays are kept (as little-endian C-order copies only when they are not already) and
    written by ``chunks()``, so a big checkpoint is streamed rather than built in memory."""

    def __init__(self):
        self.table: list = []     # [dtype, shape, offset, nbytes] per array
        self._arrays: list = []   # (padding before, array)
        self.size = 0

    def ref(self, a: np.ndarray) -> dict:
        a = np.asarray(a)
        if a.dtype.name not in ALLOWED_DTYPES:
            raise ModelError(f"cannot store an array of dtype {a.dtype} (allowed: "
                             f"{sorted(ALLOWED_DTYPES)})")
        want = a.dtype.newbyteorder("<")
        if a.dtype != want or not a.flags.c_contiguous:
            a = np.array(a, dtype=want, order="C")   # (ascontiguousarray would make 0-d 1-d)
        pad = (-self.size) % ALIGN
        self.size += pad
        self.table.append([a.dtype.name, list(a.shape), self.size, int(a.nbytes)])
        self._arrays.append((pad, a))
        self.size += a.nbytes
        return {"__array__": len(self.table) - 1}

    def chunks(self):
        """The payload, piece by piece (bytes-like objects)."""
        for pad, a in self._arrays:
            if pad:
                yield b"\0" * pad
            if a.nbytes:
                yield memoryview(a.reshape(-1)).cast("B")

    def payload(self) -> bytes:
        return b"".join(bytes(c) for c in self.chunks())


class ArrayReader:
    """Reads arrays described by an ``ArrayWriter`` table out of a payload, checking each entry
    (dtype allowed, shape non-negative ints, bytes inside the payload and matching the shape)."""

    def __init__(self, table, payload: bytes):
        if not isinstance(table, list):
            raise ModelError("array table is not a list")
        self.table, self.payload = table, memoryview(payload)

    def get(self, index) -> np.ndarray:
        if not isinstance(index, int) or isinstance(index, bool) or \
                not 0 <= index < len(self.table):
            raise ModelError(f"array reference {index!r} is out of range")
        entry = self.table[index]
        if not (isinstance(entry, list) and len(entry) == 4):
            raise ModelError(f"array table entry {index} is malformed")
        dtype, shape, offset, nbytes = entry
        if dtype not in ALLOWED_DTYPES:
            raise ModelError(f"array {index} has dtype {dtype!r}, not one of the allowed ones")
        if not isinstance(shape, list) or not all(
                isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2 ** 40
                for d in shape):
            raise ModelError(f"array {index} has an invalid shape {shape!r}")
        dt = np.dtype(dtype).newbyteorder("<")
        count = 1
        for d in shape:
            count *= d
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                   for v in (offset, nbytes)) or nbytes != count * dt.itemsize \
                or offset + nbytes > len(self.payload):
            raise ModelError(f"array {index} ({dtype}{shape}) points outside the data "
                             f"(offset {offset}, {nbytes} bytes, payload {len(self.payload)})")
        a = np.frombuffer(self.payload, dtype=dt, count=count, offset=offset)
        return a.astype(dt.newbyteorder("="), copy=True).reshape(shape)


def encode(obj, arrays: ArrayWriter):
    """JSON-able form of nested dicts/lists/tuples/scalars/arrays. Arrays go to ``arrays``;
    tuples and dicts with non-string keys are tagged so ``decode`` rebuilds them exactly."""
    if isinstance(obj, np.ndarray):
        return arrays.ref(obj)
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj)
    if obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, Graph):
        return {"__graph__": graph_to_json(obj, arrays)}
    if isinstance(obj, TensorType):
        return {"__type__": [obj.dtype.name, [d if isinstance(d, str) else int(d)
                                              for d in obj.shape]]}
    if isinstance(obj, tuple):
        return {"__tuple__": [encode(v, arrays) for v in obj]}
    if isinstance(obj, list):
        return [encode(v, arrays) for v in obj]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: encode(v, arrays) for k, v in obj.items()}
        return {"__dict__": [[encode(k, arrays), encode(v, arrays)] for k, v in obj.items()]}
    raise ModelError(f"cannot store a {type(obj).__name__} ({obj!r:.60})")


def decode(obj, arrays: ArrayReader, depth: int = 0):
    """Inverse of ``encode``."""
    if depth > 64:
        raise ModelError("data nested too deeply")
    if isinstance(obj, list):
        return [decode(v, arrays, depth + 1) for v in obj]
    if isinstance(obj, dict):
        if len(obj) == 1:
            (tag, v), = obj.items()
            if tag == "__array__":
                return arrays.get(v)
            if tag == "__tuple__" and isinstance(v, list):
                return tuple(decode(x, arrays, depth + 1) for x in v)
            if tag == "__dict__" and isinstance(v, list):
                out = {}
                for kv in v:
                    if not (isinstance(kv, list) and len(kv) == 2):
                        raise ModelError("malformed tagged dict")
                    key = decode(kv[0], arrays, depth + 1)
                    if isinstance(key, (list, dict, np.ndarray)):
                        raise ModelError("unhashable dict key")
                    out[key] = decode(kv[1], arrays, depth + 1)
                return out
            if tag == "__graph__":
                return graph_from_json(v, arrays, subgraph=True)
            if tag == "__type__":
                if not (isinstance(v, list) and len(v) == 2 and v[0] in ALLOWED_DTYPES
                        and isinstance(v[1], list)
                        and all(isinstance(d, (int, str)) for d in v[1])):
                    raise ModelError(f"malformed tensor type {v!r:.60}")
                return TensorType(v[0], tuple(v[1]))
        return {k: decode(v, arrays, depth + 1) for k, v in obj.items()}
    return obj


# ---- graphs ----------------------------------------------------------------------------------
def graph_to_json(graph: Graph, arrays: ArrayWriter) -> dict:
    """A JSON-able description of ``graph`` (initializers go to ``arrays``)."""
    return {
        "name": graph.name, "opset": int(graph.opset),
        "inputs": list(graph.inputs), "outputs": list(graph.outputs),
        "nodes": [{"op_type": n.op_type, "inputs": list(n.inputs), "outputs": list(n.outputs),
                   "attrs": encode(n.attrs, arrays), "name": n.name, "domain": n.domain}
                  for n in graph.nodes],
        "initializers": {k: arrays.ref(v) for k, v in graph.initializers.items()},
        "types": {k: encode(t, arrays) for k, t in graph.types.items()},
        "metadata": encode(graph.metadata, arrays),
    }


def _strs(v, what) -> list:
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
        raise ModelError(f"graph {what} must be a list of names")
    return list(v)


def _stored_domain(op_type: str, domain: str) -> str:
    """The domain of a stored node. Graphs saved before ember's training ops had a domain of
    their own hold them in the default one (e.g. a ``SumToShape`` or ``MSELoss`` built into a
    checkpointed model): a default-domain name only the training domain registers means that
    training op, so those files restore as they always did."""
    if domain == "" and not is_supported(op_type) and is_supported(op_type, TRAINING_DOMAIN):
        return TRAINING_DOMAIN
    return domain


def graph_from_json(d, arrays: ArrayReader, subgraph: bool = False) -> Graph:
    """Rebuild a Graph, checking the structure (names, node fields, types, topological order).
    Op types are checked by the caller's shape inference (unknown op → UnsupportedOpError).
    ``subgraph``: an If branch or Loop/Scan body, whose inputs may be untyped (its op infers
    them)."""
    if not isinstance(d, dict):
        raise ModelError("graph description is not an object")
    try:
        g = Graph(name=str(d.get("name", "graph")), opset=int(d.get("opset", 0)),
                  inputs=_strs(d["inputs"], "inputs"), outputs=_strs(d["outputs"], "outputs"))
        inits = d["initializers"]
        if not isinstance(inits, dict):
            raise ModelError("graph initializers must be an object")
        for k, ref in inits.items():
            if not (isinstance(ref, dict) and "__array__" in ref):
                raise ModelError(f"initializer {k!r} is not an array reference")
            g.initializers[k] = arrays.get(ref["__array__"])
        types = d.get("types", {})
        if not isinstance(types, dict):
            raise ModelError("graph types must be an object")
        for k, t in types.items():
            t = decode(t, arrays)
            if not isinstance(t, TensorType):
                raise ModelError(f"type of {k!r} is malformed")
            g.types[k] = t
        nodes = d["nodes"]
        if not isinstance(nodes, list):
            raise ModelError("graph nodes must be a list")
        for nd in nodes:
            if not isinstance(nd, dict):
                raise ModelError("a node is not an object")
            attrs = decode(nd.get("attrs", {}), arrays)
            if not isinstance(attrs, dict) or not all(isinstance(k, str) for k in attrs):
                raise ModelError(f"node {nd.get('name')!r} has malformed attributes")
            op_type, name, domain = nd["op_type"], nd.get("name", ""), nd.get("domain", "")
            if not all(isinstance(v, str) for v in (op_type, name, domain)):
                raise ModelError("node op_type, name and domain must be strings")
            g.nodes.append(Node(op_type, _strs(nd["inputs"], "node inputs"),
                                _strs(nd["outputs"], "node outputs"), attrs, name,
                                _stored_domain(op_type, domain)))
        meta = decode(d.get("metadata", {}), arrays)
        if not isinstance(meta, dict):
            raise ModelError("graph metadata must be an object")
        g.metadata = meta
    except (KeyError, TypeError, ValueError) as e:
        raise ModelError(f"malformed graph description: {type(e).__name__}: {e}") from None
    for name in g.inputs:
        if name not in g.types and not subgraph:
            raise ModelError(f"graph input {name!r} has no type")
    g.toposort()
    return g


def to_bytes(graph: Graph) -> bytes:
    arrays = ArrayWriter()
    body = graph_to_json(graph, arrays)
    header = json.dumps({"graph": body, "arrays": arrays.table}).encode()
    return MAGIC + struct.pack("<Q", len(header)) + header + arrays.payload()


def from_bytes(data: bytes) -> Graph:
    data = bytes(data)
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + 8:
        raise ModelError("not an ember graph (bad magic)")
    (n,) = struct.unpack_from("<Q", data, len(MAGIC))
    start = len(MAGIC) + 8
    if start + n > len(data):
        raise ModelError("ember graph is truncated")
    try:
        header = json.loads(data[start:start + n])
    except ValueError as e:
        raise ModelError(f"ember graph header is not valid JSON: {e}") from None
    if not isinstance(header, dict):
        raise ModelError("ember graph header is not an object")
    reader = ArrayReader(header.get("arrays"), data[start + n:])
    return graph_from_json(header.get("graph"), reader)
