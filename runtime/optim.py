"""Optimizers: torch.optim's names, arguments, defaults and update formulas, applied by the fused
update kernels of ``ember.kernels.optim`` to parameter buffers in place.

An optimizer is built before it knows its parameters (the Trainer binds them)::

    opt = Adam(lr=1e-3)                      # or Adam(["fc.*"], lr=1e-3): train only those
    opt.bind(params, threads)                # OrderedDict name -> float32 C-contiguous array
    opt.step(grads)                          # {name: gradient}; updates params in place

``params`` (first, optional, as in torch) selects which bound parameters this optimizer trains:
names or glob patterns (``"fc.*"``), or ``model.named_parameters()``; omitted, it trains every
parameter it is bound to. Parameter groups (torch's list of dicts) are not supported: one
optimizer has one set of hyper-parameters, kept in ``param_groups[0]`` as torch keeps them, so
``opt.param_groups[0]["lr"]`` and ``opt.lr`` are the same number (schedulers set it).

Bad hyper-parameters raise ``InputError`` — an ``EmberError`` that is also a ``ValueError`` —
with torch's message (``Invalid learning rate: -0.1``).
"""
from __future__ import annotations

import fnmatch
import math
import numbers
from collections.abc import Mapping, Sequence

import numpy as np

from ..graph.errors import EmberError, InputError, ShapeError
from ..kernels import optim as _kernels

__all__ = ["Optimizer", "SGD", "RMSprop", "Adam", "AdamW", "from_state_dict"]


def _real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def _check(ok: bool, message: str):
    if not ok:
        raise InputError(message)


def _param_spec(owner: str, params):
    """``params`` as given → a list of names/patterns, or None for 'every bound parameter'."""
    if params is None:
        return None
    if isinstance(params, numbers.Number):
        raise InputError(f"{owner}'s first argument is params (parameter names or patterns), as "
                         f"in torch.optim; pass the learning rate by keyword: "
                         f"{owner}(lr={params!r})")
    if isinstance(params, str):
        return [params]
    if isinstance(params, Mapping):
        raise InputError(f"{owner}: params must be names or glob patterns, not a mapping; "
                         f"parameter groups are not supported (one group per optimizer)")
    spec = []
    for item in params:
        if isinstance(item, str):
            spec.append(item)
        elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
            spec.append(item[0])                       # model.named_parameters()
        elif isinstance(item, Mapping):
            raise InputError(f"{owner}: parameter groups (dicts) are not supported; make one "
                             f"optimizer per group")
        else:
            raise InputError(f"{owner}: params must be parameter names or glob patterns (or "
                             f"model.named_parameters()), got {type(item).__name__}; omit params "
                             f"to train every parameter the Trainer binds")
    if not spec:
        raise InputError("optimizer got an empty parameter list")
    return spec


class _Slot:
    """One trained parameter: its flat view and its flat state views, fixed at bind."""
    __slots__ = ("name", "shape", "param", "flat", "state")

    def __init__(self, name: str, param: np.ndarray):
        self.name, self.shape, self.param = name, param.shape, param
        self.flat = param.reshape(-1)
        self.state = {}          # buffer name -> flat view of the state array


