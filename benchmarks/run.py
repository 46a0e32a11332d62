"""ember vs onnxruntime (and PyTorch when installed), side by side in one process run.

    python -m benchmarks                       # the full model set, 1 and 2 threads
    python -m benchmarks --models lenet5 --threads 1 --runs 20

For each model, batch and thread count both engines are warmed up, then timed *interleaved*
(ember, peer, ember, peer, …) so that a noisy neighbour slows both alike; the median of the runs
is reported. The peak is numpy's float32 GEMM at 1024³ measured in the same run. Results go to
stdout and to ``benchmarks/RESULTS.md``.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

from .results import write_section

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# (model builder name in tests/models.py, batch)
MODEL_SET = [("lenet5", 1), ("lenet5", 64), ("small_vgg", 1), ("small_vgg", 32),
             ("resnet18", 1), ("mobilenetv2", 1)]


def load_builders():
    spec = importlib.util.spec_from_file_location("ember_test_models",
                                                  os.path.join(ROOT, "tests", "models.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def numpy_peak_gflops(threads: int, n: int = 1024, runs: int = 7) -> float:
    """float32 GEMM GFLOP/s of numpy's BLAS with ``threads`` threads (threadpoolctl if present,
    else whatever numpy uses)."""
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
    try:
        from threadpoolctl import threadpool_limits
        ctx = threadpool_limits(limits=threads)
    except ImportError:
        ctx = None
    try:
        a @ b
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t)
    finally:
        if ctx is not None:
            ctx.restore_original_limits()
    return 2 * n ** 3 / statistics.median(times) / 1e9


def ort_session(model_bytes: bytes, threads: int):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Interleaved timing: onnxruntime's worker threads would otherwise keep spinning after each
    # run and steal a core from ember's next run (and ort itself measures faster without it).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])


def bench_inference(builders, models, threads_list, runs) -> list:
    import ember
    from ember.graph.cost import graph_macs
    from ember.runtime.profile import time_interleaved
    rows = []
    for name, batch in models:
        model = getattr(builders, name)(batch=batch)
        data = model.SerializeToString()
        inp = model.graph.input[0]
        shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
        x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
        for threads in threads_list:
            sess = ember.load(data, threads=threads)
            macs = graph_macs(sess.compile().graph)
            native, steps, _ = sess.compile().native_steps()
            peer = ort_session(data, threads)
            feeds = {inp.name: x}
            fns = {"ember": lambda: sess.run(None, feeds),
                   "onnxruntime": lambda: peer.run(None, feeds)}
            med = time_interleaved(fns, runs)
            # PyTorch is timed on its own, after: its OpenMP team (libgomp's default wait policy)
            # spins for milliseconds after every call and would take a core from whichever engine
            # ran next in the interleaved loop
            torch_fn = torch_inference(name, threads, x)
            if torch_fn is not None:
                med.update(time_interleaved({"torch": torch_fn}, runs))
            rows.append(dict(model=name, batch=batch, threads=threads, macs=macs,
                             ember_ms=med["ember"] * 1e3, ort_ms=med["onnxruntime"] * 1e3,
                             torch_ms=med.get("torch", float("nan")) * 1e3,
                             arena=sess.plan().arena_bytes, native=f"{native}/{steps}"))
            print(f"{name:12s} b={batch:<3d} t={threads}  ember {med['ember']*1e3:8.2f} ms   "
                  f"onnxruntime {med['onnxruntime']*1e3:8.2f} ms   ratio "
                  f"{med['ember']/med['onnxruntime']:.2f}   torch "
                  f"{med.get('torch', float('nan'))*1e3:8.2f} ms", flush=True)
    return rows


def torch_inference(name: str, threads: int, x):
    """The same architecture in PyTorch (benchmarks/nets.py), eval mode, or None without torch."""
    if importlib.util.find_spec("torch") is None:
        return None
    import torch
    from .nets import NETS
    torch.set_num_threads(threads)
    model = NETS[name][0](torch.nn).eval()
    xt = torch.from_numpy(x)

    def run():
        with torch.inference_mode():
            return model(xt)
    return run


def peak_rss(engine: str, model) -> int:
    """Peak RSS (bytes) of a fresh process that loads one model file and runs it once with one
    engine (1 thread). The model is written to a temporary file first so that building it costs
    the measured process nothing; the process imports only numpy and its engine."""
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        with open(path, "wb") as f:
            f.write(model.SerializeToString())
        inp = model.graph.input[0]
        shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
        run = ("import ember; s = ember.load(path, threads=1)" if engine == "ember" else
               "import onnxruntime as ort; o = ort.SessionOptions(); o.intra_op_num_threads = 1; "
               "s = ort.InferenceSession(path, o, providers=['CPUExecutionProvider'])")
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec from the forking parent
        code = (f"import numpy as np\npath = {path!r}\n{run}\n"
                f"s.run(None, {{{inp.name!r}: np.zeros({shape}, np.float32)}})\n"
                "print([int(l.split()[1]) * 1024 for l in open('/proc/self/status')\n"
                "       if l.startswith('VmHWM:')][0])\n")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True, cwd=tmp)
    return int(out.stdout.strip().splitlines()[-1])


def machine() -> str:
    """The CPU (with its family and model: "AMD EPYC" alone names Zen 3 and Zen 5 alike), the
    instruction-set level ember's kernels use, and the software versions."""
    cpu = platform.processor() or platform.machine()
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if not line.strip():
                    break   # the first processor's block is enough
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    if "model name" in fields:
        cpu = fields["model name"]
    if "cpu family" in fields and "model" in fields:
        cpu += f" (family {fields['cpu family']} model {fields['model']})"
    from ember.kernels import simd
    cpu += f", ember's kernels: {simd.isa()}"
    try:
        ncpu = len(os.sched_getaffinity(0))
    except AttributeError:
        ncpu = os.cpu_count()
    import onnxruntime
    return (f"{cpu}, {ncpu} CPUs available, Python {platform.python_version()}, numpy "
            f"{np.__version__}, onnxruntime {onnxruntime.__version__}")


