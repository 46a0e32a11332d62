"""``ember report``: the layered layout, the memory picture against the planner, a page with no
external URL, and the page rendered in a real browser (headless Chromium: the DOM after its
script ran, the console, a screenshot that is not blank)."""
from __future__ import annotations

import json
import random
import re
import shutil
import struct
import subprocess
import zlib
from html.parser import HTMLParser

import numpy as np
import onnx
import pytest

import ember
from ember.cli import main
from ember.report import HOT_SHARE, build_report, node_facts
from ember.report_charts import live_bytes, memory_blocks, memory_svg, roofline_svg
from ember.report_layout import crossings, layered_layout
from models import lenet5, resnet18, small_vgg

SMALL_MACHINE = dict(gemm_n=128, copy_bytes=1 << 20)   # the roofs, measured in milliseconds


# ---- the layout --------------------------------------------------------------------------------
def _random_dag(seed: int, n: int = 40) -> tuple:
    rng = random.Random(seed)
    nodes = list(range(n))
    edges = [(rng.randrange(v), v) for v in range(1, n)]
    edges += [(u, v) for u, v in ((rng.randrange(n), rng.randrange(n)) for _ in range(n))
              if u < v]
    return nodes, edges


def _graph_dag(model) -> tuple:
    g = ember.load(model.SerializeToString(), threads=1).compile().graph
    producer = {o: i for i, n in enumerate(g.nodes) for o in n.outputs}
    edges = [(producer[x], i) for i, n in enumerate(g.nodes) for x in n.inputs if x in producer]
    return list(range(len(g.nodes))), edges


DAGS = {
    "chain": lambda: (list("abcd"), [("a", "b"), ("b", "c"), ("c", "d")]),
    "diamond with a long edge": lambda: (list("abcde"), [("a", "b"), ("a", "c"), ("b", "d"),
                                                         ("c", "d"), ("a", "e"), ("d", "e")]),
    "random": lambda: _random_dag(0),
    "random wide": lambda: _random_dag(1, 80),
    "resnet18 fused": lambda: _graph_dag(resnet18()),
}


@pytest.mark.parametrize("name", DAGS)
def test_layout_places_every_node_once_and_every_edge_points_down(name):
    nodes, edges = DAGS[name]()
    width = {n: 60 + 10 * (k % 4) for k, n in enumerate(nodes)}
    lay = layered_layout(nodes, edges, width, node_height=40, node_gap=20)
    assert set(lay.x) == set(nodes) == set(lay.y)
    placed = [m for layer in lay.layers for m in layer if m in width]
    assert sorted(map(str, placed)) == sorted(map(str, nodes))       # each node exactly once
    for u, v in edges:
        assert lay.layer[u] < lay.layer[v] and lay.y[u] < lay.y[v]
        route = lay.routes[(u, v)]
        assert len(route) == lay.layer[v] - lay.layer[u] + 1      # one point per layer crossed
        assert all(a[1] < b[1] for a, b in zip(route, route[1:]))  # and none goes back up
    for layer in lay.layers:                                       # boxes in a layer never overlap
        real = sorted((lay.x[m], width[m]) for m in layer if m in width)
        for (xa, wa), (xb, wb) in zip(real, real[1:]):
            assert xb - xa >= (wa + wb) / 2 + 20 - 1e-6
    assert all(lay.x[n] - width[n] / 2 >= -1e-6 and lay.x[n] + width[n] / 2 <= lay.width + 1e-6
               for n in nodes)


def test_barycentre_ordering_removes_the_crossing_of_a_twisted_pair():
    # as given, layer 1 is [c, d] while its parents are [a, b] crossed over: a→d, b→c
    lay = layered_layout(list("abcd"), [("a", "d"), ("b", "c")], dict.fromkeys("abcd", 50))
    assert crossings(lay) == 0


def test_layout_of_a_wide_random_dag_has_few_crossings():
    nodes, edges = _random_dag(1, 80)
    width = dict.fromkeys(nodes, 60)
    ordered = layered_layout(nodes, edges, width, sweeps=8)
    unordered = layered_layout(nodes, edges, width, sweeps=0)
    assert crossings(ordered) < crossings(unordered) / 2


