"""One rank of the MPI tests (tests/test_mpi.py starts it under ``mpirun -n 2``).

    python tests/mpi_worker.py MODE OUT_DIR [options as JSON]

MODE ``train``: fit a small CNN data-parallel, save a checkpoint from rank 0, and write this
rank's history, final state, optimizer state and thread count to OUT_DIR/rank<r>.npz.
MODE ``resume``: restore OUT_DIR/ckpt.ember on every rank and train one more epoch.
MODE ``raise``: rank 1 raises after ``fail_after`` steps; ``die``: rank 1 kills itself with
SIGKILL there; ``stuck``: rank 1 sleeps forever there. Rank 0 keeps training (and saves a
checkpoint before the failure), so the test sees whether the job stops, how fast, and with what
message.
"""
import json
import os
import signal
import sys
import time

import numpy as np

import ember
from ember import nn


def model(batchnorm: bool, dropout: bool):
    layers = [nn.Conv2d(1, 4, 3, padding=1)]
    if batchnorm:
        layers.append(nn.BatchNorm2d(4))
    layers += [nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 4 * 4, 16), nn.Tanh()]
    if dropout:
        layers.append(nn.Dropout(0.3))
    layers.append(nn.Linear(16, 3))
    return nn.Sequential(*layers)


def data(n: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 1, 8, 8)).astype(np.float32)
    y = (X[:, 0, :4].sum(axis=(1, 2)) > 0).astype(np.int64) + (X[:, 0, 4:, :4].mean(
        axis=(1, 2)) > 0.2)
    return X, y


def trainer(opts: dict, distributed):
    torch_like = model(opts.get("batchnorm", False), opts.get("dropout", False))
    opt = ember.optim.SGD(lr=0.05, momentum=0.9) if opts.get("optimizer") == "sgd" else \
        ember.optim.Adam(lr=0.01)
    return ember.Trainer(torch_like, input_shape=(1, 8, 8), loss="cross_entropy", optimizer=opt,
                         batch_size=opts["batch"], seed=3, l2=opts.get("l2", 0.0),
                         threads=opts.get("threads"), distributed=distributed,
                         clip_grad_norm=opts.get("clip_grad_norm"))


def main():
    mode, out = sys.argv[1], sys.argv[2]
    opts = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    opts.setdefault("batch", 8)
    X, y = data(opts.get("n", 61))
    ctx = ember.distributed.MPIContext(timeout=opts.get("timeout", 60.0))
    if mode == "resume":            # continue the checkpoint a "train" run left in OUT_DIR
        t = ember.Trainer.restore(os.path.join(out, "ckpt.ember"), threads=opts.get("threads"),
                                  distributed=ctx)
        t.fit(X, y, epochs=1, verbose=False)
        np.savez(os.path.join(out, f"resumed{t.rank}.npz"),
                 **{f"state/{k}": v for k, v in t.state_dict().items()})
        return
    t = trainer(opts, ctx)
    rank = t.rank
    if mode == "train":
        hist = t.fit(X, y, epochs=opts.get("epochs", 3), verbose=False,
                     validation_data=(X[:20], y[:20]))
        t.save(os.path.join(out, "ckpt.ember"))
        ev = t.evaluate(X, y)
        state = {f"state/{k}": v for k, v in t.state_dict().items()}
        opt = {f"opt/{p}/{k}": a for p, d in t.optimizer.state.items() for k, a in d.items()}
        np.savez(os.path.join(out, f"rank{rank}.npz"), loss=np.array(hist.history["loss"]),
                 val_loss=np.array(hist.history["val_loss"]),
                 accuracy=np.array(hist.history["accuracy"]), eval_loss=ev["loss"],
                 threads=t.threads, world=t.world, **state, **opt)
        return
    t.save(os.path.join(out, "ckpt.ember"))
    for k in range(10_000):
        if rank == 1 and k == opts.get("fail_after", 3):
            if mode == "raise":
                raise RuntimeError("rank 1 fails on purpose")
            if mode == "die":
                os.kill(os.getpid(), signal.SIGKILL)
            if mode == "stuck":
                time.sleep(3600)
        t.train_step(X[8 * rank:8 * rank + 8], y[8 * rank:8 * rank + 8])


if __name__ == "__main__":
    main()
