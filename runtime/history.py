"""A Trainer's per-epoch metrics, kept with it and saved in its checkpoints."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import os

    from matplotlib.figure import Figure


class History:
    """Per-epoch metrics, Keras-style: ``history["loss"]``, ``["accuracy"]``, ``["val_loss"]``,
    ``["val_accuracy"]``, ``["lr"]``; ``epoch`` lists the epoch indices.

    ``stopped_epoch`` / ``stop_reason``: the epoch in which a callback stopped the last ``fit``
    (its index, as in ``epoch``) and why — e.g. EarlyStopping's sentence naming the monitored
    quantity, its patience and the best epoch; both None when that fit ran all its epochs.
    """

    def __init__(self, history: dict | None = None, epoch: list | None = None,
                 stopped_epoch: int | None = None, stop_reason: str | None = None) -> None:
        self.history = {k: list(v) for k, v in (history or {}).items()}
        self.epoch = list(epoch or [])
        self.stopped_epoch = stopped_epoch
        self.stop_reason = stop_reason

    def append(self, epoch: int, logs: dict) -> None:
        self.epoch.append(epoch)
        for k, v in logs.items():
            self.history.setdefault(k, []).append(v)

    def plot(self, path: str | os.PathLike | None = None) -> Figure:
        """Draw loss and accuracy per epoch, training beside validation, and save the figure
        as a PNG at ``path`` (when given). Returns the matplotlib ``Figure``. Needs matplotlib
        (an optional dependency: ``pip install matplotlib``); draws on its own canvas, never
        pyplot's global state, so it works in a server or a notebook alike."""
        from ..graph.errors import EmberError
        try:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
            from matplotlib.ticker import MaxNLocator
        except ImportError:
            raise EmberError("History.plot needs matplotlib, which is not installed "
                             "(pip install matplotlib)") from None
        panels = [(metric, [k for k in (metric, f"val_{metric}") if self.history.get(k)])
                  for metric in ("loss", "accuracy")]
        panels = [(metric, keys) for metric, keys in panels if keys]
        if not self.epoch or not panels:
            raise EmberError(f"History.plot: nothing to draw ({self!r}); it plots 'loss' and "
                             f"'accuracy' (and their 'val_' twins) once fit has run an epoch")
        fig = Figure(figsize=(5.5 * len(panels), 4), dpi=100)
        FigureCanvasAgg(fig)
        epochs = [e + 1 for e in self.epoch]
        for i, (metric, keys) in enumerate(panels):
            ax = fig.add_subplot(1, len(panels), i + 1)
            for key in keys:
                values = self.history[key]
                ax.plot(epochs[-len(values):], values, marker="o", markersize=3,
                        label="validation" if key.startswith("val_") else "training")
            if self.stopped_epoch is not None:
                ax.axvline(self.stopped_epoch + 1, color="grey", linestyle=":",
                           label="stopped")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("epoch")
            ax.set_ylabel(metric)
            ax.set_title(metric)
            ax.grid(True, alpha=0.3)
            ax.legend()
        fig.tight_layout()
        if path is not None:
            try:
                fig.savefig(path, format="png")
            except OSError as e:
                raise EmberError(f"History.plot: cannot write {path!r}: {e.strerror or e}") \
                    from None
        return fig

    def __repr__(self):
        keys = ", ".join(self.history)
        stopped = "" if self.stopped_epoch is None else f", stopped in epoch {self.stopped_epoch}"
        return f"History({len(self.epoch)} epochs: {keys}{stopped})"
