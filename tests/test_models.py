"""Whole models through ember against onnxruntime, plus one-op models for every binder branch.

Tolerance: rtol 1e-4 / atol 1e-4. Both runtimes compute in float32 (ε ≈ 1.2e-7) but sum in
different orders (blocked GEMM / im2col vs MLAS), so each dot product of length K differs by
about √K·ε relative to the sum of its |terms| — ~1e-5 for K = 3·3·512 = 4608, the longest here.
The models keep activations O(1) (He init, BN with gammas < 1 closing residual branches), so
these differences stay ~1e-5 absolute after 20 layers: 1e-4 leaves a 10× margin, while any real
mistake (a pad off by one, a wrong channel, a lost bias) moves outputs by O(0.1–1).
"""
from __future__ import annotations

import importlib.util

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import ember
from ember.graph.ops import REGISTRY
from ember.runtime.binders import binding_for

import models

RTOL = ATOL = 1e-4
SETTINGS = [(1, True), (2, True), (1, False), (2, False)]  # (threads, optimize)
IDS = [f"threads{t}-{'opt' if o else 'noopt'}" for t, o in SETTINGS]


def _ort(model, feeds):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _fallback_ops(sess, shapes=None):
    """Op types of the nodes that run their numpy reference instead of a kernel."""
    ctx = sess.compile(shapes).acquire()
    return {node.op_type for node, step in ctx.steps
            if getattr(step, "reference", False)}


# op type -> kernel module of its fast path (None: bound to numpy with out=, always fast)
FAST = {op: binding_for(op, domain).kernel for domain, op in REGISTRY
        if binding_for(op, domain).kind}
# the hot ops of the real models -> kernel module their fast path needs
KERNEL_OF = {op: FAST[op] for op in (
    "Conv", "ConvTranspose", "Gemm", "MatMul", "MaxPool", "AveragePool", "GlobalAveragePool",
    "GlobalMaxPool", "Relu", "Clip", "Add", "BatchNormalization", "Softmax")}


def _built(module):
    return importlib.util.find_spec(f"ember.kernels.{module}") is not None


# ---- the real models ----------------------------------------------------------------------------
MODELS = {
    "lenet5-b1": lambda: models.lenet5(batch=1),
    "lenet5-b8": lambda: models.lenet5(batch=8),
    "small_vgg": lambda: models.small_vgg(batch=1),
    "resnet18": lambda: models.resnet18(batch=1),
    "mobilenetv2": lambda: models.mobilenetv2(batch=1),
}
_CACHE: dict = {}


def _case(name):
    """(model, feeds, onnxruntime outputs), built once per test run."""
    if name not in _CACHE:
        m = MODELS[name]()
        feeds = models.random_input(m, seed=7)
        _CACHE[name] = (m, feeds, _ort(m, feeds))
    return _CACHE[name]


@pytest.mark.parametrize("threads,optimize", SETTINGS, ids=IDS)
@pytest.mark.parametrize("name", list(MODELS))
def test_model_matches_onnxruntime(name, threads, optimize):
    m, feeds, expected = _case(name)
    sess = ember.load(m, threads=threads, optimize=optimize)
    got = sess.run(None, feeds)
    for g, e in zip(got, expected):
        assert g.shape == e.shape and g.dtype == e.dtype
        np.testing.assert_allclose(g, e, rtol=RTOL, atol=ATOL)
    # a second run reuses the same arena: it must not see stale or overwritten data
    again = sess.run(None, feeds)
    for g, a in zip(got, again):
        np.testing.assert_array_equal(g, a)


@pytest.mark.parametrize("name", ["lenet5-b1", "small_vgg", "resnet18", "mobilenetv2"])
def test_model_hot_ops_use_kernels(name):
    """Every hot op whose kernel module is built runs that kernel, not its numpy reference."""
    m, _, _ = _case(name)
    for optimize in (True, False):
        slow = _fallback_ops(ember.load(m, threads=1, optimize=optimize))
        should_be_fast = {op for op in slow if op in KERNEL_OF and _built(KERNEL_OF[op])}
        assert not should_be_fast, f"fell back to numpy: {sorted(should_be_fast)}"


