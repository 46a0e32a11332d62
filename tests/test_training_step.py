"""One training step of a small CNN against an independent numpy implementation, the Session's
external state, and the step's allocations.

The reference below is written from the formulas (float64), not from ember's code: convolution by
explicit sums, BatchNorm with batch statistics (normalising with the population variance, updating the
running variance with the unbiased one as torch does; torch's momentum 0.1 = ONNX's 0.9), ReLU, 2×2 max-pool routing the gradient to
the first maximum, a dense layer and mean softmax cross-entropy, then the optimizers' update
formulas as torch documents them.
"""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import ember
from ember import nn, optim
from ember.graph.builder import Builder
from ember.runtime.session import Session

N, CIN, H, W, COUT, CLASSES = 4, 2, 6, 6, 3, 5
EPS, MOMENTUM = 1e-5, 0.1


# ---- the independent reference (float64) ------------------------------------------------------
def ref_params(seed=0):
    r = np.random.default_rng(seed)
    return {
        "0.weight": r.normal(0, 0.5, (COUT, CIN, 3, 3)),
        "1.weight": r.uniform(0.5, 1.5, COUT), "1.bias": r.normal(0, 0.3, COUT),
        "1.running_mean": r.normal(0, 0.1, COUT), "1.running_var": r.uniform(0.5, 1.5, COUT),
        "5.weight": r.normal(0, 0.3, (CLASSES, COUT * 9)), "5.bias": r.normal(0, 0.1, CLASSES),
    }


def ref_forward_backward(p, x, y):
    """Loss, gradients, new running stats and the margins that make float32 agree."""
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    conv = np.zeros((N, COUT, H, W))
    for kh in range(3):
        for kw in range(3):
            patch = xp[:, :, kh:kh + H, kw:kw + W]              # N, CIN, H, W
            conv += np.einsum("nchw,oc->nohw", patch, p["0.weight"][:, :, kh, kw])
    mu, var = conv.mean(axis=(0, 2, 3)), conv.var(axis=(0, 2, 3))
    inv = 1.0 / np.sqrt(var + EPS)
    xhat = (conv - mu[None, :, None, None]) * inv[None, :, None, None]
    bn = p["1.weight"][None, :, None, None] * xhat + p["1.bias"][None, :, None, None]
    relu = np.maximum(bn, 0)
    pool = np.zeros((N, COUT, 3, 3))
    route = np.zeros((N, COUT, 3, 3, 2), int)
    for i in range(3):
        for j in range(3):
            win = relu[:, :, 2 * i:2 * i + 2, 2 * j:2 * j + 2].reshape(N, COUT, 4)
            k = win.argmax(axis=2)                        # first maximum in row-major order
            pool[:, :, i, j] = win.max(axis=2)
            route[:, :, i, j, 0], route[:, :, i, j, 1] = 2 * i + k // 2, 2 * j + k % 2
    a = pool.reshape(N, -1)
    z = a @ p["5.weight"].T + p["5.bias"]
    zmax = z.max(axis=1, keepdims=True)
    logp = z - zmax - np.log(np.exp(z - zmax).sum(axis=1, keepdims=True))
    loss = -logp[np.arange(N), y].mean()
    # backward
    dz = np.exp(logp)
    dz[np.arange(N), y] -= 1
    dz /= N
    g = {"5.weight": dz.T @ a, "5.bias": dz.sum(axis=0)}
    dpool = (dz @ p["5.weight"]).reshape(N, COUT, 3, 3)
    drelu = np.zeros_like(relu)
    for n in range(N):
        for c in range(COUT):
            for i in range(3):
                for j in range(3):
                    r_, c_ = route[n, c, i, j]
                    drelu[n, c, r_, c_] += dpool[n, c, i, j]
    dbn = drelu * (bn > 0)
    m = N * H * W
    g["1.weight"] = (dbn * xhat).sum(axis=(0, 2, 3))
    g["1.bias"] = dbn.sum(axis=(0, 2, 3))
    s1 = dbn.sum(axis=(0, 2, 3))[None, :, None, None]
    s2 = (dbn * xhat).sum(axis=(0, 2, 3))[None, :, None, None]
    dconv = (p["1.weight"] * inv)[None, :, None, None] / m * (m * dbn - s1 - xhat * s2)
    dw = np.zeros_like(p["0.weight"])
    for kh in range(3):
        for kw in range(3):
            dw[:, :, kh, kw] = np.einsum("nohw,nchw->oc", dconv, xp[:, :, kh:kh + H, kw:kw + W])
    g["0.weight"] = dw
    stats = {"1.running_mean": (1 - MOMENTUM) * p["1.running_mean"] + MOMENTUM * mu,
             "1.running_var": (1 - MOMENTUM) * p["1.running_var"]
             + MOMENTUM * conv.var(axis=(0, 2, 3), ddof=1)}
    wins = np.sort(relu.reshape(N, COUT, 3, 2, 3, 2).transpose(0, 1, 2, 4, 3, 5)
                   .reshape(N, COUT, 9, 4), axis=-1)
    live = wins[..., -1] > 0     # windows all zero after ReLU pass no gradient: ties harmless
    margins = {"relu": np.abs(bn).min(),
               "pool_gap": (wins[..., -1] - wins[..., -2])[live].min(),
               "grad": min(np.abs(v).min() for v in g.values())}
    return loss, g, stats, margins


