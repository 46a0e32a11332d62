"""The two charts of ``ember report``, as inline SVG strings: the memory plan (each value's
lifetime against its arena offset, with the arena size and the lower bound) and the roofline
(each hot node's GFLOP/s against its arithmetic intensity, under the measured roofs)."""
from __future__ import annotations

import math
from html import escape

PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1",
           "#ff9da7", "#9c755f", "#bab0ac")


def fmt_bytes(n: float) -> str:
    for unit, div in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= div:
            return f"{n / div:.2f} {unit}"
    return f"{int(n)} B"


def live_bytes(plan) -> list:
    """Bytes of arena live at each step (the planner's groups, aligned sizes); its maximum is
    the plan's lower bound."""
    steps = len(plan.order) + 1
    change = [0] * (steps + 1)
    for g in plan.groups:
        change[g.first] += g.size
        change[g.last + 1] -= g.size
    live, out = 0, []
    for k in range(steps):
        live += change[k]
        out.append(live)
    return out


def memory_blocks(plan) -> list:
    """One block per arena value and per kernel scratch: (label, kind, offset, bytes, first
    step, last step). Values of one group (a view, an in-place output) share their bytes."""
    blocks = [(name, "value", off, plan.sizes[name], *plan.lifetimes[name])
              for name, off in plan.offsets.items()]
    for idx, (off, nbytes) in plan.scratch.items():
        blocks.append((f"scratch of {plan.order[idx].name}", "scratch", off, nbytes, idx, idx))
    return blocks


