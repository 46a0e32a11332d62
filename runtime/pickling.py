"""What a pickled Session carries, and how a worker process rebuilds it.

A Session pickles as the model it was given plus the options the caller chose — never its
arenas or compiled plans, which the worker compiles on first use for its own CPU:

* loaded from ONNX (``ember.load``): the ONNX bytes kept at load (the caller's own ``bytes``
  object when it passed one, so nothing is copied), and for a model keeping its weights in
  external files, those files' contents. External files are not held in memory beside the
  Session's own weights: their size and modification time are recorded at load and they are
  read when the Session is pickled — a file changed since load is refused, not shipped.
* built in Python (``Session(graph)``, ``ember.nn``): the graph in ember's safe serialized form
  (graph/serialize.py).

Options travel only when the caller gave them. A thread count the caller did not choose is
recomputed in the worker — the CPUs *it* may use, capped by ``OMP_NUM_THREADS`` when its pool
set one (Dask's and joblib's workers do) — so a Dask or joblib pool never runs N workers × N threads (a plain multiprocessing
pool sets nothing: give ``threads=`` or ``EMBER_NUM_THREADS``).
"""
from __future__ import annotations

import os
import tempfile

from ..graph.errors import ModelError


class OnnxSource:
    """The ONNX model a Session was loaded from: its bytes, and for external data the folder
    and ``{location: (size, mtime_ns)}`` of every file its tensors name."""

    def __init__(self, data: bytes, folder: str | None, external: dict):
        self.data, self.folder, self.external = data, folder, external

    @classmethod
    def capture(cls, model) -> "OnnxSource":
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
            locations = external_locations(data)
            return cls(data, folder, {loc: _stamp(os.path.join(folder, loc))
                                      for loc in locations})
        return cls(model.SerializeToString(), None, {})

    def payload(self) -> tuple:
        """``("onnx", bytes, {location: bytes})`` — the external files read now, each checked
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
        return ("onnx", self.data, files)


def _stamp(path: str) -> tuple:
    st = os.stat(path)
    return (st.st_size, st.st_mtime_ns)


def external_locations(data: bytes) -> list:
    """Every external-data location the model's tensors name (initializers, sparse
    initializers, Constant-style tensor attributes, subgraphs included), in first-seen order.
    A model whose bytes never spell the key ``location`` names none (no second parse)."""
    if b"location" not in data:
        return []
    from ..importers.onnx_wire import parse_model
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


def graph_payload(graph) -> tuple:
    from ..graph.serialize import to_bytes
    return ("graph", to_bytes(graph))


def rebuild_graph(payload: tuple):
    """The Graph a payload describes (ONNX with its external files written to a temporary
    folder for the importer, which reads them into memory, or ember's serialized form)."""
    kind = payload[0]
    if kind == "graph":
        from ..graph.serialize import from_bytes
        return from_bytes(payload[1])
    if kind != "onnx":
        raise ModelError(f"not a pickled ember Session (model kind {kind!r})")
    from ..importers.onnx import load_onnx
    _, data, files = payload
    if not files:
        return load_onnx(data)
    with tempfile.TemporaryDirectory(prefix="ember-model-") as folder:
        model = os.path.join(folder, "model.onnx")
        with open(model, "wb") as f:
            f.write(data)
        for loc, content in files.items():
            path = os.path.join(folder, loc)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(content)
        return load_onnx(model)


def worker_threads() -> int | None:
    """The thread count for a Session rebuilt without one chosen: None (ember's default:
    ``EMBER_NUM_THREADS``, else the CPUs this process may use) unless the pool limited native
    thread pools with ``OMP_NUM_THREADS`` (Dask's nanny sets 1, joblib's loky backend its
    share of the cores): then at most that."""
    from .threads import ENV_VAR, default_threads, parse_env_threads
    if parse_env_threads(os.environ.get(ENV_VAR)) is not None:
        return None
    try:
        cap = int(os.environ.get("OMP_NUM_THREADS", "").split(",")[0])
    except ValueError:
        return None
    if cap < 1:
        return None
    return min(cap, default_threads())


def rebuild_session(cls, payload: tuple, options: dict, external: dict):
    """Unpickle: the Session, compiled lazily on its first run in this process."""
    graph = rebuild_graph(payload)
    source = None
    if payload[0] == "onnx" and not payload[2]:
        source = OnnxSource(payload[1], None, {})
    return cls._rebuilt(graph, external, options, source, worker_threads())
