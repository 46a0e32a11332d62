"""Training step time: ember vs PyTorch, side by side in one process run.

    python -m benchmarks.train                    # LeNet-5 and the small VGG, batch 64, 1 and 2 threads
    python -m benchmarks.train --models lenet5 --threads 2 --runs 20

Both models are written once against the torch.nn API and instantiated with ``ember.nn`` and
with ``torch.nn`` (ember's nn mirrors torch's names and defaults), trained with SGD + momentum on
the same random batch. One step = forward, softmax cross-entropy, backward, optimizer update.
ember's steps are timed first, then PyTorch's (each engine's steps in a row, after a warm-up: its
OpenMP team spins between steps, which took a core from an interleaved ember step); medians are
reported, and the table is appended to ``benchmarks/RESULTS.md`` (replacing an older training
section).
Without PyTorch installed only ember's times are printed.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys

import numpy as np

from ember.runtime.profile import time_interleaved

from .nets import NETS
from .results import write_section

HERE = os.path.dirname(os.path.abspath(__file__))
SECTION = "## Training step (batch 64, SGD momentum 0.9, median; ember, then PyTorch)"


MODELS = {name: NETS[name] for name in ("lenet5", "small_vgg")}


def ember_step(name, batch, threads, x, y):
    import ember
    from ember import nn, optim
    build, shape = MODELS[name]
    trainer = ember.Trainer(build(nn), input_shape=shape, loss=nn.CrossEntropyLoss(),
                            optimizer=optim.SGD(lr=0.01, momentum=0.9), batch_size=batch,
                            threads=threads, seed=0)
    if hasattr(trainer, "train_step"):
        return lambda: trainer.train_step(x, y)
    return lambda: trainer.fit(x, y, epochs=1, shuffle=False, verbose=False)


def torch_step(name, threads, x, y):
    import torch
    torch.set_num_threads(threads)
    build, _ = MODELS[name]
    model = build(torch.nn)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(xt), yt)
        loss.backward()
        opt.step()
        return loss
    return step


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    ap.add_argument("--threads", nargs="*", type=int, default=[1, 2])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"))
    args = ap.parse_args(argv)
    have_torch = importlib.util.find_spec("torch") is not None
    if not have_torch:
        print("PyTorch is not installed: timing ember only", file=sys.stderr)
    rows = []
    rng = np.random.default_rng(0)
    for name in args.models:
        _, shape = MODELS[name]
        x = rng.standard_normal((args.batch,) + shape, dtype=np.float32)
        y = rng.integers(0, 10, args.batch).astype(np.int64)
        for threads in args.threads:
            med = time_interleaved({"ember": ember_step(name, args.batch, threads, x, y)},
                                   args.runs)
            # PyTorch is timed on its own, after (as benchmarks/run.py does for inference): its
            # OpenMP team (libgomp's default wait policy) spins for milliseconds after every
            # step, and interleaved it took a core from ember's next step — ember's small-VGG
            # step at 2 threads measured 89 ms beside it, 52 ms with torch's team passive
            if have_torch:
                med.update(time_interleaved({"torch": torch_step(name, threads, x, y)},
                                            args.runs))
            e, t = med["ember"] * 1e3, med.get("torch", float("nan")) * 1e3
            rows.append((name, args.batch, threads, e, t))
            print(f"{name:10s} b={args.batch} t={threads}  ember {e:8.2f} ms   torch {t:8.2f} ms"
                  f"   ratio {e / t:.2f}", flush=True)
    write(rows, args.out, have_torch)


def write(rows, path, have_torch):
    version = ""
    if have_torch:
        import torch
        version = f" (PyTorch {torch.__version__})"
    lines = [SECTION + version, "",
             f"Command: `python -m benchmarks.train {' '.join(sys.argv[1:])}`".rstrip(), "",
             "| model | batch | threads | ember ms | PyTorch ms | ember/PyTorch |",
             "|---|---|---|---|---|---|"]
    for name, batch, threads, e, t in rows:
        lines.append(f"| {name} | {batch} | {threads} | {e:.2f} | {t:.2f} | {e / t:.2f} |")
    write_section(path, lines[0], lines[2:])
    print("\n".join(lines))


if __name__ == "__main__":
    main()
