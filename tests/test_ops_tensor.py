"""Tensor/shape ops and Resize checked against onnx.reference on single-node models.

Each case builds the same node twice: as an ONNX model run by ``onnx.reference.ReferenceEvaluator``
(the oracle) and as an ember IR node, whose types come from ``infer_shapes`` and whose values come
from the op's numpy ``compute``. Inputs marked const become initializers (so shape-deciding
inputs are known at compile time, as after constant folding).
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from ember.graph.errors import ModelError, ShapeError
from ember.graph.infer import infer_shapes
from ember.graph.ir import Graph, Node, TensorType
from ember.graph.ops import NeedsValue, get_op

OPSET = 21
rng = np.random.default_rng(0)


def rand(*shape, dtype=np.float32):
    if np.dtype(dtype).kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if np.dtype(dtype) == np.bool_:
        return rng.random(shape) > 0.5
    return rng.integers(-50, 50, size=shape).astype(dtype) if np.dtype(dtype).kind == "i" \
        else rng.integers(0, 100, size=shape).astype(dtype)


def i64(*v):
    return np.array(v, dtype=np.int64)


def C(arr):
    """Mark an input as a constant (an initializer)."""
    return ("const", np.asarray(arr))


def build(op_type, inputs, n_out=1, attrs=None):
    """The IR graph for one node. ``inputs``: arrays, C(array) for constants, None for absent."""
    g = Graph(name="t")
    names = []
    for k, v in enumerate(inputs):
        if v is None:
            names.append("")
            continue
        name = f"in{k}"
        names.append(name)
        if isinstance(v, tuple):
            g.initializers[name] = v[1]
        else:
            g.inputs.append(name)
            g.types[name] = TensorType(v.dtype, v.shape)
    outs = [f"out{k}" for k in range(n_out)]
    g.nodes.append(Node(op_type, names, outs, dict(attrs or {}), name=f"my_{op_type}"))
    g.outputs = outs
    return g


def run_ember(op_type, inputs, n_out=1, attrs=None):
    g = build(op_type, inputs, n_out, attrs)
    known = infer_shapes(g, fold=False)
    node = g.nodes[0]
    arrays = [None if v is None else (v[1] if isinstance(v, tuple) else v) for v in inputs]
    outs = get_op(op_type).compute(node, arrays)
    for name, o in zip(node.outputs, outs):
        t = g.types[name]
        assert o.shape == tuple(t.shape), (name, o.shape, t)
        assert o.dtype == t.dtype, (name, o.dtype, t)
        if name in known:  # published at inference time (Shape of a static tensor)
            np.testing.assert_array_equal(known[name], o)
    return outs


def run_reference(op_type, inputs, n_out=1, onnx_attrs=None, oracle="reference"):
    names, feeds, inits, vinfo = [], {}, [], []
    for k, v in enumerate(inputs):
        if v is None:
            names.append("")
            continue
        name = f"in{k}"
        names.append(name)
        arr = v[1] if isinstance(v, tuple) else v
        feeds[name] = arr
        vinfo.append(helper.make_tensor_value_info(
            name, helper.np_dtype_to_tensor_dtype(arr.dtype), arr.shape))
    outs = [f"out{k}" for k in range(n_out)]
    node = helper.make_node(op_type, names, outs, **(onnx_attrs or {}))
    graph = helper.make_graph([node], "t", vinfo,
                              [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None)
                               for o in outs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    if oracle == "onnxruntime":
        import onnxruntime as ort
        model.ir_version = 10
        for out in model.graph.output:  # typed outputs; used for dtype-keeping ops only
            out.CopyFrom(helper.make_tensor_value_info(out.name, vinfo[0].type.tensor_type
                                                       .elem_type, None))
        sess = ort.InferenceSession(model.SerializeToString(),
                                    providers=["CPUExecutionProvider"])
        return sess.run(None, feeds)
    return ReferenceEvaluator(model).run(None, feeds)


def check(op_type, inputs, n_out=1, attrs=None, onnx_attrs=None, rtol=0.0, atol=0.0,
          oracle="reference"):
    """Compare ember with the oracle (onnx.reference, or onnxruntime where the reference lacks
    a feature). Data movement ops are exact (tolerance 0); Resize passes a tolerance because
    its summation order differs from the oracle's."""
    ours = run_ember(op_type, inputs, n_out, attrs)
    ref = run_reference(op_type, inputs, n_out, attrs if onnx_attrs is None else onnx_attrs,
                        oracle)
    for a, b in zip(ours, ref):
        b = np.asarray(b)
        assert a.shape == b.shape, (a.shape, b.shape)
        assert a.dtype == b.dtype, (a.dtype, b.dtype)
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)
    return ours


