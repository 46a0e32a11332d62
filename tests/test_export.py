"""IR → ONNX export: every exported file passes ``onnx.checker`` (full check) and computes what
the graph computes.

Oracles: onnxruntime running the exported file (ember wrote neither the runtime nor the
checker), the original ONNX model run by onnxruntime, and the expected outputs shipped with
ONNX's backend node tests. ``ember.load`` of the exported bytes is compared too (round trip).

Tolerance (float32): rtol 1e-4, atol 1e-5. Exporting changes no arithmetic, so the only
differences are between two runtimes' kernels (blocked GEMM/im2col vs onnxruntime's MLAS, and
BN folded into weights when exporting the optimized graph): summation order over ≤ 4608 terms
per output through ≤ 60 layers moves O(1) outputs by ~1e-5 (measured ≤ 1.2e-5 on mobilenetv2,
relative ≤ 2e-5). rtol 1e-4 covers that with margin on the O(1) values; atol 1e-5 only catches
values near zero, where float32 cancellation leaves absolute errors ~1e-6. A wrong export (a lost
attribute, a mis-split activation, an axis off by one, a dropped bias) moves outputs by O(0.1).
"""
from __future__ import annotations

import collections
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import ember
import ember.backend
from ember import nn
from ember.graph import passes
from ember.graph.builder import Builder
from ember.graph.infer import infer_shapes
from ember.graph.ir import Graph, Node, TensorType
from ember.importers import onnx_export
from ember.importers.onnx import load_onnx
from ember.importers.onnx_export import save_onnx, to_onnx

import models

TOL = dict(rtol=1e-4, atol=1e-5)
ALL = {**models.ALL_MODELS, **{k: (lambda batch=1, k=k: models.pattern_model(k, batch))
                               for k in models.PATTERNS}}
_QUIET = ort.SessionOptions()
_QUIET.log_severity_level = 4


# ---- helpers -----------------------------------------------------------------------------------
def export(graph, **kw) -> bytes:
    model = to_onnx(graph, **kw)
    onnx.checker.check_model(model, full_check=True)
    assert_no_ember_attributes(model)
    return model.SerializeToString()


def assert_no_ember_attributes(model):
    """Every attribute is one the op's ONNX schema defines at the model's opset."""
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    for n in model.graph.node:
        schema = onnx.defs.get_schema(n.op_type, opset, "")
        extra = [a.name for a in n.attribute if a.name not in schema.attributes]
        assert not extra, f"{n.op_type} node {n.name!r} carries non-ONNX attributes {extra}"


def ort_run(data, feeds):
    sess = ort.InferenceSession(data, _QUIET, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def assert_close(got, expected, what=""):
    assert len(got) == len(expected), what
    for k, (g, e) in enumerate(zip(got, expected)):
        assert g.shape == e.shape and g.dtype == e.dtype, \
            f"{what} output {k}: {g.dtype}{g.shape}, expected {e.dtype}{e.shape}"
        np.testing.assert_allclose(g, e, **TOL, err_msg=f"{what} output {k}")


def optimized(graph: Graph) -> Graph:
    """The graph as the Session runs it: typed, constant-folded, BN folded, activations fused."""
    g = graph.copy()
    return passes.optimize(passes.fold_constants(g, infer_shapes(g)))


def expected_op_counts(graph: Graph) -> collections.Counter:
    """Op types an export of ``graph`` must contain: its own, plus one node per fused
    activation (SiLU, fused or a node of its own: Sigmoid and Mul)."""
    counts = collections.Counter(n.op_type for n in graph.nodes)
    for n in graph.nodes:
        if n.op_type == "SiLU":   # ember's fused x·Sigmoid(x) node
            counts.subtract(["SiLU"])
            counts.update(["Sigmoid", "Mul"])
        act = n.attrs.get("activation", "")
        if act == "SiLU":
            counts.update(["Sigmoid", "Mul"])
        elif act:
            counts[act] += 1
    return counts


def run_all_ways(graph, feeds, what):
    """ember on ``graph``; onnxruntime and ember on its export; all three must agree."""
    expected = ember.Session(graph).run(None, feeds)
    data = export(graph)
    assert_close(ort_run(data, feeds), expected, f"{what}: onnxruntime on the export")
    assert_close(ember.load(data).run(None, feeds), expected, f"{what}: ember.load round trip")
    return data, expected


# ---- the shared ONNX models, as imported and as optimized ----------------------------------------
@pytest.mark.parametrize("optimize", [False, True], ids=["imported", "optimized"])
@pytest.mark.parametrize("name", list(ALL))
def test_model_export_matches(name, optimize):
    m = ALL[name]()
    feeds = models.random_input(m)
    graph = load_onnx(m)
    if optimize:
        graph = optimized(graph)
    data, expected = run_all_ways(graph, feeds, name)
    exported = onnx.load_from_string(data)
    assert collections.Counter(n.op_type for n in exported.graph.node) == \
        expected_op_counts(graph)
    reference = ort_run(m.SerializeToString(), feeds)   # onnxruntime on the original file
    assert_close(ort_run(data, feeds), reference, f"{name}: export vs original")


def test_optimized_models_do_carry_fused_activations():
    """The optimized half of the test above exercises re-splitting (it would pass vacuously if
    nothing had been fused)."""
    fused = collections.Counter()
    for name in ("fusion_patterns", "mobilenetv2", "conv_silu", "matmul_relu", "conv_clip"):
        g = optimized(load_onnx(ALL[name]()))
        fused.update(n.attrs["activation"] for n in g.nodes if n.attrs.get("activation"))
    assert set(fused) >= {"Relu", "Clip", "LeakyRelu", "Sigmoid", "SiLU", "Tanh", "HardSwish"}


# ---- ember.nn models (eval mode) ------------------------------------------------------------------
class _ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.MaxPool2d(2), nn.Dropout(0.3))
        self.fc = nn.Linear(8 * 4 * 4, 10)
        self.softmax = nn.Softmax(dim=1)

    def forward(self, x):
        return self.softmax(self.fc(nn.functional.flatten(self.features(x))))


