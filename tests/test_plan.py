"""The run loop: kernels.plan.PlanRunner (native steps run GIL-free, back to back),
conv.Conv2dStep (conv2d with its arguments resolved once) and Session.run's fast path for
ready-made feeds.

Oracles: conv2d itself (already checked against a float64 numpy twin in test_kernels.py) for
the prepared step, call order recorded in Python for the plan, and onnxruntime for the session.
"""
from __future__ import annotations

import threading

import numpy as np
import onnxruntime as ort
import pytest

import ember
from ember import InputError
from ember.kernels import conv, plan
from ember.runtime import binders

rng = np.random.default_rng(7)


def rand(*shape):
    return rng.standard_normal(shape).astype(np.float32)


# (N, C, H, W, M, K, stride, pad, group, act): depthwise, pointwise, im2col, implicit GEMM
STEP_CASES = [
    (1, 16, 14, 14, 16, 3, 1, 1, 16, 10),
    (2, 8, 9, 11, 8, 5, 2, 2, 8, 1),
    (1, 24, 7, 7, 40, 1, 1, 0, 1, 10),
    (3, 5, 9, 9, 7, 3, 2, 1, 1, 0),
    (1, 4, 20, 21, 6, 3, 1, 1, 2, 7),
]


def conv_args(case, nthreads):
    N, C, H, W, M, K, s, p, g, act = case
    OH, OW = (H + 2 * p - K) // s + 1, (W + 2 * p - K) // s + 1
    x, w, b = rand(N, C, H, W), rand(M, C // g, K, K), rand(M)
    n = conv.conv2d_scratch_floats(C, H, W, M, K, K, OH, OW, s, s, p, p, 1, 1, g, nthreads)
    scratch = np.zeros(n, np.float32) if n else None
    y = np.full((N, M, OH, OW), np.nan, np.float32)
    return [x, w, b, y, scratch, s, s, p, p, 1, 1, g, act, 0.0, 6.0, nthreads]


@pytest.mark.parametrize("case", STEP_CASES)
@pytest.mark.parametrize("nthreads", [1, 2])
def test_conv2d_step_equals_conv2d(case, nthreads):
    args = conv_args(case, nthreads)
    want = args[3].copy()
    conv.conv2d(*args[:3], want, *args[4:])
    step = conv.Conv2dStep(*args)
    step()
    np.testing.assert_array_equal(args[3], want)
    args[3][...] = np.nan                      # the step reads its arrays live on every run
    args[0][...] = rand(*args[0].shape)
    conv.conv2d(*args[:3], want, *args[4:])
    plan.PlanRunner([step]).run()
    np.testing.assert_array_equal(args[3], want)


def test_conv2d_step_checks_scratch_at_bind_time():
    args = conv_args(STEP_CASES[3], 1)
    args[4] = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match="scratch"):
        conv.Conv2dStep(*args)


def test_plan_runs_native_and_python_steps_in_order():
    """A conv chain y1 = conv(x), y2 = conv(y1) with Python steps between and around: the order
    shows in what the Python steps see."""
    x, w = rand(1, 8, 10, 10), rand(8, 1, 3, 3)
    y1, y2 = np.zeros_like(x), np.zeros_like(x)
    geo = (1, 1, 1, 1, 1, 1, 8, 0, 0.0, 0.0, 1)
    first = conv.Conv2dStep(x, w, None, y1, None, *geo)
    second = conv.Conv2dStep(y1, w, None, y2, None, *geo)
    seen = []
    p = plan.PlanRunner([lambda: seen.append(("start", y1.any())), first, second,
                   lambda: seen.append(("end", y2.copy()))])
    assert len(p) == 4 and p.native_steps == 2
    p.run()
    want1 = np.zeros_like(x)
    conv.conv2d(x, w, None, want1, None, *geo)
    want2 = np.zeros_like(x)
    conv.conv2d(want1, w, None, want2, None, *geo)
    assert seen[0] == ("start", False)
    np.testing.assert_array_equal(seen[1][1], want2)


def test_plan_propagates_python_step_errors_and_stops():
    ran = []

    def boom():
        raise InputError("boom")
    p = plan.PlanRunner([lambda: ran.append(1), boom, lambda: ran.append(2)])
    with pytest.raises(InputError, match="boom"):
        p.run()
    assert ran == [1]


