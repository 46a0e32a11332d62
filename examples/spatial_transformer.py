"""A spatial transformer network (Jaderberg et al. 2015; torch's STN tutorial) on distorted digits.

The bundled 8×8 digits, upsampled to 16×16 on a 28×28 canvas, are each rotated (±50°), scaled
(0.7–1.2×) and shifted (±4 px) at random. A localisation network looks at the image and
predicts a 2×3 affine matrix θ (its last layer initialised to the identity transform);
``affine_grid`` turns θ into a sampling grid and ``grid_sample`` resamples the image with it —
the network learns to undo the distortion because that is what lowers the classifier's loss. A
small CNN classifies the result. The same CNN trained alone on the same data is the baseline.

Prints both test accuracies and saves a PNG: distorted inputs (top row) and what the
transformer made of them (bottom row).

    python examples/spatial_transformer.py [epochs] [stn.png]
"""
from __future__ import annotations

import sys

import numpy as np

import ember
from ember import nn
from ember.datasets import load_digits, train_test_split
from ember.graph.builder import Builder

from _common import write_png

F = nn.functional
SIDE = 28
IDENTITY = np.array([1, 0, 0, 0, 1, 0], np.float32)


def canvas_digits():
    """The digits upsampled 2× (16×16) in the middle of a blank 28×28 canvas."""
    x, y = load_digits()
    x = x.repeat(2, axis=2).repeat(2, axis=3)
    pad = (SIDE - 16) // 2
    return np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad))), y


def random_thetas(n, rng, max_degrees=50.0, scale=(0.7, 1.2), shift_px=4.0):
    """n random 2×3 affine matrices in grid_sample's normalised coordinates, mapping each
    output position to where it reads the undistorted image: rotation, zoom and shift."""
    angle = np.deg2rad(rng.uniform(-max_degrees, max_degrees, n))
    zoom = rng.uniform(scale[0], scale[1], n)
    shift = rng.uniform(-shift_px, shift_px, (n, 2)) * 2 / SIDE
    cos, sin = np.cos(angle) / zoom, np.sin(angle) / zoom
    theta = np.stack([np.stack([cos, -sin, shift[:, 0]], 1),
                      np.stack([sin, cos, shift[:, 1]], 1)], 1)
    return theta.astype(np.float32)


def warp(images, thetas):
    """``images`` resampled through ``thetas`` by ember's own AffineGrid and GridSample."""
    b = Builder("warp")
    x = b.input("x", images.shape)
    theta = b.input("theta", thetas.shape)
    grid = b.op("AffineGrid", [theta, np.array(images.shape, np.int64)], align_corners=0)
    b.output(b.op("GridSample", [x, grid], mode="linear", padding_mode="zeros"), "y")
    return ember.Session(b.build()).run(None, {"x": images, "theta": thetas})[0]


def distorted_digits(seed=0, limit=None):
    """(x_train, x_test, y_train, y_test): every digit distorted once, split 80/20."""
    x, y = canvas_digits()
    if limit:
        x, y = x[:limit], y[:limit]
    rng = np.random.default_rng(seed)
    return train_test_split(warp(x, random_thetas(len(x), rng)), y, 0.2, seed=seed)


def classifier() -> nn.Sequential:
    """The CNN both variants end in (28 → conv 5 → 24 → pool → 12 → conv 5 → 8 → pool → 4)."""
    return nn.Sequential(nn.Conv2d(1, 10, 5), nn.BatchNorm2d(10), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(10, 20, 5), nn.BatchNorm2d(20), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(20 * 4 * 4, 50), nn.ReLU(), nn.Linear(50, 10))


class Transformer(nn.Module):
    """The localisation network and sampler: image → θ → grid → resampled image."""

    def __init__(self):
        super().__init__()
        self.localization = nn.Sequential(nn.Conv2d(1, 8, 7), nn.MaxPool2d(2), nn.ReLU(),
                                          nn.Conv2d(8, 10, 5), nn.MaxPool2d(2), nn.ReLU(),
                                          nn.Flatten(), nn.Linear(10 * 3 * 3, 32), nn.ReLU())
        self.fc_theta = nn.Linear(32, 6)
        # Start from the identity transform: the classifier first sees the input unchanged.
        self.fc_theta.weight = nn.Parameter(np.zeros((6, 32), np.float32))
        self.fc_theta.bias = nn.Parameter(IDENTITY.copy())

    def forward(self, x):
        theta = F.reshape(self.fc_theta(self.localization(x)), [-1, 2, 3])
        grid = F.affine_grid(theta, x.shape, align_corners=False)
        return F.grid_sample(x, grid, align_corners=False)


class STN(nn.Module):
    def __init__(self):
        super().__init__()
        self.transformer = Transformer()
        self.classifier = classifier()

    def forward(self, x):
        return self.classifier(self.transformer(x))


def train(model, data, epochs, seed=0, lr=2e-3, batch_size=16):
    x_train, x_test, y_train, y_test = data
    trainer = ember.Trainer(model, input_shape=(1, SIDE, SIDE), loss=nn.CrossEntropyLoss(),
                            optimizer=ember.optim.Adam(lr=lr), batch_size=batch_size, seed=seed)
    trainer.fit(x_train, y_train, epochs=epochs, verbose=False)
    return trainer, trainer.evaluate(x_test, y_test)["accuracy"]


def transformed(trainer, images):
    """What the trained transformer makes of ``images``."""
    part = Transformer()
    state = trainer.state_dict()
    part.load_state_dict({k[len("transformer."):]: v for k, v in state.items()
                          if k.startswith("transformer.")})
    graph = part.eval().to_graph((len(images), 1, SIDE, SIDE))
    return ember.Session(graph).run(None, {"input": images})[0]


def save_grid(path, inputs, outputs, gap=2, zoom=3):
    """Inputs on the top row, the transformer's outputs below them (dark ink on white), each
    pixel drawn as a zoom × zoom block."""
    n = len(inputs)
    sheet = np.ones((2 * SIDE + 3 * gap, n * (SIDE + gap) + gap), np.float32)
    for row, images in enumerate((inputs, outputs)):
        for k, image in enumerate(images):
            top, left = gap + row * (SIDE + gap), gap + k * (SIDE + gap)
            sheet[top:top + SIDE, left:left + SIDE] = 1 - np.clip(image[0], 0, 1)
    write_png(path, sheet.repeat(zoom, axis=0).repeat(zoom, axis=1))


def run(epochs=10, png="spatial_transformer.png", limit=None, seed=0, shown=10):
    """Train the STN and the plain classifier on the same distorted digits; save the PNG.
    Returns (STN accuracy, classifier-alone accuracy)."""
    data = distorted_digits(seed, limit)
    stn, stn_acc = train(STN(), data, epochs, seed)
    _, plain_acc = train(classifier(), data, epochs, seed)
    x_test = data[1][:shown]
    save_grid(png, x_test, transformed(stn, x_test))
    return stn_acc, plain_acc


if __name__ == "__main__":
    epochs = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    path = sys.argv[2] if len(sys.argv) > 2 else "spatial_transformer.png"
    stn_acc, plain_acc = run(epochs, path)
    print(f"distorted digits, {epochs} epochs: with the spatial transformer {stn_acc:.1%}, the "
          f"same classifier alone {plain_acc:.1%}")
    print(f"inputs (top) and the transformer's outputs (bottom): {path}")
