"""ember's command line: ``ember info [--cpu] | run | run-batch | bench | demo | ops | report``.

User errors (any ``ember.EmberError``, an unreadable file) print one line,
``ember: error: ...``, and exit with status 2 — no traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter

import numpy as np

from .graph.cost import node_macs, parameter_count
from .graph.errors import EmberError

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
DEMO_MODEL = os.path.join(DATA_DIR, "digits_cnn.onnx")
DEMO_SAMPLE = os.path.join(DATA_DIR, "digits_sample.npz")


# ---- helpers ---------------------------------------------------------------------------------
def parse_shape(text: str) -> tuple:
    """``name=1x3x224x224`` -> ``("name", (1, 3, 224, 224))`` (``,`` also separates dims)."""
    name, sep, dims = text.rpartition("=")
    if not sep or not name or not dims:
        raise EmberError(f"--shape {text!r}: expected name=DIMS, e.g. input=1x3x224x224")
    try:
        shape = tuple(int(d) for d in dims.replace(",", "x").split("x"))
    except ValueError:
        raise EmberError(f"--shape {text!r}: dims must be integers separated by 'x'") from None
    if any(d < 0 for d in shape):
        raise EmberError(f"--shape {text!r}: dims must not be negative")
    return name, shape


def fmt_shape(shape) -> str:
    return "×".join(str(d) for d in shape) if len(shape) else "scalar"


def fmt_count(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return f"{int(n)}"


def load_session(path, threads=None, shapes=None):
    import ember
    if not os.path.exists(path):
        raise EmberError(f"no such model file: {path}")
    return ember.load(path, threads=threads, shapes=shapes or None)


def concrete_shapes(sess, shapes: dict) -> dict:
    """Every input's shape: from ``--shape``, else the model's with symbolic dims set to 1."""
    out = {}
    for info in sess.inputs:
        out[info.name] = tuple(shapes.get(info.name) or
                               (d if isinstance(d, (int, np.integer)) else 1 for d in info.shape))
    return out


def shapes_arg(values) -> dict:
    return dict(parse_shape(s) for s in values or [])


# ---- ember info ------------------------------------------------------------------------------
def cmd_info(args) -> int:
    if args.cpu:
        from .runtime.cpu import cpu_info, describe
        print(describe(cpu_info()))
        if args.model is None:
            return 0
        print()
    if args.model is None:
        raise SystemExit("ember info: give a model, or --cpu")
    shapes = shapes_arg(args.shape)
    sess = load_session(args.model, threads=args.threads)  # as declared: no shapes= yet
    g, declared_outputs = sess.graph, sess.outputs
    if shapes:  # the same graph, with --shape checked against the declared inputs
        from .runtime.session import Session
        sess = Session(g, threads=args.threads, shapes=shapes)
    compiled = sess.compile(concrete_shapes(sess, shapes))
    cg, plan = compiled.graph, compiled.plan
    print(f"model   {args.model}  (graph {g.name!r}, opset {g.opset})")
    declared = {n: g.types[n].shape for n in g.inputs}
    declared.update({o.name: o.shape for o in declared_outputs})
    for title, infos in (("inputs", sess.inputs), ("outputs", sess.outputs)):
        print(f"{title:8s}{'':24s} {'dtype':8s} {'declared':16s} compiled")
        for i in infos:
            print(f"  {i.name:28s} {i.dtype.name:8s} {fmt_shape(declared[i.name]):16s} "
                  f"{fmt_shape(cg.types[i.name].shape)}")
    before = Counter(n.op_type for n in g.nodes)
    after = Counter(n.op_type for n in cg.nodes)
    print(f"ops     {len(g.nodes)} nodes as imported, {len(cg.nodes)} after passes")
    print(f"  {'op':24s} {'imported':>8s} {'compiled':>8s}")
    for op in sorted(set(before) | set(after), key=lambda t: (-before[t], t)):
        print(f"  {op:24s} {before[op]:8d} {after[op]:8d}")
    params = parameter_count(g)
    macs = sum(node_macs(n, cg.types) for n in cg.nodes)
    print(f"params  {params:,} ({fmt_count(params)}; floating-point initializer elements)")
    print(f"MACs    {macs:,} ({fmt_count(macs)}; Conv, ConvTranspose, Gemm, MatMul)")
    print(f"memory  arena {plan.arena_bytes:,} B   naive {plan.naive_bytes:,} B   "
          f"lower bound {plan.lower_bound_bytes:,} B   (threads {compiled.threads})")
    native, steps, python = compiled.native_steps()
    print(f"steps   {native} of {steps} run from C without returning to Python"
          + (f"; the others: {', '.join(python)}" if python else ""))
    if args.plan:
        print(plan.describe())
    return 0


# ---- ember run -------------------------------------------------------------------------------
def read_inputs(sess, specs, shapes, seed) -> dict:
    """Feeds from ``-i name=file.npy`` (``-i file.npy`` for a one-input model); seeded random
    arrays for the inputs not given."""
    names = [i.name for i in sess.inputs]
    feeds = {}
    for spec in specs or []:
        name, sep, path = spec.rpartition("=")
        if not sep:
            if len(names) != 1:
                raise EmberError(f"-i {spec!r}: the model has inputs {names}; write name=file.npy")
            name, path = names[0], spec
        if name not in names:
            raise EmberError(f"-i {spec!r}: unknown input {name!r}; the model's inputs are "
                             f"{names}")
        try:
            feeds[name] = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise EmberError(f"-i {spec!r}: cannot read {path}: {e}") from None
    rng = np.random.default_rng(seed)
    full = concrete_shapes(sess, shapes)
    for info in sess.inputs:
        if info.name in feeds:
            continue
        shape = full[info.name]
        if info.dtype.kind == "f":
            feeds[info.name] = rng.standard_normal(shape).astype(info.dtype)
        elif info.dtype.kind == "b":
            feeds[info.name] = rng.integers(0, 2, shape).astype(info.dtype)
        else:
            feeds[info.name] = rng.integers(0, 10, shape).astype(info.dtype)
    return feeds


def summarize(name, a) -> str:
    line = f"  {name:24s} {a.dtype.name:8s} {fmt_shape(a.shape):16s}"
    if a.size and a.dtype.kind in "fiub":
        f = a.astype(np.float64)
        line += f" min {f.min():.4g}  max {f.max():.4g}  mean {f.mean():.4g}"
        if sum(d > 1 for d in a.shape) == 1:  # a vector, maybe with unit dims around it
            line += f"  argmax {int(np.argmax(a.reshape(-1)))}"
    return line


def median_latency(fn, repeat: int) -> float:
    times = []
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def cmd_run(args) -> int:
    shapes = shapes_arg(args.shape)
    sess = load_session(args.model, threads=args.threads, shapes=shapes)
    feeds = read_inputs(sess, args.input, shapes, args.seed)
    outputs = sess.run(None, feeds)  # also the warm-up (compiles a new shape)
    print("outputs")
    for info, a in zip(sess.outputs, outputs):
        print(summarize(info.name, a))
    lat = median_latency(lambda: sess.run(None, feeds), args.repeat)
    print(f"latency {lat * 1e3:.3f} ms  (median of {args.repeat} runs, {sess.threads} threads)")
    if args.output:
        try:
            np.savez(args.output, **{info.name: a for info, a in zip(sess.outputs, outputs)})
        except OSError as e:
            raise EmberError(f"-o {args.output}: cannot write: {e}") from None
        print(f"wrote   {args.output}")
    return 0


# ---- ember run-batch -------------------------------------------------------------------------
def save_atomically(path: str, outputs: dict) -> None:
    """.npy: the one output; .npz: every output by name. Written to a temporary file in the
    same folder and renamed, so a reader never sees half a file."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            if path.endswith(".npz"):
                np.savez(f, **outputs)
            else:
                (only,) = outputs.values()
                np.save(f, only)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise EmberError(f"--output {path}: cannot write: {e}") from None


