"""ember.graph.Builder: graphs written op by op, run in ember.Session, checked against numpy
written here; shape errors at build time; seeded, torch-formula initializers."""
import math

import numpy as np
import pytest

import ember
from ember.graph.builder import Builder, Value, fans, initialize
from ember.graph.errors import ModelError, ShapeError

# float32 sums of at most a few hundred products: 1e-5 relative is ~100 ulps of headroom.
RTOL, ATOL = 1e-5, 1e-5


def run(graph, **feeds):
    return ember.Session(graph, threads=1).run(None, feeds)


def conv2d_ref(x, w, b, stride=1, pad=0):
    """Direct cross-correlation, the textbook definition (no flip)."""
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    n, c, h, wd = x.shape
    m, _, kh, kw = w.shape
    oh, ow = (h - kh) // stride + 1, (wd - kw) // stride + 1
    y = np.zeros((n, m, oh, ow), np.float64)
    for i in range(oh):
        for j in range(ow):
            patch = x[:, :, i * stride:i * stride + kh, j * stride:j * stride + kw]
            y[:, :, i, j] = np.einsum("nchw,mchw->nm", patch, w)
    return y + b.reshape(1, -1, 1, 1)


def test_mlp_gemm_relu_matches_numpy():
    b = Builder("mlp", seed=0)
    x = b.input("x", ("N", 6))
    w1 = b.parameter("fc1.weight", (5, 6), a=math.sqrt(5))
    b1 = b.parameter("fc1.bias", (5,), init="uniform", bound=0.3)
    w2 = b.parameter("fc2.weight", (5, 3), init="xavier_uniform")
    h = b.gemm(x, w1, b1, transB=1).relu()
    y = h @ w2
    b.output(y, "y")
    g = b.build()
    assert g.inputs == ["x"] and g.outputs == ["y"]
    assert g.metadata["parameters"] == ["fc1.weight", "fc1.bias", "fc2.weight"]
    p = g.initializers
    for n in (1, 4):  # the symbolic batch dim takes any size
        xv = np.random.default_rng(n).standard_normal((n, 6)).astype(np.float32)
        expect = np.maximum(xv @ p["fc1.weight"].T + p["fc1.bias"], 0) @ p["fc2.weight"]
        (got,) = run(g, x=xv)
        np.testing.assert_allclose(got, expect, rtol=RTOL, atol=ATOL)


