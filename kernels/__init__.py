"""Cython/OpenMP kernels. Imports nothing of ember.

libgomp reads its wait policy once, when it is loaded. Its default (spin ~300k rounds at every
barrier before sleeping) is fine on an idle machine but collapses when another process shares the
cores: ember's many short parallel regions then wait whole scheduler slices for a spinning or
descheduled teammate (resnet18 at 2 threads went 45 ms -> 500 ms next to one busy process), and
the spinning threads take the CPU from everything else in the process (a service's request
threads, another engine). A short spin — ~1000 rounds, tens of microseconds, enough to bridge the
gap between two steps of a plan run from C — keeps quiet-machine speed and degrades gracefully:
MobileNetV2 at 2 threads on a 2-core EPYC with load average 4-7 took 21-26 ms per run with 1000
rounds against 48-74 ms with 10,000 (onnxruntime 7-9 ms beside it).

So the first kernel import loads libgomp (through ``_parallel``, linked like every kernel) with
``GOMP_SPINCOUNT=1000`` in the environment and then puts the environment back exactly as it was:
ember's OpenMP gets the short spin, while other libraries loaded later (their own libgomp copies)
and child processes see the user's settings, not ember's. A value the user set (GOMP_SPINCOUNT or
OMP_WAIT_POLICY) wins; nothing changes if libgomp was already loaded by someone else.
"""
import os as _os

_SPIN = "GOMP_SPINCOUNT"
if _SPIN not in _os.environ and "OMP_WAIT_POLICY" not in _os.environ:
    _os.environ[_SPIN] = "1000"
    try:
        from . import _parallel  # noqa: F401  (loads libgomp, which reads the variable now)
    finally:
        del _os.environ[_SPIN]
