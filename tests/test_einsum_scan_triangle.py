"""Einsum, CumSum and Trilu beyond ONNX's node cases: the attention forms against
onnxruntime, and bad equations or axes as ember errors naming the node."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import ember


def _model(node, inputs, out_rank=None, inits=()):
    g = helper.make_graph([node], "m",
                          [helper.make_tensor_value_info(n, TensorProto.FLOAT, s)
                           for n, s in inputs],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


@pytest.mark.parametrize("equation,shapes", [
    ("bhqd,bhkd->bhqk", [(1, 4, 7, 16), (1, 4, 9, 16)]),
    ("bhqk,bhkd->bhqd", [(2, 2, 7, 9), (2, 2, 9, 8)]),
    ("bqhd,bkhd->bhqk", [(2, 5, 3, 8), (2, 6, 3, 8)]),
    ("...ij,jk", [(2, 3, 4, 5), (5, 6)]),
])
def test_attention_forms_match_onnxruntime(equation, shapes):
    rng = np.random.default_rng(0)
    names = [f"x{k}" for k in range(len(shapes))]
    data = ember.load(_model(helper.make_node("Einsum", names, ["y"], equation=equation),
                             list(zip(names, shapes))))
    feeds = {n: rng.standard_normal(s).astype(np.float32) for n, s in zip(names, shapes)}
    peer = ort.InferenceSession(_model(helper.make_node("Einsum", names, ["y"],
                                                        equation=equation),
                                       list(zip(names, shapes))),
                                providers=["CPUExecutionProvider"])
    # float32 sums over ≤ 16 products: a few ulps apart depending on the order
    np.testing.assert_allclose(data.run(None, feeds)[0], peer.run(None, feeds)[0],
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("equation,shapes,match", [
    ("ij,jk->ik", [(2, 3)], "operand"),
    ("ij,jk->ik", [(2, 3), (4, 5)], "label 'j'"),
    ("i1,jk->ik", [(2, 3), (3, 5)], "letters"),
    ("ij,jk->iq", [(2, 3), (3, 5)], "names a letter"),
    ("ijk,jk->ik", [(2, 3), (3, 5)], "rank"),
    ("ij->...", [(2, 3)], "'...'"),
])
def test_bad_equations_are_model_errors(equation, shapes, match):
    names = [f"x{k}" for k in range(len(shapes))]
    with pytest.raises(ember.ModelError, match=match):
        ember.load(_model(helper.make_node("Einsum", names, ["y"], equation=equation,
                                           name="attn"),
                          list(zip(names, [shapes[k] if k < len(shapes) else (2, 2)
                                           for k in range(len(names))]))))


@pytest.mark.parametrize("axis,match", [(np.array(3, np.int64), "out of range"),
                                        (np.array([0, 1], np.int64), "one integer"),
                                        (np.array(0.5, np.float32), "one integer")])
def test_cumsum_bad_axis(axis, match):
    node = helper.make_node("CumSum", ["x", "axis"], ["y"], name="cs")
    with pytest.raises(ember.ModelError, match=match):
        ember.load(_model(node, [("x", (2, 3))], inits=[numpy_helper.from_array(axis, "axis")]))


def test_trilu_needs_a_matrix():
    with pytest.raises(ember.ModelError, match="rank ≥ 2"):
        ember.load(_model(helper.make_node("Trilu", ["x"], ["y"]), [("x", (5,))]))