class Optimizer:
    """Base class: parameter selection, binding, state, checkpoints. Subclasses give
    ``_validate(group)``, ``_buffers(group)`` (state names this configuration needs) and
    ``_update(slot, grad_flat, group)`` (one kernel call)."""

    def __init__(self, params: str | Sequence[str] | None, defaults: dict) -> None:
        name = type(self).__name__
        self.params_spec = _param_spec(name, params)
        self._validate(defaults)
        self.param_groups = [dict(defaults)]
        self.steps = 0
        self.threads = 1
        self.state: dict[str, dict[str, np.ndarray]] = {}   # param name -> buffer name -> array
        self._slots: list[_Slot] = []
        self._grad_views: list = []
        self._pending: dict | None = None
        self._fresh: set = set()   # (param, buffer) allocated but not yet used by a step

    # hyper-parameters --------------------------------------------------------------------------
    @property
    def defaults(self) -> dict:
        return {k: v for k, v in self.param_groups[0].items() if k != "initial_lr"}

    @property
    def lr(self) -> float:
        return self.param_groups[0]["lr"]

    @lr.setter
    def lr(self, value: float) -> None:
        _check(_real(value) and value >= 0.0, f"Invalid learning rate: {value}")
        self.param_groups[0]["lr"] = float(value)

    def _validate(self, group: dict):
        lr = group["lr"]
        _check(_real(lr) and lr >= 0.0, f"Invalid learning rate: {lr}")
        for key in ("momentum", "weight_decay", "eps", "alpha"):
            if key in group:
                v = group[key]
                label = {"eps": "epsilon value"}.get(key, f"{key} value")
                _check(_real(v) and v >= 0.0, f"Invalid {label}: {v}")

    # binding -----------------------------------------------------------------------------------
    @property
    def param_names(self) -> list[str]:
        """Names of the parameters this optimizer trains (after ``bind``)."""
        return [s.name for s in self._slots]

    def _select(self, names: list[str]) -> list[str]:
        if self.params_spec is None:
            return list(names)
        chosen = set()
        for pattern in self.params_spec:
            hits = [n for n in names if n == pattern or fnmatch.fnmatchcase(n, pattern)]
            if not hits:
                shown = ", ".join(names[:8]) + (" …" if len(names) > 8 else "")
                raise InputError(f"{type(self).__name__}: params pattern {pattern!r} matches no "
                                 f"bound parameter (bound: {shown or 'none'})")
            chosen.update(hits)
        return [n for n in names if n in chosen]

    def bind(self, params: Mapping, threads: int = 1) -> "Optimizer":
        """Attach to the parameter buffers (updated in place by ``step``) and allocate state.

        State already held for a parameter of the same name and shape (an earlier bind, or a
        ``load_state_dict`` done before binding) is kept."""
        if not isinstance(threads, (int, np.integer)) or isinstance(threads, bool) or threads < 1:
            raise EmberError(f"threads must be a positive integer, got {threads!r}")
        if not isinstance(params, Mapping):
            raise InputError(f"bind expects a mapping name -> array, got {type(params).__name__}")
        names = self._select(list(params))
        if not names:
            raise InputError(f"{type(self).__name__}: no parameters to train")
        slots = []
        for name in names:
            p = params[name]
            if not isinstance(p, np.ndarray) or p.dtype != np.float32:
                raise InputError(f"parameter {name!r} must be a float32 numpy array, got "
                                 f"{getattr(p, 'dtype', type(p).__name__)}")
            if not p.flags.c_contiguous or not p.flags.writeable:
                raise InputError(f"parameter {name!r} must be C-contiguous and writeable "
                                 f"(it is updated in place)")
            slots.append(_Slot(name, p))
        self.threads = int(threads)
        old = self.state
        self.state = {}
        self._slots = slots
        self._grad_views = [None] * len(slots)
        for slot in slots:
            kept = old.get(slot.name, {})
            self.state[slot.name] = {k: a for k, a in kept.items() if a.shape == slot.shape}
        self._ensure_state(self.param_groups[0])
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self._load_state_arrays(pending)
        return self

    def _ensure_state(self, group: dict):
        """Allocate (zeros) every state buffer the current hyper-parameters need."""
        needed = self._buffers(group)
        for slot in self._slots:
            arrays = self.state[slot.name]
            for buf in needed:
                if buf not in arrays:
                    arrays[buf] = np.zeros(slot.shape, np.float32)
                    self._fresh.add((slot.name, buf))
                if buf not in slot.state:
                    slot.state[buf] = arrays[buf].reshape(-1)

    # the update --------------------------------------------------------------------------------
    def step(self, grads: Mapping) -> None:
        """Update every trained parameter in place from ``grads[name]`` (float32, the
        parameter's shape). All gradients are checked before any parameter changes."""
        if not self._slots:
            raise EmberError(f"{type(self).__name__}.step before bind(): the optimizer has no "
                             f"parameters yet")
        group = self.param_groups[0]
        self._validate(group)
        views = self._grad_views
        for i, slot in enumerate(self._slots):
            g = grads.get(slot.name) if isinstance(grads, Mapping) else None
            if g is None:
                raise InputError(f"no gradient for parameter {slot.name!r}")
            if not isinstance(g, np.ndarray) or g.dtype != np.float32:
                raise InputError(f"gradient of {slot.name!r} must be a float32 numpy array, got "
                                 f"{getattr(g, 'dtype', type(g).__name__)}")
            if g.shape != slot.shape:
                raise ShapeError(f"gradient of {slot.name!r} has shape {g.shape}, expected "
                                 f"{slot.shape}")
            if not g.flags.c_contiguous:
                raise InputError(f"gradient of {slot.name!r} must be C-contiguous")
            views[i] = g.reshape(-1)
        self._ensure_state(group)
        for i, slot in enumerate(self._slots):
            self._update(slot, views[i], group)
            views[i] = None
        if self._fresh:
            self._fresh.clear()
        self.steps += 1

    # checkpoints -------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Plain data and numpy arrays (copies): class, hyper-parameters, params selection,
        steps, initial_lr (set by a scheduler) and per-parameter state by parameter name."""
        group = self.param_groups[0]
        hyper = {k: (list(v) if isinstance(v, tuple) else v)
                 for k, v in group.items() if k != "initial_lr"}
        state = {}
        if self._slots:
            for slot in self._slots:
                arrays = {k: a.copy() for k, a in self.state[slot.name].items()
                          if (slot.name, k) not in self._fresh}
                if arrays:
                    state[slot.name] = arrays
        elif self._pending is not None:
            state = {n: {k: a.copy() for k, a in bufs.items()}
                     for n, bufs in self._pending["state"].items()}
        return {"class": type(self).__name__, "hyper": hyper,
                "params": None if self.params_spec is None else list(self.params_spec),
                "steps": int(self.steps), "initial_lr": group.get("initial_lr"),
                "state": state}

    def load_state_dict(self, d: Mapping) -> None:
        """Restore hyper-parameters, steps and state from ``state_dict()`` output. Before
        ``bind`` the arrays are kept and applied when parameters are bound."""
        if not isinstance(d, Mapping) or "class" not in d:
            raise EmberError("not an optimizer state dict (no 'class' entry)")
        if d["class"] != type(self).__name__:
            raise EmberError(f"optimizer state is for {d['class']}, this optimizer is "
                             f"{type(self).__name__}")
        hyper = dict(d.get("hyper", {}))
        if "betas" in hyper:
            hyper["betas"] = tuple(hyper["betas"])
        group = dict(self.param_groups[0])
        unknown = set(hyper) - set(group)
        if unknown:
            raise EmberError(f"{type(self).__name__} state has unknown hyper-parameters "
                             f"{sorted(unknown)}")
        group.update(hyper)
        self._validate(group)
        steps = d.get("steps", 0)
        if not isinstance(steps, (int, np.integer)) or steps < 0:
            raise EmberError(f"optimizer state has a bad step count {steps!r}")
        state = d.get("state", {})
        for name, bufs in state.items():
            for k, a in bufs.items():
                if not isinstance(a, np.ndarray):
                    raise EmberError(f"optimizer state {name}.{k} is not an array")
        if d.get("initial_lr") is not None:
            group["initial_lr"] = float(d["initial_lr"])
        pending = {"state": {n: {k: np.array(a, np.float32) for k, a in b.items()}
                             for n, b in state.items()}}
        if self._slots:
            self._check_state_arrays(pending)
        self.param_groups[0] = group
        self.steps = int(steps)
        if self._slots:
            self._ensure_state(group)
            self._load_state_arrays(pending)
        else:
            self._pending = pending

    def _check_state_arrays(self, pending: dict):
        shapes = {s.name: s.shape for s in self._slots}
        for name, bufs in pending["state"].items():
            if name not in shapes:
                raise EmberError(f"optimizer state has parameter {name!r}, which this "
                                 f"optimizer does not train (trains: {list(shapes)})")
            for k, a in bufs.items():
                if a.shape != shapes[name]:
                    raise ShapeError(f"optimizer state {name}.{k} has shape {a.shape}, the "
                                     f"parameter has {shapes[name]}")

    def _load_state_arrays(self, pending: dict):
        self._check_state_arrays(pending)
        by_name = {s.name: s for s in self._slots}
        for name, bufs in pending["state"].items():
            slot = by_name[name]
            for k, a in bufs.items():
                if k not in self.state[name]:
                    self.state[name][k] = np.zeros(slot.shape, np.float32)
                    slot.state[k] = self.state[name][k].reshape(-1)
                np.copyto(self.state[name][k], a)
                self._fresh.discard((name, k))

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.defaults.items())
        return f"{type(self).__name__}({args})"

    # subclass hooks ----------------------------------------------------------------------------
    def _buffers(self, group: dict) -> tuple:
        raise NotImplementedError

    def _update(self, slot: _Slot, grad: np.ndarray, group: dict):
        raise NotImplementedError


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum — torch.optim.SGD.

    Per step, with g the gradient: g ← g + weight_decay·p; with momentum μ ≠ 0,
    v ← g on the first step, else v ← μ·v + (1 − dampening)·g; then g ← g + μ·v (nesterov)
    or g ← v; finally p ← p − lr·g.

    The courses write momentum as v ← β·v + (1 − β)·dW, W ← W − α·v (β = 0.9, v₀ = 0). Two ways
    to get it from torch's form:

    * ``SGD(lr=α·(1 − β), momentum=β)`` is exactly the courses' update at every step, the first
      included: torch's v is the courses' v divided by (1 − β).
    * ``SGD(lr=α, momentum=β, dampening=β)`` gives v ← β·v + (1 − β)·g from the second step on,
      but torch sets v = g on the first step (the courses get (1 − β)·g), so its velocity stays
      larger by β^t·g₁ at step t.
    """

    def __init__(self, params: str | Sequence[str] | None = None, lr: float = 1e-3,
                 momentum: float = 0, dampening: float = 0, weight_decay: float = 0,
                 nesterov: bool = False) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov))

    def _validate(self, group):
        super()._validate(group)
        _check(_real(group["dampening"]), f"Invalid dampening value: {group['dampening']}")
        _check(isinstance(group["nesterov"], (bool, np.bool_)),
               f"nesterov must be True or False, got {group['nesterov']!r}")
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise InputError("Nesterov momentum requires a momentum and zero dampening")

    def _buffers(self, group):
        return ("momentum_buffer",) if group["momentum"] != 0 else ()

    def _update(self, slot, grad, group):
        mu = group["momentum"]
        buf = slot.state["momentum_buffer"] if mu != 0 else None
        _kernels.sgd(slot.flat, grad, buf, group["lr"], mu, group["dampening"],
                     group["weight_decay"], bool(group["nesterov"]),
                     (slot.name, "momentum_buffer") in self._fresh, self.threads)


