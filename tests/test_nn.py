"""ember.nn: torch.nn-shaped modules traced into graphs.

Oracles: parameter counts from the course material (REFERENCE.md), parameter shapes written by
hand from torch.nn's documentation, and numpy forwards written here.
"""
import math

import numpy as np
import pytest

import ember
import ember.nn as nn
import ember.nn.functional as F
from ember.graph.errors import ModelError, ShapeError

# float32 convolutions summing a few hundred products, compared with a float64 reference.
RTOL, ATOL = 1e-4, 1e-5


def run(graph, x):
    return ember.Session(graph, threads=1).run(None, {"input": x})[0]


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def conv_ref(x, w, b=None, stride=1, pads=(0, 0, 0, 0), dilation=1):
    """Textbook cross-correlation; pads = (top, left, bottom, right)."""
    x = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    m, _, kh, kw = w.shape
    eh, ew = dilation * (kh - 1) + 1, dilation * (kw - 1) + 1
    oh, ow = (x.shape[2] - eh) // stride + 1, (x.shape[3] - ew) // stride + 1
    y = np.zeros((x.shape[0], m, oh, ow))
    for i in range(oh):
        for j in range(ow):
            patch = x[:, :, i * stride:i * stride + eh:dilation,
                      j * stride:j * stride + ew:dilation]
            y[:, :, i, j] = np.einsum("nchw,mchw->nm", patch, w)
    return y if b is None else y + b.reshape(1, -1, 1, 1)


def maxpool_ref(x, k, s, p=0):
    x = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=-np.inf)
    oh, ow = (x.shape[2] - k) // s + 1, (x.shape[3] - k) // s + 1
    return np.stack([np.stack([x[:, :, i * s:i * s + k, j * s:j * s + k].max((2, 3))
                               for j in range(ow)], -1) for i in range(oh)], -2)


def bn_ref(x, sd, prefix, eps=1e-5):
    c = (1, -1) + (1,) * (x.ndim - 2)
    g = {k: sd[f"{prefix}.{k}"].reshape(c) for k in
         ("weight", "bias", "running_mean", "running_var")}
    return (x - g["running_mean"]) / np.sqrt(g["running_var"] + eps) * g["weight"] + g["bias"]


def randomize_bn(model, seed=1):
    """Non-trivial running statistics and affine terms, so eval-mode BN is really tested."""
    rng = np.random.default_rng(seed)
    sd = model.state_dict()
    for k, v in sd.items():
        if k.endswith("running_var") or k.endswith("weight") and v.ndim == 1:
            sd[k] = rng.uniform(0.5, 2.0, v.shape).astype(np.float32)
        elif k.endswith("running_mean") or k.endswith("bias") and "bn" in k:
            sd[k] = rng.uniform(-0.5, 0.5, v.shape).astype(np.float32)
    model.load_state_dict(sd)
    return model.state_dict()


# ---- parameter counts (REFERENCE.md) ---------------------------------------------------------
def course_lenet():
    return nn.Sequential(
        nn.Conv2d(3, 8, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))


def lenet5():
    return nn.Sequential(
        nn.Conv2d(1, 6, 5), nn.Tanh(), nn.AvgPool2d(2),
        nn.Conv2d(6, 16, 5), nn.Tanh(), nn.AvgPool2d(2), nn.Flatten(),
        nn.Linear(400, 120), nn.Tanh(), nn.Linear(120, 84), nn.Tanh(), nn.Linear(84, 10))


class VGG16(nn.Module):
    def __init__(self):
        super().__init__()
        layers, c = [], 3
        for v in [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
                  512, 512, 512, "M"]:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU()]
                c = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096), nn.ReLU(), nn.Dropout(),
            nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(), nn.Linear(4096, 1000))

    def forward(self, x):
        return self.classifier(F.flatten(self.features(x), 1))


class PolicyNet(nn.Module):
    """AlphaGo-style: 5×5 conv, 11 3×3 convs, 1×1 conv without bias + a bias per point."""

    def __init__(self):
        super().__init__()
        self.convs = nn.Sequential(nn.Conv2d(48, 192, 5, padding=2), nn.ReLU())
        for _ in range(11):
            self.convs.append(nn.Conv2d(192, 192, 3, padding=1))
            self.convs.append(nn.ReLU())
        self.head = nn.Conv2d(192, 1, 1, bias=False)
        self.position_bias = nn.Parameter((1, 19 * 19), "zeros")

    def forward(self, x):
        logits = F.flatten(self.head(self.convs(x)), 1) + self.position_bias
        return F.softmax(logits, dim=1)


@pytest.mark.parametrize("make, expected", [(course_lenet, 62_958), (lenet5, 61_706),
                                            (VGG16, 138_357_544), (PolicyNet, 3_882_793)])
