"""Training callbacks for ``Trainer.fit(..., callbacks=[...])``, with Keras's names, arguments
and decisions (graph/TRAINING.md §5)::

    from ember.callbacks import CSVLogger, EarlyStopping, ModelCheckpoint, ReduceLROnPlateau
    trainer.fit(X, y, epochs=100, validation_data=(Xv, yv), callbacks=[
        EarlyStopping(patience=5, restore_best_weights=True),
        ModelCheckpoint("ckpt-{epoch:03d}-{val_loss:.3f}.ember", save_best_only=True),
        ReduceLROnPlateau(factor=0.5, patience=2),
        CSVLogger("training.csv")])

Each decision follows Keras 3's callbacks (``keras.callbacks``) step for step. Where Keras
warns and carries on, ember refuses with an ``InputError`` naming the argument, as it does for
any bad input: a ``monitor`` that fit never logs (Keras warns every epoch and the callback
silently does nothing; ember raises at the end of the first epoch, listing the logged keys), an
unknown ``mode`` (Keras falls back to ``"auto"``), a ``mode="auto"`` that cannot tell whether
the quantity should go down or up (Keras raises too).

Epochs are numbered as ``trainer.epoch`` counts them — from 0, and continuing across ``fit``
calls, as Keras numbers them with ``initial_epoch`` — and batches from 0 in each epoch.

Distributed (``Trainer(distributed="mpi")``): every rank runs the callbacks — the same list on
every rank, as it runs the same model and settings. Each hook sees rank 0's logs (broadcast:
the metrics are job-wide sums, but an allreduce may round them differently in the last bit on
different ranks, and a comparison could then go either way), and a stop set on any rank stops
every rank at the same batch or epoch, so EarlyStopping and ReduceLROnPlateau decide the same
on every rank. ModelCheckpoint calls ``trainer.save`` on every rank (rank 0 writes, the others
wait for it); CSVLogger writes on rank 0 only.
"""
from __future__ import annotations

import csv
import math
import numbers
import os
import string
import sys

import numpy as np

from .graph.errors import InputError

__all__ = ["Callback", "EarlyStopping", "ModelCheckpoint", "ReduceLROnPlateau", "CSVLogger"]


def _real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def _count(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool) and x >= 0


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise InputError(message)


def _path(owner: str, what: str, value) -> str:
    _check(isinstance(value, (str, os.PathLike)) and os.fspath(value) != "",
           f"{owner} {what} must be a file path, got {value!r}")
    path = os.fspath(value)
    _check(isinstance(path, str), f"{owner} {what} must be a text path, got {value!r}")
    return path


class Callback:
    """Base class for a callback of your own: override the hooks you need (each does nothing
    here). ``Trainer.fit`` calls ``set_trainer(trainer)`` and then, in this order:

    - ``on_train_begin(logs)`` once (``logs`` is empty);
    - per epoch ``on_epoch_begin(epoch, logs)`` (empty logs), ``on_batch_end(batch, logs)``
      after each optimisation step (``logs["loss"]``: the epoch's running mean loss so far),
      ``on_epoch_end(epoch, logs)`` with the epoch's ``loss``, ``accuracy`` (when the loss has
      one), ``val_loss``/``val_accuracy`` (with ``validation_data``) and the ``lr`` it trained
      with — after the epoch is counted in ``trainer.epoch`` and ``trainer.history``;
    - ``on_train_end(logs)`` with the last epoch's logs, when fit returns normally.

    A hook stops training as in Keras, with ``self.trainer.stop_training = True``: set in
    ``on_batch_end`` it ends the epoch after that batch (the shortened epoch still gets its
    validation, its ``on_epoch_end`` and its place in the History, as in Keras), set in
    ``on_epoch_end`` it ends training after that epoch. Set ``self.stop_reason`` to a sentence
    first and ``History.stop_reason`` records it. The logs a hook gets are its own copy."""

    trainer = None
    stop_reason: str | None = None

    def set_trainer(self, trainer) -> None:
        self.trainer = trainer

    def on_train_begin(self, logs=None) -> None:
        pass

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        pass

    def on_batch_end(self, batch: int, logs=None) -> None:
        pass

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        pass

    def on_train_end(self, logs=None) -> None:
        pass

    def listens_to_batches(self) -> bool:
        """Whether fit must call ``on_batch_end`` (by default: when a subclass overrides it).
        Callbacks that do not listen cost nothing per batch."""
        return type(self).on_batch_end is not Callback.on_batch_end

    def _say(self, message: str) -> None:
        if getattr(self, "verbose", 0) and getattr(self.trainer, "rank", 0) == 0:
            print(message, file=sys.stderr)


