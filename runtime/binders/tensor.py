"""Data movement bound to numpy copies into the arena (Concat, Transpose, Split, Slice, Gather,
Pad: out=/copyto, no temporaries), Gather's gradient (``kernels/scatter``), and Dropout with its
gradient (``kernels/act_grad``)."""
from __future__ import annotations

import numpy as np

from ...graph.errors import InputError
from ...graph.ops import tensor as ops
from ...graph.ops.tensor import dropout_seed
from ...kernels import act_grad, scatter
from ...kernels.tensor import CopyStep
from .common import all_float32, contiguous_f32, has_empty_output, noop, optional_at
from .registry import binds

U8 = np.uint8
_U64 = (1 << 64) - 1


def _copies(pairs, threads):
    """One step making every ``dst[...] = src`` copy in order: native up to rank 8 (the
    views are fixed at bind time), numpy's copyto beyond."""
    if all(dst.ndim <= 8 for dst, _ in pairs):
        return CopyStep(pairs, threads)

    def step():
        for dst, src in pairs:
            np.copyto(dst, src)
    return step


@binds(ops.Concat, inplace=(), kernel="tensor")
def bind_concat(node, ins, outs, scratch_buf, ctx):
    y = outs[0]
    xs = [x for x in ins if x is not None]
    if any(x.dtype != y.dtype for x in xs) or y.ndim == 0:
        return None
    axis = int(node.attrs.get("axis", 0))
    axis = axis + y.ndim if axis < 0 else axis
    pairs, off = [], 0
    for x in xs:
        n = x.shape[axis]
        if n:
            pairs.append((y[(slice(None),) * axis + (slice(off, off + n),)], x))
        off += n
    if off != y.shape[axis]:
        return None
    return _copies(pairs, ctx.threads)


@binds(ops.Transpose, inplace=(), kernel="tensor")
def bind_transpose(node, ins, outs, scratch_buf, ctx):
    x, y = ins[0], outs[0]
    if x.dtype != y.dtype:
        return None
    perm = node.attrs.get("perm") or list(range(x.ndim))[::-1]
    src = x.transpose([int(p) for p in perm])
    if src.shape != y.shape:
        return None
    return _copies([(y, src)], ctx.threads)


@binds(ops.Split, inplace=(), kernel="tensor")
def bind_split(node, ins, outs, scratch_buf, ctx):
    x = ins[0]
    if x.ndim == 0:
        return None
    axis = int(node.attrs.get("axis", 0))
    axis = axis + x.ndim if axis < 0 else axis
    pairs, off = [], 0
    for name, o in zip(node.outputs, outs):
        if not name:
            continue
        n = int(ctx.types[name].shape[axis])
        if o is not None and n:
            if o.dtype != x.dtype:
                return None
            pairs.append((o, x[(slice(None),) * axis + (slice(off, off + n),)]))
        off += n
    if off != x.shape[axis]:
        return None
    return _copies(pairs, ctx.threads)


def onnx_slices(shape, starts, ends, axes, steps):
    """ONNX Slice's clamping rules turned into Python slices (None on a bad step)."""
    sl = [slice(None)] * len(shape)
    for s, e, a, st in zip(starts, ends, axes, steps):
        a, s, e, st = int(a), int(s), int(e), int(st)
        if st == 0:
            return None
        a = a + len(shape) if a < 0 else a
        dim = int(shape[a])
        s = s + dim if s < 0 else s
        e = e + dim if e < 0 else e
        if st > 0:
            s, e = min(max(s, 0), dim), min(max(e, 0), dim)
            sl[a] = slice(s, e, st)
        else:
            s, e = min(max(s, 0), dim - 1), min(max(e, -1), dim - 1)
            sl[a] = slice(s, e if e >= 0 else None, st)
    return tuple(sl)


