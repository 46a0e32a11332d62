"""Session: onnxruntime-style API, feed validation, dynamic shapes, threads, memory cap.

Oracles: onnxruntime on the same ONNX bytes, and numpy written here.
Float tolerance rtol = atol = 1e-5: ember and onnxruntime sum the conv/matmul products in a
different order (im2col + blocked gemm vs. their own kernels), so float32 results differ by a
few ulps times the number of products (≤ 27 here).
"""
from __future__ import annotations

import threading
import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import ember
from ember import EmberError, InputError, ModelError

RTOL = ATOL = 1e-5


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


def oracle(model_bytes, feeds, names=None):
    sess = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    return sess.run(names, feeds)


RNG = np.random.default_rng(0)
W = RNG.standard_normal((5, 3, 3, 3)).astype(np.float32)
B = RNG.standard_normal(5).astype(np.float32)


def conv_model(batch=2):
    """x → Conv(3→5, 3×3, pad 1) → Relu → y ; second output z = x · 2."""
    return make_model(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[3, 3],
                          pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["y"]),
         helper.make_node("Mul", ["x", "two"], ["z"])],
        [("x", [batch, 3, 6, 6])], [("y", [batch, 5, 6, 6]), ("z", [batch, 3, 6, 6])],
        [("w", W), ("b", B), ("two", np.array(2.0, np.float32))])


@pytest.fixture(scope="module")
def model():
    return conv_model()


@pytest.fixture(scope="module")
def sess(model):
    return ember.load(model, threads=2)


def x_batch(seed, batch=2):
    return np.random.default_rng(seed).standard_normal((batch, 3, 6, 6)).astype(np.float32)


