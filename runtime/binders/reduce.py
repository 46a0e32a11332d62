"""ReduceSum/Mean/Max/Min/Prod bound to numpy reductions writing straight into the arena (numpy's
loops are memory-bound already)."""
from __future__ import annotations

import numpy as np

from ...graph.ops import reduce as ops
from .common import optional_at
from .registry import binds

_REDUCERS = {"ReduceSum": np.add.reduce, "ReduceMax": np.maximum.reduce,
             "ReduceMin": np.minimum.reduce, "ReduceProd": np.multiply.reduce}


@binds(ops.ReduceSum, ops.ReduceMean, ops.ReduceMax, ops.ReduceMin, ops.ReduceProd)
def bind_reduce(node, ins, outs, scratch_buf, ctx):
    x, axes_in, y = ins[0], optional_at(ins, 1), outs[0]
    if x.dtype != y.dtype or x.dtype.kind != "f" or x.size == 0 or ctx.is_runtime(axes_in):
        return None
    axes_value = node.attrs.get("axes") if axes_in is None else axes_in  # pre-18 form, if kept
    axes = ops.reduce_axes(axes_value, x.ndim, bool(int(node.attrs.get("noop_with_empty_axes",
                                                                       0))))
    if axes is None:
        return (lambda: np.copyto(y, x)) if x.shape == y.shape else None
    keep = tuple(1 if i in axes else d for i, d in enumerate(x.shape))
    if int(np.prod(keep, dtype=np.int64)) != y.size:
        return None
    yk = y.reshape(keep)
    if node.op_type == "ReduceMean":
        return lambda: np.mean(x, axis=axes, out=yk, keepdims=True)
    fn = _REDUCERS[node.op_type]
    return lambda: fn(x, axis=axes, out=yk, keepdims=True)
