"""A Trainer's per-epoch metrics, kept with it and saved in its checkpoints."""
from __future__ import annotations


class History:
    """Per-epoch metrics, Keras-style: ``history["loss"]``, ``["accuracy"]``, ``["val_loss"]``,
    ``["val_accuracy"]``, ``["lr"]``; ``epoch`` lists the epoch indices.

    ``stopped_epoch`` / ``stop_reason``: the epoch in which a callback stopped the last ``fit``
    (its index, as in ``epoch``) and why — e.g. EarlyStopping's sentence naming the monitored
    quantity, its patience and the best epoch; both None when that fit ran all its epochs.
    """

    def __init__(self, history: dict | None = None, epoch: list | None = None,
                 stopped_epoch: int | None = None, stop_reason: str | None = None):
        self.history = {k: list(v) for k, v in (history or {}).items()}
        self.epoch = list(epoch or [])
        self.stopped_epoch = stopped_epoch
        self.stop_reason = stop_reason

    def append(self, epoch: int, logs: dict) -> None:
        self.epoch.append(epoch)
        for k, v in logs.items():
            self.history.setdefault(k, []).append(v)

    def __repr__(self):
        keys = ", ".join(self.history)
        stopped = "" if self.stopped_epoch is None else f", stopped in epoch {self.stopped_epoch}"
        return f"History({len(self.epoch)} epochs: {keys}{stopped})"
