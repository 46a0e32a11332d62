"""ember.nn against torch.nn, the library it mirrors (the oracle here is PyTorch itself).

For every layer issue 3 lists, built with the same constructor arguments in both libraries:
the state_dict has the same names, order and shapes; with torch's weights copied in, the
forward outputs match; the gradients of Σ(out·R) (R random) with respect to the parameters of
the layer and of a 1×1 layer in front of it (so the gradient through the layer's input is
checked too) match torch's autograd; and a few training steps of a small CNN with SGD +
momentum and with Adam leave the same parameters and running statistics.

PyTorch is not an ember dependency: without it this file is skipped.

BatchNorm's running_var: torch updates it with the batch's unbiased variance (× n/(n−1), n =
samples per channel = N·H·W), ONNX's BatchNormalization with the population one; ember's
training graphs set the op's ``running_var_unbiased`` attribute, so they match torch (checked
step by step below; ONNX's semantics, the attribute at 0, are pinned in test_grad_kernels.py).
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
tnn = torch.nn

import ember  # noqa: E402
from ember import nn, optim  # noqa: E402
from ember.nn import functional as F  # noqa: E402

RTOL, ATOL = 1e-4, 1e-5


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# (id, layer name in both libraries, args, kwargs, one sample's input shape)
LAYERS = [
    ("conv2d", "Conv2d", (3, 4, 3), {}, (3, 7, 7)),
    ("conv2d-stride-pad", "Conv2d", (3, 4, 3), dict(stride=2, padding=1), (3, 7, 7)),
    ("conv2d-same-dilation", "Conv2d", (3, 4, 3), dict(padding="same", dilation=2), (3, 7, 7)),
    ("conv2d-same-even-rect", "Conv2d", (3, 4, (2, 4)), dict(padding="same"), (3, 6, 7)),
    ("conv2d-groups-nobias", "Conv2d", (4, 6, 3), dict(groups=2, bias=False), (4, 6, 6)),
    ("conv2d-depthwise", "Conv2d", (4, 4, 3), dict(groups=4, padding=1), (4, 5, 5)),
    ("convtranspose2d", "ConvTranspose2d", (3, 4, 3),
     dict(stride=2, padding=1, output_padding=1), (3, 4, 4)),
    ("convtranspose2d-groups-nobias", "ConvTranspose2d", (4, 6, 2), dict(groups=2, bias=False),
     (4, 3, 3)),
    ("linear", "Linear", (6, 5), {}, (6,)),
    ("linear-3d", "Linear", (6, 5), {}, (3, 6)),
    ("linear-nobias", "Linear", (6, 5), dict(bias=False), (6,)),
    ("maxpool2d", "MaxPool2d", (2,), {}, (3, 6, 6)),
    ("maxpool2d-pad", "MaxPool2d", (3, 2, 1), {}, (3, 7, 7)),
    ("maxpool2d-ceil", "MaxPool2d", (3, 2), dict(ceil_mode=True), (3, 8, 8)),
    ("avgpool2d-pad", "AvgPool2d", (3, 2, 1), {}, (3, 7, 7)),
    ("avgpool2d-pad-exclude", "AvgPool2d", (3, 2, 1), dict(count_include_pad=False), (3, 7, 7)),
    ("avgpool2d-ceil", "AvgPool2d", (2,), dict(ceil_mode=True), (3, 7, 7)),
    ("avgpool2d-ceil-pad-exclude", "AvgPool2d", (3, 2, 1),
     dict(ceil_mode=True, count_include_pad=False), (3, 8, 8)),
    ("adaptiveavgpool2d", "AdaptiveAvgPool2d", (1,), {}, (3, 5, 5)),
    ("batchnorm1d-NC", "BatchNorm1d", (5,), {}, (5,)),
    ("batchnorm1d-NCL", "BatchNorm1d", (5,), dict(momentum=0.3, eps=1e-3), (5, 6)),
    ("batchnorm2d", "BatchNorm2d", (3,), {}, (3, 4, 4)),
    ("batchnorm2d-noaffine", "BatchNorm2d", (3,), dict(affine=False), (3, 4, 4)),
    ("layernorm", "LayerNorm", (4,), {}, (3, 4)),
    ("layernorm-2d-eps-nobias", "LayerNorm", ((4, 4),), dict(eps=1e-3, bias=False), (3, 4, 4)),
    ("layernorm-noaffine", "LayerNorm", (6,), dict(elementwise_affine=False), (6,)),
    ("dropout", "Dropout", (0.3,), {}, (3, 4, 4)),
    ("relu", "ReLU", (), {}, (3, 4, 4)),
    ("relu6", "ReLU6", (), {}, (3, 4, 4)),
    ("leakyrelu", "LeakyReLU", (0.2,), {}, (3, 4, 4)),
    ("elu", "ELU", (0.7,), {}, (3, 4, 4)),
    ("silu", "SiLU", (), {}, (3, 4, 4)),
    ("sigmoid", "Sigmoid", (), {}, (3, 4, 4)),
    ("tanh", "Tanh", (), {}, (3, 4, 4)),
    ("softmax-dim1", "Softmax", (), dict(dim=1), (3, 4, 4)),
    ("softmax-last", "Softmax", (), dict(dim=-1), (3, 4, 4)),
    ("softmax-2d", "Softmax", (), dict(dim=1), (6,)),
    ("logsoftmax-dim1", "LogSoftmax", (), dict(dim=1), (3, 4, 4)),
    ("logsoftmax-2d", "LogSoftmax", (), dict(dim=1), (6,)),
    ("flatten", "Flatten", (), {}, (3, 4, 4)),
    ("flatten-2", "Flatten", (2,), {}, (3, 4, 4)),
    ("identity", "Identity", (), {}, (3, 4, 4)),
    ("lrn-5", "LocalResponseNorm", (5,), dict(alpha=0.05, beta=0.75, k=2.0), (7, 3, 3)),
    ("lrn-3-ncl", "LocalResponseNorm", (3,), dict(alpha=0.1, beta=0.5, k=1.0), (6, 5)),
    ("lrn-4", "LocalResponseNorm", (4,), dict(alpha=0.05, beta=0.75, k=2.0), (7, 3, 3)),
    ("lrn-2-ncl", "LocalResponseNorm", (2,), dict(alpha=0.1, beta=0.6, k=1.5), (6, 5)),
    ("conv1d", "Conv1d", (4, 6, 3), {}, (4, 9)),
    ("conv1d-stride-pad-nobias", "Conv1d", (4, 6, 3), dict(stride=2, padding=1, bias=False),
     (4, 9)),
    ("conv1d-same-dilation-groups", "Conv1d", (4, 6, 3),
     dict(padding="same", dilation=2, groups=2), (4, 9)),
    ("maxpool1d", "MaxPool1d", (3, 2, 1), dict(ceil_mode=True), (4, 10)),
    ("avgpool1d", "AvgPool1d", (3, 2, 1), dict(count_include_pad=False), (4, 10)),
]
IDS = [case[0] for case in LAYERS]
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same':UserWarning")

# Dropout's gradients are not compared: the two libraries draw different random masks.
GRADIENT_CASES = [pytest.param(c, id=c[0]) for c in LAYERS if c[0] != "dropout"]


def make(lib, name, args, kwargs):
    return getattr(lib, name)(*args, **kwargs)


def torch_state(module) -> dict:
    return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()
            if not k.endswith("num_batches_tracked")}


def randomize_bn(tmodule, seed=1):
    """Non-trivial affine terms and running statistics for every torch BatchNorm."""
    g = torch.Generator().manual_seed(seed)
    for m in tmodule.modules():
        if isinstance(m, tnn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                    m.bias.copy_(torch.rand(m.num_features, generator=g) - 0.5)


def pair(case, prefix=False, seed=0):
    """(ember module, torch module with the same weights) for one LAYERS case; with
    ``prefix`` both get a 1×1 layer with parameters in front (a Sequential "0", "1")."""
    _, name, args, kwargs, sample = case
    torch.manual_seed(seed)
    t = make(tnn, name, args, kwargs)
    e = make(nn, name, args, kwargs)
    if prefix:
        c = sample[0]
        front = {1: ("Linear", (c, c)), 2: ("Conv1d", (c, c, 1)), 3: ("Conv2d", (c, c, 1))}
        fname, fargs = front[len(sample)]
        t = tnn.Sequential(make(tnn, fname, fargs, {}), t)
        e = nn.Sequential(make(nn, fname, fargs, {}), e)
    randomize_bn(t)
    e.load_state_dict(torch_state(t))
    return e, t


def run(graph, x):
    return ember.Session(graph, threads=1).run(None, {"input": x})[0]


# ---- names, shapes, forward ----------------------------------------------------------------------
@pytest.mark.parametrize("case", LAYERS, ids=IDS)
def test_state_dict_names_and_shapes_match_torch(case):
    _, name, args, kwargs, _ = case
    e, t = make(nn, name, args, kwargs), make(tnn, name, args, kwargs)
    theirs = [(k, tuple(v.shape)) for k, v in t.state_dict().items()
              if not k.endswith("num_batches_tracked")]
    ours = [(k, tuple(v.shape)) for k, v in e.state_dict().items()]
    assert ours == theirs
    assert e.num_parameters() == sum(p.numel() for p in t.parameters())


@pytest.mark.parametrize("case", LAYERS, ids=IDS)
def test_eval_forward_matches_torch(case):
    e, t = pair(case)
    x = rand(3, *case[4], seed=2)
    want = t.eval()(torch.from_numpy(x)).detach().numpy()
    got = run(e.eval().to_graph(input_shape=("N",) + case[4]), x)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("case", [c for c in LAYERS if "batchnorm" in c[0]],
                         ids=[c[0] for c in LAYERS if "batchnorm" in c[0]])
def test_batchnorm_train_forward_matches_torch(case):
    """Training mode normalizes with the batch's own statistics in both libraries."""
    e, t = pair(case)
    x = rand(4, *case[4], seed=3)
    want = t.train()(torch.from_numpy(x)).detach().numpy()
    got = run(e.train().to_graph(input_shape=(4,) + case[4]), x)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


