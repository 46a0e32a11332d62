"""Resize's native path (kernels/resize.pyx, runtime/binders/resize.py) against onnxruntime:
nearest and linear, the coordinate and nearest modes torch/YOLO exports write, integer-factor
upsamples (the block path), odd sizes, scales < 1, sizes inputs, empty batches, and attributes
the kernel does not cover falling back to the reference.

Tolerance: nearest copies pixels (exact); linear sums two taps per axis in float32 where
onnxruntime also computes in float32 in another order: rtol 1e-5, atol 1e-6 on N(0, 1) data."""
import tracemalloc

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import ember
from ember.kernels import resize as kernel

RTOL, ATOL = 1e-5, 1e-6


def resize_model(in_shape, out_shape, scales=None, sizes=None, opset=19, **attrs):
    inits, inputs = [], ["x", "", "", ""]
    if scales is not None:
        inits.append(numpy_helper.from_array(np.array(scales, np.float32), "scales"))
        inputs[2] = "scales"
    if sizes is not None:
        inits.append(numpy_helper.from_array(np.array(sizes, np.int64), "sizes"))
        inputs[3] = "sizes"
    while inputs[-1] == "":
        inputs.pop()
    graph = helper.make_graph(
        [helper.make_node("Resize", inputs, ["y"], name="resize", **attrs)], "t",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                       None if out_shape is None else list(out_shape))], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    return model.SerializeToString()


def step_kinds(sess):
    """The kind of every Resize step of the compiled plan: the kernel step's ``kind``, or
    'reference' for the numpy path."""
    ctx = sess.compile().new_context()
    return [getattr(step, "kind", "reference") for node, step in ctx.steps
            if node.op_type == "Resize"]


def oracle_output(model, x, oracle):
    if oracle == "onnxruntime":
        sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        return sess.run(None, {"x": x})[0]
    from onnx import load_from_string
    from onnx.reference import ReferenceEvaluator
    return ReferenceEvaluator(load_from_string(model)).run(None, {"x": x})[0]


def check(x, out_shape, threads=2, oracle=None, **kw):
    """ember vs an oracle on one Resize node: onnxruntime where every scale is a multiple of
    1/4 giving a whole output length; else onnx.reference. There the two disagree: onnxruntime's
    align_corners and pytorch_half_pixel use the floored output length where the ONNX spec uses
    the exact one, and it computes coordinates in float32 where the spec (and ember) use
    float64 — an inexact scale like 0.6 then puts a coordinate on the other side of an integer."""
    model = resize_model(x.shape, out_shape, **kw)
    sess = ember.load(model, threads=threads)
    (got,) = sess.run(None, {"x": x})
    scales = kw.get("scales")
    if oracle is None:
        dyadic = scales is None or all(float(4 * s).is_integer() for s in scales)
        oracle = "onnxruntime" if scales is None or dyadic and all(
            float(d * s).is_integer()
            for d, s in zip(x.shape[-len(scales):], scales)) else "reference"
        if kw.get("coordinate_transformation_mode") == "half_pixel_symmetric":
            if not dyadic:
                pytest.skip("no oracle: onnxruntime rounds in float32, onnx.reference (1.23) "
                            "shifts half_pixel_symmetric downscales by a pixel")
            oracle = "onnxruntime"
    want = oracle_output(model, x, oracle)
    assert got.shape == want.shape
    tol = (0, 0) if kw.get("mode", "nearest") == "nearest" else (RTOL, ATOL)
    np.testing.assert_allclose(got, want, rtol=tol[0], atol=tol[1])
    return sess


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def out_of(shape, scales):
    return [int(d * s) for d, s in zip(shape, scales)]