class _Branchy(nn.Module):
    """Residual add, concat, ConvTranspose2d, LeakyReLU, ELU, SiLU, Tanh and two outputs."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.act = nn.LeakyReLU(0.2)
        self.res = nn.Conv2d(6, 6, 3, padding=1, bias=False)
        self.res_bn = nn.BatchNorm2d(6)
        self.side = nn.Conv2d(6, 4, 1)
        self.elu = nn.ELU(0.7)
        self.up = nn.ConvTranspose2d(10, 5, 3, stride=2, padding=1, output_padding=1)
        self.silu = nn.SiLU()
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(5, 3)
        self.tanh = nn.Tanh()

    def forward(self, x):
        h = self.act(self.stem(x))
        r = self.res_bn(self.res(h)) + h                     # residual add
        y = nn.functional.cat([r, self.elu(self.side(h))], dim=1)
        y = self.silu(self.up(y))
        pooled = nn.functional.flatten(nn.functional.adaptive_avg_pool2d(y, 1))
        return self.tanh(self.head(self.drop(pooled))), y


class _MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(12, 16), nn.BatchNorm1d(16), nn.Sigmoid(),
                                  nn.Dropout(0.2), nn.Linear(16, 4), nn.LogSoftmax(dim=1))

    def forward(self, x):
        return self.body(x)


NN_MODELS = {"convnet": (_ConvNet, (3, 8, 8)), "branchy": (_Branchy, (3, 8, 8)),
             "mlp": (_MLP, (12,))}


def nn_graph(name, batch="N"):
    """The eval-mode graph of an nn model whose every parameter and running statistic is random
    (so a lost BN term or bias shows)."""
    cls, sample = NN_MODELS[name]
    model = cls()
    rng = np.random.default_rng(7)
    state = {}
    for key, value in model.state_dict().items():
        v = rng.standard_normal(value.shape).astype(np.float32) * 0.5
        state[key] = np.abs(v) + 0.5 if key.endswith("running_var") else v
    model.load_state_dict(state)
    return model.eval().to_graph(input_shape=(batch,) + sample, seed=0)


@pytest.mark.parametrize("optimize", [False, True], ids=["traced", "optimized"])
@pytest.mark.parametrize("name", list(NN_MODELS))
def test_nn_model_export_matches(name, optimize):
    graph = nn_graph(name, batch=2)
    if optimize:
        graph = optimized(graph)
    x = np.random.default_rng(3).standard_normal(graph.types["input"].shape).astype(np.float32)
    data, _ = run_all_ways(graph, {"input": x}, name)
    assert collections.Counter(n.op_type for n in onnx.load_from_string(data).graph.node) == \
        expected_op_counts(graph)


# ---- symbolic batch ---------------------------------------------------------------------------
SYMBOLIC = [("onnx", "lenet5"), ("onnx", "small_vgg"), ("onnx", "pytorch_reshape"),
            ("onnx", "fusion_patterns"), ("nn", "convnet"), ("nn", "branchy"), ("nn", "mlp")]
# pytorch_reshape's Reshape target is computed from the batch size: ember infers (and so
# optimizes) it only per concrete shape, so its symbolic graph is exported as imported only.
SYMBOLIC_PARAMS = [(s, n, o) for s, n in SYMBOLIC for o in (False, True)
                   if not (o and n == "pytorch_reshape")]


@pytest.mark.parametrize("source,name,optimize", SYMBOLIC_PARAMS)
def test_symbolic_batch_survives_export(source, name, optimize):
    graph = load_onnx(ALL[name](batch="N")) if source == "onnx" else nn_graph(name, batch="N")
    if optimize:
        graph = optimized(graph)
    data = export(graph)
    model = onnx.load_from_string(data)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    assert model.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "N"
    sess = ember.Session(graph)
    for batch in (1, 5):
        shape = (batch,) + tuple(graph.types["input"].shape[1:])
        x = np.random.default_rng(batch).standard_normal(shape).astype(np.float32)
        got = ort_run(data, {"input": x})
        assert_close(got, sess.run(None, {"input": x}), f"{name} at batch {batch}")
        assert got[0].shape[0] == batch


# ---- Builder graphs and older opsets ---------------------------------------------------------------
def builder_graph(with_hardswish=True):
    """Tensor ops whose ONNX form changed across opsets: Reduce* axes (attribute before 18),
    Split (num_outputs from 18; uneven parts), Pad with axes (18), Clip with max only, Squeeze,
    Unsqueeze, Slice, Cast, Gather, Transpose, Concat, Where."""
    b = Builder("tensor_ops", seed=0)
    x = b.input("x", ("N", 4, 5, 6))
    w = b.parameter("w", (4, 4, 3, 3), init="kaiming_uniform", a=5 ** 0.5)
    y = b.conv(x, w, None, pads=(1, 1, 1, 1))
    y = b.op("HardSwish", [y]) if with_hardswish else b.op("Selu", [y])
    m = b.op("ReduceMean", [y, np.array([2, 3], np.int64)], keepdims=1)
    mx = b.op("ReduceMax", [y, np.array([-1], np.int64)], keepdims=0)
    parts = b.op("Split", [y], num_outputs=3, axis=2)              # 5 rows → 2, 2, 1
    s = b.concat([parts[2], parts[0], parts[1]], axis=2)
    s = b.op("Pad", [s, np.array([1, 0], np.int64), np.array(0.5, np.float32),
                     np.array([3], np.int64)])                    # only axis 3: 6 → 7
    s = b.op("Slice", [s, np.array([0, 1], np.int64), np.array([5, 7], np.int64),
                       np.array([2, 3], np.int64)])               # back to 5 × 6
    s = b.clip(s, None, 0.8) + m
    t = b.transpose(b.op("Unsqueeze", [mx, np.array([1], np.int64)]), (0, 2, 1, 3))
    t = b.op("Squeeze", [t, np.array([2], np.int64)])             # (N, 4, 5)
    g = b.op("Gather", [t, np.array([3, 0], np.int64)], axis=2)   # (N, 4, 2)
    mask = b.op("Greater", [g, np.array(0.0, np.float32)])
    g = b.op("Where", [mask, g, b.op("Cast", [b.op("Cast", [g], to="int64")], to="float32")])
    b.output(s, "s")
    b.output(g, "g")
    return b.build()


@pytest.mark.parametrize("opset", [None, 13, 17, 18, 19, 21])
def test_builder_graph_at_each_opset(opset):
    graph = builder_graph(with_hardswish=opset != 13)   # HardSwish exists from opset 14
    x = np.random.default_rng(0).standard_normal((3, 4, 5, 6)).astype(np.float32)
    expected = ember.Session(graph).run(None, {"x": x})
    data = export(graph, opset=opset)
    model = onnx.load_from_string(data)
    assert model.opset_import[0].version == (opset or onnx_export.DEFAULT_OPSET)
    assert_close(ort_run(data, {"x": x}), expected, f"opset {opset}")
    assert_close(ember.load(data).run(None, {"x": x}), expected, f"opset {opset} round trip")
    nodes = {n.op_type: n for n in model.graph.node}
    reduce_axes_attr = any(a.name == "axes" for a in nodes["ReduceMean"].attribute)
    assert reduce_axes_attr == (opset is not None and opset < 18)
    split_attrs = {a.name for a in nodes["Split"].attribute}
    if opset is None or opset >= 18:
        assert "num_outputs" in split_attrs and len(nodes["Split"].input) == 1
    else:
        assert "num_outputs" not in split_attrs and len(nodes["Split"].input) == 2
    assert len(nodes["Pad"].input) == (4 if opset is None or opset >= 18 else 3)


def test_output_that_is_an_initializer_or_an_input():
    g = Graph(inputs=["x"], outputs=["x", "c", "y"], name="passthrough",
              initializers={"c": np.arange(3, dtype=np.float32)},
              types={"x": TensorType(np.float32, ("N", 3))})
    g.nodes.append(Node("Add", ["x", "c"], ["y"], {}, "add"))
    x = np.ones((2, 3), np.float32)
    got = ort_run(export(g), {"x": x})
    c = np.arange(3, dtype=np.float32)
    assert_close(got, [x, c, x + c])


def test_softmax_cross_entropy_loss_exports():
    """ONNX's own loss op is exportable (ember's other loss ops are not)."""
    b = Builder("sce")
    scores = b.input("scores", (4, 5))
    labels = b.input("labels", (4,), dtype="int64")
    b.output(b.op("SoftmaxCrossEntropyLoss", [scores, labels], reduction="mean"), "loss")
    graph = b.build()
    rng = np.random.default_rng(0)
    feeds = {"scores": rng.standard_normal((4, 5)).astype(np.float32),
             "labels": np.array([0, 4, 2, 1], np.int64)}
    log_p = feeds["scores"] - np.log(np.exp(feeds["scores"]).sum(1, keepdims=True))
    want = np.float32(-log_p[np.arange(4), feeds["labels"]].mean())
    got = ort_run(export(graph), feeds)
    np.testing.assert_allclose(got[0], want, **TOL)


def test_metadata_and_producer():
    graph = load_onnx(models.lenet5())
    graph.metadata["author"] = "ember tests"
    model = to_onnx(graph, producer="ember-export-test")
    assert model.producer_name == "ember-export-test"
    assert {p.key: p.value for p in model.metadata_props}["author"] == "ember tests"
    assert load_onnx(model).metadata["author"] == "ember tests"


# ---- ONNX's backend node tests: load_onnx → to_onnx → onnxruntime vs shipped outputs ----------
def _conformance_cases():
    import test_onnx_conformance as conf   # its CASES are the ones ember already runs
    return [c for c in conf.CASES if conf._exclusion(c.name) is None]


CASES = _conformance_cases()
TRAINING_CASES = ("test_batchnorm_example_training_mode", "test_batchnorm_epsilon_training_mode",
                  "test_training_dropout_zero_ratio", "test_training_dropout_zero_ratio_mask")


def _array(x):
    return numpy_helper.to_array(x) if isinstance(x, onnx.TensorProto) else np.asarray(x)


def _matches(got, expected, case) -> bool:
    for g, e in zip(got, expected):
        e = _array(e)
        if g.dtype != e.dtype or g.shape != e.shape:
            return False
        if e.dtype.kind in "fc":
            if not np.allclose(g, e, rtol=case.rtol, atol=case.atol, equal_nan=True):
                return False
        elif not np.array_equal(g, e):
            return False
    return len(got) == len(expected)


def _run_case(data, case):
    sess = ort.InferenceSession(data, _QUIET, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    return [sess.run(None, dict(zip(names, [_array(x) for x in inputs])))
            for inputs, _ in case.data_sets]


def test_conformance_sample_is_large():
    assert len(CASES) >= 400


@pytest.mark.parametrize("opset", [None, 17], ids=["default_opset", "opset17"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_conformance_case_survives_export(case, opset):
    if case.name in TRAINING_CASES:
        with pytest.raises(ember.ModelError, match="training mode.*eval-mode graph"):
            to_onnx(load_onnx(case.model), opset=opset)
        return
    try:
        original = _run_case(case.model.SerializeToString(), case)
    except Exception as e:
        pytest.skip(f"onnxruntime cannot run the original case: {str(e)[:80]}")
    if not all(_matches(g, e, case) for g, (_, e) in zip(original, case.data_sets)):
        pytest.skip("onnxruntime disagrees with the case's expected outputs on the original")
    graph = load_onnx(case.model)
    case_opset = max(o.version for o in case.model.opset_import if o.domain in ("", "ai.onnx"))
    if opset is not None or case_opset > onnx_export.DEFAULT_OPSET:
        try:
            data = export(graph, opset=opset)
        except ember.ModelError as e:   # a form this opset cannot express: refused by name
            assert "opset" in str(e) and any(f"'{n.name}'" in str(e) for n in graph.nodes)
            return
    else:
        data = export(graph)
    for got, (_, expected) in zip(_run_case(data, case), case.data_sets):
        assert _matches(got, expected, case), f"{case.name}: onnxruntime on the export differs"


def test_conformance_cases_round_trip_through_ember():
    """ember.load of each export reproduces the expected outputs (a sample: every 4th case)."""
    bad = []
    for case in CASES[::4]:
        if case.name in TRAINING_CASES:
            continue
        try:
            exported = to_onnx(load_onnx(case.model))
        except ember.ModelError as e:   # a form the default opset cannot express, refused
            assert "opset" in str(e), e
            continue
        rep = ember.backend.prepare(exported)
        for inputs, expected in case.data_sets:
            got = rep.run([_array(x) for x in inputs])
            if not _matches(got, expected, case):
                bad.append(case.name)
    assert not bad, bad


# ---- what cannot be exported ------------------------------------------------------------------
def test_input_dtype_of_a_newer_opset_is_refused_naming_it():
    """ONNX's Range takes float16 from opset 27 on: an older opset is refused by name."""
    g = Graph(inputs=["start", "limit", "delta"], outputs=["y"], name="r")
    g.nodes.append(Node("Range", ["start", "limit", "delta"], ["y"], {}, "range16"))
    g.types.update({k: TensorType(np.float16, ()) for k in g.inputs})
    g.types["y"] = TensorType(np.float16, ("n",))
    with pytest.raises(ember.ModelError, match=r"Range node 'range16'.*tensor\(float16\) from "
                                               r"opset 27 on; exporting at opset 21"):
        to_onnx(g, opset=21)


