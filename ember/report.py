"""``ember report``: one self-contained HTML page per model, to look at instead of a table.

The page holds the graph after the passes (fused nodes as one) drawn by ember's own layered
layout (``report_layout``), each node coloured by its share of the time when profiled; the
memory plan as a picture; a roofline of the hot nodes under this machine's peak GFLOP/s and
memory bandwidth, both measured while the report is made; and the machine and ember version.
Everything is inline (SVG, CSS, a few lines of script), so the file opens offline and can be
mailed or attached to a bug report as it is.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from html import escape

import numpy as np

from .graph.cost import node_macs, parameter_count
from .graph.errors import InputError
from .report_assets import CSS, SCRIPT
from .report_charts import fmt_bytes, memory_svg, roofline_svg
from .report_graph import PATH_FILL, graph_svg, heat, shape_text
from .report_machine import Machine, measure_machine

# the fraction of the time a node must take to be drawn on the roofline
HOT_SHARE = 0.005


@dataclass
class NodeFacts:
    """What the page shows of one node of the compiled graph."""

    index: int
    name: str
    op: str             # op type, with the fused activation: "Conv+Relu"
    inputs: list        # "name: 1×3×224×224" per input (weights included)
    outputs: list
    macs: int
    bytes_moved: int    # every input (weights included) read once, every output written once
    path: str           # "kernel", "numpy" (reference) or "view" (no step: no copy)
    ms: float | None = None
    share: float | None = None
    gflops: float | None = None

    @property
    def intensity(self) -> float:
        """FLOP per byte moved (2·MACs / bytes), the roofline's x."""
        return 2 * self.macs / self.bytes_moved if self.bytes_moved else 0.0


def _op_label(node) -> str:
    act = node.attrs.get("activation", "")
    return f"{node.op_type}+{act}" if act else node.op_type


def node_facts(compiled, profile=None) -> list:
    """Facts of every node of ``compiled.graph`` in execution order, with times when a
    ``Profile`` of the same plan is given (matched by the values each node writes)."""
    g = compiled.graph
    ctx = compiled.acquire()
    try:
        stepped = {id(node): step for node, step in ctx.steps}
    finally:
        compiled.release(ctx)
    timed = {tuple(r.outputs): r for r in profile or ()}
    facts = []
    for i, node in enumerate(g.nodes):
        step = stepped.get(id(node))
        path = "view" if step is None else \
            "numpy" if getattr(step, "reference", False) else "kernel"
        ins = [n for n in node.inputs if n and n in g.types]
        outs = [n for n in node.outputs if n and n in g.types]
        moved = sum(g.types[n].nbytes for n in ins + outs)
        row = timed.get(tuple(node.outputs))
        facts.append(NodeFacts(
            i, node.name, _op_label(node),
            [f"{n}: {shape_text(g.types[n])}" for n in ins],
            [f"{n}: {shape_text(g.types[n])}" for n in outs],
            node_macs(node, g.types), moved, path,
            row.ms if row else None, row.share if row else None, row.gflops if row else None))
    return facts


def _json_for_script(value) -> str:
    """JSON safe inside <script>: no '</' or '<!--' can end the element early."""
    return json.dumps(value, separators=(",", ":")).replace("<", "\\u003c")


def roofline_points(facts: list, machine: Machine) -> list:
    """Profiled: the nodes with MACs taking at least ``HOT_SHARE`` of the time, at their
    measured GFLOP/s. Not profiled: every node with MACs, on the roof (its best possible)."""
    if any(f.share is not None for f in facts):
        return [(f.index, f"{f.op} {f.name}", f.intensity, f.gflops, f.share, True)
                for f in facts if f.share is not None and f.macs and f.share >= HOT_SHARE
                and f.gflops]
    total = sum(f.macs for f in facts) or 1
    return [(f.index, f"{f.op} {f.name}", f.intensity,
             min(machine.peak_gflops, machine.bandwidth_gbs * f.intensity), f.macs / total,
             False) for f in facts if f.macs and f.bytes_moved]


