"""The hand-worked figures of /work/shared/REFERENCE.md, run through ``ember.load``.

Expected values are typed in from the reference (computed by hand there, not by ember), so these
tests pin convolution as cross-correlation, padding, ReLU, max-pool windows and softmax.
Integer-valued convolutions and pools are exact in float32 whatever the summation order, hence
``assert_array_equal`` there.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import ember

SETTINGS = [(1, True), (2, True), (1, False), (2, False)]  # (threads, optimize)
IDS = [f"threads{t}-{'opt' if o else 'noopt'}" for t, o in SETTINGS]


def _model(nodes, inputs, outputs, inits=()):
    g = helper.make_graph(
        nodes, "textbook",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
        [numpy_helper.from_array(np.asarray(v, np.float32), n) for n, v in inits])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def _run(model, feeds, threads, optimize):
    sess = ember.load(model, threads=threads, optimize=optimize)
    return sess.run(None, {k: np.asarray(v, np.float32) for k, v in feeds.items()})


# ---- 1-D convolution: x = [0,0,1,1,1,0,1,0,0,0], w = [−1,1,−1] --------------------------------
X1 = [0, 0, 1, 1, 1, 0, 1, 0, 0, 0]
W1 = [-1, 1, -1]
CONV1 = [-1, 0, -1, 0, -2, 1, -1, 0]
RELU1 = [0, 0, 0, 0, 0, 1, 0, 0]


@pytest.mark.parametrize("threads,optimize", SETTINGS, ids=IDS)
def test_1d_conv_as_height_one_2d_conv_and_relu(threads, optimize):
    m = _model([helper.make_node("Conv", ["x", "w"], ["y"]),
                helper.make_node("Relu", ["y"], ["r"])],
               [("x", [1, 1, 1, 10])], [("y", [1, 1, 1, 8]), ("r", [1, 1, 1, 8])],
               [("w", np.reshape(W1, (1, 1, 1, 3)))])
    y, r = _run(m, {"x": np.reshape(X1, (1, 1, 1, 10))}, threads, optimize)
    np.testing.assert_array_equal(y.reshape(-1), CONV1)
    np.testing.assert_array_equal(r.reshape(-1), RELU1)


@pytest.mark.parametrize("threads,optimize", SETTINGS, ids=IDS)
def test_1d_conv_rank3_and_relu(threads, optimize):
    """The same figure as a true 1-D Conv (N, C, L) — ember runs it as a height-1 2-D conv."""
    m = _model([helper.make_node("Conv", ["x", "w"], ["y"]),
                helper.make_node("Relu", ["y"], ["r"])],
               [("x", [1, 1, 10])], [("y", [1, 1, 8]), ("r", [1, 1, 8])],
               [("w", np.reshape(W1, (1, 1, 3)))])
    y, r = _run(m, {"x": np.reshape(X1, (1, 1, 10))}, threads, optimize)
    np.testing.assert_array_equal(y.reshape(-1), CONV1)
    np.testing.assert_array_equal(r.reshape(-1), RELU1)


# ---- 2-D convolution of the 5×5 X with the 3×3 F -----------------------------------------------
X2 = [[1, 0, 1, 0, 0], [1, 0, 1, 0, 1], [1, 1, 1, 0, 0], [1, 0, 1, 0, 1], [1, 0, 1, 0, 1]]
F2 = [[-1, -1, -1], [-1, 1, -1], [-1, -1, -1]]
VALID = [[-7, -2, -4], [-5, -2, -5], [-7, -2, -5]]
SAME = [[0, -4, 0, -3, -1], [-2, -7, -2, -4, 1], [-2, -5, -2, -5, -2], [-2, -7, -2, -5, 0],
        [0, -4, 0, -4, 0]]


@pytest.mark.parametrize("threads,optimize", SETTINGS, ids=IDS)
def test_2d_conv_valid(threads, optimize):
    m = _model([helper.make_node("Conv", ["x", "f"], ["y"])], [("x", [1, 1, 5, 5])], [("y", [1, 1, 3, 3])],
               [("f", np.reshape(F2, (1, 1, 3, 3)))])
    (y,) = _run(m, {"x": np.reshape(X2, (1, 1, 5, 5))}, threads, optimize)
    np.testing.assert_array_equal(y[0, 0], VALID)


@pytest.mark.parametrize("auto_pad", ["pads", "SAME_UPPER"])
@pytest.mark.parametrize("threads,optimize", SETTINGS, ids=IDS)
def test_2d_conv_same_and_relu_leaves_single_one(threads, optimize, auto_pad):
    attrs = {"pads": [1, 1, 1, 1]} if auto_pad == "pads" else {"auto_pad": auto_pad}
    m = _model([helper.make_node("Conv", ["x", "f"], ["y"], **attrs),
                helper.make_node("Relu", ["y"], ["r"])],
               [("x", [1, 1, 5, 5])], [("y", [1, 1, 5, 5]), ("r", [1, 1, 5, 5])],
               [("f", np.reshape(F2, (1, 1, 3, 3)))])
    y, r = _run(m, {"x": np.reshape(X2, (1, 1, 5, 5))}, threads, optimize)
    np.testing.assert_array_equal(y[0, 0], SAME)
    expected = np.zeros((5, 5), np.float32)
    expected[1, 4] = 1  # "after ReLU a single 1 remains, at (1,4)"
    np.testing.assert_array_equal(r[0, 0], expected)


@pytest.mark.parametrize("threads,optimize", SETTINGS, ids=IDS)
def test_2d_conv_same_with_fused_relu_only_output(threads, optimize):
    """Conv→Relu with only the ReLU as output: the pass may fuse it into the conv's epilogue."""
    m = _model([helper.make_node("Conv", ["x", "f"], ["y"], pads=[1, 1, 1, 1]),
                helper.make_node("Relu", ["y"], ["r"])],
               [("x", [1, 1, 5, 5])], [("r", [1, 1, 5, 5])],
               [("f", np.reshape(F2, (1, 1, 3, 3)))])
    (r,) = _run(m, {"x": np.reshape(X2, (1, 1, 5, 5))}, threads, optimize)
    assert r[0, 0].sum() == 1 and r[0, 0, 1, 4] == 1


