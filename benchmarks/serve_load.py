"""The reference service (examples/serve.py) under load: ember vs the same service on onnxruntime.

    python -m benchmarks.serve_load                         # both models, concurrency 1, 4, 16
    python -m benchmarks.serve_load --models digits --requests 200 --concurrency 1 4

For each model both services are started on loopback in their own processes (same threads, same
run gate, ``.npy`` request bodies, quiet logs). Then, for each concurrency level, a bounded number
of requests is sent from a thread pool whose threads each keep one HTTP/1.1 keep-alive connection,
in two halves interleaved ember, onnxruntime, onnxruntime, ember so that a noisy neighbour slows
both alike. Reported: throughput (requests/s over the wall time of the level) and p50/p99 of the
per-request latency (send to last byte of the answer). Every answer is checked to be 200.

Models: the bundled digits CNN (8×8 input, well under a millisecond of compute: the service's
own overhead — HTTP, parsing, the JSON answer — dominates, which is what an engine cannot hide)
and tests/models.py's MobileNetV2 at 224×224 (tens of milliseconds of compute in many small
depthwise layers: the engine dominates, and per-op overhead still shows). ResNet-18 would say
little more than MobileNetV2 at several times the run time.

The client runs on the same machine and takes CPU from the server; both engines pay that alike.
The table replaces the ``## Service under load`` section of ``benchmarks/RESULTS.md``.
"""
from __future__ import annotations

import argparse
import http.client
import io
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .results import write_section
from .run import load_builders

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SERVE = os.path.join(ROOT, "examples", "serve.py")
DIGITS = os.path.join(ROOT, "ember", "data", "digits_cnn.onnx")
SECTION = "## Service under load"
ENGINES = ("ember", "onnxruntime")
# name -> (requests per concurrency level and engine, input shape)
MODELS = {"digits": (400, (1, 1, 8, 8)), "mobilenetv2": (200, (1, 3, 224, 224))}


class Service:
    """examples/serve.py in a child process; ``port`` once it is listening."""

    def __init__(self, model_path, engine, threads, cwd):
        cmd = [sys.executable, SERVE, model_path, "--port", "0", "--engine", engine, "--quiet"]
        if threads:
            cmd += ["--threads", str(threads)]
        # cwd outside the repository: the child imports the installed ember
        self.log = open(os.path.join(cwd, f"{engine}.log"), "w+")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     cwd=cwd)
        line = self.proc.stdout.readline()
        if not line.startswith("serving"):
            self.proc.kill()
            self.proc.wait()
            self.log.seek(0)
            raise SystemExit(f"{engine} service did not start: {line}{self.log.read()}")
        self.banner = line.strip()
        self.port = int(line.split("http://", 1)[1].split()[0].rsplit(":", 1)[1])

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.log.close()


def drive(port: int, body: bytes, requests: int, concurrency: int) -> tuple:
    """Send ``requests`` POST /predict from ``concurrency`` threads, each on its own keep-alive
    connection. Returns (latencies in seconds, wall seconds)."""
    local = threading.local()
    headers = {"Content-Type": "application/x-npy"}

    def one(_):
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        t = time.perf_counter()
        conn.request("POST", "/predict", body=body, headers=headers)
        r = conn.getresponse()
        data = r.read()
        dt = time.perf_counter() - t
        if r.status != 200:
            raise RuntimeError(f"status {r.status}: {data[:200]!r}")
        return dt

    with ThreadPoolExecutor(concurrency) as pool:
        t0 = time.perf_counter()
        latencies = list(pool.map(one, range(requests)))
        wall = time.perf_counter() - t0
    return latencies, wall


def percentile(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def bench_model(name, path, shape, requests, levels, threads, cwd) -> list:
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    buf = io.BytesIO()
    np.save(buf, x)
    body = buf.getvalue()
    services = {e: Service(path, e, threads, cwd) for e in ENGINES}
    rows = []
    try:
        for e, s in services.items():
            print(f"  {s.banner}", flush=True)
            drive(s.port, body, 20, 1)                       # warm-up
        for c in levels:
            lat = {e: [] for e in ENGINES}
            wall = {e: 0.0 for e in ENGINES}
            half = requests // 2
            for order in (ENGINES, ENGINES[::-1]):
                for e in order:
                    ls, w = drive(services[e].port, body, half, c)
                    lat[e] += ls
                    wall[e] += w
            for e in ENGINES:
                row = dict(model=name, engine=e, concurrency=c, requests=len(lat[e]),
                           rps=len(lat[e]) / wall[e], p50=percentile(lat[e], 50) * 1e3,
                           p99=percentile(lat[e], 99) * 1e3)
                rows.append(row)
                print(f"  {name:12s} c={c:<3d} {e:12s} {row['rps']:8.1f} req/s   "
                      f"p50 {row['p50']:8.2f} ms   p99 {row['p99']:8.2f} ms", flush=True)
    finally:
        for s in services.values():
            s.stop()
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.serve_load", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", choices=sorted(MODELS), default=list(MODELS))
    ap.add_argument("--concurrency", nargs="*", type=int, default=[1, 4, 16])
    ap.add_argument("--requests", type=int, default=None,
                    help="requests per level and engine (default: 400 digits, 200 mobilenetv2)")
    ap.add_argument("--threads", type=int, default=None,
                    help="threads per run in both services (default: ember's default)")
    ap.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"))
    args = ap.parse_args(argv)
    from ember.runtime.threads import default_threads
    threads = args.threads or default_threads()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            requests, shape = MODELS[name]
            path = DIGITS
            if name != "digits":
                path = os.path.join(tmp, f"{name}.onnx")
                with open(path, "wb") as f:
                    f.write(getattr(load_builders(), name)(batch=1).SerializeToString())
            print(f"{name}:", flush=True)
            rows += bench_model(name, path, shape, args.requests or requests, args.concurrency,
                                threads, tmp)

    lines = [f"Command: `python -m benchmarks.serve_load {' '.join(sys.argv[1:])}`".rstrip(), "",
             f"examples/serve.py on loopback, one Session shared by the request threads, "
             f"{threads} threads per run, at most {max(1, default_threads() // threads)} run(s) "
             f"at a time; `.npy` bodies of batch 1; client threads with keep-alive connections "
             f"on the same machine; the two engines interleaved. Latency is per request.", "",
             "| model | concurrency | requests | ember req/s | onnxruntime req/s | ember p50 ms | "
             "onnxruntime p50 ms | ember p99 ms | onnxruntime p99 ms |",
             "|---|---|---|---|---|---|---|---|---|"]
    by = {(r["model"], r["concurrency"], r["engine"]): r for r in rows}
    for name in args.models:
        for c in args.concurrency:
            e, o = by[(name, c, "ember")], by[(name, c, "onnxruntime")]
            lines.append(f"| {name} | {c} | {e['requests']} | {e['rps']:.1f} | {o['rps']:.1f} | "
                         f"{e['p50']:.2f} | {o['p50']:.2f} | {e['p99']:.2f} | {o['p99']:.2f} |")
    print("\n".join(lines))
    write_section(args.out, SECTION, lines)


if __name__ == "__main__":
    main()