def _auto_direction(owner: str, monitor: str) -> str:
    """Keras's ``mode="auto"``: accuracies go up, losses go down; anything else is refused,
    as Keras 3 refuses a metric whose direction it does not know."""
    name = monitor[4:] if monitor.startswith("val_") else monitor
    if "acc" in name:
        return "max"
    if "loss" in name:
        return "min"
    raise InputError(f"{owner}(monitor={monitor!r}): mode='auto' cannot tell whether "
                     f"{monitor!r} should go down or up (it knows losses and accuracies: fit "
                     f"logs loss, accuracy, val_loss, val_accuracy and lr); check the name, or "
                     f"pass mode='min' or mode='max'")


class _MonitorCallback(Callback):
    """Keras's MonitorCallback: the monitored quantity, its direction and what counts as an
    improvement (``min``: value + min_delta < reference; ``max``: value − min_delta >
    reference; any value improves on no reference)."""

    def __init__(self, monitor, mode, min_delta):
        owner = type(self).__name__
        _check(isinstance(monitor, str) and monitor != "",
               f"{owner} monitor must name a logged quantity such as 'val_loss', got "
               f"{monitor!r}")
        _check(mode in ("auto", "min", "max"),
               f"{owner} mode must be 'auto', 'min' or 'max', got {mode!r}")
        _check(_real(min_delta), f"{owner} min_delta must be a finite number, got {min_delta!r}")
        self.monitor, self.mode, self.min_delta = monitor, mode, abs(float(min_delta))
        self.direction = mode if mode != "auto" else _auto_direction(owner, monitor)

    def _improves(self, value: float, reference) -> bool:
        if reference is None:
            return True
        if self.direction == "min":
            return value + self.min_delta < reference
        return value - self.min_delta > reference

    def _monitored(self, logs: dict, when: str) -> float:
        """The monitored value in ``logs``; InputError naming the logged keys when fit does
        not log it."""
        value = logs.get(self.monitor)
        if value is None:
            keys = sorted(logs)
            hint = ""
            if self.monitor.startswith("val_") and not any(k.startswith("val_") for k in keys):
                hint = "; val_* quantities need fit(..., validation_data=(X_val, y_val))"
            raise InputError(f"{type(self).__name__}(monitor={self.monitor!r}): fit logs no "
                             f"{self.monitor!r} {when}: it logs {keys}{hint}")
        return float(value)