def test_operator_sugar_and_constants():
    b = Builder()
    x = b.input("x", (2, 3))
    y = b.input("y", (1, 3))
    out = (2.0 - x) * y + x / 4.0 - (-y)
    b.output(out)
    b.output(x @ np.ones((3, 2), np.float32), "mm")
    g = b.build()
    assert len(g.outputs) == 2
    rng = np.random.default_rng(1)
    xv, yv = rng.random((2, 3), np.float32), rng.random((1, 3), np.float32)
    got, mm = run(g, x=xv, y=yv)
    np.testing.assert_allclose(got, (2 - xv) * yv + xv / 4 + yv, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(mm, xv.sum(1, keepdims=True).repeat(2, 1), rtol=RTOL)
    assert g.metadata["parameters"] == []  # constants are not trainable


def test_conv_pool_concat_generic_op():
    b = Builder("convnet", seed=3)
    x = b.input("x", (1, 3, 9, 9))
    w = b.parameter("w", (4, 3, 3, 3), init="kaiming_normal")
    bias = b.parameter("b", (4,), init="constant", value=0.25)
    c = b.op("Conv", [x, w, bias], strides=[2, 2], pads=[1, 1, 1, 1])
    assert c.shape == (1, 4, 5, 5)  # (9 + 2 − 3)//2 + 1
    p = b.max_pool(c.relu(), [2, 2], strides=[1, 1])
    assert p.shape == (1, 4, 4, 4)
    cat = b.concat([p, b.op("Sigmoid", [p])], axis=1)
    b.output(cat.flatten(1), "out")
    g = b.build()
    xv = np.random.default_rng(0).standard_normal((1, 3, 9, 9)).astype(np.float32)
    conv = np.maximum(conv2d_ref(xv, g.initializers["w"], g.initializers["b"], 2, 1), 0)
    pool = np.max(np.stack([conv[:, :, i:i + 4, j:j + 4] for i in (0, 1) for j in (0, 1)]), 0)
    expect = np.concatenate([pool, 1 / (1 + np.exp(-pool))], 1).reshape(1, -1)
    (got,) = run(g, x=xv)
    np.testing.assert_allclose(got, expect, rtol=1e-4, atol=1e-5)


def test_multi_output_op():
    b = Builder()
    x = b.input("x", (4, 6))
    lo, hi = b.op("Split", [x, np.array([2, 4], np.int64)], num_outputs=2, axis=1)
    assert lo.shape == (4, 2) and hi.shape == (4, 4)
    b.output(lo, "lo")
    b.output(hi, "hi")
    xv = np.arange(24, dtype=np.float32).reshape(4, 6)
    lo_v, hi_v = run(b.build(), x=xv)
    np.testing.assert_array_equal(lo_v, xv[:, :2])
    np.testing.assert_array_equal(hi_v, xv[:, 2:])


@pytest.mark.parametrize("build, where", [
    (lambda b, x: x @ b.constant(np.ones((5, 2), np.float32)), "MatMul"),
    (lambda b, x: b.conv(b.reshape(x, (1, 2, 2, 3)), b.constant(np.ones((1, 3, 1, 1),
                                                                        np.float32))), "Conv"),
    (lambda b, x: x + b.constant(np.ones((3, 4), np.float32)), "Add"),
    (lambda b, x: b.gemm(x, b.constant(np.ones((4, 3), np.float32)), transB=1), "Gemm"),
])
def test_bad_shapes_raise_at_build_time(build, where):
    b = Builder()
    x = b.input("x", (2, 6))
    with pytest.raises(ShapeError, match=where):
        build(b, x)
    # the failed op left nothing behind: the builder still works
    b.output(x.relu(), "y")
    g = b.build()
    assert [n.op_type for n in g.nodes if n.op_type != "Reshape"][-2:] == ["Relu", "Identity"]


def test_build_errors():
    b = Builder()
    x = b.input("x", (2, 2))
    with pytest.raises(ModelError, match="no outputs"):
        b.build()
    with pytest.raises(ModelError, match="already"):
        b.input("x", (2, 2))
    with pytest.raises(ModelError, match="another Builder"):
        Builder().relu(x)
    with pytest.raises(ModelError, match="unknown initializer"):
        b.parameter("w", (2, 2), init="glorot")


def test_seed_reproduces_and_differs():
    def params(seed):
        b = Builder(seed=seed)
        b.parameter("a", (8, 4, 3, 3), init="kaiming_uniform")
        b.parameter("b", (16, 8), init="xavier_normal")
        b.parameter("c", (16,), init="normal", std=0.1)
        x = b.input("x", (1, 8))
        b.output(b.gemm(x, "b", transB=1), "y")
        return b.build().initializers
    one, two, other = params(7), params(7), params(8)
    for k in "abc":
        np.testing.assert_array_equal(one[k], two[k])
        assert not np.array_equal(one[k], other[k])
        assert one[k].dtype == np.float32


SHAPE = (128, 64, 5, 5)       # fan_in = 1600, fan_out = 3200; 204,800 draws
FAN_IN, FAN_OUT = 64 * 25, 128 * 25


def test_fans_like_torch():
    assert fans(SHAPE) == (FAN_IN, FAN_OUT)
    assert fans((10, 20)) == (20, 10)
    with pytest.raises(ModelError, match="fan_in"):
        initialize("kaiming_uniform", (5,), np.random.default_rng(0))


@pytest.mark.parametrize("init, kwargs, bound, std", [
    # He et al.: gain √2 (relu / leaky_relu with a=0), std = gain/√fan_in, bound = √3·std
    ("kaiming_uniform", {}, math.sqrt(6 / FAN_IN), math.sqrt(2 / FAN_IN)),
    ("kaiming_normal", {}, None, math.sqrt(2 / FAN_IN)),
    ("kaiming_normal", {"mode": "fan_out"}, None, math.sqrt(2 / FAN_OUT)),
    # torch's Conv/Linear default: a = √5 → gain √(1/3) → U(±1/√fan_in)
    ("kaiming_uniform", {"a": math.sqrt(5)}, 1 / math.sqrt(FAN_IN), 1 / math.sqrt(3 * FAN_IN)),
    ("kaiming_uniform", {"nonlinearity": "tanh"}, 5 / 3 * math.sqrt(3 / FAN_IN),
     5 / 3 / math.sqrt(FAN_IN)),
    # Glorot & Bengio: bound = √(6/(fi+fo)), std = √(2/(fi+fo))
    ("xavier_uniform", {}, math.sqrt(6 / (FAN_IN + FAN_OUT)), math.sqrt(2 / (FAN_IN + FAN_OUT))),
    ("xavier_normal", {"gain": 2.0}, None, 2 * math.sqrt(2 / (FAN_IN + FAN_OUT))),
])
def test_initializer_statistics(init, kwargs, bound, std):
    w = initialize(init, SHAPE, np.random.default_rng(0), **kwargs)
    assert w.shape == SHAPE and w.dtype == np.float32
    # 204,800 draws: the sample std's relative error is ~1/√(2n) ≈ 0.16%, the mean's
    # standard error is std/√n ≈ 0.2% of std; 2% and 1.5% leave > 5 sigma of room.
    assert abs(w.std() / std - 1) < 0.02
    assert abs(w.mean()) < 0.015 * std
    if bound is not None:
        assert np.abs(w).max() <= bound * (1 + 1e-6)
        assert np.abs(w).max() > 0.999 * bound   # the extremes are reached
    else:
        assert np.abs(w).max() > 3 * std          # a normal, not a clipped uniform


def test_plain_initializers():
    rng = np.random.default_rng(0)
    assert not initialize("zeros", (3, 2), rng).any()
    np.testing.assert_array_equal(initialize("constant", (2,), rng, value=1.5), [1.5, 1.5])
    given = np.arange(6).reshape(2, 3)
    out = initialize(given, (2, 3), rng)
    np.testing.assert_array_equal(out, given)
    assert out.dtype == np.float32
    with pytest.raises(ShapeError):
        initialize(given, (3, 2), rng)
    u = initialize("uniform", (10000,), rng, low=2.0, high=3.0)
    assert 2.0 <= u.min() and u.max() < 3.0


def test_buffers_and_value_handles():
    b = Builder(seed=0)
    x = b.input("x", (1, 3, 4, 4))
    scale = b.parameter("bn.weight", (3,), init="ones")
    shift = b.parameter("bn.bias", (3,), init="zeros")
    mean = b.buffer("bn.running_mean", (3,), init=np.array([0.5, -1.0, 2.0]))
    var = b.buffer("bn.running_var", (3,), init="constant", value=4.0)
    y = b.batch_norm(x, scale, shift, mean, var, epsilon=0.0)
    assert isinstance(y, Value) and y.shape == (1, 3, 4, 4) and y.dtype == np.float32
    b.output(y, "y")
    g = b.build()
    assert g.metadata["parameters"] == ["bn.weight", "bn.bias"]
    assert g.metadata["buffers"] == ["bn.running_mean", "bn.running_var"]
    xv = np.random.default_rng(2).standard_normal((1, 3, 4, 4)).astype(np.float32)
    (got,) = run(g, x=xv)
    expect = (xv - np.array([0.5, -1.0, 2.0], np.float32).reshape(1, 3, 1, 1)) / 2.0
    np.testing.assert_allclose(got, expect, rtol=RTOL, atol=ATOL)
