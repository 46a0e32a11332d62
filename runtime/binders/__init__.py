"""How each IR node is bound to a kernel call: one module per op family (the names of
``graph/ops/``), forward and gradient binders side by side, each registered with ``binds``
(see ``registry`` for the binder contract).

A step that is also a *native step* (it carries a ``_native`` capsule, e.g.
``conv.Conv2dStep``) is run from C by the context's runner (``make_runner``), with no Python —
and no GIL hand-over — between consecutive native steps.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...graph.cost import REFERENCE_LIMIT, node_work
from ...graph.errors import ModelError
from ...graph.ops import get_op
from ...kernels.plan import PlanRunner
from . import (activation, control_flow, conv, elementwise, linear, loss,  # noqa: F401
               normalization, pool, recurrent, reduce, resize, sampling, softmax, tensor)
from .common import root_of
from .registry import BINDINGS, binds

__all__ = ["BindContext", "Binding", "bind", "binding_for", "binds", "inplace_inputs", "is_view",
           "make_runner", "reference_step", "reference_temporary_bytes", "scratch_bytes"]


class BindContext:
    """What every binder of one compiled context shares: the value types, the thread count, and
    which arrays may change between runs — the arena's views and the ``live`` arrays (external
    state a Trainer updates in place, fed arrays a plan is keyed on). Binders preprocess only
    the other arrays, the constants. ``memory_left``: the bytes the Session's memory cap leaves
    beside the arena, which a numpy reference step's temporaries must fit (None: unbounded).
    ``subgraph_session``: the Session class, which control-flow binders compile their
    subgraphs with (the Session module imports this one, so it hands itself over)."""

    def __init__(self, types: dict, threads: int, arena, live=(), memory_left: int | None = None,
                 subgraph_session=None):
        self.types, self.threads, self.memory_left = types, threads, memory_left
        self.subgraph_session = subgraph_session
        roots = [root_of(arena), *(root_of(a) for a in live)]
        self._runtime_roots = {id(r): r for r in roots}

    def is_runtime(self, a) -> bool:
        """True when ``a``'s value may change between runs."""
        if a is None:
            return False
        root = root_of(a)
        return self._runtime_roots.get(id(root)) is root


@dataclass(frozen=True)
class Binding:
    """How an op runs when it has a binder: ``kind`` "kernel" (a Cython kernel of module
    ``kernel``), "numpy" (numpy writing into the arena), "subgraph" (its If/Loop/Scan bodies'
    own compiled plans), or None (no binder: the reference)."""

    kind: str | None
    kernel: str | None = None


def binding_for(op_type: str, domain: str = "") -> Binding:
    reg = BINDINGS.get((domain, op_type))
    if reg is None:
        return Binding(None)
    if reg.kernel == "subgraph":
        return Binding("subgraph")
    return Binding("kernel", reg.kernel) if reg.kernel else Binding("numpy")


def scratch_bytes(node, types, threads) -> int:
    reg = BINDINGS.get((node.domain, node.op_type))
    return int(reg.scratch(node, types, threads)) if reg and reg.scratch else 0


def inplace_inputs(node, types) -> tuple:
    reg = BINDINGS.get((node.domain, node.op_type))
    rule = reg.inplace if reg else None
    if rule is None:
        return tuple(get_op(node.op_type, node.domain).inplace)
    return tuple(rule(node, types)) if callable(rule) else tuple(rule)


def is_view(node) -> bool:
    return get_op(node.op_type, node.domain).view


# A numpy reference computes in float64 and holds a few whole-tensor temporaries at once: its
# memory is estimated as this many float64 copies of every input and output element.
REFERENCE_TEMPORARIES = 4


def reference_temporary_bytes(node, ins, outs, types) -> int:
    """Estimated bytes a numpy reference allocates while it runs on ``ins`` into ``outs``."""
    elements = sum(int(a.size) for a in (*ins, *outs)
                   if a is not None and not isinstance(a, control_flow.RuntimeShaped))
    elements += get_op(node.op_type, node.domain).reference_temporaries(node, types)
    return REFERENCE_TEMPORARIES * 8 * elements


def reference_step(node, ins, outs, types, memory_left: int | None = None):
    """Run the op's numpy reference and copy its results into the arena outputs — refused with
    ModelError when its estimated work (``graph.cost``) exceeds ``REFERENCE_LIMIT``, since every
    run would spend it, or when its estimated temporaries (``reference_temporary_bytes``) exceed
    ``memory_left``, the bytes the memory cap leaves beside the arena."""
    temporaries = reference_temporary_bytes(node, ins, outs, types)
    if memory_left is not None and temporaries > memory_left:
        raise ModelError(f"{node}: no kernel covers this case and its numpy reference would "
                         f"allocate about {temporaries:,} bytes of temporaries per run, more "
                         f"than the {max(memory_left, 0):,} bytes the memory cap leaves beside "
                         f"the arena (input types: "
                         + ", ".join(str(types.get(i, "?")) for i in node.inputs if i) + ")")
    work = node_work(node, types)
    if work > REFERENCE_LIMIT:
        raise ModelError(f"{node}: no kernel covers this case and its numpy reference would "
                         f"take about {work:,} element operations per run, more than the "
                         f"{REFERENCE_LIMIT:,} ember allows (input types: "
                         + ", ".join(str(types.get(i, "?")) for i in node.inputs if i) + ")")
    op = get_op(node.op_type, node.domain)
    pairs = [(o, k) for k, o in enumerate(outs) if o is not None]

    def step():
        results = op.compute(node, ins)
        for o, k in pairs:
            if isinstance(o, control_flow.RuntimeShaped):   # its shape decided by this run
                o.set(node, results[k], memory_left)
            else:
                np.copyto(o, results[k], casting="unsafe")
    step.reference = True  # shown by Session.profile: this node runs numpy, not a kernel
    return step


def bind(node, ins, outs, scratch_buf, ctx: BindContext):
    """The step for one node: its kernel when a binder has a fast path, else the reference."""
    if is_view(node) and ins[0] is not None and outs[0] is not None and \
            ins[0].__array_interface__["data"][0] == outs[0].__array_interface__["data"][0]:
        return None  # the planner gave the output the input's bytes: nothing to run
    reg = BINDINGS.get((node.domain, node.op_type))
    step = reg.binder(node, ins, outs, scratch_buf, ctx) if reg else None
    return step if step is not None else reference_step(node, ins, outs, ctx.types,
                                                               ctx.memory_left)


def make_runner(steps: list) -> PlanRunner:
    """The steps as one runnable plan: ``PlanRunner`` runs consecutive steps that carry a native
    entry point (e.g. ``conv.Conv2dStep``) in one GIL-free C loop; any other step is called from
    Python."""
    return PlanRunner(steps)
