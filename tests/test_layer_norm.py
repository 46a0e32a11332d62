"""LayerNormalization (ONNX opset 17) end to end: the kernels against small numpy twins written
here, the binders through a Session, onnxruntime on one-op models, shape errors, the
conformance selection, ``ember.nn.LayerNorm`` against torch, and export after training.

Oracles: the float64 twins below, onnxruntime, ONNX's backend cases (run in
test_onnx_conformance.py; here only checked to be selected) and torch (optional: those tests
skip without it). Gradients are also checked by finite differences in test_autodiff.py.

Tolerances: the kernels sum each row in float lanes flushed into double (kernels/sums_kernel.h) and
round the normalised values to float32 (rtol 1e-5, atol 1e-5·scale); dX is a difference of
terms of size inv·|dY·Scale|, so its atol scales with them; the dScale/dB column sums add one
float32 product per row in double (rtol 1e-4). Against onnxruntime, whose one-pass float
statistics differ from ember's by a few float32 ulps: rtol 1e-5, atol 1e-5. Whole models
against torch or onnxruntime: rtol 1e-4, atol 1e-5 (test_export.py's reasoning).
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import ember
from ember import nn, optim
from ember.graph.ir import Graph, Node, TensorType
from ember.graph.ops.normalization import LayerNormalization, LayerNormalizationGrad
from ember.importers.onnx_export import to_onnx
from ember.kernels import norm_grad, normalization
from ember.runtime.session import Session

THREADS = [1, 2]
rng = np.random.default_rng(17)


def rand(*shape, scale=1.0, shift=0.0):
    return (rng.standard_normal(shape) * scale + shift).astype(np.float32)


def close(got, want, rtol=1e-5, atol_rel=1e-5, scale=None):
    """Within rtol, or atol_rel × ``scale`` (default: the largest |want|)."""
    want = np.asarray(want, np.float64)
    if scale is None:
        scale = float(np.max(np.abs(want))) if want.size else 0.0
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol_rel * max(scale, 1e-30))


# ---- the naive twins (float64) ----------------------------------------------------------------
def forward_twin(x, scale, bias, axis, eps):
    """(Y, Mean, InvStdDev) of the axes from ``axis`` on, by definition."""
    x64 = x.astype(np.float64)
    axes = tuple(range(axis % x.ndim, x.ndim))
    mean = x64.mean(axis=axes, keepdims=True)
    inv = 1.0 / np.sqrt(((x64 - mean) ** 2).mean(axis=axes, keepdims=True) + eps)
    y = (x64 - mean) * inv * scale
    return (y if bias is None else y + bias), mean, inv


def grad_twin(dy, x, scale, axis, eps):
    """(dX, dScale, dB) by the chain rule, written out per row: x̂ = (x − μ)·inv,
    dx̂ = dy·scale, dX = inv·(dx̂ − mean(dx̂) − x̂·mean(dx̂·x̂)); and the largest
    |inv·dx̂|, the size of the terms dX is the difference of (the scale of its rounding
    errors: a row of one value has dX = 0 exactly, from terms that cancel)."""
    a = axis % x.ndim
    norm = x.shape[a:]
    rows, n = int(np.prod(x.shape[:a])), int(np.prod(norm))
    x2, g2 = x.astype(np.float64).reshape(rows, n), dy.astype(np.float64).reshape(rows, n)
    scale = np.asarray(scale, np.float64)
    s = np.broadcast_to(scale.reshape(scale.shape[max(scale.ndim - len(norm), 0):]),
                        norm).reshape(n)
    dx, terms = np.empty_like(x2), 0.0
    for r in range(rows):
        mu = x2[r].mean()
        inv = 1.0 / np.sqrt(((x2[r] - mu) ** 2).mean() + eps)
        xhat = (x2[r] - mu) * inv
        dxhat = g2[r] * s
        dx[r] = inv * (dxhat - dxhat.mean() - xhat * (dxhat * xhat).mean())
        terms = max(terms, float(np.abs(inv * dxhat).max()))
    mu = x2.mean(1, keepdims=True)
    xhat = (x2 - mu) / np.sqrt(((x2 - mu) ** 2).mean(1, keepdims=True) + eps)
    return (dx.reshape(x.shape), (g2 * xhat).sum(0).reshape(norm), g2.sum(0).reshape(norm),
            terms)


# ---- kernels ------------------------------------------------------------------------------------
NORMALIZED = [1, 3, 7, 13, 64, 257]
OUTER = [1, 5]


@pytest.mark.parametrize("n", NORMALIZED)
@pytest.mark.parametrize("rows", OUTER)
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("nthreads", THREADS)
def test_forward_kernel_against_twin(n, rows, with_bias, nthreads):
    x, scale = rand(rows, n, scale=3.0, shift=5.0), rand(n)
    bias = rand(n) if with_bias else None
    y, mean, inv = np.empty_like(x), np.empty(rows, np.float32), np.empty(rows, np.float32)
    normalization.layer_norm(x, scale, bias, y, mean, inv, 1e-5, nthreads)
    want_y, want_mean, want_inv = forward_twin(x, scale, bias, -1, 1e-5)
    close(y, want_y)
    close(mean, want_mean.reshape(rows))
    close(inv, want_inv.reshape(rows))
    y2 = np.empty_like(x)     # the statistics outputs are optional
    normalization.layer_norm(x, scale, bias, y2, None, None, 1e-5, nthreads)
    np.testing.assert_array_equal(y2, y)


def test_forward_kernel_wide_rows_run_in_parallel():
    """Enough work for threads_for to hand the loop to two threads: same bits as one."""
    x, scale, bias = rand(300, 257), rand(257), rand(257)
    y1, y2 = np.empty_like(x), np.empty_like(x)
    normalization.layer_norm(x, scale, bias, y1, None, None, 1e-5, 1)
    normalization.layer_norm(x, scale, bias, y2, None, None, 1e-5, 2)
    np.testing.assert_array_equal(y1, y2)
    close(y1, forward_twin(x, scale, bias, -1, 1e-5)[0])


@pytest.mark.parametrize("n", NORMALIZED)
@pytest.mark.parametrize("rows", OUTER + [300])
@pytest.mark.parametrize("nthreads", THREADS)
def test_grad_kernel_against_twin(n, rows, nthreads):
    x, dy, scale = rand(rows, n, scale=2.0, shift=1.0), rand(rows, n), rand(n)
    dx, ds, db = np.empty_like(x), np.empty(n, np.float32), np.empty(n, np.float32)
    stats = np.empty(2 * rows, np.float32)
    norm_grad.layer_norm_grad(dy, x, scale, dx, ds, db, stats, 1e-5, nthreads)
    want_dx, want_ds, want_db, terms = grad_twin(dy, x, scale, -1, 1e-5)
    close(dx, want_dx, rtol=1e-4, scale=terms)
    close(ds, want_ds, rtol=1e-4)
    close(db, want_db, rtol=1e-4)
    ds2 = np.empty_like(ds)          # any output may be absent
    norm_grad.layer_norm_grad(dy, x, scale, None, ds2, None, stats, 1e-5, nthreads)
    np.testing.assert_array_equal(ds2, ds)


def test_grad_kernel_refuses_short_stats():
    x = rand(4, 3)
    with pytest.raises(ValueError, match="8 floats"):
        norm_grad.layer_norm_grad(x, x, rand(3), None, None, None, np.empty(7, np.float32),
                                  1e-5, 1)


# ---- binders through a Session ------------------------------------------------------------------
def one_node(op_class, feeds, consts, attrs, outputs, threads=2):
    """A one-node graph of the op ``op_class`` (in its own domain), compiled: (session, the
    compiled node, its step)."""
    names = list(feeds) + list(consts)
    node = Node(op_class.__name__, names, list(outputs), dict(attrs), "node", op_class.domain)
    types = {k: TensorType(v.dtype, v.shape) for k, v in {**feeds, **consts}.items()}
    g = Graph(nodes=[node], inputs=list(feeds), outputs=[o for o in outputs if o],
              initializers=dict(consts), types=types)
    sess = Session(g, threads=threads, optimize=False)
    (cnode, step), = sess.compile(None).acquire().steps
    return sess, cnode, step


# (X's shape, axis, Scale's shape): normalized sizes 1…257, outer sizes 1 and 5, axis 0, −1
# and a middle axis, and Scale shapes that only broadcast to the normalized shape
AXIS_CASES = [
    ((5, 13), -1, (13,)), ((1, 257), -1, (257,)), ((5, 1), -1, (1,)), ((5, 64), 1, (64,)),
    ((7, 3), 0, (7, 3)), ((13,), 0, (13,)), ((1, 5, 7), 1, (5, 7)), ((5, 3, 7), -2, (3, 7)),
    ((5, 3, 7), 1, (7,)), ((5, 3, 7), 1, (1, 1, 7)), ((2, 4, 3, 5), 2, (3, 1)),
    ((5, 2, 3, 7), 0, (2, 3, 7)),
]


@pytest.mark.parametrize("shape,axis,scale_shape", AXIS_CASES)
@pytest.mark.parametrize("params", ["constant", "fed"])
def test_binder_against_twin(shape, axis, scale_shape, params):
    x = rand(*shape, scale=2.0, shift=-1.0)
    scale, bias = rand(*scale_shape), rand(*scale_shape)
    ps = {"scale": scale, "bias": bias}
    feeds, consts = ({"x": x}, ps) if params == "constant" else ({"x": x, **ps}, {})
    sess, _, step = one_node(LayerNormalization, feeds, consts, dict(axis=axis, epsilon=1e-3),
                             ["y", "mean", "inv"])
    assert not getattr(step, "reference", False), "LayerNormalization ran its numpy reference"
    y, mean, inv = sess.run(None, feeds)
    want = forward_twin(x, scale, bias, axis, 1e-3)
    close(y, want[0])
    assert mean.dtype == inv.dtype == np.float32 and mean.shape == want[1].shape
    close(mean, want[1])
    close(inv, want[2])
    if params == "fed":    # a Scale fed anew is read anew, broadcast or not
        again = sess.run(None, {**feeds, "scale": scale * 2})[0]
        close(again, forward_twin(x, scale * 2, bias, axis, 1e-3)[0])


def test_binder_without_bias_and_with_y_only():
    x, scale = rand(5, 3, 13), rand(13)
    sess, _, step = one_node(LayerNormalization, {"x": x}, {"s": scale}, {}, ["y"])
    assert not getattr(step, "reference", False)
    close(sess.run(None, {"x": x})[0], forward_twin(x, scale, None, -1, 1e-5)[0])


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_other_dtypes_run_the_reference(dtype):
    """No kernel: the numpy reference computes float16 in float32 (stash_type 1) and float64
    in float64; Mean and InvStdDev are float32 either way."""
    x, scale, bias = (rand(*s).astype(dtype) for s in ((5, 7), (7,), (7,)))
    sess, _, step = one_node(LayerNormalization, {"x": x}, {"s": scale, "b": bias}, {},
                             ["y", "mean", "inv"])
    assert getattr(step, "reference", False)
    y, mean, inv = sess.run(None, {"x": x})
    assert y.dtype == dtype and mean.dtype == inv.dtype == np.float32
    want = forward_twin(x, scale.astype(np.float64), bias.astype(np.float64), -1, 1e-5)
    np.testing.assert_allclose(y, want[0], rtol=1e-3 if dtype == np.float16 else 1e-12,
                               atol=1e-3 if dtype == np.float16 else 1e-12)
    close(inv, want[2])


@pytest.mark.parametrize("shape,axis,scale_shape", AXIS_CASES)
@pytest.mark.parametrize("absent", [(), (0,), (1, 2)])
def test_grad_binder_against_twin(shape, axis, scale_shape, absent):
    x, dy, scale = rand(*shape, shift=1.0), rand(*shape), rand(*scale_shape)
    outputs = ["" if k in absent else f"out{k}" for k in range(3)]
    attrs = dict(axis=axis % len(shape), epsilon=1e-3)
    feeds = {"dy": dy, "x": x, "scale": scale}
    sess, cnode, step = one_node(LayerNormalizationGrad, feeds, {}, attrs, outputs)
    assert not getattr(step, "reference", False), "LayerNormalizationGrad ran its reference"
    got = sess.run(None, feeds)
    want = grad_twin(dy, x, scale, axis, 1e-3)
    ref = LayerNormalizationGrad().compute(cnode, [dy, x, scale])
    terms = want[3]
    for g, k in zip(got, [k for k in range(3) if k not in absent]):
        assert g.shape == want[k].shape and g.dtype == np.float32
        close(g, want[k], rtol=1e-4, scale=terms if k == 0 else None)
        close(ref[k], want[k], rtol=1e-5, scale=terms if k == 0 else None)


# ---- against onnxruntime ----------------------------------------------------------------------
def onnx_model(x_shape, axis, scale_shape, bias=True, epsilon=1e-5, outputs=("Y",)):
    r = np.random.default_rng(5)
    inits = [numpy_helper.from_array(r.standard_normal(scale_shape).astype(np.float32), "W")]
    if bias:
        inits.append(numpy_helper.from_array(r.standard_normal(scale_shape).astype(np.float32),
                                             "B"))
    node = helper.make_node("LayerNormalization", ["X", "W"] + (["B"] if bias else []),
                            list(outputs), axis=axis, epsilon=epsilon)
    g = helper.make_graph([node], "ln", [helper.make_tensor_value_info(
        "X", TensorProto.FLOAT, x_shape)], [helper.make_tensor_value_info(
            o, TensorProto.FLOAT, None) for o in outputs], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("x_shape,axis,scale_shape,bias", [
    ((5, 257), -1, (257,), True), ((1, 7), -1, (7,), False), ((2, 3, 13), 1, (3, 13), True),
    ((5, 4, 64), -1, (64,), True), ((3, 5, 4, 2), 0, (5, 4, 2), True),
    ((4, 6, 5), -2, (1, 5), True), ((8, 1), -1, (1,), True)])
@pytest.mark.parametrize("threads", THREADS)
def test_matches_onnxruntime(x_shape, axis, scale_shape, bias, threads):
    m = onnx_model(x_shape, axis, scale_shape, bias, outputs=("Y", "Mean", "InvStdDev"))
    x = np.random.default_rng(1).standard_normal(x_shape).astype(np.float32) * 3 + 2
    sess = ember.load(m.SerializeToString(), threads=threads)
    got = sess.run(None, {"X": x})
    want = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]) \
        .run(None, {"X": x})
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


# ---- shape inference ----------------------------------------------------------------------------
@pytest.mark.parametrize("x_shape,axis,scale_shape,stash,match", [
    ((2, 3, 4), -1, (3,), 1, r"Scale of shape \(4,\) \(X's normalized axes\).*got \(3,\)"),
    ((2, 3, 4), 1, (4, 4), 1, r"Scale of shape \(3, 4\).*got \(4, 4\)"),
    ((2, 3, 4), 3, (4,), 1, r"axis in \[-3, 2\].*got 3"),
    ((2, 3, 4), -4, (4,), 1, r"axis in \[-3, 2\].*got -4"),
    ((2, 3, 4), -1, (4,), 11, r"stash_type 1"),
])
def test_shape_errors_name_what_was_expected(x_shape, axis, scale_shape, stash, match):
    m = onnx_model(x_shape, axis, scale_shape)
    m.graph.node[0].attribute.append(helper.make_attribute("stash_type", stash))
    with pytest.raises(ember.ShapeError, match=match):
        ember.load(m.SerializeToString()).run(None, {"X": np.zeros(x_shape, np.float32)})


def test_bias_of_another_dtype_is_refused():
    b = ember.graph.Builder("ln")
    x = b.input("x", (2, 4))
    bias = b.constant(np.zeros(4), dtype=np.float64)
    with pytest.raises(ember.ShapeError, match="expected B of X's dtype float32, got float64"):
        b.op("LayerNormalization", [x, np.ones(4, np.float32), bias])


def test_statistics_outputs_have_the_normalized_axes_set_to_1():
    b = ember.graph.Builder("ln")
    x = b.input("x", ("N", 3, 5, 7))
    y, mean, inv = b.op("LayerNormalization", [x, np.ones((5, 7), np.float32)], num_outputs=3,
                        axis=2)
    for v, name in ((y, "y"), (mean, "mean"), (inv, "inv")):
        b.output(v, name)
    graph = b.build()
    assert graph.types[mean.name].shape == ("N", 3, 1, 1)
    assert graph.types[inv.name].dtype == np.float32 and graph.types[y.name].shape == \
        ("N", 3, 5, 7)


def test_conformance_cases_are_selected_and_run():
    """The ONNX backend's test_layer_normalization_* cases run in test_onnx_conformance.py (the
    op set comes from the registry): none is skipped."""
    import test_onnx_conformance as conf
    names = {c.name for c in conf.CASES if conf._exclusion(c.name) is None}
    cases = [n for n in names if n.startswith("test_layer_normalization")
             and "expanded" not in n]
    assert len(cases) >= 18 and "LayerNormalization" in conf.OP_SET
    assert {"test_layer_normalization_4d_axis1", "test_layer_normalization_default_axis",
            "test_layer_normalization_3d_axis_negative_2_epsilon"} <= set(cases)


# ---- ember.nn.LayerNorm -------------------------------------------------------------------------
def test_layer_norm_module_traces_one_layer_normalization():
    model = nn.LayerNorm((4, 5), eps=1e-3)
    assert [k for k, _ in model.state_dict().items()] == ["weight", "bias"]
    assert model.weight.shape == model.bias.shape == (4, 5)
    graph = model.to_graph(input_shape=("N", 3, 4, 5))
    (node,) = [n for n in graph.nodes if n.op_type == "LayerNormalization"]
    assert node.inputs == ["input", "weight", "bias"] and node.attrs["axis"] == -2
    assert node.attrs["epsilon"] == pytest.approx(1e-3)
    assert nn.LayerNorm(6, elementwise_affine=False).state_dict() == {}
    assert list(nn.LayerNorm(6, bias=False).state_dict()) == ["weight"]
    with pytest.raises(ember.ShapeError, match=r"\[\*, 4, 5\]"):
        model.to_graph(input_shape=("N", 5, 4))


class Tagger(nn.Module):
    """A token tagger: Linear → LayerNorm → ReLU → Linear → LayerNorm(no bias) → Linear."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(6, 16)
        self.norm = nn.LayerNorm(16)
        self.hidden = nn.Linear(16, 16)
        self.norm2 = nn.LayerNorm(16, eps=1e-3, bias=False)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        h = nn.functional.relu(self.norm(self.embed(x)))
        return self.head(self.norm2(self.hidden(h)))


