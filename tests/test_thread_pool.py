"""ember's thread pool (kernels/thread_pool.c): every task runs exactly once whatever thread
takes it, a plan run holds the pool and always lets go, concurrent runs (the pool busy: they run
inline) give the serial answer, and a forked child starts its own workers.

The oracle is the same model run on one thread (the kernels' results do not depend on how their
tasks were shared out: every task writes its own part of the output)."""
from __future__ import annotations

import multiprocessing
import os
import threading

import numpy as np
import pytest

import ember
from ember.kernels import simd

from models import mobilenetv2, small_vgg


def _feeds(model, seed=0):
    inp = model.graph.input[0]
    shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    return {inp.name: np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)}


@pytest.fixture(scope="module")
def vgg():
    model = small_vgg(batch=4)
    data = model.SerializeToString()
    return data, _feeds(model), ember.load(data, threads=1).run(None, _feeds(model))[0]


def test_two_threads_match_one(vgg):
    data, feeds, expected = vgg
    got = ember.load(data, threads=2).run(None, feeds)[0]
    # the same tasks, shared differently: every output element is computed by the same code
    np.testing.assert_array_equal(got, expected)


def test_a_run_lets_go_of_the_pool_even_when_it_fails(vgg):
    data, feeds, _ = vgg
    sess = ember.load(data, threads=2)
    sess.run(None, feeds)
    assert simd.pool_stats()["holds"] == 0
    bad = {k: v[:, :2] for k, v in feeds.items()}   # wrong channel count
    with pytest.raises(ember.EmberError):
        sess.run(None, bad)
    assert simd.pool_stats()["holds"] == 0
    assert simd.pool_stats()["workers"] >= 1


def test_concurrent_runs_of_one_session_match_the_serial_answer(vgg):
    data, feeds, expected = vgg
    sess = ember.load(data, threads=2, max_concurrent_runs=4)
    inputs = [{k: v + i for k, v in feeds.items()} for i in range(4)]
    want = [ember.load(data, threads=1).run(None, f)[0] for f in inputs]
    got = [None] * 4
    errors = []

    def work(i):
        try:
            for _ in range(5):
                got[i] = sess.run(None, inputs[i])[0]
        except Exception as e:   # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    assert simd.pool_stats()["holds"] == 0


def test_concurrent_sessions_on_their_own_threads():
    model = mobilenetv2(batch=1)
    data = model.SerializeToString()
    feeds = _feeds(model)
    expected = ember.load(data, threads=1).run(None, feeds)[0]
    sessions = [ember.load(data, threads=2) for _ in range(3)]
    got = [None] * 3

    def work(i):
        for _ in range(3):
            got[i] = sessions[i].run(None, feeds)[0]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for g in got:
        np.testing.assert_array_equal(g, expected)


def _run_in_child(data, feeds, queue):
    out = ember.load(data, threads=2).run(None, feeds)[0]
    queue.put((out, simd.pool_stats()["workers"]))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_starts_its_own_workers(vgg):
    data, feeds, expected = vgg
    ember.load(data, threads=2).run(None, feeds)   # the parent's pool has its workers
    assert simd.pool_stats()["workers"] >= 1
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_run_in_child, args=(data, feeds, queue))
    child.start()
    out, workers = queue.get(timeout=120)
    child.join(timeout=60)
    assert child.exitcode == 0
    np.testing.assert_array_equal(out, expected)
    assert workers >= 1
