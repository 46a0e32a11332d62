"""Memory does not grow with use: thousands of runs, and many Sessions created and dropped.

RSS is sampled over three consecutive windows after a warm-up, and the *median* window's growth
is bounded: a leak grows every window (the first may be absorbed by memory the allocator already
holds), while the allocator's one-off jumps (heap growth or trimming after earlier tests in the
same process) land in one window only. Leaking just the
output of each LeNet-5 batch-8 run adds ~0.8 MiB per 3,000-run window (measured: keeping every
output alive makes the first test fail); a leaked arena per Session (~0.2 MB) adds ~10 MiB per
50 Sessions.
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


def median_window_growth(step, windows: int = 3, per_window: int = 1000) -> int:
    growths = []
    for _ in range(windows):
        gc.collect()
        before = rss_bytes()
        for _ in range(per_window):
            step()
        gc.collect()
        growths.append(rss_bytes() - before)
    print("RSS growth per window (MiB):", [round(g / 2**20, 2) for g in growths])
    return sorted(growths)[len(growths) // 2]


def test_rss_flat_across_thousands_of_runs():
    sess = ember.load(lenet5(batch=8).SerializeToString(), threads=1)
    x = np.random.default_rng(0).standard_normal((8, 1, 32, 32), dtype=np.float32)
    feeds = {sess.inputs[0].name: x}
    for _ in range(200):  # warm-up: caches, allocator pools
        sess.run(None, feeds)
    assert median_window_growth(lambda: sess.run(None, feeds), per_window=3000) < 3 * 2**18  # 0.75 MiB


def test_rss_flat_across_created_and_dropped_sessions():
    data = lenet5(batch=1).SerializeToString()
    x = np.zeros((1, 1, 32, 32), np.float32)

    def one_session():
        s = ember.load(data, threads=1)
        s.run(None, {s.inputs[0].name: x})

    for _ in range(20):  # warm-up
        one_session()
    assert median_window_growth(one_session, per_window=50) < 4 * 2**20
