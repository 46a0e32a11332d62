"""What data augmentation costs beside the training step it feeds.

    python -m benchmarks.augment                  # LeNet-5, batch 64, 1 and 2 threads
    python -m benchmarks.augment --threads 2 --runs 40 --out ""    # print only

One LeNet-5 training step (``Trainer.train_step``: forward, cross-entropy, backward, SGD
momentum) and the augmentations a digits run would use (``ember.transforms.RandomAffine``:
±15° and 10% shifts, nearest and bilinear; horizontal flips are off for digits), on one
32×32 batch, timed interleaved (the step alone, each augmentation alone, each augmented step —
augmentation then step, as ``fit(transform=...)`` runs them) after a warm-up. Medians are
reported, with each augmentation as a percentage of the step, timed alone and as the augmented
step's excess over the plain one. The augmentation is numpy on
one thread whatever ``threads`` says (the step's threads). The table replaces its section of
``benchmarks/RESULTS.md`` unless ``--out ""``.

``--clock cpu`` times with this process's CPU time instead of the wall clock: on a machine
busy with other work the wall clock mostly measures waiting for a core, while one thread's CPU
time stays what it would be on an idle machine. It is comparable only at ``--threads 1``
(with more, it adds up every OpenMP thread, spin-waits included).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

from .nets import lenet5
from .results import write_section
from .run import machine

HERE = os.path.dirname(os.path.abspath(__file__))
SECTION = "## Data augmentation cost (LeNet-5 training step, batch 64, median, interleaved)"


def augmentations() -> dict:
    from ember import transforms as T
    return {f"RandomAffine(15°, 10% shift, {mode})": T.RandomAffine(
        15, translate=(0.1, 0.1), interpolation=mode) for mode in T.INTERPOLATIONS}


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def time_interleaved(fns: dict, runs: int, clock, warmup: int = 3) -> dict:
    """Median ``clock`` seconds of each callable, timed in turn (a, b, a, b, …)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in fns}
    for _ in range(runs):
        for k, fn in fns.items():
            t = clock()
            fn()
            times[k].append(clock() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def measure(batch: int, threads: int, runs: int, clock=time.perf_counter) -> tuple:
    """(step seconds, {augmentation name: (seconds alone, seconds of augmentation + step)})."""
    import ember
    from ember import nn, optim
    rng = np.random.default_rng(0)
    x = rng.random((batch, 1, 32, 32), dtype=np.float32)
    y = rng.integers(0, 10, batch).astype(np.int64)
    trainer = ember.Trainer(lenet5(nn), input_shape=(1, 32, 32), loss=nn.CrossEntropyLoss(),
                            optimizer=optim.SGD(lr=0.01, momentum=0.9), batch_size=batch,
                            threads=threads, seed=0)
    fns = {"step": lambda: trainer.train_step(x, y)}
    for name, t in augmentations().items():
        fns[name] = lambda t=t: t(x, rng=rng)
        fns[name + " + step"] = lambda t=t: trainer.train_step(t(x, rng=rng), y)
    med = time_interleaved(fns, runs, clock)
    step = med.pop("step")
    return step, {name: (med[name], med[name + " + step"]) for name in augmentations()}


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.augment", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", nargs="*", type=int, default=[1, 2])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="wall")
    ap.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"))
    args = ap.parse_args(argv)
    lines = [f"Command: `python -m benchmarks.augment {' '.join(sys.argv[1:])}`".rstrip(),
             f"Machine: {machine()}; clock: {args.clock}", "",
             "| threads | step ms | augmentation | alone ms | % of the step | augmented step ms "
             "| excess |",
             "|---|---|---|---|---|---|---|"]
    for threads in args.threads:
        step, augs = measure(args.batch, threads, args.runs, CLOCKS[args.clock])
        for name, (alone, both) in augs.items():
            row = (f"| {threads} | {step * 1e3:.2f} | {name} | {alone * 1e3:.2f} | "
                   f"{100 * alone / step:.0f}% | {both * 1e3:.2f} | "
                   f"{100 * (both - step) / step:+.0f}% |")
            lines.append(row)
            print(row, flush=True)
    if args.out:
        write_section(args.out, SECTION, lines)
    print("\n".join([SECTION, ""] + lines))


if __name__ == "__main__":
    main()