# ---- max-pool of a 6×6 map with ones at (1,4) and (3,1) ----------------------------------------
def _map6():
    a = np.zeros((1, 1, 6, 6), np.float32)
    a[0, 0, 1, 4] = a[0, 0, 3, 1] = 1
    return a


@pytest.mark.parametrize("stride,expected", [
    (1, [[0, 0, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 0, 0]]),
    (3, [[0, 1], [1, 0]]),
])
@pytest.mark.parametrize("threads,optimize", SETTINGS, ids=IDS)
def test_maxpool_6x6(threads, optimize, stride, expected):
    m = _model([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3],
                                 strides=[stride, stride])], [("x", [1, 1, 6, 6])],
               [("y", [1, 1, len(expected), len(expected)])])
    (y,) = _run(m, {"x": _map6()}, threads, optimize)
    np.testing.assert_array_equal(y[0, 0], expected)


def test_output_size_formula():
    """⌊(n + 2p − f)/s⌋ + 1 for the figures above: 10→8 (1-D), 5→3 valid, 5→5 same, 6→4, 6→2."""
    for n, p, f, s, out, op, attrs in [(5, 0, 3, 1, 3, "Conv", {}),
                                       (5, 1, 3, 1, 5, "Conv", {"pads": [1, 1, 1, 1]}),
                                       (7, 0, 3, 2, 3, "Conv", {"strides": [2, 2]}),
                                       (6, 0, 3, 1, 4, "MaxPool", {"kernel_shape": [3, 3]}),
                                       (6, 0, 3, 3, 2, "MaxPool", {"kernel_shape": [3, 3],
                                                                   "strides": [3, 3]})]:
        assert (n + 2 * p - f) // s + 1 == out
        ins = ["x", "w"] if op == "Conv" else ["x"]
        inits = [("w", np.ones((1, 1, f, f)))] if op == "Conv" else []
        m = _model([helper.make_node(op, ins, ["y"], **attrs)], [("x", [1, 1, n, n])],
                   [("y", [1, 1, out, out])], inits)
        (y,) = _run(m, {"x": np.ones((1, 1, n, n))}, 1, True)
        assert y.shape == (1, 1, out, out)


# ---- softmax of z = [5, 2, −1, 3] ---------------------------------------------------------------
@pytest.mark.parametrize("threads,optimize", SETTINGS, ids=IDS)
def test_softmax_of_reference_vector(threads, optimize):
    m = _model([helper.make_node("Softmax", ["z"], ["p"]),
                helper.make_node("LogSoftmax", ["z"], ["lp"])], [("z", [1, 4])],
               [("p", [1, 4]), ("lp", [1, 4])])
    z = np.array([[5, 2, -1, 3]], np.float32)
    p, lp = _run(m, {"z": z}, threads, optimize)
    # the reference rounds to 3 decimals: ±0.0005
    np.testing.assert_allclose(p[0], [0.842, 0.042, 0.002, 0.114], rtol=0, atol=5e-4)
    # Σe^z = 176.256 (6 significant digits: relative error ≤ 3e-6, so log error ≤ 3e-6)
    np.testing.assert_allclose(lp[0], z[0] - np.log(176.256), rtol=0, atol=1e-5)
    assert abs(float(p.sum()) - 1.0) < 1e-6
