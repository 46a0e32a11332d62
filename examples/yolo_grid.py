"""Example 6 — a YOLO-style detector head: a small CNN whose output is a 3×3 grid of 8 numbers
per cell (Pc, bx, by, bh, bw, c1, c2, c3), trained with the courses' localisation loss on
synthetic images of coloured squares.

Targets, per cell of 8×8 pixels (as the courses define them): Pc = 1 in the cell holding the
square's centre; there bx, by = the centre's position inside the cell (0..1), bh, bw = the
square's height and width in cell units, c1..c3 = one-hot colour (the square is drawn in
channel k for class k). Elsewhere Pc = 0 and the other seven numbers are "don't care".

The loss is a custom loss: an ``nn.Module`` whose ``forward(pred, target)`` returns a scalar,
passed as ``Trainer(loss=LocalisationLoss())``. The Trainer traces it onto the model's output,
so autodiff differentiates it like any layer:
    L = mean over images of Σ_cells [ Pc·Σ_{k=0..7} (ŷ_k − y_k)² + (1 − Pc)·(ŷ_0 − y_0)² ]

    python examples/yolo_grid.py [epochs]
"""
from __future__ import annotations

import sys

import numpy as np

import ember
from ember import nn
from ember.nn import functional as F


SIDE, CELL, GRID, OUTPUTS, CLASSES = 24, 8, 3, 8, 3


def build() -> nn.Sequential:
    """24×24×3 → [conv 3×3 → ReLU → max-pool 2] × 3 → 1×1 conv to 8 channels: [N, 8, 3, 3]."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, OUTPUTS, 1))


# Per output channel: Pc's own error always counts (1), the other seven count where Pc = 1.
FIRST = np.eye(1, OUTPUTS, dtype=np.float32).reshape(1, OUTPUTS, 1, 1)


class LocalisationLoss(nn.Module):
    """The courses' YOLO loss: squared error on all 8 outputs where the target's Pc = 1, on Pc
    alone elsewhere; summed over cells, averaged over images."""

    def forward(self, pred, target):
        pc = F.narrow(target, 1, 0, 1)                    # [N, 1, 3, 3]
        weight = pc * (1 - FIRST) + FIRST                 # [N, 8, 3, 3]
        diff = pred - target
        return F.mean(F.sum(diff * diff * weight, dim=(1, 2, 3)))


def localisation_loss_np(pred, target) -> float:
    """The same loss in numpy, term by term: the oracle for the graph version."""
    pc = target[:, 0]
    sq = (pred - target) ** 2
    return float((pc * sq.sum(1) + (1 - pc) * sq[:, 0]).sum((1, 2)).mean())


def loss_graph(batch: int):
    """The loss alone as a graph with inputs "pred" and "target", output "output"."""
    shape = (batch, OUTPUTS, GRID, GRID)
    return LocalisationLoss().trace_graph([("pred", shape, "float32"),
                                           ("target", shape, "float32")])


def squares(n: int, seed: int = 0):
    """``n`` images [n, 3, 24, 24] with one square each (side 4..9, colour = class) on faint
    noise, and their [n, 8, 3, 3] targets."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 0.05, (n, 3, SIDE, SIDE)).astype(np.float32)
    y = np.zeros((n, OUTPUTS, GRID, GRID), np.float32)
    for k in range(n):
        h, w = rng.integers(4, 10, size=2)
        top, left = rng.integers(0, SIDE - h + 1), rng.integers(0, SIDE - w + 1)
        cls = rng.integers(CLASSES)
        x[k, cls, top:top + h, left:left + w] += 1.0
        cy, cx = top + h / 2, left + w / 2
        i, j = min(int(cy // CELL), GRID - 1), min(int(cx // CELL), GRID - 1)
        y[k, :, i, j] = [1, cx / CELL - j, cy / CELL - i, h / CELL, w / CELL, 0, 0, 0]
        y[k, 5 + cls, i, j] = 1
    return x, y


def decode(grid):
    """Per image: the cell with the highest Pc, the box centre in pixels and the class there."""
    n = len(grid)
    flat = grid[:, 0].reshape(n, -1).argmax(1)
    i, j = flat // GRID, flat % GRID
    cell = grid[np.arange(n), :, i, j]                  # [n, 8]
    centre = np.stack([(i + cell[:, 2]) * CELL, (j + cell[:, 1]) * CELL], 1)   # (row, col)
    return flat, centre, cell[:, 5:].argmax(1)


def scores(pred, target) -> dict:
    """How well the boxes are found: right cell, centre error in pixels, right class."""
    cell_p, centre_p, cls_p = decode(pred)
    cell_t, centre_t, cls_t = decode(target)
    right = cell_p == cell_t
    return {"cell_accuracy": float(right.mean()),
            "centre_error_px": float(np.linalg.norm(centre_p - centre_t, axis=1).mean()),
            "class_accuracy": float((right & (cls_p == cls_t)).mean())}


def train(n_train: int = 800, n_test: int = 200, epochs: int = 15, seed: int = 0,
          verbose: bool = False):
    """Fit on synthetic squares; returns (trainer, history, scores on fresh test images)."""
    x, y = squares(n_train, seed)
    x_test, y_test = squares(n_test, seed + 1)
    trainer = ember.Trainer(build(), input_shape=(3, SIDE, SIDE), loss=LocalisationLoss(),
                            optimizer=ember.optim.Adam(lr=2e-3), batch_size=32, seed=seed)
    history = trainer.fit(x, y, epochs=epochs, verbose=verbose)
    return trainer, history, scores(trainer.predict(x_test), y_test)


if __name__ == "__main__":
    x, y = squares(4)
    g = build().eval().to_graph((4, 3, SIDE, SIDE), seed=0)
    assert g.types["output"].shape == y.shape == (4, OUTPUTS, GRID, GRID)
    pred = ember.Session(g).run(None, {"input": x})[0]
    (loss,) = ember.Session(loss_graph(4)).run(None, {"pred": pred, "target": y})
    print(f"grid head: {y.shape[1:]} per image; untrained localisation loss {float(loss):.4f} "
          f"(numpy: {localisation_loss_np(pred, y):.4f})")
    epochs = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    _, history, s = train(epochs=epochs, verbose=True)
    print(f"after {epochs} epochs: loss {history.history['loss'][-1]:.4f}; on new images "
          f"right cell {s['cell_accuracy']:.1%}, right class {s['class_accuracy']:.1%}, "
          f"centre off by {s['centre_error_px']:.2f} px")
