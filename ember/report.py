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
import time
from dataclasses import asdict, dataclass
from html import escape

import numpy as np

from .graph.cost import node_macs, parameter_count
from .graph.errors import InputError
from .report_charts import fmt_bytes, memory_svg, roofline_svg
from .report_layout import layered_layout

# the fraction of the time a node must take to be drawn on the roofline
HOT_SHARE = 0.005
# timed runs of the roofs' measurements (the best one counts)
PEAK_RUNS, COPY_RUNS = 8, 5


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


@dataclass
class Machine:
    cpu: str
    isa: str
    threads: int
    ember_version: str
    peak_gflops: float
    bandwidth_gbs: float
    peak_how: str
    bandwidth_how: str


def _shape_text(t) -> str:
    return "×".join(str(d) for d in t.shape) if t.shape else "scalar"


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
            [f"{n}: {_shape_text(g.types[n])}" for n in ins],
            [f"{n}: {_shape_text(g.types[n])}" for n in outs],
            node_macs(node, g.types), moved, path,
            row.ms if row else None, row.share if row else None, row.gflops if row else None))
    return facts


# ---- the machine's roofs, measured now -----------------------------------------------------------
def measure_peak_gflops(threads: int, n: int = 1024, runs: int = PEAK_RUNS) -> float:
    """GFLOP/s of ember's own GEMM on an n×n by n×n MatMul (best of ``runs`` after a warm-up
    run): the compute roof the kernels can actually reach here, not a data-sheet number."""
    from .graph.builder import Builder
    from .runtime.session import Session
    b = Builder("peak", seed=0)
    a = b.input("a", (n, n))
    w = b.parameter("w", (n, n), init="uniform")
    b.output(b.matmul(a, w), "y")
    sess = Session(b.build(), threads=threads)
    feeds = {"a": np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)}
    sess.run(None, feeds)
    best = min(_timed(lambda: sess.run(None, feeds)) for _ in range(runs))
    return 2 * n ** 3 / best / 1e9