# ---- the memory picture ------------------------------------------------------------------------
class _Collect(HTMLParser):
    def __init__(self, tag, cls):
        super().__init__()
        self.tag, self.cls, self.found = tag, cls, []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == self.tag and self.cls in (a.get("class") or "").split():
            self.found.append(a)


def _elements(html: str, tag: str, cls: str) -> list:
    p = _Collect(tag, cls)
    p.feed(html)
    return p.found


@pytest.mark.parametrize("model", [lenet5, small_vgg])
def test_memory_rectangles_are_the_planners_offsets_sizes_and_lifetimes(model):
    plan = ember.load(model().SerializeToString(), threads=2).compile().plan
    svg = memory_svg(plan, width=720, height=340)
    rects = _elements(svg, "rect", "block")
    expected = {(name, plan.offsets[name], plan.sizes[name], *plan.lifetimes[name])
                for name in plan.offsets}
    expected |= {(f"scratch of {plan.order[i].name}", off, nb, i, i)
                 for i, (off, nb) in plan.scratch.items()}
    got = {(r["data-value"], int(r["data-offset"]), int(r["data-size"]), int(r["data-first"]),
            int(r["data-last"])) for r in rects}
    assert got == expected and len(rects) == len(memory_blocks(plan))
    # and drawn where those numbers say: the chart maps bytes linearly onto its 292-px height
    scale = 292 / max(plan.arena_bytes, 1)
    for r in rects:
        top_px = 14 + 292 - (int(r["data-offset"]) + int(r["data-size"])) * scale
        assert float(r["y"]) == pytest.approx(top_px, abs=0.01)
        assert float(r["height"]) == pytest.approx(max(int(r["data-size"]) * scale, 0.5),
                                                   abs=0.01)
    assert max(live_bytes(plan)) == plan.lower_bound_bytes
    (arena,), (bound,) = _elements(svg, "line", "arena"), _elements(svg, "line", "bound")
    assert float(bound["y1"]) == pytest.approx(
        14 + 292 * (1 - plan.lower_bound_bytes / plan.arena_bytes), abs=0.01)
    assert float(arena["y1"]) == pytest.approx(14, abs=0.01)


def test_roofline_places_the_roof_and_each_node_on_its_log_axes():
    peak, bandwidth = 80.0, 20.0                                # ridge at 4 FLOP/byte
    points = [(0, "a", 2.0, 5.0, 1.0, True), (1, "b", 50.0, 40.0, 0.5, True),
              (2, "c", 0.25, 3.0, 0.1, False)]
    svg = roofline_svg(points, peak, bandwidth)
    ticks = re.findall(r'<text class="tick" x="([\d.]+)" y="([\d.]+)" '
                       r'text-anchor="(middle|end)">([\d.e+-]+)</text>', svg)
    xs = {float(v): float(x) for x, _, anchor, v in ticks if anchor == "middle"}
    ys = {float(v): float(y) - 4 for _, y, anchor, v in ticks if anchor == "end"}

    def px(decades: dict, value: float) -> float:   # log interpolation between the tick marks
        (v0, p0), (v1, p1) = min(decades.items()), max(decades.items())
        return p0 + (p1 - p0) * np.log10(value / v0) / np.log10(v1 / v0)

    roof = [tuple(map(float, p.split(","))) for p in re.search(
        r'<polyline class="roof"[^>]*points="([^"]+)"', svg).group(1).split()]
    assert roof[1] == pytest.approx((px(xs, peak / bandwidth), px(ys, peak)), abs=0.02)
    x0 = min(xs)
    assert roof[0] == pytest.approx((px(xs, x0), px(ys, bandwidth * x0)), abs=0.02)
    circles = _elements(svg, "circle", "point")
    assert [c["data-index"] for c in circles] == ["0", "1", "2"]
    assert "attainable" in circles[2]["class"] and "attainable" not in circles[0]["class"]
    for (_, _, ai, gflops, _, _), c in zip(points, circles):
        assert (float(c["cx"]), float(c["cy"])) == pytest.approx((px(xs, ai), px(ys, gflops)),
                                                                 abs=0.02)


