"""±0, ±Inf, NaN, ±FLT_MAX and denormals through every unary, activation, pooling and softmax op
of the registry, against ``onnx.reference`` (the spec), float32 (the kernels' path).

Ember agrees with the spec everywhere except where README's "NaN and Inf" paragraph says
otherwise, and each such place is a rule below (``EMBER_RULES``); onnxruntime differs from the
spec only where that paragraph says so (``ORT_RULES``), which the test checks too. Decided here:
an all-−inf pooling window gives −inf (not −FLT_MAX), and ``Clip`` without bounds leaves ±inf
as they are (not ±FLT_MAX), both as ``onnx.reference`` does.
"""
from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import ember
from ember.graph.ops import REGISTRY

F32 = np.finfo(np.float32)
SPECIALS = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, F32.max, -F32.max, F32.smallest_subnormal,
                     -F32.smallest_subnormal, 3e-39, -3e-39, F32.tiny, 1.0, -1.0, -4.0, 5.0],
                    np.float32)
PAIRS = np.array([[a, b] for a in SPECIALS for b in SPECIALS], np.float32)   # every window of 2
RTOL, ATOL = 1e-5, F32.tiny   # float32 ulps; denormal results agree to the smallest normal
SOFTMAX_ATOL = 1e-6
FAMILIES = ("activation", "pool", "softmax")


def swept_ops():
    """ONNX ops of the unary/activation, pooling and softmax families, from the registry."""
    found = []
    for (domain, op_type), op in sorted(REGISTRY.items()):
        family = type(op).__module__.rpartition(".")[2]
        if domain == "" and family in FAMILIES and onnx.defs.has(op_type):
            found.append((family, op_type))
    return found


SWEPT = swept_ops()


def case(family, op_type):
    """(node, input, windows): ``windows[k]`` lists the input elements output k is computed
    from (the pooling window without its padding, the softmax row, the element itself)."""
    op = REGISTRY[("", op_type)]
    if family == "activation":
        x = SPECIALS.copy()
        return helper.make_node(op_type, ["x"], ["y"]), x, x.reshape(-1, 1)
    if family == "softmax":
        return helper.make_node(op_type, ["x"], ["y"]), PAIRS.copy(), np.repeat(PAIRS, 2, axis=0)
    if "kernel_shape" not in op.attrs:   # global pooling: one window per channel
        x = PAIRS.reshape(1, -1, 1, 2)
        return helper.make_node(op_type, ["x"], ["y"]), x, PAIRS
    # windows of 2 at stride 1 with one pad at the end: (a, b), (b, pad) — onnx.reference's
    # MaxPool fails on begin pads. Without NaN: onnx.reference drops NaN from its windows (it
    # marks padding with NaN) and fails on a window of NaN only; test_pool_windows_with_nan
    # covers NaN
    pairs = PAIRS[~np.isnan(PAIRS).any(axis=1)]
    x = pairs.reshape(1, 1, -1, 2)
    node = helper.make_node(op_type, ["x"], ["y"], kernel_shape=[1, 2], pads=[0, 0, 0, 1])
    pad = np.float32(np.nan)   # a marker, dropped below
    rows = [[[a, b], [b, pad]] for a, b in pairs]
    return node, x, np.array(rows, np.float32).reshape(-1, 2), "padded"


def windows_of(c):
    """Per output element: its window's real elements (NaN-padded to a common width) and
    whether it was cut by padding."""
    if len(c) == 4:
        w = c[2]
        real = np.ones_like(w, bool)
        real[1::2, 1] = False   # the (b, pad) windows
        return w, real
    return c[2], np.ones_like(c[2], bool)


