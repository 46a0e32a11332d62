"""Example 3 — AlexNet (with local response normalization and dropout) and VGG-16, built with
ember.nn, exported to ONNX, reloaded with ``ember.load`` and run on one 224×224 image.

AlexNet here is Krizhevsky et al.'s single-tower network as the courses draw it (96, 256, 384,
384, 256 filters, LRN after the first two convs, 3×3 stride-2 max-pools, dropout before the two
4096-wide FC layers), with torchvision's padding 2 on the first conv so 224 → 55.
VGG-16: 13 3×3 "same" convs, 5 2×2 max-pools, FC 4096, 4096, 1000.

    python examples/alexnet_vgg.py [--vgg]     # --vgg also exports and runs VGG-16 (550 MB)
"""
from __future__ import annotations

import os
import sys
import tempfile

import numpy as np

import ember
from ember import nn
from ember.nn import functional as F

from _common import count_conv, count_fc, out_size, run


class AlexNet(nn.Module):
    def __init__(self, num_classes=1000, dropout=0.5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 96, 11, stride=4, padding=2), nn.ReLU(),
            nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0), nn.MaxPool2d(3, 2),
            nn.Conv2d(96, 256, 5, padding=2), nn.ReLU(),
            nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0), nn.MaxPool2d(3, 2),
            nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2))
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(),
            nn.Dropout(dropout), nn.Linear(4096, 4096), nn.ReLU(),
            nn.Linear(4096, num_classes))

    def forward(self, x):
        return self.classifier(F.flatten(self.features(x), 1))


VGG16_CONFIG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
                512, 512, 512, "M"]


class VGG16(nn.Module):
    def __init__(self, num_classes=1000, dropout=0.5):
        super().__init__()
        layers, c = [], 3
        for v in VGG16_CONFIG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU()]
                c = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(dropout), nn.Linear(4096, num_classes))

    def forward(self, x):
        return self.classifier(F.flatten(self.features(x), 1))


# ---- the figures, by the courses' formulas ---------------------------------------------------
ALEXNET_SIDES = [224, out_size(224, 11, 2, 4)]                   # 55 after conv1
ALEXNET_SIDES.append(out_size(ALEXNET_SIDES[-1], 3, s=2))        # 27 after pool1
ALEXNET_SIDES.append(out_size(ALEXNET_SIDES[-1], 3, s=2))        # 13 after pool2 (conv2 keeps 27)
ALEXNET_SIDES.append(out_size(ALEXNET_SIDES[-1], 3, s=2))        # 6 after pool5 (conv3-5 keep 13)
ALEXNET_PARAMS = (count_conv(3, 96, 11) + count_conv(96, 256, 5) + count_conv(256, 384, 3)
                  + count_conv(384, 384, 3) + count_conv(384, 256, 3)
                  + count_fc(256 * 6 * 6, 4096) + count_fc(4096, 4096) + count_fc(4096, 1000))


def _vgg16_params() -> int:
    total, c = 0, 3
    for v in VGG16_CONFIG:
        if v != "M":
            total, c = total + count_conv(c, v, 3), v
    return total + count_fc(512 * 7 * 7, 4096) + count_fc(4096, 4096) + count_fc(4096, 1000)


VGG16_PARAMS = _vgg16_params()     # REFERENCE.md: 138,357,544


def build():
    """(AlexNet, VGG-16) in eval mode; parameters are drawn only when traced."""
    return AlexNet().eval(), VGG16().eval()


def check_counts() -> None:
    alexnet, vgg = build()
    assert ALEXNET_SIDES == [224, 55, 27, 13, 6], ALEXNET_SIDES
    assert ALEXNET_PARAMS == 62_378_344 and alexnet.num_parameters() == ALEXNET_PARAMS
    assert VGG16_PARAMS == 138_357_544 and vgg.num_parameters() == VGG16_PARAMS


def image(seed: int = 0) -> np.ndarray:
    """One 224×224 RGB image (a smooth random pattern, normalized like ImageNet inputs)."""
    rng = np.random.default_rng(seed)
    coarse = rng.standard_normal((1, 3, 14, 14)).astype(np.float32)
    return np.ascontiguousarray(coarse.repeat(16, axis=2).repeat(16, axis=3))


def export_and_reload(model: nn.Module, path: str, x: np.ndarray, seed: int = 0):
    """Trace ``model`` at batch 1, run it in a Session, export it to ``path``, reload the file
    with ``ember.load`` and run that: returns (traced graph's output, reloaded file's output)."""
    graph = model.eval().to_graph((1,) + x.shape[1:], seed=seed)
    expected = run(graph, x)
    ember.export_onnx(graph, path)
    del graph
    sess = ember.load(path)
    (got,) = sess.run(None, {sess.get_inputs()[0].name: x})
    return expected, got


def predict_with_trainer(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """The same model's output through ``ember.Trainer.predict`` (eval mode)."""
    return ember.Trainer(model, input_shape=x.shape[1:]).predict(x)


if __name__ == "__main__":
    check_counts()
    print(f"AlexNet: {ALEXNET_PARAMS:,} parameters (feature map sides {ALEXNET_SIDES}); "
          f"VGG-16: {VGG16_PARAMS:,} (REFERENCE.md)")
    models = [("AlexNet", AlexNet())] + ([("VGG-16", VGG16())] if "--vgg" in sys.argv else [])
    with tempfile.TemporaryDirectory() as tmp:
        for name, model in models:
            path = os.path.join(tmp, f"{name}.onnx")
            expected, got = export_and_reload(model, path, image())
            assert got.shape == (1, 1000)
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
            print(f"{name}: exported ({os.path.getsize(path) / 1e6:.0f} MB), reloaded with "
                  f"ember.load; outputs match the traced graph (max |Δ| "
                  f"{np.abs(got - expected).max():.2e})")
            np.testing.assert_allclose(predict_with_trainer(model, image()), got,
                                       rtol=1e-4, atol=1e-6)
            print(f"{name}: Trainer.predict gives the same scores")
