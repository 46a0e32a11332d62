"""Transfer learning, the courses' recipe: features learned on one task help a related task that
has little data.

A small LeNet-like CNN (with BatchNorm) is trained on the digits 0–4 of the bundled 8×8 digits
and exported to ONNX. The file is re-imported with ``ember.nn.load_onnx``, cut at the flattened
convolutional features and frozen (BatchNorm included: its running statistics stay those of
0–4); a new linear head for the digits 5–9 is trained on a few samples per class for one epoch.
The same network trained from scratch on the same samples for one epoch scores lower — both
accuracies are printed (means of 3 runs; over data seeds 0–7 the transferred network led by
10 to 30 points, 20 at the default seed 0). The fine-tuned model is exported again and run in onnxruntime, whose outputs
match ``Trainer.predict``.

    python examples/transfer.py [samples_per_class]
"""
from __future__ import annotations

import os
import sys
import tempfile
from collections import OrderedDict

import numpy as np

import ember
from ember import nn, optim
from ember.datasets import load_digits, train_test_split

FEATURES = "flatten/Flatten"     # the value the backbone is cut at: 16·4·4 = 256 features
N_FEATURES = 256


def features() -> "OrderedDict[str, nn.Module]":
    """conv → BN → ReLU → pool, conv → BN → ReLU, flatten: 8×8 → 16×4×4 → 256."""
    return OrderedDict(
        conv1=nn.Conv2d(1, 8, 3, padding=1), bn1=nn.BatchNorm2d(8), relu1=nn.ReLU(),
        pool1=nn.MaxPool2d(2),
        conv2=nn.Conv2d(8, 16, 3, padding=1), bn2=nn.BatchNorm2d(16), relu2=nn.ReLU(),
        flatten=nn.Flatten())


def classifier(n_classes: int) -> nn.Sequential:
    """The network of both tasks: the features and a linear classifier."""
    return nn.Sequential(OrderedDict(**features(), fc=nn.Linear(N_FEATURES, n_classes)))


def few_per_class(x, y, per_class: int, seed: int):
    """``per_class`` samples of each label, drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    picks = np.concatenate([rng.choice(np.flatnonzero(y == c), per_class, replace=False)
                            for c in np.unique(y)])
    return x[picks], y[picks]


def train(model, x, y, epochs: int, lr: float, seed: int, batch_size: int = 8):
    trainer = ember.Trainer(model, input_shape=(1, 8, 8), loss=nn.CrossEntropyLoss(),
                            optimizer=optim.Adam(lr=lr), batch_size=batch_size, seed=seed)
    trainer.fit(x, y, epochs=epochs, verbose=False)
    return trainer


def main(per_class: int = 10, runs: int = 3, source_epochs: int = 10, seed: int = 0,
         out_dir: str | None = None) -> dict:
    """Accuracies on the test images of 5–9 after one epoch, each the mean of ``runs`` runs
    (head initialisation and batch order drawn from seeds seed·100 + run): one epoch on a few
    images is a handful of steps, so a single run is noisy."""
    x, y = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_fraction=0.3, seed=seed)
    low_train, low_test = y_train < 5, y_test < 5

    # 1. the source task: digits 0–4, all of their training images
    source = train(classifier(5), x_train[low_train], y_train[low_train], source_epochs,
                   lr=3e-3, seed=seed, batch_size=32)
    source_accuracy = source.evaluate(x_test[low_test], y_test[low_test])["accuracy"]
    out_dir = out_dir or tempfile.mkdtemp(prefix="ember-transfer-")
    source_path = os.path.join(out_dir, "digits0-4.onnx")
    source.export_onnx(source_path)

    # 2. the target task: digits 5–9 (labels 0–4), a few images per class, one epoch
    x_few, y_few = few_per_class(x_train[~low_train], y_train[~low_train] - 5, per_class, seed)
    xt, yt = x_test[~low_test], y_test[~low_test] - 5
    transfer_acc, scratch_acc = [], []
    for run in range(runs):
        backbone = nn.load_onnx(source_path, until=FEATURES, freeze=True)
        transferred = nn.Sequential(OrderedDict(backbone=backbone,
                                                head=nn.Linear(N_FEATURES, 5)))
        fine_tuned = train(transferred, x_few, y_few, 1, lr=1e-2, seed=100 * seed + run)
        scratch = train(classifier(5), x_few, y_few, 1, lr=1e-2, seed=100 * seed + run)
        transfer_acc.append(fine_tuned.evaluate(xt, yt)["accuracy"])
        scratch_acc.append(scratch.evaluate(xt, yt)["accuracy"])

    # 3. the (last) fine-tuned model, exported, in onnxruntime
    import onnxruntime as ort
    tuned_path = os.path.join(out_dir, "digits5-9.onnx")
    fine_tuned.export_onnx(tuned_path)
    sess = ort.InferenceSession(tuned_path, providers=["CPUExecutionProvider"])
    (ort_logits,) = sess.run(None, {sess.get_inputs()[0].name: xt})
    return {"source_accuracy": source_accuracy,
            "transfer_accuracy": float(np.mean(transfer_acc)),
            "scratch_accuracy": float(np.mean(scratch_acc)),
            "transfer_runs": transfer_acc, "scratch_runs": scratch_acc,
            "trainable": fine_tuned.trainable,
            "onnx_max_abs_diff": float(np.abs(fine_tuned.predict(xt) - ort_logits).max()),
            "samples": len(x_few), "out_dir": out_dir}


def _percent(values) -> str:
    return ", ".join(f"{v:.1%}" for v in values)


if __name__ == "__main__":
    r = main(int(sys.argv[1]) if len(sys.argv) > 1 else 10)
    print(f"source network, digits 0–4: test accuracy {r['source_accuracy']:.1%}")
    print(f"digits 5–9 after one epoch on {r['samples']} images "
          f"({r['samples'] // 5} per class):")
    print(f"  (a) transferred features, new head ({', '.join(r['trainable'])} trained): "
          f"{r['transfer_accuracy']:.1%} (runs: {_percent(r['transfer_runs'])})")
    print(f"  (b) the same network from scratch: {r['scratch_accuracy']:.1%} "
          f"(runs: {_percent(r['scratch_runs'])})")
    print(f"fine-tuned model in onnxruntime: max |ort − predict| = "
          f"{r['onnx_max_abs_diff']:.2e}; files in {r['out_dir']}")
