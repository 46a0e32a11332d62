"""``memory_cap`` bounds everything ember allocates for a model (issue 19 §3): the contexts of
every cached plan together, concurrent runs (bounded by ``max_concurrent_runs``), the batched
MatMul binder's own structures, and numpy fallbacks' temporaries.

Oracles: numpy and onnxruntime on the same ONNX bytes; Python memory from ``tracemalloc``.
Threads are sequenced with barriers and events, never timed.
"""
from __future__ import annotations

import threading
import tracemalloc

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import ember
from ember import EmberError, ModelError
from ember.runtime.plan_cache import PlanCache
from ember.runtime.session import Compiled

WIDTH = 1024


def make_model(nodes, inputs, outputs, inits=(), opset=17) -> bytes:
    graph = helper.make_graph(nodes, "t",
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, s)
                               for n, s in inputs],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, s)
                               for n, s in outputs],
                              [numpy_helper.from_array(a, n) for n, a in inits])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def relu_model() -> bytes:
    """x[N, WIDTH] → Relu → y: one plan per batch size N, arena ≈ 2 · N · WIDTH · 4 bytes."""
    return make_model([helper.make_node("Relu", ["x"], ["y"])],
                      [("x", ["N", WIDTH])], [("y", ["N", WIDTH])])


def feed(batch, seed=0):
    return np.random.default_rng(seed).standard_normal((batch, WIDTH)).astype(np.float32)


def run_checked(sess, batch, seed=0):
    x = feed(batch, seed)
    (y,) = sess.run(None, {"x": x})
    np.testing.assert_array_equal(y, np.maximum(x, 0))


def context_bytes(batch) -> int:
    probe = ember.load(relu_model(), threads=1)
    return probe.compile({"x": (batch, WIDTH)}).context_bytes


def cached_batches(sess):
    return [dict(key)["x"][0] for key in sess._cache]


def live_context_bytes(sess) -> int:
    return sum(len(c.idle) * c.context_bytes for c in sess._cache.values())


# ---- the cap holds per Session, across cached plans ---------------------------------------------
def test_cap_holds_across_cached_plans_by_evicting_idle_plans():
    small, large = context_bytes(8), context_bytes(16)
    cap = small + large - 1                         # either plan's context, never both
    sess = ember.load(relu_model(), threads=1, memory_cap=cap, max_plans=8)
    run_checked(sess, 16)
    run_checked(sess, 8)                            # 16's idle plan leaves to make room
    assert cached_batches(sess) == [8]
    assert sess._plans.held_bytes == live_context_bytes(sess) == small
    run_checked(sess, 16, seed=1)
    assert cached_batches(sess) == [16]
    assert sess._plans.held_bytes == large <= cap
    run_checked(sess, 4)                            # 4 and 16 fit together: nothing leaves
    assert cached_batches(sess) == [16, 4]
    assert sess._plans.held_bytes == live_context_bytes(sess) <= cap


def test_a_plan_larger_than_the_cap_is_refused_before_allocating():
    sess = ember.load(relu_model(), threads=1, memory_cap=context_bytes(8))
    run_checked(sess, 8)
    with pytest.raises(ModelError, match="memory cap"):
        sess.run(None, {"x": feed(9)})
    assert cached_batches(sess) == [8]              # the refused plan took nothing


def test_dropping_a_plan_for_max_plans_frees_its_contexts():
    sess = ember.load(relu_model(), threads=1, max_plans=1)
    run_checked(sess, 8)
    run_checked(sess, 4)
    assert cached_batches(sess) == [4]
    assert sess._plans.held_bytes == context_bytes(4)


# ---- concurrent runs ---------------------------------------------------------------------------
class _Recorder:
    """Counts the contexts every Compiled builds."""

    def __init__(self, monkeypatch):
        self.built = 0
        self.lock = threading.Lock()
        real = Compiled.new_context

        def counting(compiled):
            with self.lock:
                self.built += 1
            return real(compiled)
        monkeypatch.setattr(Compiled, "new_context", counting)


