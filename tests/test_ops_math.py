"""The math ops' numpy references and shape inference, checked against onnx.reference (and
onnxruntime where onnx.reference is known to be wrong) on single-node models, plus the
hand-computed figures of REFERENCE.md and the error messages of malformed nodes."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper
from onnx.reference import ReferenceEvaluator

from ember.graph.errors import ShapeError
from ember.graph.infer import infer_shapes
from ember.graph.ir import Graph, Node, TensorType
from ember.graph.ops import get_op
from ember.graph.ops.activation import FUSABLE, apply_activation

OPSET = 21
rng = np.random.default_rng(1234)
# float32 results differ from the oracle only by summation order: a few ulps of the largest
# partial sum, and the sums here stay below ~100, so 1e-5 relative / 1e-5 absolute is ample.
F32 = dict(rtol=1e-5, atol=1e-5)


def rand(*shape, dtype=np.float32, lo=-2.0, hi=2.0):
    return rng.uniform(lo, hi, size=shape).astype(dtype)


def run_ember(op_type, feeds, attrs=None, consts=None, n_out=1, order=None):
    """Infer and compute one node; returns (outputs, inferred output types, node)."""
    consts = consts or {}
    names = order or list(feeds) + list(consts)
    g = Graph(inputs=list(feeds), outputs=[f"y{i}" for i in range(n_out)],
              initializers=dict(consts))
    for k, v in feeds.items():
        g.types[k] = TensorType(v.dtype, v.shape)
    node = Node(op_type, list(names), [f"y{i}" for i in range(n_out)], dict(attrs or {}), "n0")
    g.nodes = [node]
    infer_shapes(g, fold=False)
    values = {**feeds, **consts}
    outs = get_op(op_type).compute(node, [values[n] if n else None for n in names])
    types = [g.types[o] for o in node.outputs]
    for o, t in zip(outs, types):
        assert o.shape == tuple(t.shape) and o.dtype == t.dtype, (o.shape, o.dtype, t)
    return outs, types, node


def onnx_model(op_type, feeds, attrs=None, consts=None, n_out=1, order=None, out_dtypes=None):
    consts = consts or {}
    # onnxruntime insists on an element type for graph outputs; the value check still compares
    # the dtype it actually returns.
    out_dtypes = out_dtypes or [None] * n_out
    names = order or list(feeds) + list(consts)
    vi = [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
          for k, v in feeds.items()]
    outs = [helper.make_tensor_value_info(
        f"y{i}", helper.np_dtype_to_tensor_dtype(np.dtype(d)) if d else 0, None)
        for i, d in enumerate(out_dtypes)]
    inits = [onnx.numpy_helper.from_array(v, k) for k, v in consts.items()]
    node = helper.make_node(op_type, names, [o.name for o in outs], **(attrs or {}))
    graph = helper.make_graph([node], "g", vi, outs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def run_reference(op_type, feeds, attrs=None, consts=None, n_out=1, order=None, out_dtypes=None):
    model = onnx_model(op_type, feeds, attrs, consts, n_out, order)
    return ReferenceEvaluator(model).run(None, feeds)


def run_ort(op_type, feeds, attrs=None, consts=None, n_out=1, order=None, out_dtypes=None):
    import onnxruntime as ort
    model = onnx_model(op_type, feeds, attrs, consts, n_out, order, out_dtypes)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def check(op_type, feeds, attrs=None, consts=None, n_out=1, order=None, tol=F32, oracle=None):
    ours, _, _ = run_ember(op_type, feeds, attrs, consts, n_out, order)
    theirs = (oracle or run_reference)(op_type, feeds, attrs, consts, n_out, order,
                                       [o.dtype for o in ours])
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape, (a.shape, b.shape)
        assert a.dtype == b.dtype, (a.dtype, b.dtype)
        np.testing.assert_allclose(a.astype(np.float64), b.astype(np.float64), **tol)
    return ours


# ---- activations -----------------------------------------------------------------------------

UNARY = [("Relu", {}), ("LeakyRelu", {"alpha": 0.2}), ("Elu", {"alpha": 0.7}), ("Selu", {}),
         ("Sigmoid", {}), ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}), ("HardSwish", {}),
         ("Tanh", {}), ("Softplus", {}), ("Exp", {}), ("Neg", {}), ("Abs", {})]


@pytest.mark.parametrize("op,attrs", UNARY)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_unary(op, attrs, dtype):
    check(op, {"x": rand(3, 7, 5, dtype=dtype, lo=-6, hi=6)}, attrs)


@pytest.mark.parametrize("op", ["Log", "Sqrt", "Reciprocal"])
def test_unary_positive(op):
    check(op, {"x": rand(13, 4, lo=0.1, hi=9)})


@pytest.mark.parametrize("op", ["Relu", "Neg", "Abs"])
def test_unary_int(op):
    check(op, {"x": rng.integers(-50, 50, size=(4, 9)).astype(np.int32)}, tol=dict(rtol=0))


def test_sigmoid_extremes_do_not_overflow():
    x = np.array([-1000, -50, 0, 50, 1000], np.float32)
    y = run_ember("Sigmoid", {"x": x})[0][0]
    np.testing.assert_allclose(y, [0, 1.9287498e-22, 0.5, 1, 1], rtol=1e-6)


def test_float16_relu_and_tanh():
    # float16 has 11 significant bits: 1e-3 relative is the format's own precision.
    x = rand(5, 6, dtype=np.float16)
    check("Tanh", {"x": x}, tol=dict(rtol=1e-3, atol=1e-3))
    check("Relu", {"x": x}, tol=dict(rtol=0))


@pytest.mark.parametrize("bounds", [(-0.5, 0.7), (None, 0.3), (-0.2, None), (None, None),
                                    (0.5, -0.5)])
def test_clip(bounds):
    feeds = {"x": rand(6, 11)}
    consts, order = {}, ["x"]
    for name, v in zip(("lo", "hi"), bounds):
        if v is None:
            order.append("")
        else:
            consts[name] = np.array(v, np.float32)
            order.append(name)
    check("Clip", feeds, consts=consts, order=order)


def test_clip_int():
    check("Clip", {"x": np.arange(-5, 6, dtype=np.int64)},
          consts={"lo": np.array(-2, np.int64), "hi": np.array(3, np.int64)},
          tol=dict(rtol=0))


@pytest.mark.parametrize("name,alpha,beta,expect", [
    ("Relu", 0, 0, lambda x: np.maximum(x, 0)),
    ("LeakyRelu", 0.1, 0, lambda x: np.where(x < 0, 0.1 * x, x)),
    ("Clip", 0.0, 6.0, lambda x: np.clip(x, 0, 6)),
    ("Sigmoid", 0, 0, lambda x: 1 / (1 + np.exp(-x))),
    ("Tanh", 0, 0, np.tanh),
    ("SiLU", 0, 0, lambda x: x / (1 + np.exp(-x))),
    ("HardSwish", 0, 0, lambda x: x * np.clip(x + 3, 0, 6) / 6),
    ("", 0, 0, lambda x: x)])
def test_apply_activation(name, alpha, beta, expect):
    x = rand(4, 9, lo=-8, hi=8)
    y = apply_activation(x, name, alpha, beta)
    assert y.dtype == x.dtype
    np.testing.assert_allclose(y, expect(x.astype(np.float64)), **F32)


def test_fusable_reads_attributes_and_constant_bounds():
    leaky = Node("LeakyRelu", ["a"], ["b"], {"alpha": 0.3})
    assert FUSABLE["LeakyRelu"](leaky, {}) == (0.3, 0.0)
    clip = Node("Clip", ["a", "lo", ""], ["b"], {})
    assert FUSABLE["Clip"](clip, {"lo": np.array(0.0, np.float32)}) == (0.0, float("inf"))
    assert FUSABLE["Clip"](clip, {}) is None   # bound computed at run time: not fusable


# ---- elementwise -----------------------------------------------------------------------------

SHAPE_PAIRS = [((3, 4), (3, 4)), ((2, 3, 4), (4,)), ((2, 1, 5), (7, 1)), ((1,), (3, 1, 2)),
               ((), (5, 2))]


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
@pytest.mark.parametrize("sa,sb", SHAPE_PAIRS)
def test_binary_broadcast(op, sa, sb):
    check(op, {"a": rand(*sa), "b": rand(*sb, lo=0.5, hi=3)})


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_integer_div_truncates(dtype):
    a = np.array([7, -7, 7, -7, 0, 9], dtype)
    b = np.array([2, 2, -2, -2, 3, 4], dtype)
    y = run_ember("Div", {"a": a, "b": b})[0][0]
    np.testing.assert_array_equal(y, [3, -3, -3, 3, 0, 2])   # toward zero, by hand
    assert y.dtype == dtype


def test_pow_keeps_base_dtype():
    check("Pow", {"a": rand(3, 5, lo=0.1, hi=3), "b": rand(5, lo=-2, hi=2)})
    check("Pow", {"a": rand(3, 5, lo=0.1, hi=3), "b": np.array([2, 3, 1, 0, 2], np.int64)})
    check("Pow", {"a": np.arange(1, 7, dtype=np.int64), "b": np.array(2, np.int64)},
          tol=dict(rtol=0))


@pytest.mark.parametrize("op", ["Sum", "Max", "Min", "Mean"])
def test_variadic(op):
    check(op, {"a": rand(2, 3, 4), "b": rand(3, 1), "c": rand(4)})
    check(op, {"a": rand(5, 3)})


def test_prelu():
    check("PRelu", {"x": rand(2, 7, 5, 5), "s": rand(7, 1, 1)})
    check("PRelu", {"x": rand(2, 7), "s": rand(7)})


def test_bad_broadcast_names_the_node():
    with pytest.raises(ShapeError, match=r"Add node 'n0'.*broadcast"):
        run_ember("Add", {"a": rand(3, 4), "b": rand(5)})


# ---- Gemm / MatMul ---------------------------------------------------------------------------

@pytest.mark.parametrize("ta,tb", [(0, 0), (1, 0), (0, 1), (1, 1)])
@pytest.mark.parametrize("cshape", [None, (1,), (7,), (5, 1), (5, 7)])
def test_gemm(ta, tb, cshape):
    a = rand(*((13, 5) if ta else (5, 13)))
    b = rand(*((7, 13) if tb else (13, 7)))
    attrs = {"transA": ta, "transB": tb, "alpha": 0.5, "beta": 2.0}
    feeds = {"a": a, "b": b}
    if cshape:
        feeds["c"] = rand(*cshape)
    check("Gemm", feeds, attrs)


def test_gemm_fused_activation():
    a, b = rand(4, 6), rand(6, 3)
    y = run_ember("Gemm", {"a": a, "b": b},
                  {"activation": "Clip", "activation_alpha": -0.5, "activation_beta": 0.5})[0][0]
    np.testing.assert_allclose(y, np.clip(a.astype(np.float64) @ b, -0.5, 0.5), **F32)


@pytest.mark.parametrize("sa,sb", [((3, 4), (4, 5)), ((4,), (4, 5)), ((3, 4), (4,)), ((4,), (4,)),
                                   ((2, 3, 4), (4, 5)), ((2, 1, 3, 4), (7, 4, 2)),
                                   ((5,), (2, 5, 3))])
def test_matmul(sa, sb):
    check("MatMul", {"a": rand(*sa), "b": rand(*sb)})


def test_matmul_inner_mismatch():
    with pytest.raises(ShapeError, match="MatMul node 'n0'"):
        run_ember("MatMul", {"a": rand(3, 4), "b": rand(5, 2)})


# ---- Conv ------------------------------------------------------------------------------------

CONV_CASES = [
    # (x shape, w shape, attrs)
    ((1, 3, 7, 7), (5, 3, 3, 3), {}),
    ((2, 7, 9, 11), (13, 7, 3, 3), {"strides": [2, 2], "pads": [1, 1, 1, 1]}),
    ((1, 6, 9, 9), (4, 3, 3, 3), {"group": 2, "pads": [0, 1, 2, 0]}),
    ((2, 7, 8, 9), (7, 1, 3, 3), {"group": 7, "strides": [2, 1], "pads": [1, 1, 1, 1]}),
    ((1, 4, 11, 10), (6, 4, 3, 2), {"dilations": [2, 3], "strides": [1, 2]}),
    ((1, 3, 7, 8), (4, 3, 3, 3), {"auto_pad": "SAME_UPPER", "strides": [2, 2]}),
    ((1, 3, 7, 8), (4, 3, 4, 4), {"auto_pad": "SAME_LOWER", "strides": [2, 3]}),
    ((1, 3, 7, 8), (4, 3, 3, 3), {"auto_pad": "VALID", "strides": [2, 2]}),
    ((2, 5, 13), (3, 5, 4), {"strides": [3], "pads": [2, 1]}),
    ((1, 2, 5, 6, 7), (4, 2, 3, 2, 3), {"strides": [1, 2, 2], "pads": [1, 0, 1, 0, 1, 1]}),
    ((1, 3, 5, 5), (2, 3, 1, 1), {}),
]


@pytest.mark.parametrize("xs,ws,attrs", CONV_CASES)
@pytest.mark.parametrize("bias", [False, True])
def test_conv(xs, ws, attrs, bias):
    feeds = {"x": rand(*xs), "w": rand(*ws)}
    if bias:
        feeds["b"] = rand(ws[0])
    check("Conv", feeds, attrs)


def test_conv_float64_and_resolved_attrs():
    feeds = {"x": rand(1, 3, 7, 8, dtype=np.float64), "w": rand(2, 3, 3, 3, dtype=np.float64)}
    check("Conv", feeds, {"auto_pad": "SAME_LOWER"}, tol=dict(rtol=1e-12, atol=1e-12))
    _, _, node = run_ember("Conv", feeds, {"auto_pad": "SAME_LOWER", "strides": [2, 2]})
    assert node.attrs["auto_pad"] == "NOTSET"
    # H: out 4, total pad 2 → 1+1; W: out 4, total pad 1 → the odd one at the start (LOWER)
    assert node.attrs["pads"] == [1, 1, 1, 0] and node.attrs["kernel_shape"] == [3, 3]
    assert node.attrs["dilations"] == [1, 1]


def test_conv_fused_relu():
    feeds = {"x": rand(1, 3, 6, 6), "w": rand(4, 3, 3, 3)}
    plain = run_ember("Conv", feeds)[0][0]
    fused = run_ember("Conv", feeds, {"activation": "Relu"})[0][0]
    np.testing.assert_array_equal(fused, np.maximum(plain, 0))


X5 = np.array([[1, 0, 1, 0, 0], [1, 0, 1, 0, 1], [1, 1, 1, 0, 0], [1, 0, 1, 0, 1],
               [1, 0, 1, 0, 1]], np.float32)
F3 = np.array([[-1, -1, -1], [-1, 1, -1], [-1, -1, -1]], np.float32)


def test_textbook_conv_valid_and_same():
    feeds = {"x": X5[None, None], "w": F3[None, None]}
    valid = run_ember("Conv", feeds)[0][0][0, 0]
    np.testing.assert_array_equal(valid, [[-7, -2, -4], [-5, -2, -5], [-7, -2, -5]])
    same = run_ember("Conv", feeds, {"pads": [1, 1, 1, 1]})[0][0][0, 0]
    np.testing.assert_array_equal(same, [[0, -4, 0, -3, -1], [-2, -7, -2, -4, 1],
                                         [-2, -5, -2, -5, -2], [-2, -7, -2, -5, 0],
                                         [0, -4, 0, -4, 0]])
    relu = run_ember("Conv", feeds, {"pads": [1, 1, 1, 1], "activation": "Relu"})[0][0][0, 0]
    assert relu.sum() == 1 and relu[1, 4] == 1


def test_textbook_conv_1d():
    x = np.array([0, 0, 1, 1, 1, 0, 1, 0, 0, 0], np.float32)[None, None]
    w = np.array([-1, 1, -1], np.float32)[None, None]
    y = run_ember("Conv", {"x": x, "w": w})[0][0][0, 0]
    np.testing.assert_array_equal(y, [-1, 0, -1, 0, -2, 1, -1, 0])
    relu = run_ember("Conv", {"x": x, "w": w}, {"activation": "Relu"})[0][0][0, 0]
    np.testing.assert_array_equal(relu, [0, 0, 0, 0, 0, 1, 0, 0])


def test_conv_channel_mismatch_names_the_node():
    with pytest.raises(ShapeError, match=r"Conv node 'n0'.*channels"):
        run_ember("Conv", {"x": rand(1, 4, 5, 5), "w": rand(2, 3, 3, 3)})


def test_conv_kernel_larger_than_padded_input():
    with pytest.raises(ShapeError, match=r"Conv node 'n0'.*padded input"):
        run_ember("Conv", {"x": rand(1, 3, 4, 4), "w": rand(2, 3, 5, 5)})


def test_conv_wrong_rank():
    with pytest.raises(ShapeError, match=r"Conv node 'n0'.*rank"):
        run_ember("Conv", {"x": rand(1, 3, 4, 4), "w": rand(2, 3, 3)})


def test_conv_symbolic_batch():
    g = Graph(inputs=["x"], outputs=["y0"], initializers={"w": rand(4, 3, 3, 3)})
    g.types["x"] = TensorType(np.float32, ("N", 3, 8, 8))
    g.nodes = [Node("Conv", ["x", "w"], ["y0"], {"strides": [2, 2]}, "c")]
    infer_shapes(g)
    assert g.types["y0"].shape == ("N", 4, 3, 3)


CONVT_CASES = [
    ((1, 3, 4, 5), (3, 2, 3, 3), {}),
    ((2, 4, 5, 5), (4, 3, 3, 3), {"strides": [2, 2], "pads": [1, 0, 1, 1]}),
    ((1, 4, 3, 4), (4, 1, 3, 2), {"group": 2, "strides": [2, 3], "output_padding": [1, 2]}),
    ((1, 2, 4, 4), (2, 3, 3, 3), {"dilations": [2, 2], "strides": [2, 2]}),
    ((1, 2, 3, 3), (2, 2, 3, 3), {"strides": [3, 2], "output_shape": [10, 8]}),
    ((1, 2, 3, 3), (2, 2, 3, 3), {"strides": [2, 2], "auto_pad": "SAME_UPPER"}),
    ((1, 2, 3, 4), (2, 2, 2, 3), {"strides": [2, 2], "auto_pad": "SAME_LOWER"}),
    ((2, 3, 7), (3, 5, 4), {"strides": [2], "pads": [1, 2]}),
    ((1, 2, 3, 4, 3), (2, 2, 2, 3, 2), {"strides": [2, 1, 2]}),
]


@pytest.mark.parametrize("xs,ws,attrs", CONVT_CASES)
@pytest.mark.parametrize("bias", [False, True])
def test_conv_transpose(xs, ws, attrs, bias):
    feeds = {"x": rand(*xs), "w": rand(*ws)}
    if bias:
        feeds["b"] = rand(ws[1] * attrs.get("group", 1))
    # onnx.reference slices W by output instead of input channels when group > 1.
    check("ConvTranspose", feeds, attrs, oracle=run_ort if attrs.get("group", 1) > 1 else None)


# ---- pooling ---------------------------------------------------------------------------------

POOL_CASES = [
    ((1, 3, 7, 7), {"kernel_shape": [3, 3]}),
    ((2, 7, 9, 11), {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    ((1, 13, 8, 9), {"kernel_shape": [2, 3], "strides": [2, 2], "pads": [0, 1, 1, 2]}),
    ((1, 2, 9, 10), {"kernel_shape": [2, 2], "dilations": [2, 3], "strides": [1, 2]}),
    ((1, 3, 7, 8), {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"}),
    ((1, 3, 7, 8), {"kernel_shape": [2, 4], "strides": [2, 3], "auto_pad": "SAME_LOWER"}),
    ((1, 3, 7, 8), {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "VALID"}),
    ((2, 3, 13), {"kernel_shape": [4], "strides": [3], "pads": [2, 1]}),
    ((1, 2, 5, 6, 7), {"kernel_shape": [2, 3, 2], "strides": [2, 1, 2]}),
]
CEIL_CASES = [
    ((1, 3, 7, 7), {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1}),
    ((1, 2, 8, 9), {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1,
                    "pads": [1, 1, 1, 1]}),
    ((1, 2, 6, 6), {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1,
                    "pads": [1, 1, 1, 1]}),   # the last window would start in the end pad
    ((1, 2, 10), {"kernel_shape": [3], "strides": [4], "ceil_mode": 1}),
]


@pytest.mark.parametrize("xs,attrs", POOL_CASES)
def test_max_pool(xs, attrs):
    # onnx.reference's MaxPool gets SAME_LOWER's output size wrong (floor instead of ceil).
    lower = attrs.get("auto_pad") == "SAME_LOWER"
    check("MaxPool", {"x": rand(*xs)}, attrs, oracle=run_ort if lower else None)


@pytest.mark.parametrize("xs,attrs", POOL_CASES)
@pytest.mark.parametrize("include", [0, 1])
def test_average_pool(xs, attrs, include):
    check("AveragePool", {"x": rand(*xs)}, {**attrs, "count_include_pad": include})


# onnx.reference spreads the ceil_mode overhang over both ends of the input (shifting every
# window), so ceil_mode is checked against onnxruntime, which follows the spec's formula.
@pytest.mark.parametrize("xs,attrs", CEIL_CASES)
def test_max_pool_ceil_mode(xs, attrs):
    check("MaxPool", {"x": rand(*xs)}, attrs, oracle=run_ort)


@pytest.mark.parametrize("xs,attrs", CEIL_CASES)
@pytest.mark.parametrize("include", [0, 1])
def test_average_pool_ceil_mode(xs, attrs, include):
    check("AveragePool", {"x": rand(*xs)}, {**attrs, "count_include_pad": include},
          oracle=run_ort)


@pytest.mark.parametrize("xs,attrs", POOL_CASES[:4] + CEIL_CASES[:2])
@pytest.mark.parametrize("order", [0, 1])
def test_max_pool_indices(xs, attrs, order):
    check("MaxPool", {"x": rand(*xs)}, {**attrs, "storage_order": order}, n_out=2,
          oracle=run_ort)


def test_max_pool_int8():
    x = rng.integers(-128, 127, size=(1, 3, 6, 7)).astype(np.int8)
    check("MaxPool", {"x": x}, {"kernel_shape": [3, 2], "strides": [2, 2], "pads": [1, 1, 1, 1]},
          tol=dict(rtol=0), oracle=run_ort)


def test_textbook_max_pools():
    x = np.zeros((1, 1, 6, 6), np.float32)
    x[0, 0, 1, 4] = x[0, 0, 3, 1] = 1
    s1 = run_ember("MaxPool", {"x": x}, {"kernel_shape": [3, 3]})[0][0][0, 0]
    np.testing.assert_array_equal(s1, [[0, 0, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 0, 0]])
    s3 = run_ember("MaxPool", {"x": x}, {"kernel_shape": [3, 3], "strides": [3, 3]})[0][0][0, 0]
    np.testing.assert_array_equal(s3, [[0, 1], [1, 0]])


@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool"])
@pytest.mark.parametrize("xs", [(2, 7, 5, 3), (1, 3, 9), (1, 2, 3, 4, 5)])
def test_global_pools(op, xs):
    # onnx.reference's GlobalMaxPool assumes 4-D input.
    check(op, {"x": rand(*xs)}, oracle=run_ort)


def test_pool_window_larger_than_input():
    with pytest.raises(ShapeError, match=r"MaxPool node 'n0'.*padded input"):
        run_ember("MaxPool", {"x": rand(1, 1, 3, 3)}, {"kernel_shape": [4, 4]})


# ---- normalization ---------------------------------------------------------------------------

@pytest.mark.parametrize("xs", [(2, 7, 5, 3), (3, 13), (1, 4, 6)])
def test_batch_norm_inference(xs):
    c = xs[1]
    check("BatchNormalization", {"x": rand(*xs), "s": rand(c), "b": rand(c), "m": rand(c),
                                 "v": rand(c, lo=0.1, hi=2)}, {"epsilon": 1e-3})


def test_batch_norm_training_mode():
    feeds = {"x": rand(4, 3, 5, 5), "s": rand(3), "b": rand(3), "m": rand(3),
             "v": rand(3, lo=0.1, hi=2)}
    check("BatchNormalization", feeds, {"training_mode": 1, "momentum": 0.8}, n_out=3)


def test_instance_norm():
    check("InstanceNormalization", {"x": rand(2, 7, 5, 6), "s": rand(7), "b": rand(7)},
          {"epsilon": 1e-4})


def naive_lrn(x, size, alpha, beta, bias):
    """The spec's formula, one channel at a time."""
    y = np.empty_like(x, dtype=np.float64)
    lo, hi = (size - 1) // 2, -(-(size - 1) // 2)
    for c in range(x.shape[1]):
        window = x[:, max(0, c - lo):min(x.shape[1], c + hi + 1)].astype(np.float64)
        y[:, c] = x[:, c] / (bias + alpha / size * (window ** 2).sum(axis=1)) ** beta
    return y


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5])
def test_lrn(size):
    # onnx.reference's LRN loops over the batch axis instead of the channels, so the oracles
    # are onnxruntime (odd sizes only, it rejects even ones) and the spec's formula by hand.
    feeds, attrs = {"x": rand(2, 7, 4, 5)}, {"size": size, "alpha": 0.01, "beta": 0.6,
                                             "bias": 1.5}
    y = run_ember("LRN", feeds, attrs)[0][0]
    np.testing.assert_allclose(y, naive_lrn(feeds["x"], size, 0.01, 0.6, 1.5), **F32)
    if size % 2:
        check("LRN", feeds, attrs, oracle=run_ort)


