"""MaxPool, AveragePool and the global pools (``kernels/pool``) and their gradients
(``kernels/pool_grad``); 1-D pools run as 2-D ones of height 1."""
from __future__ import annotations

from ...graph.ops import pool as ops
from ...kernels import pool, pool_grad
from .common import (WindowAxis, all_float32, as_nchw, contiguous_f32, has_empty_output,
                     int_list, noop, optional_at, prove_fits, prove_window, window_geometry)
from .registry import binds


def kernel_size(node, nd):
    """(kh, kw) of a 1-D or 2-D pool."""
    ks = int_list(node.attrs.get("kernel_shape"), nd, 0)
    return (1, ks[0]) if nd == 1 else tuple(ks)


def as_nchw_shape(shape):
    """(N, C, L) → (N, C, 1, L): the shape a 1-D pool runs at, as ``as_nchw`` views it."""
    return (shape[0], shape[1], 1, shape[2]) if len(shape) == 3 else tuple(shape)


def prove_pool_geometry(node, x_shape, y_shape) -> None:
    """ShapeError unless every index the pool kernels form for input x_shape and output y_shape
    (N, C, spatial…) fits their int64 window arithmetic, and the window's tap count (the
    average's divisor) fits it too. Pools walk their windows in 64 bits: pads, strides and
    dilations near 2^31 are computed exactly, not refused."""
    nd = len(x_shape) - 2
    if nd not in (1, 2):
        return
    kh, kw = kernel_size(node, nd)
    sh, sw, pt, pl, dh, dw, (pb, pr) = window_geometry(node, nd)
    x4, y4 = (as_nchw_shape(x_shape), as_nchw_shape(y_shape))
    H, W, OH, OW = int(x4[2]), int(x4[3]), int(y4[2]), int(y4[3])
    prove_window(node, [WindowAxis(H, OH, kh, sh, dh, pt, pb),
                        WindowAxis(W, OW, kw, sw, dw, pl, pr)], "int64")
    prove_fits(node, "kernel_shape", "the window's tap count",
               min(kh, H + pt + pb) * min(kw, W + pl + pr), "int64")


def _pool_views(ins, outs):
    x, y = ins[0], outs[0]
    if x.ndim not in (3, 4) or not all_float32(x, y):
        return None
    return as_nchw(contiguous_f32(x)), as_nchw(y), x.ndim - 2


@binds(ops.MaxPool, inplace=(), kernel="pool")
def bind_max_pool(node, ins, outs, scratch_buf, ctx):
    prove_pool_geometry(node, ins[0].shape, outs[0].shape)
    if optional_at(outs, 1) is not None or int(node.attrs.get("storage_order", 0)):
        return None
    v = _pool_views(ins, outs)
    if v is None:
        return None
    if has_empty_output(outs):
        return noop
    x, y, nd = v
    kh, kw = kernel_size(node, nd)
    sh, sw, pt, pl, dh, dw, _ = window_geometry(node, nd)
    # prepared native steps: the plan runner runs them with no Python around them
    return pool.max_pool2d_step(x, y, kh, kw, sh, sw, pt, pl, dh, dw, ctx.threads)


@binds(ops.AveragePool, inplace=(), kernel="pool")
def bind_avg_pool(node, ins, outs, scratch_buf, ctx):
    prove_pool_geometry(node, ins[0].shape, outs[0].shape)
    dil = node.attrs.get("dilations")
    if dil and any(int(d) != 1 for d in dil):
        return None  # the kernel has no dilation
    v = _pool_views(ins, outs)
    if v is None:
        return None
    if has_empty_output(outs):
        return noop
    x, y, nd = v
    kh, kw = kernel_size(node, nd)
    sh, sw, pt, pl, _, _, (pb, pr) = window_geometry(node, nd)
    include = bool(int(node.attrs.get("count_include_pad", 0)))
    return pool.avg_pool2d_step(x, y, kh, kw, sh, sw, pt, pl, pb, pr, include, ctx.threads)


@binds(ops.GlobalAveragePool, ops.GlobalMaxPool, inplace=(), kernel="pool")
def bind_global_pool(node, ins, outs, scratch_buf, ctx):
    x, y = ins[0], outs[0]
    if x.ndim < 3 or not all_float32(x, y):
        return None
    if has_empty_output(outs) or x.size == 0:
        return None
    nc = x.shape[0] * x.shape[1]
    x2, y1 = contiguous_f32(x).reshape(nc, -1), y.reshape(nc)
    return pool.global_pool_step(x2, y1, node.op_type == "GlobalMaxPool", ctx.threads)


# ---- gradients ----------------------------------------------------------------------------------
@binds(ops.MaxPoolGrad, kernel="pool_grad")
def bind_max_pool_grad(node, ins, outs, scratch_buf, ctx):
    dy, x, dx = ins[0], ins[1], outs[0]
    prove_pool_geometry(node, x.shape, dy.shape)
    if x.ndim not in (3, 4) or not all_float32(dy, x, dx):
        return None
    if has_empty_output(outs):
        return noop
    nd = x.ndim - 2
    kh, kw = kernel_size(node, nd)
    sh, sw, pt, pl, dh, dw, _ = window_geometry(node, nd)
    dy4, x4, dx4 = as_nchw(contiguous_f32(dy)), as_nchw(contiguous_f32(x)), as_nchw(dx)
    return pool_grad.max_pool2d_grad_step(dy4, x4, dx4, kh, kw, sh, sw, pt, pl, dh, dw,
                                          ctx.threads)


@binds(ops.AveragePoolGrad, kernel="pool_grad")
def bind_avg_pool_grad(node, ins, outs, scratch_buf, ctx):
    dy, dx = ins[0], outs[0]
    prove_pool_geometry(node, dx.shape, dy.shape)
    if dx.ndim not in (3, 4) or not all_float32(dy, dx):
        return None
    if has_empty_output(outs):
        return noop
    nd = dx.ndim - 2
    kh, kw = kernel_size(node, nd)
    sh, sw, pt, pl, dh, dw, (pb, pr) = window_geometry(node, nd)
    include = bool(int(node.attrs.get("count_include_pad", 0)))
    return pool_grad.avg_pool2d_grad_step(as_nchw(contiguous_f32(dy)), as_nchw(dx), kh, kw, sh,
                                          sw, pt, pl, pb, pr, dh, dw, include, ctx.threads)


@binds(ops.GlobalAveragePoolGrad, kernel="pool_grad")
def bind_global_avg_pool_grad(node, ins, outs, scratch_buf, ctx):
    dy, dx = ins[0], outs[0]
    if dx.ndim < 3 or not all_float32(dy, dx):
        return None
    if has_empty_output(outs):
        return noop
    nc = dx.shape[0] * dx.shape[1]
    dy1, dx2 = contiguous_f32(dy).reshape(nc), dx.reshape(nc, -1)
    return pool_grad.global_avg_pool_grad_step(dy1, dx2, ctx.threads)
