"""Window geometry near 2^31 (issue 19 §1): strides, pads, dilations and kernel sizes that each fit
an int32 while their sums do not. Every windowed op (Conv 1-D/2-D plain, grouped and depthwise,
ConvTranspose, MaxPool, AveragePool) and its gradient either refuses such a model with a
ShapeError naming the node and the attribute, or computes the right answer.

Oracles: onnxruntime where it accepts the model and its geometry is small enough for its own
buffers, else the *sparse* references below: direct sums over the taps that fall inside the
image, their positions computed with Python ints (exact), so a window 2^31 wide over an
8-pixel row costs 8 taps. Conv gradients are checked the same way (the conv is linear: each
in-image tap contributes w·dy to dX and x·dy to dW); max-pool gradients route dY to the first
maximum in row-major window order, average-pool ones spread dY/count.

The known crashes run once in a subprocess first (a segfault there is a test failure, not the
end of the suite); the value tests run in-process only when that subprocess survived.

The differential fuzzer (hypothesis, fixed seed, ``EMBER_GEOMETRY_EXAMPLES`` examples, default
sized to a few seconds) draws geometry biased to the extremes (0, 1, 2, 2^30, 2^31 − 2,
2^31 − 1, negative, pads past the input) for every windowed op, forward and gradient. Longer
campaigns (``EMBER_GEOMETRY_SEED=k`` for another stream):
``EMBER_GEOMETRY_EXAMPLES=20000 EMBER_GEOMETRY_SEED=1 python -m pytest tests/test_geometry.py -k fuzz``.
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import ember
from ember.graph.autodiff import backward
from ember.graph.builder import Builder
from ember.runtime.session import Session

B = 1 << 31
RTOL = 1e-4
MEMORY_CAP = 256 << 20
# The fuzzer's cap: its outputs stay a few thousand floats, which the sparse references (Python
# loops over output pixels) check in milliseconds; larger plans are refused, which it accepts.
FUZZ_MEMORY_CAP = 32 << 10


# ---- models -----------------------------------------------------------------------------------
def onnx_model(op, x_shape, w=None, opset=17, **attrs):
    """A one-node model named 'geo': x (and the constant weight w) → y."""
    inputs, inits = ["x"], []
    if w is not None:
        inputs.append("w")
        inits.append(numpy_helper.from_array(w, "w"))
    node = helper.make_node(op, inputs, ["y"], name="geo", **attrs)
    g = helper.make_graph([node], "geometry",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def weights(shape, seed=3):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def feed(shape, seed=1):
    return (np.random.default_rng(seed).standard_normal(shape) + 2).astype(np.float32)


# (op, x shape, weight shape or None, attributes, expected): expected is "value" (the answer
# must match the oracle) or the attribute the ShapeError must name.
CASES = {
    # segfaulted: int32 window starts past -2^31
    "maxpool_dilation_2^30": ("MaxPool", (1, 1, 4, 8), None, dict(
        kernel_shape=[2, 1], strides=[1 << 30, 1], dilations=[(1 << 30) + 5, 1],
        pads=[1 << 30, 0, 1 << 30, 0]), "value"),
    "maxpool_stride_2^31-1": ("MaxPool", (1, 1, 4, 8), None, dict(
        kernel_shape=[2, 2], strides=[B - 1, B - 1], dilations=[B - 1, 1],
        pads=[B - 2, 0, B - 2, 0]), "value"),
    "maxpool_1d_kernel_2^31-1": ("MaxPool", (1, 2, 9), None, dict(
        kernel_shape=[B - 1], strides=[B - 1], pads=[B - 2, B - 2]), "value"),
    # found by the fuzzer: a window of padding only (its two taps skip the image) is −inf
    "maxpool_window_of_padding_only": ("MaxPool", (1, 1, 1, 2), None, dict(
        kernel_shape=[1, 2], dilations=[1, 3], pads=[0, 1, 0, 1]), "value"),
    # returned zeros: an overflowed clamp of the window to the image
    "avgpool_ceil_exclude_pad": ("AveragePool", (1, 1, 4, 3), None, dict(
        kernel_shape=[B - 1, 1], strides=[1 << 30, 1], pads=[B - 2, 0, B - 2, 0],
        ceil_mode=1, count_include_pad=0), "value"),
    "avgpool_include_pad": ("AveragePool", (1, 2, 4, 3), None, dict(
        kernel_shape=[B - 1, 2], strides=[1 << 30, 1], pads=[B - 2, 1, B - 2, 0],
        ceil_mode=1, count_include_pad=1), "value"),
    # conv kernels stay int32: refused, naming the attribute
    "conv_dilation_2^30": ("Conv", (1, 1, 4, 8), (1, 1, 2, 2), dict(
        dilations=[1 << 30, 1], pads=[1 << 30, 0, 1 << 30, 0], strides=[1 << 29, 1]), "pads"),
    "conv_depthwise_dilation_2^30": ("Conv", (1, 2, 4, 8), (2, 1, 2, 2), dict(
        group=2, dilations=[1 << 30, 1], pads=[1 << 30, 0, 1 << 30, 0], strides=[1 << 29, 1]),
        "pads"),
    "conv_grouped_dilation_2^31-1": ("Conv", (1, 4, 4, 8), (4, 2, 2, 2), dict(
        group=2, dilations=[B - 1, 1], pads=[B - 2, 0, B - 2, 0], strides=[B - 1, 1]),
        "dilations"),
    "conv_stride_2^31": ("Conv", (1, 1, 4, 8), (1, 1, 2, 2), dict(strides=[B, 1]), "strides"),
    "convtranspose_stride_2^31-1": ("ConvTranspose", (1, 1, 2, 3), (1, 1, 2, 2), dict(
        strides=[B - 1, 1], pads=[(1 << 30) - 1, 0, (1 << 30) - 1, 0]), "pads"),
    "convtranspose_dilation_2^30": ("ConvTranspose", (1, 2, 2, 3), (2, 1, 3, 2), dict(
        group=2, dilations=[1 << 30, 1], pads=[1 << 30, 0, (1 << 30) - 1, 0]), "dilations"),
    # int32 fits, but the depthwise kernels' window buffer would be 2^28 rows: grouped GEMM
    "conv_depthwise_wide_window": ("Conv", (1, 2, 4, 8), (2, 1, 2, 2), dict(
        group=2, dilations=[1 << 28, 1], pads=[1 << 28, 0, 1 << 28, 0], strides=[1 << 27, 1]),
        "value"),
    "conv_wide_window": ("Conv", (1, 3, 4, 8), (2, 3, 2, 2), dict(
        dilations=[1 << 28, 2], pads=[1 << 28, 1, 1 << 28, 3], strides=[1 << 27, 3]), "value"),
    "conv_1d_wide_window": ("Conv", (2, 2, 9), (2, 1, 3), dict(
        group=2, dilations=[1 << 27], pads=[1 << 28, 1 << 28], strides=[1 << 26]), "value"),
}


def case_model(name):
    op, xs, ws, attrs, _ = CASES[name]
    return onnx_model(op, xs, None if ws is None else weights(ws), **attrs)


# ---- sparse references (Python-int positions, only in-image taps) -----------------------------
def span(start, step, count, lo, hi):
    """The k in [0, count) with lo <= start + k·step < hi."""
    first = 0 if start >= lo else -((start - lo) // step)
    last = (hi - 1 - start) // step + 1 if start < hi else 0
    return range(first, max(first, min(count, last)))


def geometry(attrs, nsp):
    strides = list(attrs.get("strides") or [1] * nsp)
    dil = list(attrs.get("dilations") or [1] * nsp)
    pads = list(attrs.get("pads") or [0] * 2 * nsp)
    return strides, dil, pads


def window_taps(o, size, k, s, d, pb):
    """[(k, position)] of the in-image taps of window o along one axis."""
    start = o * s - pb
    return [(i, start + i * d) for i in span(start, d, k, 0, size)]


def pool_reference(op, x, out_shape, attrs):
    """MaxPool / AveragePool by definition; out_shape from the model under test (ceil_mode)."""
    nsp = x.ndim - 2
    k = attrs["kernel_shape"]
    s, d, pads = geometry(attrs, nsp)
    y = np.zeros(out_shape, np.float64)
    for o in np.ndindex(*out_shape[2:]):
        axes = [window_taps(o[a], x.shape[2 + a], k[a], s[a], d[a], pads[a]) for a in range(nsp)]
        pos = [tuple(p for _, p in t) for t in axes]
        idx = np.ix_(*pos)
        sel = (slice(None), slice(None)) + tuple(idx)
        vals = x[sel].reshape(x.shape[0], x.shape[1], -1).astype(np.float64)
        if op == "MaxPool":
            y[(slice(None), slice(None)) + o] = vals.max(axis=2) if vals.shape[2] else -np.inf
            continue
        if attrs.get("count_include_pad"):
            count = 1
            for a in range(nsp):
                start = o[a] * s[a] - pads[a]
                count *= len(span(start, d[a], k[a], -pads[a], x.shape[2 + a] + pads[a + nsp]))
        else:
            count = vals.shape[2]
        y[(slice(None), slice(None)) + o] = vals.sum(axis=2) / count if count else np.nan
    return y


def pool_grad_reference(op, x, dy, attrs):
    nsp = x.ndim - 2
    k = attrs["kernel_shape"]
    s, d, pads = geometry(attrs, nsp)
    dx = np.zeros(x.shape, np.float64)
    for o in np.ndindex(*dy.shape[2:]):
        axes = [window_taps(o[a], x.shape[2 + a], k[a], s[a], d[a], pads[a]) for a in range(nsp)]
        cells = [tuple(p) for p in np.ndindex(*[len(t) for t in axes])]   # row-major window
        pos = [tuple(axes[a][c[a]][1] for a in range(nsp)) for c in cells]
        for n, c in np.ndindex(*x.shape[:2]):
            g = float(dy[(n, c) + o])
            if not pos:
                continue
            if op == "MaxPool":
                vals = [x[(n, c) + p] for p in pos]
                dx[(n, c) + pos[int(np.argmax(vals))]] += g
                continue
            if attrs.get("count_include_pad"):
                count = 1
                for a in range(nsp):
                    start = o[a] * s[a] - pads[a]
                    count *= len(span(start, d[a], k[a], -pads[a], x.shape[2 + a] + pads[a + nsp]))
            else:
                count = len(pos)
            for p in pos:
                dx[(n, c) + p] += g / count
    return dx


def conv_pairs(x_shape, w_shape, y_shape, attrs):
    """Every (output index, input index, weight index) of a conv whose tap is in the image."""
    nsp = len(x_shape) - 2
    s, d, pads = geometry(attrs, nsp)
    group = int(attrs.get("group", 1))
    cg, mg = x_shape[1] // group, y_shape[1] // group
    for o in np.ndindex(*y_shape[2:]):
        axes = [window_taps(o[a], x_shape[2 + a], w_shape[2 + a], s[a], d[a], pads[a])
                for a in range(nsp)]
        for cell in np.ndindex(*[len(t) for t in axes]):
            ks = tuple(axes[a][cell[a]][0] for a in range(nsp))
            ps = tuple(axes[a][cell[a]][1] for a in range(nsp))
            for n in range(x_shape[0]):
                for m in range(y_shape[1]):
                    g = m // mg
                    for c in range(cg):
                        yield (n, m) + o, (n, g * cg + c) + ps, (m, c) + ks


def conv_reference(x, w, y_shape, attrs):
    y = np.zeros(y_shape)
    for yi, xi, wi in conv_pairs(x.shape, w.shape, y_shape, attrs):
        y[yi] += float(x[xi]) * float(w[wi])
    return y


def conv_grad_reference(x, w, dy, attrs):
    dx, dw = np.zeros(x.shape), np.zeros(w.shape)
    for yi, xi, wi in conv_pairs(x.shape, w.shape, dy.shape, attrs):
        dx[xi] += float(w[wi]) * float(dy[yi])
        dw[wi] += float(x[xi]) * float(dy[yi])
    return dx, dw


def assert_close(got, want):
    want = np.asarray(want, np.float64)
    finite = np.isfinite(want)
    np.testing.assert_array_equal(np.isfinite(got), finite)
    np.testing.assert_array_equal(got[~finite], want[~finite])
    scale = float(np.abs(want[finite]).max()) if finite.any() else 1.0
    np.testing.assert_allclose(got[finite], want[finite], rtol=RTOL, atol=RTOL * scale)


# ---- running ember: forward through ember.load, gradient through autodiff ----------------------
def run_forward(model, x, memory_cap=MEMORY_CAP):
    sess = ember.load(model.SerializeToString(), threads=2, memory_cap=memory_cap)
    return sess.run(None, {"x": x})[0]


def gradient_graph(op, x_shape, w_shape, attrs):
    """loss = Σ y² of one windowed node (dY = 2y, so it is not a constant that folds); outputs
    dX (and dW, with the weight as a second input)."""
    b = Builder("geometry_grad", seed=0)
    ins = [b.input("x", x_shape)]
    if w_shape is not None:
        ins.append(b.input("w", w_shape))
    y = b.op(op, ins, name="geo", **attrs)
    b.output(b.op("ReduceSum", [y * y], keepdims=0), "loss")
    g = b.build()
    wrt = ["x"] + (["w"] if w_shape is not None else [])
    new, grads = backward(g, "loss", wrt)
    new.outputs = [y.name] + [grads[k] for k in wrt]
    return new


def run_gradient(op, x, w, attrs, memory_cap=MEMORY_CAP):
    g = gradient_graph(op, x.shape, None if w is None else w.shape, attrs)
    sess = Session(g, threads=2, memory_cap=memory_cap)
    return sess.run(None, {"x": x} if w is None else {"x": x, "w": w})


def check_forward(op, x, w, attrs, y, use_ort):
    """y (ember's output) against onnxruntime when use_ort and it accepts the model, else the
    sparse reference."""
    want = None
    if use_ort:
        import onnxruntime as ort
        try:
            m = onnx_model(op, x.shape, w, **attrs)
            want = ort.InferenceSession(m.SerializeToString(), providers=[
                "CPUExecutionProvider"]).run(None, {"x": x})[0]
        except Exception:  # noqa: BLE001 — onnxruntime refusing: the sparse reference decides
            want = None
        if want is not None and want.shape != y.shape:
            want = None
    if want is not None and op == "MaxPool":
        # a window of padding only (dilation can skip the image) is −inf in ember (its
        # documented rule), −FLT_MAX in onnxruntime and 0 in onnx.reference
        want = np.where(np.isneginf(pool_reference(op, x, y.shape, attrs)), -np.inf, want)
    if want is None:
        want = pool_reference(op, x, y.shape, attrs) if w is None else \
            conv_transpose_reference(x, w, y.shape, attrs) if op == "ConvTranspose" else \
            conv_reference(x, w, y.shape, attrs)
    assert_close(y, want)


def conv_transpose_reference(x, w, y_shape, attrs):
    """ConvTranspose as the adjoint of the conv from y's shape to x's (output_padding 0)."""
    wt_shape = (w.shape[0],) + tuple(w.shape[1:])
    y = np.zeros(y_shape)
    for xi, yi, wi in conv_pairs(y_shape, wt_shape, x.shape, attrs):
        # conv_pairs walks a conv y → x: output index xi, input index yi, weight (c, m, taps)
        y[yi] += float(x[xi]) * float(w[wi])
    return y


def check_gradient(op, x, w, attrs, outs):
    y, grads = outs[0], outs[1:]
    dy = 2.0 * y.astype(np.float64)
    if w is None:
        assert_close(grads[0], pool_grad_reference(op, x, dy, attrs))
    else:
        dx, dw = conv_grad_reference(x, w, dy, attrs)
        assert_close(grads[0], dx)
        assert_close(grads[1], dw)


# ---- the known cases: first a subprocess (a crash fails one test), then the values --------------
CRASH_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
import test_geometry as t
import ember
for name, (op, xs, ws, attrs, expect) in t.CASES.items():
    x = t.feed(xs)
    w = None if ws is None else t.weights(ws)
    for run in (lambda: t.run_forward(t.case_model(name), x),
                lambda: t.run_gradient(op, x, w, attrs)):
        try:
            run()
        except ember.EmberError:
            pass
print("survived")
"""


@pytest.fixture(scope="module")
def survives():
    """True when every known case, forward and gradient, ran in a child without crashing. The
    child runs in tests/, not the checkout root, whose ember/ folder would shadow the installed
    package."""
    tests = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.run([sys.executable, "-c", CRASH_SCRIPT.format(tests=tests)],
                          capture_output=True, text=True, timeout=600, cwd=tests)
    return proc.returncode == 0 and "survived" in proc.stdout, proc.returncode, proc.stderr[-2000:]


def test_known_cases_do_not_crash(survives):
    ok, rc, err = survives
    assert ok, f"a geometry case crashed the process (exit code {rc}):\n{err}"


def _in_process(survives):
    if not survives[0]:
        pytest.fail("skipped in-process: test_known_cases_do_not_crash failed")


@pytest.mark.parametrize("name", sorted(CASES))
def test_forward(name, survives):
    _in_process(survives)
    op, xs, ws, attrs, expect = CASES[name]
    x, w = feed(xs), None if ws is None else weights(ws)
    if expect != "value":
        with pytest.raises(ember.ShapeError, match=rf"'geo'.*attribute '{expect}'"):
            run_forward(case_model(name), x)
        return
    small = all(abs(v) <= SMALL for vs in attrs.values() if isinstance(vs, list) for v in vs)
    check_forward(op, x, w, attrs, run_forward(case_model(name), x), use_ort=small)


def test_average_pool_that_returned_zeros_agrees_with_onnxruntime(survives):
    """The wrong answer of issue 19: ceil_mode, count_include_pad=0, a window 2^31 − 1 tall
    starting 2^31 − 2 rows above the image; the first output row averages image row 0 alone."""
    import onnxruntime as ort
    _in_process(survives)
    op, xs, _, attrs, _ = CASES["avgpool_ceil_exclude_pad"]
    x, m = feed(xs), case_model("avgpool_ceil_exclude_pad")
    y = run_forward(m, x)
    want = ort.InferenceSession(m.SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert_close(y, want)
    assert_close(y, pool_reference(op, x, y.shape, attrs))
    np.testing.assert_allclose(y[0, 0, 0], x[0, 0, 0], rtol=1e-6)


@pytest.mark.parametrize("name", sorted(CASES))
def test_gradient(name, survives):
    _in_process(survives)
    op, xs, ws, attrs, expect = CASES[name]
    x, w = feed(xs), None if ws is None else weights(ws)
    if expect != "value":
        with pytest.raises(ember.ShapeError, match=rf"attribute '{expect}'"):
            run_gradient(op, x, w, attrs)
        return
    check_gradient(op, x, w, attrs, run_gradient(op, x, w, attrs))


def test_refusal_happens_when_the_plan_is_made():
    """A conv's geometry is proven when its scratch is planned: ember.load refuses it."""
    with pytest.raises(ember.ShapeError, match="'geo'.*attribute 'strides'"):
        ember.load(case_model("conv_stride_2^31").SerializeToString())


def test_sparse_reference_matches_onnxruntime_on_ordinary_geometry():
    """The oracle itself, checked where onnxruntime is the authority."""
    import onnxruntime as ort
    x = feed((2, 4, 7, 6))
    for op, w, attrs in [
            ("Conv", weights((6, 2, 3, 2)), dict(group=2, strides=[2, 1], dilations=[1, 2],
                                                  pads=[1, 0, 2, 1])),
            ("ConvTranspose", weights((4, 3, 3, 2)), dict(group=2, strides=[2, 3],
                                                           pads=[1, 0, 0, 1])),
            ("MaxPool", None, dict(kernel_shape=[3, 2], strides=[2, 1], pads=[1, 1, 2, 0],
                                   dilations=[2, 1], ceil_mode=1)),
            ("AveragePool", None, dict(kernel_shape=[3, 2], strides=[2, 2], pads=[1, 1, 1, 1],
                                       ceil_mode=1, count_include_pad=1))]:
        m = onnx_model(op, x.shape, w, **attrs)
        want = ort.InferenceSession(m.SerializeToString(),
                                    providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        got = pool_reference(op, x, want.shape, attrs) if w is None else \
            conv_transpose_reference(x, w, want.shape, attrs) if op == "ConvTranspose" else \
            conv_reference(x, w, want.shape, attrs)
        assert_close(want, got)


# ---- the differential fuzzer ------------------------------------------------------------------
EXAMPLES = int(os.environ.get("EMBER_GEOMETRY_EXAMPLES", "0")) or 400
# EMBER_GEOMETRY_SEED=k: another (still reproducible) stream of examples, for campaigns.
FUZZ_SEED = os.environ.get("EMBER_GEOMETRY_SEED")
EXTREMES = [0, 1, 2, 3, 7, 1 << 20, 1 << 30, (1 << 30) + 1, B - 2, B - 1, B, -1, -(1 << 30)]
SMALL = 64   # beyond this (any attribute), onnxruntime's own buffers would follow the pads


def _value(draw, positive):
    v = draw(st.one_of(st.sampled_from(EXTREMES), st.integers(0, 9)))
    return max(v, 1) if positive and draw(st.integers(0, 9)) else v


@st.composite
def geometry_cases(draw):
    op = draw(st.sampled_from(["Conv", "ConvDepthwise", "ConvGrouped", "ConvTranspose",
                               "MaxPool", "AveragePool"]))
    nsp = draw(st.sampled_from([1, 2]))
    spatial = [draw(st.integers(1, 9)) for _ in range(nsp)]
    n, c = draw(st.integers(1, 2)), draw(st.sampled_from([1, 2, 4]))
    kernel = [draw(st.integers(1, 3)) for _ in range(nsp)]
    attrs = {"strides": [_value(draw, True) for _ in range(nsp)],
             "pads": [_value(draw, False) for _ in range(2 * nsp)]}
    if op != "AveragePool":
        attrs["dilations"] = [_value(draw, True) for _ in range(nsp)]
    w = None
    if op.startswith("Conv"):
        group = {"Conv": 1, "ConvDepthwise": c, "ConvGrouped": 2 if c % 2 == 0 else 1}.get(op, 1)
        m = c if op == "ConvDepthwise" else draw(st.sampled_from([1, 2])) * group
        w = weights(((c, m // group) if op == "ConvTranspose" else (m, c // group))
                    + tuple(kernel), seed=draw(st.integers(0, 3)))
        attrs["group"] = group
        op = "ConvTranspose" if op == "ConvTranspose" else "Conv"
    else:   # pools refuse pads as wide as the window: mostly draw pads that fit it
        attrs["kernel_shape"] = [draw(st.sampled_from([1, 2, 3, 1 << 30, B - 1]))
                                 for _ in range(nsp)]
        dil = attrs.get("dilations", [1] * nsp)
        for i in range(2 * nsp):
            extent = (attrs["kernel_shape"][i % nsp] - 1) * dil[i % nsp] + 1
            if draw(st.integers(0, 4)):
                attrs["pads"][i] = draw(st.sampled_from([extent - 1, extent - 1, 0, 1,
                                                         extent // 2, max(extent - 2, 0)]))
        for i in range(nsp):   # and strides near the window: outputs of a few pixels
            extent = (attrs["kernel_shape"][i] - 1) * dil[i] + 1
            if draw(st.integers(0, 2)):
                attrs["strides"][i] = draw(st.sampled_from([extent, max(extent - 1, 1),
                                                            extent // 2 + 1]))
        attrs["ceil_mode"] = draw(st.integers(0, 1))
        if op == "AveragePool":
            attrs["count_include_pad"] = draw(st.integers(0, 1))
    gradient = draw(st.booleans())
    return op, (n, c, *spatial), w, attrs, gradient


def fuzz_one(op, x_shape, w, attrs, gradient):
    """The property: an EmberError, or the oracle's answer."""
    x = feed(x_shape)
    small = all(abs(v) <= SMALL for vs in attrs.values() if isinstance(vs, list) for v in vs)
    try:
        if gradient:
            outs = run_gradient(op, x, w, attrs, FUZZ_MEMORY_CAP)
        else:
            y = run_forward(onnx_model(op, x_shape, w, **attrs), x, FUZZ_MEMORY_CAP)
    except ember.EmberError as e:
        assert str(e)
        return
    if gradient:
        check_forward(op, x, w, attrs, outs[0], use_ort=small)
        if op != "ConvTranspose":
            check_gradient(op, x, w, attrs, outs)
    else:
        check_forward(op, x, w, attrs, y, use_ort=small)


@settings(derandomize=FUZZ_SEED is None, max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
@seed(int(FUZZ_SEED or 0))
@given(case=geometry_cases())
def test_fuzz_geometry(case, survives):
    _in_process(survives)
    fuzz_one(*case)