def memory_svg(plan, width: int = 720, height: int = 340) -> str:
    left, right, top, bottom = 74, 16, 14, 34
    steps = len(plan.order) + 1
    top_bytes = max(plan.arena_bytes, plan.lower_bound_bytes, 1)
    plot_w, plot_h = width - left - right, height - top - bottom

    def sx(step):
        return left + plot_w * step / steps

    def sy(nbytes):
        return top + plot_h * (1 - nbytes / top_bytes)

    out = [f'<svg class="memory" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="memory plan">',
           f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" class="plotbg"/>']
    for k, (label, kind, off, nbytes, first, last) in enumerate(memory_blocks(plan)):
        x0, x1 = sx(first), sx(last + 1)
        y0, y1 = sy(off + nbytes), sy(off)
        fill = "#999" if kind == "scratch" else PALETTE[first % len(PALETTE)]
        out.append(
            f'<rect class="block {kind}" data-value="{escape(label)}" data-offset="{off}" '
            f'data-size="{nbytes}" data-first="{first}" data-last="{last}" '
            f'x="{x0:.2f}" y="{y0:.2f}" width="{max(x1 - x0, 0.5):.2f}" '
            f'height="{max(y1 - y0, 0.5):.2f}" fill="{fill}">'
            f'<title>{escape(label)}\noffset {off:,} B, {nbytes:,} B ({fmt_bytes(nbytes)})\n'
            f'live steps {first}–{last}</title></rect>')
    live = live_bytes(plan)
    points = []
    for k, b in enumerate(live):
        points += [f"{sx(k):.2f},{sy(b):.2f}", f"{sx(k + 1):.2f},{sy(b):.2f}"]
    out.append(f'<polyline class="live" points="{" ".join(points)}"/>')
    for cls, value, text in (("arena", plan.arena_bytes, "arena"),
                             ("bound", plan.lower_bound_bytes, "lower bound")):
        y = sy(value)
        out.append(f'<line class="{cls}" x1="{left}" x2="{left + plot_w}" y1="{y:.2f}" '
                   f'y2="{y:.2f}"><title>{text} {value:,} B</title></line>')
        dy = -4 if cls == "arena" else 12
        out.append(f'<text class="mark" x="{left + plot_w - 4}" y="{y + dy:.2f}" '
                   f'text-anchor="end">{text} {fmt_bytes(value)}</text>')
    for k in range(5):
        b = top_bytes * k / 4
        out.append(f'<text class="tick" x="{left - 6}" y="{sy(b) + 4:.2f}" '
                   f'text-anchor="end">{fmt_bytes(b)}</text>')
    for k in sorted({0, steps // 4, steps // 2, 3 * steps // 4, steps}):
        out.append(f'<text class="tick" x="{sx(k):.2f}" y="{top + plot_h + 14}" '
                   f'text-anchor="middle">{k}</text>')
    out.append(f'<text class="axis" x="{left + plot_w / 2}" y="{height - 4}" '
               f'text-anchor="middle">step (node in execution order)</text>')
    out.append(f'<text class="axis" transform="translate(12,{top + plot_h / 2}) rotate(-90)" '
               f'text-anchor="middle">arena offset</text>')
    out.append("</svg>")
    return "\n".join(out)


def _decades(lo: float, hi: float) -> list:
    return [10.0 ** e for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)]


def roofline_svg(points: list, peak_gflops: float, bandwidth_gbs: float, width: int = 560,
                 height: int = 340) -> str:
    """``points``: (node index, label, intensity FLOP/byte, GFLOP/s, share, measured). Log-log;
    the roof is min(peak, bandwidth × intensity), the ridge where they meet. A measured point
    is a profiled node (share: of the time); an unmeasured one sits hollow on the roof, where
    the node could run at best (share: of the MACs)."""
    left, right, top, bottom = 58, 16, 14, 34
    plot_w, plot_h = width - left - right, height - top - bottom
    ridge = peak_gflops / bandwidth_gbs
    xs = [p[2] for p in points if p[2] > 0] + [ridge / 8, ridge]   # a decade of slope shows
    ys = [p[3] for p in points if p[3] > 0] + [peak_gflops]
    x_lo, x_hi = _decades(min(xs) / 2, max(xs) * 2)[0], _decades(min(xs) / 2, max(xs) * 2)[-1]
    y_lo, y_hi = _decades(min(ys) / 2, max(ys) * 2)[0], _decades(min(ys) / 2, max(ys) * 2)[-1]
    if x_hi <= x_lo:
        x_hi = x_lo * 10
    if y_hi <= y_lo:
        y_hi = y_lo * 10

    def sx(v):
        return left + plot_w * math.log10(v / x_lo) / math.log10(x_hi / x_lo)

    def sy(v):
        return top + plot_h * (1 - math.log10(v / y_lo) / math.log10(y_hi / y_lo))

    out = [f'<svg class="roofline" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="roofline">',
           f'<clipPath id="roof-clip"><rect x="{left}" y="{top}" width="{plot_w}" '
           f'height="{plot_h}"/></clipPath>',
           f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" class="plotbg"/>']
    for v in _decades(x_lo, x_hi):
        out.append(f'<line class="grid" x1="{sx(v):.2f}" x2="{sx(v):.2f}" y1="{top}" '
                   f'y2="{top + plot_h}"/><text class="tick" x="{sx(v):.2f}" '
                   f'y="{top + plot_h + 14}" text-anchor="middle">{v:g}</text>')
    for v in _decades(y_lo, y_hi):
        out.append(f'<line class="grid" x1="{left}" x2="{left + plot_w}" y1="{sy(v):.2f}" '
                   f'y2="{sy(v):.2f}"/><text class="tick" x="{left - 6}" y="{sy(v) + 4:.2f}" '
                   f'text-anchor="end">{v:g}</text>')
    roof = [(x_lo, min(peak_gflops, bandwidth_gbs * x_lo)), (ridge, peak_gflops),
            (x_hi, peak_gflops)]
    if ridge <= x_lo:
        roof = [(x_lo, peak_gflops), (x_hi, peak_gflops)]
    out.append('<polyline class="roof" clip-path="url(#roof-clip)" points="' +
               " ".join(f"{sx(a):.2f},{sy(b):.2f}" for a, b in roof) + '">'
               f'<title>peak {peak_gflops:.1f} GFLOP/s, bandwidth {bandwidth_gbs:.1f} GB/s, '
               f'ridge at {ridge:.2f} FLOP/byte</title></polyline>')
    # the roofs' numbers in the bottom-right corner (high intensity, low speed: no node there)
    for k, text in enumerate((f"peak {peak_gflops:.1f} GFLOP/s",
                              f"memory {bandwidth_gbs:.1f} GB/s",
                              f"ridge {ridge:.1f} FLOP/byte")):
        out.append(f'<text class="mark roofs" x="{left + plot_w - 6}" '
                   f'y="{top + plot_h - 38 + 15 * k}" text-anchor="end">{text}</text>')
    biggest = max((p[4] for p in points), default=0) or 1
    for idx, label, ai, gflops, share, measured in points:
        if ai <= 0 or gflops <= 0:
            continue
        r = 3 + 9 * math.sqrt(share / biggest)
        what = (f"{gflops:.2f} GFLOP/s at {ai:.2f} FLOP/byte, {100 * share:.1f}% of the time"
                if measured else f"at best {gflops:.2f} GFLOP/s at {ai:.2f} FLOP/byte, "
                f"{100 * share:.1f}% of the MACs")
        out.append(f'<circle class="point{"" if measured else " attainable"}" '
                   f'data-index="{idx}" cx="{sx(ai):.2f}" cy="{sy(gflops):.2f}" r="{r:.2f}">'
                   f'<title>{escape(label)}\n{what}</title></circle>')
    out.append(f'<text class="axis" x="{left + plot_w / 2}" y="{height - 4}" '
               f'text-anchor="middle">arithmetic intensity (FLOP per byte moved)</text>')
    out.append(f'<text class="axis" transform="translate(12,{top + plot_h / 2}) rotate(-90)" '
               f'text-anchor="middle">GFLOP/s</text>')
    out.append("</svg>")
    return "\n".join(out)
