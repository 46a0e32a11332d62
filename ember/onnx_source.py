"""The ONNX model ``ember.load`` read, kept so that its Session pickles (runtime/pickling.py).

The Session keeps the ONNX bytes (the caller's own ``bytes`` object when it passed one, so
nothing is copied; a file's bytes otherwise: the file's size in memory). Weights in external
files are not held beside the Session's own copies: each file's size and modification time are
recorded at load, and the file is read when the Session is pickled — one changed since load is
refused, not shipped. A worker rebuilds the model by importing the bytes (external files
written to a temporary folder for the importer, which reads them into memory).

This lives in ``ember/`` because it imports the ONNX importer, which ``runtime/`` may not.
"""
from __future__ import annotations

import os
import tempfile

from .graph.errors import ModelError
from .graph.ir import Graph


class OnnxSource:
    """The ONNX model a Session was loaded from: its bytes, and for external data the folder
    and ``{location: (size, mtime_ns)}`` of every file its tensors name."""

    def __init__(self, data: bytes, folder: str | None, external: dict):
        self.data, self.folder, self.external = data, folder, external

    @classmethod
    def capture(cls, model) -> OnnxSource:
        """The source of ``model`` as ``ember.load`` received it (a path, bytes or an
        ``onnx.ModelProto``), called after it imported: every file it names exists."""
        if isinstance(model, bytes):
            return cls(model, None, {})
        if isinstance(model, (bytearray, memoryview)):
            return cls(bytes(model), None, {})
        if isinstance(model, (str, os.PathLike)):
            path = os.fspath(model)
            with open(path, "rb") as f:
                data = f.read()
            folder = os.path.dirname(os.path.abspath(path))
            return cls(data, folder, {loc: _stamp(os.path.join(folder, loc))
                                      for loc in external_locations(data)})
        return cls(model.SerializeToString(), None, {})

    def payload(self) -> OnnxModel:
        """What a pickle carries: the bytes, and the external files read now, each checked
        against its size and modification time at load."""
        files = {}
        for loc, stamp in self.external.items():
            path = os.path.join(self.folder or "", loc)
            try:
                if _stamp(path) != stamp:
                    raise ModelError(f"cannot pickle the Session: its external data file "
                                     f"{path!r} changed since the model was loaded; load it "
                                     f"again")
                with open(path, "rb") as f:
                    files[loc] = f.read()
            except OSError as e:
                raise ModelError(f"cannot pickle the Session: its external data file {path!r} "
                                 f"cannot be read: {e.strerror or e}") from None
        return OnnxModel(self.data, files)


class OnnxModel:
    """A pickled Session's model: ONNX bytes and ``{location: contents}`` of its external
    files. ``to_graph()`` imports it; ``source()`` is what the rebuilt Session keeps (the
    bytes, when no external file had to be written out: else it pickles its graph)."""

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

    def source(self) -> OnnxSource | None:
        return None if self.files else OnnxSource(self.data, None, {})


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