def measure_bandwidth_gbs(nbytes: int = 64 << 20, runs: int = COPY_RUNS) -> float:
    """GB/s of a numpy copy of a buffer far larger than the caches (best of ``runs``), counting
    the bytes read and the bytes written."""
    src = np.ones(nbytes // 4, np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    best = min(_timed(lambda: np.copyto(dst, src)) for _ in range(runs))
    return 2 * src.nbytes / best / 1e9


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def measure_machine(threads: int, gemm_n: int = 1024, copy_bytes: int = 64 << 20) -> Machine:
    from . import __version__
    from .runtime.cpu import cpu_info
    info = cpu_info()
    return Machine(
        info["cpu"], info["isa"], threads, __version__,
        measure_peak_gflops(threads, gemm_n), measure_bandwidth_gbs(copy_bytes),
        f"ember's GEMM on a {gemm_n}×{gemm_n}×{gemm_n} float32 MatMul, {threads} threads, "
        f"best of {PEAK_RUNS} runs",
        f"numpy copy of a {fmt_bytes(copy_bytes)} buffer (bytes read + written), one thread, "
        f"best of {COPY_RUNS}")


# ---- the graph as SVG ----------------------------------------------------------------------------
NODE_H = 40
PATH_FILL = {"kernel": "#dbe9f6", "numpy": "#fde2d9", "view": "#eeeeee"}


def _heat(t: float) -> str:
    """Light yellow (no time) to deep red (the slowest node)."""
    lo, hi = (255, 247, 214), (200, 30, 20)
    return "#" + "".join(f"{round(a + (b - a) * t):02x}" for a, b in zip(lo, hi))


def _box_width(label: str, sub: str) -> float:
    """Room for the bold label (~7.2 px a character) and the smaller line below (~6 px)."""
    return min(220.0, max(96.0, 7.2 * len(label) + 18, 6.0 * len(sub) + 16))


def _short(text: str, width: float, char_px: float = 7.2) -> str:
    room = int((width - 14) / char_px)
    return text if len(text) <= room else text[:max(room - 1, 1)] + "…"


def graph_svg(compiled, facts: list) -> str:
    """The fused graph, top to bottom: graph inputs, nodes, graph outputs; one ``g.node`` per
    node (``data-index`` its position in execution order)."""
    g = compiled.graph
    producer = {o: f"n{i}" for i, n in enumerate(g.nodes) for o in n.outputs if o}
    fed = [n for n in g.inputs if n not in compiled.external]
    ids = [f"in:{n}" for n in fed] + [f"n{i}" for i in range(len(g.nodes))] + \
        [f"out:{n}" for n in g.outputs]
    edges = []
    for i, node in enumerate(g.nodes):
        for name in node.inputs:
            if name in producer:
                edges.append((producer[name], f"n{i}"))
            elif name in fed:
                edges.append((f"in:{name}", f"n{i}"))
    for name in g.outputs:
        src = producer.get(name) or (f"in:{name}" if name in fed else None)
        if src:
            edges.append((src, f"out:{name}"))
    label, sub = {}, {}
    for key in ids[:len(fed)] + ids[len(fed) + len(g.nodes):]:
        name = key.split(":", 1)[1]
        t = g.types.get(name)
        label[key], sub[key] = name, _shape_text(t) if t else ""
    for f in facts:
        key = f"n{f.index}"
        label[key] = f.op
        sub[key] = f.outputs[0].split(": ")[-1] if f.outputs else ""
        if f.ms is not None:
            sub[key] += f" · {f.ms:.3f} ms"
    width = {k: _box_width(label[k], sub[k]) for k in ids}
    lay = layered_layout(ids, edges, width, node_height=NODE_H)
    pad = 12
    top = max((f.share or 0 for f in facts), default=0) or 1
    out = [f'<svg id="graph" width="{lay.width + 2 * pad:.0f}" height="{lay.height + 2 * pad:.0f}" '
           f'viewBox="{-pad} {-pad} {lay.width + 2 * pad:.0f} {lay.height + 2 * pad:.0f}" '
           f'data-width="{lay.width + 2 * pad:.0f}" data-height="{lay.height + 2 * pad:.0f}">',
           '<defs><marker id="arrow" viewBox="0 0 8 8" refX="8" refY="4" markerWidth="7" '
           'markerHeight="7" orient="auto"><path d="M0,0 L8,4 L0,8 z" fill="#777"/></marker>'
           '</defs>']
    for (u, v), route in lay.routes.items():
        (x0, y0), (x1, y1) = route[0], route[-1]
        pts = [(x0, y0 + NODE_H / 2)] + route[1:-1] + [(x1, y1 - NODE_H / 2)]
        d = f"M{pts[0][0]:.1f},{pts[0][1]:.1f}"
        for (ax, ay), (bx, by) in zip(pts, pts[1:]):
            my = (ay + by) / 2
            d += f" C{ax:.1f},{my:.1f} {bx:.1f},{my:.1f} {bx:.1f},{by:.1f}"
        out.append(f'<path class="edge" data-from="{escape(u)}" data-to="{escape(v)}" '
                   f'd="{d}" marker-end="url(#arrow)"/>')
    for key in ids:
        x, y, w = lay.x[key], lay.y[key], width[key]
        box = f'x="{x - w / 2:.1f}" y="{y - NODE_H / 2:.1f}" width="{w:.1f}" height="{NODE_H}"'
        if not key.startswith("n"):
            kind, name = key.split(":", 1)
            out.append(f'<g class="io {kind}"><rect {box} rx="18"/>'
                       f'<text x="{x:.1f}" y="{y - 3:.1f}">{escape(_short(name, w))}</text>'
                       f'<text class="sub" x="{x:.1f}" y="{y + 12:.1f}">'
                       f'{escape(_short(sub[key], w, 6.0))}</text>'
                       f'<title>graph {"input" if kind == "in" else "output"} {escape(name)}'
                       f'</title></g>')
            continue
        f = facts[int(key[1:])]
        fill = _heat((f.share or 0) / top) if f.share is not None else PATH_FILL[f.path]
        tip = [f"{f.op} {f.name}", *(f"in  {s}" for s in f.inputs),
               *(f"out {s}" for s in f.outputs), f"MACs {f.macs:,}", f"path {f.path}"]
        if f.ms is not None:
            tip += [f"{f.ms:.3f} ms ({100 * f.share:.1f}%)", f"{f.gflops:.2f} GFLOP/s"]
        dark = " hot" if f.share is not None and f.share / top > 0.55 else ""
        out.append(f'<g class="node {f.path}{dark}" data-index="{f.index}" tabindex="0">'
                   f'<rect {box} rx="5" fill="{fill}"/>'
                   f'<text x="{x:.1f}" y="{y - 3:.1f}">{escape(_short(f.op, w))}</text>'
                   f'<text class="sub" x="{x:.1f}" y="{y + 12:.1f}">'
                   f'{escape(_short(sub[key], w, 6.0))}</text>'
                   f'<title>{escape(chr(10).join(tip))}</title></g>')
    out.append("</svg>")
    return "\n".join(out)


# ---- the page ----------------------------------------------------------------------------------
CSS = """
body{font:13px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#222;
  background:#fafafa}
header{padding:10px 18px;background:#2d2d2d;color:#eee}
header h1{font-size:18px;margin:0 0 2px}
header .facts{color:#bbb}
main{padding:10px 18px}
h2{font-size:15px;margin:14px 0 6px}
.top{display:grid;grid-template-columns:fit-content(46vw) minmax(0,1fr) 320px;gap:14px;
  align-items:start}
#viewport{height:calc(100vh - 150px);min-height:420px;max-width:46vw;overflow:auto;
  border:1px solid #ccc;background:#fff;cursor:grab}
#viewport.dragging{cursor:grabbing}
.tools{margin:0 0 4px}
.tools button{font:inherit;padding:1px 8px;margin-right:4px}
.panel{background:#fff;border:1px solid #ccc;padding:8px 10px;margin-bottom:10px}
table{border-collapse:collapse}
td,th{padding:1px 8px 1px 0;text-align:left;vertical-align:top}
td.num,th.num{text-align:right}
.note{color:#666;font-size:12px}
.charts figure{margin:0 0 12px;background:#fff;border:1px solid #ccc;padding:6px 8px;
  max-width:760px}
.charts figure h2{margin:0 0 4px}
.charts svg{width:100%;height:auto;display:block}
figcaption{font-size:12px;color:#555}
svg text{font:11px system-ui,sans-serif;fill:#222}
#graph text{text-anchor:middle;font-weight:600}
#graph text.sub{font-weight:400;fill:#555;font-size:10px}
#graph .node rect{stroke:#555;stroke-width:1}
#graph .node.hot text{fill:#fff}
#graph .node.numpy rect{stroke:#c0392b;stroke-dasharray:4 2}
#graph .node.selected rect{stroke:#0a58ca;stroke-width:3}
#graph .node{cursor:pointer}
#graph .io rect{fill:#fff;stroke:#888}
#graph .edge{fill:none;stroke:#999;stroke-width:1.2}
.plotbg{fill:#fcfcfc;stroke:#bbb}
.memory .block{fill-opacity:.55;stroke:#333;stroke-width:.4}
.memory .live{fill:none;stroke:#111;stroke-width:1.2}
.arena{stroke:#c0392b;stroke-width:1.5}
.bound{stroke:#0a58ca;stroke-width:1.5;stroke-dasharray:6 3}
.mark{font-weight:600}
.tick{fill:#555;font-size:10px}
.grid{stroke:#e3e3e3}
.roof{fill:none;stroke:#c0392b;stroke-width:2}
.roofline .point{fill:#f28e2b;fill-opacity:.75;stroke:#7a3d00;cursor:pointer}
.roofline .point.attainable{fill:#fff;fill-opacity:.4;stroke-width:1.5}
.legend{max-width:340px}
.legend span{display:inline-block;width:12px;height:12px;border:1px solid #555;
  vertical-align:middle;margin:0 3px 0 10px}
"""

SCRIPT = r"""
(function(){
  var facts = JSON.parse(document.getElementById('facts').textContent);
  var vp = document.getElementById('viewport'), svg = document.getElementById('graph');
  var w0 = +svg.dataset.width, h0 = +svg.dataset.height, scale = 1;
  function zoom(s, cx, cy){        // keep the graph point under (cx, cy) where it is
    var px = (vp.scrollLeft + cx) / scale, py = (vp.scrollTop + cy) / scale;
    scale = Math.min(4, Math.max(0.05, s));
    svg.setAttribute('width', w0 * scale);
    svg.setAttribute('height', h0 * scale);
    vp.scrollLeft = px * scale - cx;
    vp.scrollTop = py * scale - cy;
    document.getElementById('zoom').textContent = Math.round(scale * 100) + '%';
  }
  function zoomCentre(s){ zoom(s, vp.clientWidth / 2, vp.clientHeight / 2); }
  document.getElementById('zin').onclick = function(){ zoomCentre(scale * 1.25); };
  document.getElementById('zout').onclick = function(){ zoomCentre(scale / 1.25); };
  document.getElementById('zfit').onclick = function(){
    zoom(Math.min(vp.clientWidth / w0, vp.clientHeight / h0), 0, 0);
  };
  vp.addEventListener('wheel', function(e){
    if (!e.ctrlKey) return;
    e.preventDefault();
    var r = vp.getBoundingClientRect();
    zoom(scale * (e.deltaY < 0 ? 1.15 : 1 / 1.15), e.clientX - r.left, e.clientY - r.top);
  }, {passive: false});
  var drag = null;
  vp.addEventListener('mousedown', function(e){
    drag = [e.clientX, e.clientY, vp.scrollLeft, vp.scrollTop];
    vp.classList.add('dragging');
  });
  window.addEventListener('mouseup', function(){ drag = null; vp.classList.remove('dragging'); });
  window.addEventListener('mousemove', function(e){
    if (!drag) return;
    vp.scrollLeft = drag[2] - (e.clientX - drag[0]);
    vp.scrollTop = drag[3] - (e.clientY - drag[1]);
  });
  var panel = document.getElementById('detail');
  function row(table, key, value){
    var tr = table.insertRow(), th = document.createElement('th');
    th.textContent = key;
    tr.appendChild(th);
    tr.insertCell().textContent = value;
  }
  function show(i, reveal){
    var f = facts[i], t = document.createElement('table');
    document.querySelectorAll('#graph .node.selected').forEach(function(n){
      n.classList.remove('selected');
    });
    var g = document.querySelector('#graph .node[data-index="' + i + '"]');
    g.classList.add('selected');
    if (reveal) g.querySelector('rect').scrollIntoView({block: 'center', inline: 'center'});
    row(t, 'node', f.name);
    row(t, 'op', f.op);
    f.inputs.forEach(function(s){ row(t, 'input', s); });
    f.outputs.forEach(function(s){ row(t, 'output', s); });
    row(t, 'MACs', f.macs.toLocaleString('en'));
    row(t, 'bytes moved', f.bytes_moved.toLocaleString('en'));
    row(t, 'path', f.path);
    if (f.ms !== null){
      row(t, 'time', f.ms.toFixed(3) + ' ms (' + (100 * f.share).toFixed(1) + '%)');
      if (f.macs > 0) row(t, 'GFLOP/s', f.gflops.toFixed(2));
    }
    panel.replaceChildren(t);
  }
  document.querySelectorAll('#graph .node').forEach(function(n){
    n.addEventListener('click', function(){ show(+n.dataset.index, false); });
    n.addEventListener('keydown', function(e){ if (e.key === 'Enter') show(+n.dataset.index); });
  });
  document.querySelectorAll('.roofline .point, tr[data-index]').forEach(function(n){
    n.addEventListener('click', function(){ show(+n.dataset.index, true); });
  });
  var linked = location.hash.match(/^#node=(\d+)$/);
  if (linked && facts[+linked[1]]) show(+linked[1], true);
  document.body.dataset.ready = String(facts.length);
})();
"""


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
        legend = ('colour: share of the time <span style="background:' + _heat(0) +
                  '"></span>none <span style="background:' + _heat(1) +
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


__all__ = ["build_report", "node_facts", "measure_machine", "NodeFacts",
           "Machine"]
