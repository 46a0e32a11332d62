"""The machine on a report's page, and the two roofs of its roofline, measured when the report
is made: the GFLOP/s ember's own GEMM reaches here (not a data-sheet number) and the GB/s a large
copy moves. Each is the best of a few runs, so a busy machine lowers both."""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .report_charts import fmt_bytes

# timed runs of each measurement (the best one counts)
PEAK_RUNS, COPY_RUNS = 8, 5


@dataclass
class Machine:
    cpu: str
    isa: str
    threads: int
    ember_version: str
    peak_gflops: float
    bandwidth_gbs: float
    peak_how: str
    bandwidth_how: str


def measure_peak_gflops(threads: int, n: int = 1024, runs: int = PEAK_RUNS) -> float:
    """GFLOP/s of ember's own GEMM on an n×n by n×n MatMul (best of ``runs`` after a warm-up
    run): the compute roof the kernels can actually reach here, not a data-sheet number."""
    from .graph.builder import Builder
    from .runtime.session import Session
    b = Builder("peak", seed=0)
    a = b.input("a", (n, n))
    w = b.parameter("w", (n, n), init="uniform")
    b.output(b.matmul(a, w), "y")
    sess = Session(b.build(), threads=threads)
    feeds = {"a": np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)}
    sess.run(None, feeds)
    best = min(_timed(lambda: sess.run(None, feeds)) for _ in range(runs))
    return 2 * n ** 3 / best / 1e9


def measure_bandwidth_gbs(nbytes: int = 64 << 20, runs: int = COPY_RUNS) -> float:
    """GB/s of a numpy copy of a buffer far larger than the caches (best of ``runs``), counting
    the bytes read and the bytes written."""
    src = np.ones(nbytes // 4, np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    best = min(_timed(lambda: np.copyto(dst, src)) for _ in range(runs))
    return 2 * src.nbytes / best / 1e9


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def measure_machine(threads: int, gemm_n: int = 1024, copy_bytes: int = 64 << 20) -> Machine:
    from . import __version__
    from .runtime.cpu import cpu_info
    info = cpu_info()
    return Machine(
        info["cpu"], info["isa"], threads, __version__,
        measure_peak_gflops(threads, gemm_n), measure_bandwidth_gbs(copy_bytes),
        f"ember's GEMM on a {gemm_n}×{gemm_n}×{gemm_n} float32 MatMul, {threads} threads, "
        f"best of {PEAK_RUNS} runs",
        f"numpy copy of a {fmt_bytes(copy_bytes)} buffer (bytes read + written), one thread, "
        f"best of {COPY_RUNS}")