class EarlyStopping(_MonitorCallback):
    """Stop training when ``monitor`` has stopped improving (Keras's EarlyStopping).

    Each epoch from ``start_from_epoch`` on counts one more epoch of waiting; an epoch whose
    value improves on the best so far by more than ``min_delta`` becomes the best and, if it
    also improves on ``baseline`` (when given), resets the wait to 0. Training stops at the end
    of an epoch (never epoch 0) once ``patience`` epochs have passed without such a reset:
    ``patience=0`` stops at the first epoch that is no improvement.
    ``restore_best_weights``: at the end of training the parameters and buffers (BatchNorm
    running statistics) of the best epoch are put back — whether training stopped early or ran
    all its epochs with the best one earlier, as Keras 3 does (tf.keras 2 restored only when
    it stopped). The optimizer's state (momenta, step count) and the counters are not rewound:
    what ``trainer.epoch``, the History and the next ``fit`` see goes on from the last epoch.

    After fit: ``stopped_epoch`` (0 when it never stopped), ``best``, ``best_epoch``, ``wait``.
    """

    def __init__(self, monitor="val_loss", min_delta=0, patience=0, verbose=0, mode="auto",
                 baseline=None, restore_best_weights=False, start_from_epoch=0):
        super().__init__(monitor, mode, min_delta)
        _check(_count(patience), f"EarlyStopping patience must be a non-negative integer, got "
                                 f"{patience!r}")
        _check(baseline is None or _real(baseline),
               f"EarlyStopping baseline must be None or a finite number, got {baseline!r}")
        _check(_count(start_from_epoch), f"EarlyStopping start_from_epoch must be a "
                                         f"non-negative integer, got {start_from_epoch!r}")
        self.patience, self.verbose = int(patience), verbose
        self.baseline = None if baseline is None else float(baseline)
        self.restore_best_weights = bool(restore_best_weights)
        self.start_from_epoch = int(start_from_epoch)
        self._reset()

    def _reset(self):
        self.wait = 0
        self.stopped_epoch = 0
        self.best = None
        self.best_epoch = 0
        self.best_weights = None
        self.stop_reason = None

    def on_train_begin(self, logs=None):
        self._reset()

    def on_epoch_end(self, epoch, logs=None):
        current = self._monitored(logs, "at the end of an epoch")
        if epoch < self.start_from_epoch:
            return
        self.wait += 1
        if self._improves(current, self.best):
            self.best, self.best_epoch = current, epoch
            if self.restore_best_weights:
                self.best_weights = self.trainer.state_dict()
            if self.baseline is None or self._improves(current, self.baseline):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            beat = "" if self.baseline is None else f" and beating baseline {self.baseline:g}"
            self.stop_reason = (
                f"EarlyStopping: {self.monitor} went {self.wait} epoch(s) without improving "
                f"by more than min_delta={self.min_delta:g}{beat} (patience {self.patience}); "
                f"best {self.best:.6g} at epoch {self.best_epoch}")
            self.trainer.stop_training = True

    def on_train_end(self, logs=None):
        if self.stopped_epoch > 0:
            self._say(f"Epoch {self.stopped_epoch + 1}: early stopping")
        if self.restore_best_weights and self.best_weights is not None:
            self._say(f"Restoring model weights from the end of the best epoch: "
                      f"{self.best_epoch + 1}.")
            self.trainer.load_state_dict(self.best_weights)


