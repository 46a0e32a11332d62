"""ember.Trainer: fit / evaluate / predict / gradients / state_dict / checkpoints, and the ONNX
way in and out (graph/TRAINING.md §4).

    trainer = ember.Trainer(model, input_shape=(1, 28, 28), loss="cross_entropy")
    trainer.export_onnx("model.onnx")           # eval mode: BatchNorm with running statistics
    t = ember.Trainer.from_onnx("model.onnx", loss="cross_entropy", optimizer=optim.SGD(lr=0.01),
                                trainable=["fc.*"])   # fine-tune the head, freeze the rest

The Trainer owns the model state: one float32 array per parameter and per buffer, named as
torch names them. Every compiled graph — one training step per (batch size, target form) it
meets, the eval graph for ``predict``, the eval graph with the loss for ``evaluate`` — reads
those arrays in place as Session *external state*, so the optimizer's in-place updates are seen
by all of them without re-exporting or copying anything.

The class lives here, in ember's public face, rather than in ``runtime``: ``from_onnx`` and
``export_onnx`` read and write ONNX through ``importers``, and ``runtime`` may not import
``importers`` (arrows point ember → runtime → graph, importers → graph). Everything a Trainer
runs lives below it: the compiled step (``runtime/training_step.py``), losses, optimizers,
schedules, checkpoints and data parallelism.
"""
from __future__ import annotations

import fnmatch
import math
import sys
from collections import OrderedDict
from typing import TYPE_CHECKING

import numpy as np

from .callbacks import CallbackList
from .graph.errors import InputError, ModelError, ShapeError
from .graph.infer import infer_shapes
from .graph.ir import Graph, TensorType
from .graph.ops import REGISTRY, get_op
from .runtime import checkpoint, losses
from .runtime.distributed import DistributedStep, resolve, shard
from .runtime.history import History
from .runtime.optim import Adam
from .runtime.session import Session
from .runtime.threads import default_threads
from .runtime.training_step import TARGET, StepRunner, TrainingStep

if TYPE_CHECKING:
    import os
    from collections.abc import Callable, Sequence
    from typing import Any

    from .callbacks import Callback
    from .nn import Module
    from .runtime.distributed import MPIContext
    from .runtime.losses import Loss
    from .runtime.lr_scheduler import LRScheduler
    from .runtime.optim import Optimizer

BATCH = "N"


def _model_graph(model, input_shape, seed):
    """(eval-mode Graph with parameters as initializers, parameter names, buffer names, trainable
    names) from an ``ember.nn`` Module or an ember Graph."""
    if isinstance(model, Graph):
        g = model.copy()
        meta = g.metadata
        params = [p for p in meta.get("parameters", []) if p in g.initializers]
        buffers = [b for b in meta.get("buffers", []) if b in g.initializers]
        if not params:
            raise ModelError("the graph lists no parameters (metadata['parameters']); build it "
                             "with ember.graph.Builder.parameter or ember.nn, or use "
                             "Trainer.from_onnx")
        return g, params, buffers, list(params), input_shape
    to_graph = getattr(model, "to_graph", None)
    if not callable(to_graph):
        raise ModelError(f"model must be an ember.nn.Module or an ember Graph, got "
                         f"{type(model).__name__}")
    if input_shape is None:
        raise ModelError("input_shape= (one sample's shape, without the batch dim) is needed to "
                         "trace an nn.Module")
    modes = [(m, m.training) for m in model.modules()]
    frozen_statistics = model.frozen_statistics()
    model.eval()
    try:
        g = to_graph(input_shape=(BATCH,) + tuple(input_shape), seed=seed)
    finally:
        for m, training in modes:    # each its own: a backbone.eval() inside stays in eval
            m.train(training)
    if frozen_statistics:
        g.metadata["frozen_statistics"] = frozen_statistics
    names = list(model.state_dict().keys())
    trainable = {n for n, p in model.named_parameters() if getattr(p, "requires_grad", True)}
    params = [n for n in names if n in set(g.metadata.get("parameters", []))]
    buffers = [n for n in names if n in set(g.metadata.get("buffers", []))]
    return g, params, buffers, [n for n in params if n in trainable], input_shape


