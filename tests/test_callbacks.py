"""ember.callbacks in Trainer.fit: EarlyStopping, ModelCheckpoint, ReduceLROnPlateau, CSVLogger
and the Callback hooks.

Oracles. The decision tables — the epoch EarlyStopping stops in, its best epoch, the weights it
leaves, the learning rate ReduceLROnPlateau leaves each epoch — are what Keras 3.15's own
``keras.callbacks.EarlyStopping`` / ``ReduceLROnPlateau`` decide when driven with the same logs
on a stub model (run once outside this suite: Keras is not a dependency). End to end, the
trainer is compared with the checkpoint file it wrote at its best epoch (bit for bit: the same
float32 arrays) and with its History, and the CSV file is parsed by the csv module; losses are
compared exactly where the same arrays go through the same compiled graph.
"""
from __future__ import annotations

import csv
import json
import os
import sys

import numpy as np
import pytest

import ember
from ember import nn, optim
from ember.callbacks import (Callback, CallbackList, CSVLogger, EarlyStopping, ModelCheckpoint,
                             ReduceLROnPlateau)
from ember.datasets import load_digits, train_test_split
from ember.optim import lr_scheduler
from ember.runtime import checkpoint


# ---- decision tables (Keras 3.15 as the oracle) ------------------------------------------------
class StubTrainer:
    """What the monitor callbacks touch on a Trainer: the stop flag, the state (one number: the
    epoch it was saved in), the optimizer, the schedule and the rank."""

    def __init__(self, lr=1.0):
        self.stop_training = False
        self.optimizer = optim.SGD(lr=lr)
        self.scheduler, self.rank, self.dist = None, 0, None
        self.w = None

    def state_dict(self):
        return {"w": self.w}

    def load_state_dict(self, state):
        self.w = state["w"]


def drive(cb, monitor, values, trainer):
    """fit's loop, one epoch per value; (epochs run, the CallbackList)."""
    calls = CallbackList([cb], trainer)
    calls.train_begin()
    ran = 0
    for epoch, v in enumerate(values):
        trainer.w = epoch
        ran += 1
        if calls.epoch_end(epoch, {monitor: v}):
            break
    calls.train_end()
    return ran, calls


# (monitor, arguments, values) -> (epochs run, stopped_epoch, best_epoch, weights left)
EARLY_STOPPING = [
    ("val_loss", dict(patience=0), [1.0, 0.9, 0.95, 0.8], (3, 2, 1, 2)),
    ("val_loss", dict(patience=2), [1.0, 0.9, 0.95, 0.96, 0.97, 0.5], (4, 3, 1, 3)),
    ("val_loss", dict(patience=1, min_delta=0.1), [1.0, 0.95, 0.85, 0.84], (2, 1, 0, 1)),
    ("val_loss", dict(patience=1, min_delta=-0.1), [1.0, 0.95, 0.85, 0.84], (2, 1, 0, 1)),
    ("val_accuracy", dict(patience=1), [0.5, 0.6, 0.6, 0.55], (3, 2, 1, 2)),
    ("val_accuracy", dict(patience=1, min_delta=0.05), [0.5, 0.6, 0.62, 0.7, 0.71],
     (3, 2, 1, 2)),
    ("val_loss", dict(patience=1, mode="max"), [0.5, 0.6, 0.6, 0.55], (3, 2, 1, 2)),
    ("loss", dict(patience=2, baseline=0.5), [0.9, 0.8, 0.7, 0.6, 0.65, 0.66], (5, 4, 3, 4)),
    ("loss", dict(patience=2, baseline=0.5), [0.9, 0.8, 0.85, 0.86], (3, 2, 1, 2)),
    ("loss", dict(patience=2), [0.9, 0.8, 0.85, 0.86], (4, 3, 1, 3)),
    ("loss", dict(patience=2, baseline=0.85), [0.9, 0.8, 0.85, 0.86], (4, 3, 1, 3)),
    ("loss", dict(patience=0, start_from_epoch=2), [1.0, 2.0, 3.0, 4.0], (4, 3, 2, 3)),
    ("loss", dict(patience=3, restore_best_weights=True), [0.5, 0.4, 0.45, 0.41, 0.42, 0.3],
     (5, 4, 1, 1)),
    ("val_accuracy", dict(patience=2, baseline=0.9, restore_best_weights=True),
     [0.5, 0.6, 0.55, 0.58], (3, 2, 1, 1)),
]