def test_parameter_counts_match_reference(make, expected):
    model = make()
    assert sum(p.size for p in model.parameters()) == expected
    assert model.num_parameters() == expected
    assert all(p.data is None for p in model.parameters())  # counted from shapes only


@pytest.mark.parametrize("make, shape, out", [(course_lenet, (2, 3, 32, 32), (2, 10)),
                                              (lenet5, (2, 1, 32, 32), (2, 10)),
                                              (PolicyNet, ("N", 48, 19, 19), ("N", 361))])
def test_traced_graphs_hold_every_parameter(make, shape, out):
    model = make()
    g = model.eval().to_graph(input_shape=shape, seed=0)
    assert g.inputs == ["input"] and g.outputs == ["output"]
    got = g.types["output"].shape
    # A symbolic batch keeps being symbolic (Flatten names its merged dim afresh).
    assert got[1:] == out[1:] and (got[0] == out[0] or isinstance(got[0], str))
    names = [n for n, _ in model.named_parameters()]
    assert g.metadata["parameters"] == names
    assert sum(g.initializers[n].size for n in names) == model.num_parameters()


def test_policy_net_softmax_over_board():
    model = PolicyNet().eval()
    g = model.to_graph(input_shape=(1, 48, 19, 19), seed=0)
    probs = run(g, rand(1, 48, 19, 19))
    assert probs.shape == (1, 361)
    np.testing.assert_allclose(probs.sum(), 1.0, rtol=1e-5)


# ---- names and shapes as torch has them -------------------------------------------------------
def test_parameter_names_and_shapes_like_torch():
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, (3, 5), stride=2, groups=4), nn.ConvTranspose2d(32, 8, 4, stride=2,
                                                                          groups=2),
        nn.Flatten(), nn.Linear(8, 4), nn.BatchNorm1d(4))
    # torch.nn docs: Conv2d weight (out, in/groups, kH, kW); ConvTranspose2d weight
    # (in, out/groups, kH, kW); Linear weight (out, in); BatchNorm weight/bias (C,).
    assert [(n, p.shape) for n, p in model.named_parameters()] == [
        ("0.weight", (16, 3, 3, 3)), ("1.weight", (16,)), ("1.bias", (16,)),
        ("3.weight", (32, 4, 3, 5)), ("3.bias", (32,)),
        ("4.weight", (32, 4, 4, 4)), ("4.bias", (8,)),
        ("6.weight", (4, 8)), ("6.bias", (4,)), ("7.weight", (4,)), ("7.bias", (4,))]
    assert list(model.state_dict()) == [
        "0.weight", "1.weight", "1.bias", "1.running_mean", "1.running_var",
        "3.weight", "3.bias", "4.weight", "4.bias", "6.weight", "6.bias",
        "7.weight", "7.bias", "7.running_mean", "7.running_var"]
    with pytest.raises(ValueError, match="divisible"):
        nn.Conv2d(3, 8, 3, groups=2)


def test_nested_names_and_shared_modules():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
            self.fc = nn.Linear(2, 2)
            self.again = self.fc   # shared: listed once, like torch

        def forward(self, x):
            x = F.flatten(F.adaptive_avg_pool2d(self.features(x), 1))
            return self.again(self.fc(x))

    net = Net()
    assert [n for n, _ in net.named_parameters()] == [
        "features.0.weight", "features.0.bias", "fc.weight", "fc.bias"]
    g = net.to_graph(input_shape=(1, 1, 5, 5), seed=0)
    sd = net.state_dict()
    x = rand(1, 1, 5, 5)
    h = np.maximum(conv_ref(x, sd["features.0.weight"], sd["features.0.bias"]), 0).mean((2, 3))
    for _ in range(2):
        h = h @ sd["fc.weight"].T + sd["fc.bias"]
    np.testing.assert_allclose(run(g, x), h, rtol=RTOL, atol=ATOL)


# ---- initialization and seeds ---------------------------------------------------------------
def test_torch_default_init_bounds_and_seeds():
    a, b = nn.Conv2d(16, 32, 3), nn.Conv2d(16, 32, 3)
    ga = a.to_graph(input_shape=(1, 16, 8, 8), seed=5)
    gb = b.to_graph(input_shape=(1, 16, 8, 8), seed=5)
    np.testing.assert_array_equal(ga.initializers["weight"], gb.initializers["weight"])
    np.testing.assert_array_equal(a.weight.data, ga.initializers["weight"])
    bound = 1 / math.sqrt(16 * 9)   # kaiming_uniform(a=√5) and the bias rule: U(±1/√fan_in)
    for p in (a.weight.data, a.bias.data):
        assert np.abs(p).max() <= bound and np.abs(p).max() > 0.9 * bound
    # tracing again keeps the weights (they belong to the module now)
    again = a.to_graph(input_shape=(1, 16, 8, 8), seed=6)
    np.testing.assert_array_equal(again.initializers["weight"], ga.initializers["weight"])
    c = nn.Conv2d(16, 32, 3)
    c.to_graph(input_shape=(1, 16, 8, 8), seed=6)
    assert not np.array_equal(c.weight.data, a.weight.data)