def _typed(graph: Graph, **types):
    graph.types.update({k: TensorType(np.float32, v) for k, v in types.items()})
    return graph


def test_gradient_op_is_refused_naming_the_node():
    g = Graph(inputs=["dy"], outputs=["dx"], name="grads",
              initializers={"w": np.ones((2, 1, 3, 3), np.float32)})
    g.nodes.append(Node("ConvGradInput", ["dy", "w"], ["dx"],
                        {"strides": [1, 1], "pads": [1, 1, 1, 1], "dilations": [1, 1],
                         "group": 1, "input_shape": [1, 1, 4, 4]}, "conv1/grad_input"))
    _typed(g, dy=(1, 2, 4, 4), dx=(1, 1, 4, 4))
    with pytest.raises(ember.ModelError, match=r"ConvGradInput node 'conv1/grad_input'.*"
                                               r"no ONNX equivalent.*eval-mode graph"):
        to_onnx(g)


def test_ember_loss_ops_are_refused_all_at_once():
    g = Graph(inputs=["p", "t"], outputs=["l1", "l2"], name="losses")
    g.nodes += [Node("MSELoss", ["p", "t"], ["l1"], {}, "mse"),
                Node("HuberLoss", ["p", "t"], ["l2"], {"delta": 1.0}, "huber")]
    _typed(g, p=(2, 3), t=(2, 3), l1=(), l2=())
    with pytest.raises(ember.ModelError) as err:
        to_onnx(g)
    assert "'mse'" in str(err.value) and "'huber'" in str(err.value)