def test_concurrent_runs_never_exceed_the_bound_and_stay_correct(monkeypatch):
    recorder = _Recorder(monkeypatch)
    sess = ember.load(relu_model(), threads=1, max_concurrent_runs=2)
    feeds = [feed(8, seed) for seed in range(6)]
    start = threading.Barrier(len(feeds))
    failures = []

    def worker(k):
        try:
            start.wait()
            for _ in range(20):
                (y,) = sess.run(None, {"x": feeds[k]})
                if not np.array_equal(y, np.maximum(feeds[k], 0)):
                    failures.append(k)
        except Exception as e:  # noqa: BLE001 - reported in the main thread
            failures.append(repr(e))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(len(feeds))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert 1 <= recorder.built <= 2
    assert sess._plans.held_bytes == recorder.built * context_bytes(8)
    assert sess._plans.busy == 0 and sess._plans.waiting == 0


def wait_until(predicate):
    """Block until another thread makes ``predicate`` true (it changes under the cache's lock)."""
    done = threading.Event()
    while not predicate():
        done.wait(0.001)


def test_a_run_beyond_the_bound_waits_for_a_free_context(monkeypatch):
    recorder = _Recorder(monkeypatch)
    sess = ember.load(relu_model(), threads=1, max_concurrent_runs=2)
    compiled = sess.compile({"x": (8, WIDTH)})
    held = [compiled.acquire(), compiled.acquire()]   # two runs in flight
    result = {}
    runner = threading.Thread(target=lambda: result.update(y=sess.run(None, {"x": feed(8)})[0]))
    runner.start()
    wait_until(lambda: sess._plans.waiting == 1)
    assert "y" not in result and recorder.built == 2
    compiled.release(held.pop())
    runner.join()
    np.testing.assert_array_equal(result["y"], np.maximum(feed(8), 0))
    assert recorder.built == 2                       # the released context was reused
    compiled.release(held.pop())


def test_a_run_that_would_pass_the_cap_waits_for_a_run_to_finish():
    small, large = context_bytes(8), context_bytes(16)
    sess = ember.load(relu_model(), threads=1, memory_cap=small + large - 1,
                      max_concurrent_runs=4)
    running = sess.compile({"x": (16, WIDTH)})
    ctx = running.acquire()                          # a run of batch 16 in flight
    result = {}
    runner = threading.Thread(target=lambda: result.update(y=sess.run(None, {"x": feed(8)})[0]))
    runner.start()
    wait_until(lambda: sess._plans.waiting == 1)
    assert sess._plans.held_bytes == large           # nothing was allocated meanwhile
    running.release(ctx)
    runner.join()
    np.testing.assert_array_equal(result["y"], np.maximum(feed(8), 0))
    assert cached_batches(sess) == [8]


class _Plan:
    """The part of a Compiled the PlanCache sees."""

    def __init__(self, nbytes):
        self.context_bytes, self.idle, self.busy, self.retired = nbytes, [], 0, False

    def new_context(self):
        return object()


def test_bytes_that_cannot_fit_with_no_run_in_flight_raise():
    cache = PlanCache(max_plans=4, memory_cap=100, max_contexts=2)
    plan = _Plan(101)
    cache.put("p", plan)
    with pytest.raises(ModelError, match=r"101 bytes.*memory cap of 100 bytes"):
        cache.acquire(plan)
    assert cache.held_bytes == 0 and cache.busy == 0


@pytest.mark.parametrize("bad", [0, -1, "2", 1.5])
def test_bad_max_concurrent_runs(bad):
    with pytest.raises(EmberError, match="max_concurrent_runs"):
        ember.load(relu_model(), max_concurrent_runs=bad)