@binds(ops.Slice, inplace=(), kernel="tensor")
def bind_slice(node, ins, outs, scratch_buf, ctx):
    x, y = ins[0], outs[0]
    starts, ends, axes, steps = ins[1], ins[2], optional_at(ins, 3), optional_at(ins, 4)
    if x.dtype != y.dtype or any(ctx.is_runtime(v) for v in (starts, ends, axes, steps)):
        return None  # shapes depend on these, so they are constants; be safe otherwise
    starts, ends = starts.reshape(-1).tolist(), ends.reshape(-1).tolist()
    axes = axes.reshape(-1).tolist() if axes is not None else list(range(len(starts)))
    steps = steps.reshape(-1).tolist() if steps is not None else [1] * len(starts)
    sl = onnx_slices(x.shape, starts, ends, axes, steps)
    if sl is None:
        return None
    src = x[sl]
    if src.shape != y.shape:
        return None
    if y.size == 0:
        return noop
    return _copies([(y, src)], ctx.threads)


@binds(ops.Gather, inplace=())
def bind_gather(node, ins, outs, scratch_buf, ctx):
    data, idx, y = ins[0], ins[1], outs[0]
    if data.dtype != y.dtype or idx.dtype.kind not in "iu" or data.ndim == 0:
        return None
    axis = int(node.attrs.get("axis", 0))
    axis = axis + data.ndim if axis < 0 else axis
    dim = data.shape[axis]
    if y.size == 0:
        return noop
    if dim == 0:
        return None
    if not ctx.is_runtime(idx):
        if idx.size and (idx.min() < -dim or idx.max() >= dim):
            return None  # the reference reports the bad index
        # np.array, not np.ascontiguousarray: a 0-d index (x[:, 0]) must stay 0-d
        fixed = np.array(np.where(idx < 0, idx + dim, idx), dtype=np.intp, order="C")
        return lambda: np.take(data, fixed, axis=axis, out=y, mode="wrap")

    def step():
        try:
            np.take(data, idx, axis=axis, out=y, mode="raise")
        except IndexError as e:
            raise InputError(f"{node}: index out of range for axis {axis} of size {dim}: "
                             f"{e}") from None
    return step


@binds(ops.GatherGrad, inplace=(), kernel="scatter")
def bind_gather_grad(node, ins, outs, scratch_buf, ctx):
    """Indices are checked before anything is written (InputError naming the node and the
    range); int32 indices are widened into a buffer made here, once."""
    dy, idx, dx = ins[0], ins[1], outs[0]
    if not all_float32(dy, dx) or idx.dtype.kind not in "iu" or idx.dtype == np.uint64 \
            or dx.ndim == 0:
        return None    # uint64 would not fit the kernel's int64: the reference runs
    axis = int(node.attrs.get("axis", 0)) % dx.ndim
    dim, n = dx.shape[axis], idx.size
    outer = int(np.prod(dx.shape[:axis], dtype=np.int64))
    inner = int(np.prod(dx.shape[axis + 1:], dtype=np.int64))
    if dy.size != outer * n * inner:
        return None
    dy3, dx3 = contiguous_f32(dy).reshape(outer, n, inner), dx.reshape(outer, dim, inner)
    flat = idx.reshape(-1)
    wide = flat if flat.dtype == np.int64 and flat.flags.c_contiguous else np.empty(n, np.int64)
    skip, threads = int(node.attrs.get("padding_idx", -1)), ctx.threads
    check, scatter_add = scatter.first_out_of_range, scatter.scatter_add_rows

    def step():
        if wide is not flat:
            np.copyto(wide, flat, casting="unsafe")
        bad = check(wide, dim)
        if bad >= 0:
            raise InputError(f"{node}: index {int(flat[bad])} (at flat position {bad}) is out of "
                             f"range for axis {axis} of size {dim}: expected -{dim} ≤ index < "
                             f"{dim}")
        scatter_add(dy3, wide, dx3, skip, threads)
    return step


