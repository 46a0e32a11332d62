"""ember's pooling steps against onnxruntime's, one node at a time (not a test: timings).

    python -m benchmarks.pool                      # 1 and 2 threads, every case
    python -m benchmarks.pool --threads 1 --runs 200 --cases lenet stem

Each case is a one-node ONNX model (``onnx.helper``) run by onnxruntime with preallocated,
bound input and output (``run_with_iobinding``), beside ember's bound ``PoolStep`` on the same
arrays; both are timed interleaved (a, b, a, b, …) in this one process and the medians are
printed with their ratio. onnxruntime's per-call cost outside the kernel (measured on a one-node
Identity of 1 float) is printed too: on the smallest cases it is most of onnxruntime's time, so
"ort - call" is the fairer denominator there. The gradients have no onnxruntime peer: torch's
backward kernels (given the forward's indices for MaxPool) stand in.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

# name: (op, N, C, H, W, kernel, stride, pads t l b r)
CASES = {
    "lenet": ("MaxPool", 64, 16, 10, 10, 2, 2, 0),
    "vgg8": ("MaxPool", 32, 128, 8, 8, 2, 2, 0),
    "vgg16": ("MaxPool", 32, 64, 16, 16, 2, 2, 0),
    "vgg4": ("MaxPool", 32, 256, 4, 4, 2, 2, 0),
    "stem": ("MaxPool", 1, 64, 112, 112, 3, 2, 1),
    "s1p1": ("MaxPool", 8, 64, 14, 14, 3, 1, 1),
    "avg2": ("AveragePool", 64, 16, 10, 10, 2, 2, 0),
    "avg3": ("AveragePool", 8, 64, 14, 14, 3, 1, 1),
    "gap": ("GlobalAveragePool", 32, 512, 7, 7, 0, 0, 0),
}


def one_node_model(op, shape, k, s, p, out_shape):
    from onnx import TensorProto, helper
    attrs = {} if op.startswith("Global") or op == "Identity" else dict(kernel_shape=[k, k], strides=[s, s],
                                                    pads=[p] * 4)
    node = helper.make_node(op, ["x"], ["y"], **attrs)
    graph = helper.make_graph([node], "pool", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, list(shape))], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, list(out_shape))])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()


def ort_bound(model, x, y, threads):
    """A zero-argument callable running the model on x into y (no allocation per call)."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    binding = sess.io_binding()
    binding.bind_cpu_input("x", x)
    binding.bind_output("y", "cpu", 0, np.float32, list(y.shape), y.ctypes.data)
    return lambda: sess.run_with_iobinding(binding)


def ember_step(op, x, y, k, s, p, threads):
    from ember.kernels import pool
    if op == "MaxPool":
        return pool.max_pool2d_step(x, y, k, k, s, s, p, p, 1, 1, threads)
    if op == "AveragePool":
        return pool.avg_pool2d_step(x, y, k, k, s, s, p, p, p, p, False, threads)
    N, C = x.shape[:2]
    return pool.global_pool_step(x.reshape(N * C, -1), y.reshape(N * C), False, threads)


def torch_grad(op, x, k, s, p, threads):
    """torch's backward kernel alone for the case (None where there is no such kernel)."""
    import torch
    torch.set_num_threads(threads)
    xt = torch.from_numpy(x)
    if op == "MaxPool":
        y, idx = torch.nn.functional.max_pool2d(xt, k, s, p, return_indices=True)
        dy = torch.ones_like(y)
        return lambda: torch.ops.aten.max_pool2d_with_indices_backward(dy, xt, [k, k], [s, s],
                                                                       [p, p], [1, 1], False,
                                                                       idx)
    if op == "AveragePool":
        y = torch.nn.functional.avg_pool2d(xt, k, s, p, count_include_pad=False)
        dy = torch.ones_like(y)
        return lambda: torch.ops.aten.avg_pool2d_backward(dy, xt, [k, k], [s, s], [p, p],
                                                          False, False, None)
    return None


def ember_grad(op, x, y, k, s, p, threads):
    from ember.kernels import pool_grad
    dy = np.ones_like(y)
    dx = np.empty_like(x)
    if op == "MaxPool":
        return pool_grad.max_pool2d_grad_step(dy, x, dx, k, k, s, s, p, p, 1, 1, threads)
    if op == "AveragePool":
        return pool_grad.avg_pool2d_grad_step(dy, dx, k, k, s, s, p, p, p, p, 1, 1, False,
                                              threads)
    return None


def median_interleaved(fns: dict, runs: int) -> dict:
    for fn in fns.values():
        for _ in range(5):
            fn()
    times = {k: [] for k in fns}
    for _ in range(runs):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.pool", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", nargs="*", type=int, default=[1, 2])
    ap.add_argument("--runs", type=int, default=101)
    ap.add_argument("--cases", nargs="*", default=list(CASES))
    ap.add_argument("--no-grad", action="store_true")
    args = ap.parse_args(argv)
    from ember.kernels import simd
    rng = np.random.default_rng(0)
    print(f"ember level {simd.isa()}; medians of {args.runs} interleaved runs, ms")
    print(f"{'case':7} {'thr':>3} {'ember':>8} {'ort':>8} {'call':>6} {'ember/ort':>9} "
          f"{'e/(ort-call)':>12} | {'grad':>8} {'torch':>8} {'grad/torch':>10}")
    for name in args.cases:
        op, N, C, H, W, k, s, p = CASES[name]
        x = rng.standard_normal((N, C, H, W), dtype=np.float32)
        if op.startswith("Global"):
            out = (N, C, 1, 1)
        else:
            out = (N, C, (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1)
        y = np.empty(out, np.float32)
        y_ort = np.empty(out, np.float32)
        model = one_node_model(op, x.shape, k, s, p, out)
        one = np.zeros((1,), np.float32)
        for threads in args.threads:
            fns = {"ember": ember_step(op, x, y, k, s, p, threads),
                   "ort": ort_bound(model, x, y_ort, threads),
                   "call": ort_bound(one_node_model("Identity", (1,), 0, 0, 0, (1,)), one,
                                     np.empty(1, np.float32), threads)}
            if not args.no_grad:
                g = ember_grad(op, x, y, k, s, p, threads)
                t = torch_grad(op, x, k, s, p, threads)
                if g is not None:
                    fns["grad"], fns["torch"] = g, t
            med = {key: v * 1e3 for key, v in median_interleaved(fns, args.runs).items()}
            np.testing.assert_allclose(y, y_ort, rtol=1e-5, atol=1e-6)
            rest = max(med["ort"] - med["call"], 1e-6)
            line = (f"{name:7} {threads:3} {med['ember']:8.4f} {med['ort']:8.4f} "
                    f"{med['call']:6.4f} {med['ember'] / med['ort']:9.2f} "
                    f"{med['ember'] / rest:12.2f}")
            if "grad" in med:
                line += (f" | {med['grad']:8.4f} {med['torch']:8.4f} "
                         f"{med['grad'] / med['torch']:10.2f}")
            print(line, flush=True)


if __name__ == "__main__":
    main()