def test_state_dict_round_trip_and_errors():
    src, dst = course_lenet(), course_lenet()
    sd = src.init_parameters(seed=3).state_dict()
    dst.load_state_dict(sd)
    x = rand(1, 3, 32, 32)
    np.testing.assert_array_equal(run(src.to_graph(input_shape=(1, 3, 32, 32)), x),
                                  run(dst.to_graph(input_shape=(1, 3, 32, 32)), x))
    with pytest.raises(ShapeError, match="0.weight"):
        dst.load_state_dict({**sd, "0.weight": np.zeros((8, 3, 3, 3))})
    with pytest.raises(ModelError, match="missing"):
        dst.load_state_dict({"0.weight": sd["0.weight"]})


# ---- non-sequential models traced and checked against numpy ------------------------------------
class ResidualBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU()

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(y)) + x)


def test_residual_block_matches_numpy():
    block = ResidualBlock(4).eval()
    g = block.to_graph(input_shape=("N", 4, 6, 6), seed=0)
    sd = randomize_bn(block)
    g = block.to_graph(input_shape=("N", 4, 6, 6))
    x = rand(2, 4, 6, 6)
    p = (1, 1, 1, 1)
    y = np.maximum(bn_ref(conv_ref(x, sd["conv1.weight"], pads=p), sd, "bn1"), 0)
    expect = np.maximum(bn_ref(conv_ref(y, sd["conv2.weight"], pads=p), sd, "bn2") + x, 0)
    np.testing.assert_allclose(run(g, x), expect, rtol=RTOL, atol=ATOL)


class Inception(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.b1 = nn.Conv2d(c, 2, 1)
        self.b3 = nn.Sequential(nn.Conv2d(c, 3, 1), nn.ReLU(), nn.Conv2d(3, 4, 3, padding=1))
        self.b5 = nn.Sequential(nn.Conv2d(c, 2, 1), nn.ReLU(), nn.Conv2d(2, 3, 5, padding=2))
        self.pool = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), nn.Conv2d(c, 2, 1))

    def forward(self, x):
        branches = [self.b1(x), self.b3(x), self.b5(x), self.pool(x)]
        return F.relu(F.concat(branches, dim=1))


def test_inception_block_matches_numpy():
    block = Inception(5)
    g = block.eval().to_graph(input_shape=(2, 5, 7, 7), seed=1)
    assert g.types["output"].shape == (2, 11, 7, 7)
    assert [n for n, _ in block.named_parameters()][:4] == [
        "b1.weight", "b1.bias", "b3.0.weight", "b3.0.bias"]
    sd = block.state_dict()
    x = rand(2, 5, 7, 7)
    c = lambda v, k, p=0: conv_ref(v, sd[k + ".weight"], sd[k + ".bias"], pads=(p,) * 4)
    r = lambda v: np.maximum(v, 0)
    expect = r(np.concatenate([c(x, "b1"), c(r(c(x, "b3.0")), "b3.2", 1),
                               c(r(c(x, "b5.0")), "b5.2", 2),
                               c(maxpool_ref(x, 3, 1, 1), "pool.1")], axis=1))
    np.testing.assert_allclose(run(g, x), expect, rtol=RTOL, atol=ATOL)


# ---- BatchNorm and Dropout modes -------------------------------------------------------------
def test_batchnorm_eval_semantics():
    m = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5, eps=1e-3)).eval()
    m.init_parameters(seed=0)
    sd = randomize_bn(m)
    g = m.to_graph(input_shape=(3, 6))
    node = next(n for n in g.nodes if n.op_type == "BatchNormalization")
    assert node.attrs["momentum"] == pytest.approx(0.9)   # torch 0.1 == ONNX 0.9
    assert node.attrs["training_mode"] == 0
    x = rand(3, 6)
    expect = bn_ref(x @ sd["0.weight"].T + sd["0.bias"], sd, "1", eps=1e-3)
    np.testing.assert_allclose(run(g, x), expect, rtol=RTOL, atol=ATOL)
    with pytest.raises(ShapeError, match="BatchNorm2d"):
        nn.BatchNorm2d(5).to_graph(input_shape=(3, 5))


def test_dropout_eval_is_identity_and_train_drops():
    m = nn.Sequential(nn.Dropout(p=0.25))
    x = np.abs(rand(64, 64)) + 0.1
    np.testing.assert_array_equal(run(m.eval().to_graph(input_shape=x.shape), x), x)
    y = run(m.train().to_graph(input_shape=x.shape), x)
    kept = y != 0
    # inverted dropout: survivors scaled by 1/(1 − p); 4096 draws → the kept fraction is
    # 0.75 ± 0.007 (1 sigma); ±0.04 is > 5 sigma.
    np.testing.assert_allclose(y[kept], x[kept] / 0.75, rtol=1e-6)
    assert abs(kept.mean() - 0.75) < 0.04


