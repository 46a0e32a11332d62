"""GridSample and AffineGrid (a spatial transformer's sampler and grid generator), and
GridSample's gradient op.

GridSample follows torch.nn.functional.grid_sample, which onnxruntime matches and from which
ONNX's own test data was generated: a grid position is unnormalised per axis, a ``border`` or
``reflection`` padding moves it into the image (linear and nearest modes), and each tap outside
the image reads zero. Cubic mode pads each of its four taps per axis instead (so ``border``
near the edge repeats the edge pixel under the kernel, as torch does; onnx.reference clamps the
position first and differs there). Every axis is independent: an axis yields taps (index,
weight, the weight's derivative in the position) and the sample is their tensor product, for
any number of spatial axes. Positions are computed in float32 (in float64 for a float64 grid),
so nearest mode's round half to even picks exactly torch's pixel. A NaN position samples
nothing (zero); an infinite one is as far out as any position past the border (zero, or the
border pixel under ``border`` padding).

The numpy reference below is the definition; ``kernels/sampling.pyx`` computes the same taps in
one inline helper shared by its forward and backward loops.
"""
from __future__ import annotations

import itertools

import numpy as np

from ..ir import TensorType
from .base import TRAINING_DOMAIN, Op, register

MODES = ("linear", "nearest", "cubic")
PADDING_MODES = ("zeros", "border", "reflection")
# GridSample-16 spelled the 2-D modes by torch's names; opset 20 generalised them to N-D.
OPSET16_MODES = {"bilinear": "linear", "bicubic": "cubic"}
OPSET20 = 20
CUBIC_A = np.float32(-0.75)
# Positions are kept within this many pixels of the origin (their integer index would overflow
# beyond): a farther one left after padding reads zero, a cubic one is clamped to it first.
FAR = np.float32(1 << 30)
# Where a position left too far out (or NaN) is parked: every tap of it is outside the image.
PARKED = np.float32(-100.0)


def _str(v):
    return v.decode() if isinstance(v, bytes) else v


def _unnormalize(g, size, align_corners):
    if align_corners:
        return (g + np.float32(1)) / np.float32(2) * np.float32(size - 1)
    return ((g + np.float32(1)) * np.float32(size) - np.float32(1)) / np.float32(2)


def _unnormalize_scale(size, align_corners):
    return np.float32((size - 1) / 2 if align_corners else size / 2)


def _reflect(x, twice_low, twice_high):
    """(x reflected into [low, high] by its borders, d reflected / d x)."""
    if twice_low == twice_high:
        return np.zeros_like(x), np.zeros_like(x)
    low = np.float32(twice_low / 2)
    span = np.float32((twice_high - twice_low) / 2)
    shifted = x - low
    sign = np.where(shifted < 0, np.float32(-1), np.float32(1))
    shifted = np.abs(shifted)
    extra = np.fmod(shifted, span)
    flips = np.floor(shifted / span)
    even = np.fmod(flips, 2) == 0
    return (np.where(even, extra + low, span - extra + low).astype(x.dtype),
            np.where(even, sign, -sign).astype(x.dtype))


def _pad_coordinate(x, size, padding, align_corners):
    """(x moved into the image by ``padding``, dx_padded / dx) — torch's compute_coordinates."""
    grad = np.ones_like(x)
    if padding == "zeros":
        return x, grad
    if padding == "reflection":
        x, grad = _reflect(x, 0, 2 * (size - 1)) if align_corners else \
            _reflect(x, -1, 2 * size - 1)
    inside = (x > 0) & (x < size - 1)
    return np.clip(x, 0, size - 1).astype(x.dtype), np.where(inside, grad, np.float32(0))


def _parked(x):
    far = ~(np.abs(x) < FAR)
    return np.where(far, PARKED, x).astype(x.dtype), far


def _cubic_weights(t):
    """The four Keys-cubic weights (A = -0.75) of taps -1, 0, 1, 2 at fraction t, and their
    derivatives in t."""
    a = CUBIC_A

    def near(x):
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    def d_near(x):
        return (3 * (a + 2) * x - 2 * (a + 3)) * x

    def d_far(x):
        return (3 * a * x - 10 * a) * x + 8 * a
    one, two = np.float32(1), np.float32(2)
    weights = [far(t + one), near(t), near(one - t), far(two - t)]
    slopes = [d_far(t + one), d_near(t), -d_near(one - t), -d_far(two - t)]
    return weights, slopes