# ---- the batched MatMul binder holds nothing per batch index ------------------------------------
def test_broadcast_batched_matmul_binder_memory_is_independent_of_the_batch():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((128, 1, 1, 4)).astype(np.float32)
    b = rng.standard_normal((1, 256, 4, 1)).astype(np.float32)    # batch 128 × 256 = 32,768
    model = make_model([helper.make_node("MatMul", ["a", "b"], ["y"])],
                       [("a", list(a.shape)), ("b", list(b.shape))], [("y", [128, 256, 1, 1])])
    sess = ember.load(model, threads=1)
    compiled = sess.compile()
    tracemalloc.start()
    try:
        ctx = compiled.acquire()                     # binding: arena (~140 KB) and the steps
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    compiled.release(ctx)
    assert peak < 1 << 20                            # a list of views per index: > 10 MB
    (y,) = sess.run(None, {"a": a, "b": b})
    np.testing.assert_allclose(y, np.matmul(a, b), rtol=1e-6, atol=1e-6)


# ---- numpy fallbacks ----------------------------------------------------------------------------
def resize_model(in_shape, sizes, mode):
    graph = helper.make_graph(
        [helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode=mode)], "t",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(sizes))],
        [numpy_helper.from_array(np.array(sizes, np.int64), "sizes")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    return model.SerializeToString()


def traced_run(sess, feeds):
    tracemalloc.start()
    try:
        out = sess.run(None, feeds)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return out, peak


def test_resize_to_an_empty_output_allocates_no_intermediate():
    x = np.ones((1, 1, 4, 4), np.float32)
    sess = ember.load(resize_model(x.shape, (1, 1, 4_000_000, 0), "linear"), threads=1)
    (y,), peak = traced_run(sess, {"x": x})
    assert y.shape == (1, 1, 4_000_000, 0)
    assert peak < 1 << 20          # upsampling the first axis first: 128 MB of float64


def test_resize_shrinks_before_it_grows():
    """Growing a 1×1000 image to 1000×1: resizing axis 2 first would make a 1000×1000 float64
    intermediate (8 MB); shrinking axis 3 first keeps every intermediate at 1000 elements."""
    model = resize_model((1, 1, 1, 1000), (1, 1, 1000, 1), "linear")
    x = np.random.default_rng(5).standard_normal((1, 1, 1, 1000)).astype(np.float32)
    sess = ember.load(model, threads=1)
    (y,), peak = traced_run(sess, {"x": x})
    assert peak < 1 << 20
    ref = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)


def test_reference_temporaries_beyond_the_cap_are_refused_naming_the_node():
    # cubic: linear and nearest have a kernel (kernels/resize.pyx), cubic runs the reference
    model = resize_model((1, 1, 256, 256), (1, 1, 512, 512), "cubic")
    x = np.ones((1, 1, 256, 256), np.float32)
    elements = 256 * 256 + 4 + 512 * 512             # x, sizes and y
    estimate = 4 * 8 * elements                      # REFERENCE_TEMPORARIES float64 copies
    with pytest.raises(ModelError, match=rf"Resize.*{estimate:,} bytes of temporaries"):
        ember.load(model, threads=1, memory_cap=4 << 20)   # the arena (1.3 MB) fits
    roomy = ember.load(model, threads=1, memory_cap=64 << 20)
    (y,) = roomy.run(None, {"x": x})
    np.testing.assert_allclose(y, np.ones((1, 1, 512, 512)), rtol=1e-6)


@pytest.mark.parametrize("sa, sb", [((3, 2, 5), (3, 5, 4)), ((3, 2, 0), (3, 0, 4)),
                                    ((2, 1, 2, 3), (1, 4, 3, 2)), ((3, 1, 2, 0), (1, 5, 0, 4))])
def test_batched_matmul_matches_numpy(sa, sb):
    """The batch loop, with and without broadcast, and with K = 0 (empty A and B, Y zeros)."""
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal(sa).astype(np.float32), rng.standard_normal(sb).astype(np.float32)
    y_shape = list(np.broadcast_shapes(sa[:-2], sb[:-2])) + [sa[-2], sb[-1]]
    model = make_model([helper.make_node("MatMul", ["a", "b"], ["y"])],
                       [("a", list(sa)), ("b", list(sb))], [("y", y_shape)])
    (y,) = ember.load(model, threads=1).run(None, {"a": a, "b": b})
    np.testing.assert_allclose(y, np.matmul(a, b), rtol=1e-6, atol=1e-6)