# ---- padding, pooling, activations -----------------------------------------------------------
@pytest.mark.parametrize("k, d", [(3, 1), (4, 1), (3, 2), ((2, 5), 1)])
def test_conv_padding_same_like_torch(k, d):
    conv = nn.Conv2d(2, 3, k, padding="same", dilation=d)
    g = conv.to_graph(input_shape=(1, 2, 7, 8), seed=0)
    x = rand(1, 2, 7, 8)
    kh, kw = (k, k) if isinstance(k, int) else k
    th, tw = d * (kh - 1), d * (kw - 1)   # torch: the odd extra pixel goes bottom/right
    expect = conv_ref(x, conv.weight.data, conv.bias.data, pads=(th // 2, tw // 2,
                                                                 th - th // 2, tw - tw // 2),
                      dilation=d)
    assert expect.shape == (1, 3, 7, 8)
    np.testing.assert_allclose(run(g, x), expect, rtol=RTOL, atol=ATOL)
    with pytest.raises(ValueError, match="strided"):
        nn.Conv2d(2, 3, 3, stride=2, padding="same")


def test_conv_padding_valid_and_stride():
    conv = nn.Conv2d(2, 3, 3, stride=2, padding="valid")
    x = rand(1, 2, 9, 9)
    got = run(conv.to_graph(input_shape=x.shape, seed=0), x)
    np.testing.assert_allclose(got, conv_ref(x, conv.weight.data, conv.bias.data, stride=2),
                               rtol=RTOL, atol=ATOL)


def test_pooling_modules():
    x = rand(1, 2, 7, 7)
    got = run(nn.MaxPool2d(3, stride=2, padding=1).to_graph(input_shape=x.shape), x)
    np.testing.assert_array_equal(got, maxpool_ref(x, 3, 2, 1))
    # ceil_mode: 7 → ⌈(7 − 2)/2⌉ + 1 = 4 windows, the last one clipped
    got = run(nn.MaxPool2d(2, ceil_mode=True).to_graph(input_shape=x.shape), x)
    xp = np.pad(x, ((0, 0), (0, 0), (0, 1), (0, 1)), constant_values=-np.inf)
    np.testing.assert_array_equal(got, maxpool_ref(xp, 2, 2))
    # AvgPool2d with padding: count_include_pad=True divides by 9 everywhere (torch default)
    got = run(nn.AvgPool2d(3, stride=2, padding=1).to_graph(input_shape=x.shape), x)
    xz = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    expect = np.stack([np.stack([xz[:, :, i:i + 3, j:j + 3].mean((2, 3)) for j in (0, 2, 4, 6)],
                                -1) for i in (0, 2, 4, 6)], -2)
    np.testing.assert_allclose(got, expect, rtol=1e-5, atol=1e-6)
    got = run(nn.AvgPool2d(3, 2, 1, count_include_pad=False).to_graph(input_shape=x.shape), x)
    ones = np.pad(np.ones_like(x), ((0, 0), (0, 0), (1, 1), (1, 1)))
    counts = np.stack([np.stack([ones[:, :, i:i + 3, j:j + 3].sum((2, 3)) for j in (0, 2, 4, 6)],
                                -1) for i in (0, 2, 4, 6)], -2)
    np.testing.assert_allclose(got, expect * 9 / counts, rtol=1e-5, atol=1e-6)
    got = run(nn.AdaptiveAvgPool2d((1, 1)).to_graph(input_shape=x.shape), x)
    np.testing.assert_allclose(got, x.mean((2, 3), keepdims=True), rtol=1e-5, atol=1e-6)
    with pytest.raises(ModelError, match="output size 1"):
        nn.AdaptiveAvgPool2d(2).to_graph(input_shape=x.shape)


def _softmax(z, axis):
    e = np.exp(z - z.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


@pytest.mark.parametrize("module, ref, op", [
    (nn.ReLU(), lambda x: np.maximum(x, 0), "Relu"),
    (nn.ReLU6(), lambda x: np.clip(x, 0, 6), "Clip"),
    (nn.LeakyReLU(), lambda x: np.where(x > 0, x, 0.01 * x), "LeakyRelu"),
    (nn.LeakyReLU(0.2), lambda x: np.where(x > 0, x, 0.2 * x), "LeakyRelu"),
    (nn.ELU(), lambda x: np.where(x > 0, x, np.expm1(x)), "Elu"),
    (nn.SiLU(), lambda x: x / (1 + np.exp(-x)), "Mul"),
    (nn.Sigmoid(), lambda x: 1 / (1 + np.exp(-x)), "Sigmoid"),
    (nn.Tanh(), np.tanh, "Tanh"),
    (nn.Softmax(dim=1), lambda x: _softmax(x, 1), "Softmax"),
    (nn.LogSoftmax(dim=-1), lambda x: np.log(_softmax(x, -1)), "LogSoftmax"),
    (nn.Flatten(), lambda x: x.reshape(2, -1), "Flatten"),
    (nn.Flatten(2), lambda x: x.reshape(2, 3, -1), "Reshape"),
    (nn.Identity(), lambda x: x, "Identity"),
])
def test_activation_modules(module, ref, op):
    x = 4 * rand(2, 3, 4, 5)
    g = module.to_graph(input_shape=x.shape)
    assert op in [n.op_type for n in g.nodes]
    np.testing.assert_allclose(run(g, x), ref(x.astype(np.float64)), rtol=1e-5, atol=1e-6)


def test_softmax_reference_figure():
    z = np.array([[5, 2, -1, 3]], np.float32)
    got = run(nn.Softmax(dim=1).to_graph(input_shape=(1, 4)), z)
    np.testing.assert_allclose(got, [[0.842, 0.042, 0.002, 0.114]], atol=5e-4)  # 3 decimals


def test_linear_on_3d_input_and_functional_ops():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(5, 3)
            self.scale = nn.Parameter(np.array([2.0, -1.0, 0.5]))

        def forward(self, x):
            y = self.fc(x) * self.scale
            return F.log_softmax(F.relu6(y) - y.sigmoid(), dim=-1)

    net = Net()
    g = net.to_graph(input_shape=(2, 4, 5), seed=0)
    sd = net.state_dict()
    # torch lists a module's own parameters before its children's
    assert list(sd) == ["scale", "fc.weight", "fc.bias"]
    x = rand(2, 4, 5)
    y = (x.astype(np.float64) @ sd["fc.weight"].T + sd["fc.bias"]) * sd["scale"]
    z = np.clip(y, 0, 6) - 1 / (1 + np.exp(-y))
    np.testing.assert_allclose(run(g, x), np.log(_softmax(z, -1)), rtol=1e-5, atol=1e-5)


def test_forward_outside_tracing_is_a_clear_error():
    with pytest.raises(ModelError, match="to_graph"):
        nn.ReLU()(np.zeros(3))
    with pytest.raises(ModelError, match="to_graph"):
        F.linear(ember.graph.builder.Builder().input("x", (1, 2)), nn.Linear(2, 2).weight)


def conv_transpose_ref(x, w, b, stride, pad, output_padding=0):
    """Scatter-add definition: each input pixel stamps w (in, out, kh, kw) at stride spacing."""
    n, cin, h, wd = x.shape
    _, cout, kh, kw = w.shape
    full = np.zeros((n, cout, (h - 1) * stride + kh + output_padding,
                     (wd - 1) * stride + kw + output_padding))
    for i in range(h):
        for j in range(wd):
            full[:, :, i * stride:i * stride + kh, j * stride:j * stride + kw] += \
                np.einsum("nc,cohw->nohw", x[:, :, i, j], w)
    oh, ow = full.shape[2] - 2 * pad, full.shape[3] - 2 * pad
    return full[:, :, pad:pad + oh, pad:pad + ow] + b.reshape(1, -1, 1, 1)


def test_conv_transpose_matches_numpy():
    up = nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1, output_padding=1)
    x = rand(1, 3, 4, 5)
    g = up.to_graph(input_shape=x.shape, seed=0)
    assert g.types["output"].shape == (1, 2, 8, 10)   # (n − 1)·2 − 2 + 3 + 1, as torch
    expect = conv_transpose_ref(x, up.weight.data, up.bias.data, 2, 1, 1)
    np.testing.assert_allclose(run(g, x), expect, rtol=RTOL, atol=ATOL)


def test_module_bookkeeping():
    seq = nn.Sequential(nn.Linear(2, 3), nn.Dropout(), nn.BatchNorm1d(3, affine=False))
    assert len(seq) == 3 and isinstance(seq[1], nn.Dropout) and len(seq[:2]) == 2
    assert all(m.training for m in seq.modules())
    assert not any(m.training for m in seq.eval().modules())
    # affine=False: no weight/bias at all, like torch
    assert list(seq.state_dict()) == ["0.weight", "0.bias", "2.running_mean", "2.running_var"]
    seq[0].bias = None      # deregisters, as in torch
    assert [n for n, _ in seq.named_parameters()] == ["0.weight"]
    x = rand(4, 2)
    sd = seq.state_dict()
    expect = (x @ sd["0.weight"].T) / np.sqrt(1 + 1e-5)
    np.testing.assert_allclose(run(seq.to_graph(input_shape=x.shape), x), expect,
                               rtol=1e-5, atol=1e-6)


def test_trace_errors_name_the_layer():
    model = course_lenet()
    with pytest.raises(ShapeError, match="'7/Gemm'.*1×256"):   # 28×28 input: 16·4·4 ≠ 400
        model.to_graph(input_shape=(1, 3, 28, 28))

    class NoSuper(nn.Module):
        def __init__(self):
            self.fc = nn.Linear(1, 1)
    with pytest.raises(ModelError, match="super"):
        NoSuper()


def test_ember_init_functions():
    import ember.init as init
    w = init.kaiming_uniform((64, 32, 3, 3), a=math.sqrt(5), seed=0)
    np.testing.assert_array_equal(w, init.kaiming_uniform((64, 32, 3, 3), a=math.sqrt(5),
                                                          seed=0))
    bound = 1 / math.sqrt(32 * 9)          # torch's Conv2d default: U(±1/√fan_in)
    assert 0.99 * bound < np.abs(w).max() <= bound
    # 2,000 draws: sample std within ±10% is > 6 sigma (relative error ≈ 1/√(2n) ≈ 1.6%)
    x = init.xavier_normal((40, 50), seed=1)
    assert abs(x.std() / math.sqrt(2 / 90) - 1) < 0.1
    assert init.calculate_gain("relu") == pytest.approx(math.sqrt(2))
    assert not init.zeros((2, 2)).any() and init.constant((2,), 3.0).tolist() == [3.0, 3.0]


# ---- 1-D layers and LocalResponseNorm ----------------------------------------------------------
def conv1d_ref(x, w, b=None, stride=1, pads=(0, 0), dilation=1, groups=1):
    """Textbook grouped 1-D cross-correlation in float64; pads = (left, right)."""
    x = np.pad(x.astype(np.float64), ((0, 0), (0, 0), pads))
    m, cg, k = w.shape
    span = dilation * (k - 1) + 1
    out = (x.shape[2] - span) // stride + 1
    y = np.zeros((x.shape[0], m, out))
    per_group = m // groups
    for o in range(m):
        g = o // per_group
        xs = x[:, g * cg:(g + 1) * cg]
        for i in range(out):
            y[:, o, i] = np.einsum("nck,ck->n", xs[:, :, i * stride:i * stride + span:dilation],
                                   w[o])
    return y if b is None else y + b.reshape(1, -1, 1)


@pytest.mark.parametrize("k, stride, padding, dilation, groups, bias", [
    (3, 1, 0, 1, 1, True), (3, 2, 1, 1, 1, False), (4, 1, "same", 1, 1, True),
    (3, 1, "same", 2, 2, True), (5, 3, 2, 1, 2, True), (1, 1, "valid", 1, 2, False)])
def test_conv1d_matches_numpy(k, stride, padding, dilation, groups, bias):
    conv = nn.Conv1d(4, 6, k, stride=stride, padding=padding, dilation=dilation,
                     groups=groups, bias=bias)
    assert conv.weight.shape == (6, 4 // groups, k)           # torch's (out, in/groups, k)
    assert (conv.bias is None) == (not bias)
    x = rand(2, 4, 11)
    g = conv.to_graph(input_shape=("N", 4, 11), seed=0)
    if padding == "same":
        total = dilation * (k - 1)
        pads = (total // 2, total - total // 2)    # torch: the odd extra at the end
    else:
        pads = (0, 0) if padding == "valid" else (padding, padding)
    expect = conv1d_ref(x, conv.weight.data, None if conv.bias is None else conv.bias.data,
                        stride, pads, dilation, groups)
    if padding == "same":
        assert expect.shape[2] == 11
    np.testing.assert_allclose(run(g, x), expect, rtol=RTOL, atol=ATOL)


def test_conv1d_and_pool1d_errors():
    with pytest.raises(ShapeError, match="rank 3"):
        nn.Conv1d(2, 3, 3).to_graph(input_shape=(1, 2, 5, 5))
    with pytest.raises(ValueError, match="strided"):
        nn.Conv1d(2, 3, 3, stride=2, padding="same")
    with pytest.raises(ValueError, match="divisible"):
        nn.Conv1d(3, 4, 3, groups=2)
    with pytest.raises(ShapeError, match="rank 3"):
        nn.MaxPool1d(2).to_graph(input_shape=(1, 2, 6, 6))


def _pool1d_windows(x, k, s, p, ceil_mode, fill):
    """(windows [N, C, out, k] padded with ``fill``, real-element counts [out], padded counts)."""
    length = x.shape[2]
    span = length + 2 * p - k
    out = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= length + p:   # torch: the last window must start inside
        out -= 1
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (p, p + k)), constant_values=fill)
    idx = np.arange(out)[:, None] * s + np.arange(k)[None]
    real = ((idx >= p) & (idx < p + length)).sum(1)
    in_pad = ((idx >= 0) & (idx < length + 2 * p)).sum(1)
    return xp[:, :, idx], real, in_pad


@pytest.mark.parametrize("k, s, p, ceil_mode", [(2, None, 0, False), (3, 2, 1, False),
                                                (3, 2, 1, True), (2, 2, 0, True),
                                                (4, 3, 2, True)])
def test_pool1d_matches_numpy(k, s, p, ceil_mode):
    x = rand(2, 3, 10)
    stride = k if s is None else s
    win, real, in_pad = _pool1d_windows(x, k, stride, p, ceil_mode, -np.inf)
    got = run(nn.MaxPool1d(k, s, p, ceil_mode=ceil_mode).to_graph(input_shape=x.shape), x)
    np.testing.assert_array_equal(got, win.max(-1).astype(np.float32))
    win, _, _ = _pool1d_windows(x, k, stride, p, ceil_mode, 0.0)
    for include_pad, count in ((True, in_pad), (False, real)):
        m = nn.AvgPool1d(k, s, p, ceil_mode=ceil_mode, count_include_pad=include_pad)
        got = run(m.to_graph(input_shape=x.shape), x)
        np.testing.assert_allclose(got, win.sum(-1) / count, rtol=1e-5, atol=1e-6)


def lrn_ref(x, size, alpha, beta, k):
    """torch's LocalResponseNorm as implemented: the window over channels is
    [c − size//2, c + (size−1)//2] (zero-padded), the sum divided by size."""
    sq = np.pad(x.astype(np.float64) ** 2, [(0, 0), (size // 2, (size - 1) // 2)]
                + [(0, 0)] * (x.ndim - 2))
    c = x.shape[1]
    window = sum(sq[:, j:j + c] for j in range(size))
    return x / (k + alpha / size * window) ** beta


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 6])
@pytest.mark.parametrize("shape", [(2, 7, 3, 3), (2, 6, 5)], ids=["NCHW", "NCL"])
def test_local_response_norm_matches_torch_formula(size, shape):
    x = 3 * rand(*shape)
    layer = nn.LocalResponseNorm(size, alpha=0.05, beta=0.75, k=2.0)
    got = run(layer.to_graph(input_shape=("N",) + shape[1:]), x)
    np.testing.assert_allclose(got, lrn_ref(x, size, 0.05, 0.75, 2.0), rtol=1e-5, atol=1e-6)
    ops = {n.op_type for n in layer.to_graph(input_shape=shape).nodes}
    assert ("LRN" in ops) == (size % 2 == 1)   # even sizes: torch's window is not ONNX's


def _numeric_grads(loss_fn, params: dict, eps=1e-6) -> dict:
    """Central differences of a float64 numpy loss over every entry of every parameter."""
    out = {}
    for name, p in params.items():
        g = np.zeros_like(p)
        for i in np.ndindex(p.shape):
            old = p[i]
            p[i] = old + eps
            up = loss_fn(params)
            p[i] = old - eps
            down = loss_fn(params)
            p[i] = old
            g[i] = (up - down) / (2 * eps)
        out[name] = g
    return out


def test_1d_layers_and_even_lrn_train_like_finite_differences():
    """Gradients through Conv1d (Unsqueeze/Conv/Squeeze), LRN of even size (its written-out
    form), MaxPool1d and Linear, against central differences of a numpy forward."""
    model = nn.Sequential(nn.Conv1d(2, 4, 3, padding=1), nn.LocalResponseNorm(4, alpha=0.5, k=1.0),
                          nn.AvgPool1d(2), nn.Flatten(), nn.Linear(4 * 3, 2))
    x, y = rand(3, 2, 6, seed=1), rand(3, 2, seed=2)
    trainer = ember.Trainer(model, input_shape=(2, 6), loss=nn.MSELoss(), batch_size=3)
    got = trainer.gradients(x, y)
    params = {k: v.astype(np.float64) for k, v in trainer.state_dict().items()}

    def loss_fn(p):
        h = conv1d_ref(x, p["0.weight"], p["0.bias"], pads=(1, 1))
        h = lrn_ref(h, 4, 0.5, 0.75, 1.0)
        h = h.reshape(3, 4, 3, 2).mean(-1).reshape(3, -1)
        out = h @ p["4.weight"].T + p["4.bias"]
        return ((out - y) ** 2).mean()
    want = _numeric_grads(loss_fn, params)
    for name in want:
        a, b = got[name].astype(np.float64), want[name]
        assert np.linalg.norm(a - b) / (np.linalg.norm(a) + np.linalg.norm(b)) < 1e-5, name


# ---- custom losses: an nn.Module with forward(pred, target) ----------------------------------
class ScaledMSE(nn.Module):
    """scale · mean((pred − target)²): a user's loss, with constructor args in config()."""

    def __init__(self, scale=1.0):
        super().__init__()
        self.scale = scale

    def forward(self, pred, target):
        d = pred - target
        return F.mean(d * d) * self.scale

    def config(self):
        return {"scale": self.scale}


class SumMatch(nn.Module):
    """(Σ_j pred_j − t)² averaged over the batch, with one float target per sample."""
    target_shape = (1,)

    def forward(self, pred, target):
        d = F.sum(pred, dim=1, keepdim=True) - target
        return F.mean(d * d)


class NotScalar(nn.Module):
    def forward(self, pred, target):
        return pred - target


class HoldsWeights(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(np.ones(3, np.float32))

    def forward(self, pred, target):
        return F.mean(pred * self.w - target)


def _small_net(seed=0):
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 3))
    return model.init_parameters(seed)


