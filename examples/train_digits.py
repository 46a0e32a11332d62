"""Train a small CNN on the bundled 8×8 digits, checkpoint it, export ONNX, reload it with
``ember.load`` and serve predictions from the file — what ``ember demo`` does, as user code.

    python examples/train_digits.py [epochs]        # or EMBER_EPOCHS=3 python examples/...
"""
from __future__ import annotations

import os
import sys
import tempfile
import time

import numpy as np

import ember
from ember import nn, optim
from ember.datasets import load_digits, train_test_split


def main(epochs: int = 15, out_dir: str | None = None, verbose: bool = True) -> dict:
    x, y = load_digits()                                   # [1797, 1, 8, 8] in [0, 1], labels
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_fraction=0.2, seed=0)

    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(0.2), nn.Linear(32 * 2 * 2, 10))
    trainer = ember.Trainer(model, input_shape=(1, 8, 8), loss=nn.CrossEntropyLoss(),
                            optimizer=optim.Adam(lr=3e-3), batch_size=32, seed=0)
    trainer.fit(x_train, y_train, epochs=epochs, validation_data=(x_test, y_test),
                verbose=verbose)                           # a progress bar per epoch
    scores = trainer.evaluate(x_test, y_test)              # {"loss": …, "accuracy": …}

    out_dir = out_dir or tempfile.mkdtemp(prefix="ember-digits-")
    trainer.save(os.path.join(out_dir, "digits.ember"))   # resume: ember.Trainer.restore(...)
    onnx_path = os.path.join(out_dir, "digits.onnx")
    trainer.export_onnx(onnx_path)

    sess = ember.load(onnx_path)                           # a compiled inference Session
    (logits,) = sess.run(None, {sess.inputs[0].name: x_test})
    accuracy = float((logits.argmax(1) == y_test).mean())
    one = x_test[:1]
    sess.run(None, {sess.inputs[0].name: one})             # warm-up
    start = time.perf_counter()
    for _ in range(20):
        sess.run(None, {sess.inputs[0].name: one})
    latency_ms = (time.perf_counter() - start) / 20 * 1e3
    return {"evaluate": scores, "onnx_accuracy": accuracy, "latency_ms": latency_ms,
            "predict": trainer.predict(x_test), "onnx_logits": logits, "out_dir": out_dir}


if __name__ == "__main__":
    epochs = int(sys.argv[1]) if len(sys.argv) > 1 else int(os.environ.get("EMBER_EPOCHS", 15))
    r = main(epochs)
    print(f"test accuracy {r['evaluate']['accuracy']:.1%} (Trainer), "
          f"{r['onnx_accuracy']:.1%} (reloaded ONNX file); "
          f"latency {r['latency_ms']:.3f} ms per image; files in {r['out_dir']}")
    assert np.allclose(r["predict"], r["onnx_logits"], rtol=1e-4, atol=1e-5)