def test_dynamic_batch_model():
    """Batch dim "N": compiled for batch 1, then 8, then 1 again (from the plan cache)."""
    m = models.lenet5(batch="N")
    sess = ember.load(m, threads=2)
    for batch in (1, 8, 1):
        feeds = models.random_input(m, batch=batch, seed=batch)
        (got,) = sess.run(None, feeds)
        (expected,) = _ort(m, feeds)
        assert got.shape == (batch, 10)
        np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)


# ---- one-op models: every binder branch against onnxruntime --------------------------------------
def _one_op(op, inputs, output_shape, outputs=None, opset=18, **attrs):
    """A single-node model. ``inputs``: (name, array, is_initializer); "" = absent input.
    Outputs are declared without a shape (``output_shape`` is None): ember infers them."""
    names = [n for n, _, _ in inputs]
    g = helper.make_graph(
        [helper.make_node(op, names, outputs or ["y"], **attrs)], op,
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
         for n, a, init in inputs if not init and n],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in (outputs or ["y"])],
        [numpy_helper.from_array(a, n) for n, a, init in inputs if init and n])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    feeds = {n: a for n, a, init in inputs if not init and n}
    return m, feeds


def _check(m, feeds, rtol=RTOL, atol=ATOL, threads=(1, 2), fast=True):
    """ember against onnxruntime; with ``fast``, the op must run its kernel (when built)."""
    expected = _ort(m, feeds)
    for t in threads:
        sess = ember.load(m, threads=t)
        if fast:
            op = m.graph.node[0].op_type
            module = FAST[op]
            if module is None or _built(module):
                assert op not in _fallback_ops(sess), f"{op} fell back to its numpy reference"
        got = sess.run(None, feeds)
        for g, e in zip(got, expected):
            assert g.shape == e.shape, (g.shape, e.shape)
            np.testing.assert_allclose(g, e, rtol=rtol, atol=atol)


R = np.random.default_rng(3)


def _r(*shape):
    return np.asarray(R.standard_normal(shape), dtype=np.float32)


@pytest.mark.parametrize("c_shape", [None, (5,), (1, 5), (4, 1), (), (1, 1), (4, 5)])
@pytest.mark.parametrize("trans", [(0, 0), (1, 0), (0, 1), (1, 1)])
@pytest.mark.parametrize("c_init", [True, False])
def test_gemm_bias_forms(c_shape, trans, c_init):
    ta, tb = trans
    a = _r(3, 4) if ta else _r(4, 3)
    b = _r(5, 3) if tb else _r(3, 5)
    ins = [("a", a, False), ("b", b, True)]
    if c_shape is not None:
        ins.append(("c", _r(*c_shape), c_init))
    m, feeds = _one_op("Gemm", ins, None, alpha=0.7, beta=1.3, transA=ta, transB=tb)
    _check(m, feeds)


@pytest.mark.parametrize("a_shape,b_shape", [
    ((4, 3), (3, 5)), ((3,), (3, 5)), ((4, 3), (3,)), ((3,), (3,)),
    ((2, 4, 3), (3, 5)), ((2, 6, 4, 3), (3,)), ((2, 4, 3), (2, 3, 5)),
    ((4, 3), (2, 3, 5)), ((2, 1, 4, 3), (1, 3, 3, 5)), ((1, 4, 3), (3, 3, 5)),
])
def test_matmul_shapes(a_shape, b_shape):
    m, feeds = _one_op("MatMul", [("a", _r(*a_shape), False), ("b", _r(*b_shape), False)], None)
    _check(m, feeds)


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div", "Max", "Min"])
@pytest.mark.parametrize("shapes", [((2, 3, 4, 5), (2, 3, 4, 5)), ((2, 3, 4, 5), (1, 3, 1, 1)),
                                    ((2, 3, 4, 5), ()), ((3, 1, 5), (2, 1, 4, 1)),
                                    ((1,), (2, 3))])
def test_binary_broadcast(op, shapes):
    a = _r(*shapes[0])
    b = np.asarray(_r(*shapes[1]) + (3.0 if op == "Div" else 0.0), np.float32)
    m, feeds = _one_op(op, [("a", a, False), ("b", b, False)], None)
    _check(m, feeds)


