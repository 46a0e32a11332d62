"""Per-node timing of a compiled plan: where the time goes, and how fast each hot node runs.

Every profiled pass starts from the real inputs: a plan reuses input bytes for later values, so
a pass run on what the previous pass left behind times different numbers (NaNs, denormals, an
index input overwritten by floats) — or raises. Times are medians over the passes."""
from __future__ import annotations

import statistics
import time
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


class Profile(list):
    """A list of NodeTime, slowest first; ``str()`` gives the table. ``run_ms`` is the median
    time of a whole run of the plan (no per-node clock reads), to set the node sum against."""

    run_ms: float = 0.0

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
    times = [[] for _ in steps]
    for _ in range(runs):
        refeed()
        for k, (node, step) in enumerate(steps):
            t = time.perf_counter()
            step()
            times[k].append(time.perf_counter() - t)
    whole = []
    for _ in range(runs):
        refeed()
        t = time.perf_counter()
        ctx.runner.run()
        whole.append(time.perf_counter() - t)
    medians = [statistics.median(ts) for ts in times]
    total = sum(medians) or 1.0
    rows = Profile()
    for (node, step), secs in zip(steps, medians):
        macs = node_macs(node, compiled.graph.types)
        rows.append(NodeTime(node.name, node.op_type, secs * 1e3, secs / total,
                             2 * macs / secs / 1e9 if macs and secs > 0 else 0.0,
                             not getattr(step, "reference", False), list(node.outputs)))
    rows.sort(key=lambda r: -r.ms)
    rows.run_ms = statistics.median(whole) * 1e3
    return rows


def time_interleaved(fns: dict, runs: int, warmup: int = 3) -> dict:
    """Median seconds of each zero-argument callable, timed in turn (a, b, a, b, …) so that a
    noisy neighbour slows every contender alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in fns}
    for _ in range(runs):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}
