"""The compiled training step for one batch size (graph/TRAINING.md §3).

``build_training_graph`` turns a model graph whose parameters and buffers are graph *inputs*
(the Trainer owns their arrays) into forward + loss + backward for a concrete batch size:
``to_training`` → batch size fixed → loss op on the model output and a ``target`` input →
``infer_shapes`` → ``backward`` with respect to the trainable parameters. ``TrainingStep``
compiles it once in a Session with the parameters and buffers bound as external state and keeps
one execution context, so a step is: copy the batch in, run the bound kernels, read the loss,
gradients and new running statistics as arena views (no copies), check the loss, add the L2
gradient, clip the gradients by their global norm, let the optimizer update the parameters in
place, commit the running statistics. Nothing big is allocated per step.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np

from ..graph import passes
from ..graph.errors import ModelError, TrainingError
from ..graph.infer import infer_shapes
from ..graph.ir import Graph, TensorType
from ..kernels.optim import axpy
from .session import Session

TARGET = "target"


def build_training_graph(model: Graph, data: str, state: dict, trainable: list, loss,
                         target_kind: str, batch: int, seed: int = 0, row_offset: int = 0):
    """(training graph, names) for one batch size. ``model`` has its parameters and buffers as
    graph inputs (listed in ``state``: name -> array) and ``data`` as its one fed input.
    ``names`` holds ``loss``, ``output``, ``grads`` (param -> gradient value, trainable order),
    ``updates`` (buffer -> new value) and ``dropout_step`` (the int64 scalar input every
    training-mode Dropout reads its step from, or None when the model has no Dropout).
    ``row_offset``: the batch is rows [row_offset, row_offset + batch) of a larger one (a rank's
    shard); each Dropout whose input leads with the batch dim draws that larger batch's masks
    for those rows, so N ranks drop exactly what one process with the whole batch drops."""
    from ..graph.autodiff import backward, to_training
    g = to_training(model, seed=seed)
    output = g.outputs[0]
    x_type = g.types[data]
    dropout_step = g.metadata.get("dropout_step")
    if dropout_step not in g.inputs:
        dropout_step = None
    g.types = {data: TensorType(x_type.dtype, (batch,) + tuple(x_type.shape[1:]))}
    if dropout_step is not None:
        g.types[dropout_step] = TensorType(np.int64, ())
    for name, a in state.items():
        g.types[name] = TensorType(a.dtype, a.shape)
    for name, a in g.initializers.items():
        g.types[name] = TensorType(a.dtype, a.shape)
    known = infer_shapes(g)
    if row_offset:
        for node in g.nodes:
            t = g.types.get(node.input(0)) if node.op_type == "Dropout" else None
            if t is not None and len(t.shape) >= 1 and t.shape[0] == batch:
                node.attrs["offset"] = int(row_offset) * (t.size // batch)
    out_t = g.types[output]
    g.inputs.append(TARGET)
    g.types[TARGET] = TensorType(loss.target_dtype(target_kind),
                                 loss.target_shape(target_kind, out_t.shape))
    loss_name = loss.add_to_graph(g, output, TARGET, target_kind)
    updates = {b: u for b, u in g.metadata.get("buffer_updates", {}).items() if b in state}
    g.outputs = list(dict.fromkeys([loss_name, output] + list(updates.values())))
    known = infer_shapes(g)
    g = passes.fold_constants(g, known)
    infer_shapes(g, fold=False)
    if g.types[loss_name].size != 1:
        raise ModelError(f"the loss {loss!r} gives shape {g.types[loss_name].shape}, not a "
                         f"scalar; use reduction='mean' or 'sum' to train")
    g, grads = backward(g, loss_name, list(trainable))
    return g, {"loss": loss_name, "output": output, "grads": grads, "updates": updates,
               "dropout_step": dropout_step}


class TrainingStep:
    """Forward + loss + backward compiled for one batch size and target form.

    ``dropout_step`` is the caller's int64 scalar array holding the training step Dropout
    draws its masks for (bound in place as external state, read live by every run; the Trainer
    advances it once per optimisation step and checkpoints it). Without one the step owns a
    private counter that stays at 0 unless advanced through ``self.dropout_step``."""

    def __init__(self, model: Graph, data: str, params: "OrderedDict[str, np.ndarray]",
                 buffers: "OrderedDict[str, np.ndarray]", trainable: list, loss,
                 target_kind: str, batch: int, threads: int, seed: int = 0,
                 memory_cap: int | None = None, dropout_step: np.ndarray | None = None,
                 row_offset: int = 0):
        state = OrderedDict(params)
        state.update(buffers)
        self.batch = batch
        self.graph, names = build_training_graph(model, data, state, trainable, loss,
                                                 target_kind, batch, seed, row_offset)
        bound = {n: a for n, a in state.items() if n in self.graph.inputs}
        self.dropout_step = np.zeros((), np.int64) if dropout_step is None else dropout_step
        if names["dropout_step"] is not None:
            bound[names["dropout_step"]] = self.dropout_step
        self.session = Session(self.graph, threads=threads, external=bound,
                               memory_cap=memory_cap)
        self.compiled = self.session.compile()
        self.ctx = self.compiled.acquire()      # ours for good: one step at a time
        self._check_training_nodes()
        feeds = dict(self.ctx.feeds)
        self.x, self.target = feeds[data], feeds[TARGET]
        out = self.ctx.outputs
        self.loss_view = out[names["loss"]].reshape(())
        self.output = out[names["output"]]
        self.grads = OrderedDict()
        self.grad_values = OrderedDict((p, names["grads"][p]) for p in trainable)
        self._const_grads = []     # (private array, constant) for gradients folded to constants
        for p in trainable:
            view = out[names["grads"][p]]
            if not _in_arena(view, self.ctx.arena):
                private = np.array(view, dtype=np.float32, order="C", copy=True)
                self._const_grads.append((private, view))
                view = private
            self.grads[p] = view
        self.updates = [(buffers[b], out[u]) for b, u in names["updates"].items()]
        self.update_names = list(names["updates"])
        self.steps = [s for _, s in self.ctx.steps]
        self.threads = self.session.threads

    def _check_training_nodes(self):
        """The passes must not have dropped a training node: every gradient and running-stat
        output is still produced (or a constant)."""
        g = self.compiled.graph
        made = {o for n in g.nodes for o in n.outputs if o} | set(g.initializers)
        lost = [o for o in g.outputs if o not in made]
        if lost:
            raise ModelError(f"compiling the training graph lost outputs {lost[:5]}")

    def run(self) -> float:
        """Run forward + backward on the batch already copied into ``x``/``target``."""
        self.ctx.runner.run()
        for private, const in self._const_grads:
            np.copyto(private, const)
        return float(self.loss_view)


def _in_arena(a: np.ndarray, arena: np.ndarray) -> bool:
    root = a
    while isinstance(root.base, np.ndarray):
        root = root.base
    arena_root = arena
    while isinstance(arena_root.base, np.ndarray):
        arena_root = arena_root.base
    return root is arena_root


class StepRunner:
    """Applies one optimisation step: loss check, L2, gradient clipping, optimizer,
    running-stat commit."""

    def __init__(self, optimizer, l2: float, weights: list, params: dict, threads: int,
                 clip_grad_norm: float | None = None):
        self.optimizer, self.l2, self.threads = optimizer, float(l2), threads
        self.weights = [(n, params[n].reshape(-1)) for n in weights]
        self.clip_grad_norm = None if clip_grad_norm is None else float(clip_grad_norm)

    def l2_loss(self, m: int) -> float:
        if not self.l2:
            return 0.0
        total = 0.0
        for _, w in self.weights:
            total += float(np.dot(w, w))
        return self.l2 / (2.0 * m) * total

    def add_l2_gradient(self, grads: dict, m: int) -> None:
        """grads[W] += λ/m·W for every weight (the courses' L2 term, m the batch size)."""
        if not self.l2:
            return
        alpha = self.l2 / m
        for name, w in self.weights:
            axpy(grads[name].reshape(-1), w, alpha, self.threads)

    def clip_gradients(self, grads: dict, global_step: int) -> None:
        """torch's ``clip_grad_norm_(max_norm)``: the L2 norm of all the gradients together;
        when it exceeds ``max_norm`` every gradient is scaled in place by
        max_norm / (norm + 1e-6). A non-finite norm stops training before anything changes."""
        if self.clip_grad_norm is None:
            return
        total = 0.0
        for g in grads.values():
            flat = g.reshape(-1)
            total += float(np.dot(flat, flat))
        norm = math.sqrt(total)
        if not math.isfinite(norm):
            raise TrainingError(f"the gradient norm is {norm} at step {global_step}; training "
                                f"stopped and the parameters, optimizer state and running "
                                f"statistics are left as they were before this step")
        scale = self.clip_grad_norm / (norm + 1e-6)
        if scale < 1.0:
            factor = np.float32(scale)
            for g in grads.values():
                np.multiply(g, factor, out=g)

    def apply(self, grads: dict, updates, loss: float, m: int, global_step: int) -> float:
        """Everything after forward + backward (and, distributed, after the gradient
        allreduce): the loss check (the L2 term included), the L2 gradient, gradient clipping,
        the optimizer step and the running-statistics commit. ``updates`` pairs each buffer with
        its new value."""
        loss = loss + self.l2_loss(m)
        if not math.isfinite(loss):
            raise TrainingError(f"the loss is {loss} at step {global_step} (batch of {m}); "
                                f"training stopped and the parameters, optimizer state and "
                                f"running statistics are left as they were before this step "
                                f"(lower the learning rate, check the inputs and targets)")
        self.add_l2_gradient(grads, m)
        self.clip_gradients(grads, global_step)
        self.optimizer.step(grads)
        for buf, new in updates:
            np.copyto(buf, new)
        return loss

    def __call__(self, step: TrainingStep, global_step: int) -> float:
        return self.apply(step.grads, step.updates, step.run(), step.batch, global_step)
