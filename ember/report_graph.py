"""The fused graph of a report's page as inline SVG: graph inputs, nodes and graph outputs as
boxes laid out top to bottom by ``report_layout``, edges as curves through the layout's dummy
points. A node's box is coloured by its share of the time when profiled, else by the path it runs
(kernel, numpy reference, view); its ``<title>`` is the tooltip with every fact."""
from __future__ import annotations

from html import escape

from .report_layout import layered_layout


NODE_H = 40
PATH_FILL = {"kernel": "#dbe9f6", "numpy": "#fde2d9", "view": "#eeeeee"}


def shape_text(t) -> str:
    return "×".join(str(d) for d in t.shape) if t.shape else "scalar"


def heat(t: float) -> str:
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
        label[key], sub[key] = name, shape_text(t) if t else ""
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
        fill = heat((f.share or 0) / top) if f.share is not None else PATH_FILL[f.path]
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