@pytest.mark.parametrize("layer", ["bn", "dropout"])
def test_training_mode_graph_is_refused(layer):
    model = _ConvNet().train()
    graph = model.to_graph(input_shape=(2, 3, 8, 8), seed=0)
    op = "BatchNormalization" if layer == "bn" else "Dropout"
    if layer == "dropout":   # leave only Dropout in training mode
        for n in graph.nodes:
            if n.op_type == "BatchNormalization":
                n.attrs["training_mode"] = 0
                n.outputs = n.outputs[:1]
    node = next(n for n in graph.nodes if n.op_type == op)
    with pytest.raises(ember.ModelError, match=rf"{op} node '{node.name}' runs in training mode"):
        to_onnx(graph)


def test_training_graph_from_autodiff_is_refused():
    from ember.graph import autodiff
    graph = autodiff.to_training(nn_graph("convnet", batch=2))
    with pytest.raises(ember.ModelError, match="eval-mode graph"):
        to_onnx(graph)


def test_op_too_new_for_requested_opset():
    graph = load_onnx(models.pattern_model("conv_hardswish"))
    with pytest.raises(ember.ModelError, match=r"HardSwish.*opset ≥ 14"):
        to_onnx(graph, opset=13)


@pytest.mark.parametrize("opset", [12, 10_000, "21", 17.0])
def test_bad_opset_is_refused(opset):
    with pytest.raises(ember.ModelError, match="opset"):
        to_onnx(load_onnx(models.lenet5()), opset=opset)


