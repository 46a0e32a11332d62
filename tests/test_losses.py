"""Loss ops (graph/ops/loss.py): forward values against formulas written here and against
onnx.reference for SoftmaxCrossEntropyLoss; gradients against finite differences."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from ember.graph.autodiff import backward
from ember.graph.errors import InputError, ModelError, ShapeError
from ember.graph.ir import Node
from ember.graph.ops import op_named

from test_autodiff import Case, gradcheck, run

REDUCTIONS = ["mean", "sum", "none"]


def compute(op_type, inputs, **attrs):
    """One op's numpy reference on arrays, attributes defaulted as inference would."""
    op = op_named(op_type)
    node = Node(op_type, [f"i{k}" if v is not None else "" for k, v in enumerate(inputs)],
                ["out", "out2"][:op.num_outputs[1]], dict(attrs), "n")
    for k, v in op.attrs.items():
        node.attrs.setdefault(k, v)
    return op.compute(node, list(inputs))


def reduce(x, reduction, denom=None):
    if reduction == "none":
        return x
    return x.sum() if reduction == "sum" else x.sum() / (x.size if denom is None else denom)


def log_softmax(x, axis=1):
    m = x.max(axis=axis, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


# ---- forward values ---------------------------------------------------------------------------
def onnx_sce(scores, labels, weights, reduction, ignore_index):
    attrs = {"reduction": reduction}
    if ignore_index is not None:
        attrs["ignore_index"] = ignore_index
    ins = ["scores", "labels"] + (["weights"] if weights is not None else [])
    node = helper.make_node("SoftmaxCrossEntropyLoss", ins, ["loss", "log_prob"], **attrs)
    vi = [helper.make_tensor_value_info("scores", TensorProto.DOUBLE, scores.shape),
          helper.make_tensor_value_info("labels", TensorProto.INT64, labels.shape)]
    if weights is not None:
        vi.append(helper.make_tensor_value_info("weights", TensorProto.DOUBLE, weights.shape))
    graph = helper.make_graph([node], "sce", vi,
                              [helper.make_tensor_value_info("loss", TensorProto.DOUBLE, None),
                               helper.make_tensor_value_info("log_prob", TensorProto.DOUBLE,
                                                             None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    feeds = {"scores": scores, "labels": labels}
    if weights is not None:
        feeds["weights"] = weights
    return ReferenceEvaluator(model).run(None, feeds)


SCE_CASES = [  # scores shape, weights?, ignore_index
    ((5, 4), False, None), ((5, 4), True, None), ((5, 4), False, 2), ((5, 4), True, -1),
    ((3, 4, 2, 2), True, 1), ((3, 4, 3), False, None),
]


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape,weighted,ignore", SCE_CASES)
def test_softmax_cross_entropy_forward(shape, weighted, ignore, reduction):
    rng = np.random.default_rng(0)
    scores = rng.normal(size=shape) * 3
    labels = rng.integers(0, shape[1], (shape[0],) + shape[2:])
    if ignore is not None:
        labels.reshape(-1)[::3] = ignore
    weights = rng.uniform(0.2, 2.0, shape[1]) if weighted else None
    loss, logp = compute("SoftmaxCrossEntropyLoss", [scores, labels, weights],
                         reduction=reduction, ignore_index=ignore)
    want_loss, want_logp = onnx_sce(scores, labels, weights, reduction, ignore)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(logp, want_logp, rtol=1e-12, atol=1e-12)
    # and the formula, written out
    lp = log_softmax(scores)
    keep = labels != ignore if ignore is not None else np.ones(labels.shape, bool)
    safe = np.where(keep, labels, 0)
    w = (weights[safe] if weighted else np.ones(labels.shape)) * keep
    nll = -np.take_along_axis(lp, safe[:, None], axis=1)[:, 0] * w
    np.testing.assert_allclose(loss, reduce(nll, reduction, w.sum()), rtol=1e-12, atol=1e-14)
    assert loss.shape == (() if reduction != "none" else labels.shape)


def test_softmax_cross_entropy_is_stable_and_float32():
    scores = np.array([[1000.0, -1000.0, 0.0], [-500.0, 500.0, 499.0]], np.float32)
    loss, logp = compute("SoftmaxCrossEntropyLoss", [scores, np.array([1, 2])])
    assert loss.dtype == np.float32 and logp.dtype == np.float32
    np.testing.assert_allclose(loss, (2000 + np.log1p(np.exp(-1)) + 1) / 2, rtol=1e-6)


def test_softmax_cross_entropy_bad_label():
    with pytest.raises(InputError, match="label 7"):
        compute("SoftmaxCrossEntropyLoss", [np.zeros((2, 3)), np.array([0, 7])])


def test_softmax_cross_entropy_shape_check_names_the_mismatch():
    t = Case()
    scores = t.param("s", (4, 3))
    with pytest.raises(ShapeError, match=r"labels of shape \(4,\)"):
        t.b.op("SoftmaxCrossEntropyLoss", [scores, np.zeros((3,), np.int64)])


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_softmax_cross_entropy_prob_forward(reduction):
    rng = np.random.default_rng(1)
    scores, target = rng.normal(size=(4, 5)), rng.dirichlet(np.ones(5), 4)
    loss, logp = compute("SoftmaxCrossEntropyProb", [scores, target], reduction=reduction)
    rows = -(target * log_softmax(scores)).sum(axis=1)
    np.testing.assert_allclose(loss, reduce(rows, reduction), rtol=1e-12)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_elementwise_losses_forward(reduction):
    rng = np.random.default_rng(2)
    p, t = rng.normal(size=(3, 4)) * 2, rng.normal(size=(3, 4))
    tb = rng.uniform(0, 1, (3, 4))
    d = p - t
    huber = np.where(np.abs(d) <= 0.7, 0.5 * d * d, 0.7 * (np.abs(d) - 0.35))
    bce = -(tb * np.log(sigmoid(p)) + (1 - tb) * np.log(1 - sigmoid(p)))
    for op, ins, attrs, want in [("MSELoss", [p, t], {}, d ** 2),
                                 ("L1Loss", [p, t], {}, np.abs(d)),
                                 ("HuberLoss", [p, t], {"delta": 0.7}, huber),
                                 ("BCEWithLogitsLoss", [p, tb], {}, bce)]:
        (got,) = compute(op, ins, reduction=reduction, **attrs)
        np.testing.assert_allclose(got, reduce(want, reduction), rtol=1e-12, err_msg=op)


def test_bce_with_logits_is_stable():
    x = np.array([1000.0, -1000.0, 1000.0, -1000.0])
    t = np.array([0.0, 0.0, 1.0, 1.0])
    (loss,) = compute("BCEWithLogitsLoss", [x, t], reduction="none")
    np.testing.assert_allclose(loss, [1000.0, 0.0, 0.0, 1000.0])
    (dx,) = compute("BCEWithLogitsLossGrad", [np.ones(4), x, t], reduction="none")
    np.testing.assert_allclose(dx, [1.0, 0.0, 0.0, -1.0])


# ---- gradients ---------------------------------------------------------------------------------
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape,weighted,ignore", SCE_CASES)
def test_softmax_cross_entropy_gradient(shape, weighted, ignore, reduction):
    t = Case()
    rng = np.random.default_rng(4)
    labels = rng.integers(0, shape[1], (shape[0],) + shape[2:])
    if ignore is not None:
        labels.reshape(-1)[1::3] = ignore
    ins = [t.param("scores", shape, low=-2, high=2), labels.astype(np.int64),
           t.param("w", shape[1:2], low=0.2, high=2.0, wrt=False) if weighted else None]
    t.check(t.b.op("SoftmaxCrossEntropyLoss", ins, reduction=reduction, ignore_index=ignore))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_softmax_cross_entropy_prob_gradient(reduction):
    t = Case()
    target = t.b.constant(np.random.default_rng(5).dirichlet(np.ones(4), 3), dtype="float64")
    y = t.b.op("SoftmaxCrossEntropyProb", [t.param("scores", (3, 4)), target],
               reduction=reduction)
    t.check(y)


def _pred_target(rng, shape, avoid):
    """pred and target whose difference keeps away from the loss's kinks."""
    target = rng.normal(size=shape)
    diff = rng.uniform(0.1, 2.0, shape) * rng.choice([-1, 1], shape)
    for k in avoid:
        diff = np.where(np.abs(np.abs(diff) - k) < 0.05, diff * 1.2, diff)
    return target + diff, target


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("op,attrs,avoid", [("MSELoss", {}, []), ("L1Loss", {}, [0]),
                                            ("HuberLoss", {"delta": 0.8}, [0.8])])
def test_regression_loss_gradients(op, attrs, avoid, reduction):
    t = Case()
    p, q = _pred_target(np.random.default_rng(6), (3, 4), avoid)
    t.check(t.b.op(op, [t.param("pred", value=p), t.param("target", value=q)],
                   reduction=reduction, **attrs))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bce_with_logits_gradient(reduction):
    t = Case()
    target = t.b.constant(np.random.default_rng(7).uniform(0, 1, (3, 4)), dtype="float64")
    t.check(t.b.op("BCEWithLogitsLoss", [t.param("x", (3, 4), low=-3, high=3), target],
                   reduction=reduction))


def test_loss_gradient_op_matches_hand_formula():
    """SoftmaxCrossEntropyLossGrad itself: (softmax − onehot)·w/Σw, ignored rows zero."""
    rng = np.random.default_rng(8)
    scores, labels, w = rng.normal(size=(4, 3)), np.array([0, 2, -100, 1]), rng.uniform(1, 2, 3)
    _, logp = compute("SoftmaxCrossEntropyLoss", [scores, labels, w], ignore_index=-100)
    (d,) = compute("SoftmaxCrossEntropyLossGrad", [np.array(1.0), logp, labels, w],
                   ignore_index=-100)
    keep = labels != -100
    onehot = np.eye(3)[np.where(keep, labels, 0)]
    wl = w[np.where(keep, labels, 0)] * keep
    want = (np.exp(log_softmax(scores)) - onehot) * (wl / wl.sum())[:, None]
    np.testing.assert_allclose(d, want, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("op", ["BCEWithLogitsLoss", "SoftmaxCrossEntropyProb"])
def test_no_gradient_for_probability_targets(op):
    t = Case()
    x = t.param("x", (3, 4))
    target = t.param("target", (3, 4), low=0.1, high=0.9)
    t.b.output(t.b.op(op, [x, target]), "loss")
    with pytest.raises(ModelError, match="target"):
        backward(t.b.build(), "loss", ["x", "target"])


def test_loss_of_network_output_reaches_parameters():
    """A hand-written mean-squared loss (Sub, Mul, ReduceMean) agrees with MSELoss's
    gradient."""
    grads = []
    for hand in (True, False):
        t = Case(seed=11)
        w = t.param("w", (3, 4))
        x = t.b.constant(np.random.default_rng(12).normal(size=(5, 4)), dtype="float64")
        target = t.b.constant(np.random.default_rng(13).normal(size=(5, 3)), dtype="float64")
        pred = t.b.gemm(x, w, transB=1)
        if hand:
            d = pred - target
            loss = t.b.op("ReduceMean", [d * d], keepdims=0)
        else:
            loss = t.b.op("MSELoss", [pred, target])
        g = t.finish(loss, weigh=False)
        new, names = gradcheck(g, "loss", ["w"])
        grads.append(run(new)[names["w"]])
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-12)