def fails(op_type, inputs, n_out=1, attrs=None, match=None):
    with pytest.raises(ShapeError, match=match) as e:
        g = build(op_type, inputs, n_out, attrs)
        infer_shapes(g, fold=False)
    assert f"my_{op_type}" in str(e.value)


DTYPES = [np.float32, np.float64, np.float16, np.int64, np.int32, np.int8, np.uint8, np.bool_]


# ---- Flatten / Reshape / Squeeze / Unsqueeze / Identity -----------------------------------
@pytest.mark.parametrize("axis", [0, 1, 2, 3, -1, -3])
def test_flatten(axis):
    check("Flatten", [rand(2, 3, 5)], attrs={"axis": axis} if axis != 3 else {"axis": 3})


@pytest.mark.parametrize("dtype", DTYPES)
def test_flatten_dtypes(dtype):
    check("Flatten", [rand(3, 1, 7, dtype=dtype)])


@pytest.mark.parametrize("shape,target,allowzero", [
    ((2, 3, 4), (4, -1), 0), ((2, 3, 4), (0, -1), 0), ((2, 3, 4), (-1,), 0),
    ((2, 3, 4), (0, 0, 2, 2), 0), ((6,), (1, 2, 3, 1), 0), ((0, 3), (3, 0), 1),
    ((0, 3), (0, 5), 0), ((1,), (), 0), ((2, 3, 4), (2, 0, 4), 1 - 1),
])
def test_reshape(shape, target, allowzero):
    check("Reshape", [rand(*shape), C(np.array(target, dtype=np.int64))],
          attrs={"allowzero": allowzero})


def test_reshape_errors():
    fails("Reshape", [rand(2, 3), C(i64(4, -1))], match="cannot reshape")
    fails("Reshape", [rand(2, 3), C(i64(5))], match="cannot reshape")
    fails("Reshape", [rand(2, 3), C(i64(-1, -1))], match="more than one")
    fails("Reshape", [rand(2, 3), C(i64(-2, 3))], match="invalid dim")


def test_reshape_shape_from_graph_input_needs_value():
    g = build("Reshape", [rand(2, 3), i64(3, 2)])
    with pytest.raises(NeedsValue) as e:
        infer_shapes(g)
    assert e.value.name == "in1"


@pytest.mark.parametrize("shape,axes", [((1, 3, 1, 5), (0, 2)), ((1, 3, 1, 5), None),
                                        ((4, 1), (-1,)), ((1,), (0,))])
def test_squeeze(shape, axes):
    check("Squeeze", [rand(*shape), None if axes is None else C(i64(*axes))])


def test_squeeze_error():
    fails("Squeeze", [rand(2, 3), C(i64(0))], match="cannot squeeze")
    fails("Squeeze", [rand(2, 3), C(i64(2))], match="out of range")


@pytest.mark.parametrize("shape,axes", [((3, 5), (0,)), ((3, 5), (0, 3)), ((3, 5), (-1,)),
                                        ((), (0, 1)), ((2, 3), (1, -1, 0))])
def test_unsqueeze(shape, axes):
    check("Unsqueeze", [rand(*shape), C(i64(*axes))])


def test_unsqueeze_error():
    fails("Unsqueeze", [rand(2, 3), C(i64(0, 0))], match="repeated")
    fails("Unsqueeze", [rand(2, 3), C(i64(4))], match="out of range")