@pytest.mark.parametrize("shape", [(1, 3, 5, 7), (2, 4, 8, 8), (1, 1, 1, 1), (3, 2, 13, 6)])
@pytest.mark.parametrize("factor", [(2, 2), (3, 3), (2, 3), (1, 2), (4, 1)])
def test_nearest_integer_upsample_takes_the_block_path(shape, factor):
    """torch's nn.Upsample(scale_factor=f, mode='nearest'): asymmetric + floor."""
    scales = [1, 1, *factor]
    check(rand(*shape), out_of(shape, scales), scales=scales, mode="nearest",
          coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    compiled = ember.load(resize_model(shape, out_of(shape, scales), scales=scales,
                                       mode="nearest",
                                       coordinate_transformation_mode="asymmetric",
                                       nearest_mode="floor"), threads=1)
    assert step_kinds(compiled) == ["nearest_blocks"]
    ctx = compiled.compile().new_context()
    assert all(hasattr(step, "_native") for node, step in ctx.steps)   # the plan stays in C


COORDS = ["half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric",
          "half_pixel_symmetric"]
NEAREST = ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"]


@pytest.mark.parametrize("coord", COORDS)
@pytest.mark.parametrize("nearest_mode", NEAREST)
@pytest.mark.parametrize("scales", [(1, 1, 2.0, 2.0), (1, 1, 0.5, 0.6), (1, 1, 1.7, 0.8),
                                    (1, 1, 3.0, 1.0)])
def test_nearest_modes(coord, nearest_mode, scales):
    shape = (2, 3, 7, 9)
    check(rand(*shape), out_of(shape, scales), scales=scales, mode="nearest",
          coordinate_transformation_mode=coord, nearest_mode=nearest_mode)


@pytest.mark.parametrize("coord", COORDS)
@pytest.mark.parametrize("scales", [(1, 1, 2.0, 2.0), (1, 1, 0.5, 0.5), (1, 1, 1.5, 0.75),
                                    (1, 1, 3.0, 1.0), (1, 1, 0.3, 2.5)])
def test_linear_modes(coord, scales):
    shape = (2, 3, 11, 10)
    check(rand(*shape), out_of(shape, scales), scales=scales, mode="linear",
          coordinate_transformation_mode=coord)


@pytest.mark.parametrize("mode", ["nearest", "linear"])
@pytest.mark.parametrize("sizes", [(1, 4, 9, 13), (1, 4, 1, 1), (1, 4, 40, 3), (1, 4, 5, 6)])
def test_sizes_input(mode, sizes):
    """Odd target sizes given as `sizes` (the factor is out/in, not a rounded float)."""
    check(rand(1, 4, 5, 6), sizes, sizes=sizes, mode=mode,
          coordinate_transformation_mode="align_corners" if mode == "linear" else "asymmetric")


@pytest.mark.parametrize("threads", [1, 2])
def test_large_planes_split_over_threads(threads):
    """Enough work to pass threads_for's threshold: the plane tasks run on the pool."""
    x = rand(1, 64, 20, 20)
    for mode, coord in (("nearest", "asymmetric"), ("linear", "half_pixel")):
        check(x, [1, 64, 40, 40], threads=threads, scales=[1, 1, 2, 2], mode=mode,
              coordinate_transformation_mode=coord, nearest_mode="floor")
    # not a whole factor: the gathered-row nearest path
    sess = check(x, [1, 64, 30, 50], threads=threads, scales=[1, 1, 1.5, 2.5], mode="nearest",
                 coordinate_transformation_mode="half_pixel")
    assert step_kinds(sess) == ["nearest"]


def test_rank3_and_axes_attribute():
    """The last two axes of any rank ≥ 2; `axes` naming just them (opset 18+)."""
    x = rand(3, 5, 6)
    check(x, [3, 10, 12], scales=[1, 2, 2], mode="linear")
    check(rand(2, 3, 5, 6), [2, 3, 10, 3], scales=[2, 0.5], axes=[2, 3], mode="nearest")


def test_batch_zero_gives_an_empty_output():
    model = resize_model((0, 3, 4, 4), (0, 3, 8, 8), scales=[1, 1, 2, 2], mode="nearest")
    (y,) = ember.load(model, threads=2).run(None, {"x": np.zeros((0, 3, 4, 4), np.float32)})
    assert y.shape == (0, 3, 8, 8)


@pytest.mark.parametrize("attrs", [dict(mode="cubic"), dict(mode="linear", antialias=1),
                                   dict(mode="nearest", scales=[1, 2, 2, 2])])
def test_uncovered_cases_fall_back_to_the_reference(attrs):
    attrs = dict(attrs)
    scales = attrs.pop("scales", [1, 1, 0.5, 0.5])
    shape = (1, 2, 8, 8)
    model_kw = dict(scales=scales, **attrs)
    check(rand(*shape), out_of(shape, scales), **model_kw)
    sess = ember.load(resize_model(shape, out_of(shape, scales), **model_kw), threads=1)
    assert step_kinds(sess) == ["reference"]


@pytest.mark.parametrize("scales", [[1, 1, 1e10, 1e10], [1, 1, 3e9, 1], [1, 1, 1e5, 1e5]])
def test_huge_scales_are_refused_before_any_allocation(scales):
    """An output past the kernels' index range (ShapeError) or past memory (the arena refused,
    ModelError) is refused at load with ember's error naming the node — nothing of its size
    is allocated, neither the output nor the kernel's tap tables."""
    model = resize_model((1, 1, 3, 4), None, scales=scales, mode="nearest")
    tracemalloc.start()
    try:
        with pytest.raises(ember.ModelError, match="Resize node 'resize'"):
            ember.load(model, threads=1).run(None, {"x": rand(1, 1, 3, 4)})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20


def test_kernel_taps_match_the_reference_formulas():
    """The tables straight from the module: align_corners 3 → 5 is 0, .5, 1, 1.5, 2."""
    i0, i1, w0, w1 = kernel.linear_taps(kernel.COORDINATE_MODES.index("align_corners"), 5, 3,
                                        5 / 3)
    x = np.array([1.0, 2.0, 4.0], np.float32)
    np.testing.assert_allclose(w0 * x[i0] + w1 * x[i1], [1, 1.5, 2, 3, 4])
    idx = kernel.nearest_taps(kernel.COORDINATE_MODES.index("asymmetric"), 2, 6, 3, 2.0)
    np.testing.assert_array_equal(idx, [0, 0, 1, 1, 2, 2])
