"""The table binding IR ops to kernels.

A *binder* is called once per node at compile time with the node (attributes resolved, defaults
filled), the types of every value, the node's input arrays (arena views or constant arrays,
``None`` for an absent optional input), its output arrays (arena views), its scratch (a float32
arena view or ``None``) and the Session's thread count. It returns a zero-argument callable that
runs the node — all shape logic is done before, so the callable only calls a kernel — or
``None`` when it has no fast path for this case (a dtype, a rank, an attribute combination), in
which case the op's numpy reference from ``graph.ops`` runs instead. A step that is also a
*native step* (it carries a ``_native`` capsule, e.g. ``conv.Conv2dStep``) is run from C by the
context's runner (``make_runner``), with no Python — and no GIL hand-over — between consecutive
native steps.

``scratch_bytes`` functions tell the planner how much kernel scratch a node needs.
``inplace`` functions refine which inputs the kernel may overwrite (default: the op's flag).
"""
from __future__ import annotations

import numpy as np

from ..graph.ops import get_op

BINDERS: dict = {}
SCRATCH: dict = {}
INPLACE: dict = {}


def binder(*op_types):
    def deco(fn):
        for t in op_types:
            BINDERS[t] = fn
        return fn
    return deco


def scratch(*op_types):
    def deco(fn):
        for t in op_types:
            SCRATCH[t] = fn
        return fn
    return deco


def scratch_bytes(node, types, threads) -> int:
    fn = SCRATCH.get(node.op_type)
    return int(fn(node, types, threads)) if fn else 0


def inplace_inputs(node, types) -> tuple:
    fn = INPLACE.get(node.op_type)
    return tuple(fn(node, types)) if fn else tuple(get_op(node.op_type, node.domain).inplace)


def is_view(node) -> bool:
    return get_op(node.op_type, node.domain).view


def reference_step(node, ins, outs):
    """Run the op's numpy reference and copy its results into the arena outputs."""
    op = get_op(node.op_type, node.domain)
    pairs = [(o, k) for k, o in enumerate(outs) if o is not None]

    def step():
        results = op.compute(node, ins)
        for o, k in pairs:
            np.copyto(o, results[k], casting="unsafe")
    step.reference = True  # shown by Session.profile: this node runs numpy, not a kernel
    return step


def bind(node, types, ins, outs, scratch_buf, threads):
    """The step for one node: its kernel when a binder has a fast path, else the reference."""
    if is_view(node) and ins[0] is not None and outs[0] is not None and \
            ins[0].__array_interface__["data"][0] == outs[0].__array_interface__["data"][0]:
        return None  # the planner gave the output the input's bytes: nothing to run
    fn = BINDERS.get(node.op_type)
    step = fn(node, types, ins, outs, scratch_buf, threads) if fn else None
    return step if step is not None else reference_step(node, ins, outs)


def make_runner(steps: list):
    """The steps as one runnable plan: ``kernels.plan.Plan`` runs consecutive steps that carry a
    native entry point (e.g. ``conv.Conv2dStep``) in one GIL-free C loop; any other step is
    called from Python. Without the compiled module, a plain loop."""
    try:
        from ..kernels.plan import Plan
    except ModuleNotFoundError:
        return _PythonRunner(steps)
    return Plan(steps)


class _PythonRunner:
    def __init__(self, steps):
        self.steps = list(steps)

    def __len__(self):
        return len(self.steps)

    native_steps = 0

    def run(self):
        for step in self.steps:
            step()


# The fast paths register themselves on import.
from . import kernel_binders  # noqa: E402,F401
from . import grad_binders  # noqa: E402,F401