def axis_taps(g, size, mode, padding, align_corners):
    """The taps of one spatial axis for normalised positions ``g`` (any shape): a list of
    (index, valid, weight, d weight / d position), and d position / d g. Invalid taps read
    zero; their index is 0. Positions are computed in float32 (float64 for a float64 grid)."""
    x = _unnormalize(g.astype(np.float64 if g.dtype == np.float64 else np.float32), size,
                     align_corners)
    scale = _unnormalize_scale(size, align_corners)
    raw = []
    if mode == "cubic":
        nan = np.isnan(x)
        far = nan | ~(np.abs(x) < FAR)
        x = np.where(nan, PARKED, np.clip(x, -FAR, FAR)).astype(x.dtype)
        base = np.floor(x)
        t = (x - base).astype(x.dtype)
        weights, slopes = _cubic_weights(t)
        for k in range(4):
            tap, _ = _pad_coordinate((base + np.float32(k - 1)).astype(x.dtype), size,
                                     padding, align_corners)
            tap, _ = _parked(tap)
            raw.append((np.where(nan, PARKED, tap), weights[k], slopes[k]))
        dpos = np.where(far, np.float32(0), scale)
    else:
        x, grad = _pad_coordinate(x, size, padding, align_corners)
        x, far = _parked(x)
        dpos = np.where(far, np.float32(0), grad * scale)
        if mode == "nearest":
            zero = np.zeros_like(x)
            raw.append((np.rint(x), np.ones_like(x), zero))
        else:
            base = np.floor(x)
            t = (x - base).astype(x.dtype)
            one = np.ones_like(x)
            raw += [(base, np.float32(1) - t, -one), (base + np.float32(1), t, one)]
    taps = []
    for where, weight, slope in raw:
        valid = (where >= 0) & (where <= size - 1)
        index = np.where(valid, where, 0).astype(np.intp)
        taps.append((index, valid, weight.astype(x.dtype), slope.astype(x.dtype)))
    return taps, dpos.astype(x.dtype)


def _sample_plan(x_shape, grid, attrs):
    """Per spatial axis (outermost first) its taps over the flattened output points (N, P)."""
    spatial = x_shape[2:]
    r = len(spatial)
    n = grid.shape[0]
    flat = grid.reshape(n, -1, r)
    with np.errstate(invalid="ignore", over="ignore"):   # non-finite positions are parked
        plan = [axis_taps(flat[:, :, r - 1 - k], spatial[k], attrs["mode"],
                          attrs["padding_mode"], attrs["align_corners"]) for k in range(r)]
    return plan, spatial


def _corners(plan, spatial):
    """Every tap combination: (flat spatial index, valid, weight, per-axis weight factors and
    slopes) over the output points."""
    strides = [int(np.prod(spatial[k + 1:], dtype=np.int64)) for k in range(len(spatial))]
    for combo in itertools.product(*(taps for taps, _ in plan)):
        flat = sum(index * s for (index, _, _, _), s in zip(combo, strides))
        valid = np.logical_and.reduce([v for _, v, _, _ in combo])
        weight = np.prod([w.astype(np.float64) for _, _, w, _ in combo], axis=0)
        yield flat, valid, weight, combo


def grid_sample_reference(x, grid, attrs):
    """Y (N, C, *grid.shape[1:-1]) in float64, the numpy definition of GridSample."""
    n, c = x.shape[:2]
    out_spatial = grid.shape[1:-1]
    plan, spatial = _sample_plan(x.shape, grid, attrs)
    planes = x.reshape(n, c, -1).astype(np.float64)
    y = np.zeros((n, c, int(np.prod(out_spatial, dtype=np.int64))))
    if planes.shape[2] == 0:
        return y.reshape((n, c) + tuple(out_spatial))
    for flat, valid, weight, _ in _corners(plan, spatial):
        values = np.take_along_axis(planes, flat[:, None, :], axis=2)
        y += np.where(valid[:, None, :], values * weight[:, None, :], 0.0)
    return y.reshape((n, c) + tuple(out_spatial))