def _trainer(loss, seed=0, lr=0.1):
    return ember.Trainer(_small_net(seed), input_shape=(1, 4, 4), loss=loss,
                         optimizer=ember.optim.SGD(lr=lr, momentum=0.9), batch_size=4, seed=0)


def test_custom_loss_module_trains_like_the_built_in_loss():
    x, y = rand(10, 1, 4, 4, seed=3), rand(10, 3, seed=4)
    custom, builtin = _trainer(ScaledMSE(2.0)), _trainer(nn.MSELoss())
    g_custom, g_builtin = custom.gradients(x[:4], y[:4]), builtin.gradients(x[:4], y[:4])
    for name in g_builtin:
        np.testing.assert_allclose(g_custom[name], 2 * g_builtin[name], rtol=1e-5, atol=1e-7)
    assert custom.evaluate(x, y)["loss"] == pytest.approx(2 * builtin.evaluate(x, y)["loss"],
                                                          rel=1e-5)
    pred = custom.predict(x).astype(np.float64)
    assert custom.evaluate(x, y)["loss"] == pytest.approx(2 * ((pred - y) ** 2).mean(), rel=1e-5)
    h = custom.fit(x, y, epochs=3, verbose=False).history
    assert set(h) == {"loss", "lr"} and h["loss"][-1] < h["loss"][0]


