"""Learning-rate schedules, stepped once per epoch: torch.optim.lr_scheduler's names, arguments
and closed forms, plus the courses' inverse-time decay and a linear warm-up that hands over to
another schedule.

    sched = StepLR(step_size=5, gamma=0.5)     # or StepLR(opt, step_size=5, gamma=0.5)
    sched.bind(opt)                            # epoch 0: sets opt.lr = lr_at(0)
    sched.step()                               # end of each epoch: epoch += 1, opt.lr updated

Every schedule is a closed form ``lr_at(base_lr, epoch)`` (no recurrence, so a restored
schedule continues exactly), where ``base_lr`` is the optimizer's learning rate when the
schedule was first bound (kept as ``initial_lr`` in the optimizer's param group, as torch does).
As in torch, the optimizer is the first, optional, argument; pass the schedule's own arguments
by keyword when it is omitted. Bad arguments raise ``InputError`` (an ``EmberError`` and a
``ValueError``).
"""
from __future__ import annotations

import bisect
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from ..graph.errors import EmberError, InputError

if TYPE_CHECKING:
    from .optim import Optimizer

__all__ = ["LRScheduler", "StepLR", "MultiStepLR", "ExponentialLR", "InverseTimeLR",
           "CosineAnnealingLR", "LinearLR", "LinearWarmup", "from_state_dict"]


def _real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def _int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _check(ok: bool, message: str):
    if not ok:
        raise InputError(message)


def _check_optimizer(owner: str, optimizer) -> list:
    groups = getattr(optimizer, "param_groups", None)
    if not isinstance(groups, list) or not groups or not all("lr" in g for g in groups):
        raise InputError(f"{owner}'s first argument is the optimizer (as in torch), got "
                         f"{type(optimizer).__name__}; pass the schedule's own arguments by "
                         f"keyword, e.g. StepLR(step_size=5)")
    return groups


class LRScheduler:
    """Base class: binding, stepping, checkpoints. Subclasses give ``lr_at`` and ``_hyper``."""

    def __new__(cls, optimizer=None, *args, **kwargs):
        # Checked before the subclass validates its own arguments, so ``StepLR(5)`` says what
        # is wrong (torch's first argument is the optimizer) rather than "step_size is None".
        if optimizer is not None:
            _check_optimizer(cls.__name__, optimizer)
        return super().__new__(cls)

    def __init__(self, optimizer: Optimizer | None = None) -> None:
        self.optimizer = None
        self.last_epoch = -1          # -1: never bound; then the number of step() calls
        self.base_lrs: list[float] = []
        self._last_lr: list[float] = []
        if optimizer is not None:
            self.bind(optimizer)

    def bind(self, optimizer: Optimizer) -> "LRScheduler":
        """Attach to ``optimizer`` and set its learning rate for the current epoch. The first
        bind records the base learning rate; a schedule restored with ``load_state_dict`` keeps
        its own epoch and base."""
        groups = _check_optimizer(type(self).__name__, optimizer)
        self.optimizer = optimizer
        if self.last_epoch < 0:
            for g in groups:
                g.setdefault("initial_lr", g["lr"])
            self.base_lrs = [float(g["initial_lr"]) for g in groups]
            self.last_epoch = 0
        elif len(self.base_lrs) != len(groups):
            raise EmberError(f"{type(self).__name__} state has {len(self.base_lrs)} base "
                             f"learning rates, the optimizer has {len(groups)} groups")
        self._apply()
        return self

    def step(self) -> None:
        """One epoch has ended: move to the next epoch's learning rate."""
        if self.optimizer is None:
            raise EmberError(f"{type(self).__name__}.step before bind(optimizer)")
        self.last_epoch += 1
        self._apply()

    def _apply(self):
        self._last_lr = [self.lr_at(base, self.last_epoch) for base in self.base_lrs]
        for g, lr in zip(self.optimizer.param_groups, self._last_lr):
            g["lr"] = lr

    def get_last_lr(self) -> list[float]:
        """The learning rates last set (one per param group, as torch returns them)."""
        return list(self._last_lr)

    def lr_at(self, base_lr: float, epoch: int) -> float:
        """The schedule's learning rate at ``epoch`` (0 = before the first ``step``)."""
        raise NotImplementedError

    def _hyper(self) -> dict:
        raise NotImplementedError

    def state_dict(self) -> dict:
        """Plain data: class, constructor arguments, epoch, base and last learning rates."""
        return {"class": type(self).__name__, "hyper": self._hyper(),
                "last_epoch": int(self.last_epoch), "base_lrs": list(self.base_lrs),
                "last_lr": list(self._last_lr)}

    def load_state_dict(self, d: Mapping) -> None:
        """Restore the epoch and base learning rates (the constructor arguments must match:
        use ``from_state_dict`` to rebuild a schedule from scratch). A bound schedule sets
        the optimizer's learning rate for the restored epoch."""
        if not isinstance(d, Mapping) or d.get("class") != type(self).__name__:
            got = d.get("class") if isinstance(d, Mapping) else type(d).__name__
            raise EmberError(f"scheduler state is for {got!r}, this is {type(self).__name__}")
        if d.get("hyper", self._hyper()) != self._hyper():
            raise EmberError(f"{type(self).__name__} state has arguments {d['hyper']}, this "
                             f"schedule has {self._hyper()}")
        epoch = d.get("last_epoch", -1)
        if not _int(epoch) or epoch < -1:
            raise EmberError(f"scheduler state has a bad epoch {epoch!r}")
        bases = [float(b) for b in d.get("base_lrs", [])]
        self.last_epoch, self.base_lrs = int(epoch), bases
        self._last_lr = [float(x) for x in d.get("last_lr", [])]
        if self.optimizer is not None and self.last_epoch >= 0:
            self._apply()

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self._hyper().items())
        return f"{type(self).__name__}({args})"