def grid_sample_grad_reference(dy, x, grid, attrs):
    """(dX, dGrid) in float64: the adjoint of ``grid_sample_reference`` in X, and its
    derivative in the grid (zero in nearest mode, where it is piecewise constant)."""
    n, c = x.shape[:2]
    r = x.ndim - 2
    plan, spatial = _sample_plan(x.shape, grid, attrs)
    planes = x.reshape(n, c, -1).astype(np.float64)
    dys = dy.reshape(n, c, -1).astype(np.float64)
    dx = np.zeros_like(planes)
    dpos = np.zeros((r,) + dys.shape[::2])
    batch = np.arange(n)[:, None, None]
    channel = np.arange(c)[None, :, None]
    for flat, valid, weight, combo in _corners(plan, spatial):
        gy = np.where(valid[:, None, :], dys, 0.0)
        np.add.at(dx, (batch, channel, flat[:, None, :]), gy * weight[:, None, :])
        if planes.shape[2] == 0 or attrs["mode"] == "nearest":
            continue
        seen = np.where(valid[:, None, :], np.take_along_axis(planes, flat[:, None, :], axis=2)
                        * dys, 0.0).sum(axis=1)
        for k in range(r):
            factors = [s if j == k else w for j, (_, _, w, s) in enumerate(combo)]
            dpos[k] += seen * np.prod([f.astype(np.float64) for f in factors], axis=0)
    dgrid = np.stack([dpos[r - 1 - j] * plan[r - 1 - j][1] for j in range(r)], axis=-1)
    return dx.reshape(x.shape), dgrid.reshape(grid.shape)


def _check_grid_sample(ctx, xi: int, gi: int):
    """The shape facts GridSample and its gradient share, X being input ``xi`` and the grid
    input ``gi``; ShapeError naming the input and the shape expected."""
    x, grid = ctx.shape(xi), ctx.shape(gi)
    ctx.check(len(x) >= 3, f"expected X (input {xi}, {ctx.node.input(xi)!r}) of rank ≥ 3 "
                           f"(N, C, spatial…), got shape {x}")
    r = len(x) - 2
    want = "(N, " + ", ".join(f"D{k + 1}_out" for k in range(r)) + f", {r})"
    ctx.check(len(grid) == r + 2 and grid[-1] == r,
              f"expected grid (input {gi}, {ctx.node.input(gi)!r}) of shape {want} for X of shape "
              f"{x}, got {grid}")
    if not isinstance(x[0], str) and not isinstance(grid[0], str):
        ctx.check(x[0] == grid[0], f"expected grid (input {gi}, {ctx.node.input(gi)!r}) batch "
                                   f"{grid[0]} == X batch {x[0]} (X {x}, grid {grid})")


def _check_attrs(ctx):
    attrs = ctx.attrs
    mode = _str(attrs["mode"])
    attrs["mode"] = OPSET16_MODES.get(mode, mode)
    attrs["padding_mode"] = _str(attrs["padding_mode"])
    ctx.check(attrs["mode"] in MODES, f"attribute 'mode' {mode!r} is not one of {MODES} "
                                      f"(or opset 16's {tuple(OPSET16_MODES)})")
    ctx.check(attrs["padding_mode"] in PADDING_MODES,
              f"attribute 'padding_mode' {attrs['padding_mode']!r} is not one of "
              f"{PADDING_MODES}")
    ctx.check(attrs["align_corners"] in (0, 1, True, False),
              f"attribute 'align_corners' must be 0 or 1, got {attrs['align_corners']!r}")
    attrs["align_corners"] = int(attrs["align_corners"])


def _taps_per_point(node, rank):
    per_axis = {"nearest": 1, "linear": 2, "cubic": 4}[node.attrs["mode"]]
    return per_axis ** rank


GRID_SAMPLE_ATTRS = {"align_corners": 0, "mode": "linear", "padding_mode": "zeros"}