@pytest.mark.parametrize("dtype", DTYPES)
def test_identity(dtype):
    check("Identity", [rand(2, 7, dtype=dtype)])


# ---- Transpose / Concat / Split ------------------------------------------------------------
@pytest.mark.parametrize("perm", [None, (0, 2, 1, 3), (3, 1, 0, 2), (0, 1, 2, 3)])
@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.bool_, np.float16])
def test_transpose(perm, dtype):
    check("Transpose", [rand(2, 3, 5, 7, dtype=dtype)],
          attrs={} if perm is None else {"perm": list(perm)})


def test_transpose_error():
    fails("Transpose", [rand(2, 3)], attrs={"perm": [0, 0]}, match="permutation")


@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("dtype", [np.float32, np.int32, np.bool_])
def test_concat(axis, dtype):
    shapes = [[2, 3, 4], [2, 3, 4], [2, 3, 4]]
    for k, s in enumerate(shapes):
        s[axis] = [1, 5, 0][k]
    check("Concat", [rand(*s, dtype=dtype) for s in shapes], attrs={"axis": axis})


def test_concat_errors():
    fails("Concat", [rand(2, 3), rand(3, 3)], attrs={"axis": 1}, match="differ in dim 0")
    fails("Concat", [rand(2, 3), rand(2, 3, 1)], attrs={"axis": 0}, match="ranks")
    fails("Concat", [rand(2, 3), rand(2, 3)], attrs={"axis": 2}, match="out of range")


@pytest.mark.parametrize("case", [
    dict(shape=(6, 4), axis=0, n=3),
    dict(shape=(6, 4), axis=1, n=2, split=(1, 3)),
    dict(shape=(2, 7), axis=-1, n=3, split=(0, 4, 3)),
    dict(shape=(2, 7), axis=1, n=3, num_outputs=3),
    dict(shape=(5,), axis=0, n=2, num_outputs=2),
    dict(shape=(4, 3), axis=0, n=3, num_outputs=3),
    dict(shape=(7, 3), axis=0, n=2),
])
def test_split(case):
    attrs = {"axis": case["axis"]}
    if "num_outputs" in case:
        attrs["num_outputs"] = case["num_outputs"]
    split = C(i64(*case["split"])) if "split" in case else None
    inputs = [rand(*case["shape"])] + ([split] if split is not None else [])
    check("Split", inputs, n_out=case["n"], attrs=attrs)


def test_split_errors():
    fails("Split", [rand(5, 2)], n_out=4, match="smaller last")
    fails("Split", [rand(7, 2), C(i64(3, 3))], n_out=2, match="sums to")
    fails("Split", [rand(7, 2)], n_out=2, attrs={"num_outputs": 3}, match="num_outputs")


# ---- Slice ---------------------------------------------------------------------------------
BIG = np.iinfo(np.int64).max


@pytest.mark.parametrize("starts,ends,axes,steps", [
    ((1,), (3,), (0,), None),
    ((0, 1), (2, -1), None, None),
    ((-3,), (BIG,), (1,), None),
    ((10,), (-100,), (1,), (-1,)),
    ((-1,), (-BIG,), (2,), (-2,)),
    ((5, 0), (0, 7), (1, 2), (-2, 3)),
    ((1,), (1,), (0,), (1,)),          # empty
    ((0,), (100,), (-1,), (2,)),
    ((2,), (-BIG - 1,), (0,), (-1,)),
    ((-100,), (100,), (0,), None),
])
def test_slice(starts, ends, axes, steps):
    x = rand(3, 7, 5)
    inputs = [x, C(i64(*starts)), C(i64(*ends)), C(i64(*axes)) if axes else None,
              C(i64(*steps)) if steps else None]
    while inputs[-1] is None:
        inputs.pop()
    check("Slice", inputs)


