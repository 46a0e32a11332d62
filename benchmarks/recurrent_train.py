"""Recurrent training step (forward + backpropagation through time + SGD): ember against
PyTorch, interleaved medians.

    python -m benchmarks.recurrent_train                 # the table, written to RESULTS.md
    python -m benchmarks.recurrent_train --runs 5 --no-write

Models (issue 20 §3): a 2-layer LSTM(256) and a GRU(128) (torch's ``linear_before_reset=1``),
sequences of 100 steps, batch 16, input size equal to the hidden size, batch-first
(``layout=1``); the output sequence flattened into an MSE loss against a fixed random target;
plain SGD. ember trains the ONNX form through ``ember.Trainer.from_onnx``; PyTorch trains
``nn.LSTM``/``nn.GRU`` with the same weights. Each (model, threads) row warms both, then
alternates single steps ``--runs`` times and reports the medians and their ratio
(ember/PyTorch: < 1 means ember is faster), and the largest difference between the two
engines' losses over the steps (both start from the same weights and see the same batches).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SEQ, BATCH, LR = 100, 16, 0.01
MODELS = {"lstm2x256": ("LSTM", 256, 2), "gru128": ("GRU", 128, 1)}
TORCH_ORDER = {"GRU": [1, 0, 2], "LSTM": [0, 3, 1, 2]}   # ONNX gate k = torch's gate [k]


def torch_model(op: str, hidden: int, layers: int, seed: int = 0):
    import torch
    torch.manual_seed(seed)
    return getattr(torch.nn, op)(hidden, hidden, num_layers=layers, batch_first=True)


def onnx_model(op: str, net, hidden: int, layers: int):
    """The ONNX twin of ``net``: one node per layer (layout 1), Y squeezed into the next X,
    the last Y flattened to ``[batch, seq·hidden]``."""
    import onnx
    from onnx import TensorProto, helper
    order = TORCH_ORDER[op]
    rows = np.concatenate([np.arange(k * hidden, (k + 1) * hidden) for k in order])
    nodes, inits, x = [], [], "X"
    for layer in range(layers):
        get = lambda n: getattr(net, f"{n}_l{layer}").detach().numpy()[rows]
        w = {f"W{layer}": get("weight_ih")[None], f"R{layer}": get("weight_hh")[None],
             f"B{layer}": np.concatenate([get("bias_ih"), get("bias_hh")])[None]}
        inits += [onnx.numpy_helper.from_array(v.astype(np.float32), k) for k, v in w.items()]
        attrs = {"linear_before_reset": 1} if op == "GRU" else {}
        nodes.append(helper.make_node(op, [x, *w], [f"Y{layer}"], hidden_size=hidden, layout=1,
                                      name=f"{op.lower()}{layer}", **attrs))
        nodes.append(helper.make_node("Squeeze", [f"Y{layer}", "axis2"], [f"S{layer}"]))
        x = f"S{layer}"
    nodes.append(helper.make_node("Flatten", [x], ["out"], axis=1))
    inits.append(onnx.numpy_helper.from_array(np.array([2], np.int64), "axis2"))
    graph = helper.make_graph(
        nodes, op, [helper.make_tensor_value_info("X", TensorProto.FLOAT,
                                                  ["batch", SEQ, hidden])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    return model


def measure(op, hidden, layers, threads: int, runs: int) -> tuple:
    import torch

    import ember
    torch.set_num_threads(threads)
    net = torch_model(op, hidden, layers)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((BATCH, SEQ, hidden)).astype(np.float32)
    y = rng.standard_normal((BATCH, SEQ * hidden)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        with open(path, "wb") as f:
            f.write(onnx_model(op, net, hidden, layers).SerializeToString())
        trainer = ember.Trainer.from_onnx(path, loss="mse", optimizer=ember.optim.SGD(lr=LR),
                                          batch_size=BATCH, threads=threads)
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    xt, yt = torch.tensor(x), torch.tensor(y)

    def torch_step():
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(net(xt)[0].reshape(BATCH, -1), yt)
        loss.backward()
        opt.step()
        return loss.item()

    fns = {"ember": lambda: trainer.train_step(x, y), "torch": torch_step}
    losses = {k: [fn()] for k, fn in fns.items()}
    times = {k: [] for k in fns}
    for _ in range(runs):
        for k, fn in fns.items():
            t = time.perf_counter()
            losses[k].append(fn())
            times[k].append(time.perf_counter() - t)
    diff = max(abs(a - b) for a, b in zip(losses["ember"], losses["torch"]))
    return statistics.median(times["ember"]), statistics.median(times["torch"]), diff


def main(argv=None) -> list:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=15)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    load = os.getloadavg()[0]
    rows = []
    header = ("| model | batch | threads | ember ms | PyTorch ms | ember/PyTorch | "
              "max loss diff |\n|---|---|---|---|---|---|---|")
    print(header)
    for name, (op, hidden, layers) in MODELS.items():
        for threads in args.threads:
            te, tt, diff = measure(op, hidden, layers, threads, args.runs)
            row = (f"| {name} | {BATCH} | {threads} | {te * 1e3:.1f} | {tt * 1e3:.1f} | "
                   f"{te / tt:.2f} | {diff:.1e} |")
            print(row, flush=True)
            rows.append(row)
    if not args.no_write:
        import torch

        from .results import write_section
        lines = [f"Command: `python -m benchmarks.recurrent_train --runs {args.runs}`", "",
                 f"Machine: AMD EPYC (Zen 3, AVX2), 2 CPUs available, shared with other jobs "
                 f"while this ran (medians of interleaved steps, so both engines saw the same "
                 f"load); Python {platform.python_version()}, numpy {np.__version__}, "
                 f"torch {torch.__version__}. Load average when the run began: {load:.1f} on "
                 f"{len(os.sched_getaffinity(0))} CPUs (the higher it is, the more two threads "
                 f"wait for a descheduled teammate: compare the ratios, not the times).", "",
                 f"One SGD step (forward, backpropagation through time, update) on {SEQ} "
                 f"steps; lstm2x256: two stacked LSTM(256) layers; gru128: one GRU(128) "
                 f"(linear_before_reset=1); input size = hidden size; MSE on the flattened "
                 f"output sequence.", "", header, *rows]
        write_section(os.path.join(HERE, "RESULTS.md"), "## Recurrent layers (training step)",
                      lines)
    return rows


if __name__ == "__main__":
    main()