@pytest.mark.parametrize("monitor,kw,values,expected", EARLY_STOPPING)
def test_early_stopping_decides_as_keras(monitor, kw, values, expected):
    trainer = StubTrainer()
    cb = EarlyStopping(monitor=monitor, **kw)
    ran, calls = drive(cb, monitor, values, trainer)
    assert (ran, cb.stopped_epoch, cb.best_epoch, trainer.w) == expected
    assert calls.stopped_epoch == expected[1]
    assert monitor in calls.stop_reason and f"epoch {expected[2]}" in calls.stop_reason


def test_restore_best_weights_when_training_runs_to_the_end():
    """Keras 3: the best epoch's weights come back even when training was not stopped."""
    trainer = StubTrainer()
    ran, calls = drive(EarlyStopping(monitor="loss", patience=5, restore_best_weights=True),
                       "loss", [0.5, 0.3, 0.4, 0.45], trainer)
    assert (ran, trainer.w, calls.stopped_epoch, calls.stop_reason) == (4, 1, None, None)


# (monitor, arguments, values) -> the learning rate each epoch trained with, then the last one
REDUCE_LR = [
    ("val_loss", dict(patience=2, factor=0.5, cooldown=1, min_lr=0.2), [1.0] * 12,
     [1.0, 1.0, 1.0, 0.5, 0.5, 0.25, 0.25, 0.2, 0.2, 0.2, 0.2, 0.2], 0.2),
    ("val_loss", dict(patience=1, factor=0.1, min_delta=0.05),
     [1.0, 0.97, 0.9, 0.88, 0.80, 0.79, 0.78],
     [1.0, 1.0, 0.1, 0.1, 0.01, 0.01, 0.001], 1e-4),
    ("val_accuracy", dict(patience=0, factor=0.5, cooldown=2),
     [0.5, 0.5, 0.6, 0.6, 0.6, 0.6, 0.6], [1.0, 1.0, 0.5, 0.5, 0.25, 0.25, 0.125], 0.125),
    ("loss", dict(patience=1, factor=0.5, min_lr=0.3), [1.0] * 6,
     [1.0, 1.0, 0.5, 0.3, 0.3, 0.3], 0.3),
]


@pytest.mark.parametrize("monitor,kw,values,lrs,last", REDUCE_LR)
def test_reduce_lr_on_plateau_decides_as_keras(monitor, kw, values, lrs, last):
    trainer = StubTrainer(lr=1.0)
    cb = ReduceLROnPlateau(monitor=monitor, **kw)
    calls = CallbackList([cb], trainer)
    calls.train_begin()
    seen = []
    for epoch, v in enumerate(values):
        seen.append(trainer.optimizer.lr)
        calls.epoch_end(epoch, {monitor: v})
    np.testing.assert_allclose(seen, lrs, rtol=1e-12)
    assert trainer.optimizer.lr == pytest.approx(last, rel=1e-12)


# ---- end to end ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits():
    X, y = load_digits()
    return train_test_split(X, y, 0.25, seed=0)


@pytest.fixture(scope="module")
def noisy(digits):
    """A train set small enough to memorise, 30% of its labels shuffled: validation loss falls,
    then climbs as the net learns the noise."""
    Xtr, Xte, ytr, yte = digits
    rng = np.random.default_rng(1)
    X, y = Xtr[:96], ytr[:96].copy()
    flip = rng.random(len(y)) < 0.3
    y[flip] = rng.integers(0, 10, flip.sum())
    return X, y, Xte[:300], yte[:300]


def bn_net():
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Flatten(), nn.Linear(8 * 8 * 8, 32), nn.ReLU(), nn.Linear(32, 10))


def mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))


def make(model=None, lr=1e-2, **kw):
    return ember.Trainer(model or bn_net(), input_shape=(1, 8, 8), loss="cross_entropy",
                         optimizer=optim.Adam(lr=lr), batch_size=16, seed=0, threads=1, **kw)