class ModelCheckpoint(_MonitorCallback):
    """Save the trainer with ``trainer.save`` (an atomic, complete checkpoint that
    ``Trainer.restore`` continues from) at the end of every epoch, or every ``save_freq``
    batches when it is an integer (Keras's ModelCheckpoint).

    ``filepath`` may hold ``str.format`` fields: ``{epoch}`` (from 1, as Keras), ``{batch}``
    (from 1, batch-level saves only) and any logged quantity, e.g.
    ``"ckpt-{epoch:02d}-{val_loss:.3f}.ember"``; missing folders are made.
    ``save_best_only``: save only when ``monitor`` improves on the best value saved so far (or on
    ``initial_value_threshold``) — strictly, with no min_delta, as Keras. The best value is kept
    across fit calls, as Keras keeps it. Batch-level saves see the batch logs (``loss`` only), so
    ``save_best_only`` with ``save_freq=N`` needs ``monitor="loss"``.
    """

    def __init__(self, filepath, monitor="val_loss", verbose=0, save_best_only=False,
                 mode="auto", save_freq="epoch", initial_value_threshold=None):
        super().__init__(monitor, mode, 0)
        self.filepath = _path("ModelCheckpoint", "filepath", filepath)
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(self.filepath) if f is not None]
        except ValueError as e:
            raise InputError(f"ModelCheckpoint filepath {self.filepath!r} is not a valid "
                             f"format string: {e}") from None
        _check(all(f and f.isidentifier() for f in fields),
               f"ModelCheckpoint filepath {self.filepath!r}: its fields must be names such as "
               f"{{epoch}} or {{val_loss:.3f}}, got {fields}")
        _check(save_freq == "epoch" or (isinstance(save_freq, numbers.Integral)
                                        and not isinstance(save_freq, bool) and save_freq > 0),
               f"ModelCheckpoint save_freq must be 'epoch' or a positive number of batches, "
               f"got {save_freq!r}")
        _check(initial_value_threshold is None or _real(initial_value_threshold),
               f"ModelCheckpoint initial_value_threshold must be None or a finite number, got "
               f"{initial_value_threshold!r}")
        self.verbose, self.save_best_only = verbose, bool(save_best_only)
        self.save_freq = save_freq if save_freq == "epoch" else int(save_freq)
        self.best = None if initial_value_threshold is None else float(initial_value_threshold)
        self._epoch = 0
        self._batches_since_save = 0
        self._last_batch = None

    def listens_to_batches(self) -> bool:
        return self.save_freq != "epoch"

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_batch_end(self, batch, logs=None):
        if self.save_freq == "epoch":
            return
        if self._last_batch is None or batch <= self._last_batch:
            self._batches_since_save += batch + 1
        else:
            self._batches_since_save += batch - self._last_batch
        self._last_batch = batch
        if self._batches_since_save >= self.save_freq:
            self._batches_since_save = 0
            self._save(self._epoch, batch, logs)

    def on_epoch_end(self, epoch, logs=None):
        if self.save_freq == "epoch":
            self._save(epoch, None, logs)

    def _file_path(self, epoch: int, batch, logs: dict) -> str:
        fields = dict(logs, epoch=epoch + 1)
        if batch is not None:
            fields["batch"] = batch + 1
        try:
            return self.filepath.format(**fields)
        except KeyError as e:
            when = "after a batch" if batch is not None else "at the end of an epoch"
            raise InputError(f"ModelCheckpoint filepath {self.filepath!r} names {e.args[0]!r}, "
                             f"which fit does not log {when}: the fields it can use are "
                             f"{sorted(fields)}") from None
        except (ValueError, TypeError, IndexError) as e:
            raise InputError(f"ModelCheckpoint filepath {self.filepath!r} cannot be formatted "
                             f"with {fields}: {e}") from None

    def _save(self, epoch: int, batch, logs: dict) -> None:
        path = self._file_path(epoch, batch, logs)
        if self.save_best_only:
            when = "after a batch" if batch is not None else "at the end of an epoch"
            current = self._monitored(logs, when)
            if not self._improves(current, self.best):
                self._say(f"Epoch {epoch + 1}: {self.monitor} did not improve from "
                          f"{self.best:.5f}")
                return
            previous = "None" if self.best is None else f"{self.best:.5f}"
            self._say(f"Epoch {epoch + 1}: {self.monitor} improved from {previous} to "
                      f"{current:.5f}, saving model to {path}")
            self.best = current
        else:
            self._say(f"Epoch {epoch + 1}: saving model to {path}")
        try:
            folder = os.path.dirname(path)
            if folder and self.trainer.rank == 0:
                os.makedirs(folder, exist_ok=True)
            self.trainer.save(path)
        except OSError as e:
            raise InputError(f"ModelCheckpoint cannot write {path!r} (filepath "
                             f"{self.filepath!r}): {e.strerror or e}") from None


