"""`threads=` is honoured exactly: a Session never starts more threads than it was given, so two
Sessions with threads=1 in two Python threads use two cores, not more.

Each case runs in a fresh process (ember's thread pool outlives the Session that grew it) and
counts the process's OS threads (/proc/self/task) from before the Sessions load until they ran.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import os, sys, threading
    import numpy as np
    sys.path.insert(0, {tests!r})
    import ember
    from models import small_vgg
    data = small_vgg(batch=4).SerializeToString()
    base = len(os.listdir("/proc/self/task"))   # before loading: compiling may start the pool
    sessions = [ember.load(data, threads={threads}) for _ in range({sessions})]
    x = np.ones((4, 3, 32, 32), np.float32)
    peak = [base]
    def work(s):
        for _ in range(20):
            s.run(None, {{s.inputs[0].name: x}})
            peak[0] = max(peak[0], len(os.listdir("/proc/self/task")))
    workers = [threading.Thread(target=work, args=(s,)) for s in sessions]
    for w in workers: w.start()
    for w in workers: w.join()
    # OS threads beyond the interpreter's own: Python workers + the pool's workers
    print(peak[0] - base)
""")


def extra_threads(threads: int, sessions: int) -> int:
    import os
    tests = os.path.dirname(os.path.abspath(__file__))
    code = SCRIPT.format(tests=tests, threads=threads, sessions=sessions)
    # cwd=tests: from the repo root, `python -c` would import the checkout's ember/ folder
    # instead of the installed package
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120, cwd=tests)
    return int(out.stdout.strip().splitlines()[-1])


def test_two_single_thread_sessions_start_no_pool_workers():
    # two Python worker threads, each running its own threads=1 Session: no pool workers at
    # all (a loop on one thread runs on the calling thread)
    assert extra_threads(threads=1, sessions=2) == 2


@pytest.mark.parametrize("threads", [2, 3])
def test_one_session_uses_exactly_its_threads(threads):
    # one Python worker + (threads − 1) pool workers; never more, whatever the CPU count
    assert extra_threads(threads=threads, sessions=1) == 1 + (threads - 1)
