"""Memory does not grow with use: thousands of runs, and many Sessions created and dropped.

Leaking just the output of each LeNet-5 batch-8 run (320 bytes of data plus the array object)
would add about 1.4 MiB over 5,000 runs (measured), and a leaked arena per Session (~0.2 MB) > 40 MiB over 200
Sessions; the bounds (1 MiB, 16 MiB) catch either while leaving room for allocator noise.
(Checked: keeping every output alive makes the first test fail.)
"""
from __future__ import annotations

import gc

import numpy as np

import ember
from models import lenet5


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")  # pragma: no cover - Linux only


def test_rss_flat_across_thousands_of_runs():
    sess = ember.load(lenet5(batch=8).SerializeToString(), threads=1)
    x = np.random.default_rng(0).standard_normal((8, 1, 32, 32), dtype=np.float32)
    feeds = {sess.inputs[0].name: x}
    for _ in range(200):  # warm-up: caches, allocator pools
        sess.run(None, feeds)
    gc.collect()
    before = rss_bytes()
    for _ in range(5000):
        sess.run(None, feeds)
    gc.collect()
    growth = rss_bytes() - before
    print(f"RSS growth over 5,000 runs: {growth / 2**20:.2f} MiB")
    assert growth < 1 * 2**20


def test_rss_flat_across_created_and_dropped_sessions():
    data = lenet5(batch=1).SerializeToString()
    x = np.zeros((1, 1, 32, 32), np.float32)
    for _ in range(20):  # warm-up
        s = ember.load(data, threads=1)
        s.run(None, {s.inputs[0].name: x})
    del s
    gc.collect()
    before = rss_bytes()
    for _ in range(200):
        s = ember.load(data, threads=1)
        s.run(None, {s.inputs[0].name: x})
        del s
    gc.collect()
    growth = rss_bytes() - before
    print(f"RSS growth over 200 Sessions: {growth / 2**20:.2f} MiB")
    assert growth < 16 * 2**20