def test_plan_ignores_foreign_capsules():
    class Fake:
        _native = "not a capsule"

        def __call__(self):
            called.append(True)
    called = []
    p = plan.PlanRunner([Fake()])
    assert p.native_steps == 0
    p.run()
    assert called == [True]


def test_make_runner_covers_every_step():
    steps = [lambda: None, lambda: None]
    assert len(binders.make_runner(steps)) == 2


# ---- Session.run: the fast path must behave exactly like the general one ------------------
def _tiny_model():
    from onnx import TensorProto, helper, numpy_helper
    w = rand(4, 3, 3, 3)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["y"])], "t",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def test_session_fast_path_matches_onnxruntime_and_still_validates():
    data = _tiny_model()
    sess = ember.load(data, threads=2)
    x = rand(1, 3, 8, 8)
    want = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], want, rtol=1e-5, atol=1e-5)
    # lists, other byte orders and non-contiguous arrays take the general path
    np.testing.assert_allclose(sess.run(None, {"x": x.tolist()})[0], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sess.run(None, {"x": x.astype(">f4")})[0], want, rtol=1e-5,
                               atol=1e-5)
    wide = np.zeros((1, 3, 8, 16), np.float32)
    wide[..., ::2] = x
    np.testing.assert_allclose(sess.run(None, {"x": wide[..., ::2]})[0], want, rtol=1e-5,
                               atol=1e-5)
    with pytest.raises(InputError, match="shape"):
        sess.run(None, {"x": rand(1, 3, 8, 9)})
    with pytest.raises(InputError, match="dtype"):
        sess.run(None, {"x": x.astype(np.float64)})
    with pytest.raises(InputError, match="missing"):
        sess.run(None, {"z": x})
    with pytest.raises(InputError, match="unknown"):
        sess.run(None, {"x": x, "z": x})
    with pytest.raises(InputError, match="unknown output"):
        sess.run(["nope"], {"x": x})


def test_session_runs_are_independent_across_threads():
    data = _tiny_model()
    sess = ember.load(data, threads=1)
    feeds = [rand(1, 3, 8, 8) for _ in range(4)]
    serial = [sess.run(None, {"x": f})[0] for f in feeds]
    bad = []

    def worker(k):
        for _ in range(30):
            if not np.array_equal(sess.run(None, {"x": feeds[k]})[0], serial[k]):
                bad.append(k)
    ts = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert bad == []


# The op types a compiled model still runs as Python steps (between native ones). Shrinking
# these sets is the point of native steps; a new entry here is a regression.
PYTHON_STEP_OPS = {
    "lenet5": set(),
    "small_vgg": set(),
    "mobilenetv2": set(),
    "resnet18": set(),
}


@pytest.mark.parametrize("name", sorted(PYTHON_STEP_OPS))
def test_course_models_run_natively(name):
    import models
    session = ember.load(getattr(models, name)(batch=1).SerializeToString(), threads=1)
    native, total, python_ops = session.compile().native_steps()
    assert set(python_ops) <= PYTHON_STEP_OPS[name]
    assert total >= 5 and (native == total) == (not python_ops)


# The training plans (forward + loss + backward at batch 64, as benchmarks/train.py builds them):
# the op types still run as Python steps (none: convs on run-time weights chain the weights'
# transform or packing before the conv as one native step), and (native, all) steps.
TRAINING_PYTHON_STEP_OPS = {"lenet5": set(), "small_vgg": set()}
TRAINING_NATIVE_STEPS = {"lenet5": (29, 29), "small_vgg": (53, 53)}


def training_net(name, nn):
    if name == "lenet5":
        return nn.Sequential(
            nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))
    layers, cin = [], 3
    for cout in (32, 32, "pool", 64, 64, "pool", 128, 128, "pool"):
        if cout == "pool":
            layers.append(nn.MaxPool2d(2))
            continue
        layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                   nn.ReLU()]
        cin = cout
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(128 * 4 * 4, 10))


