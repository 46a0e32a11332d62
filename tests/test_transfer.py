"""ember.nn.load_onnx: an imported ONNX model cut at a named value as an nn.Module (transfer
learning), frozen parameters and frozen BatchNorm statistics in the Trainer.

Oracles ember did not write: onnxruntime on the original file with the cut value added as an
output, the initializers written into the file here with onnx.helper, and bit-for-bit equality of
arrays that must not change.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import ember
from ember import nn, optim

C, FLAT, HIDDEN, CLASSES = 4, 4 * 3 * 3, 8, 3

# initializer name in the file -> the state_dict key it becomes (letters, digits, _ and dots)
STATE_KEYS = {"conv/W:0": "conv_W_0", "conv/B:0": "conv_B_0", "bn.gamma": "bn.gamma",
              "bn.beta": "bn.beta", "bn.mean": "bn.mean", "bn.var": "bn.var",
              "fc1.weight": "fc1.weight", "fc1.bias": "fc1.bias",
              "fc2.weight": "fc2.weight", "fc2.bias": "fc2.bias"}
BUFFERS = ("bn.mean", "bn.var")


def _model(two_inputs: bool = False) -> onnx.ModelProto:
    """Conv → BatchNormalization → Relu → MaxPool → Mul by a Constant node → Reshape (shape an
    int64 initializer) → Gemm → Relu → Gemm on (N, 1, 6, 6), with BN statistics far from 0/1
    so that using the wrong ones shows."""
    rng = np.random.default_rng(0)

    def init(name, *shape, lo=-0.5, hi=0.5):
        return numpy_helper.from_array(rng.uniform(lo, hi, shape).astype(np.float32), name)

    inits = [init("conv/W:0", C, 1, 3, 3), init("conv/B:0", C), init("bn.gamma", C, lo=0.5, hi=2),
             init("bn.beta", C), init("bn.mean", C, lo=-1, hi=1),
             init("bn.var", C, lo=0.5, hi=3), init("fc1.weight", HIDDEN, FLAT),
             init("fc1.bias", HIDDEN), init("fc2.weight", CLASSES, HIDDEN),
             init("fc2.bias", CLASSES),
             numpy_helper.from_array(np.array([0, -1], np.int64), "flat_shape")]
    nodes = [
        helper.make_node("Conv", ["x", "conv/W:0", "conv/B:0"], ["conv_out"], pads=[1] * 4,
                         name="conv"),
        helper.make_node("BatchNormalization", ["conv_out", "bn.gamma", "bn.beta", "bn.mean",
                                                "bn.var"], ["bn_out"], name="bn"),
        helper.make_node("Relu", ["bn_out"], ["relu1"], name="relu1"),
        helper.make_node("MaxPool", ["relu1"], ["pool"], kernel_shape=[2, 2], strides=[2, 2],
                         name="pool"),
        helper.make_node("Constant", [], ["half"], name="half",
                         value=numpy_helper.from_array(np.array(0.5, np.float32))),
        helper.make_node("Mul", ["pool", "half"], ["scaled"], name="scale"),
        helper.make_node("Reshape", ["scaled", "flat_shape"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc1.weight", "fc1.bias"], ["fc1_out"], transB=1,
                         name="fc1"),
        helper.make_node("Relu", ["fc1_out"], ["relu2"], name="relu2"),
        helper.make_node("Gemm", ["relu2", "fc2.weight", "fc2.bias"], ["logits"], transB=1,
                         name="fc2"),
        helper.make_node("Identity", ["fc2.weight"], ["w_copy"], name="w_copy"),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 6, 6])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES]),
               helper.make_tensor_value_info("w_copy", TensorProto.FLOAT, [CLASSES, HIDDEN])]
    if two_inputs:
        inputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", CLASSES]))
        nodes.append(helper.make_node("Add", ["logits", "z"], ["shifted"], name="shift"))
        outputs.append(helper.make_tensor_value_info("shifted", TensorProto.FLOAT,
                                                     ["N", CLASSES]))
    graph = helper.make_graph(nodes, "cut_me", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="module")
def model_bytes() -> bytes:
    return _model().SerializeToString()


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(1).uniform(0, 1, (10, 1, 6, 6)).astype(np.float32)


def _ort_value(model_bytes: bytes, value: str, x) -> np.ndarray:
    model = onnx.load_from_string(model_bytes)
    if value not in [o.name for o in model.graph.output]:
        model.graph.output.append(helper.make_empty_tensor_value_info(value))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run([value], {"x": x})[0]


def _forward(module, x) -> np.ndarray:
    graph = module.to_graph(input_shape=("N", 1, 6, 6))
    return ember.Session(graph, threads=1).run(None, {"input": x})[0]


# ---- the cut module's forward --------------------------------------------------------------------
@pytest.mark.parametrize("until", ["bn_out", "pool", "scaled", "flat", "relu2", "logits"])
def test_cut_forward_matches_onnxruntime(model_bytes, x, until):
    """float32 on both sides, sums of ≤ 36 terms of size ≤ ~10: 1e-5 absolute covers the
    different summation orders."""
    module = nn.load_onnx(model_bytes, until=until, input_name="x")
    np.testing.assert_allclose(_forward(module, x), _ort_value(model_bytes, until, x),
                               rtol=1e-5, atol=1e-5)


def test_whole_model_when_until_is_none_and_the_model_has_one_output(model_bytes, x):
    model = onnx.load_from_string(model_bytes)
    del model.graph.output[1]           # only "logits" left
    module = nn.load_onnx(model.SerializeToString())
    assert module.until == "logits"
    np.testing.assert_allclose(_forward(module, x), _ort_value(model_bytes, "logits", x),
                               rtol=1e-5, atol=1e-5)


def test_inside_a_sequential_with_a_new_head(model_bytes, x):
    """The backbone's output feeds a new Linear; compared with numpy on onnxruntime's cut."""
    model = nn.Sequential(nn.load_onnx(model_bytes, until="flat"), nn.Linear(FLAT, 2))
    sd = model.init_parameters(0).state_dict()
    feats = _ort_value(model_bytes, "flat", x)
    want = feats @ sd["1.weight"].T + sd["1.bias"]
    np.testing.assert_allclose(_forward(model, x), want, rtol=1e-5, atol=1e-5)


# ---- state ------------------------------------------------------------------------------------
def test_state_dict_names_shapes_and_values(model_bytes):
    module = nn.load_onnx(model_bytes, until="relu2")
    inits = {t.name: numpy_helper.to_array(t) for t in onnx.load_from_string(model_bytes)
             .graph.initializer}
    used = [n for n in STATE_KEYS if not n.startswith("fc2.")]   # fc2 is past the cut
    sd = module.state_dict()
    assert list(sd) == [STATE_KEYS[n] for n in used if n not in BUFFERS] + \
        [STATE_KEYS[n] for n in BUFFERS]
    for n in used:
        np.testing.assert_array_equal(sd[STATE_KEYS[n]], inits[n], err_msg=n)
    assert [k for k, _ in module.named_buffers()] == [STATE_KEYS[n] for n in BUFFERS]
    assert "flat_shape" not in sd       # int64 shape initializer: a constant, not state
    outer = nn.Sequential(module, nn.Linear(HIDDEN, 2))
    assert "0.fc1.weight" in outer.state_dict() and "1.weight" in outer.state_dict()


def test_freeze_unfreeze_and_requires_grad(model_bytes):
    module = nn.load_onnx(model_bytes, until="relu2")
    assert not any(p.requires_grad for p in module.parameters())
    assert module.unfreeze() is module and all(p.requires_grad for p in module.parameters())
    assert not any(p.requires_grad for p in module.freeze().parameters())
    unfrozen = nn.load_onnx(model_bytes, until="relu2", freeze=False)
    assert all(p.requires_grad for p in unfrozen.parameters())
    head = nn.Linear(HIDDEN, 2)
    model = nn.Sequential(unfrozen, head).requires_grad_(False)
    assert not any(p.requires_grad for p in model.parameters())
    head.weight.requires_grad_(True)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["1.weight"]
    with pytest.raises(ember.ModelError, match="buffer"):
        next(module.buffers()).requires_grad_(True)


# ---- training: only what is not frozen; frozen BatchNorm in eval mode ---------------------------
def _trainer(model, lr=1e-2):
    return ember.Trainer(model, input_shape=(1, 6, 6), loss="cross_entropy",
                         optimizer=optim.Adam(lr=lr), batch_size=8, seed=0, threads=1)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(2)
    X = rng.uniform(0, 1, (40, 1, 6, 6)).astype(np.float32)
    return X, (X[:, 0, :3].sum((1, 2)) > X[:, 0, 3:].sum((1, 2))).astype(np.int64)


def test_frozen_backbone_and_bn_statistics_unchanged_head_trained(model_bytes, data):
    X, y = data
    model = nn.Sequential(nn.load_onnx(model_bytes, until="relu2", freeze=True),
                          nn.Linear(HIDDEN, 2))
    t = _trainer(model)
    assert t.trainable == ["1.weight", "1.bias"]
    assert sorted(t.optimizer.state) == ["1.bias", "1.weight"]   # no state for frozen ones
    grads = t.gradients(X, y)
    assert list(grads) == ["1.weight", "1.bias"] and np.abs(grads["1.weight"]).max() > 0
    before = t.state_dict()
    t.fit(X, y, epochs=2, verbose=False)
    after = t.state_dict()
    for name in before:
        if name.startswith("0."):
            np.testing.assert_array_equal(after[name], before[name], err_msg=name)
        else:
            assert not np.array_equal(after[name], before[name]), name


def _train_loss_is_eval_loss(t, X, y) -> bool:
    """Whether a training step's forward (its returned loss, computed before the update) used
    the running statistics, i.e. equals the eval-mode loss on the same batch."""
    eval_loss = t.evaluate(X, y, batch_size=len(X))["loss"]
    return abs(t.train_step(X, y) - eval_loss) < 1e-6 * max(1.0, abs(eval_loss))


@pytest.mark.parametrize("how", ["frozen", "eval", "frozen_bn_only"])
def test_frozen_batchnorm_stays_in_eval_mode(model_bytes, data, how):
    """freeze=True, a backbone left in eval mode, or only the BN's scale and bias frozen: the
    training forward normalises with the running statistics and never updates them."""
    X, y = data
    backbone = nn.load_onnx(model_bytes, until="relu2", freeze=how == "frozen")
    if how == "eval":
        backbone.eval()
    if how == "frozen_bn_only":
        dict(backbone.named_parameters())["bn.gamma"].requires_grad_(False)
        dict(backbone.named_parameters())["bn.beta"].requires_grad_(False)
    model = nn.Sequential(backbone, nn.Linear(HIDDEN, 2))
    t = _trainer(model)
    assert not backbone.training if how == "eval" else backbone.training   # modes kept
    stats = {k: v for k, v in t.state_dict().items() if k in ("0.bn.mean", "0.bn.var")}
    assert _train_loss_is_eval_loss(t, X[:8], y[:8])
    t.fit(X, y, epochs=1, verbose=False)
    for k, v in stats.items():
        np.testing.assert_array_equal(t.state_dict()[k], v, err_msg=k)
    if how != "frozen":    # the backbone's trainable parameters did train
        assert not np.array_equal(t.state_dict()["0.conv_W_0"], model.state_dict()["0.conv_W_0"])


def test_unfrozen_batchnorm_trains_with_batch_statistics(model_bytes, data):
    X, y = data
    model = nn.Sequential(nn.load_onnx(model_bytes, until="relu2", freeze=False),
                          nn.Linear(HIDDEN, 2))
    t = _trainer(model)
    assert "0.bn.gamma" in t.trainable and "0.conv_W_0" in t.trainable
    stats = t.state_dict()["0.bn.mean"]
    assert not _train_loss_is_eval_loss(t, X[:8], y[:8])
    assert not np.array_equal(t.state_dict()["0.bn.mean"], stats)


def test_frozen_nn_batchnorm_keeps_its_statistics(data):
    """The same rule for ember.nn's own BatchNorm2d: frozen or in eval mode inside a model in
    training mode; a model handed over wholly in eval mode trains as before."""
    X, y = data
    def net():
        return nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(),
                             nn.Linear(2 * 4 * 4, 2))
    frozen = net()
    frozen[1].freeze()
    in_eval = net()
    in_eval[1].eval()
    assert frozen.frozen_statistics() == in_eval.frozen_statistics() == \
        ["1.running_mean", "1.running_var"]
    assert net().frozen_statistics() == net().eval().frozen_statistics() == []
    for model in (frozen, in_eval):
        t = _trainer(model)
        stats = t.state_dict()["1.running_var"]
        t.fit(X, y, epochs=1, verbose=False)
        np.testing.assert_array_equal(t.state_dict()["1.running_var"], stats)


def test_frozen_statistics_survive_a_checkpoint(model_bytes, data, tmp_path):
    X, y = data
    t = _trainer(nn.Sequential(nn.load_onnx(model_bytes, until="relu2"), nn.Linear(HIDDEN, 2)))
    t.save(tmp_path / "t.ember")
    restored = ember.Trainer.restore(tmp_path / "t.ember")
    stats = restored.state_dict()["0.bn.var"]
    restored.fit(X, y, epochs=1, verbose=False)
    np.testing.assert_array_equal(restored.state_dict()["0.bn.var"], stats)
    assert restored.trainable == ["1.weight", "1.bias"]


def test_fine_tuned_export_runs_in_onnxruntime(model_bytes, data, tmp_path):
    X, y = data
    t = _trainer(nn.Sequential(nn.load_onnx(model_bytes, until="flat"), nn.Linear(FLAT, 2)))
    t.fit(X, y, epochs=1, verbose=False)
    path = tmp_path / "tuned.onnx"
    t.export_onnx(path)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (ref,) = sess.run(None, {sess.get_inputs()[0].name: X})
    np.testing.assert_allclose(t.predict(X), ref, rtol=1e-5, atol=1e-5)


# ---- bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize("until, message", [
    ("relu_2", r"until='relu_2' names no value.*did you mean 'relu2'.*conv_out, bn_out, relu1"),
    ("fc1.weight", r"until='fc1.weight' is an initializer"),
    ("x", r"until='x' is the data input"),
    ("w_copy", r"until='w_copy' does not depend on the input 'x'.*relu2, logits"),
])
def test_bad_until_names_it_and_lists_the_values(model_bytes, until, message):
    with pytest.raises(ember.ModelError, match=message):
        nn.load_onnx(model_bytes, until=until)


def test_two_data_inputs_need_input_name():
    two = _model(two_inputs=True).SerializeToString()
    with pytest.raises(ember.ModelError, match=r"2 data inputs \['x', 'z'\].*input_name="):
        nn.load_onnx(two, until="relu2")
    with pytest.raises(ember.ModelError, match=r"input_name 'y' is not a data input"):
        nn.load_onnx(two, until="relu2", input_name="y")
    with pytest.raises(ember.ModelError, match=r"needs 'z', an input of the model other "):
        nn.load_onnx(two, until="shifted", input_name="x")
    assert nn.load_onnx(two, until="relu2", input_name="x").input_name == "x"


def test_several_outputs_need_until(model_bytes):
    with pytest.raises(ember.ModelError, match=r"2 outputs \['logits', 'w_copy'\].*until="):
        nn.load_onnx(model_bytes)


def test_wrong_input_shape_is_a_shape_error(model_bytes):
    module = nn.load_onnx(model_bytes, until="relu2")
    with pytest.raises(ember.ShapeError, match=r"input 'x' of the imported model is "
                                               r"float32\[N×1×6×6\], got float32\[N×1×5×5\]"):
        module.to_graph(input_shape=("N", 1, 5, 5))