def cmd_run_batch(args) -> int:
    from .runtime.batch_inference import launched_by_mpi, run_batch
    mpi = args.mpi == "on" or (args.mpi == "auto" and launched_by_mpi())
    ctx = None
    if mpi:
        from .runtime.distributed import MPIContext
        ctx = MPIContext(abort_on_exception=True)
    if not (args.output.endswith(".npy") or args.output.endswith(".npz")):
        raise EmberError(f"--output {args.output}: expected a .npy (one output) or .npz file")
    try:
        x = np.load(args.input, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise EmberError(f"--input {args.input}: cannot read a .npy array: {e}") from None
    if not isinstance(x, np.ndarray):
        raise EmberError(f"--input {args.input}: holds several arrays (.npz); give one .npy")
    names = args.output_name or None
    if args.output.endswith(".npy") and names and len(names) > 1:
        raise EmberError("a .npy --output holds one array: give one --output-name or use .npz")
    from .graph.errors import DistributedError
    t0 = time.perf_counter()
    try:
        outputs = run_batch(args.model, x, args.batch, args.threads, args.input_name, names,
                            ctx, lambda model, threads: load_session(model, threads=threads),
                            progress=show_progress(args))
    except DistributedError:
        if ctx is not None and ctx.rank != 0:
            return 2            # every rank has the same error: rank 0 prints it
        raise
    secs = time.perf_counter() - t0
    if outputs is None:         # not rank 0
        return 0
    if args.output.endswith(".npy") and len(outputs) > 1:
        first = next(iter(outputs))
        print(f"note: the model has outputs {list(outputs)}; writing {first!r} (choose with "
              f"--output-name, or write them all to a .npz)", file=sys.stderr)
        outputs = {first: outputs[first]}
    save_atomically(args.output, outputs)
    ranks = f"{ctx.size} rank(s)" if ctx else "1 process"
    print(f"wrote {args.output}: " + ", ".join(f"{n} {fmt_shape(a.shape)}"
                                              for n, a in outputs.items()) +
          f"   ({len(x)} rows, {ranks}, {secs:.2f} s, {len(x) / secs:.1f} rows/s)")
    return 0


def show_progress(args) -> bool:
    """A bar unless ``--quiet``, and only on a terminal (runtime/progress.py)."""
    from .runtime.progress import wanted
    return wanted(quiet=getattr(args, "quiet", False))


# ---- ember bench -----------------------------------------------------------------------------
# a bench whose timed runs should take longer than this (from the warm-up) shows a progress bar
LONG_BENCH_S = 2.0


class BenchBar:
    """``time_interleaved``'s ``on_round`` for a long bench: a bar of the timed rounds in rows
    (``batch`` per round: rows/s and the time left), drawn when the warm-up shows the timed
    runs will take over ``LONG_BENCH_S``."""

    def __init__(self, runs: int, batch: int, enabled: bool):
        self.runs, self.batch, self.enabled = runs, batch, enabled
        self.bar = None
        self.warm = False

    def __call__(self, seconds: float) -> None:
        from .runtime.progress import bar
        if not self.warm:               # the first call reports a warm-up round
            self.warm = True
            if self.enabled and seconds * self.runs > LONG_BENCH_S:
                self.bar = bar(self.runs * self.batch, "bench", "rows")
        elif self.bar is not None:
            self.bar.update(self.batch)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def write_trace(prof, path: str) -> None:
    prof.to_chrome_trace(path)
    print(f"wrote   {path}  (Chrome trace: open in ui.perfetto.dev or chrome://tracing)")


def batch_shapes(sess, batch, shapes) -> dict:
    """``--batch B``: every input's first dim set to B (it must be symbolic or already B)."""
    out = dict(shapes)
    if batch:
        for info in sess.inputs:
            if info.name in out or not info.shape:
                continue
            first = info.shape[0]
            if isinstance(first, (int, np.integer)) and first != batch:
                raise EmberError(f"--batch {batch}: input {info.name!r} has a fixed batch of "
                                 f"{first} (shape {fmt_shape(info.shape)})")
            out[info.name] = (batch,) + tuple(d if isinstance(d, (int, np.integer)) else 1
                                              for d in info.shape[1:])
    return out


def require_static_shapes(sess, shapes: dict) -> None:
    """Timing a model at made-up sizes misleads: a symbolic dim other than the batch must
    come from ``--shape`` (the batch defaults to 1, or ``--batch``)."""
    for info in sess.inputs:
        if info.name in shapes:
            continue
        loose = [d for d in info.shape[1:] if not isinstance(d, (int, np.integer))]
        if loose:
            example = ",".join(str(d) if isinstance(d, (int, np.integer)) else "?"
                               for d in info.shape)
            raise EmberError(f"input {info.name!r} has shape {fmt_shape(info.shape)}, whose "
                             f"dims {loose} are symbolic: give the size to time with --shape "
                             f"{info.name}={example} (every ? a number)")


def cmd_bench(args) -> int:
    from .runtime.profile import time_interleaved
    sess = load_session(args.model, threads=args.threads)
    shapes = batch_shapes(sess, args.batch, shapes_arg(args.shape))
    require_static_shapes(sess, shapes)
    feeds = read_inputs(sess, None, shapes, seed=0)
    fns = {"ember": lambda: sess.run(None, feeds)}
    if args.compare:
        try:
            import onnxruntime as ort
        except ImportError:
            raise EmberError("--compare onnxruntime: onnxruntime is not installed "
                             "(pip install onnxruntime)") from None
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = sess.threads
        opts.inter_op_num_threads = 1
        # timed interleaved: spinning ort workers would steal a core from ember's runs
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        peer = ort.InferenceSession(args.model, opts, providers=["CPUExecutionProvider"])
        fns["onnxruntime"] = lambda: peer.run(None, feeds)
    batch = next(iter(feeds.values())).shape[0] if feeds and \
        next(iter(feeds.values())).ndim else 1
    progress = BenchBar(args.runs, batch, show_progress(args))
    try:
        med = time_interleaved(fns, args.runs, on_round=progress)
    finally:
        progress.close()
    print(f"model   {args.model}   threads {sess.threads}   inputs " + ", ".join(
        f"{n}:{fmt_shape(a.shape)}" for n, a in feeds.items()))
    for name, secs in med.items():
        print(f"  {name:12s} {secs * 1e3:9.3f} ms   {batch / secs:9.1f} items/s   "
              f"(median of {args.runs}, interleaved)")
    if "onnxruntime" in med:
        print(f"  ratio ember/onnxruntime {med['ember'] / med['onnxruntime']:.2f}")
    if args.trace and not args.profile:
        write_trace(sess.profile(feeds, runs=args.runs), args.trace)
    if args.profile:
        prof = sess.profile(feeds, runs=args.runs)
        print(prof)
        if args.trace:
            write_trace(prof, args.trace)
        if args.compare:
            from .runtime.peer_profile import comparison_table, onnxruntime_node_times
            peer_rows = onnxruntime_node_times(args.model, feeds, sess.threads, args.runs)
            print("\nper node, ember beside onnxruntime's own profiler (median ms):")
            print(comparison_table(prof, peer_rows))
    return 0


# ---- ember demo ------------------------------------------------------------------------------
def ascii_digit(img) -> list:
    shades = " .:-=+*#%@"
    return ["".join(shades[min(9, int(v * 9.99))] * 2 for v in row) for row in img]


def demo_model():
    """The demo's CNN, written as a user would in ``ember.nn`` (≈ 11 k parameters)."""
    from . import nn
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(0.2), nn.Linear(32 * 2 * 2, 10))