def test_pow_and_prelu():
    x = np.abs(_r(2, 3, 4)) + 0.1
    m, feeds = _one_op("Pow", [("x", x, False), ("e", _r(4), True)], None)
    _check(m, feeds)
    m, feeds = _one_op("PRelu", [("x", _r(2, 3, 4, 4), False), ("s", _r(3, 1, 1), True)], None)
    _check(m, feeds)


@pytest.mark.parametrize("op", ["Sum", "Mean", "Max", "Min"])
@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_variadic(op, n):
    ins = [(f"x{i}", _r(2, 3, 5), False) for i in range(n)]
    _check(*_one_op(op, ins, None))


def test_variadic_broadcast_falls_back_correctly():
    ins = [("a", _r(2, 3, 5), False), ("b", _r(3, 1), False), ("c", _r(5), False)]
    _check(*_one_op("Sum", ins, None), fast=False)  # a 3-input broadcast runs the reference


@pytest.mark.parametrize("op,attrs", [
    ("Relu", {}), ("LeakyRelu", {"alpha": 0.3}), ("Elu", {"alpha": 0.7}), ("Selu", {}),
    ("Sigmoid", {}), ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}), ("HardSwish", {}),
    ("Tanh", {}), ("Softplus", {}), ("Exp", {}), ("Neg", {}), ("Abs", {}),
])
def test_unary(op, attrs):
    _check(*_one_op(op, [("x", _r(2, 3, 7, 5), False)], None, **attrs))


@pytest.mark.parametrize("op", ["Log", "Sqrt", "Reciprocal"])
def test_unary_positive_domain(op):
    _check(*_one_op(op, [("x", np.abs(_r(3, 50)) + 0.5, False)], None))


@pytest.mark.parametrize("bounds", [(None, None), (-0.5, None), (None, 0.5), (-0.5, 0.5),
                                    (0.5, -0.5)])
@pytest.mark.parametrize("as_input", [False, True])
def test_clip(bounds, as_input):
    ins = [("x", _r(4, 9), False)]
    for name, v in zip(("lo", "hi"), bounds):
        ins.append((name if v is not None else "", np.array(v if v is not None else 0,
                                                            np.float32), not as_input))
    while ins and not ins[-1][0]:
        ins.pop()
    _check(*_one_op("Clip", ins, None))


@pytest.mark.parametrize("params_as_inputs", [False, True])
def test_batchnorm(params_as_inputs):
    c = 6
    ins = [("x", _r(2, c, 5, 4), False), ("g", _r(c), params_as_inputs),
           ("b", _r(c), params_as_inputs), ("m", _r(c), params_as_inputs),
           ("v", np.abs(_r(c)) + 0.2, params_as_inputs)]
    ins = [(n, a, not params_as_inputs if n != "x" else False) for n, a, _ in ins]
    _check(*_one_op("BatchNormalization", ins, None, epsilon=1e-3))


def test_instance_norm_and_lrn():
    _check(*_one_op("InstanceNormalization", [("x", _r(2, 3, 6, 5), False), ("s", _r(3), True),
                                              ("b", _r(3), True)], None, epsilon=1e-4))
    _check(*_one_op("LRN", [("x", _r(2, 7, 4, 3), False)], None, size=3, alpha=1e-3,
                    beta=0.75, bias=1.5))


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("axis", [-1, 0, 1, 2])
def test_softmax_axes(op, axis):
    _check(*_one_op(op, [("x", _r(3, 4, 5) * 3, False)], None, axis=axis))