@binds(ops.Pad, inplace=())
def bind_pad(node, ins, outs, scratch_buf, ctx):
    """Constant mode with non-negative pads: copy the interior, fill the borders."""
    x, pads, cval, axes, y = ins[0], ins[1], optional_at(ins, 2), optional_at(ins, 3), outs[0]
    if node.attrs.get("mode", "constant") not in ("constant", b"constant") or \
            x.dtype != y.dtype or ctx.is_runtime(pads) or ctx.is_runtime(axes):
        return None
    r = x.ndim
    p = [int(v) for v in pads.reshape(-1)]
    ax = [int(a) + r if int(a) < 0 else int(a) for a in axes.reshape(-1)] \
        if axes is not None else list(range(r))
    if len(p) != 2 * len(ax) or any(v < 0 for v in p):
        return None
    before, after = [0] * r, [0] * r
    for k, a in enumerate(ax):
        before[a], after[a] = p[k], p[k + len(ax)]
    # the Ellipsis keeps a 0-d interior an array view (y[()] would be a scalar copy)
    interior = y[(*(slice(b, b + n) for b, n in zip(before, x.shape)), ...)]
    if interior.shape != x.shape:
        return None
    borders = []
    for a in range(r):
        if before[a]:
            borders.append(y[(slice(None),) * a + (slice(0, before[a]),)])
        if after[a]:
            borders.append(y[(slice(None),) * a + (slice(y.shape[a] - after[a], None),)])
    if y.size == 0:
        return noop
    if cval is not None and cval.size:
        cflat = cval.reshape(-1)
        if ctx.is_runtime(cval):
            def value():
                return cflat[0]
        else:
            v0 = cflat[0].copy()

            def value():
                return v0
    else:
        zero = np.zeros((), y.dtype)

        def value():
            return zero

    def step():
        v = value()
        for b in borders:
            b.fill(v)
        np.copyto(interior, x)
    return step


# ---- Dropout and its gradient -------------------------------------------------------------------
def _mask_bytes(mask):
    """A bool array's bytes as uint8 (the kernels' mask type); same memory."""
    return mask.reshape(-1).view(U8)


def _scalar(a, default):
    """A one-element input as a Python float/bool (None → default), read when called."""
    return default if a is None else a.reshape(-1)[0].item()


@binds(ops.Dropout, kernel="act_grad")
def bind_dropout(node, ins, outs, scratch_buf, ctx):
    """Training: the mask of (seed, step, element). The step is the node's optional 4th input,
    read live every run (the Trainer's ``dropout_step`` counter, graph/TRAINING.md §1); without
    one, a counter in this closure, so each compiled context draws its own reproducible
    sequence. Inference: y = x, mask all True. ratio / training_mode are read every run (they
    are one element). Same masks as the numpy reference (``tensor.dropout_keep``)."""
    x, y, threads = ins[0], outs[0], ctx.threads
    ratio_in, train_in, step_in = optional_at(ins, 1), optional_at(ins, 2), optional_at(ins, 3)
    mask = optional_at(outs, 1)
    if not all_float32(x, y) or (ratio_in is not None and ratio_in.dtype.kind != "f"):
        return None
    if step_in is not None and step_in.dtype.kind not in "iu":
        return None
    if has_empty_output(outs):
        return noop
    x1, y1, fn = contiguous_f32(x).reshape(-1), y.reshape(-1), act_grad.dropout_forward
    m1 = _mask_bytes(mask) if mask is not None else np.empty(x.size, U8)   # bind time, reused
    seed, run, offset = dropout_seed(node), [0], int(node.attrs.get("offset", 0))
    step1 = step_in.reshape(-1) if step_in is not None else None

    def step():
        ratio = float(_scalar(ratio_in, 0.5))
        if not bool(_scalar(train_in, False)) or ratio == 0.0:
            np.copyto(y1, x1)
            m1.fill(1)
            return
        if not 0.0 <= ratio <= 1.0:
            raise InputError(f"{node}: ratio {ratio} must lie in [0, 1]")
        if step1 is not None:
            fn(x1, y1, m1, ratio, seed, int(step1[0]) & _U64, threads, offset)
        else:
            fn(x1, y1, m1, ratio, seed, run[0], threads, offset)
            run[0] += 1
    return step


@binds(ops.DropoutGrad, kernel="act_grad")
def bind_dropout_grad(node, ins, outs, scratch_buf, ctx):
    dy, mask, dx = ins[0], ins[1], outs[0]
    if not all_float32(dy, dx) or mask.dtype != np.bool_ or mask.shape != dy.shape:
        return None
    if has_empty_output(outs):
        return noop
    ratio, threads = float(node.attrs.get("ratio", 0.5)), ctx.threads
    g1, m1, dx1 = contiguous_f32(dy).reshape(-1), _mask_bytes(mask), dx.reshape(-1)
    fn = act_grad.dropout_grad
    return lambda: fn(g1, m1, dx1, ratio, threads)