def test_batch_norm_channel_mismatch():
    with pytest.raises(ShapeError, match=r"BatchNormalization node 'n0'.*scale"):
        run_ember("BatchNormalization", {"x": rand(1, 3, 2, 2), "s": rand(4), "b": rand(3),
                                         "m": rand(3), "v": rand(3)})


# ---- softmax ---------------------------------------------------------------------------------

@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("axis", [-1, 0, 1, 2])
def test_softmax(op, axis):
    check(op, {"x": rand(3, 7, 5, lo=-30, hi=30)}, {"axis": axis})


def test_softmax_textbook_and_large_logits():
    y = run_ember("Softmax", {"x": np.array([5, 2, -1, 3], np.float32)})[0][0]
    np.testing.assert_allclose(y, [0.842, 0.042, 0.002, 0.114], atol=5e-4)
    np.testing.assert_allclose(np.exp([5, 2, -1, 3]).sum(), 176.256, rtol=1e-5)
    big = run_ember("Softmax", {"x": np.array([1000, 1000], np.float32)})[0][0]
    np.testing.assert_array_equal(big, [0.5, 0.5])


def test_softmax_bad_axis():
    with pytest.raises(ShapeError, match=r"Softmax node 'n0'.*axis"):
        run_ember("Softmax", {"x": rand(3, 4)}, {"axis": 2})