# ---- gradients ----------------------------------------------------------------------------------
class Dot(nn.Module):
    """Σ(pred · R): its gradient with respect to pred is R (a custom loss)."""

    def forward(self, pred, target):
        return F.sum(pred * target)


def _close(got, want, what):
    scale = max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL * scale, err_msg=what)


@pytest.mark.parametrize("case", GRADIENT_CASES)
def test_parameter_gradients_match_torch_autograd(case):
    """d Σ(out·R) / dθ for the layer's parameters and the 1×1 layer in front of it, in
    training mode (BatchNorm with batch statistics), against torch's autograd."""
    e, t = pair(case, prefix=True)
    n = 4
    x = rand(n, *case[4], seed=4)
    out = t.train()(torch.from_numpy(x))
    r = rand(*out.shape, seed=5)
    (out * torch.from_numpy(r)).sum().backward()
    want = {k: p.grad.numpy() for k, p in t.named_parameters()}
    trainer = ember.Trainer(e, input_shape=case[4], loss=Dot(), batch_size=n)
    got = trainer.gradients(x, r)
    assert sorted(got) == sorted(want)
    for k in want:
        _close(got[k], want[k], k)


def test_dropout_is_off_in_eval_and_scales_survivors_in_training():
    e, t = nn.Dropout(0.3), tnn.Dropout(0.3)
    x = np.abs(rand(8, 50)) + 0.1
    np.testing.assert_array_equal(run(e.eval().to_graph(input_shape=x.shape), x),
                                  t.eval()(torch.from_numpy(x)).numpy())
    got = run(e.train().to_graph(input_shape=x.shape), x)
    kept = got != 0
    np.testing.assert_allclose(got[kept], x[kept] / 0.7, rtol=1e-6)   # torch's inverted scaling


