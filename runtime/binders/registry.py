"""The binder registry: one registration per op, carrying everything the planner and the tools
need to know about how that op is bound.

A *binder* is called once per node at compile time as ``binder(node, ins, outs, scratch, ctx)``:
the node (attributes resolved, defaults filled), its input arrays (arena views or constant
arrays, ``None`` for an absent optional input), its output arrays (arena views), its scratch (a
float32 arena view or ``None``) and the ``BindContext`` of the compile (value types, threads,
which arrays change between runs). It returns a zero-argument callable that runs the node — all
shape logic is done before, so the callable only calls a kernel — or ``None`` when it has no fast
path for this case (a dtype, a rank, an attribute combination), in which case the op's numpy
reference from ``graph.ops`` runs instead.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ...graph.ops import REGISTRY


@dataclass(frozen=True)
class Registration:
    """One op's binder and its facts.

    ``scratch``: fn(node, types, threads) -> bytes of kernel scratch the planner reserves.
    ``inplace``: the inputs the kernel may overwrite — a tuple, fn(node, types) -> tuple, or None
    for the op's own ``inplace`` flag. ``kernel``: the ``ember.kernels`` module the fast path
    calls, None when the binder writes into the arena with numpy. ``activations``: the names
    (keys of ``kernels.elementwise.ACTIVATION_CODES``) of the activations this binder applies."""

    binder: Callable
    scratch: Callable | None = None
    inplace: object = None
    kernel: str | None = None
    activations: tuple = ()


BINDINGS: dict = {}   # (domain, op_type) -> Registration


def binds(*op_classes, scratch=None, inplace=None, kernel=None, activations=()):
    """Register the decorated function as the binder of ``op_classes`` (graph op classes, so the
    domain is the op's own). An op is bound by one module only, and only a registered op."""
    def deco(fn):
        for cls in op_classes:
            key = (cls.domain, cls.op_type or cls.__name__)
            if not isinstance(REGISTRY.get(key), cls):
                raise TypeError(f"{fn.__qualname__}: {key} is not a registered op")
            if key in BINDINGS:
                raise TypeError(f"{fn.__qualname__}: {key} is already bound by "
                                f"{BINDINGS[key].binder.__module__}")
            BINDINGS[key] = Registration(fn, scratch, inplace, kernel, tuple(activations))
        return fn
    return deco