class ReduceLROnPlateau(_MonitorCallback):
    """Multiply the optimizer's learning rate by ``factor`` when ``monitor`` has not improved
    (by more than ``min_delta``) for ``patience`` epochs (Keras's ReduceLROnPlateau).

    After a reduction the wait restarts and, for ``cooldown`` epochs, epochs without
    improvement are not counted; the rate never goes below ``min_lr``, and once it is at
    ``min_lr`` nothing more happens. The new rate applies from the next epoch (``logs["lr"]``
    and ``history["lr"]`` show the rate each epoch trained with) and is saved in checkpoints
    with the optimizer. It cannot be combined with ``Trainer(scheduler=...)``: a schedule sets
    the rate from its closed form every epoch and would undo the reduction, so fit refuses the
    pair (InputError) — fold a plateau rule into one or the other."""

    def __init__(self, monitor="val_loss", factor=0.1, patience=10, verbose=0, mode="auto",
                 min_delta=1e-4, cooldown=0, min_lr=0.0):
        super().__init__(monitor, mode, min_delta)
        _check(_real(factor) and 0 < factor < 1,
               f"ReduceLROnPlateau factor must be a number in (0, 1), got {factor!r} (a factor "
               f">= 1.0 is not supported, as in Keras)")
        _check(_count(patience), f"ReduceLROnPlateau patience must be a non-negative integer, "
                                 f"got {patience!r}")
        _check(_count(cooldown), f"ReduceLROnPlateau cooldown must be a non-negative integer, "
                                 f"got {cooldown!r}")
        _check(_real(min_lr) and min_lr >= 0,
               f"ReduceLROnPlateau min_lr must be a non-negative number, got {min_lr!r}")
        self.factor, self.patience, self.verbose = float(factor), int(patience), verbose
        self.cooldown, self.min_lr = int(cooldown), float(min_lr)
        self._reset()

    def _reset(self):
        self.best = None
        self.cooldown_counter = 0
        self.wait = 0

    def in_cooldown(self) -> bool:
        return self.cooldown_counter > 0

    def on_train_begin(self, logs=None):
        scheduler = getattr(self.trainer, "scheduler", None)
        if scheduler is not None:
            raise InputError(f"ReduceLROnPlateau cannot run beside Trainer(scheduler="
                             f"{scheduler!r}): the schedule sets the learning rate every epoch "
                             f"and would undo each reduction; use one or the other")
        self._reset()

    def on_epoch_end(self, epoch, logs=None):
        current = self._monitored(logs, "at the end of an epoch")
        if self.in_cooldown():
            self.cooldown_counter -= 1
            self.wait = 0
        if self._improves(current, self.best):
            self.best = current
            self.wait = 0
        elif not self.in_cooldown():
            self.wait += 1
            if self.wait >= self.patience:
                optimizer = self.trainer.optimizer
                old = float(optimizer.lr)
                if old > float(np.float32(self.min_lr)):
                    new = max(old * self.factor, self.min_lr)
                    optimizer.lr = new
                    self._say(f"Epoch {epoch + 1}: ReduceLROnPlateau reducing learning rate "
                              f"to {new}.")
                    self.cooldown_counter = self.cooldown
                    self.wait = 0


class CSVLogger(Callback):
    """Write one row per epoch to a CSV file (Keras's CSVLogger): an ``epoch`` column (from 0,
    as Keras) and every key of the first epoch's logs in sorted order (``NA`` where a later
    epoch lacks one); numbers are written in full precision. Each row is written and the file
    closed at the end of its epoch, so the file is complete whenever training stops.
    ``append=False`` starts the file afresh when training begins; ``append=True`` adds rows
    (and a header only to a missing or empty file) — to a file whose header names other
    columns it refuses with an InputError rather than mixing them. Unlike Keras, no ``val_*``
    columns are invented when fit has no validation data (Keras adds them for its
    ``validation_freq``, which ember's fit does not have). Writes on rank 0 only."""

    def __init__(self, filename, separator=",", append=False):
        self.filename = _path("CSVLogger", "filename", filename)
        _check(isinstance(separator, str) and len(separator) == 1 and separator not in
               '"\r\n', f"CSVLogger separator must be one character other than a quote or a "
                        f"line break, got {separator!r}")
        self.sep, self.append = separator, bool(append)
        self.keys = None
        self._header = None

    def _fail(self, e: OSError):
        raise InputError(f"CSVLogger cannot write {self.filename!r}: {e.strerror or e}") from None

    def on_train_begin(self, logs=None):
        self.keys, self._header = None, None
        if self.trainer.rank != 0:
            return
        try:
            if self.append and os.path.exists(self.filename):
                with open(self.filename, newline="") as f:
                    self._header = next(csv.reader(f, delimiter=self.sep), None)
            else:
                open(self.filename, "w").close()
        except OSError as e:
            self._fail(e)

    def on_epoch_end(self, epoch, logs=None):
        if self.trainer.rank != 0:
            return
        write_header = False
        if self.keys is None:
            self.keys = sorted(logs)
            columns = ["epoch"] + self.keys
            if self._header and self._header != columns:
                raise InputError(f"CSVLogger(append=True): {self.filename!r} has the columns "
                                 f"{self._header}, this run logs {columns}; append to a log "
                                 f"of a run with the same logs, or write another file")
            write_header = not self._header
        try:
            with open(self.filename, "a", newline="") as f:
                writer = csv.writer(f, delimiter=self.sep)
                if write_header:
                    writer.writerow(["epoch"] + self.keys)
                writer.writerow([epoch] + [logs.get(k, "NA") for k in self.keys])
        except OSError as e:
            self._fail(e)