def ref_optimizer(kind, lr):
    """The update formulas, as torch.optim documents them, over dicts of float64 arrays."""
    state, t = {}, [0]

    def step(params, grads):
        t[0] += 1
        for k, gk in grads.items():
            s = state.setdefault(k, {})
            if kind == "sgd":
                params[k] = params[k] - lr * gk
            elif kind == "momentum":                       # torch: v = μv + g (v₁ = g)
                s["v"] = gk.copy() if "v" not in s else 0.9 * s["v"] + gk
                params[k] = params[k] - lr * s["v"]
            elif kind == "rmsprop":                        # ε outside the root
                s["sq"] = 0.99 * s.get("sq", 0.0) + 0.01 * gk * gk
                params[k] = params[k] - lr * gk / (np.sqrt(s["sq"]) + 1e-8)
            elif kind == "adam":                           # bias-corrected, ε outside the root
                s["m"] = 0.9 * s.get("m", 0.0) + 0.1 * gk
                s["v"] = 0.999 * s.get("v", 0.0) + 0.001 * gk * gk
                mhat, vhat = s["m"] / (1 - 0.9 ** t[0]), s["v"] / (1 - 0.999 ** t[0])
                params[k] = params[k] - lr * mhat / (np.sqrt(vhat) + 1e-8)
    return step


def make_model():
    return nn.Sequential(nn.Conv2d(CIN, COUT, 3, padding=1, bias=False), nn.BatchNorm2d(COUT),
                         nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(COUT * 9, CLASSES))


def data(seed=4):
    r = np.random.default_rng(seed)
    return r.normal(0, 1, (N, CIN, H, W)), r.integers(0, CLASSES, N)


EMBER_OPTIMIZERS = {
    "sgd": lambda lr: optim.SGD(lr=lr),
    "momentum": lambda lr: optim.SGD(lr=lr, momentum=0.9),
    "rmsprop": lambda lr: optim.RMSprop(lr=lr),
    "adam": lambda lr: optim.Adam(lr=lr),
}


def make_trainer(kind, lr, p):
    t = ember.Trainer(make_model(), input_shape=(CIN, H, W), loss=nn.CrossEntropyLoss(),
                      optimizer=EMBER_OPTIMIZERS[kind](lr), batch_size=N, threads=1)
    t.load_state_dict({k: v.astype(np.float32) for k, v in p.items()})
    return t


def test_forward_and_gradients_match_numpy():
    p, (x, y) = ref_params(), data()
    loss, g, _, margins = ref_forward_backward(p, x, y)
    # float32 agrees with float64 only away from ReLU's kink and max-pool ties: make sure the
    # data keeps clear of both (else a flipped branch, not a bug, would fail the test).
    assert margins["relu"] > 1e-4 and margins["pool_gap"] > 1e-4
    t = make_trainer("sgd", 0.1, p)
    assert t.evaluate(x, y)["loss"] != pytest.approx(loss)   # eval mode: running statistics
    grads = t.gradients(x.astype(np.float32), y)
    assert set(grads) == set(g)
    for k, gk in g.items():
        # float32 sums of ≤ 288 terms of size ≤ 1: absolute error ~1e-6 on O(1e-1) values
        np.testing.assert_allclose(grads[k], gk, rtol=1e-4, atol=1e-6, err_msg=k)
    # the loss the step reports is the batch's training-mode loss
    assert t.train_step(x, y) == pytest.approx(loss, rel=1e-5)


