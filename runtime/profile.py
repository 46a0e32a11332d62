"""Per-node timing of a compiled plan: where the time goes, and how fast each hot node runs.

Every profiled pass starts from the real inputs: a plan reuses input bytes for later values, so
a pass run on what the previous pass left behind times different numbers (NaNs, denormals, an
index input overwritten by floats) — or raises. Times are medians over the passes."""
from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..graph.cost import node_macs


@dataclass
class NodeTime:
    name: str
    op_type: str
    ms: float          # median time per run
    share: float       # fraction of the summed node time
    gflops: float      # 2·MACs / time (0 for ops without MACs)
    kernel: bool       # False when the node ran its numpy reference
    outputs: list = field(default_factory=list)   # the values the node writes
    index: int = 0     # its place in the plan's order
    shapes: dict = field(default_factory=dict)    # every input and output value -> its shape


class Profile(list):
    """A list of NodeTime, slowest first; ``str()`` gives the table. ``run_ms`` is the median
    time of a whole run of the plan (no per-node clock reads), to set the node sum against.
    ``passes``: every profiled pass as it happened, ``[(row, start s, seconds), …]`` in plan
    order (start on ``time.perf_counter``'s clock), for ``to_chrome_trace``."""

    run_ms: float = 0.0
    threads: int = 1

    def __init__(self, rows: Iterable[NodeTime] = ()) -> None:
        super().__init__(rows)
        self.passes: list = []

    def to_chrome_trace(self, path: str | os.PathLike) -> None:
        """Write the profiled passes in the Chrome trace event format — the JSON that
        chrome://tracing and Perfetto (ui.perfetto.dev) open, as onnxruntime's and PyTorch's
        profilers write it: one complete event (``"ph": "X"``, ``ts``/``dur`` in µs) per node
        per pass, nested in one event per pass, with the op type, every input and output
        shape, MACs-based GFLOP/s and whether a kernel or the numpy reference ran in
        ``args``."""
        write_json(path, chrome_trace(self))

    def __str__(self):
        total = sum(r.ms for r in self)
        lines = [f"{'node':36s} {'op':20s} {'ms':>9s} {'share':>6s} {'GFLOP/s':>8s}  path"]
        for r in self:
            lines.append(f"{r.name[:36]:36s} {r.op_type[:20]:20s} {r.ms:9.3f} "
                         f"{100 * r.share:5.1f}% {r.gflops:8.1f}  "
                         f"{'kernel' if r.kernel else 'numpy'}")
        lines.append(f"{'total (sum of nodes)':57s} {total:9.3f}")
        lines.append(f"{'whole run (median)':57s} {self.run_ms:9.3f}")
        return "\n".join(lines)


def profile_steps(compiled, ctx, runs: int, refeed) -> Profile:
    """Time each of the context's steps over ``runs`` passes, then ``runs`` whole runs;
    ``refeed()`` copies the real inputs into the arena before every pass (not timed)."""
    steps = ctx.steps
    times: list[list[float]] = [[] for _ in steps]
    passes = []
    for _ in range(runs):
        refeed()
        timeline = []
        for k, (node, step) in enumerate(steps):
            t = time.perf_counter()
            step()
            secs = time.perf_counter() - t
            times[k].append(secs)
            timeline.append((k, t, secs))
        passes.append(timeline)
    whole = []
    for _ in range(runs):
        refeed()
        t = time.perf_counter()
        ctx.runner.run()
        whole.append(time.perf_counter() - t)
    medians = [statistics.median(ts) for ts in times]
    total = sum(medians) or 1.0
    types = compiled.graph.types
    made = []
    for k, ((node, step), secs) in enumerate(zip(steps, medians)):
        macs = node_macs(node, types)
        shapes = {v: tuple(int(d) for d in types[v].shape)
                  for v in [*node.inputs, *node.outputs] if v and v in types}
        made.append(NodeTime(node.name, node.op_type, secs * 1e3, secs / total,
                             2 * macs / secs / 1e9 if macs and secs > 0 else 0.0,
                             not getattr(step, "reference", False), list(node.outputs), k,
                             shapes))
    rows = Profile(sorted(made, key=lambda r: -r.ms))
    rows.passes = [[(made[k], t, secs) for k, t, secs in timeline] for timeline in passes]
    rows.run_ms = statistics.median(whole) * 1e3
    rows.threads = compiled.threads
    return rows


def chrome_trace(profile: Profile) -> dict:
    """The Trace Event Format's JSON object form (``traceEvents`` plus metadata): times in
    µs from the first pass's start, everything on this process and one thread (the plan runs
    its nodes in order; a node's parallel loops are inside its event)."""
    pid, tid = os.getpid(), 0
    events = [{"name": "process_name", "ph": "M", "pid": pid, "tid": tid,
               "args": {"name": "ember"}},
              {"name": "thread_name", "ph": "M", "pid": pid, "tid": tid,
               "args": {"name": f"plan ({profile.threads} threads)"}}]
    origin = profile.passes[0][0][1] if profile.passes and profile.passes[0] else 0.0

    def us(seconds: float) -> float:
        return round(seconds * 1e6, 3)

    for number, timeline in enumerate(profile.passes):
        if not timeline:
            continue
        start, (_, last, last_secs) = timeline[0][1], timeline[-1]
        events.append({"name": f"pass {number}", "cat": "pass", "ph": "X", "pid": pid,
                       "tid": tid, "ts": us(start - origin), "dur": us(last + last_secs - start),
                       "args": {"pass": number, "nodes": len(timeline)}})
        for row, t, secs in timeline:
            events.append({"name": row.name, "cat": row.op_type, "ph": "X", "pid": pid,
                           "tid": tid, "ts": us(t - origin), "dur": us(secs),
                           "args": {"op_type": row.op_type, "index": row.index,
                                    "shapes": {v: list(s) for v, s in row.shapes.items()},
                                    "path": "kernel" if row.kernel else "numpy",
                                    "gflops": round(row.gflops, 3), "pass": number}})
    return {"traceEvents": events, "displayTimeUnit": "ms",
            "otherData": {"producer": "ember", "run_ms": profile.run_ms,
                          "threads": profile.threads}}


def write_json(path, obj) -> None:
    from ..graph.errors import EmberError
    try:
        with open(os.fspath(path), "w") as f:
            json.dump(obj, f)
    except OSError as e:
        raise EmberError(f"cannot write the trace {os.fspath(path)!r}: "
                         f"{e.strerror or e}") from None


def time_interleaved(fns: dict, runs: int, warmup: int = 3, on_round=None) -> dict:
    """Median seconds of each zero-argument callable, timed in turn (a, b, a, b, …) so that a
    noisy neighbour slows every contender alike. ``on_round(seconds)``, when given, is called
    after the warm-up (with its seconds for one round) and after every timed round (a
    progress bar)."""
    t0 = time.perf_counter()
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    if on_round is not None:
        on_round((time.perf_counter() - t0) / max(1, warmup))
    times: dict = {k: [] for k in fns}
    for _ in range(runs):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
        if on_round is not None:
            on_round(sum(v[-1] for v in times.values()))
    return {k: statistics.median(v) for k, v in times.items()}