# ---- training steps of a small CNN --------------------------------------------------------------
def small_cnn(lib):
    # No conv bias before BatchNorm: its true gradient is 0, so both libraries' gradients are
    # float rounding noise, which Adam's g/√v would blow up into unrelated updates.
    return lib.Sequential(lib.Conv2d(1, 4, 3, padding=1, bias=False), lib.BatchNorm2d(4),
                          lib.ReLU(),
                          lib.MaxPool2d(2), lib.Flatten(), lib.Linear(4 * 4 * 4, 10))


OPTIMIZERS = {
    "sgd-momentum": (lambda: optim.SGD(lr=0.1, momentum=0.9),
                     lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9)),
    "sgd-nesterov-wd": (lambda: optim.SGD(lr=0.05, momentum=0.9, nesterov=True,
                                          weight_decay=1e-2),
                        lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True,
                                                   weight_decay=1e-2)),
    "adam": (lambda: optim.Adam(lr=1e-2), lambda ps: torch.optim.Adam(ps, lr=1e-2)),
}


def _train_both(opt_name, steps=3, n=16):
    make_e, make_t = OPTIMIZERS[opt_name]
    torch.manual_seed(0)
    t = small_cnn(tnn)
    e = small_cnn(nn)
    e.load_state_dict(torch_state(t))
    trainer = ember.Trainer(e, input_shape=(1, 8, 8), loss=nn.CrossEntropyLoss(),
                            optimizer=make_e(), batch_size=n, seed=0)
    topt = make_t(t.parameters())
    t.train()
    batches = []
    for k in range(steps):
        x = rand(n, 1, 8, 8, seed=10 + k)
        y = np.random.default_rng(20 + k).integers(0, 10, n)
        batches.append(x)
        topt.zero_grad()
        loss = tnn.functional.cross_entropy(t(torch.from_numpy(x)), torch.from_numpy(y))
        loss.backward()
        topt.step()
        assert trainer.train_step(x, y) == pytest.approx(loss.item(), rel=1e-5)
    return trainer, t, batches


