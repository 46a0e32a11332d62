"""Loss specifications: what a Trainer appends to a model graph to train it.

A loss spec knows which loss op to add (``graph/ops/loss.py``) on the model output and a
``target`` input, what targets it accepts (checked before training, so a bad label is an
``InputError`` naming the problem, not a NaN twenty steps later), how per-batch losses combine
into an epoch's, and what "accuracy" means for it. The classes mirror ``torch.nn``'s loss
modules and are re-exported by ``ember.nn``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..graph.errors import InputError, ModelError
from ..graph.ir import Graph, Node, TensorType
from ..graph.ops import TRAINING_DOMAIN

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

REDUCTIONS = ("mean", "sum", "none")


class Loss:
    """Base of the loss specs. ``reduction`` as in torch ("mean", "sum", "none"; a Trainer
    needs a scalar, so "none" can describe but not train)."""

    op_type = ""
    accuracy_metric = False

    def __init__(self, reduction: str = "mean") -> None:
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.reduction = reduction

    # description (checkpoints) -----------------------------------------------------------------
    def config(self) -> dict:
        return {"type": type(self).__name__, "reduction": self.reduction}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "type")
        return f"{type(self).__name__}({args})"

    # targets -------------------------------------------------------------------------------------
    def target_kind(self, y: np.ndarray, output_shape: tuple) -> str:
        """A short tag for the target form (part of a compiled step's cache key)."""
        return "float"

    def target_dtype(self, kind: str) -> np.dtype:
        return np.dtype(np.float32)

    def target_shape(self, kind: str, output_shape: tuple) -> tuple:
        """Target shape for a batch whose model output has ``output_shape``."""
        return tuple(output_shape)

    def prepare_target(self, y: np.ndarray, output_shape: tuple, n: int) -> tuple:
        """(kind, y as a C-contiguous array of the target dtype and shape) for ``n`` samples
        whose per-sample output shape is ``output_shape[1:]``; InputError when it does not fit."""
        y = _as_array(y, "y")
        if y.dtype.kind not in "f":
            raise InputError(f"{type(self).__name__} needs float targets, got dtype "
                             f"{y.dtype.name} (convert with y.astype(np.float32))")
        want = (n,) + tuple(output_shape[1:])
        if y.shape != want:
            if y.size == int(np.prod(want)) and y.ndim >= 1 and y.shape[0] == n:
                y = y.reshape(want)   # e.g. (N,) targets for an (N, 1) output
            else:
                raise InputError(f"{type(self).__name__}: targets of shape {y.shape} do not fit "
                                 f"the model's output of shape {want}")
        if not np.isfinite(y).all():
            raise InputError(f"{type(self).__name__}: targets contain NaN or infinity")
        return "float", np.ascontiguousarray(y, dtype=np.float32)

    # the graph -----------------------------------------------------------------------------------
    def add_to_graph(self, graph: Graph, output: str, target: str, kind: str) -> str:
        """Append the loss node(s) reading ``output`` and ``target``; return the loss value."""
        loss = _fresh(graph, "loss")
        _add_loss_node(graph, self.op_type, [output, target], [loss],
                       _fresh_node(graph, "loss"), self._attrs())
        return loss

    def _attrs(self) -> dict:
        return {"reduction": self.reduction}

    # metrics -------------------------------------------------------------------------------------
    def batch_weight(self, y: np.ndarray) -> float:
        """How much a batch's loss counts in an epoch's: its share of the mean's denominator
        ("mean"), or 1 ("sum": batch sums add up)."""
        return 1.0 if self.reduction == "sum" else float(y.shape[0])

    def accuracy(self, output: np.ndarray, y: np.ndarray) -> tuple[int, int] | None:
        """(correct, counted) for this batch, or None when accuracy means nothing here."""
        return None


def _as_array(a, what):
    if isinstance(a, np.ndarray):
        return a
    try:
        return np.asarray(a)
    except Exception as e:
        raise InputError(f"{what}: cannot convert {type(a).__name__} to an array: {e}") from None


def _add_loss_node(graph: Graph, op_type: str, inputs, outputs, name: str, attrs: dict):
    """A loss node of ember's training domain: a Trainer's loss is never part of a model file."""
    graph.nodes.append(Node(op_type, list(inputs), list(outputs), dict(attrs), name,
                            TRAINING_DOMAIN))


def _fresh(graph: Graph, base: str) -> str:
    return graph.unique_name(base)


def _fresh_node(graph: Graph, base: str) -> str:
    names = {n.name for n in graph.nodes}
    name, k = base, 0
    while name in names:
        k += 1
        name = f"{base}_{k}"
    return name


class CrossEntropyLoss(Loss):
    """Softmax cross-entropy on raw scores [N, C(, d…)] (log-sum-exp, stable). Targets are
    integer class labels [N(, d…)] in [0, C) (or ``ignore_index``), or float class
    probabilities of the scores' shape — as torch decides, by the target's dtype and shape."""

    op_type = "SoftmaxCrossEntropyLoss"
    accuracy_metric = True

    def __init__(self, weight: ArrayLike | None = None, ignore_index: int = -100,
                 reduction: str = "mean", label_smoothing: float = 0.0) -> None:
        super().__init__(reduction)
        if label_smoothing:
            raise ModelError("CrossEntropyLoss(label_smoothing=...) is not supported")
        self.weight = None if weight is None else np.array(weight, dtype=np.float32).reshape(-1)
        self.ignore_index = int(ignore_index)

    def config(self) -> dict:
        return {"type": "CrossEntropyLoss", "reduction": self.reduction,
                "ignore_index": self.ignore_index,
                "weight": None if self.weight is None else [float(w) for w in self.weight]}

    def target_kind(self, y: np.ndarray, output_shape: tuple) -> str:
        return "probs" if np.asarray(y).dtype.kind == "f" else "labels"

    def target_dtype(self, kind: str) -> np.dtype:
        return np.dtype(np.float32 if kind == "probs" else np.int64)

    def target_shape(self, kind: str, output_shape: tuple) -> tuple:
        if kind == "probs":
            return tuple(output_shape)
        return (output_shape[0],) + tuple(output_shape[2:])

    def prepare_target(self, y: np.ndarray, output_shape: tuple, n: int) -> tuple:
        y = _as_array(y, "y")
        if len(output_shape) < 2:
            raise ModelError(f"CrossEntropyLoss needs scores of shape (N, C, …), the model "
                             f"outputs {tuple(output_shape)}")
        c = int(output_shape[1])
        if y.dtype.kind == "f" and y.ndim == len(output_shape):
            want = (n,) + tuple(output_shape[1:])
            if y.shape != want:
                raise InputError(f"CrossEntropyLoss: probability targets of shape {y.shape} do "
                                 f"not fit scores of shape {want}")
            if not np.isfinite(y).all() or (y < 0).any():
                raise InputError("CrossEntropyLoss: probability targets must be finite and "
                                 "non-negative")
            if self.weight is not None or len(output_shape) != 2:
                raise ModelError("CrossEntropyLoss with probability targets supports scores of "
                                 "shape (N, C) without class weights")
            return "probs", np.ascontiguousarray(y, dtype=np.float32)
        if y.dtype.kind not in "iu":
            raise InputError(f"CrossEntropyLoss needs integer class labels (or float class "
                             f"probabilities of shape (N, {c})), got dtype {y.dtype.name} and "
                             f"shape {y.shape}; convert labels with y.astype(np.int64)")
        want = (n,) + tuple(output_shape[2:])
        if y.shape != want:
            raise InputError(f"CrossEntropyLoss: labels of shape {y.shape} do not fit scores of "
                             f"shape {(n,) + tuple(output_shape[1:])}; expected labels of shape "
                             f"{want}")
        bad = ((y < 0) | (y >= c)) & (y != self.ignore_index)
        if bad.any():
            first = int(np.flatnonzero(bad.reshape(-1))[0])
            raise InputError(f"CrossEntropyLoss: label {int(y.reshape(-1)[first])} at index "
                             f"{first} is outside [0, {c}) (the model has {c} classes)")
        if self.weight is not None and self.weight.shape != (c,):
            raise ModelError(f"CrossEntropyLoss weight has {self.weight.shape[0]} entries, the "
                             f"model has {c} classes")
        return "labels", np.ascontiguousarray(y, dtype=np.int64)

    def add_to_graph(self, graph: Graph, output: str, target: str, kind: str) -> str:
        loss, log_prob = _fresh(graph, "loss"), _fresh(graph, "loss/log_prob")
        name = _fresh_node(graph, "loss")
        if kind == "probs":
            _add_loss_node(graph, "SoftmaxCrossEntropyProb", [output, target], [loss, log_prob],
                           name, {"reduction": self.reduction})
            return loss
        ins = [output, target]
        if self.weight is not None:
            w = _fresh(graph, "loss/weight")
            graph.initializers[w] = self.weight.copy()
            graph.types[w] = TensorType(np.float32, self.weight.shape)
            ins.append(w)
        _add_loss_node(graph, self.op_type, ins, [loss, log_prob], name,
                       {"reduction": self.reduction, "ignore_index": self.ignore_index})
        return loss

    def batch_weight(self, y: np.ndarray) -> float:
        if self.reduction == "sum":
            return 1.0
        if y.dtype.kind == "f":
            return float(y.shape[0])
        keep = y != self.ignore_index
        if self.weight is None:
            return float(keep.sum())
        return float(self.weight[np.where(keep, y, 0)][keep].sum())

    def accuracy(self, output: np.ndarray, y: np.ndarray) -> tuple[int, int] | None:
        pred = output.argmax(axis=1)
        if y.dtype.kind == "f":
            return int((pred == y.argmax(axis=1)).sum()), int(pred.size)
        keep = y != self.ignore_index
        return int(((pred == y) & keep).sum()), int(keep.sum())


class BCEWithLogitsLoss(Loss):
    """Binary cross-entropy on logits, stable: max(x,0) − x·t + log(1+e^−|x|). Targets are
    floats in [0, 1] of the output's shape; accuracy counts (x > 0) == (t > 0.5)."""

    op_type = "BCEWithLogitsLoss"
    accuracy_metric = True

    def __init__(self, weight: ArrayLike | None = None, reduction: str = "mean",
                 pos_weight: ArrayLike | None = None) -> None:
        super().__init__(reduction)
        if weight is not None or pos_weight is not None:
            raise ModelError("BCEWithLogitsLoss(weight=..., pos_weight=...) is not supported")

    def accuracy(self, output: np.ndarray, y: np.ndarray) -> tuple[int, int] | None:
        return int(((output > 0) == (y > 0.5)).sum()), int(y.size)


class MSELoss(Loss):
    """Mean squared error (torch's mean over every element)."""
    op_type = "MSELoss"


class L1Loss(Loss):
    """Mean absolute error."""
    op_type = "L1Loss"


class HuberLoss(Loss):
    """torch's Huber loss: ½d² where |d| ≤ delta, else delta·(|d| − ½delta)."""

    op_type = "HuberLoss"

    def __init__(self, reduction: str = "mean", delta: float = 1.0) -> None:
        super().__init__(reduction)
        if not delta > 0:
            raise ValueError(f"HuberLoss delta must be positive, got {delta}")
        self.delta = float(delta)

    def config(self) -> dict:
        return {"type": "HuberLoss", "reduction": self.reduction, "delta": self.delta}

    def _attrs(self):
        return {"reduction": self.reduction, "delta": self.delta}


class ModuleLoss(Loss):
    """A user's loss written as an ``ember.nn.Module`` whose ``forward(pred, target)`` returns
    a scalar graph value. It is traced once per graph (``Module.trace_graph``) and spliced onto
    the model's output, so autodiff differentiates it like any layer. The target is a float32
    input shaped like the model's output unless the module declares ``target_shape`` (one
    sample's shape, no batch dim) and/or ``target_dtype``. An ``accuracy(output, y) -> (correct,
    counted)`` method, if present, is reported as the accuracy metric; ``reduction = "sum"``
    makes epoch losses add batch losses instead of averaging them."""

    CUSTOM = "custom"

    def __init__(self, module: Any) -> None:
        reduction = getattr(module, "reduction", "mean")
        super().__init__(reduction if reduction in ("mean", "sum") else "mean")
        if list(module.parameters()) or list(module.buffers()):
            raise ModelError(f"{type(module).__name__}: a custom loss cannot hold Parameters or "
                             f"Buffers (they would not be trained); use numpy constants in "
                             f"forward()")
        self.module = module
        self.accuracy_metric = callable(getattr(module, "accuracy", None))
        shape = getattr(module, "target_shape", None)
        self._sample_shape = None if shape is None else tuple(int(d) for d in shape)
        self._dtype = np.dtype(getattr(module, "target_dtype", None) or np.float32)

    @property
    def import_path(self) -> str:
        return class_path(type(self.module))

    def config(self) -> dict:
        get = getattr(self.module, "config", None)
        return {"type": self.CUSTOM, "class": self.import_path,
                "config": get() if callable(get) else None}

    def __repr__(self):
        return f"{type(self.module).__name__}()"

    # targets -------------------------------------------------------------------------------------
    def target_kind(self, y: np.ndarray, output_shape: tuple) -> str:
        return "custom"

    def target_dtype(self, kind: str) -> np.dtype:
        return self._dtype

    def target_shape(self, kind: str, output_shape: tuple) -> tuple:
        if self._sample_shape is None:
            return tuple(output_shape)
        return (output_shape[0],) + self._sample_shape

    def prepare_target(self, y: np.ndarray, output_shape: tuple, n: int) -> tuple:
        y = _as_array(y, "y")
        name = type(self.module).__name__
        if (self._dtype.kind == "f") != (y.dtype.kind == "f") or y.dtype.kind not in "fiub":
            raise InputError(f"{name} needs targets of dtype {self._dtype.name}, got "
                             f"{y.dtype.name}")
        want = self.target_shape("custom", (n,) + tuple(output_shape[1:]))
        if y.shape != want:
            if y.size == int(np.prod(want)) and y.ndim >= 1 and y.shape[0] == n:
                y = y.reshape(want)
            else:
                raise InputError(f"{name}: targets of shape {y.shape} do not fit; expected "
                                 f"{want}")
        if y.dtype.kind == "f" and not np.isfinite(y).all():
            raise InputError(f"{name}: targets contain NaN or infinity")
        return "custom", np.ascontiguousarray(y, dtype=self._dtype)

    # the graph -----------------------------------------------------------------------------------
    def add_to_graph(self, graph: Graph, output: str, target: str, kind: str) -> str:
        t = graph.types[target]
        if output not in graph.types:
            from ..graph.infer import infer_shapes
            infer_shapes(graph, fold=False)
        pred_shape = (t.shape[0],) + tuple(graph.types[output].shape[1:])
        sub = self.module.trace_graph([("pred", pred_shape, graph.types[output].dtype),
                                       ("target", t.shape, t.dtype)],
                                      name=type(self.module).__name__)
        if len(sub.outputs) != 1:
            raise ModelError(f"{type(self.module).__name__}.forward must return one scalar, "
                             f"got {len(sub.outputs)} values")
        return splice(graph, sub, {"pred": output, "target": target}, "loss")

    def accuracy(self, output: np.ndarray, y: np.ndarray) -> tuple[int, int] | None:
        return self.module.accuracy(output, y)


def class_path(cls) -> str:
    """``module:qualname`` of a class: how a checkpoint names a custom loss."""
    return f"{cls.__module__}:{cls.__qualname__}"


def splice(graph: Graph, sub: Graph, feeds: dict, prefix: str) -> str:
    """Append ``sub``'s nodes and constants to ``graph``, its inputs wired to the values in
    ``feeds`` (sub input -> graph value) and every other name prefixed and made unique; the
    graph name of ``sub``'s first output."""
    import copy
    rename = dict(feeds)
    for name in list(sub.initializers) + [o for n in sub.nodes for o in n.outputs if o]:
        if name not in rename:
            rename[name] = graph.unique_name(f"{prefix}/{name}")
            graph.types[rename[name]] = None      # reserve it for the next unique_name
    for name, a in sub.initializers.items():
        graph.initializers[rename[name]] = a
    for name, new in rename.items():
        if name not in feeds:
            t = sub.types.get(name)
            if t is not None:
                graph.types[new] = t
            else:
                del graph.types[new]
    for node in sub.nodes:
        n = copy.copy(node)
        n.inputs = [rename.get(i, i) if i else i for i in node.inputs]
        n.outputs = [rename.get(o, o) if o else o for o in node.outputs]
        n.attrs = dict(node.attrs)
        n.name = _fresh_node(graph, f"{prefix}/{node.name}")
        graph.nodes.append(n)
    return rename[sub.outputs[0]]


LOSSES = {"CrossEntropyLoss": CrossEntropyLoss, "BCEWithLogitsLoss": BCEWithLogitsLoss,
          "MSELoss": MSELoss, "L1Loss": L1Loss, "HuberLoss": HuberLoss}
ALIASES = {"cross_entropy": CrossEntropyLoss, "crossentropy": CrossEntropyLoss,
           "bce_with_logits": BCEWithLogitsLoss, "mse": MSELoss, "l1": L1Loss,
           "huber": HuberLoss}


def _is_module(obj) -> bool:
    """An ``ember.nn.Module`` (duck-typed: runtime does not import ember)."""
    return callable(getattr(obj, "trace_graph", None)) and callable(getattr(obj, "forward", None))


def resolve(loss) -> Loss:
    """A Loss from a Loss instance, a class, a name ("cross_entropy", "mse", …) or an
    ``ember.nn.Module`` whose ``forward(pred, target)`` returns a scalar (a custom loss)."""
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, type) and issubclass(loss, Loss):
        return loss()
    if isinstance(loss, type) and _is_module(loss):
        loss = loss()
    if _is_module(loss):
        return ModuleLoss(loss)
    if isinstance(loss, str):
        cls = ALIASES.get(loss.lower()) or LOSSES.get(loss)
        if cls is None:
            raise ModelError(f"unknown loss {loss!r}; expected one of {sorted(ALIASES)} or an "
                             f"ember.nn loss")
        return cls()
    raise ModelError(f"loss must be an ember.nn loss, a name or an ember.nn.Module with "
                     f"forward(pred, target), got {type(loss).__name__}")