def cmd_demo(args) -> int:
    """ember's main job end to end: train a CNN on the bundled digits, export it to ONNX,
    reload the file with ``ember.load`` and serve predictions from it."""
    import tempfile

    import ember
    from . import nn, optim
    from .datasets import load_digits, train_test_split

    x, y = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(x, y, 0.2, seed=args.seed)
    print(f"ember demo: training a CNN on the bundled 8×8 digits ({len(x_train)} train, "
          f"{len(x_test)} test images)")
    trainer = ember.Trainer(demo_model(), input_shape=(1, 8, 8), loss=nn.CrossEntropyLoss(),
                            optimizer=optim.Adam(lr=3e-3), batch_size=32, threads=args.threads,
                            seed=args.seed)
    t0 = time.perf_counter()
    history = trainer.fit(x_train, y_train, epochs=args.epochs,
                          validation_data=(x_test, y_test), verbose=not args.quiet)
    train_s = time.perf_counter() - t0
    print(f"trained      {args.epochs} epochs in {train_s:.1f} s; final loss "
          f"{history.history['loss'][-1]:.4f}, test accuracy "
          f"{history.history['val_accuracy'][-1]:.1%}")

    out_dir = args.out or tempfile.mkdtemp(prefix="ember-demo-")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "digits_cnn.onnx")
    trainer.export_onnx(path)
    if args.out:
        save_curves(history, os.path.join(out_dir, "training.png"))
    sess = ember.load(path, threads=args.threads)
    print(f"exported     {path} ({os.path.getsize(path):,} bytes), reloaded with ember.load")

    (probs,) = sess.run(None, {sess.inputs[0].name: x_test[:1]})
    print(f"first test image (label {y_test[0]}):")
    for k, row in enumerate(ascii_digit(x_test[0, 0])):
        note = f"   predicted {int(probs[0].argmax())}" if k == 3 else ""
        print(f"  |{row}|{note}")
    (logits,) = sess.run(None, {sess.inputs[0].name: x_test})
    pred = logits.argmax(1)
    correct = int((pred == y_test).sum())
    print(f"accuracy     {correct}/{len(y_test)} = {correct / len(y_test):.1%} on held-out "
          f"images, from the reloaded ONNX file")
    one = median_latency(lambda: sess.run(None, {sess.inputs[0].name: x_test[:1]}), 20)
    batch = median_latency(lambda: sess.run(None, {sess.inputs[0].name: x_test}), 10)
    print(f"latency      {one * 1e3:.3f} ms for 1 image, {batch * 1e3:.3f} ms for "
          f"{len(x_test)} (median, {sess.threads} threads)")
    return 0


