"""ember.optim: the update kernels and optimizers against update formulas written here in numpy
(float64), the courses' forms and worked figures, checkpoints, schedules against their closed
forms, bad arguments, and no allocation per step. torch.optim is compared too when importable.

Tolerance (float32 kernel vs float64 twin over a few steps): rtol 2e-5, atol 2e-6 — each step
adds a few float32 roundings of O(1) values.
"""
import copy
import json
import math
import tracemalloc
from collections import OrderedDict

import numpy as np
import pytest

from ember import EmberError, InputError, optim
from ember.kernels import optim as kernels
from ember.optim import lr_scheduler
from ember.runtime import lr_scheduler as runtime_lr_scheduler
from ember.runtime import optim as runtime_optim

SIZES = [1, 7, 100_000]
THREADS = [1, 2]
STEPS = 4
RTOL, ATOL = 2e-5, 2e-6


# ---------------------------------------------------------------------------- numpy twins
def twin_sgd(p, grads, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
    p, buf = p.astype(np.float64), None
    for g in grads:
        d = g + weight_decay * p
        if momentum:
            buf = d.copy() if buf is None else momentum * buf + (1 - dampening) * d
            d = d + momentum * buf if nesterov else buf
        p = p - lr * d
    return p


def twin_rmsprop(p, grads, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                 centered=False):
    p = p.astype(np.float64)
    s, a, b = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)
    for g in grads:
        d = g + weight_decay * p
        s = alpha * s + (1 - alpha) * d * d
        denom = s
        if centered:
            a = alpha * a + (1 - alpha) * d
            denom = s - a * a
        denom = np.sqrt(denom) + eps
        if momentum > 0:
            b = momentum * b + d / denom
            p = p - lr * b
        else:
            p = p - lr * d / denom
    return p


def twin_adam(p, grads, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
              decoupled=False):
    b1, b2 = betas
    p = p.astype(np.float64)
    m, v = np.zeros_like(p), np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        if decoupled:
            p = p * (1 - lr * weight_decay)
            d = g
        else:
            d = g + weight_decay * p
        m = b1 * m + (1 - b1) * d
        v = b2 * v + (1 - b2) * d * d
        m_hat, v_hat = m / (1 - b1 ** t), v / (1 - b2 ** t)
        p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
    return p


CASES = [
    ("SGD", dict(lr=0.1), twin_sgd),
    ("SGD", dict(lr=0.1, momentum=0.9), twin_sgd),
    ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.3), twin_sgd),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True), twin_sgd),
    ("SGD", dict(lr=0.1, weight_decay=0.1), twin_sgd),
    ("SGD", dict(lr=0.05, momentum=0.8, weight_decay=0.1, nesterov=True), twin_sgd),
    ("RMSprop", dict(lr=0.01), twin_rmsprop),
    ("RMSprop", dict(lr=0.01, centered=True), twin_rmsprop),
    ("RMSprop", dict(lr=0.01, momentum=0.5), twin_rmsprop),
    ("RMSprop", dict(lr=0.01, alpha=0.9, eps=1e-6, centered=True, momentum=0.5,
                     weight_decay=0.1), twin_rmsprop),
    ("Adam", dict(lr=0.01), twin_adam),
    ("Adam", dict(lr=0.01, weight_decay=0.1), twin_adam),
    ("Adam", dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6), twin_adam),
    ("AdamW", dict(lr=0.01), lambda p, g, weight_decay=1e-2, **k:
        twin_adam(p, g, weight_decay=weight_decay, decoupled=True, **k)),
    ("AdamW", dict(lr=0.01, weight_decay=0.3), lambda p, g, **k:
        twin_adam(p, g, decoupled=True, **k)),
]
CASE_IDS = [f"{c}-" + "-".join(f"{k}={v}" for k, v in kw.items()) for c, kw, _ in CASES]


def problem(size, seed=0, steps=STEPS):
    rng = np.random.default_rng(seed)
    p = rng.standard_normal(size).astype(np.float32)
    grads = [rng.standard_normal(size).astype(np.float32) for _ in range(steps)]
    return p, grads


def make(cls_name, **kw):
    return getattr(optim, cls_name)(**kw)