# ---- the page ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lenet_report(tmp_path_factory):
    """lenet5's report, profiled, written by the command line; with its fused graph."""
    folder = tmp_path_factory.mktemp("report")
    model = folder / "lenet5.onnx"
    onnx.save(lenet5(), str(model))
    out = folder / "lenet5.html"
    assert main(["report", str(model), "-o", str(out), "--profile", "--runs", "2",
                 "--threads", "2"]) == 0
    compiled = ember.load(str(model), threads=2).compile()
    return out, compiled


def test_the_page_fetches_nothing_from_the_network(lenet_report):
    html = lenet_report[0].read_text(encoding="utf-8")
    assert not re.search(r"https?:|//[a-z0-9.-]+\.[a-z]{2,}|@import|<link|<iframe|<img",
                         html, re.I)
    assert not re.search(r"\b(src|href|xlink:href)\s*=", html, re.I)
    assert set(re.findall(r"url\(([^)]*)\)", html)) <= {"#arrow", "#roof-clip"}


def test_the_page_holds_every_fused_node_with_its_facts(lenet_report):
    path, compiled = lenet_report
    html = path.read_text(encoding="utf-8")
    nodes = _elements(html, "g", "node")
    assert [int(n["data-index"]) for n in nodes] == list(range(len(compiled.graph.nodes)))
    facts = json.loads(re.search(r'<script type="application/json" id="facts">(.*?)</script>',
                                 html, re.S).group(1))
    assert [f["op"].split("+")[0] for f in facts] == [n.op_type for n in compiled.graph.nodes]
    assert any("+" in f["op"] for f in facts)            # lenet's Conv+Relu, fused, drawn as one
    assert all(f["ms"] > 0 for f in facts if f["path"] != "view")
    assert sum(f["share"] for f in facts if f["share"] is not None) == pytest.approx(1)
    hot = {f["index"] for f in facts if f["macs"] and f["share"] >= HOT_SHARE}
    points = _elements(html, "circle", "point")
    assert hot and {int(p["data-index"]) for p in points} == hot and len(points) == len(hot)
    assert not _elements(html, "circle", "attainable")
    for needle in ("ISA in use", ember.__version__, "GFLOP/s", "GB/s", "lower bound"):
        assert needle in html


def test_node_facts_without_a_profile_name_the_path_each_node_runs():
    sess = ember.load(small_vgg().SerializeToString(), threads=1)
    compiled = sess.compile()
    facts = node_facts(compiled)
    by_op = {}
    for f, node in zip(facts, compiled.graph.nodes):
        assert f.ms is None and f.macs >= 0 and f.bytes_moved > 0
        by_op.setdefault(node.op_type, set()).add(f.path)
    assert by_op["Conv"] == {"kernel"}
    assert by_op.get("Flatten", {"view"}) == {"view"}
    conv = next(f for f in facts if f.op.startswith("Conv"))
    assert conv.intensity == pytest.approx(2 * conv.macs / conv.bytes_moved)
    html = build_report(sess, model_name="<vgg>", **SMALL_MACHINE)
    assert "&lt;vgg&gt;" in html and "<vgg>" not in html
    assert "not profiled" in html
    on_roof = _elements(html, "circle", "attainable")
    assert sorted(int(p["data-index"]) for p in on_roof) == [f.index for f in facts if f.macs]


@pytest.mark.parametrize("kwargs, message", [
    (dict(shapes={"nope": (1, 2)}), "unknown inputs ['nope']"),
    (dict(profile_runs=-1), "runs must be an integer ≥ 1"),
])
def test_build_report_refuses_bad_arguments_with_ember_errors(kwargs, message):
    sess = ember.load(lenet5().SerializeToString(), threads=1)
    with pytest.raises(ember.InputError, match=re.escape(message)):
        build_report(sess, **kwargs, **SMALL_MACHINE)


