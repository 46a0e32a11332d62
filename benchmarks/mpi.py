"""Data-parallel training throughput: 1 rank × 2 threads against 2 ranks × 1 thread (MPI).

    python -m benchmarks.mpi                        # LeNet-5 and the small VGG, global batch 64
    python -m benchmarks.mpi --models lenet5 --rounds 5 --steps 30

Each configuration trains the same model on the same global batch (``--batch`` rows per step;
2 ranks take half each) with SGD + momentum; a run times ``--steps`` steps after a warm-up and
reports samples/s and, for 2 ranks, the share of the step rank 0 spends waiting for the
gradient allreduce (the part communication did not hide behind backward). Configurations are
run in rounds, one after the other inside each round, so a load change on the shared machine
hits them alike; medians over rounds are reported. The section in benchmarks/RESULTS.md is
replaced. Needs ``mpirun`` and mpi4py.
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

import numpy as np

from .nets import NETS
from .results import write_section

HERE = os.path.dirname(os.path.abspath(__file__))
SECTION = "## Data-parallel training over MPI (samples/s, median over rounds)"
MODELS = ("lenet5", "small_vgg")
CONFIGS = [(1, 1), (1, 2), (2, 1)]      # (ranks, threads per rank)


def worker(opts: dict) -> None:
    """One rank: time ``steps`` optimisation steps; rank 0 prints a JSON line."""
    import ember
    from ember import nn, optim
    build, shape = NETS[opts["model"]]
    dist = "mpi" if opts["ranks"] > 1 else None
    world = opts["ranks"]
    per_rank = opts["batch"] // world
    trainer = ember.Trainer(build(nn), input_shape=shape, loss=nn.CrossEntropyLoss(),
                            optimizer=optim.SGD(lr=0.01, momentum=0.9), batch_size=per_rank,
                            threads=opts["threads"], seed=0, distributed=dist)
    rng = np.random.default_rng(0)
    rows = opts["batch"] * opts["steps"]
    x = rng.standard_normal((rows,) + tuple(shape), dtype=np.float32)
    y = rng.integers(0, 10, rows).astype(np.int64)
    warm = opts["batch"] * 3
    trainer.fit(x[:warm], y[:warm], epochs=1, shuffle=False, verbose=False)
    sync = trainer._dist_step.sync if trainer._dist_step is not None else None
    if sync is not None:
        sync.wait_seconds = 0.0
        trainer.dist.barrier("starting the clock")
    t0 = time.perf_counter()
    trainer.fit(x, y, epochs=1, shuffle=False, verbose=False)
    secs = time.perf_counter() - t0
    if trainer.rank == 0:
        grad_bytes = sum(p.nbytes for p in trainer.params.values())
        print(json.dumps({"secs": secs, "samples": rows,
                          "wait": sync.wait_seconds if sync is not None else 0.0,
                          "buckets": len(sync.buckets) if sync is not None else 0,
                          "grad_bytes": grad_bytes}), flush=True)


def run_config(model, ranks, threads, batch, steps) -> dict:
    opts = json.dumps({"model": model, "ranks": ranks, "threads": threads, "batch": batch,
                       "steps": steps})
    cmd = [sys.executable, "-m", "benchmarks.mpi", "--worker", opts]
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1")
    env.pop("EMBER_NUM_THREADS", None)
    if ranks > 1:
        # bind-to none: ember sizes its own thread teams; mpirun's default core binding would
        # do the same for 1 thread per rank
        cmd = [shutil.which("mpirun"), "-n", str(ranks), "--bind-to", "none"] + cmd
    r = subprocess.run(cmd, capture_output=True, text=True, env=env,
                       cwd=os.path.dirname(HERE), timeout=1800)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def machine() -> str:
    from .run import machine as describe
    return describe()


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.mpi", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    ap.add_argument("--batch", type=int, default=64, help="global batch (default 64)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(json.loads(args.worker))
    if shutil.which("mpirun") is None:
        raise SystemExit("mpirun not found: apt install openmpi-bin libopenmpi-dev, and "
                         "pip install 'ember[mpi]'")
    results = {}
    for model in args.models:
        for _ in range(args.rounds):
            for ranks, threads in CONFIGS:
                r = run_config(model, ranks, threads, args.batch, args.steps)
                results.setdefault((model, ranks, threads), []).append(r)
                print(f"{model:10s} {ranks} rank(s) × {threads} thread(s): "
                      f"{r['samples'] / r['secs']:8.1f} samples/s  wait {r['wait']:.3f} s "
                      f"of {r['secs']:.3f} s", flush=True)
    write(results, args)


def write(results, args):
    lines = [f"Machine: {machine()}", "",
             f"Command: `python -m benchmarks.mpi {' '.join(sys.argv[1:])}`".rstrip(), "",
             f"Global batch {args.batch}, SGD momentum 0.9, {args.steps} timed steps per run, "
             f"median of {args.rounds} rounds; 2 ranks run on this host under `mpirun -n 2 "
             f"--bind-to none`, each training half of every batch. *allreduce wait* is the "
             f"share of rank 0's time spent waiting for gradient buckets after backward.", "",
             "| model | ranks × threads | samples/s | step ms | vs 1 × 2 | allreduce wait | "
             "gradient MiB/step | buckets |",
             "|---|---|---|---|---|---|---|---|"]
    for model in args.models:
        base = statistics.median(r["samples"] / r["secs"] for r in results[(model, 1, 2)])
        for ranks, threads in CONFIGS:
            runs = results[(model, ranks, threads)]
            sps = statistics.median(r["samples"] / r["secs"] for r in runs)
            wait = statistics.median(r["wait"] / r["secs"] for r in runs)
            step_ms = 1e3 * args.batch / sps
            lines.append(f"| {model} | {ranks} × {threads} | {sps:.0f} | {step_ms:.2f} | "
                         f"{sps / base:.2f} | {100 * wait:.1f}% | "
                         f"{runs[0]['grad_bytes'] / 2 ** 20:.2f} | {runs[0]['buckets']} |")
    write_section(args.out, SECTION, lines)
    print("\n".join([SECTION, ""] + lines))


if __name__ == "__main__":
    main()