class Trainer:
    """Trains a model on numpy arrays. See graph/TRAINING.md §4 for the API."""

    def __init__(self, model: Module | Graph | str | os.PathLike,
                 input_shape: Sequence[int] | None = None,
                 loss: str | Loss | Module | type = "cross_entropy",
                 optimizer: Optimizer | None = None, batch_size: int = 32,
                 threads: int | None = None, seed: int = 0, l2: float = 0.0,
                 scheduler: LRScheduler | None = None,
                 trainable: str | Sequence[str] | None = None, memory_cap: int | None = None,
                 distributed: str | MPIContext | None = None,
                 clip_grad_norm: float | None = None) -> None:
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
        if not (isinstance(l2, (int, float)) and math.isfinite(l2) and l2 >= 0):
            raise InputError(f"l2 must be a non-negative number, got {l2!r}")
        if threads is not None and (not isinstance(threads, (int, np.integer)) or threads < 1):
            raise InputError(f"threads must be a positive integer, got {threads!r}")
        self.clip_grad_norm = _check_clip_grad_norm(clip_grad_norm)
        g, params, buffers, train_names, input_shape = _model_graph(model, input_shape, seed)
        self.loss = losses.resolve(loss)
        if self.loss.reduction == "none":
            raise ModelError(f"{self.loss!r}: a Trainer needs a scalar loss; use "
                             f"reduction='mean' or 'sum'")
        self.batch_size, self.seed, self.l2 = int(batch_size), int(seed), float(l2)
        self.dist = resolve(distributed)
        self.world = self.dist.size if self.dist else 1
        self.rank = self.dist.rank if self.dist else 0
        if threads:
            self.threads = int(threads)
        else:
            self.threads = self.dist.threads() if self.dist else default_threads()
        self.memory_cap = memory_cap
        self._setup_graph(g, params, buffers, input_shape)
        if trainable is not None:
            train_names = _match(trainable, params, "trainable")
        if optimizer is None:
            optimizer = Adam(lr=1e-3)
        self.optimizer = optimizer
        optimizer.bind(OrderedDict((n, self.params[n]) for n in train_names), self.threads)
        self.trainable = list(getattr(optimizer, "param_names", train_names))
        self.scheduler = scheduler
        if scheduler is not None:
            scheduler.bind(optimizer)
        self.global_step = 0          # optimizer steps taken (the step a NaN error names)
        # the step Dropout draws its masks for: bound in place into every training step,
        # advanced with global_step, checkpointed (graph/TRAINING.md §1)
        self.dropout_step = np.zeros((), np.int64)
        self.epoch = 0                # epochs completed
        self.rng = np.random.default_rng(self.seed)   # shuffling
        # fit(transform=...)'s draws: its own stream, so every rank shuffles alike and
        # augments its shard differently (checkpointed: graph/TRAINING.md §7)
        self.augment_rng = np.random.default_rng([self.seed, self.rank, 1])
        self.history = History()
        self.stop_training = False    # a callback sets it to end fit (Keras's flag)
        self._steps: dict = {}
        self._eval_session = None
        self._loss_sessions: dict = {}
        self._runner = StepRunner(optimizer, self.l2,
                                  [n for n in self.trainable if self.params[n].ndim >= 2],
                                  self.params, self.threads, self.clip_grad_norm)
        self._dist_step = None
        if self.dist is not None:
            self._join_job()

    def _join_job(self):
        """Check every rank runs the same model and settings, start every rank from rank 0's
        parameters and buffers, and set up the gradient allreduce."""
        d = self.dist
        d.check_same([(n, a.shape) for n, a in self._state.items()], "the model's state")
        d.check_same((self.trainable, self.batch_size, self.seed, self.l2, self.clip_grad_norm,
                      self.loss.config(), type(self.optimizer).__name__,
                      float(self.optimizer.lr)), "the training settings")
        for name, a in self._state.items():
            d.bcast(a, f"broadcasting the initial {name!r}")
        self._dist_step = DistributedStep(d, self._runner, self.trainable, self.params,
                                          self.buffers)

    # ---- model state ---------------------------------------------------------------------------
    def _setup_graph(self, g: Graph, params: list, buffers: list, input_shape):
        """Own a float32 copy of every parameter and buffer and make them graph inputs."""
        state_names = params + buffers
        data = [n for n in g.inputs if n not in g.initializers and n not in state_names]
        if len(data) != 1:
            raise ModelError(f"a Trainer needs a model with exactly one data input, this one "
                             f"has {data}")
        if not g.outputs:
            raise ModelError("the model has no output")
        self.data_input = data[0]
        g.outputs = g.outputs[:1]
        initial_order = list(g.initializers)
        self.params = OrderedDict()
        self.buffers = OrderedDict()
        for names, store in ((params, self.params), (buffers, self.buffers)):
            for n in names:
                a = g.initializers.pop(n)
                if np.asarray(a).dtype.kind != "f":
                    raise ModelError(f"parameter {n!r} has dtype {np.asarray(a).dtype}; only "
                                     f"float parameters can be trained")
                store[n] = np.array(a, dtype=np.float32, order="C", copy=True)
                g.types[n] = TensorType(np.float32, store[n].shape)
        g.inputs = [self.data_input] + state_names
        x_t = g.types[self.data_input]
        if x_t.dtype != np.float32:
            raise ModelError(f"the model's input {self.data_input!r} is {x_t.dtype}; a Trainer "
                             f"trains float32 models")
        shape = tuple(input_shape) if input_shape is not None else tuple(x_t.shape[1:])
        if any(not isinstance(d, (int, np.integer)) or d < 1 for d in shape):
            raise ModelError(f"input_shape must be positive ints (one sample, no batch dim), "
                             f"got {shape}")
        if len(shape) != len(x_t.shape) - 1:
            raise ModelError(f"input_shape {shape} does not match the model's input "
                             f"{self.data_input!r} of shape {x_t.shape}")
        self.input_shape = tuple(int(d) for d in shape)
        g.types[self.data_input] = TensorType(np.float32, (BATCH,) + self.input_shape)
        g.metadata = dict(g.metadata)
        g.metadata["parameters"], g.metadata["buffers"] = list(params), list(buffers)
        if "state_order" not in g.metadata:   # torch's order: module by module, as created
            g.metadata["state_order"] = [n for n in initial_order if n in set(state_names)]
        self._model = g
        self._state = OrderedDict(list(self.params.items()) + list(self.buffers.items()))
        probe = g.copy()
        probe.types[self.data_input] = TensorType(np.float32, (1,) + self.input_shape)
        try:
            infer_shapes(probe, fold=False)
        except ShapeError as e:
            raise ModelError(f"the model does not accept inputs of shape (N,) + "
                             f"{self.input_shape}: {e}") from e
        self.output_shape = tuple(probe.types[g.outputs[0]].shape[1:])

    @property
    def state_names(self) -> list:
        return list(self._state)

    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Copies of every parameter and buffer under torch's names (torch's order)."""
        order = self._model.metadata.get("state_order") or self.state_names
        return OrderedDict((n, self._state[n].copy()) for n in order if n in self._state)

    def load_state_dict(self, state: dict, strict: bool = True) -> tuple[list[str], list[str]]:
        """Copy arrays in by name (in place: every compiled graph sees them at once). Torch's
        ``num_batches_tracked`` entries are ignored. Returns (missing, unexpected) names."""
        if not hasattr(state, "items"):
            raise InputError(f"load_state_dict expects a mapping name -> array, got "
                             f"{type(state).__name__}")
        state = {k: v for k, v in state.items() if not str(k).endswith("num_batches_tracked")}
        missing = [k for k in self._state if k not in state]
        unexpected = [k for k in state if k not in self._state]
        if strict and (missing or unexpected):
            raise ModelError(f"load_state_dict: missing keys {missing}, unexpected keys "
                             f"{unexpected}")
        arrays = {}
        for name, value in state.items():
            if name not in self._state:
                continue
            try:
                a = np.asarray(value, dtype=np.float32)
            except (TypeError, ValueError) as e:
                raise InputError(f"load_state_dict: {name!r} is not a float array: {e}") from None
            if a.shape != self._state[name].shape:
                raise ShapeError(f"load_state_dict: {name!r} has shape {a.shape}, the model "
                                 f"expects {self._state[name].shape}")
            arrays[name] = a
        for name, a in arrays.items():     # all checked before anything changes
            np.copyto(self._state[name], a)
        return missing, unexpected

    def graph(self) -> Graph:
        """The eval-mode inference Graph with the current parameters as initializers (copies)."""
        g = self._model.copy()
        g.metadata = dict(g.metadata)
        for n, a in self._state.items():
            g.initializers[n] = a.copy()
        g.inputs = [self.data_input]
        infer_shapes(g, fold=False)
        return g

    # ---- ONNX in and out ------------------------------------------------------------------------
    @classmethod
    def from_onnx(cls, path: str | os.PathLike, loss: str | Loss | Module | type,
                  optimizer: Optimizer | None = None, trainable: str | Sequence[str] | None = None,
                  freeze: str | Sequence[str] | None = None,
                  input_shape: Sequence[int] | None = None, **kw: Any) -> "Trainer":
        """Fine-tune an ONNX model. Parameters and buffers are the float initializers (rank ≥ 1)
        feeding the inputs each op declares as ``parameter_inputs`` / ``buffer_inputs`` (Conv /
        ConvTranspose / Gemm / MatMul weights and biases, BatchNormalization scale and bias, the
        constant operand of Add/Sub/Mul…; BatchNormalization mean/var are buffers).
        ``trainable`` (glob patterns over initializer names, default all parameters) selects what
        trains, then ``freeze`` patterns remove names from it. The batch dim becomes symbolic."""
        from .importers.onnx import load_onnx
        g = load_onnx(path)
        params, buffers = [], []
        for node in g.nodes:
            op = get_op(node.op_type, node.domain)
            for slots, out in ((op.parameter_inputs, params), (op.buffer_inputs, buffers)):
                for i in slots:
                    name = node.input(i)
                    a = g.initializers.get(name)
                    if a is None or np.asarray(a).dtype.kind != "f" or np.ndim(a) < 1:
                        continue
                    if name not in params and name not in buffers:
                        out.append(name)
        if not params:
            holders = "/".join(sorted(op.op_type for op in REGISTRY.values()
                                      if op.parameter_inputs))
            raise ModelError(f"{path!r}: found no parameters (float initializers feeding the "
                             f"parameter inputs of {holders}) to train")
        selected = _match(trainable, params, "trainable") if trainable is not None \
            else list(params)
        if freeze is not None:
            frozen = set(_match(freeze, params, "freeze"))
            selected = [p for p in selected if p not in frozen]
        if not selected:
            raise ModelError("every parameter is frozen: nothing to train")
        g.metadata["parameters"], g.metadata["buffers"] = params, buffers
        data = [n for n in g.inputs if n not in g.initializers]
        if len(data) == 1:
            t = g.types[data[0]]
            if input_shape is None:
                input_shape = tuple(t.shape[1:])
                if not all(isinstance(d, (int, np.integer)) for d in input_shape):
                    raise ModelError(f"input {data[0]!r} has shape {t.shape}: pass "
                                     f"input_shape= (one sample's shape)")
            g.types[data[0]] = TensorType(t.dtype, (BATCH,) + tuple(input_shape))
        return cls(g, input_shape=input_shape, loss=loss, optimizer=optimizer,
                   trainable=selected, **kw)

    def export_onnx(self, path: str | os.PathLike, opset: int | None = None) -> None:
        """Write the eval-mode inference model (current parameters, BatchNorm with running
        statistics) as ONNX; onnxruntime's outputs match ``predict``."""
        from .importers.onnx_export import save_onnx
        save_onnx(self.graph(), path, opset=opset)

    # ---- input checks ----------------------------------------------------------------------------
    def _check_x(self, X, what="X") -> np.ndarray:
        if not isinstance(X, np.ndarray):
            try:
                X = np.asarray(X)
            except Exception as e:
                raise InputError(f"{what}: cannot convert {type(X).__name__} to an array: "
                                 f"{e}") from None
        if X.dtype.kind not in "fiub":
            raise InputError(f"{what} must hold numbers, got dtype {X.dtype}")
        if X.ndim != len(self.input_shape) + 1 or tuple(X.shape[1:]) != self.input_shape:
            raise InputError(f"{what} has shape {X.shape}; the model expects (N,) + "
                             f"{self.input_shape} (input_shape={self.input_shape})")
        if X.shape[0] == 0:
            raise InputError(f"{what} is empty")
        X = np.ascontiguousarray(X, dtype=np.float32)
        if not np.isfinite(X).all():
            bad = int(np.flatnonzero(~np.isfinite(X).reshape(len(X), -1).all(axis=1))[0])
            raise InputError(f"{what} contains NaN or infinity (first in sample {bad})")
        return X

    def _check_xy(self, X, y, what="") -> tuple:
        X = self._check_x(X, f"{what}X")
        y_arr = y if isinstance(y, np.ndarray) else np.asarray(y)
        if y_arr.ndim == 0 or len(y_arr) != len(X):
            raise InputError(f"{what}X has {len(X)} samples but {what}y has "
                             f"{len(y_arr) if y_arr.ndim else 'a scalar'}")
        kind, y_arr = self.loss.prepare_target(y_arr, (len(X),) + self.output_shape, len(X))
        return X, kind, y_arr

    # ---- training --------------------------------------------------------------------------------
    def _step_for(self, batch: int, kind: str, row_offset: int = 0) -> TrainingStep:
        """The compiled step for ``batch`` rows whose first is row ``row_offset`` of the global
        batch (a rank's shard: Dropout draws the masks of those rows, as one process would)."""
        key = (batch, kind, row_offset)
        step = self._steps.get(key)
        if step is None:
            step = TrainingStep(self._model, self.data_input, self.params, self.buffers,
                                self.trainable, self.loss, kind, batch, self.threads,
                                self.seed, self.memory_cap, dropout_step=self.dropout_step,
                                row_offset=row_offset)
            self._steps[key] = step
        return step

    def _train_batch(self, step: TrainingStep) -> float:
        loss = self._runner(step, self.global_step)
        self.global_step += 1
        self.dropout_step += 1      # in place: the compiled steps read this very array
        return loss

    def _train_shard(self, step, y_local, y_global, m: int) -> float:
        """One step of the job: this rank's rows are in ``step`` (None: it has none)."""
        if self.loss.reduction == "mean":
            w_all = self.loss.batch_weight(y_global)
            share = self.loss.batch_weight(y_local) / w_all if step is not None and w_all else 0.0
        else:
            share = 1.0
        rows = 0 if step is None else step.batch
        loss = self._dist_step(step, share, rows / m, m, self.global_step)
        self.global_step += 1
        self.dropout_step += 1
        return loss

    def train_step(self, X: np.ndarray, y: np.ndarray) -> float:
        """One optimisation step on the batch (X, y); returns its loss (with the L2 term).
        Distributed: (X, y) are this rank's rows; the step is over every rank's rows."""
        X, kind, y = self._check_xy(X, y)
        if self.dist is None:
            step = self._step_for(len(X), kind)
            np.copyto(step.x, X)
            np.copyto(step.target, y)
            return self._train_batch(step)
        counts = self.dist.allgather((len(X), self.loss.batch_weight(y)),
                                     "sharing the batch sizes")
        first = sum(c for c, _ in counts[:self.rank])
        m, w_all = sum(c for c, _ in counts), sum(w for _, w in counts)
        step = self._step_for(len(X), kind, first)
        np.copyto(step.x, X)
        np.copyto(step.target, y)
        share = (self.loss.batch_weight(y) / w_all if w_all else 0.0) \
            if self.loss.reduction == "mean" else 1.0
        loss = self._dist_step(step, share, len(X) / m, m, self.global_step)
        self.global_step += 1
        self.dropout_step += 1
        return loss

    def fit(self, X: np.ndarray, y: np.ndarray, epochs: int = 1,
            validation_data: tuple[np.ndarray, np.ndarray] | None = None, shuffle: bool = True,
            verbose: bool = True, callbacks: Sequence[Callback] | None = None,
            transform: Callable[..., np.ndarray] | None = None) -> History:
        """Train for ``epochs`` more epochs of mini-batches (the partial last batch is used);
        returns this call's History (``trainer.history`` keeps every epoch so far).
        ``callbacks``: ``ember.callbacks.Callback`` instances (EarlyStopping, ModelCheckpoint,
        ReduceLROnPlateau, CSVLogger or your own), run in order; one that sets
        ``trainer.stop_training`` ends training, and the History records when and why.
        ``transform`` (e.g. an ``ember.transforms`` pipeline) replaces each training
        mini-batch by ``transform(batch, rng=self.augment_rng)``, which must keep its shape
        and float32 dtype; validation data is never transformed."""
        if not isinstance(epochs, (int, np.integer)) or epochs < 0:
            raise InputError(f"epochs must be a non-negative integer, got {epochs!r}")
        if transform is not None and not callable(transform):
            raise InputError(f"transform must be callable as transform(batch, rng=...), got "
                             f"{type(transform).__name__}")
        X, kind, Y = self._check_xy(X, y)
        if validation_data is not None:
            if not (isinstance(validation_data, (tuple, list)) and len(validation_data) == 2):
                raise InputError("validation_data must be a pair (X_val, y_val)")
            self._check_xy(*validation_data, what="validation ")
        calls = CallbackList(callbacks, self)
        # distributed: the global batch is world·batch_size rows, in the one order every rank
        # draws from the same seed; rank r trains rows shard(m, world, r) of each
        n, bs = len(X), self.batch_size * self.world
        sizes = [bs] * (n // bs) + ([n % bs] if n % bs else [])
        shards = {m: shard(m, self.world, self.rank) for m in set(sizes)}
        steps = {m: self._step_for(cnt, kind, lo) if cnt else None
                 for m, (lo, cnt) in shards.items()}
        history = History()
        acc_name = "accuracy" if self.loss.accuracy_metric else None
        calls.train_begin()
        for _ in range(int(epochs)):
            calls.epoch_begin(self.epoch)
            order = self.rng.permutation(n) if shuffle else np.arange(n)
            bar = _progress(n, f"Epoch {self.epoch + 1}", verbose and self.rank == 0)
            total_loss = total_weight = 0.0
            correct = counted = 0
            start = 0
            try:
                for batch, m in enumerate(sizes):
                    idx = order[start:start + m]
                    start += m
                    step = steps[m]
                    lo, cnt = shards[m]
                    mine = idx[lo:lo + cnt]
                    if step is not None:
                        np.take(X, mine, axis=0, out=step.x, mode="clip")
                        np.take(Y, mine, axis=0, out=step.target, mode="clip")
                        if transform is not None:
                            self._augment(transform, step.x)
                    yb = Y[idx]      # (the step's target view is reused by later nodes)
                    if self.dist is None:
                        loss = self._train_batch(step)
                    else:
                        loss = self._train_shard(step, Y[mine], yb, m)
                    w = self.loss.batch_weight(yb)
                    total_loss += loss * w if self.loss.reduction == "mean" else loss
                    total_weight += w
                    if acc_name and step is not None:
                        c, k = self.loss.accuracy(step.output, Y[mine])
                        correct, counted = correct + c, counted + k
                    if bar is not None:
                        post = {"loss": f"{_mean(total_loss, total_weight, self.loss):.4f}"}
                        if acc_name and counted:
                            post["accuracy"] = f"{correct / counted:.4f}"
                        bar.set_postfix(post, refresh=False)
                        bar.update(m)
                    if calls.wants_batches and calls.batch_end(
                            self.epoch, batch, _mean(total_loss, total_weight, self.loss)):
                        break
            finally:
                if bar is not None:
                    bar.close()
            logs = {"loss": _mean(total_loss, total_weight, self.loss)}
            if self.dist is not None:
                correct, counted = self._job_sum([correct, counted], "the epoch's accuracy")
                self._resync(f"the state after epoch {self.epoch + 1}")
            if acc_name:
                logs["accuracy"] = correct / counted if counted else float("nan")
            if validation_data is not None:
                val = self.evaluate(*validation_data)
                logs.update({f"val_{k}": v for k, v in val.items()})
            logs["lr"] = float(self.optimizer.lr)
            self.epoch += 1
            history.append(self.epoch - 1, logs)
            self.history.append(self.epoch - 1, logs)
            if self.scheduler is not None:
                self.scheduler.step()
            if verbose and bar is None and self.rank == 0:
                print(f"epoch {self.epoch}: " + ", ".join(f"{k} {v:.4g}" for k, v in
                                                        logs.items()), file=sys.stderr)
            if calls.epoch_end(self.epoch - 1, logs):
                break
        calls.train_end()
        calls.record(history, self.history)
        return history

    def _augment(self, transform, batch: np.ndarray) -> None:
        """Replace ``batch`` (the step's input, in place) by ``transform``'s output."""
        out = transform(batch, rng=self.augment_rng)
        if not (isinstance(out, np.ndarray) and out.shape == batch.shape
                and out.dtype == batch.dtype):
            got = (f"shape {out.shape}, dtype {out.dtype}" if isinstance(out, np.ndarray)
                   else type(out).__name__)
            raise InputError(f"transform must return the batch's shape {batch.shape} and dtype "
                             f"{batch.dtype}, got {got}")
        np.copyto(batch, out)

    def _job_sum(self, values: list, what: str) -> list:
        """Element-wise sums of a few numbers over the ranks (float64)."""
        a = np.asarray(values, np.float64)
        self.dist.allreduce(a, f"summing {what}")
        return [float(v) for v in a]

    def _resync(self, what: str) -> None:
        arrays = list(self._state.values())
        for name in sorted(self.optimizer.state):
            arrays += [a for _, a in sorted(self.optimizer.state[name].items())]
        self._dist_step.resync(arrays, what)

    def gradients(self, X: np.ndarray, y: np.ndarray) -> "OrderedDict[str, np.ndarray]":
        """{parameter name: gradient of the mean loss on (X, y)} (plus the L2 term), computed
        in one batch of len(X) in training mode (batch statistics for BatchNorm); nothing is
        updated. Distributed: this rank's gradients on its (X, y), not averaged over ranks."""
        X, kind, y = self._check_xy(X, y)
        step = self._step_for(len(X), kind)
        np.copyto(step.x, X)
        np.copyto(step.target, y)
        step.run()
        self._runner.add_l2_gradient(step.grads, len(X))
        return OrderedDict((n, g.copy()) for n, g in step.grads.items())

    # ---- inference -------------------------------------------------------------------------------
    def _eval_graph(self, with_loss: str | None) -> Graph:
        g = self._model.copy()
        g.metadata = dict(g.metadata)
        if with_loss is not None:
            out_t = TensorType(np.float32, (BATCH,) + self.output_shape)
            g.inputs.append(TARGET)
            shape = self.loss.target_shape(with_loss, out_t.shape)
            g.types[TARGET] = TensorType(self.loss.target_dtype(with_loss), shape)
            loss = self.loss.add_to_graph(g, g.outputs[0], TARGET, with_loss)
            g.outputs = [loss, g.outputs[0]]
        return g

    def _session(self, with_loss: str | None = None) -> Session:
        if with_loss is None:
            if self._eval_session is None:
                self._eval_session = Session(self._eval_graph(None), threads=self.threads,
                                             external=self._state, memory_cap=self.memory_cap)
            return self._eval_session
        sess = self._loss_sessions.get(with_loss)
        if sess is None:
            sess = self._loss_sessions[with_loss] = Session(
                self._eval_graph(with_loss), threads=self.threads, external=self._state,
                memory_cap=self.memory_cap)
        return sess

    def predict(self, X: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """The model's output on X in eval mode (running statistics, no dropout)."""
        X = self._check_x(X)
        bs = int(batch_size or self.batch_size)
        sess = self._session()
        out = np.empty((len(X),) + self.output_shape, np.float32)
        for start in range(0, len(X), bs):
            (out[start:start + bs],) = sess.run(None, {self.data_input: X[start:start + bs]})
        return out

    def evaluate(self, X: np.ndarray, y: np.ndarray, batch_size: int | None = None) -> dict:
        """{"loss": mean loss (plus the L2 term λ/(2m)·Σ‖W‖², m = len(X)), "accuracy": …}
        in eval mode."""
        X, kind, y = self._check_xy(X, y)
        m = len(X)
        bs = int(batch_size or self.batch_size)
        sess = self._session(kind)
        total_loss = total_weight = 0.0
        correct = counted = 0
        if self.dist is not None:       # each rank evaluates its contiguous share of the rows
            lo, cnt = shard(m, self.world, self.rank)
            X, y = X[lo:lo + cnt], y[lo:lo + cnt]
        for start in range(0, len(X), bs):
            yb = y[start:start + bs]
            loss, out = sess.run(None, {self.data_input: X[start:start + bs], TARGET: yb})
            w = self.loss.batch_weight(yb)
            total_loss += float(loss) * w if self.loss.reduction == "mean" else float(loss)
            total_weight += w
            if self.loss.accuracy_metric:
                c, k = self.loss.accuracy(out, yb)
                correct, counted = correct + c, counted + k
        if self.dist is not None:
            total_loss, total_weight, correct, counted = self._job_sum(
                [total_loss, total_weight, correct, counted], "the evaluation")
        result = {"loss": _mean(total_loss, total_weight, self.loss) + self._runner.l2_loss(m)}
        if self.loss.accuracy_metric:
            result["accuracy"] = correct / counted if counted else float("nan")
        return result

    # ---- checkpoints -----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write a checkpoint atomically (see runtime/checkpoint.py). Distributed: rank 0
        writes (every rank holds the same state), and every rank returns once it is written."""
        augment = [self.augment_rng.bit_generator.state]
        if self.dist is not None:       # every rank's own generator goes in the file
            augment = self.dist.allgather(augment[0], "gathering the augmentation generators")
        if self.rank == 0:
            checkpoint.save(path, checkpoint.trainer_state(self, augment))
        if self.dist is not None:
            self.dist.barrier(f"saving the checkpoint {path!r}")

    @classmethod
    def restore(cls, path: str | os.PathLike, threads: int | None = None,
                memory_cap: int | None = None, loss: str | Loss | Module | type | None = None,
                distributed: str | MPIContext | None = None) -> "Trainer":
        """A Trainer continuing exactly where the saved one stopped (CheckpointError when the
        file is missing, truncated, tampered with or not a checkpoint). A checkpoint trained
        with a custom loss names its class but never imports it: pass ``loss=`` (the class,
        rebuilt from its stored ``config()``, or an instance), else CheckpointError.
        ``distributed="mpi"``: every rank reads ``path`` and goes on in the job."""
        return checkpoint.trainer_from_state(cls, checkpoint.load(path), path, threads,
                                             memory_cap, loss, distributed)

    # ---- pickling ------------------------------------------------------------------------------
    def __reduce__(self):
        """A Trainer pickles as its checkpoint (runtime/checkpoint.py: model, parameters,
        optimizer and scheduler state, step, epoch, generators, history) and goes on exactly
        where it was in the process that unpickles it, with that process's default threads.
        A custom loss travels as its class (pickled by reference, as pickle does). A
        distributed Trainer refuses: every rank must restore together."""
        if self.dist is not None:
            from .graph.errors import TrainingError
            raise TrainingError("a distributed Trainer cannot be pickled: its ranks train "
                                "together; save a checkpoint (trainer.save(path)) and "
                                "Trainer.restore(path, distributed='mpi') on every rank")
        custom = type(self.loss.module) if isinstance(self.loss, losses.ModuleLoss) else None
        return (_unpickle_trainer, (type(self), _checkpoint_bytes(self), custom,
                                    self.memory_cap))

    def __repr__(self):
        return (f"{type(self).__name__}(loss={self.loss!r}, optimizer={self.optimizer!r}, "
                f"batch_size={self.batch_size}, params={len(self.params)}, "
                f"epoch={self.epoch}, step={self.global_step})")


def _check_clip_grad_norm(max_norm):
    """``clip_grad_norm``: None (no clipping) or a positive finite number."""
    if max_norm is None:
        return None
    if isinstance(max_norm, bool) or not isinstance(max_norm, (int, float, np.integer,
                                                               np.floating)) \
            or not math.isfinite(max_norm) or max_norm <= 0:
        raise InputError(f"clip_grad_norm must be None or a positive number (the largest "
                         f"global L2 norm of the gradients), got {max_norm!r}")
    return float(max_norm)


def _checkpoint_bytes(trainer) -> bytes:
    """The bytes of ``trainer.save(path)`` (the checkpoint format: checked on the way back)."""
    import os
    import tempfile
    with tempfile.TemporaryDirectory(prefix="ember-pickle-") as folder:
        path = os.path.join(folder, "trainer.ckpt")
        checkpoint.save(path, checkpoint.trainer_state(trainer))
        with open(path, "rb") as f:
            return f.read()


def _unpickle_trainer(cls, data: bytes, loss, memory_cap):
    import os
    import tempfile

    from .runtime.pickling import worker_threads
    with tempfile.TemporaryDirectory(prefix="ember-pickle-") as folder:
        path = os.path.join(folder, "trainer.ckpt")
        with open(path, "wb") as f:
            f.write(data)
        return checkpoint.trainer_from_state(cls, checkpoint.load(path), path,
                                             worker_threads(), memory_cap, loss)


def _mean(total, weight, loss) -> float:
    if loss.reduction == "sum":
        return total
    return total / weight if weight else float("nan")


def _match(patterns, names, what) -> list:
    """The ``names`` matching any of ``patterns`` (exact names or globs), in ``names``' order;
    ModelError for a pattern matching none."""
    if isinstance(patterns, str):
        patterns = [patterns]
    chosen = set()
    for p in patterns:
        hits = [n for n in names if n == p or fnmatch.fnmatchcase(n, p)]
        if not hits:
            raise ModelError(f"{what} pattern {p!r} matches no parameter (parameters: "
                             f"{names[:8]}{' …' if len(names) > 8 else ''})")
        chosen.update(hits)
    return [n for n in names if n in chosen]


def _progress(total: int, desc: str, verbose: bool):
    """A tqdm bar when verbose and tqdm is installed (an optional dependency), else None."""
    if not verbose:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="sample", leave=True, dynamic_ncols=True)