def test_overfitting_run_stops_at_patience_and_ends_with_the_best_weights(noisy, tmp_path):
    X, y, Xv, yv = noisy
    best_file = tmp_path / "best.ember"
    t = make()
    patience = 3
    h = t.fit(X, y, epochs=80, validation_data=(Xv, yv), verbose=False, callbacks=[
        ModelCheckpoint(best_file, save_best_only=True),
        EarlyStopping(patience=patience, restore_best_weights=True)])
    val = h.history["val_loss"]
    best = int(np.argmin(val))
    assert len(val) < 80 and val[-1] > val[best], "the run never overfitted"
    assert h.stopped_epoch == best + patience == len(val) - 1 == t.epoch - 1
    assert "EarlyStopping" in h.stop_reason and f"at epoch {best}" in h.stop_reason
    assert (t.history.stopped_epoch, t.history.stop_reason) == (h.stopped_epoch, h.stop_reason)
    saved = ember.Trainer.restore(best_file)
    assert saved.epoch == best + 1
    mine, theirs = t.state_dict(), saved.state_dict()
    assert list(mine) == list(theirs) and any("running_mean" in n for n in mine)
    for name in mine:
        np.testing.assert_array_equal(mine[name], theirs[name], err_msg=name)
    assert t.evaluate(Xv, yv)["loss"] == val[best]     # the same arrays through the same graph
    # a new Trainer compiles anew (its own thread count): float32 summation order only
    assert saved.evaluate(Xv, yv)["loss"] == pytest.approx(val[best], rel=1e-6)


def test_model_checkpoint_writes_only_on_improvement_and_the_files_restore(noisy, tmp_path):
    X, y, Xv, yv = noisy
    t = make(mlp(), lr=3e-2)
    pattern = str(tmp_path / "ckpt" / "e{epoch:02d}-{val_loss:.4f}.ember")
    h = t.fit(X, y, epochs=12, validation_data=(Xv, yv), verbose=False,
              callbacks=[ModelCheckpoint(pattern, save_best_only=True)])
    val = h.history["val_loss"]
    improved = [e for e in range(len(val)) if e == 0 or val[e] < min(val[:e])]
    assert 1 < len(improved) < len(val)
    expected = sorted(f"e{e + 1:02d}-{val[e]:.4f}.ember" for e in improved)
    assert sorted(os.listdir(tmp_path / "ckpt")) == expected
    last = ember.Trainer.restore(tmp_path / "ckpt" / expected[-1])
    assert last.epoch == improved[-1] + 1
    assert last.history.history["val_loss"] == val[:improved[-1] + 1]
    assert last.evaluate(Xv, yv)["loss"] == pytest.approx(val[improved[-1]], rel=1e-6)


def test_model_checkpoint_every_n_batches(noisy, tmp_path):
    X, y, _, _ = noisy                    # 96 samples / 16 = 6 batches per epoch
    t = make(mlp())
    t.fit(X, y, epochs=2, verbose=False, callbacks=[
        ModelCheckpoint(tmp_path / "b{epoch}-{batch}.ember", save_freq=4)])
    assert sorted(os.listdir(tmp_path)) == ["b1-4.ember", "b2-2.ember", "b2-6.ember"]
    assert ember.Trainer.restore(tmp_path / "b2-2.ember").global_step == 8


def test_reduce_lr_on_plateau_in_fit(noisy):
    """min_delta=10: only the first epoch is an improvement, whatever the losses are, so the
    rate follows patience, cooldown and min_lr alone."""
    X, y, _, _ = noisy
    t = make(mlp(), lr=0.1)
    h = t.fit(X, y, epochs=9, verbose=False, callbacks=[
        ReduceLROnPlateau(monitor="loss", factor=0.5, patience=2, min_delta=10, cooldown=1,
                          min_lr=0.02)])
    np.testing.assert_allclose(h.history["lr"],
                               [0.1, 0.1, 0.1, 0.05, 0.05, 0.025, 0.025, 0.02, 0.02], rtol=1e-12)
    assert t.optimizer.lr == pytest.approx(0.02)


def test_reduce_lr_on_plateau_refuses_a_scheduler(noisy):
    X, y, _, _ = noisy
    t = make(mlp(), scheduler=lr_scheduler.StepLR(step_size=2))
    with pytest.raises(ember.InputError, match="scheduler"):
        t.fit(X, y, epochs=2, verbose=False, callbacks=[ReduceLROnPlateau(monitor="loss")])
    assert t.epoch == 0