def test_slice_errors():
    fails("Slice", [rand(3, 4), C(i64(0)), C(i64(1)), C(i64(2))], match="out of range")
    fails("Slice", [rand(3, 4), C(i64(0)), C(i64(1)), C(i64(0)), C(i64(0))], match="steps")
    fails("Slice", [rand(3, 4), C(i64(0, 1)), C(i64(1))], match="length")


# ---- Pad -----------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["constant", "reflect", "edge", "wrap"])
@pytest.mark.parametrize("pads,axes", [
    ((1, 2, 2, 1), None), ((0, 3, 0, 3), None), ((2, -1, 1, 0), None), ((1, 2), (-1,)),
    ((0, 0, 0, 0), None),
])
def test_pad(mode, pads, axes):
    x = rand(4, 5)
    inputs = [x, C(i64(*pads))]
    if mode == "constant":
        inputs.append(C(np.array(1.5, np.float32)))
    if axes is not None:
        if len(inputs) == 2:
            inputs.append(None)
        inputs.append(C(i64(*axes)))
    # onnx.reference's Pad rejects negative pads (crops); onnxruntime implements them.
    check("Pad", inputs, attrs={"mode": mode},
          oracle="onnxruntime" if min(pads) < 0 else "reference")


@pytest.mark.parametrize("dtype", [np.int64, np.float16, np.uint8])
def test_pad_dtypes(dtype):
    check("Pad", [rand(2, 3, 3, dtype=dtype), C(i64(0, 1, 1, 0, 2, 0))])


def test_pad_errors():
    fails("Pad", [rand(2, 3), C(i64(1, 1))], match="2 × 2")
    fails("Pad", [rand(2, 3), C(i64(0, -4, 0, 0))], match="negative size")
    fails("Pad", [rand(2, 3), C(i64(0, 0, 0, 0))], attrs={"mode": "mirror"}, match="mode")


# ---- Shape / Gather / Constant / ConstantOfShape / Cast --------------------------------------
@pytest.mark.parametrize("start,end", [(0, None), (1, None), (-2, None), (1, -1), (-10, 10),
                                       (3, 1)])
def test_shape(start, end):
    attrs = {"start": start} if end is None else {"start": start, "end": end}
    check("Shape", [rand(2, 3, 5, 7)], attrs=attrs)


def test_shape_publishes_constant_for_folding():
    g = build("Shape", [rand(2, 3)])
    known = infer_shapes(g)
    np.testing.assert_array_equal(known["out0"], [2, 3])


@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("indices", [np.array([0, -1, 2]), np.array([[1, 0], [-2, 2]]),
                                     np.array(1), np.array([], dtype=np.int64)])
def test_gather(axis, indices):
    check("Gather", [rand(3, 4, 5), C(indices.astype(np.int64))], attrs={"axis": axis})


def test_gather_int32_indices_runtime():
    check("Gather", [rand(5, 2, dtype=np.int64), np.array([4, -5, 0], np.int32)])


def test_gather_errors():
    fails("Gather", [rand(3, 4), C(i64(0, 3))], match="out of range")
    fails("Gather", [rand(3, 4), C(i64(-4))], match="out of range")
    fails("Gather", [rand(3, 4), C(i64(0))], attrs={"axis": 2}, match="out of range")


@pytest.mark.parametrize("onnx_attrs,ir_attrs", [
    ({"value": numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3))},
     {"value": np.arange(6, dtype=np.float32).reshape(2, 3)}),
    ({"value_float": 2.5}, {"value_float": 2.5}),
    ({"value_floats": [1.0, 2.0]}, {"value_floats": [1.0, 2.0]}),
    ({"value_int": 7}, {"value_int": 7}),
    ({"value_ints": [3, 4, 5]}, {"value_ints": [3, 4, 5]}),
])
def test_constant(onnx_attrs, ir_attrs):
    check("Constant", [], attrs=ir_attrs, onnx_attrs=onnx_attrs)


def test_constant_needs_one_value():
    fails("Constant", [], attrs={}, match="exactly one")


@pytest.mark.parametrize("value", [None, np.array([3], np.int64), np.array([1.5], np.float64),
                                   np.array([True])])
