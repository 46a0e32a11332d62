"""Training ops are not ONNX ops: they live in ember's own domain (``TRAINING_DOMAIN``).

What is checked: the registry puts in that domain exactly the ops ONNX does not define (plus the
Trainer's own SoftmaxCrossEntropyLoss); an ONNX file naming one of them, in the default domain
or in ember's, is refused at load with an ``UnsupportedOpError`` naming the op and the node;
autodiff and the losses create them in that domain and export refuses them, naming the node;
graphs stored before the domain existed (checkpoints, ``serialize``) restore as they did;
``ember ops`` lists the default domain only.

Oracles: ``onnx.defs`` (which ops ONNX defines), ``onnx.reference`` for the ONNX
SoftmaxCrossEntropyLoss, and the same graph or Trainer before it went through a file.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import ember
from ember import nn, optim
from ember.cli import main
from ember.graph import serialize
from ember.graph.autodiff import backward
from ember.graph.builder import Builder
from ember.graph.ops import REGISTRY, TRAINING_DOMAIN, op_named, supported_ops
from ember.importers.onnx import load_onnx
from ember.importers.onnx_export import to_onnx
from ember.runtime import checkpoint
from ember.runtime.losses import CrossEntropyLoss
from ember.runtime.training_step import build_training_graph


# ---- the registry --------------------------------------------------------------------------
def test_training_domain_holds_exactly_the_ops_onnx_does_not_define():
    training = {t for (d, t) in REGISTRY if d == TRAINING_DOMAIN}
    default = {t for (d, t) in REGISTRY if d == ""}
    # ai.ember.fused: the inference ops graph/patterns.py makes (tests/test_patterns.py)
    assert {d for (d, _) in REGISTRY} == {"", TRAINING_DOMAIN, "ai.ember.fused"}
    assert sorted(t for t in default if not onnx.defs.has(t, "")) == []
    assert sorted(t for t in training if onnx.defs.has(t, "")) == ["SoftmaxCrossEntropyLoss"]
    assert {"MSELoss", "SumToShape", "ConvGradInput", "ActivationGrad", "BiasGrad",
            "DropoutGrad", "SliceGrad", "LRNGrad", "SoftmaxCrossEntropyLossGrad"} <= training


def test_a_bare_name_means_the_onnx_op_first():
    assert op_named("SoftmaxCrossEntropyLoss").domain == ""
    assert op_named("MSELoss").domain == TRAINING_DOMAIN
    with pytest.raises(ember.UnsupportedOpError, match="ReluGrad"):
        op_named("ReluGrad")


# ---- import: refused ------------------------------------------------------------------------
def _vi(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


# op, node, its inputs' shapes, its output's shape: nodes ember's own training graphs hold
TRAINING_NODES = {
    "MSELoss": (helper.make_node("MSELoss", ["a", "b"], ["y"], name="mse"),
                [(2, 3), (2, 3)], []),
    "ActivationGrad": (helper.make_node("ActivationGrad", ["a", "b"], ["y"], name="relu_grad",
                                        activation="Relu"), [(2, 3), (2, 3)], [2, 3]),
    "ConvGradInput": (helper.make_node("ConvGradInput", ["a", "b"], ["y"], name="conv_grad",
                                       input_shape=[1, 1, 4, 4], strides=[1, 1],
                                       pads=[0, 0, 0, 0], dilations=[1, 1], group=1),
                      [(1, 2, 2, 2), (2, 1, 3, 3)], [1, 1, 4, 4]),
    "SumToShape": (helper.make_node("SumToShape", ["a"], ["y"], name="sum_to", shape=[3]),
                   [(2, 3)], [3]),
}


def _model(nodes_and_shapes, domain=""):
    nodes, inputs, outputs = [], {}, []
    for k, (node, in_shapes, out_shape) in enumerate(nodes_and_shapes):
        node = onnx.NodeProto.FromString(node.SerializeToString())
        node.domain = domain
        node.input[:] = [f"{i}{k}" for i in node.input]
        node.output[:] = [f"y{k}"]
        nodes.append(node)
        inputs.update((name, shape) for name, shape in zip(node.input, in_shapes))
        outputs.append(_vi(f"y{k}", out_shape))
    graph = helper.make_graph(nodes, "g", [_vi(n, s) for n, s in inputs.items()], outputs)
    opsets = [helper.make_opsetid("", 13)]
    if domain:
        opsets.append(helper.make_opsetid(domain, 1))
    return helper.make_model(graph, opset_imports=opsets)


@pytest.mark.parametrize("op", sorted(TRAINING_NODES))
def test_training_op_in_the_default_domain_is_refused_at_load(op):
    node = TRAINING_NODES[op][0]
    with pytest.raises(ember.UnsupportedOpError) as info:
        load_onnx(_model([TRAINING_NODES[op]]))
    assert info.value.unsupported == {(op, "", 13): [node.name]}
    assert op in str(info.value) and repr(node.name) in str(info.value)
    with pytest.raises(ember.UnsupportedOpError):
        ember.load(_model([TRAINING_NODES[op]]).SerializeToString())


def test_every_training_op_of_a_file_is_listed_at_once():
    with pytest.raises(ember.UnsupportedOpError) as info:
        load_onnx(_model([TRAINING_NODES[op] for op in sorted(TRAINING_NODES)]))
    assert sorted(info.value.unsupported) == [(op, "", 13) for op in sorted(TRAINING_NODES)]
    for op, (node, _, _) in TRAINING_NODES.items():
        assert f"{op} (opset 13) used by 1 node(s): {node.name!r}" in str(info.value)


def test_a_file_naming_the_training_domain_is_refused():
    with pytest.raises(ember.UnsupportedOpError) as info:
        load_onnx(_model([TRAINING_NODES["MSELoss"]], domain=TRAINING_DOMAIN))
    assert info.value.unsupported == {("MSELoss", TRAINING_DOMAIN, 1): ["mse"]}
    assert f"{TRAINING_DOMAIN}::MSELoss" in str(info.value) and "'mse'" in str(info.value)


def test_onnx_softmax_cross_entropy_loss_still_loads_and_runs():
    """ONNX defines SoftmaxCrossEntropyLoss: a file may use it (the conformance suite does)."""
    node = helper.make_node("SoftmaxCrossEntropyLoss", ["s", "l"], ["loss", "log_prob"],
                            name="sce", reduction="mean")
    graph = helper.make_graph([node], "sce", [_vi("s", [4, 5]), _vi("l", [4], TensorProto.INT64)],
                              [_vi("loss", []), _vi("log_prob", [4, 5])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    assert [n.domain for n in load_onnx(model).nodes] == [""]
    rng = np.random.default_rng(0)
    feeds = {"s": rng.standard_normal((4, 5)).astype(np.float32),
             "l": np.array([0, 4, 2, 1], np.int64)}
    got = ember.load(model, threads=1).run(None, feeds)
    for g, want in zip(got, ReferenceEvaluator(model).run(None, feeds)):
        np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-6)


# ---- what training creates, and export ------------------------------------------------------
def _net():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Dropout(0.25), nn.Flatten(), nn.Linear(4 * 4 * 4, 3),
                         nn.LogSoftmax(dim=1))


def _training_graph():
    """The graph a Trainer compiles for ``_net`` with integer labels: forward, cross entropy
    and backward, batch 2."""
    model = _net().train().to_graph(input_shape=("N", 1, 8, 8), seed=0)
    state = OrderedDict((n, model.initializers.pop(n))
                        for n in model.metadata["parameters"] + model.metadata["buffers"])
    model.inputs = list(model.inputs) + list(state)
    return build_training_graph(model, model.inputs[0], state,
                                list(model.metadata["parameters"]), CrossEntropyLoss(),
                                "labels", batch=2)


def test_training_graph_nodes_are_onnx_ops_or_training_ops():
    g, names = _training_graph()
    for node in g.nodes:
        assert node.domain == ("" if onnx.defs.has(node.op_type, "") and
                               node.op_type != "SoftmaxCrossEntropyLoss" else TRAINING_DOMAIN), \
            node
    added = {n.op_type for n in g.nodes if n.domain == TRAINING_DOMAIN}
    assert {"SoftmaxCrossEntropyLoss", "SoftmaxCrossEntropyLossGrad", "ConvGradWeight",
            "BatchNormalizationGrad", "MaxPoolGrad", "DropoutGrad", "ActivationGrad",
            "BiasGrad", "LogSoftmaxGrad"} <= added


def test_export_refuses_a_training_graph_naming_its_nodes():
    g, _ = _training_graph()
    with pytest.raises(ember.ModelError) as info:
        to_onnx(g)
    msg = str(info.value)
    first = next(n for n in g.nodes if n.domain == TRAINING_DOMAIN)
    assert first.op_type == "SoftmaxCrossEntropyLoss"
    assert f"SoftmaxCrossEntropyLoss node {first.name!r} has no ONNX equivalent (one of " \
           f"ember's training ops, domain {TRAINING_DOMAIN!r})" in msg
    grad = next(n for n in g.nodes if n.op_type == "SoftmaxCrossEntropyLossGrad")
    assert f"SoftmaxCrossEntropyLossGrad node {grad.name!r}" in msg


@pytest.mark.parametrize("op", ["MSELoss", "SumToShape"])
def test_export_refuses_training_ops_a_builder_adds(op):
    b = Builder("g")
    x = b.input("x", (2, 3))
    y = b.op("MSELoss", [x, b.input("t", (2, 3))]) if op == "MSELoss" else \
        b.op("SumToShape", [x], shape=[3])
    b.output(y, "y")
    graph = b.build()
    node = next(n for n in graph.nodes if n.op_type == op)
    assert node.domain == TRAINING_DOMAIN
    with pytest.raises(ember.ModelError, match=rf"{op} node {node.name!r} has no ONNX "
                                               rf"equivalent \(one of ember's training ops"):
        to_onnx(graph)


# ---- graphs stored before the training domain ------------------------------------------------
def _as_stored_before(graph):
    """``graph`` as an ember without the training domain wrote it: every node in domain ""."""
    old = graph.copy()
    for node in old.nodes:
        node.domain = ""
    return old


def test_serialized_graph_with_training_ops_in_the_default_domain_restores():
    b = Builder("mlp", seed=0)
    x = b.input("x", (4, 3))
    w = b.parameter("w", (2, 3))
    bias = b.parameter("bias", (2,), "uniform")
    b.output(b.op("MSELoss", [b.gemm(x, w, bias, transB=1), b.input("t", (4, 2))]), "loss")
    graph, grads = backward(b.build(), "loss", ["w", "bias"])
    assert {n.op_type for n in graph.nodes if n.domain == TRAINING_DOMAIN} >= \
        {"MSELoss", "MSELossGrad", "BiasGrad"}
    back = serialize.from_bytes(serialize.to_bytes(_as_stored_before(graph)))
    assert [(n.op_type, n.domain) for n in back.nodes] == \
        [(n.op_type, n.domain) for n in graph.nodes]
    rng = np.random.default_rng(1)
    feeds = {"x": rng.standard_normal((4, 3)).astype(np.float32),
             "t": rng.standard_normal((4, 2)).astype(np.float32)}
    want = ember.Session(graph, threads=1).run(None, feeds)
    got = ember.Session(back, threads=1).run(None, feeds)
    for g, w_ in zip(got, want):
        np.testing.assert_array_equal(g, w_)


def _trainer_with_a_training_op_in_its_model():
    """A model whose first layer is ActivationGrad(x, x) — relu(x) written with a training op,
    as a Builder graph may hold one."""
    b = Builder("mlp", seed=0)
    x = b.input("x", ("N", 4))
    h = b.op("ActivationGrad", [x, x], activation="Relu")
    b.output(b.gemm(h, b.parameter("fc.weight", (3, 4)), b.parameter("fc.bias", (3,), "zeros"),
                    transB=1), "y")
    return ember.Trainer(b.build(), optimizer=optim.SGD(lr=0.1), batch_size=8, threads=1)


def test_checkpoint_with_training_ops_in_the_default_domain_restores(tmp_path):
    """A checkpoint stores the model graph only (``checkpoint.trainer_state``): training ops
    appear there when the model itself holds one; files written before the training domain
    existed hold them in the default domain."""
    rng = np.random.default_rng(2)
    X = rng.standard_normal((32, 4)).astype(np.float32)
    y = rng.integers(0, 3, 32)
    t = _trainer_with_a_training_op_in_its_model()
    t.fit(X, y, epochs=1, verbose=False)
    state = checkpoint.trainer_state(t)
    state["graph"] = _as_stored_before(state["graph"])
    checkpoint.save(tmp_path / "old.ember", state)
    r = ember.Trainer.restore(tmp_path / "old.ember", threads=1)
    assert [n.domain for n in r.graph().nodes if n.op_type == "ActivationGrad"] == \
        [TRAINING_DOMAIN]
    np.testing.assert_array_equal(r.predict(X), t.predict(X))
    t.fit(X, y, epochs=1, verbose=False)
    r.fit(X, y, epochs=1, verbose=False)
    for name, a in t.state_dict().items():
        np.testing.assert_array_equal(r.state_dict()[name], a)


# ---- ember ops ---------------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [["ops"], ["ops", "--markdown"]])
def test_ember_ops_lists_the_default_domain_only(argv, capsys):
    assert main(argv) == 0
    out = capsys.readouterr().out
    rows = [line.split("|")[1].strip() if line.startswith("|") else line.split()[0]
            for line in out.strip().splitlines()]
    listed = [r for r in rows if r in {t for (_, t) in REGISTRY}]
    assert listed == supported_ops()
    training_only = {t for (d, t) in REGISTRY if d == TRAINING_DOMAIN} - set(supported_ops())
    assert not training_only & set(rows)


def test_a_graph_built_in_python_naming_training_ops_in_the_default_domain_lists_every_node():
    """A hand-built graph (no importer involved) that names training ops in the default domain
    fails shape inference with one UnsupportedOpError naming every such op and node."""
    from ember.graph.infer import infer_shapes
    from ember.graph.ir import Graph, TensorType
    g = Graph()
    g.inputs = ["x", "t"]
    g.types["x"] = TensorType(np.float32, (2, 3))
    g.types["t"] = TensorType(np.float32, (2, 3))
    g.add_node("Relu", ["x"], ["r"], name="ok")
    g.add_node("MSELoss", ["r", "t"], ["loss"], name="my_loss")
    g.add_node("SumToShape", ["r", "x"], ["s"], name="my_sum")
    g.outputs = ["loss", "s"]
    with pytest.raises(ember.UnsupportedOpError) as e:
        infer_shapes(g)
    msg = str(e.value)
    assert "MSELoss" in msg and "'my_loss'" in msg
    assert "SumToShape" in msg and "'my_sum'" in msg
    assert "Relu" not in msg
