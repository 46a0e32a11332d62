"""A Trainer's per-epoch metrics, kept with it and saved in its checkpoints."""
from __future__ import annotations


class History:
    """Per-epoch metrics, Keras-style: ``history["loss"]``, ``["accuracy"]``, ``["val_loss"]``,
    ``["val_accuracy"]``, ``["lr"]``; ``epoch`` lists the epoch indices."""

    def __init__(self, history: dict | None = None, epoch: list | None = None):
        self.history = {k: list(v) for k, v in (history or {}).items()}
        self.epoch = list(epoch or [])

    def append(self, epoch: int, logs: dict) -> None:
        self.epoch.append(epoch)
        for k, v in logs.items():
            self.history.setdefault(k, []).append(v)

    def __repr__(self):
        keys = ", ".join(self.history)
        return f"History({len(self.epoch)} epochs: {keys})"
