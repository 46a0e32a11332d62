"""Example 4 — non-sequential models: a ResNet (basic blocks, identity and projection
shortcuts) and an Inception block (1×1, 3×3, 5×5 and pool branches joined by concat).

Both are ordinary ``nn.Module``s whose ``forward`` adds (``out + shortcut``) or concatenates
(``F.cat``) graph values; tracing turns that into Add and Concat nodes.
ResNet-18 (He et al. 2015, torchvision's layout) has 11,689,512 parameters; the Inception
block is GoogLeNet's "3a" (192 channels in at 28×28, 64 + 128 + 32 + 32 = 256 out).

    python examples/resnet_inception.py
"""
from __future__ import annotations

import numpy as np

from ember import nn
from ember.nn import functional as F

from _common import count_conv, count_fc, out_size, run


# ---- ResNet ------------------------------------------------------------------------------------
class BasicBlock(nn.Module):
    """conv3×3 → BN → ReLU → conv3×3 → BN, plus the shortcut, then ReLU. The shortcut is the
    identity when shape is kept, else a projection: 1×1 conv (stride s) → BN."""

    def __init__(self, c_in, c_out, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)


class ResNet(nn.Module):
    """7×7/2 stem → 3×3/2 max-pool → four stages of basic blocks (the first block of stages 2-4
    halves the side with a projection shortcut) → global average pool → FC."""

    def __init__(self, blocks=(2, 2, 2, 2), widths=(64, 128, 256, 512), num_classes=1000,
                 in_channels=3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.maxpool = nn.MaxPool2d(3, 2, padding=1)
        c = widths[0]
        for k, (n, w) in enumerate(zip(blocks, widths)):
            stage = nn.Sequential(*[BasicBlock(c if i == 0 else w, w,
                                               2 if i == 0 and k > 0 else 1) for i in range(n)])
            self.add_module(f"layer{k + 1}", stage)
            c = w
        self.num_stages = len(blocks)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        for k in range(self.num_stages):
            x = getattr(self, f"layer{k + 1}")(x)
        return self.fc(F.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def resnet18(num_classes=1000) -> ResNet:
    return ResNet((2, 2, 2, 2), (64, 128, 256, 512), num_classes)


def basic_block_params(c_in, c_out) -> int:
    """Two bias-free 3×3 convs with BN (γ, β per channel) + a 1×1 projection with BN if needed."""
    n = count_conv(c_in, c_out, 3, bias=False) + count_conv(c_out, c_out, 3, bias=False) \
        + 2 * 2 * c_out
    if c_in != c_out:
        n += count_conv(c_in, c_out, 1, bias=False) + 2 * c_out
    return n


RESNET18_PARAMS = (count_conv(3, 64, 7, bias=False) + 2 * 64
                   + sum(basic_block_params(a, b) + basic_block_params(b, b)
                         for a, b in [(64, 64), (64, 128), (128, 256), (256, 512)])
                   + count_fc(512, 1000))
# 224 → stem /2 → 112 → max-pool /2 → 56 → stages: 56, 28, 14, 7
RESNET18_SIDES = [out_size(224, 7, 3, 2)]
RESNET18_SIDES.append(out_size(RESNET18_SIDES[-1], 3, 1, 2))
for _ in range(3):
    RESNET18_SIDES.append(out_size(RESNET18_SIDES[-1], 3, 1, 2))


# ---- Inception ---------------------------------------------------------------------------------
def conv_relu(c_in, c_out, k):
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, padding=k // 2), nn.ReLU())


class Inception(nn.Module):
    """Four parallel branches over the same input, concatenated along channels:
    1×1 | 1×1 → 3×3 | 1×1 → 5×5 | 3×3 max-pool (stride 1, pad 1) → 1×1. Every branch keeps the
    spatial size, so the output has c1 + c3 + c5 + pool_proj channels."""

    def __init__(self, c_in, c1, c3_reduce, c3, c5_reduce, c5, pool_proj):
        super().__init__()
        self.branch1 = conv_relu(c_in, c1, 1)
        self.branch3 = nn.Sequential(conv_relu(c_in, c3_reduce, 1), conv_relu(c3_reduce, c3, 3))
        self.branch5 = nn.Sequential(conv_relu(c_in, c5_reduce, 1), conv_relu(c5_reduce, c5, 5))
        self.branch_pool = nn.Sequential(nn.MaxPool2d(3, 1, padding=1),
                                         conv_relu(c_in, pool_proj, 1))

    def forward(self, x):
        return F.cat([self.branch1(x), self.branch3(x), self.branch5(x), self.branch_pool(x)],
                     dim=1)


INCEPTION_3A = dict(c_in=192, c1=64, c3_reduce=96, c3=128, c5_reduce=16, c5=32, pool_proj=32)
INCEPTION_3A_PARAMS = (count_conv(192, 64, 1) + count_conv(192, 96, 1) + count_conv(96, 128, 3)
                       + count_conv(192, 16, 1) + count_conv(16, 32, 5) + count_conv(192, 32, 1))
INCEPTION_3A_CHANNELS = 64 + 128 + 32 + 32


def build():
    """(ResNet-18, Inception 3a block), eval mode."""
    return resnet18().eval(), Inception(**INCEPTION_3A).eval()


def check() -> None:
    resnet, inception = build()
    assert RESNET18_PARAMS == 11_689_512 and resnet.num_parameters() == RESNET18_PARAMS
    blocks = [m for m in resnet.modules() if isinstance(m, BasicBlock)]
    assert (sum(b.downsample is None for b in blocks), sum(b.downsample is not None
                                                           for b in blocks)) == (5, 3)
    assert RESNET18_SIDES == [112, 56, 28, 14, 7]
    g = resnet.to_graph((1, 3, 224, 224), seed=0)
    assert g.types["output"].shape == (1, 1000)
    assert sum(n.op_type == "Add" for n in g.nodes) == len(blocks)  # one residual Add per block
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    assert np.isfinite(run(g, x)).all()

    assert INCEPTION_3A_PARAMS == 163_696 and inception.num_parameters() == INCEPTION_3A_PARAMS
    g = inception.to_graph((1, 192, 28, 28), seed=0)
    assert g.types["output"].shape == (1, INCEPTION_3A_CHANNELS, 28, 28)
    assert [n.op_type for n in g.nodes].count("Concat") == 1
    y = run(g, np.random.default_rng(1).standard_normal((1, 192, 28, 28)).astype(np.float32))
    assert y.shape == (1, 256, 28, 28) and (y >= 0).all()


if __name__ == "__main__":
    check()
    print(f"ResNet-18: {RESNET18_PARAMS:,} parameters, 5 identity and 3 projection shortcuts, "
          f"feature sides {RESNET18_SIDES}; 224×224 image → 1000 scores")
    print(f"Inception 3a: {INCEPTION_3A_PARAMS:,} parameters, 192×28×28 → "
          f"{INCEPTION_3A_CHANNELS}×28×28")