@pytest.mark.parametrize("kind,lr", [("sgd", 0.1), ("momentum", 0.05), ("rmsprop", 0.01),
                                     ("adam", 0.01)])
def test_two_steps_update_parameters_like_numpy(kind, lr):
    """Two steps (the second exercises momentum/RMS/Adam state) with the same batch; every
    parameter and both running statistics after each step."""
    p, (x, y) = ref_params(), data()
    t = make_trainer(kind, lr, p)
    ref_step = ref_optimizer(kind, lr)
    params = {k: v.copy() for k, v in p.items()}
    for _ in range(2):
        loss, g, stats, margins = ref_forward_backward(params, x, y)
        # Adam/RMSprop divide by |g|: float32 noise in a near-zero gradient would flip the
        # update's sign. The data keeps every gradient well away from 0.
        assert margins["grad"] > 1e-4 and margins["relu"] > 1e-4 and margins["pool_gap"] > 1e-4
        got = t.train_step(x, y)
        assert got == pytest.approx(loss, rel=1e-5)
        ref_step(params, {k: g[k] for k in g})
        params.update(stats)
        sd = t.state_dict()
        for k, v in params.items():
            # updates are lr·O(1); float32 parameters hold ~7 digits
            np.testing.assert_allclose(sd[k], v, rtol=2e-5, atol=2e-6, err_msg=f"{kind} {k}")


def test_running_stats_committed_only_by_training_steps():
    p, (x, y) = ref_params(), data()
    t = make_trainer("sgd", 0.1, p)
    before = t.state_dict()
    t.gradients(x, y)
    t.evaluate(x, y)
    t.predict(x)
    after = t.state_dict()
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])
    _, _, stats, _ = ref_forward_backward(p, x, y)
    t.train_step(x, y)
    for k, v in stats.items():
        np.testing.assert_allclose(t.state_dict()[k], v, rtol=1e-5, atol=1e-6)


# ---- Session external state ----------------------------------------------------------------------
def _external_graph(op="MatMul"):
    b = Builder("ext", seed=0)
    x = b.input("x", (3, 3))
    w = b.parameter("w", (3, 3))
    if op == "MatMul":
        y = b.matmul(x, w)
    else:   # an in-place-able op reading the parameter directly
        y = b.relu(w) + x
    b.output(y, "y")
    g = b.build()
    w0 = g.initializers.pop("w")
    g.inputs.append("w")
    return g, np.array(w0, np.float32)


def test_external_state_is_read_in_place_and_not_planned():
    g, w = _external_graph()
    sess = Session(g, external={"w": w}, threads=1)
    x = np.random.default_rng(0).normal(size=(3, 3)).astype(np.float32)
    (y1,) = sess.run(None, {"x": x})
    np.testing.assert_allclose(y1, x @ w, rtol=1e-6)
    w *= 2.0                          # the owner updates in place: the next run sees it
    (y2,) = sess.run(None, {"x": x})
    np.testing.assert_allclose(y2, x @ w, rtol=1e-6)
    plan = sess.plan()
    assert "w" not in plan.offsets
    assert [i.name for i in sess.get_inputs()] == ["x"]
    with pytest.raises(ember.InputError, match="unknown input"):
        sess.run(None, {"x": x, "w": w})


def test_external_state_is_never_written_by_steps():
    g, w = _external_graph("Relu")
    w -= 0.5                          # negative entries: an in-place Relu would clip them
    keep = w.copy()
    sess = Session(g, external={"w": w}, threads=1)
    x = np.ones((3, 3), np.float32)
    (y,) = sess.run(None, {"x": x})
    np.testing.assert_array_equal(w, keep)
    np.testing.assert_allclose(y, np.maximum(keep, 0) + x)