@pytest.mark.parametrize("shape", [(2, 3), (0,), ()])
def test_constant_of_shape(value, shape):
    attrs = {} if value is None else {"value": value}
    onnx_attrs = {} if value is None else {"value": numpy_helper.from_array(value)}
    check("ConstantOfShape", [C(np.array(shape, dtype=np.int64))], attrs=attrs,
          onnx_attrs=onnx_attrs)


def test_constant_of_shape_negative():
    fails("ConstantOfShape", [C(i64(2, -1))], match="negative")


CASTS = [(np.float32, np.int64), (np.float32, np.int8), (np.float64, np.float16),
         (np.float32, np.bool_), (np.bool_, np.float32), (np.int64, np.float32),
         (np.int32, np.int64), (np.uint8, np.float32), (np.float16, np.float32)]


@pytest.mark.parametrize("src,dst", CASTS)
def test_cast(src, dst):
    x = rand(3, 5, dtype=src)
    if np.dtype(src).kind == "f" and np.dtype(dst).kind in "iu":
        x = (x * 20).astype(src)  # stay inside the target range: out-of-range is undefined
    check("Cast", [x], attrs={"to": np.dtype(dst).name},
          onnx_attrs={"to": helper.np_dtype_to_tensor_dtype(np.dtype(dst))})


def test_cast_onnx_enum_accepted():
    (y,) = run_ember("Cast", [rand(2, 2)], attrs={"to": 7})
    assert y.dtype == np.int64


# ---- Dropout -------------------------------------------------------------------------------
def test_dropout_inference():
    x = rand(3, 4)
    check("Dropout", [x, C(np.array(0.3, np.float32))], n_out=2)


def test_dropout_training_masks_and_scales():
    x = np.ones((200, 50), np.float32)
    y, mask = run_ember("Dropout", [x, C(np.array(0.25, np.float32)), C(np.array(True))],
                        n_out=2, attrs={"seed": 3})
    assert mask.dtype == np.bool_
    np.testing.assert_allclose(y[mask], 1 / 0.75, rtol=1e-6)
    assert np.all(y[~mask] == 0)
    assert abs(mask.mean() - 0.75) < 0.02  # 10 000 Bernoulli draws: std ≈ 0.004
    assert not get_op("Dropout").foldable


# ---- Expand / Tile / Where / Equal / Range ---------------------------------------------------
@pytest.mark.parametrize("shape,target", [((3, 1), (2, 1, 6)), ((1,), (4,)), ((2, 3), (1, 1)),
                                          ((2, 1, 4), (3, 1))])
def test_expand(shape, target):
    check("Expand", [rand(*shape), C(np.array(target, np.int64))])


def test_expand_error():
    fails("Expand", [rand(3, 2), C(i64(3, 4))], match="broadcast")


@pytest.mark.parametrize("reps", [(1, 1), (2, 3), (0, 2)])
def test_tile(reps):
    check("Tile", [rand(3, 2, dtype=np.int64), C(i64(*reps))])


def test_where_and_compare():
    c = rand(3, 1, 4, dtype=np.bool_)
    check("Where", [c, rand(1, 5, 1), rand(3, 5, 4)])
    check("Equal", [rand(4, 3, dtype=np.int64) % 3, rand(3, dtype=np.int64) % 3])
    check("Less", [rand(2, 3), rand(3)])
    check("Greater", [rand(2, 3), rand(2, 1)])


@pytest.mark.parametrize("start,limit,delta,dtype", [
    (0, 10, 3, np.int64), (10, 0, -3, np.int32), (1.0, 2.0, 0.3, np.float32),
    (5, 5, 1, np.int64), (0.0, -1.0, 1.0, np.float64)])
def test_range(start, limit, delta, dtype):
    check("Range", [C(np.array(v, dtype)) for v in (start, limit, delta)], rtol=1e-6)


# ---- Resize --------------------------------------------------------------------------------
COORDS = ["half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners",
          "asymmetric"]