def run_three(node, x):
    g = helper.make_graph([node], "nonfinite",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    # opset 18, or the op's first opset when it is newer (Gelu: 20)
    since = onnx.defs.get_schema(node.op_type, onnx.defs.onnx_opset_version()).since_version
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", max(18, since))])
    m.ir_version = 9 if since > 18 else 8
    data = m.SerializeToString()
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        spec = np.asarray(ReferenceEvaluator(m).run(None, {"x": x})[0], np.float32)
    mine = ember.load(data).run(None, {"x": x})[0]
    theirs = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    return mine.reshape(-1), spec.reshape(-1), theirs.reshape(-1)


def agree(a, b, atol=ATOL):
    return np.isclose(a, b, rtol=RTOL, atol=atol, equal_nan=True)


def window_facts(w, real):
    """has_nan, all real elements −inf, all real elements finite, float64 row of reals."""
    reals = np.where(real, w, np.nan)
    has_nan = (np.isnan(w) & real).any(axis=1)
    all_neg_inf = np.where(real, w == -np.inf, True).all(axis=1)
    all_finite = np.where(real, np.isfinite(w), True).all(axis=1)
    return has_nan, all_neg_inf, all_finite, reals.astype(np.float64)


def mean_in_double(reals):
    """Each row's mean over its real elements (no padding in a global pool), in float64."""
    return reals.mean(axis=1).astype(np.float32)


def log_softmax_in_double(rows):
    """x − max − log Σ exp(x − max), the stable form, per element of each row, rounded to
    float32 (rows of finite values only are compared)."""
    with np.errstate(all="ignore"):
        m = rows.max(axis=1, keepdims=True)
        return (rows - m - np.log(np.exp(rows - m).sum(axis=1, keepdims=True))).astype(
            np.float32)


@pytest.mark.parametrize("family,op_type", SWEPT, ids=[t for _, t in SWEPT])
def test_specials_follow_the_spec(family, op_type):
    c = case(family, op_type)
    mine, spec, theirs = run_three(c[0], c[1])
    w, real = windows_of(c)
    has_nan, all_neg_inf, all_finite, reals = window_facts(w, real)
    # probabilities and log-probabilities: float32 rounding of values near 1 (log Σ exp)
    atol = SOFTMAX_ATOL if family == "softmax" else ATOL
    ok = agree(mine, spec, atol)
    if op_type == "GlobalAveragePool":
        # ember sums a plane in double: finite values near ±FLT_MAX average to a finite number
        # where the spec's float32 sum overflows to ±inf
        over = all_finite & np.isinf(spec)
        assert over.any()
        np.testing.assert_allclose(mine[over], mean_in_double(reals[over]), rtol=RTOL)
        ok |= over
    if op_type == "LogSoftmax":
        # ember computes x − max − log Σ exp(x − max): a gap of FLT_MAX gives −FLT_MAX where the
        # spec's log(softmax) underflows to −inf
        exact = log_softmax_in_double(reals[0::2]).reshape(-1)   # one row per two outputs
        gap = all_finite & np.isneginf(spec)
        assert gap.any()
        np.testing.assert_allclose(mine[gap], exact[gap], rtol=RTOL)
        np.testing.assert_allclose(theirs[gap], mine[gap], rtol=RTOL)   # as onnxruntime
        ok |= gap
    bad = np.flatnonzero(~ok)
    assert not bad.size, [(w[k].tolist(), mine[k], spec[k]) for k in bad[:8]]

    # onnxruntime differs from the spec only where README says so
    differs = ~agree(theirs, spec, atol)
    allowed = np.zeros_like(differs)
    if op_type == "Clip":
        allowed |= np.isinf(w[:, 0])              # no bounds: clamps to ±FLT_MAX
    if op_type == "MaxPool":
        allowed |= all_neg_inf & ~real.all(axis=1)   # −FLT_MAX for −inf cut by padding
    if op_type == "GlobalMaxPool":
        allowed |= has_nan | all_neg_inf          # skips NaN; −FLT_MAX for −inf planes
    if op_type == "LogSoftmax":
        allowed |= all_finite & np.isneginf(spec)   # −FLT_MAX, as ember
    if op_type == "Hardmax":
        # skips NaN: its 1 lands on the largest number instead of on the (first) NaN
        allowed |= np.isnan(w[:, 0]) | (w[:, 0] == np.nanmax(w[:, 0]))
    bad = np.flatnonzero(differs & ~allowed)
    assert not bad.size, [(w[k].tolist(), theirs[k], spec[k]) for k in bad[:8]]


@pytest.mark.parametrize("op_type", ["MaxPool", "AveragePool"])
def test_pool_windows_with_nan(op_type):
    """A window holding a NaN gives NaN (numpy's, PyTorch's rule, and the math's). The spec's
    reference drops NaN from windows (and fails on a window of NaN only); onnxruntime's
    AveragePool propagates NaN like ember, its MaxPool keeps NaN in some window positions only:
    a subset of ember's."""
    pairs = PAIRS[np.isnan(PAIRS).any(axis=1)]
    x = pairs.reshape(1, 1, -1, 2)
    node = helper.make_node(op_type, ["x"], ["y"], kernel_shape=[1, 2], strides=[1, 2])
    g = helper.make_graph([node], "nan",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    data = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()
    mine = ember.load(data).run(None, {"x": x})[0]
    theirs = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.isnan(mine).all()
    if op_type == "AveragePool":
        assert np.isnan(theirs).all()
    else:
        assert 0 < np.isnan(theirs).sum() < len(pairs)


def test_all_neg_inf_windows_give_neg_inf():
    """The decision for max pooling over −inf only, with and without padding in the window;
    onnxruntime gives −FLT_MAX for the plane and for the windows cut by padding."""
    x = np.full((1, 1, 3, 3), -np.inf, np.float32)
    for node in (helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], pads=[1, 1, 1, 1]),
                 helper.make_node("GlobalMaxPool", ["x"], ["y"])):
        mine, spec, theirs = run_three(node, x)
        assert np.isneginf(mine).all() and np.isneginf(spec).all()
        assert (theirs == -F32.max).any()


def test_onnxruntime_global_max_pool_skips_nan():
    x = np.array([1.0, np.nan, -2.0], np.float32).reshape(1, 1, 1, 3)
    mine, spec, theirs = run_three(helper.make_node("GlobalMaxPool", ["x"], ["y"]), x)
    assert np.isnan(mine).all() and np.isnan(spec).all() and theirs.tolist() == [1.0]


def test_clip_without_bounds_keeps_infinities():
    x = np.array([np.inf, -np.inf, np.nan, F32.max, -F32.max], np.float32)
    mine, spec, theirs = run_three(helper.make_node("Clip", ["x"], ["y"]), x)
    np.testing.assert_array_equal(mine, spec)
    assert mine[0] == np.inf and mine[1] == -np.inf and theirs[0] == F32.max


def test_hard_swish_of_minus_inf_is_nan():
    x = np.array([-np.inf, -5.0, np.inf], np.float32)
    mine, spec, theirs = run_three(helper.make_node("HardSwish", ["x"], ["y"]), x)
    assert np.isnan(mine[0]) and np.isnan(spec[0]) and np.isnan(theirs[0])
    np.testing.assert_array_equal(mine[1:], spec[1:])


def test_sweep_covers_the_families():
    names = {t for _, t in SWEPT}
    assert {"HardSwish", "Clip", "MaxPool", "GlobalAveragePool", "Softmax"} <= names
    assert not any(t.endswith("Grad") for t in names)
