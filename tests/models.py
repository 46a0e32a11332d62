"""Shared ONNX test models, built with ``onnx.helper`` (opset 17) and seeded numpy weights.

Weights are He-scaled and BatchNorms carry non-trivial running statistics, so activations stay
O(1) through deep nets and a wrong fold or fusion shows up as a real numerical difference.
Every builder takes ``batch`` (an int, or a str such as "N" for a symbolic batch dimension) and
``seed`` and returns an ``onnx.ModelProto``.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17

__all__ = ["OPSET", "lenet5", "small_vgg", "resnet18", "mobilenetv2",
           "pytorch_style_reshape_chain", "identity_dropout_model", "fusion_patterns",
           "unfusable_patterns", "PATTERNS", "pattern_model", "ALL_MODELS", "random_input"]


class _Builder:
    """Accumulates nodes and initializers with unique names; one method per layer kind."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes: list = []
        self.inits: list = []
        self._count: dict = {}

    def name(self, hint: str) -> str:
        k = self._count.get(hint, 0)
        self._count[hint] = k + 1
        return f"{hint}_{k}"

    def const(self, hint: str, array) -> str:
        n = self.name(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(array), n))
        return n

    def node(self, op: str, inputs, n_out: int = 1, **attrs):
        outs = [self.name(op.lower()) for _ in range(n_out)]
        name = self.name("n_" + op)
        self.nodes.append(helper.make_node(op, list(inputs), outs, name=name, **attrs))
        return outs[0] if n_out == 1 else outs

    # ---- layers -------------------------------------------------------------------------------
    def conv(self, x, cin, cout, k, stride=1, pad=None, group=1, bias=True):
        pad = k // 2 if pad is None else pad
        fan_in = cin // group * k * k
        w = (self.rng.standard_normal((cout, cin // group, k, k)) * np.sqrt(2.0 / fan_in))
        inputs = [x, self.const("W", w.astype(np.float32))]
        if bias:
            bias_values = (self.rng.standard_normal(cout) * 0.1).astype(np.float32)
            inputs.append(self.const("B", bias_values))
        return self.node("Conv", inputs, kernel_shape=[k, k], strides=[stride, stride],
                         pads=[pad] * 4, group=group)

    def bn(self, x, c, eps=1e-5, gamma=(0.5, 1.5)):
        r = self.rng
        scale = r.uniform(*gamma, c).astype(np.float32)
        bias = (r.standard_normal(c) * 0.2).astype(np.float32)
        mean = (r.standard_normal(c) * 0.2).astype(np.float32)
        var = r.uniform(0.5, 2.0, c).astype(np.float32)
        return self.node("BatchNormalization",
                         [x, self.const("bn_scale", scale), self.const("bn_bias", bias),
                          self.const("bn_mean", mean), self.const("bn_var", var)], epsilon=eps)

    def relu(self, x):
        return self.node("Relu", [x])

    def relu6(self, x):
        lo = self.const("clip_min", np.array(0.0, np.float32))
        hi = self.const("clip_max", np.array(6.0, np.float32))
        return self.node("Clip", [x, lo, hi])

    def maxpool(self, x, k=2, stride=2, pad=0):
        return self.node("MaxPool", [x], kernel_shape=[k, k], strides=[stride, stride],
                         pads=[pad] * 4)

    def gap(self, x):
        return self.node("GlobalAveragePool", [x])

    def flatten(self, x):
        return self.node("Flatten", [x], axis=1)

    def gemm(self, x, fin, fout, trans_b=1, gain=2.0):
        w = self.rng.standard_normal((fout, fin) if trans_b else (fin, fout)) * np.sqrt(gain / fin)
        b = self.rng.standard_normal(fout) * 0.1
        return self.node("Gemm", [x, self.const("fc_W", w.astype(np.float32)),
                                  self.const("fc_B", b.astype(np.float32))], transB=trans_b)

    def model(self, name, x, in_shape, y, out_shape) -> onnx.ModelProto:
        outs = [helper.make_tensor_value_info(y, TensorProto.FLOAT, out_shape)]
        graph = helper.make_graph(self.nodes, name,
                                  [helper.make_tensor_value_info(x, TensorProto.FLOAT, in_shape)],
                                  outs, self.inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="ember-tests")
        m.ir_version = 8
        onnx.checker.check_model(m)
        return m


# ---- the real models ---------------------------------------------------------------------------
def lenet5(batch=1, seed=0) -> onnx.ModelProto:
    """Classic LeNet-5 (32×32×1, 61,706 parameters), ReLU and max-pool."""
    b = _Builder(seed)
    y = b.maxpool(b.relu(b.conv("input", 1, 6, 5, pad=0)))
    y = b.maxpool(b.relu(b.conv(y, 6, 16, 5, pad=0)))
    y = b.flatten(y)
    y = b.relu(b.gemm(y, 400, 120))
    y = b.relu(b.gemm(y, 120, 84))
    y = b.gemm(y, 84, 10, gain=1.0)
    return b.model("lenet5", "input", [batch, 1, 32, 32], y, [batch, 10])


def small_vgg(batch=1, seed=0) -> onnx.ModelProto:
    """A small VGG (32×32×3): 3×3 same conv + BN + ReLU blocks 32,32,pool,64,64,pool,128,128,pool."""
    b = _Builder(seed)
    y, cin = "input", 3
    for cout in (32, 32, "pool", 64, 64, "pool", 128, 128, "pool"):
        if cout == "pool":
            y = b.maxpool(y)
            continue
        y = b.relu(b.bn(b.conv(y, cin, cout, 3, bias=False), cout))
        cin = cout
    y = b.gemm(b.flatten(y), 128 * 4 * 4, 10, gain=1.0)
    return b.model("small_vgg", "input", [batch, 3, 32, 32], y, [batch, 10])


def resnet18(batch=1, seed=0) -> onnx.ModelProto:
    """The real ResNet-18 topology (224×224×3 → 1000), torchvision layout."""
    b = _Builder(seed)
    y = b.relu(b.bn(b.conv("input", 3, 64, 7, stride=2, pad=3, bias=False), 64))
    y = b.maxpool(y, k=3, stride=2, pad=1)
    cin = 64
    for stage, cout in enumerate((64, 128, 256, 512)):
        for block in range(2):
            stride = 2 if (stage > 0 and block == 0) else 1
            h = b.relu(b.bn(b.conv(y, cin, cout, 3, stride=stride, bias=False), cout))
            # small gammas closing each branch keep the residual sum O(1) through 8 blocks
            h = b.bn(b.conv(h, cout, cout, 3, bias=False), cout, gamma=(0.2, 0.5))
            if stride != 1 or cin != cout:
                y = b.bn(b.conv(y, cin, cout, 1, stride=stride, pad=0, bias=False), cout,
                         gamma=(0.3, 0.6))
            y = b.relu(b.node("Add", [h, y]))
            cin = cout
    y = b.gemm(b.flatten(b.gap(y)), 512, 1000, gain=1.0)
    return b.model("resnet18", "input", [batch, 3, 224, 224], y, [batch, 1000])


MOBILENETV2_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                        (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))  # (t, c, n, s)


def mobilenetv2(batch=1, seed=0) -> onnx.ModelProto:
    """The real MobileNetV2 (width 1.0, 224×224×3 → 1000), ReLU6 as Clip(0, 6) with inputs."""
    b = _Builder(seed)
    y = b.relu6(b.bn(b.conv("input", 3, 32, 3, stride=2, bias=False), 32))
    cin = 32
    for t, c, n, s in MOBILENETV2_SETTINGS:
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = cin * t
            h = y
            if t != 1:
                h = b.relu6(b.bn(b.conv(h, cin, hidden, 1, pad=0, bias=False), hidden))
            h = b.relu6(b.bn(b.conv(h, hidden, hidden, 3, stride=stride, group=hidden, bias=False),
                             hidden))
            h = b.bn(b.conv(h, hidden, c, 1, pad=0, bias=False), c)
            y = b.node("Add", [y, h]) if (stride == 1 and cin == c) else h
            cin = c
    y = b.relu6(b.bn(b.conv(y, cin, 1280, 1, pad=0, bias=False), 1280))
    y = b.gemm(b.flatten(b.gap(y)), 1280, 1000, gain=1.0)
    return b.model("mobilenetv2", "input", [batch, 3, 224, 224], y, [batch, 1000])


# ---- small models for the passes -----------------------------------------------------------------
def pytorch_style_reshape_chain(batch=1, seed=0) -> onnx.ModelProto:
    """``x.view(x.size(0), -1)`` as PyTorch exports it: Shape → Gather(0) → Unsqueeze →
    Concat(with [-1]) → Reshape, between a Conv+Relu and a Gemm."""
    b = _Builder(seed)
    y = b.relu(b.conv("input", 3, 4, 3))
    shape = b.node("Shape", [y])
    n = b.node("Gather", [shape, b.const("idx", np.array(0, np.int64))], axis=0)
    n1 = b.node("Unsqueeze", [n, b.const("axes", np.array([0], np.int64))])
    target = b.node("Concat", [n1, b.const("minus_one", np.array([-1], np.int64))], axis=0)
    flat = b.node("Reshape", [y, target])
    out = b.gemm(flat, 4 * 8 * 8, 5, gain=1.0)
    return b.model("pytorch_reshape", "input", [batch, 3, 8, 8], out, [batch, 5])


def identity_dropout_model(batch=1, seed=0) -> onnx.ModelProto:
    """Identity and inference-mode Dropout nodes in the middle and as the producer of the graph
    output (so eliminating them must keep the output name)."""
    b = _Builder(seed)
    y = b.node("Identity", ["input"])
    y = b.relu(b.conv(y, 3, 4, 3))
    y = b.node("Dropout", [y], n_out=2)[0]                     # mask output named, unread
    y = b.node("Dropout", [y, b.const("ratio", np.array(0.3, np.float32))])
    y = b.node("Identity", [b.flatten(y)])
    y = b.gemm(y, 4 * 8 * 8, 6, gain=1.0)
    y = b.node("Dropout", [y])
    out = b.node("Identity", [y])
    return b.model("identity_dropout", "input", [batch, 3, 8, 8], out, [batch, 6])


def fusion_patterns(batch=1, seed=0) -> onnx.ModelProto:
    """One chain holding every fusable pattern: Conv→BN→Relu, Conv→Clip(0,6), Conv→LeakyRelu,
    Conv→Sigmoid, Conv→Mul(x, Sigmoid(x)) (SiLU), Conv→Tanh, Conv→HardSwish, Gemm→BN (transB=1),
    Gemm(transB=0)→BN→Relu."""
    b = _Builder(seed)
    c = 6
    y = b.relu(b.bn(b.conv("input", 3, c, 3), c))
    y = b.relu6(b.conv(y, c, c, 3))
    y = b.node("LeakyRelu", [b.conv(y, c, c, 3)], alpha=0.1)
    y = b.node("Sigmoid", [b.conv(y, c, c, 3)])
    z = b.conv(y, c, c, 3)
    y = b.node("Mul", [z, b.node("Sigmoid", [z])])
    y = b.node("Tanh", [b.conv(y, c, c, 3)])
    y = b.node("HardSwish", [b.conv(y, c, c, 3, stride=2)])
    y = b.bn(b.gemm(b.flatten(y), c * 4 * 4, 16), 16)
    y = b.relu(b.bn(b.gemm(y, 16, 8, trans_b=0), 8))
    return b.model("fusion_patterns", "input", [batch, 3, 8, 8], y, [batch, 8])


def unfusable_patterns(batch=1, seed=0) -> onnx.ModelProto:
    """Patterns that must NOT be folded or fused: a Conv output read twice (by BN and by Add;
    by Relu and by Add), a BN after MaxPool, a Sigmoid(x)·x whose x is not the Sigmoid input,
    a Relu after an Add."""
    b = _Builder(seed)
    c = 4
    x = b.conv("input", 3, c, 3)
    y = b.node("Add", [b.bn(x, c), x])                        # conv output read twice
    x2 = b.conv(y, c, c, 3)
    y = b.node("Add", [b.relu(x2), x2])                       # same for the activation
    y = b.bn(b.maxpool(y), c)                                 # BN after a non-conv stays
    x3 = b.conv(y, c, c, 3)
    y = b.node("Mul", [b.node("Sigmoid", [x3]), y])           # not SiLU: different operands
    y = b.relu(b.node("Add", [y, x3]))
    return b.model("unfusable_patterns", "input", [batch, 3, 8, 8], y, [batch, c, 4, 4])


PATTERNS = ("conv_bn_relu", "gemm_bn", "conv_clip", "conv_leakyrelu", "conv_sigmoid", "conv_silu",
            "conv_tanh", "conv_hardswish", "matmul_relu")


def pattern_model(kind: str, batch=1, seed=0) -> onnx.ModelProto:
    """A one-pattern model (``kind`` from ``PATTERNS``), to test each fold/fusion on its own."""
    b = _Builder(seed)
    c = 5
    if kind in ("gemm_bn", "matmul_relu"):
        x = b.flatten("input")
        if kind == "gemm_bn":
            y = b.bn(b.gemm(x, 3 * 6 * 6, 7), 7)
        else:
            w = (b.rng.standard_normal((108, 7)) * np.sqrt(2 / 108)).astype(np.float32)
            w = b.const("mm_W", w)
            y = b.relu(b.node("MatMul", [x, w]))
        return b.model(kind, "input", [batch, 3, 6, 6], y, [batch, 7])
    z = b.conv("input", 3, c, 3)
    if kind == "conv_bn_relu":
        y = b.relu(b.bn(z, c))
    elif kind == "conv_clip":
        y = b.relu6(z)
    elif kind == "conv_leakyrelu":
        y = b.node("LeakyRelu", [z], alpha=0.2)
    elif kind == "conv_sigmoid":
        y = b.node("Sigmoid", [z])
    elif kind == "conv_silu":
        y = b.node("Mul", [b.node("Sigmoid", [z]), z])
    elif kind == "conv_tanh":
        y = b.node("Tanh", [z])
    elif kind == "conv_hardswish":
        y = b.node("HardSwish", [z])
    else:
        raise ValueError(kind)
    return b.model(kind, "input", [batch, 3, 6, 6], y, [batch, c, 6, 6])


ALL_MODELS = {"lenet5": lenet5, "small_vgg": small_vgg, "resnet18": resnet18,
              "mobilenetv2": mobilenetv2, "pytorch_reshape": pytorch_style_reshape_chain,
              "identity_dropout": identity_dropout_model, "fusion_patterns": fusion_patterns,
              "unfusable_patterns": unfusable_patterns}


def random_input(model: onnx.ModelProto, batch: int = 1, seed: int = 1) -> dict:
    """A seeded standard-normal feed for every graph input (a symbolic dim becomes ``batch``)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for vi in model.graph.input:
        dims = [d.dim_value if d.HasField("dim_value") else batch
                for d in vi.type.tensor_type.shape.dim]
        feeds[vi.name] = rng.standard_normal(dims).astype(np.float32)
    return feeds
