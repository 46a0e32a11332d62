"""Real-world-style exports: models as torch.onnx writes them, patterns spelled out op by op.

    python -m benchmarks.realworld                  # both models, 1 and 2 threads
    python -m benchmarks.realworld --threads 1 --runs 20

* ``pplcnet``: a PP-LCNet-like classifier (PP-LCNet x1.0's stages, 224×224): depthwise-separable
  blocks whose hard-swish is written ``x * relu6(x + 3) / 6`` (Add/Clip/Mul/Div in the file) and
  squeeze-excite gates with a hand-written hard-sigmoid (``relu6(x + 3) / 6``), as PaddleOCR-
  style exports carry them;
* ``ln_gelu_mlp``: a layer-norm/GELU MLP head over 196 tokens of width 384 (two pre-norm MLP
  blocks with residuals, a final norm, token mean, a 1000-way classifier), the layer norm
  hand-written (ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div/Mul/Add) and the GELU in its erf form
  ``0.5·x·(1 + erf(x/√2))``.

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


MODELS = {"pplcnet": pplcnet, "ln_gelu_mlp": ln_gelu_mlp}


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
    args = ap.parse_args(argv)
    write(bench(args.models, args.threads, args.runs), args.out,
          sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