@pytest.mark.parametrize("case", [
    dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], group=1),
    dict(kernel_shape=[3, 3], strides=[1, 2], pads=[0, 1, 2, 1], dilations=[2, 1], group=1),
    dict(kernel_shape=[1, 1], group=1),
    dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=6),  # depthwise
    dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=2),
    dict(kernel_shape=[3, 3], auto_pad="SAME_LOWER", strides=[2, 2], group=1),
])
@pytest.mark.parametrize("bias", [False, True])
def test_conv_cases(case, bias):
    g = case["group"]
    cin, cout = 6, 6 if g == 6 else 4
    kh, kw = case["kernel_shape"]
    ins = [("x", _r(2, cin, 9, 7), False), ("w", _r(cout, cin // g, kh, kw), True)]
    if bias:
        ins.append(("b", _r(cout), True))
    _check(*_one_op("Conv", ins, None, **case))


def test_conv_1d_and_conv_transpose():
    _check(*_one_op("Conv", [("x", _r(2, 3, 11), False), ("w", _r(4, 3, 3), True),
                             ("b", _r(4), True)], None, strides=[2], pads=[1, 2]))
    _check(*_one_op("ConvTranspose", [("x", _r(1, 4, 5, 6), False), ("w", _r(4, 3, 3, 3), True),
                                      ("b", _r(3), True)], None, strides=[2, 2],
                    pads=[1, 0, 1, 1], output_padding=[1, 0]))
    _check(*_one_op("ConvTranspose", [("x", _r(1, 4, 5, 6), False), ("w", _r(4, 2, 3, 3), True)],
                    None, group=2, dilations=[2, 1]))


@pytest.mark.parametrize("op,attrs", [
    ("MaxPool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    ("MaxPool", dict(kernel_shape=[2, 3], strides=[2, 1], dilations=[2, 1], ceil_mode=1)),
    ("MaxPool", dict(kernel_shape=[3], strides=[2], pads=[1, 1])),
    ("AveragePool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    ("AveragePool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 0, 1, 0],
                         count_include_pad=1)),
    ("AveragePool", dict(kernel_shape=[3, 2], strides=[2, 2], ceil_mode=1)),
    ("GlobalAveragePool", {}), ("GlobalMaxPool", {}),
])
def test_pools(op, attrs):
    rank = 3 if len(attrs.get("kernel_shape", [0, 0])) == 1 else 4
    x = _r(2, 3, 9, 8) if rank == 4 else _r(2, 3, 9)
    _check(*_one_op(op, [("x", x, False)], None, **attrs))


def test_data_movement_ops():
    x = _r(2, 3, 4, 5)
    _check(*_one_op("Transpose", [("x", x, False)], None, perm=[0, 2, 3, 1]))
    _check(*_one_op("Transpose", [("x", x, False)], None))
    _check(*_one_op("Concat", [("x", x, False), ("c", _r(2, 2, 4, 5), True),
                               ("z", _r(2, 1, 4, 5), False)], None, axis=1))
    _check(*_one_op("Split", [("x", x, False), ("s", np.array([1, 3, 1], np.int64), True)],
                    None, outputs=["y", "y2", "y3"], axis=-1))
    _check(*_one_op("Slice", [("x", x, False), ("st", np.array([1, -1, 0], np.int64), True),
                              ("en", np.array([100, -100, 5], np.int64), True),
                              ("ax", np.array([1, 3, 2], np.int64), True),
                              ("sp", np.array([1, -2, 2], np.int64), True)], None))
    _check(*_one_op("Gather", [("x", x, False), ("i", np.array([[2, -1], [0, 1]], np.int64),
                                                 True)], None, axis=2))
    _check(*_one_op("Gather", [("x", x, False), ("i", np.array([3, 0, 4], np.int64), False)],
                    None, axis=-1))
    _check(*_one_op("Pad", [("x", x, False), ("p", np.array([0, 1, 2, 0, 0, 2, 1, 3], np.int64),
                                              True), ("v", np.array(1.5, np.float32), True)],
                    None))
    _check(*_one_op("Pad", [("x", x, False), ("p", np.array([1, 2], np.int64), True),
                            ("v", np.array(-2.0, np.float32), False),
                            ("a", np.array([-1], np.int64), True)], None))


@pytest.mark.parametrize("op", ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin",
                                "ReduceProd"])
@pytest.mark.parametrize("axes,keepdims", [([1], 1), ([0, 2], 0), (None, 1), ([-1], 0)])
def test_reduce(op, axes, keepdims):
    ins = [("x", _r(2, 3, 4), False)]
    if axes is not None:
        ins.append(("axes", np.array(axes, np.int64), True))
    _check(*_one_op(op, ins, None, keepdims=keepdims))