def save_curves(history, path: str) -> None:
    """The demo's loss and accuracy curves as a PNG; a note instead when matplotlib is
    missing (it is optional)."""
    try:
        history.plot(path)
    except EmberError as e:
        if "matplotlib" not in str(e):
            raise
        print(f"note: {e}: no {os.path.basename(path)}", file=sys.stderr)
        return
    print(f"curves       {path} (loss and accuracy per epoch)")


# ---- ember ops -------------------------------------------------------------------------------
def ops_table(markdown: bool) -> str:
    """The default-domain ops, the ones a model file may use; ember's training ops are not
    listed (no file can name them)."""
    from .graph.ops import get_op, supported_ops
    from .runtime.binders import binding_for

    def arity(lo_hi):
        lo, hi = lo_hi
        return f"{lo}" if lo == hi else f"{lo}–{'∞' if hi is None else hi}"

    rows = []
    for op_type in supported_ops():
        op = get_op(op_type)
        attrs = ", ".join(sorted(op.attrs)) or "—"
        kind = binding_for(op_type).kind
        if op.view:
            runs = "view (no copy)"
        elif kind == "numpy":
            runs = "numpy into the arena"
        elif kind == "kernel":
            runs = "Cython kernel"
        elif kind == "subgraph":
            runs = "subgraph plans"
        else:
            runs = "numpy reference"
        rows.append((op_type, arity(op.num_inputs), arity(op.num_outputs), attrs, runs))
    if not markdown:
        return "\n".join(f"{r[0]:24s} {r[4]:16s} {r[3]}" for r in rows) + \
            f"\n{len(rows)} ops"
    lines = ["| op | inputs | outputs | attributes | runs on |", "|---|---|---|---|---|"]
    lines += [f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]} |" for r in rows]
    return "\n".join(lines)