class StepLR(LRScheduler):
    """lr = base · gamma^⌊epoch / step_size⌋ — the courses' "staircase" decay."""

    def __init__(self, optimizer: Optimizer | None = None, step_size: int | None = None,
                 gamma: float = 0.1) -> None:
        _check(_int(step_size) and step_size > 0,
               f"StepLR step_size must be a positive integer, got {step_size!r}")
        _check(_real(gamma) and gamma > 0, f"StepLR gamma must be a positive number, got {gamma!r}")
        self.step_size, self.gamma = int(step_size), float(gamma)
        super().__init__(optimizer)

    def lr_at(self, base_lr: float, epoch: int) -> float:
        return base_lr * self.gamma ** (epoch // self.step_size)

    def _hyper(self):
        return {"step_size": self.step_size, "gamma": self.gamma}


class MultiStepLR(LRScheduler):
    """lr = base · gamma^(number of milestones ≤ epoch)."""

    def __init__(self, optimizer: Optimizer | None = None, milestones: Sequence[int] = (),
                 gamma: float = 0.1) -> None:
        _check(all(_int(m) and m >= 0 for m in milestones),
               f"MultiStepLR milestones must be non-negative integers, got {milestones!r}")
        _check(_real(gamma) and gamma > 0,
               f"MultiStepLR gamma must be a positive number, got {gamma!r}")
        self.milestones, self.gamma = sorted(int(m) for m in milestones), float(gamma)
        super().__init__(optimizer)

    def lr_at(self, base_lr: float, epoch: int) -> float:
        return base_lr * self.gamma ** bisect.bisect_right(self.milestones, epoch)

    def _hyper(self):
        return {"milestones": list(self.milestones), "gamma": self.gamma}


class ExponentialLR(LRScheduler):
    """lr = base · gamma^epoch (the courses' 0.95^epoch · α₀ is gamma=0.95)."""

    def __init__(self, optimizer: Optimizer | None = None, gamma: float | None = None) -> None:
        _check(_real(gamma) and gamma > 0,
               f"ExponentialLR gamma must be a positive number, got {gamma!r}")
        self.gamma = float(gamma)
        super().__init__(optimizer)

    def lr_at(self, base_lr: float, epoch: int) -> float:
        return base_lr * self.gamma ** epoch

    def _hyper(self):
        return {"gamma": self.gamma}


class InverseTimeLR(LRScheduler):
    """lr = base / (1 + decay_rate · epoch) — the courses' α₀/(1 + decay_rate · epoch_num)
    (not in torch; ``LambdaLR(opt, lambda e: 1 / (1 + decay_rate * e))`` there)."""

    def __init__(self, optimizer: Optimizer | None = None, decay_rate: float | None = None) -> None:
        _check(_real(decay_rate) and decay_rate >= 0,
               f"InverseTimeLR decay_rate must be a non-negative number, got {decay_rate!r}")
        self.decay_rate = float(decay_rate)
        super().__init__(optimizer)

    def lr_at(self, base_lr: float, epoch: int) -> float:
        return base_lr / (1.0 + self.decay_rate * epoch)

    def _hyper(self):
        return {"decay_rate": self.decay_rate}


class CosineAnnealingLR(LRScheduler):
    """lr = eta_min + (base − eta_min)·(1 + cos(π·epoch/T_max))/2 — torch's closed form
    (past T_max the cosine comes back up, as torch's does)."""

    def __init__(self, optimizer: Optimizer | None = None, T_max: int | None = None,
                 eta_min: float = 0.0) -> None:
        _check(_int(T_max) and T_max > 0,
               f"CosineAnnealingLR T_max must be a positive integer, got {T_max!r}")
        _check(_real(eta_min) and eta_min >= 0,
               f"CosineAnnealingLR eta_min must be a non-negative number, got {eta_min!r}")
        self.T_max, self.eta_min = int(T_max), float(eta_min)
        super().__init__(optimizer)

    def lr_at(self, base_lr: float, epoch: int) -> float:
        return self.eta_min + (base_lr - self.eta_min) * (
            1.0 + math.cos(math.pi * epoch / self.T_max)) / 2.0

    def _hyper(self):
        return {"T_max": self.T_max, "eta_min": self.eta_min}


class LinearLR(LRScheduler):
    """torch's LinearLR: the factor on the base rate goes linearly from ``start_factor`` at
    epoch 0 to ``end_factor`` at ``total_iters`` and stays there."""

    def __init__(self, optimizer: Optimizer | None = None, start_factor: float = 1.0 / 3,
                 end_factor: float = 1.0, total_iters: int = 5) -> None:
        _check(_real(start_factor) and 0 < start_factor <= 1,
               "Starting multiplicative factor expected to be greater than 0 and less or equal "
               f"to 1, got {start_factor!r}")
        _check(_real(end_factor) and 0 <= end_factor <= 1,
               f"Ending multiplicative factor expected to be between 0 and 1, got {end_factor!r}")
        _check(_int(total_iters) and total_iters >= 0,
               f"total_iters must be a non-negative integer, got {total_iters!r}")
        self.start_factor, self.end_factor = float(start_factor), float(end_factor)
        self.total_iters = int(total_iters)
        super().__init__(optimizer)

    def _factor(self, epoch):
        if epoch >= self.total_iters:
            return self.end_factor
        return self.start_factor + (self.end_factor - self.start_factor) * epoch / self.total_iters

    def lr_at(self, base_lr: float, epoch: int) -> float:
        return base_lr * self._factor(epoch)

    def _hyper(self):
        return {"start_factor": self.start_factor, "end_factor": self.end_factor,
                "total_iters": self.total_iters}


class LinearWarmup(LinearLR):
    """Linear warm-up from ``start_factor``·base at epoch 0 to base at ``warmup_epochs``
    (torch's ``LinearLR(opt, start_factor, 1.0, total_iters=warmup_epochs)``), then, if
    ``after`` is given, that schedule with its epochs counted from the end of the warm-up and
    the same base rate (torch's ``SequentialLR(opt, [warmup, after], [warmup_epochs])``)::

        LinearWarmup(warmup_epochs=3, after=CosineAnnealingLR(T_max=17))
    """

    def __init__(self, optimizer: Optimizer | None = None, warmup_epochs: int = 5,
                 start_factor: float = 1.0 / 3, after: LRScheduler | None = None) -> None:
        _check(after is None or (isinstance(after, LRScheduler)
                                 and not isinstance(after, LinearWarmup)),
               f"LinearWarmup after= must be another (non-warm-up) schedule, got {after!r}")
        _check(_int(warmup_epochs) and warmup_epochs >= 0,
               f"warmup_epochs must be a non-negative integer, got {warmup_epochs!r}")
        self.after = after
        super().__init__(optimizer, start_factor=start_factor, end_factor=1.0,
                         total_iters=warmup_epochs)

    @property
    def warmup_epochs(self) -> int:
        return self.total_iters

    def lr_at(self, base_lr: float, epoch: int) -> float:
        if self.after is not None and epoch >= self.total_iters:
            return self.after.lr_at(base_lr, epoch - self.total_iters)
        return base_lr * self._factor(epoch)

    def _hyper(self):
        return {"warmup_epochs": self.total_iters, "start_factor": self.start_factor,
                "after": None if self.after is None else
                {"class": type(self.after).__name__, "hyper": self.after._hyper()}}


SCHEDULERS = {cls.__name__: cls for cls in (StepLR, MultiStepLR, ExponentialLR, InverseTimeLR,
                                            CosineAnnealingLR, LinearLR, LinearWarmup)}


def _construct(cls_name, hyper: Mapping) -> LRScheduler:
    if cls_name not in SCHEDULERS:
        raise EmberError(f"unknown scheduler {cls_name!r} in state dict "
                         f"(known: {sorted(SCHEDULERS)})")
    hyper = dict(hyper)
    if isinstance(hyper.get("after"), Mapping):
        hyper["after"] = _construct(hyper["after"].get("class"), hyper["after"].get("hyper", {}))
    try:
        return SCHEDULERS[cls_name](**hyper)
    except TypeError as e:
        raise EmberError(f"bad {cls_name} arguments in state dict: {e}") from None


def from_state_dict(d: Mapping) -> LRScheduler:
    """A new, unbound schedule of the class in ``d`` at the recorded epoch: ``bind`` it to
    the (restored) optimizer to continue."""
    if not isinstance(d, Mapping):
        raise EmberError(f"not a scheduler state dict: {type(d).__name__}")
    sched = _construct(d.get("class"), d.get("hyper", {}))
    sched.load_state_dict(d)
    return sched
