"""Start-up cost: import time, model load time and first-run latency, ember vs onnxruntime.

    python -m benchmarks.startup                  # 7 fresh processes per engine, interleaved
    python -m benchmarks.startup --repeats 11 --importtime

Each measurement is a fresh Python process (nothing warm but the OS file cache) that times, in
order: ``import numpy``; ``import ember`` / ``import onnxruntime`` (numpy already loaded); the
first load of a ResNet-18 file (``ember.load`` / ``onnxruntime.InferenceSession``; ember reads
the file with its own protobuf reader, without importing ``onnx``); the first run; the second run; peak RSS so far; and,
after dropping the session, a second load of the same file (the warm cost of a load). Processes
alternate ember, onnxruntime, ember, …
so that a noisy neighbour slows both alike, and medians are reported.

Bytecode: the child processes get a private ``PYTHONPYCACHEPREFIX`` (outside the repository) and
one discarded warm-up process each, so both engines import from cached bytecode as an installed
wheel does. (With ``PYTHONDONTWRITEBYTECODE=1`` and an editable install, every ``import ember``
recompiles its sources; ``--no-bytecode`` measures that case.)

The table replaces the ``## Start-up`` section of ``benchmarks/RESULTS.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

from .results import write_section
from .run import load_builders

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SECTION = "## Start-up"

CHILD = r"""
import json, sys, time
clock = time.perf_counter
path, engine, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
t0 = clock()
import numpy as np
t1 = clock()
if engine == "ember":
    import ember
    t2 = clock()
    def load():
        return ember.load(path, threads=threads)
else:
    import onnxruntime as ort
    t2 = clock()
    def load():
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
s = load()
t3 = clock()
inp = s.get_inputs()[0]
x = np.random.default_rng(0).standard_normal(inp.shape).astype(np.float32)
t4 = clock()
s.run(None, {inp.name: x})
t5 = clock()
s.run(None, {inp.name: x})
t6 = clock()
rss = [int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
del s
t7 = clock()
s = load()
t8 = clock()
print(json.dumps(dict(numpy=t1 - t0, imp=t2 - t1, load=t3 - t2, first=t5 - t4,
                      second=t6 - t5, peak_rss=rss, reload=t8 - t7)))
"""

COLUMNS = [("imp", "import (s)"), ("load", "first load (s)"), ("reload", "second load (s)"),
           ("first", "first run (ms)"), ("second", "second run (ms)")]


def child_env(pycache: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    if pycache is None:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    else:
        env["PYTHONPYCACHEPREFIX"] = pycache
    return env


def measure(path: str, engine: str, threads: int, env: dict, cwd: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, path, engine, str(threads)],
                         capture_output=True, text=True, env=env, cwd=cwd, timeout=300)
    if out.returncode != 0:
        raise SystemExit(f"{engine} child failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def importtime_top(env: dict, cwd: str, n: int = 12) -> tuple:
    """The ``n`` slowest modules (self µs, cumulative µs, name) that ``import ember`` adds after
    numpy, and their total self time."""
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", "import numpy; import ember"],
                         capture_output=True, text=True, env=env, cwd=cwd, check=True)
    lines = out.stderr.splitlines()
    start = max(i for i, line in enumerate(lines) if line.rstrip().endswith("| numpy"))
    rows = []
    for line in lines[start + 1:]:
        parts = line.split("|")
        if len(parts) == 3 and parts[0].startswith("import time:"):
            rows.append((int(parts[0].split(":")[1]), int(parts[1]), parts[2].strip()))
    return sorted(rows, reverse=True)[:n], sum(r[0] for r in rows)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.startup", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7, help="fresh processes per engine")
    ap.add_argument("--threads", type=int, default=None,
                    help="threads for both engines (default: ember's default)")
    ap.add_argument("--no-bytecode", action="store_true",
                    help="children run with PYTHONDONTWRITEBYTECODE=1 (no .pyc cache)")
    ap.add_argument("--importtime", action="store_true",
                    help="also list the slowest modules of `import ember` (python -X importtime)")
    ap.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"))
    args = ap.parse_args(argv)

    from ember.runtime.threads import default_threads
    threads = args.threads or default_threads()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "resnet18.onnx")
        with open(path, "wb") as f:
            f.write(load_builders().resnet18(batch=1).SerializeToString())
        env = child_env(None if args.no_bytecode else os.path.join(tmp, "pycache"))
        engines = ("ember", "onnxruntime")
        for engine in engines:          # warm-up: writes bytecode, fills the file cache
            measure(path, engine, threads, env, tmp)
        runs = {e: [] for e in engines}
        for i in range(args.repeats):
            for engine in (engines if i % 2 == 0 else engines[::-1]):
                runs[engine].append(measure(path, engine, threads, env, tmp))
            print(f"round {i + 1}/{args.repeats}: " + "  ".join(
                f"{e} import {runs[e][-1]['imp']:.3f}s load {runs[e][-1]['load']:.3f}s "
                f"first {runs[e][-1]['first'] * 1e3:.1f}ms" for e in engines), flush=True)
        top = importtime_top(env, tmp) if args.importtime else None

    med = {e: {k: statistics.median(r[k] for r in rows) for k in rows[0]}
           for e, rows in runs.items()}
    lines = [f"Command: `python -m benchmarks.startup {' '.join(sys.argv[1:])}`".rstrip(), "",
             f"Fresh processes, median of {args.repeats} per engine, interleaved; ResNet-18 "
             f"(batch 1, tests/models.py) from a file, {threads} threads; "
             f"{'no bytecode cache' if args.no_bytecode else 'bytecode cached, as installed'}. "
             f"Import is measured after `import numpy` (median "
             f"{statistics.median(r['numpy'] for rows in runs.values() for r in rows):.3f} s, "
             f"paid by both). ember reads the file without importing `onnx`.", "",
             "| engine | import (s) | first load (s) | second load (s) | first run (ms) | "
             "second run (ms) | import + load + first run (s) | peak RSS (MiB) |",
             "|---|---|---|---|---|---|---|---|"]
    for e in engines:
        m = med[e]
        total = m["imp"] + m["load"] + m["first"]
        lines.append(f"| {e} | {m['imp']:.3f} | {m['load']:.3f} | {m['reload']:.3f} | "
                     f"{m['first'] * 1e3:.1f} | {m['second'] * 1e3:.1f} | {total:.3f} | "
                     f"{m['peak_rss'] / 2**20:.0f} |")
    if top is not None:
        rows, total = top
        lines += ["", f"`python -X importtime -c 'import numpy; import ember'`: ember adds "
                      f"{total / 1e3:.1f} ms; slowest modules (self time): " +
                  ", ".join(f"{name} {us / 1e3:.1f} ms" for us, _, name in rows[:8]) + "."]
    print("\n".join(lines))
    write_section(args.out, SECTION, lines)


if __name__ == "__main__":
    main()
