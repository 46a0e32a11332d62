"""Recurrent layers: ember against onnxruntime (inference), interleaved medians.

    python -m benchmarks.recurrent                 # the table, written to RESULTS.md
    python -m benchmarks.recurrent --runs 5 --no-write

Models (issue 20 §2): a 2-layer LSTM(256) and a GRU(128) (``linear_before_reset=1``, torch's
form), sequences of 100 steps, batch 1 and 16, input size equal to the hidden size; random
weights. Each (model, batch, threads) row builds one ember Session and one onnxruntime
session with that many threads, warms both, then alternates single runs of each ``--runs``
times and reports the medians and their ratio (ember/onnxruntime: < 1 means ember is faster).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SEQ = 100
MODELS = {"lstm2x256": ("LSTM", 256, 2), "gru128": ("GRU", 128, 1)}


def build(op: str, hidden: int, layers: int, seed: int = 0):
    """A stack of ``layers`` ONNX recurrent nodes (forward), X ``[seq, batch, hidden]`` with
    symbolic seq and batch; each layer's Y ``[seq, 1, batch, H]`` squeezed into the next X."""
    import onnx
    from onnx import TensorProto, helper
    rng = np.random.default_rng(seed)
    G = {"LSTM": 4, "GRU": 3}[op]
    nodes, inits, x = [], [], "X"
    for layer in range(layers):
        w = {f"W{layer}": rng.uniform(-0.1, 0.1, (1, G * hidden, hidden)),
             f"R{layer}": rng.uniform(-0.1, 0.1, (1, G * hidden, hidden)),
             f"B{layer}": rng.uniform(-0.1, 0.1, (1, 2 * G * hidden))}
        inits += [onnx.numpy_helper.from_array(v.astype(np.float32), k) for k, v in w.items()]
        attrs = {"linear_before_reset": 1} if op == "GRU" else {}
        nodes.append(helper.make_node(op, [x, *w], [f"Y{layer}"], hidden_size=hidden,
                                      name=f"{op.lower()}{layer}", **attrs))
        nodes.append(helper.make_node("Squeeze", [f"Y{layer}", "axis1"], [f"S{layer}"]))
        x = f"S{layer}"
    inits.append(onnx.numpy_helper.from_array(np.array([1], np.int64), "axis1"))
    graph = helper.make_graph(
        nodes, op, [helper.make_tensor_value_info("X", TensorProto.FLOAT,
                                                  ["seq", "batch", hidden])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    return model


def measure(model, x, threads: int, runs: int) -> tuple:
    import onnxruntime as ort

    import ember
    sess = ember.load(model, threads=threads)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    ref = ort.InferenceSession(model.SerializeToString(), opts,
                               providers=["CPUExecutionProvider"])
    feeds = {"X": x}
    a, b = sess.run(None, feeds)[0], ref.run(None, feeds)[0]
    err = float(np.max(np.abs(a - b)))
    fns = {"ember": lambda: sess.run(None, feeds), "ort": lambda: ref.run(None, feeds)}
    for fn in fns.values():
        fn()
    times = {k: [] for k in fns}
    for _ in range(runs):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return statistics.median(times["ember"]), statistics.median(times["ort"]), err


def main(argv=None) -> list:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=15)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    rows = []
    header = ("| model | batch | threads | ember ms | onnxruntime ms | ember/ort | max abs diff |\n"
              "|---|---|---|---|---|---|---|")
    print(header)
    for name, (op, hidden, layers) in MODELS.items():
        model = build(op, hidden, layers)
        for batch in args.batches:
            x = np.random.default_rng(batch).standard_normal((SEQ, batch, hidden)).astype(
                np.float32)
            for threads in args.threads:
                te, to, err = measure(model, x, threads, args.runs)
                row = (f"| {name} | {batch} | {threads} | {te * 1e3:.2f} | {to * 1e3:.2f} | "
                       f"{te / to:.2f} | {err:.1e} |")
                print(row, flush=True)
                rows.append(row)
    if not args.no_write:
        import onnxruntime as ort

        from .results import write_section
        lines = [f"Command: `python -m benchmarks.recurrent --runs {args.runs}`", "",
                 f"Machine: AMD EPYC (Zen 3, AVX2), 2 CPUs available, shared with other jobs "
                 f"while this ran (medians of interleaved runs, so both engines saw the same "
                 f"load); Python {platform.python_version()}, numpy {np.__version__}, "
                 f"onnxruntime {ort.__version__}.", "",
                 f"{SEQ} steps; lstm2x256: two stacked LSTM(256) layers; gru128: one "
                 f"GRU(128) (linear_before_reset=1); input size = hidden size.", "",
                 header, *rows]
        write_section(os.path.join(HERE, "RESULTS.md"), "## Recurrent layers (inference)",
                      lines)
    return rows


if __name__ == "__main__":
    main()
