"""Cython kernels. Imports nothing of ember.

They run on ember's own thread pool (thread_pool.c, reached through the dispatch table in
simd.h), not OpenMP: a libgomp team's idle threads spin a count fixed when the library loads and
then sleep in the kernel, so either every parallel region of a plan re-woke its team (MobileNetV2
at 2 threads: 14.4 ms against 9.9 ms with a long spin) or the spinning took the cores from
everything else between runs. The pool's workers spin while a plan run holds it and sleep within
tens of microseconds otherwise, take tasks one at a time, and leave a process's OpenMP settings
(GOMP_SPINCOUNT, OMP_WAIT_POLICY) to the libraries that use OpenMP.
"""