def test_ember_only_attribute_with_meaning_is_refused():
    """An attribute the schema lacks at the chosen opset is an error unless it holds ember's
    default (Resize ``antialias`` only exists from opset 18)."""
    b = Builder("resize")
    x = b.input("x", (1, 1, 4, 4))
    b.output(b.op("Resize", [x, None, np.array([1, 1, 0.5, 0.5], np.float32)], mode="linear",
                  antialias=1), "y")
    graph = b.build()
    with pytest.raises(ember.ModelError, match="antialias=1 has no form in Resize at opset 17"):
        to_onnx(graph, opset=17)
    x = np.random.default_rng(0).standard_normal((1, 1, 4, 4)).astype(np.float32)
    assert_close(ort_run(export(graph), {"x": x}), ember.Session(graph).run(None, {"x": x}))


def test_models_past_two_gigabytes_are_refused(monkeypatch):
    monkeypatch.setattr(onnx_export, "MAX_MODEL_BYTES", 100_000)   # lenet5 holds 247 kB
    with pytest.raises(ember.ModelError, match="2 GiB without external data"):
        to_onnx(load_onnx(models.lenet5()))


def test_not_a_graph():
    with pytest.raises(ember.ModelError, match="takes an ember Graph"):
        to_onnx(models.lenet5())