# ---------------------------------------------------------------------------- update formulas
@pytest.mark.parametrize("nthreads", THREADS)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("cls_name,kw,twin", CASES, ids=CASE_IDS)
def test_update_matches_numpy_formula(cls_name, kw, twin, size, nthreads):
    p, grads = problem(size)
    expected = twin(p, grads, **kw)
    params = OrderedDict(w=p.copy())
    opt = make(cls_name, **kw).bind(params, nthreads)
    for g in grads:
        g_before = g.copy()
        opt.step({"w": g})
        np.testing.assert_array_equal(g, g_before)          # gradients are only read
    assert opt.steps == STEPS
    np.testing.assert_allclose(params["w"], expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("cls_name,kw,twin", CASES, ids=CASE_IDS)
def test_threads_give_identical_bits(cls_name, kw, twin):
    """Elementwise updates: the split over threads cannot change a single bit."""
    p, grads = problem(3 * kernels.SERIAL_THRESHOLD + 5)
    results = []
    for nthreads in (1, 2):
        params = OrderedDict(w=p.copy())
        opt = make(cls_name, **kw).bind(params, nthreads)
        for g in grads:
            opt.step({"w": g})
        results.append(params["w"])
    np.testing.assert_array_equal(results[0], results[1])


@pytest.mark.parametrize("nthreads", THREADS)
@pytest.mark.parametrize("size", SIZES + [0])
def test_axpy(size, nthreads):
    rng = np.random.default_rng(3)
    y = rng.standard_normal(size).astype(np.float32)
    x = rng.standard_normal(size).astype(np.float32)
    expected = y.astype(np.float64) - 0.37 * x
    kernels.axpy(y, x, -0.37, nthreads)
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("call", [
    lambda p, g: kernels.axpy(p, g[:-1], 1.0, 1),
    lambda p, g: kernels.sgd(p, g[:-1], None, 0.1, 0.0, 0.0, 0.0, False, True, 1),
    lambda p, g: kernels.sgd(p, g, None, 0.1, 0.9, 0.0, 0.0, False, True, 1),
    lambda p, g: kernels.adam(p, g, np.zeros(3, np.float32), np.zeros(5, np.float32),
                              0.1, 0.9, 0.999, 1e-8, 0.0, False, 1, 1),
    lambda p, g: kernels.adam(p, g, np.zeros(5, np.float32), np.zeros(5, np.float32),
                              0.1, 0.9, 0.999, 1e-8, 0.0, False, 0, 1),
    lambda p, g: kernels.rmsprop(p, g, np.zeros(5, np.float32), np.zeros(4, np.float32), None,
                                 0.1, 0.99, 1e-8, 0.0, 0.0, 1),
], ids=["axpy-len", "sgd-len", "sgd-no-buffer", "adam-state-len", "adam-step0", "rmsprop-len"])
def test_kernels_refuse_mismatched_buffers(call):
    p, g = np.ones(5, np.float32), np.ones(5, np.float32)
    with pytest.raises(ValueError):
        call(p, g)
    np.testing.assert_array_equal(p, 1.0)


def test_several_parameters_and_selection_by_pattern():
    rng = np.random.default_rng(5)
    params = OrderedDict((n, rng.standard_normal(s).astype(np.float32)) for n, s in
                         [("conv.weight", (4, 2, 3, 3)), ("conv.bias", (4,)),
                          ("fc.weight", (3, 8)), ("fc.bias", (3,))])
    before = {n: a.copy() for n, a in params.items()}
    grads = {n: rng.standard_normal(a.shape).astype(np.float32) for n, a in params.items()}
    opt = optim.SGD(["fc.*"], lr=0.5).bind(params, 1)
    assert opt.param_names == ["fc.weight", "fc.bias"]
    opt.step(grads)
    for n in params:
        expected = before[n] - 0.5 * grads[n] if n.startswith("fc.") else before[n]
        np.testing.assert_allclose(params[n], expected, rtol=1e-6, atol=1e-7)
    # model.named_parameters()-style (name, object) pairs select by name too
    opt2 = optim.Adam([("conv.bias", object())]).bind(params, 1)
    assert opt2.param_names == ["conv.bias"]


# ---------------------------------------------------------------------------- courses' forms
def courses_momentum(p, grads, alpha, beta, v0=None):
    p = p.astype(np.float64)
    v = np.zeros_like(p) if v0 is None else v0.astype(np.float64)
    for g in grads:
        v = beta * v + (1 - beta) * g
        p = p - alpha * v
    return p


def test_courses_momentum_is_sgd_with_lr_times_one_minus_beta():
    """v = βv + (1−β)dW, W −= αv  ==  torch SGD(lr=α(1−β), momentum=β), every step."""
    alpha, beta = 0.1, 0.9
    p, grads = problem(50, seed=7, steps=8)
    params = OrderedDict(w=p.copy())
    opt = optim.SGD(lr=alpha * (1 - beta), momentum=beta).bind(params, 1)
    for g in grads:
        opt.step({"w": g})
    np.testing.assert_allclose(params["w"], courses_momentum(p, grads, alpha, beta),
                               rtol=RTOL, atol=ATOL)


def test_sgd_dampening_beta_differs_from_courses_only_by_first_velocity():
    """torch SGD(lr=α, momentum=β, dampening=β) sets v = g₁ on step 1: the courses' form started
    from v₀ = g₁ (β·g₁ + (1−β)·g₁ = g₁), not from v₀ = 0."""
    alpha, beta = 0.1, 0.9
    p, grads = problem(50, seed=8, steps=6)
    params = OrderedDict(w=p.copy())
    opt = optim.SGD(lr=alpha, momentum=beta, dampening=beta).bind(params, 1)
    for g in grads:
        opt.step({"w": g})
    np.testing.assert_allclose(params["w"], courses_momentum(p, grads, alpha, beta, v0=grads[0]),
                               rtol=RTOL, atol=ATOL)
    assert not np.allclose(params["w"], courses_momentum(p, grads, alpha, beta), atol=1e-3)


def courses_rmsprop(p, grads, alpha, beta, eps):
    p, s = p.astype(np.float64), np.zeros(p.shape)
    for g in grads:
        s = beta * s + (1 - beta) * g * g
        p = p - alpha * g / np.sqrt(s + eps)                  # ε inside the root
    return p


def courses_adam(p, grads, alpha, beta1=0.9, beta2=0.999, eps=1e-8):
    p, v, s = p.astype(np.float64), np.zeros(p.shape), np.zeros(p.shape)
    for t, g in enumerate(grads, start=1):
        v = beta1 * v + (1 - beta1) * g
        s = beta2 * s + (1 - beta2) * g * g
        p = p - alpha * (v / (1 - beta1 ** t)) / np.sqrt(s / (1 - beta2 ** t) + eps)
    return p


@pytest.mark.parametrize("which", ["rmsprop", "adam"])
def test_courses_eps_inside_root_equals_torch_with_eps_zero(which):
    p, grads = problem(200, seed=9, steps=6)
    params = OrderedDict(w=p.copy())
    if which == "rmsprop":
        opt = optim.RMSprop(lr=0.01, alpha=0.9, eps=0.0)
        expected = courses_rmsprop(p, grads, 0.01, 0.9, eps=0.0)
        near = courses_rmsprop(p, grads, 0.01, 0.9, eps=1e-8)
    else:
        opt = optim.Adam(lr=0.01, eps=0.0)
        expected = courses_adam(p, grads, 0.01, eps=0.0)
        near = courses_adam(p, grads, 0.01, eps=1e-8)
    opt.bind(params, 1)
    for g in grads:
        opt.step({"w": g})
    np.testing.assert_allclose(params["w"], expected, rtol=RTOL, atol=ATOL)
    # with the default ε the two placements differ, but only slightly for O(1) gradients
    np.testing.assert_allclose(params["w"], near, rtol=1e-4, atol=1e-4)


def test_adam_first_step_moves_each_weight_by_lr():
    """Worked figure: Adam's first step is lr·g/(|g| + ε) — about lr, whatever |g| is."""
    params = OrderedDict(w=np.zeros(4, np.float32))
    optim.Adam(lr=0.01).bind(params, 1).step({"w": np.array([0.5, -2.0, 1e-3, 0.0], np.float32)})
    np.testing.assert_allclose(params["w"], [-0.01, 0.01, -0.0099999, 0.0], rtol=1e-6, atol=1e-9)


def test_courses_decay_figures():
    """α₀ = 0.2, decay_rate = 1: epochs 1–4 give 0.1, 0.067, 0.05, 0.04; 0.95^epoch·α₀ too."""
    opt = optim.SGD(lr=0.2)
    sched = lr_scheduler.InverseTimeLR(opt, decay_rate=1.0)
    lrs = []
    for _ in range(4):
        sched.step()
        lrs.append(opt.lr)
    np.testing.assert_allclose(lrs, [0.1, 0.2 / 3, 0.05, 0.04], rtol=1e-12)
    assert round(lrs[1], 3) == 0.067
    opt2 = optim.SGD(lr=0.2)
    exp = lr_scheduler.ExponentialLR(opt2, gamma=0.95)
    for _ in range(10):
        exp.step()
    assert opt2.lr == pytest.approx(0.2 * 0.95 ** 10) and round(opt2.lr, 5) == 0.11975


# ---------------------------------------------------------------------------- checkpoints
def through_plain_data(d):
    """What a checkpoint does to a state dict: JSON for the plain part, arrays stored apart."""
    arrays = {}

    def strip(obj, path):
        if isinstance(obj, np.ndarray):
            arrays[path] = obj.copy()
            return {"__array__": path}
        if isinstance(obj, dict):
            return {k: strip(v, f"{path}/{k}") for k, v in obj.items()}
        return obj

    def restore(obj):
        if isinstance(obj, dict):
            if set(obj) == {"__array__"}:
                return arrays[obj["__array__"]]
            return {k: restore(v) for k, v in obj.items()}
        return obj

    return restore(json.loads(json.dumps(strip(d, ""))))


@pytest.mark.parametrize("load_before_bind", [True, False])
@pytest.mark.parametrize("cls_name,kw,twin", CASES, ids=CASE_IDS)
def test_state_dict_round_trip_continues_identically(cls_name, kw, twin, load_before_bind):
    rng = np.random.default_rng(11)
    shapes = {"a.weight": (5, 3), "a.bias": (5,)}
    params = OrderedDict((n, rng.standard_normal(s).astype(np.float32)) for n, s in shapes.items())
    grads = [{n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}
             for _ in range(6)]
    opt = make(cls_name, **kw).bind(params, 1)
    for g in grads[:3]:
        opt.step(g)
    saved = through_plain_data(opt.state_dict())
    params2 = OrderedDict((n, a.copy()) for n, a in params.items())
    if load_before_bind:
        opt2 = runtime_optim.from_state_dict(saved).bind(params2, 2)
    else:
        opt2 = make(cls_name, **kw).bind(params2, 2)
        opt2.load_state_dict(saved)
    assert type(opt2) is type(opt) and opt2.steps == 3 and opt2.defaults == opt.defaults
    for g in grads[3:]:
        opt.step(g)
        opt2.step(g)
    for n in params:
        np.testing.assert_array_equal(params[n], params2[n])


def test_state_dict_is_a_copy_and_plain():
    params = OrderedDict(w=np.ones(3, np.float32))
    opt = optim.Adam(lr=0.1).bind(params, 1)
    assert opt.state_dict()["state"] == {}                 # nothing before the first step
    opt.step({"w": np.ones(3, np.float32)})
    d = opt.state_dict()
    assert d["class"] == "Adam" and d["steps"] == 1 and d["params"] is None
    assert set(d["state"]["w"]) == {"exp_avg", "exp_avg_sq"}
    d["state"]["w"]["exp_avg"][:] = 123.0
    assert opt.state["w"]["exp_avg"][0] != 123.0
    json.dumps({k: v for k, v in d.items() if k != "state"})


def test_sgd_momentum_rebind_before_first_step_keeps_torch_first_step():
    """A momentum buffer that has never been used is still 'first' after a re-bind or a
    state round trip (torch: buffer absent until the first step)."""
    p, grads = problem(9, seed=2, steps=3)
    kw = dict(lr=0.1, momentum=0.9, dampening=0.5)
    params = OrderedDict(w=p.copy())
    opt = optim.SGD(**kw).bind(params, 1).bind(params, 1)
    opt2 = runtime_optim.from_state_dict(opt.state_dict())
    params2 = OrderedDict(w=p.copy())
    opt2.bind(params2, 1)
    for g in grads:
        opt.step({"w": g})
        opt2.step({"w": g})
    expected = twin_sgd(p, grads, **kw)
    np.testing.assert_allclose(params["w"], expected, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(params2["w"], expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("mutate,error", [
    (lambda d: d.update({"class": "SGD"}), EmberError),
    (lambda d: d["state"].update({"other": {"exp_avg": np.zeros(3, np.float32)}}), EmberError),
    (lambda d: d["state"]["w"].update({"exp_avg": np.zeros(4, np.float32)}), EmberError),
    (lambda d: d["hyper"].update({"betas": [1.5, 0.9]}), InputError),
    (lambda d: d["hyper"].update({"momentum": 0.9}), EmberError),
    (lambda d: d.update({"steps": -1}), EmberError),
], ids=["class", "unknown-param", "shape", "bad-beta", "unknown-hyper", "steps"])
def test_load_state_dict_rejects_mismatches_and_changes_nothing(mutate, error):
    params = OrderedDict(w=np.ones(3, np.float32))
    opt = optim.Adam(lr=0.1).bind(params, 1)
    opt.step({"w": np.ones(3, np.float32)})
    before = copy.deepcopy(opt.state_dict())
    d = opt.state_dict()
    mutate(d)
    with pytest.raises(error):
        opt.load_state_dict(d)
    after = opt.state_dict()
    assert after["hyper"] == before["hyper"] and after["steps"] == before["steps"]
    np.testing.assert_array_equal(after["state"]["w"]["exp_avg"], before["state"]["w"]["exp_avg"])


def test_from_state_dict_unknown_class():
    with pytest.raises(EmberError, match="unknown optimizer"):
        runtime_optim.from_state_dict({"class": "Adagrad", "hyper": {}})


# ---------------------------------------------------------------------------- errors
@pytest.mark.parametrize("factory,message", [
    (lambda: optim.SGD(lr=-0.1), "Invalid learning rate: -0.1"),
    (lambda: optim.SGD(lr=float("nan")), "Invalid learning rate"),
    (lambda: optim.SGD(lr=0.1, momentum=-0.5), "Invalid momentum value: -0.5"),
    (lambda: optim.SGD(lr=0.1, weight_decay=-1), "Invalid weight_decay value: -1"),
    (lambda: optim.SGD(lr=0.1, nesterov=True), "Nesterov momentum requires a momentum"),
    (lambda: optim.SGD(lr=0.1, momentum=0.9, dampening=0.1, nesterov=True),
     "zero dampening"),
    (lambda: optim.RMSprop(alpha=-0.1), "Invalid alpha value: -0.1"),
    (lambda: optim.RMSprop(eps=-1e-8), "Invalid epsilon value"),
    (lambda: optim.RMSprop(momentum=-1), "Invalid momentum value"),
    (lambda: optim.Adam(betas=(1.0, 0.999)), "Invalid beta parameter at index 0: 1.0"),
    (lambda: optim.Adam(betas=(0.9, -0.1)), "Invalid beta parameter at index 1: -0.1"),
    (lambda: optim.Adam(betas=0.9), "betas must be a pair"),
    (lambda: optim.Adam(eps=-1.0), "Invalid epsilon value: -1.0"),
    (lambda: optim.AdamW(weight_decay=-0.01), "Invalid weight_decay value"),
    (lambda: optim.Adam(lr="0.1"), "Invalid learning rate"),
    (lambda: optim.SGD(0.1), r"pass the learning rate by keyword: SGD\(lr=0.1\)"),
    (lambda: optim.Adam([]), "empty parameter list"),
    (lambda: optim.Adam([{"params": ["w"], "lr": 0.1}]), "parameter groups"),
    (lambda: optim.Adam([np.zeros(3)]), "names or glob patterns"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_bad_hyper_parameters(factory, message):
    with pytest.raises(InputError, match=message) as info:
        factory()
    assert isinstance(info.value, ValueError)              # torch raises ValueError here


def test_lr_setter_validates():
    opt = optim.SGD(lr=0.1)
    opt.lr = 0.05
    assert opt.param_groups[0]["lr"] == 0.05
    with pytest.raises(InputError, match="Invalid learning rate"):
        opt.lr = -1.0
    opt.param_groups[0]["lr"] = -1.0                     # torch-style direct edit: caught at step
    opt.bind(OrderedDict(w=np.ones(2, np.float32)), 1)
    with pytest.raises(InputError, match="Invalid learning rate"):
        opt.step({"w": np.ones(2, np.float32)})


@pytest.mark.parametrize("params,threads,message", [
    (OrderedDict(w=np.ones(3)), 1, "float32"),
    (OrderedDict(w=np.ones((3, 4), np.float32).T), 1, "C-contiguous"),
    (OrderedDict(w=np.ones(3, np.float32)), 0, "threads"),
    ([np.ones(3, np.float32)], 1, "mapping"),
], ids=["float64", "transposed", "threads", "list"])
def test_bind_rejects_bad_parameters(params, threads, message):
    with pytest.raises(EmberError, match=message):
        optim.SGD(lr=0.1).bind(params, threads)


def test_pattern_matching_nothing_names_the_pattern():
    with pytest.raises(InputError, match=r"'head\.\*' matches no bound parameter.*fc\.weight"):
        optim.SGD(["head.*"], lr=0.1).bind(OrderedDict({"fc.weight": np.ones(2, np.float32)}), 1)


@pytest.mark.parametrize("grads,error,message", [
    ({"a": np.ones(3, np.float32)}, InputError, "no gradient for parameter 'b'"),
    ({"a": np.ones(3, np.float32), "b": np.ones(5, np.float32)}, EmberError, r"shape \(5,\)"),
    ({"a": np.ones(3, np.float32), "b": np.ones(4)}, InputError, "float32"),
    ({"a": np.ones(3, np.float32), "b": np.ones((4, 2), np.float32)[:, 0]}, InputError,
     "C-contiguous"),
], ids=["missing", "shape", "dtype", "strided"])
def test_bad_gradients_change_nothing(grads, error, message):
    params = OrderedDict(a=np.ones(3, np.float32), b=np.ones(4, np.float32))
    opt = optim.SGD(lr=0.1).bind(params, 1)
    with pytest.raises(error, match=message):
        opt.step(grads)
    assert opt.steps == 0
    np.testing.assert_array_equal(params["a"], 1.0)
    np.testing.assert_array_equal(params["b"], 1.0)


def test_strided_gradient_of_right_shape_is_refused():
    params = OrderedDict(w=np.ones((2, 3), np.float32))
    opt = optim.SGD(lr=0.1).bind(params, 1)
    with pytest.raises(InputError, match="C-contiguous"):
        opt.step({"w": np.ones((3, 2), np.float32).T})


def test_step_before_bind():
    with pytest.raises(EmberError, match="before bind"):
        optim.Adam().step({})


# ---------------------------------------------------------------------------- no allocation
@pytest.mark.parametrize("cls_name,kw,twin", CASES, ids=CASE_IDS)
def test_step_allocates_nothing(cls_name, kw, twin):
    rng = np.random.default_rng(0)
    shapes = {"w1": (100, 1000), "b1": (1000,), "w2": (200, 500)}        # ~200k floats
    params = OrderedDict((n, rng.standard_normal(s).astype(np.float32)) for n, s in shapes.items())
    grads = {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}
    opt = make(cls_name, **kw).bind(params, 2)
    opt.step(grads)                                    # first step may finish lazy setup
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        for _ in range(5):
            opt.step(grads)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * 1024, f"step allocated {peak} bytes at peak (a buffer is 400,000 bytes)"


# ---------------------------------------------------------------------------- schedules
SCHEDULES = [
    (lambda: lr_scheduler.StepLR(step_size=3, gamma=0.5), lambda b, e: b * 0.5 ** (e // 3)),
    (lambda: lr_scheduler.MultiStepLR(milestones=[2, 5, 5, 8], gamma=0.1),
     lambda b, e: b * 0.1 ** sum(m <= e for m in [2, 5, 5, 8])),
    (lambda: lr_scheduler.ExponentialLR(gamma=0.95), lambda b, e: b * 0.95 ** e),
    (lambda: lr_scheduler.InverseTimeLR(decay_rate=0.5), lambda b, e: b / (1 + 0.5 * e)),
    (lambda: lr_scheduler.CosineAnnealingLR(T_max=6, eta_min=0.01),
     lambda b, e: 0.01 + (b - 0.01) * (1 + math.cos(math.pi * e / 6)) / 2),
    (lambda: lr_scheduler.LinearLR(start_factor=0.25, end_factor=0.75, total_iters=4),
     lambda b, e: b * (0.25 + 0.5 * min(e, 4) / 4)),
    (lambda: lr_scheduler.LinearWarmup(warmup_epochs=4, start_factor=0.1),
     lambda b, e: b * (0.1 + 0.9 * min(e, 4) / 4)),
    (lambda: lr_scheduler.LinearWarmup(warmup_epochs=3, after=lr_scheduler.StepLR(step_size=2,
                                                                                 gamma=0.5)),
     lambda b, e: b * ((1 / 3 + (2 / 3) * e / 3) if e < 3 else 0.5 ** ((e - 3) // 2))),
]
SCHEDULE_IDS = ["step", "multistep", "exponential", "inverse-time", "cosine", "linear",
                "warmup", "warmup-then-step"]


@pytest.mark.parametrize("factory,closed_form", SCHEDULES, ids=SCHEDULE_IDS)
def test_schedule_matches_closed_form_for_ten_epochs(factory, closed_form):
    opt = optim.Adam(lr=0.2)
    sched = factory().bind(opt)
    got = [opt.lr]
    for _ in range(10):
        sched.step()
        got.append(opt.lr)
        assert sched.get_last_lr() == [opt.lr]
    np.testing.assert_allclose(got, [closed_form(0.2, e) for e in range(11)], rtol=1e-12)
    assert opt.param_groups[0]["initial_lr"] == 0.2 and sched.last_epoch == 10


@pytest.mark.parametrize("factory,closed_form", SCHEDULES, ids=SCHEDULE_IDS)
def test_schedule_restored_continues_identically(factory, closed_form):
    params = OrderedDict(w=np.ones(4, np.float32))
    opt = optim.SGD(lr=0.2, momentum=0.9).bind(params, 1)
    sched = factory()
    sched.bind(opt)
    for _ in range(4):
        opt.step({"w": np.ones(4, np.float32)})
        sched.step()
    opt_state = through_plain_data(opt.state_dict())
    sched_state = json.loads(json.dumps(sched.state_dict()))
    params2 = OrderedDict(w=params["w"].copy())
    opt2 = runtime_optim.from_state_dict(opt_state).bind(params2, 1)
    sched2 = runtime_lr_scheduler.from_state_dict(sched_state).bind(opt2)
    assert opt2.lr == opt.lr and sched2.last_epoch == 4
    for k in range(6):
        g = np.full(4, 0.5 + k, np.float32)
        opt.step({"w": g})
        opt2.step({"w": g})
        sched.step()
        sched2.step()
        assert opt2.lr == opt.lr
        assert math.isclose(opt.lr, closed_form(0.2, sched.last_epoch), rel_tol=1e-12)
    np.testing.assert_array_equal(params2["w"], params["w"])


def test_torch_style_construction_with_optimizer_first():
    opt = optim.SGD(lr=1.0)
    sched = lr_scheduler.StepLR(opt, 2, 0.1)
    assert sched.optimizer is opt and opt.lr == 1.0
    sched.step()
    sched.step()
    assert opt.lr == pytest.approx(0.1)
    # a second schedule on the same optimizer starts from the recorded initial_lr, as in torch
    other = lr_scheduler.ExponentialLR(opt, gamma=0.5)
    assert other.base_lrs == [1.0] and opt.lr == 1.0


@pytest.mark.parametrize("factory,message", [
    (lambda: lr_scheduler.StepLR(step_size=0), "step_size"),
    (lambda: lr_scheduler.StepLR(step_size=2.5), "step_size"),
    (lambda: lr_scheduler.StepLR(step_size=2, gamma=-1), "gamma"),
    (lambda: lr_scheduler.StepLR(5), "first argument is the optimizer"),
    (lambda: lr_scheduler.ExponentialLR(), "gamma"),
    (lambda: lr_scheduler.MultiStepLR(milestones=[2, -1]), "milestones"),
    (lambda: lr_scheduler.InverseTimeLR(decay_rate=-0.1), "decay_rate"),
    (lambda: lr_scheduler.CosineAnnealingLR(T_max=0), "T_max"),
    (lambda: lr_scheduler.CosineAnnealingLR(T_max=5, eta_min=-1), "eta_min"),
    (lambda: lr_scheduler.LinearLR(start_factor=0), "Starting multiplicative factor"),
    (lambda: lr_scheduler.LinearLR(end_factor=1.5), "Ending multiplicative factor"),
    (lambda: lr_scheduler.LinearWarmup(warmup_epochs=-1), "warmup_epochs"),
    (lambda: lr_scheduler.LinearWarmup(after="cosine"), "after"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_bad_schedule_arguments(factory, message):
    with pytest.raises(InputError, match=message):
        factory()


def test_schedule_errors_for_misuse():
    with pytest.raises(EmberError, match="before bind"):
        lr_scheduler.StepLR(step_size=2).step()
    sched = lr_scheduler.StepLR(step_size=2)
    with pytest.raises(EmberError, match="StepLR"):
        sched.load_state_dict(lr_scheduler.ExponentialLR(gamma=0.5).state_dict())
    with pytest.raises(EmberError, match="arguments"):
        sched.load_state_dict(lr_scheduler.StepLR(step_size=3).state_dict())
    with pytest.raises(EmberError, match="unknown scheduler"):
        runtime_lr_scheduler.from_state_dict({"class": "OneCycleLR", "hyper": {}})


def test_submodule_imports_like_torch():
    import importlib
    mod = importlib.import_module("ember.optim.lr_scheduler")
    from ember.optim.lr_scheduler import StepLR
    assert mod is optim.lr_scheduler and StepLR is lr_scheduler.StepLR


# ---------------------------------------------------------------------------- torch (optional)
TORCH_CASES = [(c, kw) for c, kw, _ in CASES]


@pytest.mark.parametrize("cls_name,kw", TORCH_CASES, ids=CASE_IDS)
def test_against_torch_optim(cls_name, kw):
    torch = pytest.importorskip("torch")
    p, grads = problem(1000, seed=4, steps=5)
    tp = torch.nn.Parameter(torch.from_numpy(p.copy()))
    topt = getattr(torch.optim, cls_name)([tp], **kw)
    params = OrderedDict(w=p.copy())
    opt = make(cls_name, **kw).bind(params, 1)
    for g in grads:
        tp.grad = torch.from_numpy(g.copy())
        topt.step()
        opt.step({"w": g})
    np.testing.assert_allclose(params["w"], tp.detach().numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name,kw", [
    ("StepLR", dict(step_size=3, gamma=0.5)), ("ExponentialLR", dict(gamma=0.9)),
    ("CosineAnnealingLR", dict(T_max=7, eta_min=0.001)), ("MultiStepLR", dict(milestones=[2, 6])),
    ("LinearLR", dict(start_factor=0.2, total_iters=4)),
])
def test_schedules_against_torch(name, kw):
    torch = pytest.importorskip("torch")
    tp = torch.nn.Parameter(torch.zeros(1))
    topt = torch.optim.SGD([tp], lr=0.3)
    tsched = getattr(torch.optim.lr_scheduler, name)(topt, **kw)
    opt = optim.SGD(lr=0.3)
    sched = getattr(lr_scheduler, name)(opt, **kw)
    for _ in range(10):
        topt.step()
        tsched.step()
        sched.step()
        assert opt.lr == pytest.approx(topt.param_groups[0]["lr"], rel=1e-9)


def test_linear_warmup_then_schedule_against_torch_sequential():
    torch = pytest.importorskip("torch")
    tp = torch.nn.Parameter(torch.zeros(1))
    topt = torch.optim.SGD([tp], lr=0.3)
    warm = torch.optim.lr_scheduler.LinearLR(topt, start_factor=0.2, total_iters=3)
    cos = torch.optim.lr_scheduler.CosineAnnealingLR(topt, T_max=5)
    tsched = torch.optim.lr_scheduler.SequentialLR(topt, [warm, cos], milestones=[3])
    opt = optim.SGD(lr=0.3)
    sched = lr_scheduler.LinearWarmup(opt, warmup_epochs=3, start_factor=0.2,
                                      after=lr_scheduler.CosineAnnealingLR(T_max=5))
    assert opt.lr == pytest.approx(topt.param_groups[0]["lr"], rel=1e-9)
    for _ in range(10):
        topt.step()
        tsched.step()
        sched.step()
        assert opt.lr == pytest.approx(topt.param_groups[0]["lr"], rel=1e-9, abs=1e-12)
