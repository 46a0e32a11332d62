"""Real-world-style exports: models as torch.onnx writes them, patterns spelled out op by op.

    python -m benchmarks.realworld                  # every model, 1 and 2 threads
    python -m benchmarks.realworld --models yolov8n --save yolov8n.onnx   # keep the export
    python -m benchmarks.realworld --threads 1 --runs 20

* ``pplcnet``: a PP-LCNet-like classifier (PP-LCNet x1.0's stages, 224×224): depthwise-separable
  blocks whose hard-swish is written ``x * relu6(x + 3) / 6`` (Add/Clip/Mul/Div in the file) and
  squeeze-excite gates with a hand-written hard-sigmoid (``relu6(x + 3) / 6``), as PaddleOCR-
  style exports carry them;
* ``ln_gelu_mlp``: a layer-norm/GELU MLP head over 196 tokens of width 384 (two pre-norm MLP
  blocks with residuals, a final norm, token mean, a 1000-way classifier), the layer norm
  hand-written (ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div/Mul/Add) and the GELU in its erf form
  ``0.5·x·(1 + erf(x/√2))``;
* ``yolov8n``: a YOLOv8n-like detector at 320×320 (YOLOv8n's widths 16…256 and depths):
  Conv-BN-SiLU blocks (SiLU as Sigmoid·Mul in the file), C2f blocks (a 1×1 conv Split in two,
  bottlenecks on the second half, everything Concat-ed into a 1×1 conv), SPPF (three chained
  5×5 MaxPools), an FPN/PAN neck with nearest ×2 Resize (``nn.Upsample``) and Concat, and a
  decoupled head (box and class branches per level) with YOLOv8's DFL box decode (Softmax over
  16 bins, a 1×1 conv, anchors) and sigmoid class scores: (1, 84, 2100).

Each model is timed interleaved (``runtime.profile.time_interleaved``) four ways: ember with every
pass, ember without the pattern passes (``graph.patterns.PATTERNS`` emptied while it compiles:
BatchNorm folding and activation fusion still on), ember with ``optimize=False``, and
onnxruntime (its default graph optimizations). Results go to stdout and to one section of
``benchmarks/RESULTS.md``.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys

import numpy as np

from .results import write_section
from .run import HERE, machine, ort_session

# PP-LCNet x1.0 (kernel, in, out, stride, squeeze-excite), after a 3×3/2 stem of 16 channels
PPLCNET_BLOCKS = [(3, 16, 32, 1, False), (3, 32, 64, 2, False), (3, 64, 64, 1, False),
                  (3, 64, 128, 2, False), (3, 128, 128, 1, False), (3, 128, 256, 2, False),
                  *[(5, 256, 256, 1, False)] * 5, (5, 256, 512, 2, True), (5, 512, 512, 1, True)]


def pplcnet(torch):
    nn, F = torch.nn, torch.nn.functional

    class HardSwish(nn.Module):
        def forward(self, x):
            return x * F.relu6(x + 3) / 6

    class SqueezeExcite(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.reduce, self.expand = nn.Conv2d(c, c // 4, 1), nn.Conv2d(c // 4, c, 1)

        def forward(self, x):
            s = F.relu(self.reduce(F.adaptive_avg_pool2d(x, 1)))
            return x * (F.relu6(self.expand(s) + 3) / 6)

    def conv_bn_hs(cin, cout, k, stride, groups=1):
        return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                nn.BatchNorm2d(cout), HardSwish()]

    layers = conv_bn_hs(3, 16, 3, 2)
    for k, cin, cout, stride, se in PPLCNET_BLOCKS:
        layers += conv_bn_hs(cin, cin, k, stride, groups=cin)
        if se:
            layers.append(SqueezeExcite(cin))
        layers += conv_bn_hs(cin, cout, 1, 1)
    head = [nn.AdaptiveAvgPool2d(1), nn.Conv2d(512, 1280, 1), HardSwish(), nn.Flatten(),
            nn.Linear(1280, 1000)]
    return nn.Sequential(*layers, *head), (1, 3, 224, 224)


def ln_gelu_mlp(torch):
    nn = torch.nn
    width, tokens = 384, 196

    class LayerNorm(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight, self.bias = nn.Parameter(torch.ones(width)), nn.Parameter(
                torch.zeros(width))

        def forward(self, x):
            d = x - x.mean(-1, keepdim=True)
            return d / torch.sqrt((d ** 2).mean(-1, keepdim=True) + 1e-6) * self.weight + \
                self.bias

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = LayerNorm()
            self.fc1, self.fc2 = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

        def forward(self, x):
            h = self.fc1(self.norm(x))
            h = 0.5 * h * (1 + torch.erf(h / 1.4142135623730951))
            return x + self.fc2(h)

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.Sequential(Block(), Block())
            self.norm, self.fc = LayerNorm(), nn.Linear(width, 1000)

        def forward(self, x):
            return self.fc(self.norm(self.blocks(x)).mean(1))
    return Head(), (1, tokens, width)


# YOLOv8n: (out channels, C2f bottlenecks) of the backbone's four stride-2 stages
YOLOV8N_STAGES = [(32, 1), (64, 2), (128, 2), (256, 1)]
YOLO_CLASSES, YOLO_BINS = 80, 16


def yolov8n(torch):
    nn = torch.nn

    class Conv(nn.Module):
        def __init__(self, cin, cout, k=1, stride=1):
            super().__init__()
            self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, bias=False)
            self.bn, self.act = nn.BatchNorm2d(cout), nn.SiLU()

        def forward(self, x):
            return self.act(self.bn(self.conv(x)))

    class Bottleneck(nn.Module):
        def __init__(self, c, shortcut):
            super().__init__()
            self.cv1, self.cv2, self.add = Conv(c, c, 3), Conv(c, c, 3), shortcut

        def forward(self, x):
            y = self.cv2(self.cv1(x))
            return x + y if self.add else y

    class C2f(nn.Module):
        def __init__(self, cin, cout, n, shortcut):
            super().__init__()
            self.c = cout // 2
            self.cv1, self.cv2 = Conv(cin, 2 * self.c, 1), Conv((2 + n) * self.c, cout, 1)
            self.m = nn.ModuleList(Bottleneck(self.c, shortcut) for _ in range(n))

        def forward(self, x):
            y = list(self.cv1(x).chunk(2, 1))
            for m in self.m:
                y.append(m(y[-1]))
            return self.cv2(torch.cat(y, 1))

    class SPPF(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.cv1, self.cv2 = Conv(c, c // 2, 1), Conv(c // 2 * 4, c, 1)
            self.m = nn.MaxPool2d(5, 1, 2)

        def forward(self, x):
            y = [self.cv1(x)]
            for _ in range(3):
                y.append(self.m(y[-1]))
            return self.cv2(torch.cat(y, 1))

    class Detect(nn.Module):
        """Per level a box branch (4·16 DFL bins) and a class branch; DFL decode on anchors."""
        def __init__(self, chans, strides, size):
            super().__init__()
            c2, c3 = max(16, chans[0] // 4, 4 * YOLO_BINS), max(chans[0], YOLO_CLASSES)
            self.box = nn.ModuleList(nn.Sequential(Conv(c, c2, 3), Conv(c2, c2, 3),
                                                   nn.Conv2d(c2, 4 * YOLO_BINS, 1))
                                     for c in chans)
            self.cls = nn.ModuleList(nn.Sequential(Conv(c, c3, 3), Conv(c3, c3, 3),
                                                   nn.Conv2d(c3, YOLO_CLASSES, 1))
                                     for c in chans)
            self.dfl = nn.Conv2d(YOLO_BINS, 1, 1, bias=False).requires_grad_(False)
            self.dfl.weight.data[:] = torch.arange(YOLO_BINS, dtype=torch.float32).view(
                1, YOLO_BINS, 1, 1)
            anchors, stride_of = [], []
            for s in strides:
                n = size // s
                ys, xs = torch.meshgrid(torch.arange(n) + 0.5, torch.arange(n) + 0.5,
                                        indexing="ij")
                anchors.append(torch.stack((xs, ys), -1).view(-1, 2))
                stride_of.append(torch.full((n * n, 1), float(s)))
            self.register_buffer("anchors", torch.cat(anchors).transpose(0, 1)[None])
            self.register_buffer("strides", torch.cat(stride_of).transpose(0, 1)[None])

        def forward(self, feats):
            b = feats[0].shape[0]
            out = [torch.cat((bx(f), cl(f)), 1).view(b, 4 * YOLO_BINS + YOLO_CLASSES, -1)
                   for f, bx, cl in zip(feats, self.box, self.cls)]
            box, cls = torch.cat(out, 2).split((4 * YOLO_BINS, YOLO_CLASSES), 1)
            a = box.shape[2]
            dist = self.dfl(box.view(b, 4, YOLO_BINS, a).transpose(2, 1).softmax(1)).view(b, 4,
                                                                                          a)
            lt, rb = dist.chunk(2, 1)
            x1y1, x2y2 = self.anchors - lt, self.anchors + rb
            xywh = torch.cat(((x1y1 + x2y2) / 2, x2y2 - x1y1), 1) * self.strides
            return torch.cat((xywh, cls.sigmoid()), 1)

    class YOLOv8n(nn.Module):
        def __init__(self, size):
            super().__init__()
            stem, layers, cin = Conv(3, 16, 3, 2), [], 16
            for cout, n in YOLOV8N_STAGES:
                layers.append(nn.Sequential(Conv(cin, cout, 3, 2), C2f(cout, cout, n, True)))
                cin = cout
            self.stem, self.stages, self.sppf = stem, nn.ModuleList(layers), SPPF(256)
            self.up = nn.Upsample(scale_factor=2, mode="nearest")
            self.top_down4, self.top_down3 = C2f(256 + 128, 128, 1, False), C2f(128 + 64, 64, 1,
                                                                                False)
            self.down3, self.bottom_up4 = Conv(64, 64, 3, 2), C2f(64 + 128, 128, 1, False)
            self.down4, self.bottom_up5 = Conv(128, 128, 3, 2), C2f(128 + 256, 256, 1, False)
            self.detect = Detect((64, 128, 256), (8, 16, 32), size)

        def forward(self, x):
            x = self.stem(x)
            p2 = self.stages[0](x)
            p3 = self.stages[1](p2)
            p4 = self.stages[2](p3)
            p5 = self.sppf(self.stages[3](p4))
            n4 = self.top_down4(torch.cat((self.up(p5), p4), 1))
            n3 = self.top_down3(torch.cat((self.up(n4), p3), 1))
            m4 = self.bottom_up4(torch.cat((self.down3(n3), n4), 1))
            m5 = self.bottom_up5(torch.cat((self.down4(m4), p5), 1))
            return self.detect([n3, m4, m5])

    size = 320
    return YOLOv8n(size), (1, 3, size, size)


MODELS = {"pplcnet": pplcnet, "ln_gelu_mlp": ln_gelu_mlp, "yolov8n": yolov8n}


def export(builder) -> tuple:
    """(ONNX bytes as torch.onnx writes them at opset 17, input shape), seeded weights."""
    import torch
    torch.manual_seed(0)
    model, shape = builder(torch)
    model.eval()
    buf = io.BytesIO()
    torch.onnx.export(model, (torch.zeros(shape),), buf, opset_version=17, dynamo=False,
                      input_names=["x"], output_names=["y"])
    return buf.getvalue(), shape


@contextlib.contextmanager
def patterns_off():
    from ember.graph import patterns
    saved, patterns.PATTERNS = patterns.PATTERNS, ()
    try:
        yield
    finally:
        patterns.PATTERNS = saved


def sessions(data: bytes, threads: int, feeds: dict) -> dict:
    """The ember Sessions, each compiled (and run once) for ``feeds``."""
    import ember
    out = {"ember": ember.load(data, threads=threads)}
    with patterns_off():
        out["ember_nopatterns"] = ember.load(data, threads=threads)
        out["ember_nopatterns"].run(None, feeds)
    out["ember_noopt"] = ember.load(data, threads=threads, optimize=False)
    for s in out.values():
        s.run(None, feeds)
    return out


def bench(names, threads_list, runs) -> list:
    from ember.runtime.profile import time_interleaved
    rows = []
    for name in names:
        data, shape = export(MODELS[name])
        x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
        feeds = {"x": x}
        for threads in threads_list:
            ses = sessions(data, threads, feeds)
            peer = ort_session(data, threads)
            expected = peer.run(None, feeds)[0]
            got = ses["ember"].run(None, feeds)[0]
            err = float(np.abs(got - expected).max() / np.abs(expected).max())
            fns = {k: (lambda s=s: s.run(None, feeds)) for k, s in ses.items()}
            fns["onnxruntime"] = lambda: peer.run(None, feeds)
            med = time_interleaved(fns, runs)
            nodes = {k: len(s.compile().graph.nodes) for k, s in ses.items()}
            row = dict(model=name, threads=threads, err=err, nodes=nodes,
                       **{f"{k}_ms": v * 1e3 for k, v in med.items()})
            rows.append(row)
            print(f"{name:12s} t={threads}  ember {row['ember_ms']:7.2f} ms  no patterns "
                  f"{row['ember_nopatterns_ms']:7.2f}  optimize=False {row['ember_noopt_ms']:7.2f}"
                  f"  onnxruntime {row['onnxruntime_ms']:7.2f}  ratio "
                  f"{row['ember_ms'] / row['onnxruntime_ms']:.2f}  nodes {nodes}  "
                  f"max|a-b|/max|b| {err:.1e}", flush=True)
    return rows


def write(rows, path, argv) -> None:
    lines = [f"Machine: {machine()}", "",
             f"Command: `python -m benchmarks.realworld {' '.join(argv)}`".rstrip(), "",
             "Median ms, interleaved. *no patterns*: every pass but graph/patterns.py; "
             "*optimize=False*: no pass after constant folding. Nodes: the compiled plan's.", "",
             "| model | threads | ember ms | no patterns ms | optimize=False ms | onnxruntime ms "
             "| ember/ort | no patterns/ort | nodes (all / no patterns / none) | "
             "max\\|ember−ort\\|/max\\|ort\\| |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        n = r["nodes"]
        lines.append(
            f"| {r['model']} | {r['threads']} | {r['ember_ms']:.2f} | "
            f"{r['ember_nopatterns_ms']:.2f} | {r['ember_noopt_ms']:.2f} | "
            f"{r['onnxruntime_ms']:.2f} | {r['ember_ms'] / r['onnxruntime_ms']:.2f} | "
            f"{r['ember_nopatterns_ms'] / r['onnxruntime_ms']:.2f} | "
            f"{n['ember']} / {n['ember_nopatterns']} / {n['ember_noopt']} | {r['err']:.1e} |")
    title = "## Real-world-style exports: written-out patterns fused (torch.onnx, opset 17)"
    write_section(path, title, lines)
    print(title, "", *lines, sep="\n")


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.realworld", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", choices=list(MODELS), default=list(MODELS))
    ap.add_argument("--threads", nargs="*", type=int, default=[1, 2])
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"))
    ap.add_argument("--save", metavar="PATH.onnx",
                    help="write the (single) model's export here, e.g. for `ember bench`")
    args = ap.parse_args(argv)
    if args.save:
        if len(args.models) != 1:
            ap.error("--save takes exactly one model in --models")
        with open(args.save, "wb") as f:
            f.write(export(MODELS[args.models[0]])[0])
    write(bench(args.models, args.threads, args.runs), args.out,
          sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