class RMSprop(Optimizer):
    """RMSprop — torch.optim.RMSprop.

    Per step: g ← g + weight_decay·p; s ← α·s + (1 − α)·g²; centered: ḡ ← α·ḡ + (1 − α)·g and
    s̃ = s − ḡ² (else s̃ = s); with momentum μ > 0: b ← μ·b + g/(√s̃ + ε), p ← p − lr·b;
    otherwise p ← p − lr·g/(√s̃ + ε).

    The courses write S ← β·S + (1 − β)·dW², W ← W − α·dW/√(S + ε): the same with alpha = β,
    except that ε sits *inside* the root there and *outside* here (as in torch). The two agree
    exactly with eps=0 and to within ~ε/√S otherwise; torch's ε = 1e-8 outside the root is
    about the courses' ε = 1e-16 inside it.
    """

    def __init__(self, params: str | Sequence[str] | None = None, lr: float = 1e-2,
                 alpha: float = 0.99, eps: float = 1e-8, weight_decay: float = 0,
                 momentum: float = 0, centered: bool = False) -> None:
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                                      momentum=momentum, centered=centered))

    def _validate(self, group):
        super()._validate(group)
        _check(isinstance(group["centered"], (bool, np.bool_)),
               f"centered must be True or False, got {group['centered']!r}")

    def _buffers(self, group):
        return (("square_avg",) + (("grad_avg",) if group["centered"] else ())
                + (("momentum_buffer",) if group["momentum"] > 0 else ()))

    def _update(self, slot, grad, group):
        st = slot.state
        _kernels.rmsprop(slot.flat, grad, st["square_avg"],
                         st["grad_avg"] if group["centered"] else None,
                         st["momentum_buffer"] if group["momentum"] > 0 else None,
                         group["lr"], group["alpha"], group["eps"], group["weight_decay"],
                         group["momentum"], self.threads)