def test_external_batchnorm_parameters_are_live():
    """BatchNorm's eval binder precomputes scale/shift from constants: external ones must be
    read on every run."""
    b = Builder("bn", seed=0)
    x = b.input("x", (2, 3, 2, 2))
    names = ["s", "bias", "mean", "var"]
    vals = [b.parameter(n, (3,), "ones") for n in names]
    b.output(b.batch_norm(x, *vals), "y")
    g = b.build()
    arrays = {n: np.array(g.initializers.pop(n), np.float32) for n in names}
    g.inputs += names
    sess = Session(g, external=arrays, threads=1)
    xv = np.random.default_rng(0).normal(size=(2, 3, 2, 2)).astype(np.float32)
    sess.run(None, {"x": xv})
    arrays["s"][:] = 3.0
    arrays["mean"][:] = 0.5
    (y,) = sess.run(None, {"x": xv})
    np.testing.assert_allclose(y, 3.0 * (xv - 0.5) / np.sqrt(1 + 1e-5) + 1.0, rtol=1e-5)
    ctx = sess.compile().acquire()       # ...and still by the Cython kernel, not numpy
    assert [getattr(step, "reference", False) for _, step in ctx.steps] == [False]


@pytest.mark.parametrize("bad,match", [
    (lambda w: w.astype(np.float64), "dtype"),
    (lambda w: np.asfortranarray(np.ones((3, 3), np.float32))[:, ::-1], "C-contiguous"),
    (lambda w: np.ones((3, 4), np.float32), "shape"),
    (lambda w: np.broadcast_to(np.float32(1), (3, 3)), "writeable"),
])
def test_external_state_rejects_arrays_it_would_have_to_copy(bad, match):
    g, w = _external_graph()
    with pytest.raises(ember.InputError, match=match):
        Session(g, external={"w": bad(w)})


def test_external_state_must_name_an_input():
    g, w = _external_graph()
    with pytest.raises(ember.InputError, match="not a graph input"):
        Session(g, external={"w": w, "nope": w})


# ---- allocations -------------------------------------------------------------------------------
def _peak_during(fn) -> int:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        fn()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


class _NoRun:
    def run(self):
        pass


@pytest.mark.parametrize("kind", ["sgd", "momentum", "rmsprop", "adam"])
def test_step_bookkeeping_allocates_nothing(kind):
    """Everything a step does around the graph run — loss check, L2 gradient (axpy), the
    optimizer's update, committing running statistics — allocates nothing big."""
    p, (x, y) = ref_params(), data()
    t = ember.Trainer(make_model(), input_shape=(CIN, H, W), optimizer=EMBER_OPTIMIZERS[kind](0.01),
                      batch_size=N, threads=1, l2=0.1)
    t.load_state_dict({k: v.astype(np.float32) for k, v in p.items()})
    t.train_step(x, y)
    step = t._steps[(N, "labels", 0)]
    step.ctx.runner = _NoRun()  # the kernels' part is measured below, when they all exist
    t._train_batch(step)
    peak = _peak_during(lambda: t._train_batch(step))
    assert peak < 4096, f"{peak} bytes allocated by one step's bookkeeping"


@pytest.mark.parametrize("with_bn", [True, False])
def test_training_step_allocates_nothing(with_bn):
    """Forward, backward, loss check and Adam update of a whole step: nothing big allocated
    (arena views only). Runs once every op of the model has its kernel."""
    layers = [nn.Conv2d(CIN, COUT, 3, padding=1)] + ([nn.BatchNorm2d(COUT)] if with_bn else []) \
        + [nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(COUT * 9, CLASSES)]
    t = ember.Trainer(nn.Sequential(*layers), input_shape=(CIN, H, W),
                      optimizer=optim.Adam(lr=0.01), batch_size=N, threads=1, l2=0.1)
    x, y = data()
    t.train_step(x, y)
    step = t._steps[(N, "labels", 0)]
    slow = sorted({n.op_type for n, s in step.ctx.steps if getattr(s, "reference", False)})
    if slow:
        pytest.skip(f"ops still on their numpy reference (which allocates): {slow}")
    x32, y64 = x.astype(np.float32), y.astype(np.int64)

    def one_step():       # the batch is copied in every time (the arena reuses its bytes)
        np.copyto(step.x, x32)
        np.copyto(step.target, y64)
        t._train_batch(step)
    for _ in range(2):
        one_step()
    peak = _peak_during(one_step)
    assert peak < 8192, f"{peak} bytes allocated by one training step"
