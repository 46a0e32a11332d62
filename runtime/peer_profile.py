"""onnxruntime's own per-node profile, matched node by node to ember's.

onnxruntime rewrites the graph before it runs it: a node it moved to its channel-blocked layout
is renamed after its output plus ``_nchwc``, an activation it fused keeps the producer's name or
takes the activation's output, and it adds layout reorders of its own. A row of onnxruntime's
profile is matched to the ember node that has that name or writes that output; the rows that
match nothing (the reorders, nodes one runtime fused and the other did not) are listed apart,
so the two totals stay comparable."""
from __future__ import annotations

import json
import os
import statistics
import tempfile
from dataclasses import dataclass

from ..graph.errors import EmberError

NCHWC_SUFFIX = "_nchwc"
KERNEL_SUFFIX = "_kernel_time"


@dataclass
class PeerNodeTime:
    name: str          # onnxruntime's node name (after its rewrites)
    op_type: str
    ms: float          # median over the profiled runs


def onnxruntime_node_times(model, feeds: dict, threads: int, runs: int) -> list:
    """Run ``model`` (a path or ONNX bytes) ``runs`` times under onnxruntime's profiler and
    return one PeerNodeTime per node, in execution order, with its median kernel time."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise EmberError("comparing profiles needs onnxruntime (pip install onnxruntime)") \
            from None
    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.enable_profiling = True
        opts.profile_file_prefix = os.path.join(tmp, "ort")
        peer = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        for _ in range(runs + 1):      # the first run prepares kernels: its times are dropped
            peer.run(None, feeds)
        with open(peer.end_profiling()) as f:
            events = json.load(f)
    times, ops = {}, {}
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith(KERNEL_SUFFIX):
            continue
        name = e["name"][:-len(KERNEL_SUFFIX)]
        times.setdefault(name, []).append(e["dur"] / 1e3)
        ops[name] = e.get("args", {}).get("op_name", "?")
    rows = []
    for name, ts in times.items():
        per_run = len(ts) // (runs + 1) or 1
        kept = ts[per_run:] or ts       # drop the first run's calls
        rows.append(PeerNodeTime(name, ops[name], statistics.median(kept) * per_run))
    return rows


def match_nodes(profile, peer_rows: list) -> tuple:
    """Pair each ember row with the onnxruntime rows it corresponds to: ``(pairs, unmatched)``
    where ``pairs`` is a list of (ember row, [peer rows]) in ember's order of the profile, and
    ``unmatched`` the peer rows no ember node claims."""
    by_key = {}
    for row in profile:
        by_key.setdefault(row.name, row)
        for out in row.outputs:
            by_key.setdefault(out, row)
    claimed = {id(r): [] for r in profile}
    unmatched = []
    for peer in peer_rows:
        key = peer.name[:-len(NCHWC_SUFFIX)] if peer.name.endswith(NCHWC_SUFFIX) else peer.name
        row = by_key.get(key) or by_key.get(peer.name)
        if row is None:
            unmatched.append(peer)
        else:
            claimed[id(row)].append(peer)
    return [(r, claimed[id(r)]) for r in profile], unmatched


def comparison_table(profile, peer_rows: list) -> str:
    """Each ember node's median time beside onnxruntime's for the same node, slowest first."""
    pairs, unmatched = match_nodes(profile, peer_rows)
    lines = [f"{'node':32s} {'op':16s} {'ember ms':>9s} {'ort ms':>9s} {'ratio':>6s}  "
             f"onnxruntime node"]
    for row, peers in pairs:
        ort_ms = sum(p.ms for p in peers)
        ratio = f"{row.ms / ort_ms:6.2f}" if peers and ort_ms > 0 else f"{'—':>6s}"
        ort_txt = f"{ort_ms:9.3f}" if peers else f"{'—':>9s}"
        lines.append(f"{row.name[:32]:32s} {row.op_type[:16]:16s} {row.ms:9.3f} {ort_txt} "
                     f"{ratio}  {', '.join(p.name for p in peers)[:40]}")
    for p in unmatched:
        lines.append(f"{'(onnxruntime only)':32s} {p.op_type[:16]:16s} {'—':>9s} "
                     f"{p.ms:9.3f} {'—':>6s}  {p.name[:40]}")
    ember_total = sum(r.ms for r in profile)
    ort_total = sum(p.ms for p in peer_rows)
    lines.append(f"{'total (sum of nodes)':49s} {ember_total:9.3f} {ort_total:9.3f} "
                 f"{ember_total / ort_total if ort_total else float('nan'):6.2f}")
    return "\n".join(lines)