class Adam(Optimizer):
    """Adam with bias correction — torch.optim.Adam (no amsgrad).

    Per step t: g ← g + weight_decay·p (L2 folded into the gradient); m ← β1·m + (1 − β1)·g;
    v ← β2·v + (1 − β2)·g²; p ← p − lr·m̂/(√v̂ + ε) with m̂ = m/(1 − β1ᵗ), v̂ = v/(1 − β2ᵗ).

    The courses write W ← W − α·V̂/√(Ŝ + ε) with V = m, S = v: ε *inside* the root there,
    *outside* here (as in torch). Identical with eps=0; otherwise they differ only where √v̂ is
    not much larger than ε (gradients of order 1e-4 and below for ε = 1e-8 inside the root).
    A consequence worth knowing: the very first step moves every weight by lr·g/(|g| + ε),
    i.e. by almost exactly lr, whatever the gradient's size.
    """

    _decoupled = False

    def __init__(self, params: str | Sequence[str] | None = None, lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0) -> None:
        super().__init__(params, dict(lr=lr, betas=tuple(betas) if _is_pair(betas) else betas,
                                      eps=eps, weight_decay=weight_decay))

    def _validate(self, group):
        super()._validate(group)
        betas = group["betas"]
        _check(_is_pair(betas), f"betas must be a pair (beta1, beta2), got {betas!r}")
        for k in (0, 1):
            b = betas[k]
            _check(_real(b) and 0.0 <= b < 1.0, f"Invalid beta parameter at index {k}: {b}")

    def _buffers(self, group):
        return ("exp_avg", "exp_avg_sq")

    def _update(self, slot, grad, group):
        beta1, beta2 = group["betas"]
        _kernels.adam(slot.flat, grad, slot.state["exp_avg"], slot.state["exp_avg_sq"],
                      group["lr"], beta1, beta2, group["eps"], group["weight_decay"],
                      self._decoupled, self.steps + 1, self.threads)