# Resize sums taps in float64 in another order than the reference: 1e-5 covers float32 output.
RTOL, ATOL = 1e-5, 1e-5


def resize(x, scales=None, sizes=None, roi=None, oracle="reference", **attrs):
    inputs = [x, C(np.array(roi, np.float32)) if roi is not None else None,
              C(np.array(scales, np.float32)) if scales is not None else None]
    if sizes is not None:
        inputs.append(C(np.array(sizes, np.int64)))
    return check("Resize", inputs, attrs=attrs, rtol=RTOL, atol=ATOL, oracle=oracle)


@pytest.mark.parametrize("coord", COORDS)
@pytest.mark.parametrize("nearest_mode", ["round_prefer_floor", "round_prefer_ceil", "floor",
                                          "ceil"])
@pytest.mark.parametrize("k", [0, 1, 2])
def test_resize_nearest(coord, nearest_mode, k):
    scales = [(1, 1, 2.0, 3.0), (1, 1, 0.6, 0.5), (1, 1, 1.7, 0.8)][k]
    if coord == "half_pixel_symmetric":
        # Those scales put half_pixel_symmetric coordinates within 1e-8 of a rounding tie,
        # where onnx.reference (float64, padded coordinates) and onnxruntime (float32) disagree
        # with each other; use scales with no near-ties, where both oracles agree.
        scales = [(1, 1, 1.3, 0.7), (1, 1, 0.9, 1.45), (1, 1, 2.5, 0.65)][k]
    resize(rand(1, 2, 5, 7), scales=scales, mode="nearest", nearest_mode=nearest_mode,
           coordinate_transformation_mode=coord)


@pytest.mark.parametrize("mode", ["linear", "cubic"])
@pytest.mark.parametrize("coord", COORDS)
@pytest.mark.parametrize("sizes", [(2, 3, 9, 4), (2, 3, 3, 13), (2, 3, 1, 5)])
def test_resize_linear_cubic_sizes(mode, coord, sizes):
    if coord == "pytorch_half_pixel" and mode == "cubic" and 1 in sizes:
        # Spec and onnxruntime map a length-1 output to coordinate 0; onnx.reference uses -0.5.
        sizes = (2, 3, 2, 5)
    resize(rand(2, 3, 6, 7), sizes=sizes, mode=mode, coordinate_transformation_mode=coord)


@pytest.mark.parametrize("mode", ["linear", "cubic"])
@pytest.mark.parametrize("exclude_outside", [0, 1])
@pytest.mark.parametrize("scales", [(1, 1, 0.5, 0.75), (1, 1, 2.5, 1.3)])
def test_resize_cubic_options(mode, exclude_outside, scales):
    resize(rand(1, 2, 8, 9), scales=scales, mode=mode, exclude_outside=exclude_outside,
           cubic_coeff_a=-0.5)


@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
def test_resize_tf_crop_and_resize(mode):
    resize(rand(1, 1, 6, 5), sizes=(1, 1, 4, 7), roi=(0, 0, 0.2, -0.3, 1, 1, 1.3, 0.9),
           mode=mode, coordinate_transformation_mode="tf_crop_and_resize",
           extrapolation_value=7.0)


def test_resize_tf_crop_axes():
    resize(rand(1, 1, 6, 5), sizes=(3, 3), roi=(0.4, 0.6, 0.6, 0.8), axes=[2, 3],
           mode="linear", coordinate_transformation_mode="tf_crop_and_resize")


@pytest.mark.parametrize("policy", ["stretch", "not_larger", "not_smaller"])
@pytest.mark.parametrize("axes", [None, [2, 3], [3, 2]])
def test_resize_keep_aspect(policy, axes):
    sizes = (7, 8) if axes else (1, 2, 7, 8)
    attrs = {"keep_aspect_ratio_policy": policy, "mode": "linear"}
    if axes:
        attrs["axes"] = axes
    resize(rand(1, 2, 4, 6), sizes=sizes, **attrs)