def check_correct(sess, model, seed=1):
    x = x_batch(seed)
    y, z = sess.run(None, {"x": x})
    ry, rz = oracle(model, {"x": x})
    np.testing.assert_allclose(y, ry, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(z, rz, rtol=RTOL, atol=ATOL)


# ---- onnxruntime-style API -------------------------------------------------------------------
def test_run_all_outputs_matches_onnxruntime(sess, model):
    check_correct(sess, model)


def test_run_named_output_and_call(sess, model):
    x = x_batch(2)
    (ry,) = oracle(model, {"x": x}, ["y"])
    (y,) = sess.run(["y"], {"x": x})
    np.testing.assert_allclose(y, ry, rtol=RTOL, atol=ATOL)
    (z,) = sess.run(["z"], {"x": x})
    np.testing.assert_array_equal(z, x * 2)  # exact: one float multiply by 2
    y2, z2 = sess(x)  # two outputs -> a list of both
    np.testing.assert_allclose(y2, ry, rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(z2, x * 2)


def test_inputs_outputs_metadata(sess):
    assert [(i.name, tuple(i.shape), i.dtype) for i in sess.inputs] == \
        [("x", (2, 3, 6, 6), np.dtype(np.float32))]
    assert [(o.name, o.dtype) for o in sess.outputs] == \
        [("y", np.dtype(np.float32)), ("z", np.dtype(np.float32))]
    assert sess.inputs[0].type == "tensor(float)"


def test_output_shapes_as_declared_like_onnxruntime(sess, model):
    ref = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    assert [(o.name, tuple(o.shape)) for o in sess.outputs] == \
        [(o.name, tuple(o.shape)) for o in ref.get_outputs()] == \
        [("y", (2, 5, 6, 6)), ("z", (2, 3, 6, 6))]


def test_outputs_are_fresh_arrays(sess, model):
    x1, x2 = x_batch(3), x_batch(4)
    y1, z1 = sess.run(None, {"x": x1})
    keep = y1.copy()
    y1[...] = 123.0  # mutating a result must not touch the session
    z1[...] = -1.0
    y2, z2 = sess.run(None, {"x": x2})
    np.testing.assert_allclose(y2, oracle(model, {"x": x2})[0], rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(z2, x2 * 2)
    # and a later run does not overwrite an earlier result
    y3, _ = sess.run(None, {"x": x1})
    np.testing.assert_array_equal(y3, keep)
    assert not np.shares_memory(y2, y3)


# ---- feed validation -------------------------------------------------------------------------
BAD_FEEDS = {
    "missing": ({}, ["'x'", "float32"]),
    "extra name": ({"x": x_batch(0), "q": x_batch(0)}, ["'q'"]),
    "wrong dtype": ({"x": x_batch(0).astype(np.float64)}, ["'x'", "float32", "float64"]),
    "wrong rank": ({"x": x_batch(0)[0]}, ["'x'", "(2, 3, 6, 6)"]),
    "wrong dim": ({"x": np.zeros((2, 3, 6, 7), np.float32)}, ["'x'", "(2, 3, 6, 6)"]),
}


@pytest.mark.parametrize("case", sorted(BAD_FEEDS))
def test_bad_feed_names_input_and_expectation(sess, model, case):
    feeds, must_mention = BAD_FEEDS[case]
    with pytest.raises(InputError) as exc:
        sess.run(None, feeds)
    for text in must_mention:
        assert text in str(exc.value), (case, str(exc.value))
    check_correct(sess, model)  # the session is unharmed


def test_unknown_output_name(sess, model):
    with pytest.raises(InputError, match="nope"):
        sess.run(["nope"], {"x": x_batch(0)})
    check_correct(sess, model)


def test_non_contiguous_and_big_endian_feeds(sess, model):
    x = x_batch(5)
    (ry,) = oracle(model, {"x": x}, ["y"])
    wide = np.zeros((2, 3, 6, 12), np.float32)
    wide[..., ::2] = x
    strided = wide[..., ::2]
    assert not strided.flags.c_contiguous
    fortran = np.asfortranarray(x)
    big = x.astype(">f4")
    for feed in (strided, fortran, big):
        (y,) = sess.run(["y"], {"x": feed})
        np.testing.assert_allclose(y, ry, rtol=RTOL, atol=ATOL)


# ---- dynamic batch ---------------------------------------------------------------------------
def dynamic_model():
    """x[N,3,6,6] → Conv → Relu → GlobalAveragePool → Flatten → Gemm(5→4) → y[N,4]."""
    g = np.random.default_rng(7)
    wg = g.standard_normal((4, 5)).astype(np.float32)
    bg = g.standard_normal(4).astype(np.float32)
    return make_model(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[3, 3],
                          pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("GlobalAveragePool", ["r"], ["p"]),
         helper.make_node("Flatten", ["p"], ["f"], axis=1),
         helper.make_node("Gemm", ["f", "wg", "bg"], ["y"], transB=1)],
        [("x", ["N", 3, 6, 6])], [("y", ["N", 4])],
        [("w", W), ("b", B), ("wg", wg), ("bg", bg)])


def test_dynamic_batch_runs_1_then_8_and_caches_two_plans():
    model = dynamic_model()
    sess = ember.load(model, threads=2)  # no shapes= needed
    assert tuple(sess.inputs[0].shape) == ("N", 3, 6, 6)
    for batch in (1, 8, 1, 8):
        x = x_batch(batch, batch)
        (y,) = sess.run(None, {"x": x})
        assert y.shape == (batch, 4)
        np.testing.assert_allclose(y, oracle(model, {"x": x})[0], rtol=RTOL, atol=ATOL)
    # one compiled plan per distinct shape (the cache is internal: no public accessor yet)
    assert len(sess._cache) == 2


def test_plan_cache_is_bounded_and_drops_the_least_recently_used_plan():
    """A stream of batch sizes keeps at most ``max_plans`` compiled plans; the one used longest
    ago goes, and its arena is freed."""
    import gc
    import weakref
    model = dynamic_model()
    sess = ember.load(model, threads=1, max_plans=2)

    def run(batch):
        x = x_batch(batch, batch)
        (y,) = sess.run(None, {"x": x})
        np.testing.assert_allclose(y, oracle(model, {"x": x})[0], rtol=RTOL, atol=ATOL)

    def batches():
        return [dict(key)["x"][0] for key in sess._cache]

    run(1)
    first = weakref.ref(next(iter(sess._cache.values())))
    run(2)
    run(1)                      # 1 is now the most recently used
    run(3)                      # full: 2 goes, not 1
    assert batches() == [1, 3]
    run(2)
    assert batches() == [3, 2]  # now 1 went
    gc.collect()
    assert first() is None      # the dropped plan (and its arena) is gone
    with pytest.raises(ember.EmberError, match="max_plans"):
        ember.load(model, max_plans=0)


def test_shapes_on_load_fixes_the_batch():
    model = dynamic_model()
    sess = ember.load(model, threads=1, shapes={"x": (4, 3, 6, 6)})
    assert tuple(sess.inputs[0].shape) == (4, 3, 6, 6)
    x = x_batch(9, 4)
    (y,) = sess.run(None, {"x": x})
    np.testing.assert_allclose(y, oracle(model, {"x": x})[0], rtol=RTOL, atol=ATOL)
    with pytest.raises(InputError, match="'x'"):
        sess.run(None, {"x": x_batch(9, 2)})
    with pytest.raises(InputError):
        ember.load(model, shapes={"x": (4, 3, 6, 7)})  # contradicts a static dim
    with pytest.raises(InputError):
        ember.load(model, shapes={"nope": (1, 3, 6, 6)})


# ---- concurrency -----------------------------------------------------------------------------
def test_threads_share_one_session(sess):
    feeds = [x_batch(100 + k) for k in range(8)]
    serial = [sess.run(["y"], {"x": x})[0] for x in feeds]
    failures = []

    def worker(k):
        try:
            for _ in range(50):
                (y,) = sess.run(["y"], {"x": feeds[k]})
                # same session, same thread count: identical kernel schedule; the tiny
                # tolerance only covers an OpenMP reduction split that might differ per team
                if not np.allclose(y, serial[k], rtol=1e-6, atol=1e-6):
                    failures.append(k)
                    return
        except Exception as e:  # noqa: BLE001 - report it in the main thread
            failures.append(repr(e))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    assert failures == []
    assert time.perf_counter() - t0 < 10


# ---- settings --------------------------------------------------------------------------------
@pytest.mark.parametrize("threads", [0, -1, "x", 1.5])
def test_bad_threads(model, threads):
    with pytest.raises(EmberError, match="threads"):
        ember.load(model, threads=threads)


def test_memory_cap_below_plan_is_a_model_error(model):
    with pytest.raises(ModelError, match="memory cap"):
        ember.load(model, memory_cap=1000)  # the plan holds x, c/y and z: > 1,000 bytes


def test_huge_plan_refused_before_allocating():
    """A 4 TiB arena: allocating it would raise MemoryError (or worse); the cap stops it first."""
    model = make_model([helper.make_node("Relu", ["x"], ["y"])],
                       [("x", [1 << 20, 1 << 20])], [("y", [1 << 20, 1 << 20])])
    with pytest.raises(ModelError, match="memory cap"):
        ember.load(model)


def test_symbolic_model_reuses_its_plan_without_revalidating():
    """A model with a symbolic batch takes the fast path once a plan for the feeds' shapes is
    cached; feeds that differ in dtype, rank or a fixed dim still get the full check."""
    import ember
    from ember.cli import DEMO_MODEL
    sess = ember.load(DEMO_MODEL, threads=1)
    x = np.random.default_rng(0).standard_normal((3, 1, 8, 8)).astype(np.float32)
    assert sess._fast_compiled({"image": x}) is None       # nothing compiled for batch 3 yet
    first = sess.run(None, {"image": x})[0]
    assert sess._fast_compiled({"image": x}) is not None
    np.testing.assert_array_equal(sess.run(None, {"image": x})[0], first)
    for bad in (x.astype(np.float64), x[0], np.zeros((3, 2, 8, 8), np.float32)):
        assert sess._fast_compiled({"image": bad}) is None
        with pytest.raises(ember.InputError):
            sess.run(None, {"image": bad})
