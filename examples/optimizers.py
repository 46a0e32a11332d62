"""Example 7 — the optimizer comparison: one small network, the same initial weights and the
same mini-batches, trained with SGD, momentum, RMSProp, Adam and momentum with the courses'
learning-rate decay α = α0 / (1 + decay·epoch). Loss curves go to one PNG (if matplotlib is
installed) and the final accuracies are printed as a table.

ember.optim follows torch.optim's update formulas (REFERENCE.md relates them to the courses'
forms: torch's momentum is v = μv + g, so its step is about 1/(1 − μ) = 10× plain SGD's with the
same α — hence the smaller α for the momentum runs).

    python examples/optimizers.py [epochs] [plot.png]
"""
from __future__ import annotations

import sys

import ember
from ember import nn
from ember.datasets import load_digits, train_test_split

from _common import count_fc

HIDDEN = 32
PARAMS = count_fc(64, HIDDEN) + count_fc(HIDDEN, 10)


def build(seed: int = 0) -> nn.Sequential:
    """8×8 digit → 32 ReLU units → 10 scores; the same seed gives the same initial weights."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 10))
    return model.init_parameters(seed)


def runs():
    """(label, optimizer, scheduler) for each run: built fresh, as optimizers hold state."""
    optim = ember.optim
    return [("SGD", optim.SGD(lr=0.1), None),
            ("momentum", optim.SGD(lr=0.01, momentum=0.9), None),
            ("RMSprop", optim.RMSprop(lr=1e-3), None),
            ("Adam", optim.Adam(lr=1e-3), None),
            ("momentum + decay", optim.SGD(lr=0.02, momentum=0.9),
             optim.lr_scheduler.InverseTimeLR(decay_rate=0.2))]


def compare(epochs: int = 15, seed: int = 0, batch_size: int = 32) -> dict:
    """label -> {"loss": per-epoch training loss, "val_accuracy": ..., "test_accuracy": float}"""
    x, y = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(x, y, 0.2, seed=seed)
    results = {}
    for label, optimizer, scheduler in runs():
        trainer = ember.Trainer(build(seed), input_shape=(1, 8, 8), loss=nn.CrossEntropyLoss(),
                                optimizer=optimizer, scheduler=scheduler,
                                batch_size=batch_size, seed=seed)
        h = trainer.fit(x_train, y_train, epochs=epochs, validation_data=(x_test, y_test),
                        shuffle=True, verbose=False).history
        results[label] = {"loss": list(h["loss"]), "val_accuracy": list(h["val_accuracy"]),
                          "test_accuracy": trainer.evaluate(x_test, y_test)["accuracy"]}
    return results


def table(results: dict) -> str:
    rows = [f"{'optimizer':<18} {'first loss':>10} {'final loss':>10} {'test acc':>9}"]
    for label, r in results.items():
        rows.append(f"{label:<18} {r['loss'][0]:>10.4f} {r['loss'][-1]:>10.4f} "
                    f"{r['test_accuracy']:>9.1%}")
    return "\n".join(rows)


def plot(results: dict, path: str) -> bool:
    """Training-loss curves, one line per optimizer, to ``path``; False if matplotlib is absent."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, r in results.items():
        ax.plot(range(1, len(r["loss"]) + 1), r["loss"], marker="o", ms=3, label=label)
    ax.set(xlabel="epoch", ylabel="training loss (cross-entropy)", yscale="log",
           title=f"Same {PARAMS:,}-parameter net, same data, five optimizers")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


if __name__ == "__main__":
    build()
    print(f"network: 64 → {HIDDEN} → 10, {PARAMS:,} parameters")
    epochs = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    path = sys.argv[2] if len(sys.argv) > 2 else "optimizers.png"
    results = compare(epochs)
    print(table(results))
    print(f"loss curves saved to {path}" if plot(results, path)
          else "matplotlib not installed: no plot (pip install matplotlib)")
