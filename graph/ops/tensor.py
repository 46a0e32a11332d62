"""Tensor and shape ops: data movement, shape arithmetic, constants and casts.

Inputs that decide an output shape (Reshape's ``shape``, Slice's bounds, …) are read with
``ctx.const``: a graph input there raises ``NeedsValue`` and the Session compiles with the value
known, so no shape is ever guessed. Symbolic dims (strings) flow through where the output dim is
a plain copy; where it would need arithmetic on an unknown dim, a fresh symbolic name is made up
(the Session always re-infers with concrete shapes before planning).
"""
from __future__ import annotations

import math
import zlib

import numpy as np

from ..errors import InputError, ModelError
from ..ir import TensorType
from .base import REQUIRED, TRAINING_DOMAIN, Op, register
from .elementwise import broadcast_shapes

INT64_MAX = np.iinfo(np.int64).max


# ---- helpers -------------------------------------------------------------------------------
def _contiguous(a):
    """C-contiguous copy when needed; unlike np.ascontiguousarray, keeps 0-d arrays 0-d."""
    return a if a.flags.c_contiguous else a.copy(order="C")


def _is_int(d) -> bool:
    return isinstance(d, (int, np.integer))


def _fresh(ctx, k: int) -> str:
    """A symbolic dim name for an output dim that depends on unknown dims."""
    return f"{ctx.node.name}_d{k}"


def _prod(dims):
    """Product of dims, or None when any of them is symbolic."""
    n = 1
    for d in dims:
        if not _is_int(d):
            return None
        n *= int(d)
    return n


def _axis(ctx, axis: int, rank: int, what: str = "axis") -> int:
    """Normalize a possibly negative axis into [0, rank); ShapeError when out of range."""
    axis = int(axis)
    ctx.check(-rank <= axis < rank, f"{what} {axis} is out of range for rank {rank} "
                                    f"(expected {-rank}..{rank - 1})")
    return axis + rank if axis < 0 else axis


def _axes(ctx, axes, rank: int, what: str = "axes") -> list:
    out = [_axis(ctx, a, rank, what) for a in np.asarray(axes).reshape(-1).tolist()]
    ctx.check(len(set(out)) == len(out), f"{what} {list(axes)} has repeated axes")
    return out


def _ints(ctx, i: int, what: str) -> list:
    """Constant integer input ``i`` as a Python list (1-D)."""
    v = np.asarray(ctx.const(i, what))
    ctx.check(v.dtype.kind in "iu", f"{what} (input {i}) must be an integer tensor, got {v.dtype}")
    ctx.check(v.ndim <= 1, f"{what} (input {i}) must be 1-D, got shape {v.shape}")
    return [int(x) for x in v.reshape(-1)]


def _same_dtype(ctx, idx, what="inputs"):
    dts = {ctx.dtype(i) for i in idx if ctx.has(i)}
    ctx.check(len(dts) <= 1, f"{what} must share one dtype, got {sorted(str(d) for d in dts)}")


# ---- views ---------------------------------------------------------------------------------
@register
class Identity(Op):
    view = True

    def infer(self, ctx):
        return [ctx.type(0)]

    def compute(self, node, inputs):
        return [inputs[0]]


@register
class Flatten(Op):
    attrs = {"axis": 1}
    view = True

    def infer(self, ctx):
        shape = ctx.shape(0)
        r = len(shape)
        axis = int(ctx.attrs["axis"])
        ctx.check(-r <= axis <= r, f"axis {axis} is out of range for rank {r} "
                                   f"(expected {-r}..{r})")
        axis = axis + r if axis < 0 else axis
        def merged(dims, k):
            """Product of dims; a lone symbolic dim (e.g. the batch "N") keeps its name."""
            if len(dims) == 1:
                return dims[0]
            p = _prod(dims)
            return p if p is not None else _fresh(ctx, k)
        return [TensorType(ctx.dtype(0), (merged(shape[:axis], 0), merged(shape[axis:], 1)))]

    def compute(self, node, inputs):
        x = inputs[0]
        axis = node.attrs["axis"]
        axis = axis + x.ndim if axis < 0 else axis
        return [x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))]


def _reshape_target(in_shape, target, allowzero, fail) -> tuple:
    """ONNX Reshape's output shape: 0 copies the input dim (unless allowzero), -1 is inferred."""
    out = []
    for k, t in enumerate(target):
        if t == 0 and not allowzero:
            if k >= len(in_shape):
                fail(f"shape {target}: 0 at position {k} copies a dim the input "
                     f"{tuple(in_shape)} does not have")
            out.append(in_shape[k])
        elif t < -1:
            fail(f"shape {target} has an invalid dim {t}")
        else:
            out.append(t)
    if out.count(-1) > 1:
        fail(f"shape {target} has more than one -1")
    if allowzero and 0 in target and -1 in target:
        fail(f"shape {target}: -1 together with 0 is ambiguous when allowzero=1")
    total = _prod(in_shape)
    known = _prod([d for d in out if d != -1])
    if total is None or known is None:
        return tuple(out)  # symbolic: resolved when shapes are concrete
    if -1 in out:
        if known == 0 or total % known:
            fail(f"cannot reshape {total} elements {tuple(in_shape)} into {target}")
        out[out.index(-1)] = total // known
    elif known != total:
        fail(f"cannot reshape {total} elements {tuple(in_shape)} into {target} "
             f"({known} elements)")
    return tuple(out)


@register
class Reshape(Op):
    attrs = {"allowzero": 0}
    num_inputs = (2, 2)
    view = True

    def infer(self, ctx):
        target = _ints(ctx, 1, "shape")
        out = _reshape_target(ctx.shape(0), target, ctx.attrs["allowzero"], ctx.fail)
        out = tuple(d if d != -1 else _fresh(ctx, k) for k, d in enumerate(out))
        return [TensorType(ctx.dtype(0), out)]

    def compute(self, node, inputs):
        x, target = inputs

        def fail(msg):
            raise ValueError(msg)
        shape = _reshape_target(x.shape, [int(t) for t in target.reshape(-1)],
                                node.attrs["allowzero"], fail)
        return [x.reshape(shape)]


@register
class Squeeze(Op):
    num_inputs = (1, 2)
    view = True

    def _out(self, shape, axes):
        return tuple(d for k, d in enumerate(shape) if k not in axes)

    def infer(self, ctx):
        shape = ctx.shape(0)
        if ctx.has(1):
            axes = _axes(ctx, _ints(ctx, 1, "axes"), len(shape))
            for a in axes:
                ctx.check(not _is_int(shape[a]) or shape[a] == 1,
                          f"cannot squeeze axis {a} of size {shape[a]} (shape {shape})")
        else:
            axes = [k for k, d in enumerate(shape) if _is_int(d) and d == 1]
        return [TensorType(ctx.dtype(0), self._out(shape, axes))]

    def compute(self, node, inputs):
        x = inputs[0]
        if len(inputs) < 2 or inputs[1] is None:
            return [x.reshape(tuple(d for d in x.shape if d != 1))]
        axes = [int(a) % x.ndim for a in inputs[1].reshape(-1)]
        return [x.reshape(self._out(x.shape, axes))]


@register
class Unsqueeze(Op):
    num_inputs = (2, 2)
    view = True

    @staticmethod
    def _out(shape, axes):
        out, it = [], iter(shape)
        for k in range(len(shape) + len(axes)):
            out.append(1 if k in axes else next(it))
        return tuple(out)

    def infer(self, ctx):
        shape = ctx.shape(0)
        raw = _ints(ctx, 1, "axes")
        axes = _axes(ctx, raw, len(shape) + len(raw))
        return [TensorType(ctx.dtype(0), self._out(shape, axes))]

    def compute(self, node, inputs):
        x, raw = inputs
        raw = raw.reshape(-1)
        r = x.ndim + len(raw)
        return [x.reshape(self._out(x.shape, [int(a) % r for a in raw]))]


# ---- data movement -------------------------------------------------------------------------
@register
class Transpose(Op):
    attrs = {"perm": None}

    def infer(self, ctx):
        shape = ctx.shape(0)
        perm = ctx.attrs["perm"]
        if perm is None:
            perm = list(range(len(shape)))[::-1]
        perm = [int(p) for p in perm]
        ctx.check(sorted(perm) == list(range(len(shape))),
                  f"perm {perm} is not a permutation of the {len(shape)} axes")
        ctx.node.attrs["perm"] = perm
        return [TensorType(ctx.dtype(0), tuple(shape[p] for p in perm))]

    def export(self, ctx, node, inputs, outputs, attrs):
        """The reversed axes are ONNX's default ``perm`` and are left out."""
        perm, rank = attrs.get("perm"), ctx.rank(inputs[0])
        if perm is not None and rank is not None and list(perm) == list(range(rank))[::-1]:
            attrs.pop("perm")
        super().export(ctx, node, inputs, outputs, attrs)

    def compute(self, node, inputs):
        perm = node.attrs["perm"]
        return [_contiguous(np.transpose(inputs[0], perm))]


