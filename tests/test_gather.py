"""Gather over index ranks 0–3, constant and fed, negative indices, axes 0, 1 and −1, against
onnxruntime. A constant 0-d index is what PyTorch's ONNX exporters write for ``x[:, 0]``."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import ember

DATA_SHAPE = (3, 4, 5)


def indices(rank, dim, rng):
    """Indices of ``rank`` dims (0-d for rank 0) in [−dim, dim), negatives included."""
    shape = (2, 3, 2)[:rank]
    idx = rng.integers(-dim, dim, size=shape).astype(np.int64)
    if rank:
        idx.reshape(-1)[0] = -1
    return np.asarray(idx)


def gather_model(idx, axis, fed):
    data = helper.make_tensor_value_info("data", TensorProto.FLOAT, list(DATA_SHAPE))
    inputs, inits = [data], []
    if fed:
        inputs.append(helper.make_tensor_value_info("idx", TensorProto.INT64, list(idx.shape)))
    else:
        inits.append(numpy_helper.from_array(idx, "idx"))
    node = helper.make_node("Gather", ["data", "idx"], ["y"], axis=axis, name="gather")
    g = helper.make_graph([node], "gather", inputs,
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()


@pytest.mark.parametrize("fed", [False, True], ids=["constant", "fed"])
@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("rank", [0, 1, 2, 3])
def test_gather_matches_onnxruntime(rank, axis, fed):
    rng = np.random.default_rng(rank * 10 + axis % 3)
    idx = indices(rank, DATA_SHAPE[axis], rng)
    data = rng.standard_normal(DATA_SHAPE).astype(np.float32)
    model = gather_model(idx, axis, fed)
    feeds = {"data": data, **({"idx": idx} if fed else {})}
    (want,) = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, feeds)
    sess = ember.load(model)
    for _ in range(2):   # the bound step, twice: nothing of the first run is left behind
        (got,) = sess.run(None, feeds)
        assert got.shape == want.shape
        np.testing.assert_array_equal(got, want)


def test_first_column_as_pytorch_exports_it():
    """``x[:, 0]``: Gather(axis=1) with a constant scalar index gives a rank-1 result."""
    idx = np.array(0, np.int64)
    model = gather_model(idx, 1, fed=False)
    data = np.arange(np.prod(DATA_SHAPE), dtype=np.float32).reshape(DATA_SHAPE)
    (got,) = ember.load(model).run(None, {"data": data})
    np.testing.assert_array_equal(got, data[:, 0])