def from_config(cfg: dict, given=None) -> Loss:
    """Rebuild a loss spec from ``Loss.config()`` (checkpoints). A custom loss is never
    imported from the name stored: the caller passes it as ``given`` (the Module class, rebuilt
    with the stored ``config()`` arguments, or an instance whose class and ``config()`` agree
    with the stored ones); ModelError when it is missing or does not match. ``given`` with a
    built-in loss replaces the stored one."""
    if isinstance(cfg, dict) and cfg.get("type") == ModuleLoss.CUSTOM:
        return _custom_from_config(cfg, given)
    if given is not None:
        return resolve(given)
    if not isinstance(cfg, dict) or cfg.get("type") not in LOSSES:
        raise ModelError(f"unknown loss configuration {cfg!r:.80}")
    kwargs = {k: v for k, v in cfg.items() if k != "type"}
    try:
        return LOSSES[cfg["type"]](**kwargs)
    except TypeError as e:
        raise ModelError(f"bad loss configuration {cfg!r:.80}: {e}") from None


def _custom_from_config(cfg: dict, given) -> Loss:
    stored, args = str(cfg.get("class")), cfg.get("config")
    if given is None:
        raise ModelError(f"it was trained with the custom loss {stored}; ember never imports "
                         f"code named in a file, so pass that loss: Trainer.restore(path, "
                         f"loss={stored.rsplit(':', 1)[-1].rsplit('.', 1)[-1]}) (the class, "
                         f"rebuilt with the stored config()) or an instance")
    cls = given if isinstance(given, type) else type(given)
    if not _is_module(cls) or isinstance(given, Loss):
        raise ModelError(f"it was trained with the custom loss {stored}; loss= must be that "
                         f"ember.nn.Module, got {cls.__name__}")
    name = class_path(cls)
    if name.rsplit(":", 1)[-1] != stored.rsplit(":", 1)[-1]:
        raise ModelError(f"it was trained with the custom loss {stored}, not {name}")
    if isinstance(given, type):
        try:
            given = given(**args) if isinstance(args, dict) else given()
        except TypeError as e:
            raise ModelError(f"cannot rebuild {stored} from its stored config {args!r:.80}: "
                             f"{e}") from None
    spec = ModuleLoss(given)
    got = spec.config()["config"]
    if args is not None and _plain(got) != _plain(args):
        raise ModelError(f"the custom loss {stored} was saved with config {args!r:.80}, the "
                         f"one passed has {got!r:.80}")
    return spec


def _plain(value):
    """``value`` as JSON would give it back (tuples → lists), for comparing configs."""
    import json
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError):
        return value
