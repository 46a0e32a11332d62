"""What a pickled Session carries, and how a worker process rebuilds it.

A Session pickles as the model it was given plus the options the caller chose — never its
arenas or compiled plans, which the worker compiles on first use for its own CPU. The model is
an object with ``to_graph()``: for one ``ember.load`` read from a path or bytes, the ONNX bytes
and external files (``ember/onnx_source.py``); else (a graph built in Python, or a model the
caller may since have changed) ``SerializedGraph``, the Session's own graph in ember's safe
serialized form (graph/serialize.py). A rebuilt Session pickles its graph in turn: it keeps no
copy of the bytes it came from.

Options travel only when the caller gave them. A thread count the caller did not choose is
recomputed in the worker — the CPUs *it* may use, capped by ``OMP_NUM_THREADS`` when its pool
set one (Dask's and joblib's workers do) — so a Dask or joblib pool never runs N workers × N
threads (a plain multiprocessing pool sets nothing: give ``threads=`` or ``EMBER_NUM_THREADS``).
"""
from __future__ import annotations

import os

from ..graph.ir import Graph


class SerializedGraph:
    """A graph built in Python, as pickled: ``graph/serialize.py``'s bytes."""

    def __init__(self, data: bytes):
        self.data = data

    @classmethod
    def of(cls, graph: Graph) -> SerializedGraph:
        from ..graph.serialize import to_bytes
        return cls(to_bytes(graph))

    def to_graph(self) -> Graph:
        from ..graph.serialize import from_bytes
        return from_bytes(self.data)


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


def rebuild_session(cls, model, options: dict, external: dict):
    """Unpickle: the Session, compiled lazily on its first run in this process."""
    return cls._rebuilt(model.to_graph(), external, options, worker_threads())