@pytest.mark.parametrize("separator", [",", ";"])
def test_csv_logger_writes_every_epoch_and_appends(noisy, tmp_path, separator):
    X, y, Xv, yv = noisy
    path = tmp_path / "log.csv"
    t = make(mlp())
    t.fit(X, y, epochs=2, validation_data=(Xv, yv), verbose=False,
          callbacks=[CSVLogger(path, separator=separator)])
    t.fit(X, y, epochs=1, validation_data=(Xv, yv), verbose=False,
          callbacks=[CSVLogger(path, separator=separator, append=True)])
    with open(path, newline="") as f:
        rows = list(csv.reader(f, delimiter=separator))
    keys = ["accuracy", "loss", "lr", "val_accuracy", "val_loss"]
    assert rows[0] == ["epoch"] + keys
    assert [int(r[0]) for r in rows[1:]] == [0, 1, 2]
    for i, row in enumerate(rows[1:]):
        assert [float(v) for v in row[1:]] == [t.history.history[k][i] for k in keys]
    with pytest.raises(ember.InputError, match="columns"):   # no validation: other columns
        t.fit(X, y, epochs=1, verbose=False, callbacks=[CSVLogger(path, separator, True)])
    t.fit(X, y, epochs=1, verbose=False, callbacks=[CSVLogger(path, separator)])
    with open(path, newline="") as f:
        assert list(csv.reader(f, delimiter=separator))[0] == ["epoch", "accuracy", "loss", "lr"]


class Recorder(Callback):
    """Every hook call, with what the trainer shows at that moment."""

    def __init__(self, stop_at=None):
        self.calls, self.stop_at = [], stop_at

    def on_train_begin(self, logs=None):
        self.calls.append(("train_begin", self.trainer.epoch, dict(logs)))

    def on_epoch_begin(self, epoch, logs=None):
        self.calls.append(("epoch_begin", epoch, self.trainer.epoch))

    def on_batch_end(self, batch, logs=None):
        self.calls.append(("batch_end", batch, self.trainer.global_step, logs["loss"]))
        if (self.trainer.epoch, batch) == self.stop_at:
            self.trainer.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        self.calls.append(("epoch_end", epoch, self.trainer.epoch, dict(logs)))

    def on_train_end(self, logs=None):
        self.calls.append(("train_end", dict(logs)))


def test_custom_callback_hooks_in_order(noisy):
    X, y, Xv, yv = noisy
    X, y = X[:40], y[:40]                 # batches of 16, 16, 8
    t = make(mlp())
    rec = Recorder()
    losses = []
    inner = t._train_batch
    t._train_batch = lambda step: losses.append(inner(step)) or losses[-1]
    h = t.fit(X, y, epochs=2, validation_data=(Xv, yv), verbose=False, callbacks=[rec])
    kinds = [c[0] for c in rec.calls]
    assert kinds == ["train_begin"] + (["epoch_begin"] + ["batch_end"] * 3 + ["epoch_end"]) * 2 \
        + ["train_end"]
    assert rec.calls[0] == ("train_begin", 0, {})
    assert [c[1:3] for c in rec.calls if c[0] == "epoch_begin"] == [(0, 0), (1, 1)]
    assert [c[1:3] for c in rec.calls if c[0] == "batch_end"] == \
        [(0, 1), (1, 2), (2, 3), (0, 4), (1, 5), (2, 6)]
    # the running mean of the epoch's batch losses, weighted by batch size (16, 16, 8)
    w = np.array([16, 16, 8])
    running = [np.cumsum(np.array(losses[k:k + 3]) * w) / np.cumsum(w) for k in (0, 3)]
    got = [c[3] for c in rec.calls if c[0] == "batch_end"]
    np.testing.assert_allclose(got, np.concatenate(running), rtol=1e-12)
    ends = [c for c in rec.calls if c[0] == "epoch_end"]
    for e, (_, epoch, counted, logs) in enumerate(ends):
        assert (epoch, counted) == (e, e + 1)
        assert logs == {k: v[e] for k, v in h.history.items()}
    assert rec.calls[-1] == ("train_end", ends[-1][3])
    assert (h.stopped_epoch, h.stop_reason) == (None, None)


