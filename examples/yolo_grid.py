"""Example 6 — a YOLO-style detector head: a small CNN whose output is a 3×3 grid of 8 numbers
per cell (Pc, bx, by, bh, bw, c1, c2, c3), trained with the courses' localisation loss on
synthetic images of coloured squares.

Targets, per cell of 8×8 pixels (as the courses define them): Pc = 1 in the cell holding the
square's centre; there bx, by = the centre's position inside the cell (0..1), bh, bw = the
square's height and width in cell units, c1..c3 = one-hot colour (the square is drawn in
channel k for class k). Elsewhere Pc = 0 and the other seven numbers are "don't care".

The loss is written from graph ops (Slice, Sub, Mul, Add, ReduceSum, ReduceMean) appended to
the model's graph, so autodiff differentiates it like any layer:
    L = mean over images of Σ_cells [ Pc·Σ_{k=0..7} (ŷ_k − y_k)² + (1 − Pc)·(ŷ_0 − y_0)² ]

    python examples/yolo_grid.py [epochs]
"""
from __future__ import annotations

import sys

import numpy as np

import ember
from ember import nn
from ember.graph.infer import infer_shapes
from ember.graph.ir import Graph, TensorType
from ember.runtime.losses import Loss

from _common import require_trainer

SIDE, CELL, GRID, OUTPUTS, CLASSES = 24, 8, 3, 8, 3


def build() -> nn.Sequential:
    """24×24×3 → [conv 3×3 → ReLU → max-pool 2] × 3 → 1×1 conv to 8 channels: [N, 8, 3, 3]."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, OUTPUTS, 1))


class LocalisationLoss(Loss):
    """The courses' YOLO loss: squared error on all 8 outputs where the target's Pc = 1, on Pc
    alone elsewhere; summed over cells, averaged over images. Like ember's own losses it
    appends its nodes to the model's graph (``add_to_graph``); autodiff differentiates them."""

    def __init__(self):
        super().__init__("mean")

    def add_to_graph(self, graph, output, target, kind="float"):
        def const(base, array):
            name = graph.unique_name(base)
            graph.initializers[name] = np.asarray(array)
            graph.types[name] = TensorType(graph.initializers[name].dtype, np.shape(array))
            return name

        def node(op_type, inputs, **attrs):
            out = graph.unique_name(f"localisation_loss/{op_type}")
            graph.add_node(op_type, inputs, [out], name=out, **attrs)
            return out

        first = np.zeros((1, OUTPUTS, 1, 1), np.float32)
        first[0, 0] = 1                                  # Pc's own error always counts
        pc = node("Slice", [target, const("starts", [0]), const("ends", [1]),
                            const("axes", [1])])                        # [N, 1, 3, 3]
        weight = node("Add", [node("Mul", [pc, const("not_first", 1 - first)]),
                              const("first", first)])   # [N, 8, 3, 3]: 1 for Pc, Pc elsewhere
        diff = node("Sub", [output, target])
        weighted = node("Mul", [node("Mul", [diff, diff]), weight])
        per_image = node("ReduceSum", [weighted, const("axes", [1, 2, 3])], keepdims=0)
        loss = node("ReduceMean", [per_image], keepdims=0)
        return loss


def localisation_loss_np(pred, target) -> float:
    """The same loss in numpy, term by term: the oracle for the graph version."""
    pc = target[:, 0]
    sq = (pred - target) ** 2
    return float((pc * sq.sum(1) + (1 - pc) * sq[:, 0]).sum((1, 2)).mean())


def loss_graph(batch: int) -> Graph:
    """The loss alone as a graph with inputs "pred" and "target", output "loss"."""
    shape = (batch, OUTPUTS, GRID, GRID)
    g = Graph(name="localisation_loss", inputs=["pred", "target"],
              types={n: TensorType(np.float32, shape) for n in ("pred", "target")})
    g.outputs = [LocalisationLoss().add_to_graph(g, "pred", "target")]
    infer_shapes(g, fold=False)
    return g


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
    if require_trainer("training the grid detector"):
        epochs = int(sys.argv[1]) if len(sys.argv) > 1 else 15
        _, history, s = train(epochs=epochs, verbose=True)
        print(f"after {epochs} epochs: loss {history.history['loss'][-1]:.4f}; on new images "
              f"right cell {s['cell_accuracy']:.1%}, right class {s['class_accuracy']:.1%}, "
              f"centre off by {s['centre_error_px']:.2f} px")