def test_resize_negative_axes():
    # onnx.reference does not normalize negative axes; onnxruntime does (stretch only: its
    # keep_aspect_ratio_policy with negative axes leaves the shape unchanged).
    resize(rand(1, 2, 4, 6), sizes=(7, 8), axes=[-1, -2], mode="linear", oracle="onnxruntime")


@pytest.mark.parametrize("mode", ["linear", "cubic"])
@pytest.mark.parametrize("scales", [(1, 1, 0.6, 0.35), (1, 1, 1.5, 0.7)])
def test_resize_antialias(mode, scales):
    resize(rand(1, 2, 10, 13), scales=scales, mode=mode, antialias=1)


def test_resize_3d_linear_and_ints():
    resize(rand(1, 1, 4, 5, 3), scales=(1, 1, 1.5, 0.6, 2.0), mode="linear")
    resize(rand(1, 2, 5, 5, dtype=np.uint8), scales=(1, 1, 1.6, 0.6), mode="cubic")
    resize(rand(1, 2, 5, 5, dtype=np.int8), scales=(1, 1, 2.0, 2.0), mode="nearest")
    resize(rand(1, 2, 3, 4, dtype=np.float16), sizes=(1, 2, 7, 3), mode="linear")


def test_resize_errors():
    x = rand(1, 1, 4, 4)
    fails("Resize", [x, None, C(np.array([1, 1, 2], np.float32))], match="one entry")
    fails("Resize", [x, None, C(np.array([1, 1, 2, -2], np.float32))], match="positive")
    fails("Resize", [x], match="exactly one")
    fails("Resize", [x, None, C(np.array([1, 1, 2, 2], np.float32))],
          attrs={"mode": "area"}, match="mode")
    fails("Resize", [x, None, C(np.array([2, 2], np.float32))], attrs={"axes": [2, 4]},
          match="out of range")


# ---- whole-graph behaviour: folding and symbolic dims -----------------------------------------
def test_pytorch_flatten_chain_folds_to_a_static_reshape():
    """x.view(x.size(0), -1): Shape → Gather(0) → Unsqueeze → Concat([-1]) → Reshape."""
    g = Graph(name="chain", inputs=["x"], outputs=["y"],
              types={"x": TensorType(np.float32, (4, 3, 5))},
              initializers={"zero": np.array(0, np.int64), "ax0": i64(0), "minus1": i64(-1)})
    g.add_node("Shape", ["x"], ["s"])
    g.add_node("Gather", ["s", "zero"], ["n"], axis=0)
    g.add_node("Unsqueeze", ["n", "ax0"], ["n1"])
    g.add_node("Concat", ["n1", "minus1"], ["target"], axis=0)
    g.add_node("Reshape", ["x", "target"], ["y"])
    known = infer_shapes(g)
    np.testing.assert_array_equal(known["target"], [4, -1])
    assert g.types["y"] == TensorType(np.float32, (4, 15))


def test_symbolic_batch_dim_flows_through():
    g = build("Transpose", [rand(2, 3)], attrs={"perm": [1, 0]})
    g.types["in0"] = TensorType(np.float32, ("N", 3))
    infer_shapes(g)
    assert g.types["out0"].shape == (3, "N")
    g = build("Reshape", [rand(2, 3, 4), C(i64(0, -1))])
    g.types["in0"] = TensorType(np.float32, ("N", 3, 4))
    infer_shapes(g)
    assert g.types["out0"].shape[0] == "N"


def test_view_flags():
    for op in ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"):
        assert get_op(op).view, op
    for op in ("Dropout", "Transpose", "Slice", "Resize"):
        assert not get_op(op).view, op


def test_gather_runtime_indices_out_of_range_is_an_input_error():
    from ember.graph.errors import InputError
    g = build("Gather", [rand(3, 2), i64(0, 3)])
    infer_shapes(g)
    with pytest.raises(InputError, match="my_Gather"):
        get_op("Gather").compute(g.nodes[0], [rand(3, 2), i64(0, 3)])


def test_scalar_transpose_stays_scalar():
    check("Transpose", [np.array(3.5, np.float32)])