def write_results(rows, peaks, mem, path):
    """The inference sections of RESULTS.md (other benchmarks own the other sections)."""
    head = [f"Machine: {machine()}", "",
            f"Command: `python -m benchmarks {' '.join(sys.argv[1:])}`".rstrip(), "",
            "numpy sgemm 1024³ peak (same run): " +
            ", ".join(f"{t} thread(s) {g:.0f} GFLOP/s" for t, g in peaks.items())]
    lat = ["| model | batch | threads | ember ms | onnxruntime ms | ember/ort | PyTorch ms | "
           "ember/PyTorch | ember img/s | ember GFLOP/s | % of peak | native steps |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        gflops = 2 * r["macs"] / (r["ember_ms"] / 1e3) / 1e9
        lat.append(f"| {r['model']} | {r['batch']} | {r['threads']} | {r['ember_ms']:.2f} | "
                   f"{r['ort_ms']:.2f} | {r['ember_ms'] / r['ort_ms']:.2f} | "
                   f"{r['torch_ms']:.2f} | {r['ember_ms'] / r['torch_ms']:.2f} | "
                   f"{r['batch'] / (r['ember_ms'] / 1e3):.0f} | {gflops:.1f} | "
                   f"{100 * gflops / peaks[r['threads']]:.0f}% | {r['native']} |")
    sections = [("## Inference: machine and peak", head),
                ("## Inference latency (median, interleaved)", lat)]
    if mem:
        table = ["| model | batch | ember MiB | onnxruntime MiB | ember arena MiB |",
                 "|---|---|---|---|---|"]
        for (name, batch), (e, o, arena) in mem.items():
            table.append(f"| {name} | {batch} | {e / 2**20:.1f} | {o / 2**20:.1f} | "
                         f"{arena / 2**20:.1f} |")
        sections.append(("## Peak RSS of a process that loads and runs the model (1 thread)",
                         table))
    for title, lines in sections:
        write_section(path, title, lines)
        print(title, "", *lines, "", sep="\n")


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", help="subset of model names (default: all)")
    ap.add_argument("--threads", nargs="*", type=int, default=[1, 2])
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"))
    args = ap.parse_args(argv)
    builders = load_builders()
    models = [m for m in MODEL_SET if not args.models or m[0] in args.models]
    peaks = {t: numpy_peak_gflops(t) for t in args.threads}
    print("numpy sgemm peak:", {t: round(g, 1) for t, g in peaks.items()}, "GFLOP/s")
    rows = bench_inference(builders, models, args.threads, args.runs)
    mem = {}
    if not args.no_memory:
        arena = {(r["model"], r["batch"]): r["arena"] for r in rows}
        for name, batch in models:
            model = getattr(builders, name)(batch=batch)
            mem[(name, batch)] = (peak_rss("ember", model), peak_rss("ort", model),
                                  arena[(name, batch)])
    write_results(rows, peaks, mem, args.out)


if __name__ == "__main__":
    main()