def test_custom_loss_with_declared_target_shape():
    trainer = _trainer(SumMatch())
    x, t = rand(6, 1, 4, 4, seed=5), rand(6, seed=6)
    pred = trainer.predict(x).astype(np.float64)
    expect = ((pred.sum(1) - t) ** 2).mean()
    assert trainer.evaluate(x, t)["loss"] == pytest.approx(expect, rel=1e-5)
    assert trainer.evaluate(x, t.reshape(6, 1))["loss"] == pytest.approx(expect, rel=1e-5)
    with pytest.raises(ember.InputError, match="do not fit"):
        trainer.evaluate(x, rand(6, 3))
    with pytest.raises(ember.InputError, match="float32"):
        trainer.evaluate(x, np.zeros(6, np.int64))


@pytest.mark.parametrize("loss, match", [(NotScalar(), "scalar"),
                                         (HoldsWeights(), "Parameters")])
def test_custom_loss_errors(loss, match):
    with pytest.raises(ModelError, match=match):
        _trainer(loss).gradients(rand(4, 1, 4, 4), rand(4, 3))


def test_custom_loss_checkpoint_never_imports_and_resumes_exactly(tmp_path):
    from ember.runtime.checkpoint import load
    x, y = rand(12, 1, 4, 4, seed=7), rand(12, 3, seed=8)
    trainer = _trainer(ScaledMSE(0.5))
    trainer.fit(x, y, epochs=1, verbose=False)
    path = tmp_path / "custom.ember"
    trainer.save(path)
    stored = load(path)["state"]["config"]["loss"]
    assert stored == {"type": "custom", "class": f"{__name__}:ScaledMSE",
                      "config": {"scale": 0.5}}
    with pytest.raises(ember.CheckpointError, match="ScaledMSE"):
        ember.Trainer.restore(path)
    with pytest.raises(ember.CheckpointError, match="not .*SumMatch"):
        ember.Trainer.restore(path, loss=SumMatch())
    with pytest.raises(ember.CheckpointError, match="config"):
        ember.Trainer.restore(path, loss=ScaledMSE(3.0))
    for given in (ScaledMSE, ScaledMSE(0.5)):   # the class (rebuilt from config) or an instance
        restored = ember.Trainer.restore(path, loss=given)
        assert restored.loss.module.scale == 0.5
    restored.fit(x, y, epochs=1, verbose=False)
    trainer.fit(x, y, epochs=1, verbose=False)
    for name, a in trainer.state_dict().items():
        np.testing.assert_array_equal(restored.state_dict()[name], a, err_msg=name)


def test_reduction_helpers_and_narrow():
    class Net(nn.Module):
        def forward(self, x):
            return (F.sum(x, dim=(1, 2)), F.mean(x, dim=2, keepdim=True), F.mean(x),
                    F.narrow(x, 2, 1, 2))
    x = rand(2, 3, 4)
    g = Net().to_graph(input_shape=x.shape)
    outs = ember.Session(g).run(None, {"input": x})
    for got, want in zip(outs, [x.sum((1, 2)), x.mean(2, keepdims=True), x.mean(),
                                x[:, :, 1:3]]):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