def cmd_ops(args) -> int:
    print(ops_table(args.markdown))
    return 0


# ---- ember report ----------------------------------------------------------------------------
def cmd_report(args) -> int:
    from .report import build_report
    folder = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(folder):
        raise EmberError(f"-o {args.output}: no such folder {folder}")
    shapes = shapes_arg(args.shape)
    sess = load_session(args.model, threads=args.threads, shapes=shapes)
    html = build_report(sess, concrete_shapes(sess, shapes), args.runs if args.profile else 0,
                        os.path.basename(args.model))
    try:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(html)
    except OSError as e:
        raise EmberError(f"-o {args.output}: cannot write the report: {e.strerror}") from None
    print(f"wrote {args.output} ({os.path.getsize(args.output):,} bytes)")
    return 0


def add_report_command(sub) -> None:
    report = sub.add_parser("report", help="one self-contained HTML page: the fused graph, the "
                            "memory plan, a roofline, the machine")
    report.add_argument("model", help="an .onnx file")
    report.add_argument("-o", "--output", required=True, metavar="REPORT.html",
                        help="the HTML file to write (its folder must exist)")
    report.add_argument("--shape", action="append", metavar="NAME=DIMS",
                        help="concrete input shape (symbolic dims default to 1)")
    report.add_argument("--threads", type=positive_int, default=None)
    report.add_argument("--profile", action="store_true", help="time every node: colour the "
                        "graph by share of the time and place the hot nodes on the roofline")
    report.add_argument("--runs", type=positive_int, default=10,
                        help="profiled runs (default 10)")
    report.set_defaults(fn=cmd_report)


