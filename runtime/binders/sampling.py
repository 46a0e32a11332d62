"""GridSample and its gradient (``kernels/sampling``: float32, 2-D and 3-D), AffineGrid (one
numpy product per batch against positions computed once at bind time). Other dtypes and ranks
run the numpy reference of ``graph/ops/sampling.py``."""
from __future__ import annotations

import numpy as np

from ...graph.ops import sampling as ops
from ...kernels import sampling as kernel
from .common import all_float32, contiguous_f32, optional_at
from .registry import binds


def _as_3d(a, grid: bool):
    """A 2-D operand as its 3-D form (depth 1): X/Y (N, C, H, W) → (N, C, 1, H, W), a grid
    (N, Ho, Wo, 2) → (N, 1, Ho, Wo, 2); 3-D operands unchanged."""
    if a.ndim == 5:
        return a
    return a.reshape((a.shape[0], 1) + a.shape[1:]) if grid else \
        a.reshape(a.shape[:2] + (1,) + a.shape[2:])


def _codes(node):
    a = node.attrs
    return kernel.MODES[a["mode"]], kernel.PADDING_MODES[a["padding_mode"]], \
        bool(a["align_corners"])


@binds(ops.GridSample, inplace=(), kernel="sampling")
def bind_grid_sample(node, ins, outs, scratch_buf, ctx):
    x, grid, y = ins[0], ins[1], outs[0]
    if x.ndim not in (4, 5) or not all_float32(x, grid, y):
        return None
    x5, g5, y5 = _as_3d(contiguous_f32(x), False), _as_3d(contiguous_f32(grid), True), \
        _as_3d(y, False)
    mode, padding, align = _codes(node)
    fn, threads = kernel.grid_sample_forward, ctx.threads
    return lambda: fn(x5, g5, y5, mode, padding, align, threads)


@binds(ops.GridSampleGrad, inplace=(), kernel="sampling")
def bind_grid_sample_grad(node, ins, outs, scratch_buf, ctx):
    dy, x, grid = ins
    dx, dgrid = optional_at(outs, 0), optional_at(outs, 1)
    if x.ndim not in (4, 5) or not all_float32(dy, x, grid, dx, dgrid):
        return None
    dy5, x5, g5 = _as_3d(contiguous_f32(dy), False), _as_3d(contiguous_f32(x), False), \
        _as_3d(contiguous_f32(grid), True)
    mode, padding, align = _codes(node)
    threads = ctx.threads
    steps = []
    if dx is not None:
        dx5, fn_dx = _as_3d(dx, False), kernel.grid_sample_grad_input
        steps.append(lambda: fn_dx(dy5, g5, dx5, mode, padding, align, threads))
    if dgrid is not None:
        dg5, fn_dg = _as_3d(dgrid, True), kernel.grid_sample_grad_grid
        steps.append(lambda: fn_dg(dy5, x5, g5, dg5, mode, padding, align, threads))

    def step():
        for s in steps:
            s()
    return step


@binds(ops.AffineGrid, inplace=())
def bind_affine_grid(node, ins, outs, scratch_buf, ctx):
    theta, grid = ins[0], outs[0]
    if theta.dtype != grid.dtype or theta.dtype.kind != "f" or ctx.is_runtime(ins[1]):
        return None
    spatial, r = grid.shape[1:-1], grid.shape[-1]
    base = ops.base_grid(spatial, node.attrs["align_corners"]).astype(grid.dtype)
    flat = grid.reshape(grid.shape[0], -1, r)
    return lambda: np.matmul(base, theta.transpose(0, 2, 1), out=flat)