# ---- reductions ------------------------------------------------------------------------------

REDUCE_OPS = ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
              "ReduceL2", "ReduceSumSquare", "ReduceLogSumExp"]


@pytest.mark.parametrize("op", REDUCE_OPS)
@pytest.mark.parametrize("axes", [None, [1], [0, 2], [-1], [-3, -2, -1]])
@pytest.mark.parametrize("keepdims", [0, 1])
def test_reduce(op, axes, keepdims):
    consts = {} if axes is None else {"axes": np.array(axes, np.int64)}
    check(op, {"x": rand(3, 4, 5, lo=0.5, hi=1.5)}, {"keepdims": keepdims}, consts=consts)


@pytest.mark.parametrize("op", ["ReduceSum", "ReduceMax"])
def test_reduce_noop_with_empty_axes(op):
    x = rand(3, 4)
    check(op, {"x": x}, {"noop_with_empty_axes": 1})
    check(op, {"x": x}, {"noop_with_empty_axes": 1}, consts={"axes": np.array([], np.int64)})


def test_reduce_int():
    check("ReduceSum", {"x": rng.integers(-9, 9, size=(3, 4)).astype(np.int64)},
          consts={"axes": np.array([1], np.int64)}, tol=dict(rtol=0))


def test_reduce_empty_set_gives_identity():
    x = np.zeros((2, 0, 4), np.float32)
    axes = {"axes": np.array([1], np.int64)}
    assert (run_ember("ReduceMax", {"x": x}, consts=axes)[0][0] == -np.inf).all()
    assert (run_ember("ReduceMin", {"x": x}, consts=axes)[0][0] == np.inf).all()
    assert (run_ember("ReduceSum", {"x": x}, consts=axes)[0][0] == 0).all()


def test_reduce_bad_axis():
    with pytest.raises(ShapeError, match=r"ReduceSum node 'n0'.*axes"):
        run_ember("ReduceSum", {"x": rand(3, 4)}, consts={"axes": np.array([2], np.int64)})