def render_html(model_name: str, compiled, facts: list, machine: Machine, inputs: dict,
                imported_nodes: int, params: int, run_ms: float | None) -> str:
    plan = compiled.plan
    macs = sum(f.macs for f in facts)
    profiled = any(f.ms is not None for f in facts)
    kinds = {k: sum(f.path == k for f in facts) for k in PATH_FILL}
    head = (f"{len(facts)} nodes after passes ({imported_nodes} as loaded) · "
            f"{macs:,} MACs · {params:,} parameters · arena {fmt_bytes(plan.arena_bytes)} · "
            f"inputs " + ", ".join(f"{escape(n)} {'×'.join(map(str, s))}"
                                   for n, s in inputs.items()))
    if run_ms is not None:
        head += f" · {run_ms:.3f} ms per run (median)"
    rows = "".join(f"<tr><th>{k}</th><td>{escape(str(v))}</td></tr>" for k, v in (
        ("CPU", machine.cpu), ("ISA in use", machine.isa), ("threads", machine.threads),
        ("ember", machine.ember_version),
        ("peak", f"{machine.peak_gflops:.1f} GFLOP/s"),
        ("memory", f"{machine.bandwidth_gbs:.1f} GB/s")))
    if profiled:
        legend = ('colour: share of the time <span style="background:' + heat(0) +
                  '"></span>none <span style="background:' + heat(1) +
                  '"></span>the slowest node; dashed red border: numpy reference path')
        hot = sorted((f for f in facts if f.ms is not None), key=lambda f: -f.ms)[:15]
        table = ('<table><tr><th>node</th><th>op</th><th class="num">ms</th>'
                 '<th class="num">share</th><th class="num">GFLOP/s</th><th>path</th></tr>' +
                 "".join(f'<tr data-index="{f.index}"><td>{escape(f.name[:32])}</td>'
                         f'<td>{escape(f.op)}</td><td class="num">{f.ms:.3f}</td>'
                         f'<td class="num">{100 * f.share:.1f}%</td>'
                         f'<td class="num">{f.gflops:.1f}</td><td>{f.path}</td></tr>'
                         for f in hot) + "</table>")
    else:
        legend = "".join(f'<span style="background:{c}"></span>{k} ({kinds[k]})'
                         for k, c in PATH_FILL.items()) + \
            " — profile with --profile to colour nodes by their share of the time"
        table = '<p class="note">not profiled: run ember report with --profile</p>'
    roof_note = ("each circle a node with MACs taking ≥ 0.5% of the time (area: its share); "
                 if profiled else "not profiled: each hollow circle a node with MACs, on the "
                 "roof where it could run at best (area: its share of the MACs; --profile "
                 "places them at their measured speed); ")
    roofline = roofline_svg(roofline_points(facts, machine), machine.peak_gflops,
                            machine.bandwidth_gbs)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>ember report — {escape(model_name)}</title>
<style>{CSS}</style></head>
<body>
<header><h1>ember report — {escape(model_name)}</h1><div class="facts">{head}</div></header>
<main>
<div class="top">
<section><h2>Graph after the passes</h2>
<div class="tools"><button id="zout" title="zoom out">−</button><button id="zin"
title="zoom in">+</button><button id="zfit">fit</button> <span id="zoom">100%</span></div>
<div id="viewport">{graph_svg(compiled, facts)}</div>
<div class="legend note">{legend}<br>drag to pan, ctrl+wheel to zoom, click a node</div></section>
<section class="charts">
<figure><h2>Memory plan</h2>{memory_svg(plan)}
<figcaption>Each value's lifetime (x: the steps from the node that writes it to its last reader)
at its offset in the arena (y); grey: kernel scratch; black line: bytes live at each step.
Arena {plan.arena_bytes:,} B (red line), lower bound {plan.lower_bound_bytes:,} B (blue dashed:
the most bytes live at any one step, which no placement can beat), naive sum
{plan.naive_bytes:,} B.</figcaption></figure>
<figure><h2>Roofline</h2>{roofline}
<figcaption>{roof_note}x: 2·MACs / bytes the node reads and writes (weights included, each once);
roof: min(peak, bandwidth × intensity), both measured when this report was made (see Machine).
A node above the roof either counts more MACs than it runs (a Winograd convolution is credited
with the direct convolution's MACs) or the peak was measured while other work shared the
cores.</figcaption></figure>
<figure><h2>Slowest nodes</h2>{table}</figure>
</section>
<aside><h2>Machine</h2><div class="panel"><table>{rows}</table>
<p class="note">peak: {escape(machine.peak_how)}.<br>
memory: {escape(machine.bandwidth_how)}.</p></div>
<h2>Node</h2><div class="panel" id="detail"><span class="note">click a node
(or open this page at #node=N)</span></div></aside>
</div>
</main>
<script type="application/json" id="facts">{_json_for_script([asdict(f) for f in facts])}</script>
<script>{SCRIPT}</script>
</body></html>
"""


def build_report(sess, shapes: dict | None = None, profile_runs: int = 0,
                 model_name: str = "model", gemm_n: int = 1024,
                 copy_bytes: int = 64 << 20) -> str:
    """The HTML page for ``sess`` at the given input shapes (symbolic dims 1 when not given).
    ``profile_runs`` > 0 times every node over that many runs (seeded random inputs)."""
    unknown = sorted(set(shapes or {}) - {info.name for info in sess.inputs})
    if unknown:
        raise InputError(f"build_report: shapes names unknown inputs {unknown}; the model's "
                         f"inputs are {[info.name for info in sess.inputs]}")
    compiled = sess.compile(shapes)
    profile, run_ms, inputs = None, None, {}
    for info in sess.inputs:
        inputs[info.name] = tuple(compiled.graph.types[info.name].shape)
    if profile_runs:
        rng = np.random.default_rng(0)
        feeds = {}
        for info in sess.inputs:
            shape = inputs[info.name]
            feeds[info.name] = (rng.standard_normal(shape).astype(info.dtype)
                                if info.dtype.kind == "f" else np.ones(shape, info.dtype))
        profile = sess.profile(feeds, runs=profile_runs)
        run_ms = profile.run_ms
    facts = node_facts(compiled, profile)
    machine = measure_machine(compiled.threads, gemm_n, copy_bytes)
    return render_html(model_name, compiled, facts, machine, inputs, len(sess.graph.nodes),
                       parameter_count(sess.graph), run_ms)


__all__ = ["build_report", "node_facts", "NodeFacts", "roofline_points", "HOT_SHARE"]