def _tagger_data(n=32):
    r = np.random.default_rng(11)
    x = (r.standard_normal((n, 6)) * 2 + 1).astype(np.float32)
    return x, (x[:, 0] > 1).astype(np.int64) + (x[:, 1] > 1).astype(np.int64)


def test_trained_model_exports_and_onnxruntime_agrees(tmp_path):
    x, y = _tagger_data()
    trainer = ember.Trainer(Tagger(), input_shape=(6,), loss=nn.CrossEntropyLoss(),
                            optimizer=optim.Adam(lr=1e-2), batch_size=8, seed=0)
    before = trainer.state_dict()["norm.weight"].copy()
    trainer.fit(x, y, epochs=2, verbose=False)
    assert not np.array_equal(trainer.state_dict()["norm.weight"], before)   # it trained
    path = tmp_path / "tagger.onnx"
    trainer.export_onnx(path)
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert [n.op_type for n in model.graph.node].count("LayerNormalization") == 2
    assert model.opset_import[0].version >= 17
    want = trainer.predict(x)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]) \
        .run(None, {model.graph.input[0].name: x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ember.load(str(path)).run(None, {"input": x})[0], want,
                               rtol=1e-4, atol=1e-5)


def test_export_below_opset_17_is_refused_naming_the_node():
    graph = nn.LayerNorm(8).eval().to_graph(input_shape=("N", 8))
    node = graph.nodes[0].name
    with pytest.raises(ember.ModelError, match=rf"'{node}'.*LayerNormalization needs opset ≥ "
                                               rf"17; exporting at opset 16"):
        to_onnx(graph, opset=16)
    assert to_onnx(graph, opset=17).opset_import[0].version == 17


def test_forward_and_training_step_match_torch():
    torch = pytest.importorskip("torch")

    class TorchTagger(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Linear(6, 16)
            self.norm = torch.nn.LayerNorm(16)
            self.hidden = torch.nn.Linear(16, 16)
            self.norm2 = torch.nn.LayerNorm(16, eps=1e-3, bias=False)
            self.head = torch.nn.Linear(16, 3)

        def forward(self, x):
            return self.head(self.norm2(self.hidden(torch.relu(self.norm(self.embed(x))))))

    torch.manual_seed(0)
    theirs = TorchTagger()
    with torch.no_grad():    # affine terms away from their initial ones and zeros
        for m in (theirs.norm, theirs.norm2):
            m.weight.uniform_(0.5, 1.5)
        theirs.norm.bias.uniform_(-0.5, 0.5)
    state = {k: v.detach().numpy().copy() for k, v in theirs.state_dict().items()}
    ours = Tagger()
    ours.load_state_dict(state)
    assert list(ours.state_dict()) == list(state)
    x, y = _tagger_data(8)
    eval_out = ember.Session(ours.eval().to_graph(input_shape=("N", 6))).run(None,
                                                                             {"input": x})[0]
    np.testing.assert_allclose(eval_out, theirs(torch.from_numpy(x)).detach().numpy(),
                               rtol=1e-4, atol=1e-5)

    trainer = ember.Trainer(ours.train(), input_shape=(6,), loss=nn.CrossEntropyLoss(),
                            optimizer=optim.SGD(lr=0.1, momentum=0.9), batch_size=8, seed=0)
    topt = torch.optim.SGD(theirs.parameters(), lr=0.1, momentum=0.9)
    for _ in range(2):
        topt.zero_grad()
        loss = torch.nn.functional.cross_entropy(theirs(torch.from_numpy(x)),
                                                 torch.from_numpy(y))
        loss.backward()
        topt.step()
        assert trainer.train_step(x, y) == pytest.approx(loss.item(), rel=1e-5)
    got = trainer.state_dict()
    for k, v in theirs.state_dict().items():
        want = v.detach().numpy()
        np.testing.assert_allclose(got[k], want, rtol=1e-4,
                                   atol=1e-5 * max(1.0, float(np.abs(want).max())), err_msg=k)