class CallbackList:
    """The callbacks of one ``fit``: calls their hooks in order, and turns their
    ``stop_training`` into one decision — with when and why — that every rank shares."""

    def __init__(self, callbacks, trainer):
        if callbacks is None:
            callbacks = []
        elif isinstance(callbacks, Callback):
            callbacks = [callbacks]
        elif not isinstance(callbacks, (list, tuple)):
            raise InputError(f"callbacks must be a list of ember.callbacks.Callback, got "
                             f"{type(callbacks).__name__}")
        for i, cb in enumerate(callbacks):
            if not isinstance(cb, Callback):
                raise InputError(f"callbacks[{i}] is a {type(cb).__name__}, not an "
                                 f"ember.callbacks.Callback (subclass Callback and override "
                                 f"its on_* hooks)")
        self.callbacks, self.trainer = list(callbacks), trainer
        self.batch_listeners = [cb for cb in self.callbacks if cb.listens_to_batches()]
        self.stopped_epoch = None
        self.stop_reason = None
        self._last_logs: dict = {}

    @property
    def wants_batches(self) -> bool:
        return bool(self.batch_listeners)

    def train_begin(self) -> None:
        self.trainer.stop_training = False
        for cb in self.callbacks:
            cb.set_trainer(self.trainer)
        for cb in self.callbacks:
            cb.on_train_begin({})

    def epoch_begin(self, epoch: int) -> None:
        for cb in self.callbacks:
            cb.on_epoch_begin(epoch, {})

    def batch_end(self, epoch: int, batch: int, loss: float) -> bool:
        """Run ``on_batch_end``; True when training stops after this batch."""
        logs = self._shared({"loss": float(loss)}, f"the logs of batch {batch}")
        self._run(self.batch_listeners, "on_batch_end", batch, logs,
                  f"epoch {epoch}, batch {batch}")
        return self._agree(epoch, f"batch {batch} of epoch {epoch}")

    def epoch_end(self, epoch: int, logs: dict) -> bool:
        """Run ``on_epoch_end``; True when training stops after this epoch."""
        if not self.callbacks:
            return False
        logs = self._shared(dict(logs), f"the logs of epoch {epoch}")
        self._last_logs = dict(logs)
        self._run(self.callbacks, "on_epoch_end", epoch, logs, f"epoch {epoch}")
        return self._agree(epoch, f"epoch {epoch}")

    def train_end(self) -> None:
        for cb in self.callbacks:
            cb.on_train_end(dict(self._last_logs))

    def record(self, *histories) -> None:
        """Write when and why training stopped into the Histories (None: it did not stop)."""
        for h in histories:
            h.stopped_epoch, h.stop_reason = self.stopped_epoch, self.stop_reason

    def _run(self, callbacks: list, hook: str, index: int, logs: dict, where: str) -> None:
        for cb in callbacks:
            before = self.trainer.stop_training
            getattr(cb, hook)(index, dict(logs))
            if self.trainer.stop_training and not before and self.stop_reason is None:
                self.stop_reason = cb.stop_reason or (
                    f"{type(cb).__name__}.{hook} set trainer.stop_training ({where})")

    def _shared(self, logs: dict, what: str) -> dict:
        """Rank 0's logs on every rank (one broadcast of their values)."""
        dist = self.trainer.dist
        if dist is None:
            return logs
        keys = sorted(logs)
        values = np.array([logs[k] for k in keys], np.float64)
        dist.bcast(values, f"broadcasting {what}")
        return dict(zip(keys, values.tolist()))

    def _agree(self, epoch: int, where: str) -> bool:
        stop = bool(self.trainer.stop_training)
        dist = self.trainer.dist
        if dist is not None:
            flags = np.array([1.0 if stop else 0.0])
            dist.allreduce(flags, f"agreeing whether to stop after {where}")
            if flags[0] > 0 and not stop and self.stop_reason is None:
                self.stop_reason = f"a callback on another rank stopped training ({where})"
            stop = bool(flags[0] > 0)
        self.trainer.stop_training = stop
        if stop and self.stopped_epoch is None:
            self.stopped_epoch = epoch
        return stop
