"""Kernel choice by measurement: time the candidate kernels for one case, keep the fastest.

Which algorithm is fastest for a convolution (im2col-GEMM, Winograd F(2×2,3×3), F(4×4,3×3))
depends on the CPU, its caches, the thread count and the instruction-set level — a cost model
fitted on one machine is wrong on the next. So, as FFTW's plans and cuDNN's benchmark mode do,
ember times the candidates at compile time, once per case × threads × ISA level, and remembers
the winner: per process, and across processes in ``EMBER_TUNE_CACHE`` (a JSON file) when that
is set. Never inside ``run``.

``EMBER_TUNE=0`` uses each caller's static rule instead: nothing is timed, results depend only on
the shapes (the tests run this way, so they are deterministic).

Timing: each candidate is prepared once (inputs, weights, scratch), run once to warm up, then
the candidates run in turn (a, b, c, a, b, c, …) so a noisy neighbour slows them alike, and the
fastest round decides — the least disturbed one: at 2 threads a descheduled teammate slows a
round by half, and medians of five rounds let ResNet-18's 56×56 layers flip from Winograd
F(4,3) to the direct conv (40 % slower) from one process to the next. A candidate that raises
is dropped.
"""
from __future__ import annotations

import json
import os
import tempfile
import threading
import time

ENV_TUNE = "EMBER_TUNE"
ENV_CACHE = "EMBER_TUNE_CACHE"
ROUNDS = 5                # timed runs of each candidate
BUDGET_S = 0.15           # stop early once one case's timing has taken this long

_lock = threading.Lock()
_choices: dict = {}       # key string -> chosen candidate name
_disk_loaded: str | None = None


def tuning_enabled(environ=os.environ) -> bool:
    return environ.get(ENV_TUNE, "1").strip().lower() not in ("0", "false", "no", "off")


def _isa() -> str:
    from ..kernels import simd
    return simd.isa()


def _cache_path() -> str | None:
    path = os.environ.get(ENV_CACHE, "").strip()
    return path or None


def _load_disk(path: str) -> None:
    """Merge the on-disk choices (once per path); an unreadable file is ignored — it is a
    cache, and the next save rewrites it."""
    global _disk_loaded
    if _disk_loaded == path:
        return
    _disk_loaded = path
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return
    if isinstance(data, dict):
        for k, v in data.items():
            if isinstance(k, str) and isinstance(v, str):
                _choices.setdefault(k, v)


def _save_disk(path: str) -> None:
    """Write every choice atomically (a reader never sees half a file); a write that fails
    (read-only folder) only loses the cache."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".ember-tune-", dir=folder)
        with os.fdopen(fd, "w") as f:
            json.dump(_choices, f, indent=0, sort_keys=True)
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except (OSError, UnboundLocalError):
            pass


def cache_key(kind: str, case: tuple, threads: int) -> str:
    return f"{kind}|{','.join(str(int(v)) for v in case)}|t{int(threads)}|{_isa()}"


def measure(candidates: dict) -> dict:
    """The fastest round's seconds of each prepared zero-argument candidate (run in turn);
    candidates that raise are left out."""
    alive = {}
    for name, fn in candidates.items():
        try:
            fn()
        except Exception:
            continue
        alive[name] = fn
    times = {name: [] for name in alive}
    start = time.perf_counter()
    for _ in range(ROUNDS):
        for name, fn in alive.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
        if time.perf_counter() - start > BUDGET_S:
            break
    return {name: min(ts) for name, ts in times.items()}


def choose(kind: str, case: tuple, threads: int, prepare, names: list, static: str) -> str:
    """The fastest of ``names`` for ``case`` (a tuple of ints) at ``threads``, measured once
    and remembered; ``static`` when tuning is off or only one candidate exists.
    ``prepare(name)`` returns the zero-argument callable that runs that candidate once."""
    if len(names) <= 1 or not tuning_enabled():
        return static
    key = cache_key(kind, case, threads)
    with _lock:
        path = _cache_path()
        if path:
            _load_disk(path)
        hit = _choices.get(key)
        if hit in names:
            return hit
        times = measure({name: prepare(name) for name in names})
        best = min(times, key=times.get) if times else static
        _choices[key] = best
        if path:
            _save_disk(path)
        return best


def forget() -> None:
    """Drop every remembered choice of this process (tests; a changed machine state)."""
    global _disk_loaded
    with _lock:
        _choices.clear()
        _disk_loaded = None
