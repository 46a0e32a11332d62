"""ReduceSum/Mean/Max/Min/Prod: float32 reductions over one contiguous block of axes run as a
native step (``kernels/reduce``); other dtypes and axis patterns as numpy reductions writing
straight into the arena."""
from __future__ import annotations

import numpy as np

from ...graph.ops import reduce as ops
from ...kernels import reduce as kernel
from .common import optional_at
from .registry import binds

_KINDS = {"ReduceSum": kernel.REDUCE_SUM, "ReduceMean": kernel.REDUCE_MEAN,
          "ReduceMax": kernel.REDUCE_MAX, "ReduceMin": kernel.REDUCE_MIN,
          "ReduceProd": kernel.REDUCE_PROD}
_REDUCERS = {"ReduceSum": np.add.reduce, "ReduceMax": np.maximum.reduce,
             "ReduceMin": np.minimum.reduce, "ReduceProd": np.multiply.reduce}


@binds(ops.ReduceSum, ops.ReduceMean, ops.ReduceMax, ops.ReduceMin, ops.ReduceProd,
       kernel="reduce")
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
    block = _outer_n_inner(x.shape, axes)
    if x.dtype == np.float32 and block is not None:
        return kernel.ReduceStep(x.reshape(block), y.reshape(block[0], block[2]),
                                 _KINDS[node.op_type], ctx.threads)
    yk = y.reshape(keep)
    if node.op_type == "ReduceMean":
        return lambda: np.mean(x, axis=axes, out=yk, keepdims=True)
    fn = _REDUCERS[node.op_type]
    return lambda: fn(x, axis=axes, out=yk, keepdims=True)


def _outer_n_inner(shape, axes):
    """(outer, n, inner) when the reduced axes of size > 1 are one block with no kept axis of
    size > 1 inside it, else None."""
    reduced = [i for i in axes if shape[i] != 1]
    if not reduced:
        return None
    lo, hi = min(reduced), max(reduced)
    if any(i not in axes and shape[i] != 1 for i in range(lo, hi + 1)):
        return None
    return _size(shape[:lo]), _size(shape[lo:hi + 1]), _size(shape[hi + 1:])


def _size(dims) -> int:
    return int(np.prod(dims, dtype=np.int64))