@pytest.mark.parametrize("name", sorted(TRAINING_PYTHON_STEP_OPS))
def test_training_plans_run_natively(name):
    from ember import nn, optim
    shape = (1, 32, 32) if name == "lenet5" else (3, 32, 32)
    trainer = ember.Trainer(training_net(name, nn), input_shape=shape,
                            loss=nn.CrossEntropyLoss(), optimizer=optim.SGD(lr=0.01, momentum=0.9),
                            batch_size=64, threads=1, seed=0)
    x = rng.standard_normal((64,) + shape).astype(np.float32)
    trainer.train_step(x, np.arange(64) % 10)
    (step,) = trainer._steps.values()
    native, total, python_ops = step.compiled.native_steps()
    assert set(python_ops) <= TRAINING_PYTHON_STEP_OPS[name]
    want_native, want_total = TRAINING_NATIVE_STEPS[name]
    assert total == want_total and native >= want_native


def test_training_loss_step_raises_the_nodes_error_from_the_runner():
    """A bad label inside a native loss step surfaces as the node's InputError, the plan runner
    asking the step (raise_for) after its GIL-free loop stopped."""
    from ember import nn, optim
    trainer = ember.Trainer(training_net("lenet5", nn), input_shape=(1, 32, 32),
                            loss=nn.CrossEntropyLoss(), optimizer=optim.SGD(lr=0.01),
                            batch_size=4, threads=1, seed=0)
    x = rng.standard_normal((4, 1, 32, 32)).astype(np.float32)
    trainer.train_step(x, np.array([0, 1, 2, 3]))
    (step,) = trainer._steps.values()
    step.target[...] = [0, 1, 12, 3]
    with pytest.raises(InputError, match="label 12"):
        step.run()


def test_native_chain_runs_its_parts_in_order():
    from ember.kernels.tensor import CopyStep
    a, b, c = (np.arange(6, dtype=np.float32) + k for k in (0, 10, 20))
    chain = plan.NativeChain([CopyStep([(b, a)], 1), CopyStep([(c, b)], 1)])
    chain.winograd_tile = 2                   # takes attributes, as the closures it replaces did
    plan.PlanRunner([chain]).run()
    np.testing.assert_array_equal(c, a)
    assert plan.PlanRunner([chain]).native_steps == 1 and chain.winograd_tile == 2
    with pytest.raises(ValueError, match="native entry point"):
        plan.NativeChain([CopyStep([(b, a)], 1), lambda: None])


# (source shape, a view of it as numpy indexes it, dtype): strided copies of every kind
COPY_CASES = [
    ((4, 5, 6), lambda a: a.transpose(2, 0, 1), np.float32),
    ((4, 5, 6), lambda a: a[::-1, 1:4, ::2], np.float32),
    ((3, 7), lambda a: a[:, 2:5], np.int64),
    ((2, 3, 4, 5), lambda a: a[:, 1:3], np.float16),
    ((6, 5), lambda a: a.T[::-2], np.bool_),
    ((1, 2, 1, 3, 1, 2, 1, 2), lambda a: a.transpose(7, 6, 5, 4, 3, 2, 1, 0), np.float64),
    ((5,), lambda a: a[2:3], np.int32),
    ((), lambda a: a, np.float32),
    ((0, 4), lambda a: a, np.float32),
    ((64, 96, 48), lambda a: a.transpose(1, 0, 2), np.float32),   # big enough for two threads
]


@pytest.mark.parametrize("case", range(len(COPY_CASES)))
@pytest.mark.parametrize("nthreads", [1, 2])
def test_copy_step_equals_numpy(case, nthreads):
    from ember.kernels.tensor import CopyStep
    shape, view, dtype = COPY_CASES[case]
    src = view(np.asarray(rng.standard_normal(shape)).astype(dtype))
    dst = np.zeros(src.shape, dtype)
    step = CopyStep([(dst, src)], nthreads)
    plan.PlanRunner([step]).run()
    np.testing.assert_array_equal(dst, src)
    big = np.zeros((2,) + src.shape, dtype)                  # into a strided destination
    CopyStep([(big[1, ...], src), (big[0, ...], src)], nthreads)()
    np.testing.assert_array_equal(big[0], src)
    np.testing.assert_array_equal(big[1], src)


def test_copy_step_refuses_mismatches():
    from ember.kernels.tensor import CopyStep
    with pytest.raises(ValueError, match="into"):
        CopyStep([(np.zeros(3, np.float32), np.zeros(4, np.float32))], 1)
    with pytest.raises(ValueError, match="into"):
        CopyStep([(np.zeros(3, np.float32), np.zeros(3, np.float64))], 1)
    ro = np.zeros(3, np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        CopyStep([(ro, np.zeros(3, np.float32))], 1)