class AdamW(Adam):
    """Adam with decoupled weight decay — torch.optim.AdamW.

    Each step first shrinks the weights, p ← p·(1 − lr·weight_decay), then applies Adam's update
    to the raw gradient (no L2 term in m and v). This is the issue's "decoupled weight decay";
    the courses' L2 regularization λ/(2m)·Σ‖W‖² is the Trainer's ``l2`` (a loss term)."""

    _decoupled = True

    def __init__(self, params: str | Sequence[str] | None = None, lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


def _is_pair(x) -> bool:
    return isinstance(x, (tuple, list)) and len(x) == 2


OPTIMIZERS = {cls.__name__: cls for cls in (SGD, RMSprop, Adam, AdamW)}


def from_state_dict(d: Mapping) -> Optimizer:
    """A new optimizer of the class recorded in ``d`` (from ``state_dict()``), with its
    hyper-parameters, params selection, steps and state (applied when it is bound)."""
    if not isinstance(d, Mapping) or d.get("class") not in OPTIMIZERS:
        got = d.get("class") if isinstance(d, Mapping) else type(d).__name__
        raise EmberError(f"unknown optimizer {got!r} in state dict (known: {sorted(OPTIMIZERS)})")
    hyper = dict(d.get("hyper", {}))
    if "betas" in hyper:
        hyper["betas"] = tuple(hyper["betas"])
    try:
        opt = OPTIMIZERS[d["class"]](d.get("params"), **hyper)
    except TypeError as e:
        raise EmberError(f"bad {d['class']} hyper-parameters in state dict: {e}") from None
    opt.load_state_dict(d)
    return opt