# ---- saving ----------------------------------------------------------------------------------
def test_save_onnx_writes_a_loadable_file(tmp_path):
    graph = load_onnx(models.lenet5())
    path = tmp_path / "lenet.onnx"
    save_onnx(graph, path)
    assert os.listdir(tmp_path) == ["lenet.onnx"]          # no temporary file left behind
    feeds = models.random_input(models.lenet5())
    assert_close(ember.load(str(path)).run(None, feeds), ember.Session(graph).run(None, feeds))
    onnx.checker.check_model(str(path), full_check=True)


def test_failed_save_leaves_the_old_file_alone(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"previous model")
    g = Graph(inputs=["p", "t"], outputs=["l"], name="loss")
    g.nodes.append(Node("MSELoss", ["p", "t"], ["l"], {}, "mse"))
    _typed(g, p=(2,), t=(2,), l=())
    with pytest.raises(ember.ModelError):
        save_onnx(g, path)
    assert path.read_bytes() == b"previous model"
    assert os.listdir(tmp_path) == ["model.onnx"]


def test_save_into_missing_folder_is_a_model_error(tmp_path):
    with pytest.raises(ember.ModelError, match="cannot write ONNX model"):
        save_onnx(load_onnx(models.lenet5()), tmp_path / "no" / "such" / "m.onnx")


@pytest.mark.parametrize("op", ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceL1", "ReduceL2",
                                "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp"])
def test_reduce_over_no_axis_exports_its_pointwise_part_at_old_opsets(op):
    """noop_with_empty_axes leaves every axis, yet |x|, x², log and exp still apply: at an
    opset without the attribute the export writes that pointwise part, not an Identity."""
    b = Builder("noop")
    x = b.input("x", (2, 3))
    b.output(b.op(op, [x, np.zeros(0, np.int64)], noop_with_empty_axes=1, keepdims=1), "y")
    graph = b.build()
    xv = np.random.default_rng(0).uniform(-2.0, 2.0, (2, 3)).astype(np.float32)
    if op == "ReduceLogSum":
        xv = np.abs(xv) + 0.5
    expected = ember.Session(graph).run(None, {"x": xv})
    for opset in (13, 17):
        assert_close(ort_run(export(graph, opset=opset), {"x": xv}), expected)