@register
class GridSample(Op):
    """Opset 16 (4-D, modes bilinear/nearest/bicubic) and opset 20 (N-D, linear/nearest/cubic):
    ``infer`` reads both spellings and keeps opset 20's."""
    attrs = dict(GRID_SAMPLE_ATTRS)
    num_inputs = (2, 2)

    def infer(self, ctx):
        _check_attrs(ctx)
        x, grid = ctx.shape(0), ctx.shape(1)
        _check_grid_sample(ctx, 0, 1)
        ctx.check(ctx.dtype(0).kind == "f" and ctx.dtype(1).kind == "f",
                  f"expected float X and grid, got {ctx.dtype(0)} and {ctx.dtype(1)}")
        return [TensorType(ctx.dtype(0), (x[0], x[1]) + tuple(grid[1:-1]))]

    def macs(self, node, types):
        y = types[node.outputs[0]].shape
        return int(np.prod(y, dtype=np.int64)) * _taps_per_point(node, len(y) - 2)

    def reference_steps(self, node, types):
        return _taps_per_point(node, types[node.inputs[0]].rank - 2)

    def export(self, ctx, node, inputs, outputs, attrs):
        """Before opset 20 GridSample is 4-D only and names its modes bilinear/bicubic."""
        if ctx.opset < OPSET20:
            from ..errors import ModelError
            if ctx.opset < 16:
                raise ModelError(f"{node}: GridSample needs opset ≥ 16 (exporting at "
                                 f"{ctx.opset})")
            if ctx.rank(inputs[0]) != 4:
                raise ModelError(f"{node}: GridSample on a rank-{ctx.rank(inputs[0])} input "
                                 f"needs opset ≥ 20 (exporting at {ctx.opset})")
            if "mode" in attrs:
                mode = _str(attrs["mode"])
                renamed = {v: k for k, v in OPSET16_MODES.items()}
                attrs = dict(attrs, mode=renamed.get(mode, mode))
        super().export(ctx, node, inputs, outputs, attrs)

    def compute(self, node, inputs):
        x, grid = inputs
        return [grid_sample_reference(x, grid, node.attrs).astype(x.dtype)]


@register
class GridSampleGrad(Op):
    """(dX, dGrid) of GridSample(X, grid) from (dY, X, grid); either output may be left absent."""
    domain = TRAINING_DOMAIN
    attrs = dict(GRID_SAMPLE_ATTRS)
    num_inputs = (3, 3)
    num_outputs = (1, 2)

    def infer(self, ctx):
        _check_attrs(ctx)
        dy, x, grid = ctx.shape(0), ctx.shape(1), ctx.shape(2)
        _check_grid_sample(ctx, 1, 2)
        want = (x[0], x[1]) + tuple(grid[1:-1])
        ctx.check(tuple(dy) == want, f"expected dY of shape {want}, got {dy}")
        ctx.check(ctx.dtype(0) == ctx.dtype(1) and ctx.dtype(2).kind == "f",
                  f"expected dY and X of one float dtype and a float grid, got "
                  f"{ctx.dtype(0)}, {ctx.dtype(1)}, {ctx.dtype(2)}")
        outs = [TensorType(ctx.dtype(1), tuple(x)), TensorType(ctx.dtype(2), tuple(grid))]
        return [t if k < len(ctx.node.outputs) and ctx.node.outputs[k] else None
                for k, t in enumerate(outs)]

    def macs(self, node, types):
        dy = types[node.inputs[0]].shape
        return 3 * int(np.prod(dy, dtype=np.int64)) * _taps_per_point(node, len(dy) - 2)

    def reference_steps(self, node, types):
        return _taps_per_point(node, types[node.inputs[1]].rank - 2)

    def compute(self, node, inputs):
        dy, x, grid = inputs
        dx, dgrid = grid_sample_grad_reference(dy, x, grid, node.attrs)
        return [dx.astype(x.dtype), dgrid.astype(grid.dtype)]


# ---- AffineGrid ------------------------------------------------------------------------------
def _base_axis(n: int, align_corners: bool) -> np.ndarray:
    """torch's linspace_from_neg_one: n points over [-1, 1] (pixel centres when not aligned)."""
    if n <= 1:
        return np.zeros(max(n, 0))
    axis = np.linspace(-1.0, 1.0, n)
    return axis if align_corners else axis * (n - 1) / n


def base_grid(spatial, align_corners) -> np.ndarray:
    """(P, r + 1) float64: every output position's (x, y[, z], 1), W fastest."""
    axes = [_base_axis(int(s), bool(align_corners)) for s in spatial]
    mesh = np.meshgrid(*axes, indexing="ij")     # outermost (D or H) first
    cols = [m.reshape(-1) for m in reversed(mesh)] + [np.ones(mesh[0].size)]
    return np.stack(cols, axis=1)


def _known_size(ctx) -> list:
    """AffineGrid's ``size``, known while loading. With a symbolic batch it may be
    Concat(Shape(theta)[0:1], constant C, H, W) — what ``ember.nn.functional.affine_grid``
    writes then, as torch's exporter does: its batch entry is then theta's (symbolic) batch."""
    value = ctx.maybe_const(1)
    if value is None:
        producer = ctx._producer_map().get(ctx.node.input(1))
        if producer is not None and producer.op_type == "Concat" and producer.inputs:
            head = ctx._producer_map().get(producer.inputs[0])
            rest = [ctx.consts.get(i) for i in producer.inputs[1:]]
            if head is not None and head.op_type == "Shape" and \
                    head.inputs[0] == ctx.node.input(0) and \
                    int(head.attrs.get("start", 0)) == 0 and head.attrs.get("end") == 1 and \
                    all(r is not None for r in rest):
                return [ctx.shape(0)[0]] + [int(v) for r in rest for v in np.reshape(r, -1)]
        value = ctx.const(1, "size")
    return [int(v) for v in np.asarray(value).reshape(-1)]


