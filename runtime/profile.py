"""Per-node timing of a compiled plan: where the time goes, and how fast each hot node runs."""
from __future__ import annotations

import time
from dataclasses import dataclass

from ..graph.cost import node_macs


@dataclass
class NodeTime:
    name: str
    op_type: str
    ms: float          # mean time per run
    share: float       # fraction of the summed node time
    gflops: float      # 2·MACs / time (0 for ops without MACs)
    kernel: bool       # False when the node ran its numpy reference


class Profile(list):
    """A list of NodeTime, slowest first; ``str()`` gives the table."""

    def __str__(self):
        total = sum(r.ms for r in self)
        lines = [f"{'node':36s} {'op':20s} {'ms':>9s} {'share':>6s} {'GFLOP/s':>8s}  path"]
        for r in self:
            lines.append(f"{r.name[:36]:36s} {r.op_type[:20]:20s} {r.ms:9.3f} "
                         f"{100 * r.share:5.1f}% {r.gflops:8.1f}  "
                         f"{'kernel' if r.kernel else 'numpy'}")
        lines.append(f"{'total (sum of nodes)':57s} {total:9.3f}")
        return "\n".join(lines)


def profile_steps(compiled, ctx, runs: int) -> Profile:
    """Run the context's steps ``runs`` times, timing each; feeds must already be copied in."""
    steps = ctx.steps
    acc = [0.0] * len(steps)
    for _ in range(runs):
        for k, (node, step) in enumerate(steps):
            t = time.perf_counter()
            step()
            acc[k] += time.perf_counter() - t
    total = sum(acc) or 1.0
    rows = Profile()
    for (node, step), secs in zip(steps, acc):
        per_run = secs / runs
        macs = node_macs(node, compiled.graph.types)
        rows.append(NodeTime(node.name, node.op_type, per_run * 1e3, secs / total,
                             2 * macs / per_run / 1e9 if macs and per_run > 0 else 0.0,
                             not getattr(step, "reference", False)))
    rows.sort(key=lambda r: -r.ms)
    return rows


def time_interleaved(fns: dict, runs: int, warmup: int = 3) -> dict:
    """Median seconds of each zero-argument callable, timed in turn (a, b, a, b, …) so that a
    noisy neighbour slows every contender alike."""
    import statistics
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
