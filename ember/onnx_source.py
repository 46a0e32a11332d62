"""The ONNX model ``ember.load`` read, remembered so that its Session pickles without holding a
second copy of the model (runtime/pickling.py).

* Loaded from ``bytes``: the Session keeps a reference to the caller's own object (immutable:
  nothing is copied).
* Loaded from a path: nothing is held; the file (and every external data file its tensors
  name) is read again when the Session is pickled. A file changed since the load — the model
  file's size or modification time differs, an external file was modified after it — is
  refused with a ModelError rather than shipped as a different model.
* Anything else (a ``bytearray`` the caller may change, an ``onnx.ModelProto``): no source; the
  Session pickles its graph (runtime/pickling.py's ``SerializedGraph``).

A worker rebuilds the model by importing the bytes (external files written to a temporary
folder for the importer, which reads them into memory). This lives in ``ember/`` because it
imports the ONNX importer, which ``runtime/`` may not.
"""
from __future__ import annotations

import os
import tempfile
import time

from .graph.errors import ModelError
from .graph.ir import Graph


class OnnxSource:
    """Where a Session's ONNX model came from: the caller's ``data``, or a ``path`` with its
    ``(size, mtime_ns)`` and the time of the load."""

    def __init__(self, data: bytes | None = None, path: str | None = None,
                 stamp: tuple | None = None, loaded_at: int = 0):
        self.data, self.path, self.stamp, self.loaded_at = data, path, stamp, loaded_at

    @classmethod
    def capture(cls, model) -> OnnxSource | None:
        """The source of ``model`` as ``ember.load`` received it, or None when the Session
        should pickle its graph instead."""
        if isinstance(model, bytes):
            return cls(data=model)
        if isinstance(model, (str, os.PathLike)):
            path = os.path.abspath(os.fspath(model))
            return cls(path=path, stamp=_stamp(path), loaded_at=time.time_ns())
        return None

    def payload(self) -> OnnxModel:
        """What a pickle carries: the ONNX bytes and ``{location: contents}`` of every external
        data file, read now from a path and checked against the load."""
        if self.data is not None:
            return OnnxModel(self.data, {})
        path = self.path or ""
        data = self._read(path, lambda st: (st.st_size, st.st_mtime_ns) == self.stamp)
        folder = os.path.dirname(path)
        files = {loc: self._read(os.path.join(folder, loc),
                                 lambda st: st.st_mtime_ns <= self.loaded_at)
                 for loc in external_locations(data)}
        return OnnxModel(data, files)

    @staticmethod
    def _read(path: str, unchanged) -> bytes:
        try:
            with open(path, "rb") as f:
                if not unchanged(os.fstat(f.fileno())):
                    raise ModelError(f"cannot pickle the Session: {path!r} changed since the "
                                     f"model was loaded; load it again")
                return f.read()
        except OSError as e:
            raise ModelError(f"cannot pickle the Session: {path!r}, read when the model was "
                             f"loaded, cannot be read now: {e.strerror or e}") from None


class OnnxModel:
    """A pickled Session's model: ONNX bytes and ``{location: contents}`` of its external
    files; ``to_graph()`` imports it."""

    def __init__(self, data: bytes, files: dict):
        self.data, self.files = data, files

    def to_graph(self) -> Graph:
        from .importers.onnx import load_onnx
        if not self.files:
            return load_onnx(self.data)
        with tempfile.TemporaryDirectory(prefix="ember-model-") as folder:
            model = os.path.join(folder, "model.onnx")
            with open(model, "wb") as f:
                f.write(self.data)
            for loc, content in self.files.items():
                path = os.path.join(folder, loc)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "wb") as f:
                    f.write(content)
            return load_onnx(model)


def _stamp(path: str) -> tuple:
    st = os.stat(path)
    return (st.st_size, st.st_mtime_ns)


def external_locations(data: bytes) -> list:
    """Every external-data location the model's tensors name (initializers, sparse
    initializers, tensor attributes, subgraphs included), in first-seen order. A model whose
    bytes never spell the key ``location`` names none (no second parse)."""
    if b"location" not in data:
        return []
    from .importers.onnx_wire import parse_model
    model = parse_model(data)
    found: dict = {}

    def tensor(t):
        if t is not None and t.external_data:
            loc = {e.key: e.value for e in t.external_data}.get("location")
            if loc:
                found.setdefault(loc, None)

    pending = [model.graph]
    while pending:
        g = pending.pop()
        for t in g.initializer:
            tensor(t)
        for sp in g.sparse_initializer:
            tensor(sp.values)
            tensor(sp.indices)
        for node in g.node:
            for a in node.attribute:
                tensor(a.t)
                for t in a.tensors:
                    tensor(t)
                for sp in [a.sparse_tensor, *a.sparse_tensors]:
                    if sp is not None:
                        tensor(sp.values)
                        tensor(sp.indices)
                if a.g is not None:
                    pending.append(a.g)
                pending.extend(a.graphs)
    return list(found)
