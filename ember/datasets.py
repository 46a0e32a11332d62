"""Small datasets bundled with ember, so the demo, the examples and the tests train on real data
without scikit-learn or a download."""
from __future__ import annotations

import os

import numpy as np

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


def load_digits(size: int = 8):
    """scikit-learn's 8×8 handwritten digits (1,797 images, UCI ML): ``(X, y)`` with X float32
    [N, 1, size, size] scaled to [0, 1] and y int64 [N]. ``size`` > 8 zero-pads the images
    symmetrically (e.g. 32 for LeNet-style inputs), keeping the digit in the middle."""
    with np.load(os.path.join(DATA_DIR, "digits.npz")) as f:
        images, labels = f["images"], f["labels"]
    x = images.astype(np.float32)[:, None] / 16.0
    if size != 8:
        if size < 8:
            raise ValueError(f"size must be at least 8, got {size}")
        lo = (size - 8) // 2
        x = np.pad(x, ((0, 0), (0, 0), (lo, size - 8 - lo), (lo, size - 8 - lo)))
    return np.ascontiguousarray(x), labels.astype(np.int64)


def train_test_split(x, y, test_fraction: float = 0.2, seed: int = 0):
    """A seeded shuffle split: ``(x_train, x_test, y_train, y_test)`` like scikit-learn's."""
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} samples but y has {len(y)}")
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = int(round(len(x) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    return x[train], x[test], y[train], y[test]
