"""Every class of issue 19 §4, one small hostile model per case: a failure is exactly the ember
error the class calls for (``type(e) is …``, not a subclass nor a foreign exception), raised at
load, before allocating anything large, with a message naming the node (or initializer, or
input), the op and the attribute at fault; a zero-size edge case ONNX defines gives the answer
onnxruntime gives.

The classes: wrong-kind attributes and missing inputs/outputs in the opset upgrades, tensors of
more dims than numpy allows, element counts that overflow, geometry past a kernel's index type
(and numpy references whose padded image would be enormous), zero-size edge cases, and Gather
with a 0-d index. Oracles: onnxruntime on the same bytes, numpy.
"""
from __future__ import annotations

import tracemalloc
from types import SimpleNamespace

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import ember
from ember import ModelError, ShapeError
from ember.graph.ops import REGISTRY
from ember.importers.onnx import UPGRADE_TARGETS, UPGRADES

BIG = 1 << 40
INT32_PAST = 1 << 31
INT64_MAX = (1 << 63) - 1
# a refusal must come before allocating: far below any of the refused tensors' sizes
PEAK_BYTES = 64 << 20


def vi(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def const(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def ints(name, values):
    return const(name, np.array(values, np.int64))


def model(nodes, inputs, outputs=None, inits=(), opset=17, ir_version=8) -> bytes:
    outputs = outputs or [vi(nodes[-1].output[0], None)]
    g = helper.make_graph(nodes, "case", inputs, outputs, initializer=list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = ir_version
    return m.SerializeToString()


def node(op, inputs, outputs=("y",), name="n", **attrs):
    return helper.make_node(op, list(inputs), list(outputs), name=name, **attrs)


def x_of(shape, elem=TensorProto.FLOAT):
    return [vi("x", list(shape), elem)]


def old(op, inputs, outputs, opset, **attrs):
    """``op`` at an old opset (the importer's upgrade path), x[2, 3, 4] fed."""
    return model([node(op, inputs, outputs, **attrs)], x_of((2, 3, 4)), [vi("y", None)],
                 opset=opset, ir_version=3)


def unsqueeze_chain(length):
    nodes, prev = [], "x"
    for k in range(length):
        nodes.append(node("Unsqueeze", [prev, "zero"], [f"u{k}"], name=f"u{k}"))
        prev = f"u{k}"
    return model(nodes, x_of((2,)), inits=[ints("zero", [0])])


def initializer_of_rank(rank):
    w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1] * rank, float_data=[1.0])
    return model([node("Add", ["x", "w"])], x_of((1,)), inits=[w])


def window(op, x_shape, name="pool", inits=(), **attrs):
    inputs = ["x"] + [t.name for t in inits]
    return model([node(op, inputs, name=name, **attrs)], x_of(x_shape), inits=inits)


def conv(x_shape, w_shape, **attrs):
    return window("Conv", x_shape, name="conv",
                  inits=[const("w", np.ones(w_shape, np.float32))], **attrs)


# case -> (model bytes, the exact error type, regex the message must match)
REFUSED = {
    # §4: attributes of the wrong kind or non-finite in the opset upgrades (fixed before)
    "upgrade: Softmax-11 axis a list": (old("Softmax", ["x"], ["y"], 11, axis=[1]),
                                        ModelError, "Softmax node 'n'.*'axis'.*an int"),
    "upgrade: Clip-6 max NaN": (old("Clip", ["x"], ["y"], 6, max=float("nan")),
                                ModelError, "Clip node 'n'.*'max'.*NaN"),
    "upgrade: Pad-2 pads a string": (old("Pad", ["x"], ["y"], 2, pads="all"),
                                     ModelError, "Pad node 'n'.*'pads'.*list of ints"),
    # §4: missing inputs or outputs at old opsets
    "upgrade: Softmax-11 without input": (old("Softmax", [], ["y"], 11, axis=0),
                                          ModelError, "Softmax node 'n'.*input 0"),
    "upgrade: Add-6 broadcast without input": (old("Add", [], ["y"], 6, broadcast=1, axis=0),
                                               ModelError, "Add node 'n'.*input 0"),
    "upgrade: Upsample-7 without input": (old("Upsample", [], ["y"], 7, scales=[1.0, 2.0]),
                                          ModelError, "Upsample node 'n'.*input 0"),
    "upgrade: Clip-6 with an empty input name": (old("Clip", [""], ["y"], 6, min=0.0),
                                                 ModelError, "Clip node 'n'.*input 0"),
    "upgrade: Softmax-11 without output": (old("Softmax", ["x"], [], 11, axis=0),
                                           ModelError, "Softmax node 'n'.*output 0"),
    "upgrade: Split-11 without outputs": (old("Split", ["x"], [], 11, axis=0),
                                          ModelError, "Split node 'n'.*output 0"),
    # §4: more dims than numpy allows
    "rank: initializer of 65 dims": (initializer_of_rank(65), ModelError,
                                     "initializer 'w' has 65 dims"),
    "rank: graph input of 65 dims": (model([node("Relu", ["x"])], x_of([1] * 65)),
                                     ShapeError, "graph input 'x' has 65 dims"),
    "rank: Reshape to 65 ones": (model([node("Reshape", ["x", "s"])], x_of((1,)),
                                       inits=[ints("s", [1] * 65)]),
                                 ShapeError, "Reshape node 'n'.*'y'.*65 dims"),
    "rank: Unsqueeze chain past 64": (unsqueeze_chain(70), ShapeError,
                                      "Unsqueeze node 'u63'.*65 dims"),
    # §4: element counts that overflow (int64, the address space)
    "count: ConstantOfShape 2^30 cubed": (
        model([node("ConstantOfShape", ["s"])], [], inits=[ints("s", [1 << 30] * 3)]),
        ShapeError, r"ConstantOfShape node 'n'.*\(1073741824, 1073741824, 1073741824\)"),
    "count: ConstantOfShape 2^40 squared": (
        model([node("ConstantOfShape", ["s"])], [], inits=[ints("s", [BIG, BIG])]),
        ShapeError, "ConstantOfShape node 'n'.*1099511627776"),
    "count: Expand 2^20 to the 4th": (
        model([node("Expand", ["x", "s"])], x_of((1,)), inits=[ints("s", [1 << 20] * 4)]),
        ShapeError, r"Expand node 'n'.*\(1048576, 1048576, 1048576, 1048576\)"),
    "count: Tile 2^40 repeats": (
        model([node("Tile", ["x", "r"])], x_of((2, 2)), inits=[ints("r", [BIG, BIG])]),
        ShapeError, "Tile node 'n'.*2199023255552"),
    "count: Reshape 2^40 squared": (
        model([node("Reshape", ["x", "s"])], x_of((4,)), inits=[ints("s", [BIG, BIG, 0])]),
        ShapeError, "Reshape node 'n'"),
    # ... an empty tensor too: numpy refuses a shape whose non-zero dims overflow
    "count: Resize to 0 × 10^9 × 10^9": (
        model([node("Resize", ["x", "", "sc"])], x_of((2, 2, 1, 1, 1)),
              inits=[const("sc", np.array([1, 1, 1e-9, 1e9, 1e9], np.float32))], opset=19),
        ShapeError, r"Resize node 'n'.*'y'.*\(2, 2, 0, 1000000000, 1000000000\)"),
    "count: initializer of 0 × 2^40 × 2^40": (
        model([node("Add", ["x", "w"])], x_of((1,)),
              inits=[TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[0, BIG, BIG])]),
        ModelError, "initializer 'w'.*spans"),
    "count: graph input of 0 × 2^30 × 2^30 × 2^30": (
        model([node("Relu", ["x"])], x_of((0, 1 << 30, 1 << 30, 1 << 30))),
        ShapeError, "graph input 'x' would span"),
    # §4: geometry past a kernel's index type, refused at load (the binders run then)
    "geometry: Conv strides past int32": (conv((1, 1, 4, 4), (1, 1, 1, 1),
                                               strides=[INT32_PAST, 1]),
                                          ShapeError, "Conv node 'conv'.*'strides'.*int32"),
    "geometry: ConvTranspose strides past int32": (
        model([node("ConvTranspose", ["x", "w"], strides=[INT32_PAST, 1],
                    pads=[1 << 30, 0, 1 << 30, 0])], x_of((1, 1, 2, 2)),
              inits=[const("w", np.ones((1, 1, 1, 1), np.float32))]),
        ShapeError, "ConvTranspose node 'n'.*'strides'.*int32"),
    "geometry: MaxPool strides past int64": (window("MaxPool", (1, 1, 2, 2), kernel_shape=[1, 1],
                                                    strides=[INT64_MAX, 1]),
                                             ShapeError, "MaxPool node 'pool'.*'strides'.*int64"),
    "geometry: AveragePool-1d strides past int64": (
        window("AveragePool", (1, 1, 2), kernel_shape=[1], strides=[INT64_MAX]),
        ShapeError, "AveragePool node 'pool'.*'strides'.*int64"),
    "geometry: LRN size past int32": (
        model([node("LRN", ["x"], size=INT32_PAST)], x_of((1, 3, 2, 2))),
        ShapeError, r"LRN node 'n'.*'size' in \[1, 2147483647\]"),
    # ... and numpy references (3-D, float64, dilated average) whose padded image is enormous
    "geometry: Conv-3d pads 2^29, dilation 2^30": (
        conv((1, 1, 2, 2, 2), (1, 1, 2, 1, 1), dilations=[1 << 30, 1, 1],
             pads=[1 << 29, 0, 0, 1 << 29, 0, 0]),
        ModelError, "Conv node 'conv'.*numpy reference.*bytes of temporaries"),
    "geometry: MaxPool-3d pads 2^29, dilation 2^30": (
        window("MaxPool", (1, 1, 2, 2, 2), kernel_shape=[2, 1, 1], dilations=[1 << 30, 1, 1],
               pads=[1 << 29, 0, 0, 1 << 29, 0, 0]),
        ModelError, "MaxPool node 'pool'.*numpy reference.*bytes of temporaries"),
    "geometry: AveragePool dilation 2^30": (
        window("AveragePool", (1, 1, 2, 2), kernel_shape=[2, 1], dilations=[1 << 30, 1],
               pads=[1 << 29, 0, 1 << 29, 0]),
        ModelError, "AveragePool node 'pool'.*numpy reference.*bytes of temporaries"),
    "geometry: ConvTranspose pads past the output": (
        model([node("ConvTranspose", ["x", "w"], strides=[1 << 30, 1, 1],
                    pads=[(1 << 30) - 2, 0, 0, (1 << 30) - 2, 0, 0])], x_of((1, 1, 2, 2, 2)),
              inits=[const("w", np.ones((1, 1, 1, 1, 1), np.float32))]),
        ShapeError, "ConvTranspose node 'n'.*output size"),
    # §4: zero-size edge cases ONNX leaves undefined (onnxruntime refuses them too)
    "zero-size: MatMul K=0, batch dims 2 vs 4": (
        model([node("MatMul", ["a", "b"])], [vi("a", [2, 3, 0]), vi("b", [4, 0, 5])]),
        ShapeError, r"MatMul node 'n'.*broadcast.*\(2,\) and \(4,\)"),
    "zero-size: GlobalMaxPool over an empty axis": (
        window("GlobalMaxPool", (1, 2, 0, 3)), ShapeError, "GlobalMaxPool node 'pool'.*empty"),
    "zero-size: GlobalAveragePool over an empty axis": (
        window("GlobalAveragePool", (1, 2, 3, 0)), ShapeError,
        "GlobalAveragePool node 'pool'.*empty"),
    "zero-size: MaxPool over an empty axis": (
        window("MaxPool", (1, 2, 0, 3), kernel_shape=[1, 1]), ShapeError,
        "MaxPool node 'pool'.*window"),
    "zero-size: ReduceMean over an empty axis": (
        model([node("ReduceMean", ["x", "ax"])], x_of((2, 0)), inits=[ints("ax", [1])],
              opset=18),
        ShapeError, "ReduceMean node 'n'.*empty set is undefined"),
    "zero-size: Pad cropping past an axis to a negative size": (
        model([node("Pad", ["x", "p"])], x_of((2, 3)), inits=[ints("p", [0, -2, 0, -2])]),
        ShapeError, "Pad node 'n'.*negative size"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_hostile_model_is_refused_at_load_with_the_class_error(case):
    data, error, pattern = REFUSED[case]
    tracemalloc.start()
    try:
        with pytest.raises(ember.EmberError) as exc:
            ember.load(data, memory_cap=1 << 30)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert type(exc.value) is error, f"{type(exc.value).__name__}: {exc.value}"
    assert exc.match(pattern)
    assert peak < PEAK_BYTES


def _takes_inputs(op):
    target = UPGRADE_TARGETS.get(op, (op,))[0]
    return REGISTRY[("", target)].num_inputs[0] >= 1


@pytest.mark.parametrize("missing", ["input", "output"])
@pytest.mark.parametrize("op", sorted(UPGRADES))
def test_every_upgrade_path_refuses_a_node_without_its_first_input_or_output(op, missing):
    """Each old form the importer rewrites reads input 0 and output 0: a node lacking one
    (absent, or an empty name) is a ModelError naming it, at opset 6 as at 12."""
    if missing == "input" and not _takes_inputs(op):
        pytest.skip(f"{op} takes no input")
    inputs = [] if missing == "input" or not _takes_inputs(op) else ["x"]
    outputs = [""] if missing == "output" else ["y"]
    for opset in (6, 12):
        data = model([node(op, inputs, outputs)], x_of((2, 3, 4)), [vi("x", None)],
                     opset=opset, ir_version=3)
        with pytest.raises(ModelError, match=f"{op} node 'n'.*{missing} 0 is required") as exc:
            ember.load(data)
        assert type(exc.value) is ModelError


def _f32(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _slice(starts, ends, axes=None, steps=None):
    inits = [ints("st", starts), ints("en", ends)]
    inits += [ints("ax", axes)] if axes is not None else []
    inits += [ints("sp", steps)] if steps is not None else []
    return model([node("Slice", ["x"] + [t.name for t in inits])], x_of((2, 3)), inits=inits)


# case -> (model bytes, feeds): zero-size edge cases ONNX defines, and what the classes above
# must still run (huge Slice steps, a 0-d Gather index)
ANSWERED = {
    "MatMul K=0 with broadcast batch": (
        model([node("MatMul", ["a", "b"])], [vi("a", [2, 1, 3, 0]), vi("b", [4, 0, 5])]),
        {"a": np.ones((2, 1, 3, 0), np.float32), "b": np.ones((4, 0, 5), np.float32)}),
    "MatMul K=0, batched A times one matrix": (
        model([node("MatMul", ["a", "b"])], [vi("a", [3, 2, 0]), vi("b", [0])]),
        {"a": np.ones((3, 2, 0), np.float32), "b": np.ones((0,), np.float32)}),
    "ReduceMax over an empty axis": (
        model([node("ReduceMax", ["x", "ax"], keepdims=1)], x_of((2, 0)),
              inits=[ints("ax", [1])], opset=18),
        {"x": np.ones((2, 0), np.float32)}),
    "Pad crops past an axis, then pads": (
        model([node("Pad", ["x", "p", "c"])], x_of((2, 3)),
              inits=[ints("p", [0, -5, 0, 4]), const("c", np.array(7.0, np.float32))]),
        {"x": _f32((2, 3))}),
    "Pad pads, then crops past the padding": (
        model([node("Pad", ["x", "p"])], x_of((2, 3)), inits=[ints("p", [1, 4, 0, -6])]),
        {"x": _f32((2, 3))}),
    "Concat with an empty piece": (
        model([node("Concat", ["x", "z", "x"], axis=1)], [vi("x", [2, 3]), vi("z", [2, 0])]),
        {"x": _f32((2, 3)), "z": np.ones((2, 0), np.float32)}),
    "Split into an empty piece": (
        model([node("Split", ["x", "s"], ["y", "z"], axis=1)], x_of((2, 3)),
              [vi("y", None), vi("z", None)], inits=[ints("s", [3, 0])]),
        {"x": _f32((2, 3))}),
    "Slice to nothing": (_slice([1], [1]), {"x": _f32((2, 3))}),
    "Slice step 2^40": (_slice([0], [3], [1], [BIG]), {"x": _f32((2, 3))}),
    "Slice step -2^62": (_slice([-1], [-(1 << 62)], [1], [-(1 << 62)]), {"x": _f32((2, 3))}),
    "Conv with 0 input channels": (conv((1, 0, 4, 4), (2, 0, 3, 3)),
                                   {"x": np.ones((1, 0, 4, 4), np.float32)}),
    "rank 64 (numpy's limit) still runs": (
        model([node("Reshape", ["x", "s"], ["t"], name="r"), node("Add", ["t", "b"], ["u"]),
               node("ReduceSum", ["u"], keepdims=0, name="sum")], x_of((2,)),
              inits=[ints("s", [1] * 63 + [2]), const("b", np.ones([1] * 62 + [3, 1],
                                                                   np.float32))]),
        {"x": _f32((2,))}),
    "Gather with a 0-d constant index": (
        model([node("Gather", ["x", "i"], axis=1)], x_of((2, 3)),
              inits=[const("i", np.array(2, np.int64))]),
        {"x": _f32((2, 3))}),
}


# 0-d tensors onnxruntime refuses (rank > 0 required) while ONNX defines them: numpy's answer
SCALAR = np.array(3.5, np.float32)
ZERO_D = {
    "Pad with no pads": (model([node("Pad", ["x", "p"])], x_of(()), inits=[ints("p", [])]),
                         SCALAR),
    "ReduceMax over axis 0": (model([node("ReduceMax", ["x", "ax"])], x_of(()),
                                    inits=[ints("ax", [0])], opset=18), np.max(SCALAR)),
}


@pytest.mark.parametrize("case", sorted(ZERO_D))
def test_zero_d_tensor_answers_like_numpy(case):
    data, want = ZERO_D[case]
    (got,) = ember.load(data).run(None, {"x": SCALAR})
    assert got.shape == () and got.dtype == np.float32 and got == want


@pytest.mark.parametrize("case", sorted(ANSWERED))
def test_defined_edge_case_answers_like_onnxruntime(case):
    data, feeds = ANSWERED[case]
    want = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)
    got = ember.load(data).run(None, feeds)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_array_equal(g, w)


def test_batched_matmul_rows_past_the_gemm_int_run_matrix_by_matrix(monkeypatch):
    """A batch of A matrices times one B folds into one GEMM of batch·M rows, which the kernel
    takes as a C int: past it (8 GB of float32 rows, here a bound lowered to 5) each matrix is
    its own product, with the same answer."""
    from ember.runtime.binders import linear
    rows = []

    def counting_gemm(a, *args):
        rows.append(a.shape[0])
        return real_gemm(a, *args)
    real_gemm = linear.gemm.gemm
    monkeypatch.setattr(linear, "GEMM_MAX_DIM", 5)
    monkeypatch.setattr(linear, "gemm", SimpleNamespace(gemm=counting_gemm))
    a, b = _f32((3, 4, 2), seed=1), _f32((2, 6), seed=2)
    data = model([node("MatMul", ["a", "b"])], [vi("a", [3, 4, 2]), vi("b", [2, 6])])
    (y,) = ember.load(data).run(None, {"a": a, "b": b})
    np.testing.assert_allclose(y, a @ b, rtol=1e-6, atol=1e-6)
    assert rows == [4, 4, 4]