# ---- entry point -----------------------------------------------------------------------------
def positive_int(text):
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {n}")
    return n


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ember", description="ember: a compiled-graph CNN runtime "
                                "for the CPU")
    sub = p.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="inputs, outputs, ops, parameters, MACs, memory plan; "
                          "--cpu: the instruction set, threads and caches the kernels use")
    info.add_argument("model", nargs="?", help="an .onnx file")
    info.add_argument("--cpu", action="store_true", help="the machine as ember's kernels see "
                      "it: instruction set in use, cores and threads, caches, GEMM blocking")
    info.add_argument("--shape", action="append", metavar="NAME=DIMS",
                      help="concrete input shape, e.g. input=1x3x224x224 (repeatable)")
    info.add_argument("--plan", action="store_true", help="print every value's offset, size, "
                      "lifetime")
    info.add_argument("--threads", type=positive_int, default=None)
    info.set_defaults(fn=cmd_info)

    run = sub.add_parser("run", help="run a model on .npy inputs (random when none given)")
    run.add_argument("model", help="an .onnx file")
    run.add_argument("-i", "--input", action="append", metavar="NAME=FILE.npy")
    run.add_argument("-o", "--output", metavar="OUT.npz", help="save the outputs here")
    run.add_argument("--shape", action="append", metavar="NAME=DIMS",
                     help="shape of random inputs with symbolic dims (default 1)")
    run.add_argument("--threads", type=positive_int, default=None)
    run.add_argument("--repeat", type=positive_int, default=10, help="timed runs (default 10)")
    run.add_argument("--seed", type=int, default=0, help="seed of random inputs (default 0)")
    run.set_defaults(fn=cmd_run)

    rb = sub.add_parser("run-batch", help="a model over every row of a .npy (across MPI ranks "
                                          "under mpirun)")
    rb.add_argument("model", help="an .onnx file")
    rb.add_argument("--input", required=True, metavar="DATA.npy", help="rows along axis 0")
    rb.add_argument("--output", required=True, metavar="OUT.npy|OUT.npz")
    rb.add_argument("--batch", type=positive_int, default=64, help="rows per run (default 64; "
                    "a model with a fixed batch uses its own)")
    rb.add_argument("--threads", type=positive_int, default=None,
                    help="per process (default: this rank's share of its host's cores)")
    rb.add_argument("--input-name", default=None, help="the input the rows feed")
    rb.add_argument("--output-name", action="append", default=None, metavar="NAME",
                    help="an output to keep (repeatable; default all)")
    rb.add_argument("--mpi", choices=["auto", "on", "off"], default="auto",
                    help="auto: use MPI when started by mpirun/srun (default)")
    rb.add_argument("--quiet", action="store_true", help="no progress bar (it shows on a "
                    "terminal; EMBER_PROGRESS=1 forces it, e.g. under mpirun)")
    rb.set_defaults(fn=cmd_run_batch)

    bench = sub.add_parser("bench", help="latency and throughput, optionally against "
                           "onnxruntime, and a per-node profile")
    bench.add_argument("model", help="an .onnx file")
    bench.add_argument("--threads", type=positive_int, default=None)
    bench.add_argument("--batch", type=positive_int, default=None,
                       help="batch size for inputs with a symbolic first dim")
    bench.add_argument("--shape", action="append", metavar="NAME=DIMS")
    bench.add_argument("--runs", type=positive_int, default=20, help="timed runs (default 20)")
    bench.add_argument("--compare", choices=["onnxruntime"], help="time a peer in the same run")
    bench.add_argument("--profile", action="store_true", help="time per node, slowest first")
    bench.add_argument("--trace", metavar="OUT.json", default=None,
                       help="write the per-node profile as a Chrome trace (Perfetto, "
                            "chrome://tracing)")
    bench.add_argument("--quiet", action="store_true", help="no progress bar")
    bench.set_defaults(fn=cmd_bench)

    demo = sub.add_parser("demo", help="train a CNN on the bundled digits, export it to ONNX, "
                                       "reload it and classify")
    demo.add_argument("--threads", type=positive_int, default=None)
    demo.add_argument("--epochs", type=positive_int, default=10)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--out", default=None, help="folder for the exported model and the "
                      "training curves, training.png (default: a temporary folder, no plot)")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(fn=cmd_demo)

    ops = sub.add_parser("ops", help="list the ONNX ops a model may use (from the op registry)")
    ops.add_argument("--markdown", action="store_true", help="as a Markdown table")
    ops.set_defaults(fn=cmd_ops)
    add_report_command(sub)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except BrokenPipeError:  # e.g. `ember ops | head`
        sys.stdout = open(os.devnull, "w")
        return 0
    except EmberError as e:
        message = ""
        for line in filter(None, (ln.strip() for ln in str(e).splitlines())):
            message += ("" if not message else " " if message.endswith(":") else "; ") + line
        print(f"ember: error: {message}", file=sys.stderr)
        return 2