def test_stop_training_from_on_batch_end_ends_the_epoch_there(noisy):
    X, y, Xv, yv = noisy                  # 6 batches per epoch
    t = make(mlp())
    rec = Recorder(stop_at=(1, 2))
    h = t.fit(X, y, epochs=5, validation_data=(Xv, yv), verbose=False, callbacks=[rec])
    assert t.global_step == 6 + 3 and t.epoch == 2 and h.epoch == [0, 1]
    assert len(h.history["val_loss"]) == 2      # the shortened epoch is validated and logged
    assert h.stopped_epoch == 1
    assert h.stop_reason == "Recorder.on_batch_end set trainer.stop_training (epoch 1, batch 2)"
    assert [c[0] for c in rec.calls][-2:] == ["epoch_end", "train_end"]
    t.fit(X, y, epochs=1, verbose=False)       # the next fit starts afresh
    assert t.epoch == 3 and t.history.stopped_epoch is None


@pytest.mark.parametrize("make_cb", [
    lambda folder: EarlyStopping(),
    lambda folder: EarlyStopping(monitor="val_los", mode="min"),
    lambda folder: ReduceLROnPlateau(),
    lambda folder: ModelCheckpoint(folder / "never.ember", save_best_only=True),
], ids=["early_stopping", "typo", "reduce_lr", "checkpoint"])
def test_a_monitor_fit_never_logs_is_an_input_error(noisy, make_cb, tmp_path):
    X, y, _, _ = noisy
    t = make(mlp())
    with pytest.raises(ember.InputError) as e:
        t.fit(X, y, epochs=3, verbose=False, callbacks=[make_cb(tmp_path)])
    msg = str(e.value)
    assert "monitor='val_los" in msg and "['accuracy', 'loss', 'lr']" in msg
    assert "validation_data" in msg
    assert t.epoch == 1 and not (tmp_path / "never.ember").exists()


@pytest.mark.parametrize("make_cb,match", [
    (lambda: EarlyStopping(mode="maximum"), "mode"),
    (lambda: EarlyStopping(monitor="lr"), "mode='min' or mode='max'"),
    (lambda: EarlyStopping(monitor=""), "monitor"),
    (lambda: EarlyStopping(patience=-1), "patience"),
    (lambda: EarlyStopping(patience=1.5), "patience"),
    (lambda: EarlyStopping(min_delta=float("nan")), "min_delta"),
    (lambda: EarlyStopping(baseline="low"), "baseline"),
    (lambda: ReduceLROnPlateau(factor=1.0), "factor"),
    (lambda: ReduceLROnPlateau(factor=0), "factor"),
    (lambda: ReduceLROnPlateau(min_lr=-1), "min_lr"),
    (lambda: ReduceLROnPlateau(cooldown=-2), "cooldown"),
    (lambda: ModelCheckpoint("ckpt-{epoch.ember"), "format"),
    (lambda: ModelCheckpoint("ckpt-{0}.ember"), "fields"),
    (lambda: ModelCheckpoint("x.ember", save_freq=0), "save_freq"),
    (lambda: ModelCheckpoint(None), "filepath"),
    (lambda: CSVLogger("log.csv", separator=",,"), "separator"),
    (lambda: CSVLogger(3), "filename"),
])
def test_bad_arguments_are_input_errors(make_cb, match):
    with pytest.raises(ember.InputError, match=match):
        make_cb()


@pytest.mark.parametrize("callbacks,match", [
    ([lambda epoch, logs: None], r"callbacks\[0\] is a function"),
    ("EarlyStopping", "must be a list"),
])
def test_callbacks_must_be_callback_objects(noisy, callbacks, match):
    X, y, _, _ = noisy
    t = make(mlp())
    with pytest.raises(ember.InputError, match=match):
        t.fit(X, y, epochs=1, verbose=False, callbacks=callbacks)
    assert t.epoch == 0


def test_checkpoint_filepath_field_fit_does_not_log(noisy, tmp_path):
    X, y, _, _ = noisy
    t = make(mlp())
    with pytest.raises(ember.InputError, match="'val_loss'.*'accuracy', 'epoch', 'loss', 'lr'"):
        t.fit(X, y, epochs=1, verbose=False,
              callbacks=[ModelCheckpoint(tmp_path / "c-{val_loss:.2f}.ember")])
    with pytest.raises(ember.InputError, match="cannot write"):
        t.fit(X, y, epochs=1, verbose=False, callbacks=[ModelCheckpoint(tmp_path)])


