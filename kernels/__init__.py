"""Cython/OpenMP kernels. Imports nothing of ember.

libgomp reads its wait policy once, when the first OpenMP extension loads. Its default (spin
~300k rounds at every barrier before sleeping) is fine on an idle machine but collapses when
another process shares the cores: ember's many short parallel regions then wait whole scheduler
slices for a spinning or descheduled teammate (resnet18 at 2 threads went 45 ms -> 500 ms next to
one busy process). A short spin keeps quiet-machine speed and degrades gracefully. A value the
user set (GOMP_SPINCOUNT or OMP_WAIT_POLICY) wins; it has no effect if libgomp is already loaded.
"""
import os as _os

if "GOMP_SPINCOUNT" not in _os.environ and "OMP_WAIT_POLICY" not in _os.environ:
    _os.environ["GOMP_SPINCOUNT"] = "10000"
