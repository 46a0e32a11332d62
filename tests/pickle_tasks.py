"""Tasks tests/test_pickle.py sends to worker processes. Kept apart from the test module so a
spawned worker imports only this (numpy and ember when it unpickles the Session), not onnx,
onnxruntime and pytest."""
from __future__ import annotations

import os
import time

import numpy as np


def infer_chunk(sess, x):
    """The logits, and (pid, threads, process CPU seconds, wall seconds) of this task."""
    cpu, wall = time.process_time(), time.perf_counter()
    out = sess.run(None, {"image": x})[0]
    return out, (os.getpid(), sess.threads, time.process_time() - cpu,
                 time.perf_counter() - wall)


def set_threads(n):
    """A pool initializer: the thread count of Sessions unpickled in this worker."""
    os.environ["EMBER_NUM_THREADS"] = str(n)


def dask_block(block, sess):
    return sess.run(None, {"image": np.ascontiguousarray(block)})[0]


def worker_report(sess):
    return os.getpid(), sess.threads