@register
class Concat(Op):
    attrs = {"axis": REQUIRED}
    num_inputs = (1, None)

    def infer(self, ctx):
        shapes = [ctx.shape(i) for i in range(ctx.n_inputs)]
        _same_dtype(ctx, range(ctx.n_inputs))
        r = len(shapes[0])
        ctx.check(r > 0, "cannot concatenate scalars")
        ctx.check(all(len(s) == r for s in shapes), f"inputs have different ranks {shapes}")
        axis = _axis(ctx, ctx.attrs["axis"], r)
        out = []
        for k in range(r):
            dims = [s[k] for s in shapes]
            if k == axis:
                ints = [d for d in dims if _is_int(d)]
                total = int(sum(ints)) if len(ints) == len(dims) else _fresh(ctx, k)
                out.append(total)
            else:
                ints = {int(d) for d in dims if _is_int(d)}
                ctx.check(len(ints) <= 1, f"inputs differ in dim {k} (not the concat axis "
                                          f"{axis}): {shapes}")
                out.append(ints.pop() if ints else dims[0])
        return [TensorType(ctx.dtype(0), tuple(out))]

    def compute(self, node, inputs):
        return [np.concatenate(inputs, axis=node.attrs["axis"])]


def _split_sizes(dim, split, n_out, num_outputs, fail) -> list:
    if split is not None:
        if len(split) != n_out:
            fail(f"split {split} has {len(split)} entries for {n_out} outputs")
        if any(s < 0 for s in split):
            fail(f"split {split} has negative sizes")
        if _is_int(dim) and sum(split) != dim:
            fail(f"split {split} sums to {sum(split)}, but the axis has size {dim}")
        return list(split)
    if not _is_int(dim):
        return None
    if num_outputs is None:
        num_outputs = n_out  # neither given (old opsets): as many parts as outputs
    if num_outputs != n_out:
        fail(f"num_outputs={num_outputs} but the node has {n_out} outputs")
    if num_outputs < 1:
        fail(f"num_outputs={num_outputs} must be positive")
    chunk = -(-dim // num_outputs)  # ceil: only the last part may be smaller
    last = dim - chunk * (num_outputs - 1)
    if last < 0:
        fail(f"cannot split size {dim} into {num_outputs} parts of {chunk} and a smaller last "
             f"part")
    return [chunk] * (num_outputs - 1) + [last]


@register
class Split(Op):
    attrs = {"axis": 0, "num_outputs": None}
    num_inputs = (1, 2)
    num_outputs = (1, None)

    def infer(self, ctx):
        shape = ctx.shape(0)
        axis = _axis(ctx, ctx.attrs["axis"], len(shape))
        split = _ints(ctx, 1, "split") if ctx.has(1) else None
        n_out = len(ctx.node.outputs)
        sizes = _split_sizes(shape[axis], split, n_out, ctx.attrs["num_outputs"], ctx.fail)
        out = []
        for k in range(n_out):
            s = list(shape)
            s[axis] = sizes[k] if sizes is not None else _fresh(ctx, k)
            out.append(TensorType(ctx.dtype(0), tuple(s)))
        return out

    def export(self, ctx, node, inputs, outputs, attrs):
        """From opset 18 ONNX takes ``split`` or ``num_outputs``, never both; before it splits
        equally only, so uneven sizes are spelled out as a ``split`` input."""
        has_split = len(inputs) > 1 and bool(inputs[1])
        n_out = len(outputs)
        if ctx.opset >= 18:
            if has_split:
                attrs.pop("num_outputs", None)
            elif attrs.get("num_outputs") is None:
                attrs["num_outputs"] = n_out
            return super().export(ctx, node, inputs, outputs, attrs)
        attrs.pop("num_outputs", None)
        t = ctx.types.get(inputs[0])
        if not has_split and n_out > 1 and t is not None:
            dim = t.shape[int(attrs.get("axis", 0)) % max(t.rank, 1)]
            if _is_int(dim):
                chunk = -(-int(dim) // n_out)
                sizes = [chunk] * (n_out - 1) + [int(dim) - chunk * (n_out - 1)]
                if len(set(sizes)) > 1:
                    inputs = [inputs[0], ctx.const(f"{node.name}_split",
                                                   np.array(sizes, np.int64))]
        super().export(ctx, node, inputs, outputs, attrs)

    def compute(self, node, inputs):
        x = inputs[0]
        axis = node.attrs["axis"] % x.ndim

        def fail(msg):
            raise ValueError(msg)
        split = None if len(inputs) < 2 or inputs[1] is None else [int(s) for s in inputs[1].reshape(-1)]
        sizes = _split_sizes(x.shape[axis], split, len(node.outputs),
                             node.attrs["num_outputs"], fail)
        bounds = np.cumsum([0] + sizes)
        idx = [slice(None)] * x.ndim
        outs = []
        for a, b in zip(bounds[:-1], bounds[1:]):
            idx[axis] = slice(int(a), int(b))
            outs.append(_contiguous(x[tuple(idx)]))
        return outs


def _slice_plan(shape, starts, ends, axes, steps, fail):
    """Python slices per axis and the output shape, with ONNX's clamping rules."""
    r = len(shape)
    if axes is None:
        axes = list(range(len(starts)))
    if steps is None:
        steps = [1] * len(starts)
    if not (len(starts) == len(ends) == len(axes) == len(steps)):
        fail(f"starts {starts}, ends {ends}, axes {axes}, steps {steps} differ in length")
    slices = [slice(None)] * r
    out = list(shape)
    seen = set()
    for s, e, a, st in zip(starts, ends, axes, steps):
        if not -r <= a < r:
            fail(f"axis {a} is out of range for rank {r}")
        a = a % r
        if a in seen:
            fail(f"axes {axes} has repeated axes")
        seen.add(a)
        if st == 0:
            fail("steps must not be 0")
        dim = shape[a]
        if not _is_int(dim):
            if s == 0 and e >= INT64_MAX // 2 and st == 1:
                continue  # whole axis
            out[a] = None
            continue
        s = s + dim if s < 0 else s
        e = e + dim if e < 0 else e
        if st > 0:
            s, e = min(max(s, 0), dim), min(max(e, 0), dim)
            n = max(0, -(-(e - s) // st))
        else:
            s, e = min(max(s, 0), dim - 1), min(max(e, -1), dim - 1)
            n = max(0, -(-(s - e) // -st))
        slices[a] = slice(s, e if e >= 0 else None, st)
        out[a] = n
    return tuple(slices), out


@register
class Slice(Op):
    num_inputs = (3, 5)

    def infer(self, ctx):
        starts, ends = _ints(ctx, 1, "starts"), _ints(ctx, 2, "ends")
        axes = _ints(ctx, 3, "axes") if ctx.has(3) else None
        steps = _ints(ctx, 4, "steps") if ctx.has(4) else None
        _, out = _slice_plan(ctx.shape(0), starts, ends, axes, steps, ctx.fail)
        out = tuple(d if d is not None else _fresh(ctx, k) for k, d in enumerate(out))
        return [TensorType(ctx.dtype(0), out)]

    def compute(self, node, inputs):
        x = inputs[0]
        lists = [None if v is None else [int(t) for t in v.reshape(-1)] for v in inputs[1:5]]
        lists += [None] * (4 - len(lists))

        def fail(msg):
            raise ValueError(msg)
        slices, _ = _slice_plan(x.shape, *lists, fail)
        return [_contiguous(x[slices])]


def _pad_plan(rank, pads, axes, fail):
    """Per-axis (before, after) pad amounts; negative amounts crop."""
    if axes is None:
        axes = list(range(rank))
    if len(pads) != 2 * len(axes):
        fail(f"pads {pads} must have 2 × {len(axes)} entries (one begin and end per axis)")
    width = [[0, 0] for _ in range(rank)]
    seen = set()
    for k, a in enumerate(axes):
        if not -rank <= a < rank:
            fail(f"axis {a} is out of range for rank {rank}")
        a %= rank
        if a in seen:
            fail(f"axes {axes} has repeated axes")
        seen.add(a)
        width[a] = [pads[k], pads[k + len(axes)]]
    return width


@register
class Pad(Op):
    attrs = {"mode": "constant"}
    num_inputs = (2, 4)
    MODES = {"constant": "constant", "reflect": "reflect", "edge": "edge", "wrap": "wrap"}

    def infer(self, ctx):
        shape = ctx.shape(0)
        mode = ctx.attrs["mode"]
        mode = mode.decode() if isinstance(mode, bytes) else mode
        ctx.check(mode in self.MODES, f"mode {mode!r} is not one of {sorted(self.MODES)}")
        ctx.node.attrs["mode"] = mode
        axes = _ints(ctx, 3, "axes") if ctx.has(3) else None
        width = _pad_plan(len(shape), _ints(ctx, 1, "pads"), axes, ctx.fail)
        if ctx.has(2):
            cv = ctx.type(2)
            ctx.check(cv.size == 1, f"constant_value must hold one element, got shape {cv.shape}")
        out = []
        for k, (d, (b, e)) in enumerate(zip(shape, width)):
            if not _is_int(d):
                out.append(d if b == e == 0 else _fresh(ctx, k))
                continue
            n = d + b + e
            ctx.check(n >= 0, f"pads {width[k]} on axis {k} of size {d} give a negative size")
            if mode in ("reflect", "edge", "wrap") and (b > 0 or e > 0):
                ctx.check(d + min(b, 0) + min(e, 0) > 0,
                          f"mode {mode!r} cannot pad axis {k}, which is empty after cropping")
            out.append(n)
        return [TensorType(ctx.dtype(0), tuple(out))]

    def export(self, ctx, node, inputs, outputs, attrs):
        """Mode ``wrap`` needs opset 19; before 18 an ``axes`` input is spelled out as full
        pads."""
        mode = attrs.get("mode", "constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        if mode == "wrap" and ctx.opset < 19:
            raise ModelError(f"{node}: Pad mode 'wrap' needs opset ≥ 19 (exporting at "
                             f"{ctx.opset})")
        if ctx.opset >= 18 or len(inputs) < 4 or not inputs[3]:
            return super().export(ctx, node, inputs, outputs, attrs)
        pads, axes, rank = ctx.value(inputs[1]), ctx.value(inputs[3]), ctx.rank(inputs[0])
        if pads is None or axes is None or rank is None:
            raise ModelError(f"{node}: Pad with axes computed at run time needs opset ≥ 18 "
                             f"(exporting at {ctx.opset})")
        pads, axes = [int(p) for p in pads.reshape(-1)], [int(a) % rank for a in axes.reshape(-1)]
        full = [0] * (2 * rank)
        for k, a in enumerate(axes):
            full[a], full[a + rank] = pads[k], pads[k + len(axes)]
        inputs = [inputs[0], ctx.const(f"{node.name}_pads", np.array(full, np.int64))] \
            + inputs[2:3]
        super().export(ctx, node, inputs, outputs, attrs)

    def compute(self, node, inputs):
        x, pads = inputs[0], [int(p) for p in inputs[1].reshape(-1)]
        axes = None if len(inputs) < 4 or inputs[3] is None else \
            [int(a) for a in inputs[3].reshape(-1)]

        def fail(msg):
            raise ValueError(msg)
        width = _pad_plan(x.ndim, pads, axes, fail)
        crop, grow = [], []
        for d, (b, e) in zip(x.shape, width):
            # output j holds input j - b: the input lands on [b, b + d) clipped to the output,
            # which a crop deeper than the axis leaves empty (all padding, as onnxruntime)
            n = d + b + e
            lo, hi = min(max(b, 0), n), min(max(b + d, 0), n)
            hi = max(hi, lo)
            crop.append(slice(lo - b, hi - b))
            grow.append((lo, n - hi))
        x = x[tuple(crop)]
        mode = node.attrs["mode"]
        if mode == "constant":
            cv = inputs[2] if len(inputs) > 2 and inputs[2] is not None else 0
            cv = np.asarray(cv).reshape(-1)[0] if np.ndim(cv) else cv
            return [np.pad(x, grow, mode="constant", constant_values=cv)]
        return [np.pad(x, grow, mode=self.MODES[mode])]


@register
class Gather(Op):
    """ONNX Gather. ``padding_idx`` is ember's own (set by ``nn.Embedding``, never exported): the
    row of the data it names (≥ 0; -1: none) gets no gradient, as torch's ``padding_idx``."""
    attrs = {"axis": 0, "padding_idx": -1}
    num_inputs = (2, 2)

    def infer(self, ctx):
        shape, ishape = ctx.shape(0), ctx.shape(1)
        ctx.check(ctx.dtype(1).kind in "iu", f"indices must be integers, got {ctx.dtype(1)}")
        ctx.check(len(shape) > 0, "cannot gather from a scalar")
        axis = _axis(ctx, ctx.attrs["axis"], len(shape))
        _check_padding_idx(ctx, shape[axis])
        idx = ctx.maybe_const(1)
        dim = shape[axis]
        if idx is not None and _is_int(dim) and np.size(idx):
            lo, hi = int(np.min(idx)), int(np.max(idx))
            ctx.check(-dim <= lo and hi < dim, f"indices [{lo}..{hi}] are out of range for "
                                               f"axis {axis} of size {dim} (shape {shape})")
        return [TensorType(ctx.dtype(0), tuple(shape[:axis]) + tuple(ishape)
                           + tuple(shape[axis + 1:]))]

    def compute(self, node, inputs):
        x, idx = inputs
        axis = node.attrs["axis"] % x.ndim
        idx = np.asarray(idx, dtype=np.int64)
        dim = x.shape[axis]
        if idx.size and (idx.min() < -dim or idx.max() >= dim):
            raise InputError(f"{node}: indices [{idx.min()}..{idx.max()}] are out of range "
                             f"for axis {axis} of size {dim}")
        return [np.take(x, np.where(idx < 0, idx + dim, idx), axis=axis)]

    def export(self, ctx, node, inputs, outputs, attrs):
        attrs.pop("padding_idx", None)
        ctx.add(node.op_type, inputs, outputs, node.name, attrs, node)


def _check_padding_idx(ctx, dim):
    p = ctx.attrs.get("padding_idx", -1)
    ctx.check(isinstance(p, (int, np.integer)) and p >= -1 and (not _is_int(dim) or p < dim),
              f"padding_idx must be -1 (none) or a row in [0, {dim}), got {p!r}")


@register
class Expand(Op):
    num_inputs = (2, 2)

    def infer(self, ctx):
        target = _ints(ctx, 1, "shape")
        ctx.check(all(t >= 0 for t in target), f"shape {target} has negative dims")
        return [TensorType(ctx.dtype(0), broadcast_shapes(ctx, [ctx.shape(0), tuple(target)]))]

    def compute(self, node, inputs):
        x, target = inputs
        out = np.broadcast_shapes(x.shape, tuple(int(t) for t in target.reshape(-1)))
        return [np.array(np.broadcast_to(x, out))]

    def gradient(self, node, grads, g):
        """The adjoint of broadcasting: dY summed back down to X's shape."""
        dy = grads[0]
        return [None if dy is None else g.sum_to(dy, g.shape(node.inputs[0])), None]


@register
class Tile(Op):
    num_inputs = (2, 2)

    def infer(self, ctx):
        shape = ctx.shape(0)
        reps = _ints(ctx, 1, "repeats")
        ctx.check(len(reps) == len(shape), f"repeats {reps} must have one entry per axis of "
                                           f"shape {shape}")
        ctx.check(all(r >= 0 for r in reps), f"repeats {reps} must not be negative")
        out = tuple(d * r if _is_int(d) else (d if r == 1 else _fresh(ctx, k))
                    for k, (d, r) in enumerate(zip(shape, reps)))
        return [TensorType(ctx.dtype(0), out)]

    def compute(self, node, inputs):
        return [np.tile(inputs[0], tuple(int(r) for r in inputs[1].reshape(-1)))]

    def gradient(self, node, grads, g):
        """dY seen as (r₀, d₀, r₁, d₁, …) — copy k of axis i is block k — summed over the
        copies. The repeats must be constant (they fix the shapes anyway)."""
        dy, reps = grads[0], g.value(node.inputs[1])
        if dy is None or reps is None:
            return [None, None]
        dims = g.shape(node.inputs[0])
        reps = [int(r) for r in np.asarray(reps).reshape(-1)]
        split = [v for r, d in zip(reps, dims) for v in (r, d)]
        blocks = g.op("Reshape", [dy, g.const(np.array(split, np.int64), "tile_blocks")])
        axes = g.const(np.arange(0, 2 * len(dims), 2, dtype=np.int64), "tile_axes")
        return [g.op("ReduceSum", [blocks, axes], keepdims=0), None]


@register
class Where(Op):
    num_inputs = (3, 3)

    def infer(self, ctx):
        ctx.check(ctx.dtype(0) == np.bool_, f"condition must be bool, got {ctx.dtype(0)}")
        _same_dtype(ctx, (1, 2), "X and Y")
        return [TensorType(ctx.dtype(1), broadcast_shapes(
            ctx, [ctx.shape(0), ctx.shape(1), ctx.shape(2)]))]

    def compute(self, node, inputs):
        c, x, y = inputs
        return [np.where(c, x, y).astype(x.dtype, copy=False)]


class _Compare(Op):
    """Broadcasting comparison giving bool."""
    num_inputs = (2, 2)
    fn = None

    def infer(self, ctx):
        _same_dtype(ctx, (0, 1), "A and B")
        return [TensorType(np.bool_, broadcast_shapes(ctx, [ctx.shape(0), ctx.shape(1)]))]

    def compute(self, node, inputs):
        return [np.asarray(type(self).fn(inputs[0], inputs[1]), dtype=np.bool_)]


@register
class Equal(_Compare):
    fn = np.equal


@register
class Less(_Compare):
    fn = np.less


@register
class Greater(_Compare):
    fn = np.greater


@register
class LessOrEqual(_Compare):
    fn = np.less_equal


@register
class GreaterOrEqual(_Compare):
    fn = np.greater_equal


@register
class Not(Op):
    def infer(self, ctx):
        ctx.check(ctx.dtype(0) == np.bool_, f"Not takes bool, got {ctx.dtype(0)}")
        return [ctx.type(0)]

    def compute(self, node, inputs):
        return [np.logical_not(inputs[0])]


def _range_len(start, limit, delta) -> int:
    return max(int(math.ceil((limit - start) / delta)), 0)


@register
class Range(Op):
    num_inputs = (3, 3)

    def infer(self, ctx):
        _same_dtype(ctx, (0, 1, 2), "start, limit and delta")
        vals = []
        for i, what in enumerate(("start", "limit", "delta")):
            v = np.asarray(ctx.const(i, what))
            ctx.check(v.size == 1, f"{what} must be a scalar, got shape {v.shape}")
            vals.append(v.reshape(-1)[0].item())
        ctx.check(vals[2] != 0, "delta must not be 0")
        return [TensorType(ctx.dtype(0), (_range_len(*vals),))]

    def compute(self, node, inputs):
        start, limit, delta = (np.asarray(v).reshape(-1)[0] for v in inputs)
        n = _range_len(start.item(), limit.item(), delta.item())
        dtype = np.asarray(inputs[0]).dtype
        return [(start + np.arange(n, dtype=np.int64).astype(dtype) * delta).astype(dtype)]


# ---- shapes and constants ------------------------------------------------------------------
@register
class Shape(Op):
    attrs = {"start": 0, "end": None}

    @staticmethod
    def _bounds(rank, start, end):
        start = min(max(start + rank if start < 0 else start, 0), rank)
        end = rank if end is None else end
        end = min(max(end + rank if end < 0 else end, 0), rank)
        return start, max(end, start)

    def infer(self, ctx):
        shape = ctx.shape(0)
        s, e = self._bounds(len(shape), int(ctx.attrs["start"]),
                            None if ctx.attrs["end"] is None else int(ctx.attrs["end"]))
        dims = shape[s:e]
        if all(_is_int(d) for d in dims) and ctx.node.outputs and ctx.node.outputs[0]:
            # A static shape is a compile-time constant even when the tensor is not: publish
            # it so Shape→Gather→Concat→Reshape chains fold.
            ctx.consts[ctx.node.outputs[0]] = np.array(dims, dtype=np.int64).reshape(-1)
        return [TensorType(np.int64, (e - s,))]

    def compute(self, node, inputs):
        x = inputs[0]
        s, e = self._bounds(x.ndim, node.attrs["start"], node.attrs["end"])
        return [np.array(x.shape[s:e], dtype=np.int64).reshape(-1)]


@register
class Size(Op):
    def infer(self, ctx):
        n = _prod(ctx.shape(0))
        if n is not None and ctx.node.outputs[0]:
            ctx.consts[ctx.node.outputs[0]] = np.array(n, dtype=np.int64)
        return [TensorType(np.int64, ())]

    def compute(self, node, inputs):
        return [np.array(inputs[0].size, dtype=np.int64)]


def _constant_value(attrs):
    """The one value attribute Constant carries, as a numpy array (None when absent)."""
    given = {k: v for k, v in attrs.items() if v is not None}
    if len(given) != 1:
        return None, sorted(given)
    (k, v), = given.items()
    if k == "value":
        return np.asarray(v), None
    if k == "value_float":
        return np.array(v, dtype=np.float32), None
    if k == "value_floats":
        return np.array(list(v), dtype=np.float32).reshape(-1), None
    if k == "value_int":
        return np.array(v, dtype=np.int64), None
    if k == "value_ints":
        return np.array(list(v), dtype=np.int64).reshape(-1), None
    return None, [k]


@register
class Constant(Op):
    attrs = {"value": None, "value_float": None, "value_floats": None, "value_int": None,
             "value_ints": None, "value_string": None, "value_strings": None,
             "sparse_value": None}
    num_inputs = (0, 0)

    def infer(self, ctx):
        v, bad = _constant_value(ctx.attrs)
        if v is None:
            ctx.fail(f"needs exactly one supported value attribute (value, value_float(s), "
                     f"value_int(s)), got {bad}")
        return [TensorType(v.dtype, v.shape)]

    def export(self, ctx, node, inputs, outputs, attrs):
        """Exactly one value attribute; a sparse value is written dense (as it was imported)."""
        given = {k: v for k, v in attrs.items() if v is not None}
        if "sparse_value" in given:
            given["value"] = np.asarray(given.pop("sparse_value"))
        if len(given) != 1:
            raise ModelError(f"{node}: a Constant needs exactly one value attribute, got "
                             f"{sorted(given)}")
        ctx.add("Constant", [], outputs, node.name, given, node)

    def compute(self, node, inputs):
        return [_constant_value(node.attrs)[0]]


@register
class ConstantOfShape(Op):
    attrs = {"value": None}

    @staticmethod
    def _fill(attrs):
        v = attrs["value"]
        return np.zeros(1, np.float32) if v is None else np.asarray(v).reshape(-1)

    def infer(self, ctx):
        fill = self._fill(ctx.attrs)
        ctx.check(fill.size == 1, f"value must hold one element, got {fill.size}")
        shape = _ints(ctx, 0, "shape")
        ctx.check(all(d >= 0 for d in shape), f"shape {shape} has negative dims")
        return [TensorType(fill.dtype, tuple(shape))]

    def export(self, ctx, node, inputs, outputs, attrs):
        """ONNX wants the fill value as a one-element 1-D tensor."""
        if attrs.get("value") is not None:
            attrs["value"] = np.asarray(attrs["value"]).reshape(-1)[:1]
        super().export(ctx, node, inputs, outputs, attrs)

    def compute(self, node, inputs):
        fill = self._fill(node.attrs)
        return [np.full(tuple(int(d) for d in inputs[0].reshape(-1)), fill[0], dtype=fill.dtype)]


# ONNX TensorProto enum → numpy dtype name, for ``to`` given as an int.
_ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32",
                7: "int64", 9: "bool", 10: "float16", 11: "float64", 12: "uint32", 13: "uint64"}


def _cast_dtype(to):
    if isinstance(to, (int, np.integer)):
        to = _ONNX_DTYPES.get(int(to), f"onnx type {int(to)}")
    return np.dtype(to)


@register
class Cast(Op):
    attrs = {"to": REQUIRED, "saturate": 1, "round_mode": "up"}

    def infer(self, ctx):
        try:
            dtype = _cast_dtype(ctx.attrs["to"])
        except TypeError:
            ctx.fail(f"cannot cast to {ctx.attrs['to']!r}")
        ctx.check(dtype.kind in "biuf", f"cannot cast to {dtype} (not supported)")
        ctx.node.attrs["to"] = dtype.name
        return [TensorType(dtype, ctx.shape(0))]

    def export(self, ctx, node, inputs, outputs, attrs):
        """``to`` is held as a numpy dtype name; ONNX wants its TensorProto type code."""
        attrs["to"] = ctx.tensor_type_code(attrs.get("to"), node)
        super().export(ctx, node, inputs, outputs, attrs)

    def compute(self, node, inputs):
        dtype = _cast_dtype(node.attrs["to"])
        x = inputs[0]
        with np.errstate(invalid="ignore", over="ignore"):
            return [np.asarray(x.astype(dtype))]


@register
class CastLike(Op):
    attrs = {"saturate": 1, "round_mode": "up"}
    num_inputs = (2, 2)

    def infer(self, ctx):
        return [TensorType(ctx.dtype(1), ctx.shape(0))]

    def compute(self, node, inputs):
        with np.errstate(invalid="ignore", over="ignore"):
            return [np.asarray(inputs[0].astype(inputs[1].dtype))]


# ---- Dropout -------------------------------------------------------------------------------
# Dropout's training mask is a pure function of (seed, step, element index): the same
# counter-based hash as kernels/dropout_hash.h and kernels/act_grad.pyx's dropout_forward, here
# vectorised in numpy, so the reference and the kernel draw bit-identical masks and a run can be
# repeated (or resumed from a checkpoint) from the seed and the step alone.
_U64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15      # 2⁶⁴/φ, splitmix64's increment


def _splitmix64(z: int) -> int:
    z &= _U64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _U64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _U64
    return z ^ (z >> 31)


def _lowbias32(x):
    """C. Wellons' lowbias32 on a uint32 array (products wrap mod 2³², as in C)."""
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(0x7FEB352D)
    x = x ^ (x >> np.uint32(15))
    x = x * np.uint32(0x846CA68B)
    return x ^ (x >> np.uint32(16))


def dropout_seed(node) -> int:
    """The node's ``seed`` attribute as an unsigned 64-bit int, or (absent) a stable hash of
    its name — the seed the kernel and the reference both use."""
    seed = node.attrs.get("seed")
    return int(seed) & _U64 if seed is not None else zlib.crc32(node.name.encode())


def dropout_keep(size: int, ratio: float, seed: int, step: int, offset: int = 0) -> np.ndarray:
    """The keep-mask (bool, ``size`` elements) Dropout draws at ``step`` for ``seed``, for the
    elements [offset, offset + size) of the tensor (``offset``: a rank's rows of a global
    batch): element i is kept when the top 24 bits of lowbias32(lowbias32(i_lo ^ k1) + (k2 ^ i_hi)) reach
    ratio·2²⁴ (ratio rounded to float32 first, as the kernel takes it), with
    (k2, k1) = splitmix64(splitmix64(seed) ^ step·golden)."""
    key = _splitmix64(_splitmix64(int(seed)) ^ ((int(step) * _GOLDEN) & _U64))
    k1, k2 = np.uint32(key & 0xFFFFFFFF), key >> 32
    threshold = int(float(np.float32(ratio)) * 16777216.0)
    i = np.arange(offset, offset + size, dtype=np.uint64)
    salt = (np.uint64(k2) ^ (i >> np.uint64(32))).astype(np.uint32)
    h = _lowbias32(_lowbias32(i.astype(np.uint32) ^ k1) + salt)
    return (h >> np.uint32(8)) >= np.uint32(threshold) if threshold < (1 << 24) else \
        np.zeros(size, np.bool_)


def dropout_scale(ratio: float, dtype) -> np.generic:
    """1/(1 − ratio) (0 when ratio = 1) as the kernel computes it: in double from the float32
    ratio, rounded once to the data's dtype."""
    r = float(np.float32(ratio)) if np.dtype(dtype) == np.float32 else float(ratio)
    return np.dtype(dtype).type(1.0 / (1.0 - r) if r < 1.0 else 0.0)


@register
class Dropout(Op):
    """Inference: identity with an all-True mask. ``training_mode`` true: the mask of
    ``dropout_keep(size, ratio, seed, step)``. ember extension: an optional 4th input ``step``
    (an integer scalar, the training step — graph/TRAINING.md §1) makes the mask a function of
    (seed, step), so a restored Trainer draws the same masks as one that never stopped; without
    it each run counts its own steps from 0 (per node, in this process)."""
    attrs = {"seed": None, "offset": 0}
    num_inputs = (1, 4)
    num_outputs = (1, 2)
    foldable = False  # per-node training_mode cannot be seen here; passes remove it instead

    def __init__(self):
        self._runs = {}

    def infer(self, ctx):
        for i, what in ((1, "ratio"), (2, "training_mode"), (3, "step")):
            if ctx.has(i):
                ctx.check(ctx.type(i).size == 1, f"{what} must be a scalar, got "
                                                 f"{ctx.type(i).shape}")
        if ctx.has(3):
            ctx.check(ctx.dtype(3).kind in "iu", f"step (input 3) must be an integer scalar, "
                                                 f"got {ctx.dtype(3)}")
        ratio = ctx.maybe_const(1)
        if ratio is not None:
            r = float(np.asarray(ratio).reshape(-1)[0])
            ctx.check(0.0 <= r <= 1.0, f"ratio {r} must lie in [0, 1]")
        return [ctx.type(0), TensorType(np.bool_, ctx.shape(0))]

    def export_refusal(self, node, graph):
        """Only a constant false ``training_mode`` is exportable: ONNX draws its own mask."""
        if node.input(2):
            value = graph.initializers.get(node.input(2))
            if value is None or bool(np.asarray(value).any()):
                return "runs in training mode (a random mask)"
        return None

    def export(self, ctx, node, inputs, outputs, attrs):
        if len(inputs) > 2:
            inputs[2] = ""   # a constant false training_mode (see export_refusal): the default
        if attrs.get("seed") is None:
            attrs.pop("seed", None)
        super().export(ctx, node, inputs, outputs, attrs)

    def compute(self, node, inputs):
        x = inputs[0]
        ratio = 0.5 if len(inputs) < 2 or inputs[1] is None else \
            float(np.asarray(inputs[1]).reshape(-1)[0])
        training = len(inputs) > 2 and inputs[2] is not None and \
            bool(np.asarray(inputs[2]).reshape(-1)[0])
        if not training or ratio == 0.0:
            return [x, np.ones(x.shape, dtype=np.bool_)]
        if not 0.0 <= ratio <= 1.0:
            raise InputError(f"{node}: ratio {ratio} must lie in [0, 1]")
        seed = dropout_seed(node)
        if len(inputs) > 3 and inputs[3] is not None:
            step = int(np.asarray(inputs[3]).reshape(-1)[0])
        else:
            key = (node.name, seed)
            step = self._runs.get(key, 0)
            self._runs[key] = step + 1
        offset = int(node.attrs.get("offset", 0))
        mask = dropout_keep(x.size, ratio, seed, step, offset).reshape(x.shape)
        scale = dropout_scale(ratio, x.dtype)
        return [(x * np.where(mask, scale, x.dtype.type(0))).astype(x.dtype), mask]


# ---- gradients -------------------------------------------------------------------------------
@register
class DropoutGrad(Op):
    """dX = dY·mask/(1 − ratio) (0 when ratio = 1): the forward's own mask, so the gradient
    matches the mask that run drew. The factor is rounded to dY's dtype first, as the kernel
    does, so both give the same bits."""
    domain = TRAINING_DOMAIN
    attrs = {"ratio": 0.5}
    num_inputs = (2, 2)
    inplace = (0,)

    def infer(self, ctx):
        ctx.check(tuple(ctx.shape(0)) == tuple(ctx.shape(1)),
                  f"expected dY and mask of one shape, got {ctx.shape(0)} and {ctx.shape(1)}")
        ctx.check(ctx.dtype(1) == np.bool_, f"expected a bool mask, got {ctx.dtype(1)}")
        ctx.check(ctx.dtype(0).kind == "f", f"expected a float dY, got {ctx.dtype(0)}")
        r = float(ctx.attrs["ratio"])
        ctx.check(0.0 <= r <= 1.0, f"expected ratio in [0, 1], got {r}")
        return [ctx.type(0)]

    def compute(self, node, inputs):
        dy, mask = inputs
        scale = dropout_scale(float(node.attrs["ratio"]), dy.dtype)
        return [(dy * np.where(mask, scale, dy.dtype.type(0))).astype(dy.dtype)]


@register
class GatherGrad(Op):
    """dX of Gather: zeros of the data's shape (attr ``input_shape``) with every slice of dY
    added into the slice of dX its index names (``np.add.at``): an index read twice gets both
    gradients. The ``padding_idx`` row (≥ 0; -1: none) gets none. An index outside
    [-dim, dim) is an InputError naming the node and the range, never a write."""
    domain = TRAINING_DOMAIN
    num_inputs = (2, 2)
    attrs = {"axis": 0, "input_shape": REQUIRED, "padding_idx": -1}

    def infer(self, ctx):
        shape = tuple(int(d) for d in ctx.attrs["input_shape"])
        ctx.check(len(shape) > 0 and all(d >= 0 for d in shape),
                  f"expected a non-empty, non-negative input_shape, got {list(shape)}")
        axis = _axis(ctx, ctx.attrs["axis"], len(shape))
        _check_padding_idx(ctx, shape[axis])
        ctx.check(ctx.dtype(1).kind in "iu", f"indices must be integers, got {ctx.dtype(1)}")
        ctx.check(ctx.dtype(0).kind == "f", f"expected a float dY, got {ctx.dtype(0)}")
        want = shape[:axis] + tuple(ctx.shape(1)) + shape[axis + 1:]
        dy = tuple(ctx.shape(0))
        ctx.check(len(dy) == len(want) and all(not _is_int(a) or not _is_int(b) or a == b
                                               for a, b in zip(dy, want)),
                  f"expected dY of shape {want} (Gather of {shape} on axis {axis}), got {dy}")
        return [TensorType(ctx.dtype(0), shape)]

    def compute(self, node, inputs):
        dy, idx = inputs
        shape = tuple(int(d) for d in node.attrs["input_shape"])
        axis = node.attrs["axis"] % len(shape)
        dim = shape[axis]
        idx = np.asarray(idx).reshape(-1)
        if idx.size and (idx.min() < -dim or idx.max() >= dim):
            raise InputError(f"{node}: indices [{idx.min()}..{idx.max()}] are out of range "
                             f"for axis {axis} of size {dim}: expected -{dim} ≤ index < {dim}")
        outer, inner = _prod(shape[:axis]), _prod(shape[axis + 1:])
        idx = idx.astype(np.int64)
        rows = np.where(idx < 0, idx + dim, idx)
        src = dy.reshape(outer, idx.size, inner)
        keep = rows != int(node.attrs["padding_idx"])
        dx = np.zeros((outer, dim, inner), dy.dtype)
        np.add.at(dx, (slice(None), rows[keep]), src[:, keep])
        return [dx.reshape(shape)]


def _gather_gradient(self, node, grads, g):
    """GatherGrad: dY scattered (added) back into zeros of the data's shape; no gradient for
    the indices."""
    out = [None] * len(node.inputs)
    if grads[0] is None or not g.needs(0):
        return out
    shape = g.shape(g.input(0))
    out[0] = g.op("GatherGrad", [grads[0], g.input(1)], axis=int(node.attrs["axis"]) % len(shape),
                  input_shape=list(shape), padding_idx=int(node.attrs.get("padding_idx", -1)))
    return out


Gather.gradient = _gather_gradient


def _reshape_back(self, node, grads, g):
    """Views (Reshape, Flatten, Squeeze, Unsqueeze, Identity): dY reshaped to X's shape."""
    out = [None] * len(node.inputs)
    if g.needs(0):
        out[0] = g.reshape(grads[0], g.shape(g.input(0)))
    return out


for _cls in (Identity, Flatten, Reshape, Squeeze, Unsqueeze):
    _cls.gradient = _reshape_back


def _transpose_gradient(self, node, grads, g):
    perm = [int(p) for p in node.attrs["perm"]]
    inverse = [0] * len(perm)
    for k, p in enumerate(perm):
        inverse[p] = k
    return [g.op("Transpose", [grads[0]], perm=inverse)]


Transpose.gradient = _transpose_gradient


def _concat_gradient(self, node, grads, g):
    """dY split back into the inputs' extents along the axis."""
    shapes = [g.shape(i) for i in node.inputs]
    axis = int(node.attrs["axis"]) % len(shapes[0])
    if len(shapes) == 1:
        return [grads[0]]
    sizes = g.const(np.array([s[axis] for s in shapes], np.int64), "split")
    parts = g.op("Split", [grads[0], sizes], num_outputs=len(shapes), axis=axis)
    return [p if g.needs(i) else None for i, p in enumerate(parts)]


Concat.gradient = _concat_gradient


def _pad_gradient(self, node, grads, g):
    """Constant-mode Pad: the gradient is dY with the padding sliced off (and zeros where the
    forward cropped, for negative pads). The pad value gets no gradient."""
    out = [None] * len(node.inputs)
    if not g.needs(0):
        return out
    if node.attrs["mode"] != "constant":
        g.fail(f"Pad mode {node.attrs['mode']!r} has no gradient rule (only 'constant')")
    pads, axes = g.value(g.input(1)), g.value(g.input(3))
    if pads is None or (g.input(3) and axes is None):
        g.fail("Pad's pads and axes must be constants")
    x_shape = g.shape(g.input(0))
    rank = len(x_shape)
    pads = [int(p) for p in np.asarray(pads).reshape(-1)]
    axes = list(range(rank)) if axes is None else [int(a) % rank
                                                    for a in np.asarray(axes).reshape(-1)]
    width = [[0, 0] for _ in range(rank)]
    for k, a in enumerate(axes):
        width[a] = [pads[k], pads[k + len(axes)]]
    dy = grads[0]
    y_shape = g.shape(dy)
    if any(b > 0 or e > 0 for b, e in width):
        starts = [max(b, 0) for b, _ in width]
        ends = [y_shape[k] - max(e, 0) for k, (_, e) in enumerate(width)]
        dy = g.op("Slice", [dy, g.const(np.array(starts, np.int64), "starts"),
                            g.const(np.array(ends, np.int64), "ends")])
    if any(b < 0 or e < 0 for b, e in width):
        grow = [max(-b, 0) for b, _ in width] + [max(-e, 0) for _, e in width]
        dy = g.op("Pad", [dy, g.const(np.array(grow, np.int64), "pads")], mode="constant")
    out[0] = dy
    return out


Pad.gradient = _pad_gradient


@register
class SliceGrad(Op):
    """dX of Slice: zeros of the forward input's shape (attr ``input_shape``) with dY written
    where the forward read (same starts/ends/axes/steps inputs, ONNX's clamping rules)."""
    domain = TRAINING_DOMAIN
    num_inputs = (3, 5)
    attrs = {"input_shape": REQUIRED}

    def infer(self, ctx):
        shape = tuple(int(d) for d in ctx.attrs["input_shape"])
        ctx.check(all(d >= 0 for d in shape), f"expected a non-negative input_shape, got "
                                              f"{list(shape)}")
        starts, ends = _ints(ctx, 1, "starts"), _ints(ctx, 2, "ends")
        axes = _ints(ctx, 3, "axes") if ctx.has(3) else None
        steps = _ints(ctx, 4, "steps") if ctx.has(4) else None
        _, out = _slice_plan(shape, starts, ends, axes, steps, ctx.fail)
        dy = tuple(ctx.shape(0))
        ctx.check(len(dy) == len(shape) and all(not _is_int(a) or a == b
                                                for a, b in zip(dy, out)),
                  f"expected dY of shape {tuple(out)} (Slice of {shape}), got {dy}")
        ctx.check(ctx.dtype(0).kind == "f", f"expected a float dY, got {ctx.dtype(0)}")
        return [TensorType(ctx.dtype(0), shape)]

    def compute(self, node, inputs):
        dy = inputs[0]
        lists = [None if v is None else [int(t) for t in v.reshape(-1)] for v in inputs[1:5]]
        lists += [None] * (4 - len(lists))

        def fail(msg):
            raise ValueError(msg)
        shape = tuple(int(d) for d in node.attrs["input_shape"])
        slices, _ = _slice_plan(shape, *lists, fail)
        dx = np.zeros(shape, dy.dtype)
        dx[slices] = dy
        return [dx]


def _slice_gradient(self, node, grads, g):
    """SliceGrad: dY scattered back into zeros of X's shape. The bounds must be constants
    (they decide the output shape, so they are in any graph that has static shapes)."""
    out = [None] * len(node.inputs)
    if grads[0] is None or not g.needs(0):
        return out
    ins = [grads[0]]
    for i, what in ((1, "starts"), (2, "ends"), (3, "axes"), (4, "steps")):
        if not g.input(i):
            ins.append("")
            continue
        v = g.value(g.input(i))
        if v is None:
            g.fail(f"Slice's {what} must be a constant")
        ins.append(g.const(np.asarray(v, np.int64), what))
    out[0] = g.op("SliceGrad", ins, input_shape=list(g.shape(g.input(0))))
    return out


Slice.gradient = _slice_gradient


def _dropout_gradient(self, node, grads, g):
    """Training mode: DropoutGrad with the forward's mask (added to the node when absent).
    Inference mode (training_mode absent or constant false): the identity."""
    out = [None] * len(node.inputs)
    if grads[0] is None or not g.needs(0):
        return out
    ratio = g.value(g.input(1)) if g.input(1) else np.array(0.5)
    training = g.value(g.input(2)) if g.input(2) else np.array(False)
    if ratio is None or training is None:
        g.fail("Dropout's ratio and training_mode must be constants")
    if not bool(np.asarray(training).reshape(-1)[0]):
        out[0] = grads[0]
        return out
    r = float(np.asarray(ratio).reshape(-1)[0])
    out[0] = g.op("DropoutGrad", [grads[0], g.output(1, "mask")], ratio=r)
    return out


Dropout.gradient = _dropout_gradient


# ---- triangles -------------------------------------------------------------------------------
@register
class Trilu(Op):
    """The upper (``upper=1``) or lower triangle of the last two axes from diagonal ``k`` (an
    optional scalar input, default 0); the rest zero."""
    num_inputs = (1, 2)
    attrs = {"upper": 1}

    def infer(self, ctx):
        t = ctx.type(0)
        ctx.check(t.rank >= 2, f"Trilu takes a tensor of rank ≥ 2, got shape {t.shape}")
        if ctx.has(1):
            k = ctx.type(1)
            ctx.check(k.dtype == np.int64 and _prod(k.shape) in (1, None) and k.rank <= 1,
                      f"k (input 1) must be an int64 scalar, got {k}")
        return [t]

    def compute(self, node, inputs):
        x, k = inputs[0], inputs[1] if len(inputs) > 1 and inputs[1] is not None else 0
        k = int(np.asarray(k).reshape(-1)[0])
        # |k| beyond the matrix is all or nothing; clamping keeps numpy's index arithmetic small
        k = max(min(k, x.shape[-1] + 1), -x.shape[-2] - 1)
        return [np.triu(x, k) if node.attrs["upper"] else np.tril(x, k)]

    def gradient(self, node, grads, g):
        """The same triangle of dY."""
        return [g.op("Trilu", [grads[0], g.input(1)] if g.input(1) else [grads[0]],
                     upper=node.attrs["upper"]), None][:len(node.inputs)]


# ---- indexing by element, by tuple, and their scatters ------------------------------------------
# ONNX allows an index i into a dim of size n when −n ≤ i < n (negative counts from the end);
# anything else is bad input, refused when running with an InputError naming the node.
def _out_of_range(idx, dims, what: str):
    """Why the first entry of ``idx`` outside [−dim, dim) is bad (``dims`` broadcast against
    ``idx``), or None when every entry is in range."""
    idx, dims = np.asarray(idx, dtype=np.int64), np.asarray(dims, dtype=np.int64)
    bad = (idx < -dims) | (idx >= dims)
    if not np.any(bad):
        return None
    at = tuple(int(k) for k in np.argwhere(bad)[0])
    dim = int(np.broadcast_to(dims, idx.shape)[at])
    return (f"{what} {int(idx[at])} at position {list(at)} is out of range for a dim of size "
            f"{dim} (expected {-dim}..{dim - 1})")


def _normalized_indices(node, idx, dims, what: str):
    """``idx`` (int64) with negative entries wrapped by ``dims`` (broadcast against it);
    InputError naming the node when an entry lies outside [−dim, dim)."""
    idx = np.asarray(idx, dtype=np.int64)
    why = _out_of_range(idx, dims, what)
    if why:
        raise InputError(f"{node}: {why}")
    return np.where(idx < 0, idx + np.asarray(dims, dtype=np.int64), idx)


def _check_index_dtype(ctx, i: int, what: str = "indices"):
    ctx.check(ctx.dtype(i) in (np.int32, np.int64),
              f"{what} (input {i}) must be int32 or int64, got {ctx.dtype(i)}")


def _check_static_indices(ctx, i: int, dims, what: str = "indices"):
    """When input ``i`` is a constant, its out-of-range entries are refused while loading."""
    idx = ctx.maybe_const(i)
    if idx is None or not np.size(idx) or not all(_is_int(d) for d in np.atleast_1d(dims)):
        return
    why = _out_of_range(idx, dims, what)
    ctx.check(why is None, why)


def _dims_match(a, b) -> bool:
    return a == b or isinstance(a, str) or isinstance(b, str)


def _element_index(node, x_shape, idx, axis):
    """The full index tuple of GatherElements/ScatterElements: ``idx`` along ``axis``, the
    position itself along every other axis."""
    idx = _normalized_indices(node, idx, x_shape[axis], "index")
    grid = list(np.indices(idx.shape, sparse=True))
    grid[axis] = idx
    return tuple(grid)


@register
class GatherElements(Op):
    """y[i][j][k] = x[idx[i][j][k]][j][k] (axis 0): indices of x's rank, the output their shape;
    every non-axis dim of the indices at most x's."""
    attrs = {"axis": 0}
    num_inputs = (2, 2)

    def infer(self, ctx):
        shape, ishape = ctx.shape(0), ctx.shape(1)
        _check_index_dtype(ctx, 1)
        ctx.check(len(shape) > 0, "cannot gather from a scalar")
        ctx.check(len(ishape) == len(shape), f"indices {ishape} must have the rank of data "
                                             f"{shape}")
        axis = _axis(ctx, ctx.attrs["axis"], len(shape))
        for k, (d, i) in enumerate(zip(shape, ishape)):
            ctx.check(k == axis or not (_is_int(d) and _is_int(i)) or i <= d,
                      f"indices {ishape} exceed data {shape} on axis {k}")
        _check_static_indices(ctx, 1, shape[axis])
        return [TensorType(ctx.dtype(0), ishape)]

    def compute(self, node, inputs):
        x, idx = inputs
        axis = int(node.attrs["axis"]) % x.ndim
        return [_contiguous(x[_element_index(node, x.shape, idx, axis)])]


def _gather_nd_shapes(ctx, shape, ishape, b: int):
    """Check GatherND/ScatterND's data and indices shapes; the index tuple length m."""
    ctx.check(len(ishape) >= 1, "indices must have rank ≥ 1")
    m = ishape[-1]
    ctx.check(_is_int(m), f"the last dim of indices {ishape} (the index length) must be static")
    ctx.check(0 <= b < min(len(shape), len(ishape)),
              f"batch_dims {b} must be below the ranks of data {shape} and indices {ishape}")
    ctx.check(all(_dims_match(d, i) for d, i in zip(shape[:b], ishape[:b])),
              f"the first {b} (batch) dims of data {shape} and indices {ishape} must agree")
    ctx.check(1 <= m <= len(shape) - b, f"the index length {m} (last dim of indices "
                                        f"{ishape}) must be in [1, {len(shape) - b}]")
    return int(m)


@register
class GatherND(Op):
    """Each length-m row of the indices picks a slice of data (after ``batch_dims`` leading
    dims that data and indices share): y = indices.shape[:-1] + data.shape[batch_dims + m:]."""
    attrs = {"batch_dims": 0}
    num_inputs = (2, 2)

    def infer(self, ctx):
        shape, ishape = ctx.shape(0), ctx.shape(1)
        ctx.check(ctx.dtype(1) == np.int64, f"indices must be int64, got {ctx.dtype(1)}")
        b = int(ctx.attrs["batch_dims"])
        m = _gather_nd_shapes(ctx, shape, ishape, b)
        _check_static_indices(ctx, 1, tuple(shape[b:b + m]))
        return [TensorType(ctx.dtype(0), tuple(ishape[:-1]) + tuple(shape[b + m:]))]

    def compute(self, node, inputs):
        x, idx = inputs
        b = int(node.attrs["batch_dims"])
        m = idx.shape[-1]
        batch = _prod(x.shape[:b])
        idx = _normalized_indices(node, idx, x.shape[b:b + m], "index")
        rows = idx.reshape(batch, -1, m)
        data = x.reshape((batch,) + x.shape[b:])
        picked = data[(np.arange(batch)[:, None],) + tuple(np.moveaxis(rows, -1, 0))]
        return [_contiguous(picked.reshape(idx.shape[:-1] + x.shape[b + m:]))]


# ScatterElements/ScatterND's ``reduction``: how an update meets the value it lands on.
_SCATTER_REDUCTIONS = {"none": None, "add": np.add, "mul": np.multiply, "max": np.maximum,
                       "min": np.minimum}


def _check_reduction(ctx):
    r = ctx.attrs["reduction"]
    ctx.check(r in _SCATTER_REDUCTIONS, f"expected attribute reduction among "
                                        f"{sorted(_SCATTER_REDUCTIONS)}, got {r!r}")
    ctx.check(r == "none" or ctx.dtype(0) != np.bool_ or r in ("max", "min"),
              f"reduction {r!r} does not apply to bool data")


def _scatter(node, x, where, updates):
    """x with ``updates`` written at index tuple ``where``, combined by the node's reduction
    (unbuffered: repeated indices each apply; with none, the last one wins)."""
    y = x.copy()
    ufunc = _SCATTER_REDUCTIONS[node.attrs["reduction"]]
    if ufunc is None:
        y[where] = updates
    else:
        ufunc.at(y, where, updates)
    return y


@register
class ScatterElements(Op):
    """y = data with updates[i][j] written at [idx[i][j]][j] (axis 0); indices and updates share
    one shape, of data's rank."""
    attrs = {"axis": 0, "reduction": "none"}
    num_inputs = (3, 3)

    def infer(self, ctx):
        shape, ishape, ushape = ctx.shape(0), ctx.shape(1), ctx.shape(2)
        _check_index_dtype(ctx, 1)
        _check_reduction(ctx)
        ctx.check(ctx.dtype(2) == ctx.dtype(0), f"updates must have data's dtype {ctx.dtype(0)}, "
                                                f"got {ctx.dtype(2)}")
        ctx.check(len(shape) > 0, "cannot scatter into a scalar")
        ctx.check(len(ishape) == len(shape) and len(ushape) == len(ishape) and
                  all(_dims_match(i, u) for i, u in zip(ishape, ushape)),
                  f"indices {ishape} and updates {ushape} must share one shape of data's rank "
                  f"{len(shape)}")
        axis = _axis(ctx, ctx.attrs["axis"], len(shape))
        for k, (d, i) in enumerate(zip(shape, ishape)):
            ctx.check(k == axis or not (_is_int(d) and _is_int(i)) or i <= d,
                      f"indices {ishape} exceed data {shape} on axis {k}")
        _check_static_indices(ctx, 1, shape[axis])
        return [ctx.type(0)]

    def compute(self, node, inputs):
        x, idx, updates = inputs
        axis = int(node.attrs["axis"]) % x.ndim
        return [_scatter(node, x, _element_index(node, x.shape, idx, axis), updates)]


@register
class ScatterND(Op):
    """y = data with each slice updates[i…] written at the index tuple indices[i…]:
    updates.shape = indices.shape[:-1] + data.shape[m:]."""
    attrs = {"reduction": "none"}
    num_inputs = (3, 3)

    def infer(self, ctx):
        shape, ishape, ushape = ctx.shape(0), ctx.shape(1), ctx.shape(2)
        ctx.check(ctx.dtype(1) == np.int64, f"indices must be int64, got {ctx.dtype(1)}")
        _check_reduction(ctx)
        ctx.check(ctx.dtype(2) == ctx.dtype(0), f"updates must have data's dtype {ctx.dtype(0)}, "
                                                f"got {ctx.dtype(2)}")
        m = _gather_nd_shapes(ctx, shape, ishape, 0)
        want = tuple(ishape[:-1]) + tuple(shape[m:])
        ctx.check(len(ushape) == len(want) and all(map(_dims_match, ushape, want)),
                  f"updates must have shape {want} (indices {ishape}, data {shape}), got "
                  f"{ushape}")
        _check_static_indices(ctx, 1, tuple(shape[:m]))
        return [ctx.type(0)]

    def compute(self, node, inputs):
        x, idx, updates = inputs
        m = idx.shape[-1]
        idx = _normalized_indices(node, idx, x.shape[:m], "index").reshape(-1, m)
        rows = updates.reshape((idx.shape[0],) + x.shape[m:])
        return [_scatter(node, x, tuple(idx.T), rows)]


@register
class OneHot(Op):
    """``values`` = [off, on]: the output holds ``on`` where the axis position equals the index
    and ``off`` elsewhere; ``depth`` (a one-element input, known before running) is that axis'
    size. Indices in [−depth, 0) count from the end; indices outside [−depth, depth) give an
    all-``off`` row, as ONNX defines (not an error)."""
    attrs = {"axis": -1}
    num_inputs = (3, 3)

    def infer(self, ctx):
        ishape = ctx.shape(0)
        ctx.check(ctx.dtype(0).kind in "fiu", f"indices must be numeric, got {ctx.dtype(0)}")
        depth = np.asarray(ctx.const(1, "depth"))
        ctx.check(depth.size == 1 and depth.ndim <= 1 and depth.dtype.kind in "fiu",
                  f"depth (input 1) must be one number, got {depth.dtype} of shape "
                  f"{depth.shape}")
        depth = int(depth.reshape(-1)[0])
        ctx.check(depth >= 1, f"depth must be ≥ 1, got {depth}")
        ctx.check(tuple(ctx.shape(2)) == (2,), f"values (input 2) must hold [off, on] "
                                               f"(shape (2,)), got {ctx.shape(2)}")
        rank = len(ishape) + 1
        axis = _axis(ctx, ctx.attrs["axis"], rank)
        return [TensorType(ctx.dtype(2), tuple(ishape[:axis]) + (depth,)
                           + tuple(ishape[axis:]))]

    def compute(self, node, inputs):
        idx, depth, values = inputs
        depth = int(np.asarray(depth).reshape(-1)[0])
        axis = int(node.attrs["axis"]) % (idx.ndim + 1)
        idx = np.where(idx < 0, idx + depth, idx)
        positions = np.arange(depth).reshape((depth,) + (1,) * (idx.ndim - axis))
        hot = np.expand_dims(idx, axis) == positions
        return [np.where(hot, values[1], values[0]).astype(values.dtype)]


@register
class NonZero(Op):
    """The int64 indices (one row per axis) of x's non-zero elements, in C order. Their count
    is decided by x's value. When x is known (a constant) the count is static; when the output
    is only a graph output it is a symbolic dim, the step allocating the array when it runs (a
    run-time-shaped value, see ``graph/ops/control_flow.py``); when a node reads it, its shape
    is needed to compile that node, so x must be computed from fed inputs only — the Session
    then keys its plans on them (``NeedsValue``) — else it is a ShapeError naming the node."""

    def infer(self, ctx):
        rows = max(len(ctx.shape(0)), 1)
        x = ctx.maybe_const(0)
        out = ctx.node.outputs[0]
        if x is None and not any(out in n.inputs for n in ctx.graph.nodes):
            return [TensorType(np.int64, (rows, f"{ctx.node.name}:count"))]
        x = np.asarray(ctx.const(0, "the tensor whose non-zeros decide the output's length"))
        return [TensorType(np.int64, (rows, int(np.count_nonzero(x))))]

    def compute(self, node, inputs):
        x = inputs[0]
        return [np.array(np.nonzero(np.atleast_1d(x)), dtype=np.int64).reshape(
            max(x.ndim, 1), -1)]


# ---- blocks between depth and space ------------------------------------------------------------
def _block_mode(ctx):
    ctx.check(ctx.attrs["mode"] in ("DCR", "CRD"),
              f"expected attribute mode 'DCR' or 'CRD', got {ctx.attrs['mode']!r}")
    b = ctx.attrs["blocksize"]
    ctx.check(_is_int(b) and b >= 1, f"blocksize must be an integer ≥ 1, got {b!r}")
    ctx.check(len(ctx.shape(0)) == 4, f"expected a 4-D (N, C, H, W) input, got {ctx.shape(0)}")
    return int(b)


def _scaled(ctx, d, factor: int, k: int):
    return d * factor if _is_int(d) else _fresh(ctx, k)


@register
class DepthToSpace(Op):
    """(N, C, H, W) → (N, C/b², H·b, W·b). DCR: depth is split as (b, b, C/b²); CRD: as
    (C/b², b, b)."""
    attrs = {"blocksize": REQUIRED, "mode": "DCR"}

    def infer(self, ctx):
        b = _block_mode(ctx)
        n, c, h, w = ctx.shape(0)
        ctx.check(not _is_int(c) or c % (b * b) == 0,
                  f"channels {c} must be a multiple of blocksize² = {b * b}")
        c_out = c // (b * b) if _is_int(c) else _fresh(ctx, 1)
        return [TensorType(ctx.dtype(0), (n, c_out, _scaled(ctx, h, b, 2),
                                          _scaled(ctx, w, b, 3)))]

    def compute(self, node, inputs):
        x = inputs[0]
        b, (n, c, h, w) = int(node.attrs["blocksize"]), x.shape
        if node.attrs["mode"] == "DCR":
            t = x.reshape(n, b, b, c // (b * b), h, w).transpose(0, 3, 4, 1, 5, 2)
        else:
            t = x.reshape(n, c // (b * b), b, b, h, w).transpose(0, 1, 4, 2, 5, 3)
        return [t.reshape(n, c // (b * b), h * b, w * b)]


@register
class SpaceToDepth(Op):
    """(N, C, H, W) → (N, C·b², H/b, W/b), the inverse of DepthToSpace in the same mode."""
    attrs = {"blocksize": REQUIRED, "mode": "DCR"}

    def infer(self, ctx):
        b = _block_mode(ctx)
        n, c, h, w = ctx.shape(0)
        for what, d in (("height", h), ("width", w)):
            ctx.check(not _is_int(d) or d % b == 0, f"{what} {d} must be a multiple of "
                                                    f"blocksize {b}")
        shrink = [d // b if _is_int(d) else _fresh(ctx, k) for k, d in ((2, h), (3, w))]
        return [TensorType(ctx.dtype(0), (n, _scaled(ctx, c, b * b, 1), *shrink))]

    def compute(self, node, inputs):
        x = inputs[0]
        b, (n, c, h, w) = int(node.attrs["blocksize"]), x.shape
        t = x.reshape(n, c, h // b, b, w // b, b)
        order = (0, 3, 5, 1, 2, 4) if node.attrs["mode"] == "DCR" else (0, 1, 3, 5, 2, 4)
        return [t.transpose(order).reshape(n, c * b * b, h // b, w // b)]


@register
class ReverseSequence(Op):
    """Reverses the first ``sequence_lens[i]`` steps along ``time_axis`` of each batch entry i
    (``batch_axis``); the steps after them stay in place. A length outside [0, time steps] is an
    InputError naming the node."""
    attrs = {"batch_axis": 1, "time_axis": 0}
    num_inputs = (2, 2)

    def infer(self, ctx):
        shape = ctx.shape(0)
        ctx.check(len(shape) >= 2, f"expected an input of rank ≥ 2, got {shape}")
        axes = (int(ctx.attrs["batch_axis"]), int(ctx.attrs["time_axis"]))
        ctx.check(sorted(axes) == [0, 1], f"batch_axis and time_axis must be 0 and 1 in some "
                                          f"order, got {axes[0]} and {axes[1]}")
        ctx.check(ctx.dtype(1) == np.int64, f"sequence_lens must be int64, got {ctx.dtype(1)}")
        lens = ctx.shape(1)
        ctx.check(len(lens) == 1 and _dims_match(lens[0], shape[axes[0]]),
                  f"sequence_lens must have shape ({shape[axes[0]]},) (the batch), got {lens}")
        return [ctx.type(0)]

    def compute(self, node, inputs):
        x, lens = inputs
        batch_axis, time_axis = int(node.attrs["batch_axis"]), int(node.attrs["time_axis"])
        steps = x.shape[time_axis]
        bad = (lens < 0) | (lens > steps)
        if np.any(bad):
            i = int(np.argmax(bad))
            raise InputError(f"{node}: sequence_lens[{i}] = {int(lens[i])} is out of range "
                             f"(expected 0..{steps}, the time steps)")
        t = np.arange(steps)[:, None] if time_axis == 0 else np.arange(steps)[None, :]
        n = lens[None, :] if batch_axis == 1 else lens[:, None]
        source = np.where(t < n, n - 1 - t, t)
        source = source.reshape(source.shape + (1,) * (x.ndim - 2))
        return [np.take_along_axis(x, np.broadcast_to(source, x.shape), axis=time_axis)]


@register
class EyeLike(Op):
    """A 2-D tensor of the input's shape with ones on diagonal ``k`` (above the main one when
    k > 0), of ``dtype`` (an ONNX type code or a dtype name; absent: the input's dtype)."""
    attrs = {"dtype": None, "k": 0}

    def infer(self, ctx):
        shape = ctx.shape(0)
        ctx.check(len(shape) == 2, f"expected a 2-D input, got {shape}")
        to = ctx.attrs["dtype"]
        try:
            dtype = ctx.dtype(0) if to is None else _cast_dtype(to)
        except TypeError:
            ctx.fail(f"unknown dtype {to!r}")
        ctx.check(dtype.kind in "biuf", f"cannot make an EyeLike of {dtype} (not supported)")
        if to is not None:
            ctx.node.attrs["dtype"] = dtype.name
        return [TensorType(dtype, shape)]

    def export(self, ctx, node, inputs, outputs, attrs):
        """``dtype`` is held as a numpy dtype name; ONNX wants its TensorProto type code."""
        if attrs.get("dtype") is None:
            attrs.pop("dtype", None)
        else:
            attrs["dtype"] = ctx.tensor_type_code(attrs["dtype"], node)
        ctx.add(node.op_type, inputs, outputs, node.name, attrs, node)

    def compute(self, node, inputs):
        x = inputs[0]
        dtype = x.dtype if node.attrs["dtype"] is None else _cast_dtype(node.attrs["dtype"])
        return [np.eye(x.shape[0], x.shape[1], k=int(node.attrs["k"]), dtype=dtype)]
