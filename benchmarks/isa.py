"""ember's kernels on each instruction-set level, and on other builds, against onnxruntime.

    python -m benchmarks.isa                               # every level this CPU runs
    python -m benchmarks.isa --isa avx2 generic --models resnet18 --threads 1
    python -m benchmarks.isa --python native=/path/to/other/venv/bin/python

Each (build, level) runs in a child process of its own — the level is chosen once per process
(``EMBER_ISA``) — where ember and onnxruntime are timed interleaved, so each row's ember/ort
ratio is free of the drift between children; two builds or levels compare by the ratio of their
ratios. Each child also times a 1024³ float32 GEMM through ember's kernel and through numpy's
BLAS. ``--python`` adds another interpreter with another ember installed (an older build, a
wheel) to compare with this one. Results go to stdout and the "Instruction sets" section of
``benchmarks/RESULTS.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MODEL_SET = [("small_vgg", 32), ("resnet18", 1), ("mobilenetv2", 1)]


# ---- child: one build, one level ---------------------------------------------------------------
def child_gemm_gflops(threads: int, n: int = 1024, runs: int = 7) -> dict:
    import numpy as np
    from ember.kernels.gemm import gemm
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    y = np.empty((n, n), np.float32)
    try:
        from threadpoolctl import threadpool_limits
        limits = threadpool_limits(limits=threads)
    except ImportError:
        limits = None
    fns = {"ember": lambda: gemm(a, b, y, False, False, 1.0, 0.0, None, 1, 0, 0.0, 0.0, threads),
           "numpy": lambda: a @ b}
    times = {k: [] for k in fns}
    for fn in fns.values():
        fn()
    for _ in range(runs):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    if limits is not None:
        limits.restore_original_limits()
    return {k: 2 * n ** 3 / statistics.median(v) / 1e9 for k, v in times.items()}


def child(args) -> None:
    import importlib.util
    import numpy as np
    import ember
    from ember.runtime.profile import time_interleaved
    from .run import ort_session
    spec = importlib.util.spec_from_file_location("models", os.path.join(args.root, "tests",
                                                                           "models.py"))
    builders = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builders)
    try:
        from ember.kernels import simd
        isa = simd.isa()
    except ImportError:   # a build from before run-time dispatch
        isa = "compile-time"
    out = {"isa": isa, "rows": [], "gemm": {}}
    for threads in args.threads:
        out["gemm"][threads] = child_gemm_gflops(threads)
    for name, batch in [m for m in MODEL_SET if not args.models or m[0] in args.models]:
        model = getattr(builders, name)(batch=batch)
        data = model.SerializeToString()
        inp = model.graph.input[0]
        shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
        feeds = {inp.name: np.random.default_rng(0).standard_normal(shape, dtype=np.float32)}
        for threads in args.threads:
            sess = ember.load(data, threads=threads)
            peer = ort_session(data, threads)
            med = time_interleaved({"ember": lambda: sess.run(None, feeds),
                                    "ort": lambda: peer.run(None, feeds)}, args.runs)
            out["rows"].append(dict(model=name, batch=batch, threads=threads,
                                    ember_ms=med["ember"] * 1e3, ort_ms=med["ort"] * 1e3))
    print("RESULT " + json.dumps(out))


# ---- parent ------------------------------------------------------------------------------------
def run_child(python: str, isa: str, args) -> dict:
    # the benchmarks package alone on the path (a link to it in a folder of its own), run from
    # outside the checkout: each interpreter imports its own installed ember, not the checkout's
    link_dir = tempfile.mkdtemp(prefix="ember-bench-")
    os.symlink(HERE, os.path.join(link_dir, "benchmarks"))
    env = dict(os.environ, EMBER_ISA=isa, PYTHONPATH=link_dir)
    cmd = [python, "-m", "benchmarks.isa", "--child", "--root", ROOT, "--runs", str(args.runs),
           "--threads", *map(str, args.threads)]
    if args.models:
        cmd += ["--models", *args.models]
    # from outside the checkout, so each interpreter imports its own installed ember
    try:
        r = subprocess.run(cmd, cwd="/", env=env, capture_output=True, text=True)
    finally:
        shutil.rmtree(link_dir, ignore_errors=True)
    if r.returncode != 0:
        raise SystemExit(f"{python} with EMBER_ISA={isa} failed:\n{r.stderr[-3000:]}")
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.isa", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--isa", nargs="*", help="levels to run (default: every level this CPU "
                    "runs, best first)")
    ap.add_argument("--python", nargs="*", default=[], metavar="LABEL=PATH",
                    help="another interpreter (another ember build) to run at its best level")
    ap.add_argument("--models", nargs="*")
    ap.add_argument("--threads", nargs="*", type=int, default=[1])
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--root", default=ROOT, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"))
    args = ap.parse_args(argv)
    if args.child:
        return child(args)
    from ember.kernels import simd
    from ember.runtime.cpu import cpu_model
    from .results import write_section
    ranks = ["generic", "avx2", "avx512"]
    levels = args.isa or [lv for lv in reversed(ranks)
                          if ranks.index(lv) <= ranks.index(simd.cpu_isa())]
    runs = [(f"this build, {lv}", sys.executable, lv) for lv in levels]
    runs += [(label, path, "auto") for label, _, path in
             (p.partition("=") for p in args.python)]
    results = {}
    for label, python, isa in runs:
        results[label] = res = run_child(python, isa, args)
        for r in res["rows"]:
            print(f"{label:28s} {res['isa']:8s} {r['model']:12s} b={r['batch']:<3d} "
                  f"t={r['threads']}  ember {r['ember_ms']:8.2f} ms  ort {r['ort_ms']:8.2f} ms"
                  f"  ratio {r['ember_ms'] / r['ort_ms']:.2f}", flush=True)
        for t, g in res["gemm"].items():
            print(f"{label:28s} sgemm 1024³ t={t}: ember {g['ember']:.0f} GFLOP/s, numpy "
                  f"{g['numpy']:.0f} GFLOP/s ({100 * g['ember'] / g['numpy']:.0f}%)", flush=True)
    labels = list(results)
    head = [f"Machine: {cpu_model()}, best level {simd.cpu_isa()}", "",
            f"Command: `python -m benchmarks.isa {' '.join(argv or sys.argv[1:])}`".rstrip(), "",
            "ember/onnxruntime latency ratio per build and level (each in its own process, ember "
            "and onnxruntime interleaved; median of the runs):", ""]
    table = ["| model | batch | threads | " + " | ".join(labels) + " |",
             "|---|---|---|" + "---|" * len(labels)]
    first = results[labels[0]]["rows"]
    for i, r in enumerate(first):
        cells = [f"{results[lb]['rows'][i]['ember_ms'] / results[lb]['rows'][i]['ort_ms']:.2f}"
                 for lb in labels]
        table.append(f"| {r['model']} | {r['batch']} | {r['threads']} | " + " | ".join(cells)
                     + " |")
    gemm = ["", "SGEMM 1024³, GFLOP/s, ember's kernel / numpy's BLAS in the same process:", "",
            "| threads | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for t in results[labels[0]]["gemm"]:
        gemm.append(f"| {t} | " + " | ".join(
            f"{results[lb]['gemm'][t]['ember']:.0f} / {results[lb]['gemm'][t]['numpy']:.0f}"
            for lb in labels) + " |")
    lines = head + table + gemm
    write_section(args.out, "## Instruction sets", lines)
    print("", *lines, sep="\n")


if __name__ == "__main__":
    main()