@pytest.mark.parametrize("argv, message", [
    (["report", "missing.onnx", "-o", "x.html"], "no such model file"),
    (["report", "{model}", "-o", "x.html", "--shape", "nope=1x2"], "nope"),
    (["report", "{model}", "-o", "x.html", "--shape", "input=1x"], "--shape"),
    (["report", "{model}", "-o", "{model}/x.html"], "no such folder"),
    (["report", "{model}", "-o", "{folder}"], "cannot write the report"),
])
def test_report_command_refuses_bad_input_in_one_line(tmp_path, capsys, argv, message):
    model = tmp_path / "m.onnx"
    onnx.save(lenet5(), str(model))
    argv = [a.format(model=model, folder=tmp_path) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("ember: error:") and message in err and err.count("\n") == 1


# ---- in a real browser ------------------------------------------------------------------------
CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser",
                                                "google-chrome"))), None)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium on PATH (CI installs Debian's chromium; apt-get "
    "install chromium to run these)")


def _chromium(*args) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                           "--hide-scrollbars", "--no-first-run", "--enable-logging=stderr",
                           "--v=0", *args], capture_output=True, text=True, timeout=60,
                          cwd="/")


def decode_png(data: bytes) -> np.ndarray:
    """An 8-bit RGB/RGBA, non-interlaced PNG as an (h, w, channels) array — zlib and the five
    row filters of the PNG specification, so the test needs no imaging library."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    w, h, depth, colour, _, _, interlace = header
    assert depth == 8 and colour in (2, 6) and interlace == 0, header
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(idat)
    stride = w * bpp
    out = np.zeros((h, stride), np.uint8)
    prev = np.zeros(stride, np.int64)
    for y in range(h):
        kind = raw[y * (stride + 1)]
        line = np.frombuffer(raw, np.uint8, stride, y * (stride + 1) + 1).astype(np.int64)
        if kind == 0:
            cur = line
        elif kind == 1:
            cur = np.cumsum(line.reshape(w, bpp), axis=0).ravel() % 256
        elif kind == 2:
            cur = (line + prev) % 256
        else:
            cur = [0] * stride
            for i in range(stride):
                a = cur[i - bpp] if i >= bpp else 0
                b, c = int(prev[i]), int(prev[i - bpp]) if i >= bpp else 0
                if kind == 3:
                    pred = (a + b) // 2
                else:
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                cur[i] = (int(line[i]) + pred) % 256
            cur = np.array(cur, np.int64)
        out[y] = cur
        prev = cur
    return out.reshape(h, w, bpp)


@needs_chromium
def test_the_page_renders_in_chromium_with_every_node_and_no_script_error(lenet_report):
    path, compiled = lenet_report
    run = _chromium("--dump-dom", path.as_uri() + "#node=2")   # opened with node 2 selected
    assert run.returncode == 0, run.stderr[-2000:]
    dom = run.stdout
    n = len(compiled.graph.nodes)
    assert len(_elements(dom, "g", "node")) == n
    assert re.search(rf'<body[^>]*data-ready="{n}"', dom), "the page's script did not finish"
    assert [g["data-index"] for g in _elements(dom, "g", "selected")] == ["2"]
    detail = re.search(r'<div class="panel" id="detail">(.*?)</div>', dom, re.S).group(1)
    node = compiled.graph.nodes[2]
    assert f"<td>{node.name}</td>" in detail and f"<td>{node.op_type}" in detail
    console = [ln for ln in run.stderr.splitlines() if ":CONSOLE" in ln or "Uncaught" in ln]
    assert console == [], console


@needs_chromium
def test_the_screenshot_shows_the_coloured_graph(lenet_report, tmp_path):
    path, _ = lenet_report
    png = tmp_path / "shot.png"
    run = _chromium("--window-size=1200,900", "--force-device-scale-factor=0.5",
                    f"--screenshot={png}", path.as_uri())
    assert run.returncode == 0 and png.exists(), run.stderr[-2000:]
    pixels = decode_png(png.read_bytes())[..., :3].astype(np.int64)
    assert pixels.shape[:2] == (450, 600)
    assert pixels.std() > 20                                   # not one flat colour
    colours = np.unique(pixels.reshape(-1, 3) @ np.array([65536, 256, 1]))
    assert len(colours) > 100
    # the slowest node's box is painted in the deepest heat colour, #c81e14
    hottest = np.all(pixels == (200, 30, 20), axis=-1)
    assert hottest.sum() > 50