def test_stop_is_saved_in_checkpoints_and_old_files_still_load(noisy, tmp_path):
    X, y, _, _ = noisy
    t = make(mlp())
    t.fit(X, y, epochs=3, verbose=False, callbacks=[Recorder(stop_at=(1, 0))])
    t.save(tmp_path / "t.ember")
    back = ember.Trainer.restore(tmp_path / "t.ember")
    assert (back.history.stopped_epoch, back.history.stop_reason) == \
        (1, "Recorder.on_batch_end set trainer.stop_training (epoch 1, batch 0)")
    state = checkpoint.trainer_state(t)
    del state["history"]["stopped_epoch"], state["history"]["stop_reason"]
    checkpoint.save(tmp_path / "old.ember", state)
    old = ember.Trainer.restore(tmp_path / "old.ember")
    assert (old.history.stopped_epoch, old.history.stop_reason) == (None, None)
    assert old.history.history == t.history.history
    state["history"]["stopped_epoch"] = -1
    checkpoint.save(tmp_path / "bad.ember", state)
    with pytest.raises(ember.CheckpointError, match="history.stopped_epoch"):
        ember.Trainer.restore(tmp_path / "bad.ember")


# ---- MPI: the same decisions on every rank ------------------------------------------------------
WORKER = r'''
import json, sys
import numpy as np
import ember
from ember import nn
from ember.callbacks import Callback, CSVLogger, EarlyStopping, ModelCheckpoint, ReduceLROnPlateau

out = sys.argv[1]
rng = np.random.default_rng(1)
X, y = rng.standard_normal((64, 1, 8, 8)).astype(np.float32), rng.integers(0, 3, 64)
Xv, yv = rng.standard_normal((40, 1, 8, 8)).astype(np.float32), rng.integers(0, 3, 40)


class StopOnRankOne(Callback):
    """Rank 1 alone asks to stop after the third batch of the fit."""
    def on_train_begin(self, logs=None):
        self.seen = 0

    def on_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.trainer.rank == 1 and self.seen == 3:
            self.trainer.stop_training = True


t = ember.Trainer(nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 3)),
                  input_shape=(1, 8, 8), optimizer=ember.optim.Adam(lr=0.03), batch_size=8,
                  seed=3, threads=1, distributed=ember.distributed.MPIContext(timeout=60))
h = t.fit(X, y, epochs=40, validation_data=(Xv, yv), verbose=False, callbacks=[
    EarlyStopping(patience=2, restore_best_weights=True), ReduceLROnPlateau(patience=1),
    CSVLogger(out + "/log.csv"), ModelCheckpoint(out + "/best.ember", save_best_only=True)])
h2 = t.fit(X, y, epochs=3, verbose=False, callbacks=[StopOnRankOne()])
json.dump({"history": h.history, "stopped": h.stopped_epoch, "reason": h.stop_reason,
           "stopped2": h2.stopped_epoch, "reason2": h2.stop_reason, "step": t.global_step,
           "state": {k: v.tolist() for k, v in t.state_dict().items()}},
          open(f"{out}/rank{t.rank}.json", "w"))
'''


def test_callbacks_decide_the_same_on_every_rank(tmp_path):
    from test_mpi import HAVE_MPI4PY, MPIRUN, mpirun
    if MPIRUN is None or not HAVE_MPI4PY:
        pytest.skip("needs Open MPI's mpirun and mpi4py (pip install 'ember[mpi]')")
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    r, _ = mpirun([sys.executable, str(script), str(tmp_path)])
    assert r.returncode == 0, r.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{k}.json").read_text()) for k in range(2)]
    first, second = ranks
    for key in ("history", "stopped", "reason", "stopped2", "step", "state"):
        assert first[key] == second[key], key
    assert first["stopped"] is not None and "EarlyStopping" in first["reason"]
    assert second["reason2"].startswith("StopOnRankOne.on_batch_end")
    assert first["reason2"] == "a callback on another rank stopped training (batch 2 of epoch " \
        f"{first['stopped2']})"
    with open(tmp_path / "log.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert len(rows) == 1 + len(first["history"]["loss"])     # written once, by rank 0
    assert ember.Trainer.restore(tmp_path / "best.ember").epoch == \
        int(np.argmin(first["history"]["val_loss"])) + 1