@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
def test_training_steps_match_torch(opt_name):
    trainer, t, _ = _train_both(opt_name)
    ours, theirs = trainer.state_dict(), torch_state(t)
    assert list(ours) == list(theirs)
    for k, _ in t.named_parameters():
        _close(ours[k], theirs[k], k)
    _close(ours["1.running_mean"], theirs["1.running_mean"], "1.running_mean")


@pytest.mark.parametrize("opt_name", ["sgd-momentum", "adam"])
def test_batchnorm_running_var_matches_torch(opt_name):
    """torch's running_var moves toward the batch's unbiased variance (divide by n − 1);
    ember's training graph does the same. Checked against torch over three steps and, after
    one step, against the unbiased form computed here from the conv output."""
    trainer, t, _ = _train_both(opt_name)
    _close(trainer.state_dict()["1.running_var"], torch_state(t)["1.running_var"],
           "1.running_var")
    trainer, t, batches = _train_both(opt_name, steps=1)
    torch.manual_seed(0)            # the conv weights before the step, as _train_both drew them
    fresh = small_cnn(tnn)
    h = fresh[0](torch.from_numpy(batches[0])).detach().numpy().astype(np.float64)
    unbiased, population = h.var((0, 2, 3), ddof=1), h.var((0, 2, 3))
    ours = trainer.state_dict()["1.running_var"]
    np.testing.assert_allclose(ours, 0.9 * 1 + 0.1 * unbiased, rtol=1e-5)
    assert not np.allclose(ours, 0.9 * 1 + 0.1 * population, rtol=1e-6, atol=0)