@register
class AffineGrid(Op):
    """Opset 20: theta (N, 2, 3) and size (N, C, H, W) → grid (N, H, W, 2); theta (N, 3, 4)
    and size (N, C, D, H, W) → grid (N, D, H, W, 3). ``size`` must be known while loading."""
    attrs = {"align_corners": 0}
    num_inputs = (2, 2)

    def infer(self, ctx):
        ac = ctx.attrs["align_corners"]
        ctx.check(ac in (0, 1, True, False), f"attribute 'align_corners' must be 0 or 1, got "
                                             f"{ac!r}")
        ctx.attrs["align_corners"] = int(ac)
        theta = ctx.shape(0)
        ctx.check(ctx.dtype(0).kind == "f", f"expected float theta, got {ctx.dtype(0)}")
        ctx.check(ctx.dtype(1).kind in "iu", f"expected integer size, got {ctx.dtype(1)}")
        size = _known_size(ctx)
        ctx.check(len(size) in (4, 5), f"expected size (input 1, {ctx.node.input(1)!r}) of 4 "
                                       f"values (N, C, H, W) or 5 (N, C, D, H, W), got {size}")
        r = len(size) - 2
        ctx.check(min(size[1:]) >= 0, f"expected non-negative sizes, got {size}")
        ctx.check(len(theta) == 3 and tuple(theta[1:]) == (r, r + 1),
                  f"expected theta (input 0, {ctx.node.input(0)!r}) of shape (N, {r}, {r + 1}) "
                  f"for size {size}, got {theta}")
        if not isinstance(theta[0], str) and not isinstance(size[0], str):
            ctx.check(theta[0] == size[0], f"expected theta batch {theta[0]} == size[0] "
                                           f"{size[0]}")
        return [TensorType(ctx.dtype(0), (theta[0],) + tuple(size[2:]) + (r,))]

    def export(self, ctx, node, inputs, outputs, attrs):
        if ctx.opset < OPSET20:
            from ..errors import ModelError
            raise ModelError(f"{node}: AffineGrid needs opset ≥ 20 (exporting at {ctx.opset})")
        super().export(ctx, node, inputs, outputs, attrs)

    def compute(self, node, inputs):
        theta, size = inputs
        spatial = [int(v) for v in np.asarray(size).reshape(-1)[2:]]
        base = base_grid(spatial, node.attrs["align_corners"])
        grid = np.matmul(theta.astype(np.float64), base.T)      # (N, r, P)
        return [np.ascontiguousarray(np.swapaxes(grid, 1, 2)).reshape(
            (theta.shape[0],) + tuple(spatial) + (len(spatial),)).astype(theta.dtype)]


# ---- gradients -------------------------------------------------------------------------------
def _grid_sample_gradient(self, node, grads, g):
    if grads[0] is None:
        return [None, None]
    used = [g.needs(0), g.needs(1)]
    outs = g.op("GridSampleGrad", [grads[0], g.input(0), g.input(1)], num_outputs=2,
                used=used, **{k: node.attrs[k] for k in GRID_SAMPLE_ATTRS})
    return [outs[0] or None, outs[1] or None]


def _affine_grid_gradient(self, node, grads, g):
    """grid[n] = base · theta[n]ᵀ, so dtheta[n] = dgrid[n]ᵀ · base (base: the constant
    (P, r + 1) positions)."""
    if grads[0] is None or not g.needs(0):
        return [None, None]
    dgrid = grads[0]
    shape = g.shape(dgrid)
    n, r = shape[0], shape[-1]
    spatial = shape[1:-1]
    points = int(np.prod(spatial, dtype=np.int64))
    dtype = g.type(dgrid).dtype
    base = g.const(base_grid(spatial, node.attrs["align_corners"]).astype(dtype), "base_grid")
    flat = g.reshape(dgrid, (n, points, r))
    dtheta = g.op("MatMul", [g.op("Transpose", [flat], perm=[0, 2, 1]), base])
    return [dtheta, None]


GridSample.gradient = _grid_sample_gradient
AffineGrid.gradient = _affine_grid_gradient
