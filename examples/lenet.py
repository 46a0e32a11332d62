"""Example 2 — the course LeNet (62,958 parameters) and the classic LeNet-5 (61,706), trained on
the bundled 8×8 digits upsampled to 32×32.

Course LeNet: 32×32×3 → conv 5×5 ×8 → ReLU → max-pool 2 → conv 5×5 ×16 → ReLU → max-pool 2
→ FC 120 → FC 84 → softmax 10. Classic LeNet-5 (LeCun 1998, counted as the courses count it):
32×32×1, 6 and 16 filters, tanh and average pooling (no trainable pooling coefficients),
400 → 120 → 84 → 10. Training: inputs standardized with the training set's μ and σ, four
copies shifted by 2 pixels (augmentation), Adam with the rate decayed 0.6× per epoch.

    python examples/lenet.py [epochs]
"""
from __future__ import annotations

import sys

import numpy as np

import ember
from ember import nn
from ember.datasets import load_digits, train_test_split

from _common import count_conv, count_fc, out_size, run

# Layer by layer, with the courses' formulas (REFERENCE.md: 62,958 and 61,706).
COURSE_LENET_PARAMS = (count_conv(3, 8, 5) + count_conv(8, 16, 5) + count_fc(5 * 5 * 16, 120)
                       + count_fc(120, 84) + count_fc(84, 10))
LENET5_PARAMS = (count_conv(1, 6, 5) + count_conv(6, 16, 5) + count_fc(400, 120)
                 + count_fc(120, 84) + count_fc(84, 10))
# 32 → conv 5 → 28 → pool 2 → 14 → conv 5 → 10 → pool 2 → 5: the 5×5×16 = 400 the FCs start from.
FEATURE_SIDE = out_size(out_size(out_size(out_size(32, 5), 2, s=2), 5), 2, s=2)


def course_lenet() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(16 * FEATURE_SIDE ** 2, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
        nn.Linear(84, 10))


def lenet5() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 6, 5), nn.Tanh(), nn.AvgPool2d(2),
        nn.Conv2d(6, 16, 5), nn.Tanh(), nn.AvgPool2d(2), nn.Flatten(),
        nn.Linear(16 * FEATURE_SIDE ** 2, 120), nn.Tanh(), nn.Linear(120, 84), nn.Tanh(),
        nn.Linear(84, 10))


def build():
    """(course LeNet, classic LeNet-5): built, parameters counted from shapes only."""
    return course_lenet(), lenet5()


def check() -> None:
    course, classic = build()
    assert COURSE_LENET_PARAMS == 62_958 and course.num_parameters() == COURSE_LENET_PARAMS
    assert LENET5_PARAMS == 61_706 and classic.num_parameters() == LENET5_PARAMS
    assert FEATURE_SIDE == 5
    for model, channels in ((course, 3), (classic, 1)):
        g = model.eval().to_graph((2, channels, 32, 32), seed=0)
        assert g.types["output"].shape == (2, 10)
        x = np.random.default_rng(0).random((2, channels, 32, 32), np.float32)
        assert run(g, x).shape == (2, 10)


def digits_32(seed: int = 0):
    """The bundled digits upsampled 4× (each pixel a 4×4 block) to 32×32, split 80/20."""
    x, y = load_digits()
    x = np.ascontiguousarray(x.repeat(4, axis=2).repeat(4, axis=3))
    return train_test_split(x, y, 0.2, seed=seed)


def standardize(x_train, x_test):
    """Scale by the training set's mean and standard deviation — the test set too."""
    mu, sigma = x_train.mean(), x_train.std()
    return (x_train - mu) / sigma, (x_test - mu) / sigma


def shifted_copies(x, y, d: int = 2):
    """Data augmentation: the images plus copies moved d pixels up, down, left and right
    (half an original pixel at 32×32; the background that wraps round is blank)."""
    xs = [x] + [np.roll(x, shift, axis) for axis in (2, 3) for shift in (d, -d)]
    return np.concatenate(xs), np.concatenate([y] * len(xs))


def train(epochs: int = 3, seed: int = 0, verbose: bool = False):
    """Train the classic LeNet-5 on the 32×32 digits (standardized, with shifted copies; Adam
    with an exponentially decaying rate); returns (trainer, history, test accuracy)."""
    x_train, x_test, y_train, y_test = digits_32(seed)
    x_train, x_test = standardize(x_train, x_test)
    x_train, y_train = shifted_copies(x_train, y_train)
    optim = ember.optim
    trainer = ember.Trainer(lenet5(), input_shape=(1, 32, 32), loss=nn.CrossEntropyLoss(),
                            optimizer=optim.Adam(lr=2e-3), batch_size=16, seed=seed,
                            scheduler=optim.lr_scheduler.ExponentialLR(gamma=0.6))
    history = trainer.fit(x_train, y_train, epochs=epochs, validation_data=(x_test, y_test),
                          verbose=verbose)
    return trainer, history, trainer.evaluate(x_test, y_test)["accuracy"]


if __name__ == "__main__":
    check()
    print(f"course LeNet: {COURSE_LENET_PARAMS:,} parameters; classic LeNet-5: "
          f"{LENET5_PARAMS:,} — both as REFERENCE.md")
    epochs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    _, _, acc = train(epochs, verbose=True)
    print(f"LeNet-5 on the 32×32 digits: test accuracy {acc:.1%} after {epochs} epochs")
