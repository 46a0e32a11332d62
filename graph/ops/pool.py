"""MaxPool (with optional Indices), AveragePool, GlobalAveragePool, GlobalMaxPool.

Window geometry comes from conv.py; ``ceil_mode`` stays an attribute (it changes the output
size only) while ``auto_pad`` is resolved to explicit ``pads`` in ``infer``.
"""
from __future__ import annotations

import itertools

import numpy as np

from ..ir import TensorType
from .base import REQUIRED, Op, register
from .conv import padded, resolve_pads, spatial_attr, window_out, window_slice

POOL_ATTRS = {"auto_pad": "NOTSET", "ceil_mode": 0, "dilations": [], "kernel_shape": REQUIRED,
              "pads": [], "strides": []}


def infer_window(ctx):
    """Check X and resolve the window attributes; return the output shape."""
    x = ctx.shape(0)
    ctx.check(len(x) >= 3, f"expected X of rank ≥ 3 (N, C, spatial…), got {x}")
    nsp = len(x) - 2
    kernel = [int(k) for k in ctx.attrs["kernel_shape"]]
    ctx.check(len(kernel) == nsp and min(kernel) >= 1,
              f"expected kernel_shape of {nsp} positive values, got {kernel}")
    strides = spatial_attr(ctx, "strides", nsp, 1)
    dil = spatial_attr(ctx, "dilations", nsp, 1)
    ctx.check(min(strides + dil) >= 1, f"expected strides, dilations ≥ 1, got {strides}, {dil}")
    pads = resolve_pads(ctx, x[2:], kernel, strides, dil)
    ctx.check(all(pads[i] < (kernel[i] - 1) * dil[i] + 1 and pads[i + nsp] <
                  (kernel[i] - 1) * dil[i] + 1 for i in range(nsp)),
              f"expected pads smaller than the window {kernel}, got {pads}")
    ceil = bool(ctx.attrs["ceil_mode"])
    outs = tuple(window_out(ctx, x[2 + i], kernel[i], strides[i], dil[i], pads[i],
                            pads[i + nsp], ceil, axis=i) for i in range(nsp))
    return tuple(x[:2]) + outs


def geometry(x, attrs):
    """(kernel, strides, dilations, pads, outs, extra_end) for an input array."""
    kernel, strides, dil, pads = (attrs["kernel_shape"], attrs["strides"], attrs["dilations"],
                                  attrs["pads"])
    nsp = x.ndim - 2
    outs, extra = [], []
    for i in range(nsp):
        eff = (kernel[i] - 1) * dil[i] + 1
        span = x.shape[2 + i] + pads[i] + pads[i + nsp] - eff
        o = (-(-span // strides[i]) if attrs["ceil_mode"] else span // strides[i]) + 1
        if attrs["ceil_mode"] and (o - 1) * strides[i] >= x.shape[2 + i] + pads[i]:
            o -= 1
        outs.append(o)
        extra.append(max(0, (o - 1) * strides[i] + eff - (x.shape[2 + i] + pads[i] +
                                                         pads[i + nsp])))
    return kernel, strides, dil, pads, outs, extra


def offsets(kernel):
    return itertools.product(*(range(k) for k in kernel))


@register
class MaxPool(Op):
    attrs = {**POOL_ATTRS, "storage_order": 0}
    num_outputs = (1, 2)

    def infer(self, ctx):
        ctx.check(ctx.dtype(0).kind in "fiu", f"expected a numeric X, got {ctx.dtype(0)}")
        shape = infer_window(ctx)
        return [TensorType(ctx.dtype(0), shape), TensorType(np.int64, shape)]

    def compute(self, node, inputs):
        x = inputs[0]
        kernel, strides, dil, pads, outs, extra = geometry(x, node.attrs)
        nsp = x.ndim - 2
        # Pixels outside the input are marked invalid rather than given a sentinel value, so a
        # window of -inf (or of the dtype's minimum) still reports a real pixel.
        xp = padded(x, pads, 0, extra)
        valid = padded(np.ones((1, 1) + x.shape[2:], bool), pads, False, extra)
        # Flat spatial index of each padded position inside its (n, c) plane, then the plane.
        coords = np.indices(xp.shape[2:]) - np.array(pads[:nsp]).reshape((nsp,) + (1,) * nsp)
        sp = x.shape[2:]
        if node.attrs["storage_order"] == 1:   # column-major over the spatial dims
            flat, mul = 0, 1
            for i in range(nsp):
                flat, mul = flat + coords[i] * mul, mul * sp[i]
        else:
            flat, mul = 0, 1
            for i in reversed(range(nsp)):
                flat, mul = flat + coords[i] * mul, mul * sp[i]
        flat = flat[None, None]
        best = best_idx = None
        for off in offsets(kernel):
            sl = window_slice(off, dil, strides, outs)
            v, ok, idx = xp[sl], valid[sl], flat[sl]
            if best is None:
                best = v.copy()
                best_ok = np.broadcast_to(ok, v.shape).copy()
                best_idx = np.broadcast_to(idx, v.shape).copy()
                continue
            better = v > best
            if v.dtype.kind == "f":   # NaN wins, as in numpy's max
                better |= np.isnan(v) & ~np.isnan(best)
            take = ok & (~best_ok | better)
            best = np.where(take, v, best)
            best_idx = np.where(take, idx, best_idx)
            best_ok |= take
        n, c = x.shape[:2]
        plane = int(np.prod(sp))
        base = (np.arange(n * c, dtype=np.int64) * plane).reshape(n, c, *(1,) * nsp)
        return [np.ascontiguousarray(best, dtype=x.dtype), (best_idx + base).astype(np.int64)]


@register
class AveragePool(Op):
    """count_include_pad counts the explicit pads (not the ceil_mode overhang) in the divisor."""
    attrs = {**POOL_ATTRS, "count_include_pad": 0}

    def infer(self, ctx):
        ctx.check(ctx.dtype(0).kind == "f", f"expected a float X, got {ctx.dtype(0)}")
        return [TensorType(ctx.dtype(0), infer_window(ctx))]

    def compute(self, node, inputs):
        x = inputs[0]
        dt = np.float32 if x.dtype == np.float16 else x.dtype
        kernel, strides, dil, pads, outs, extra = geometry(x, node.attrs)
        xp = padded(x.astype(dt, copy=False), pads, 0, extra)
        # Which padded positions the divisor counts: the input, plus the explicit pads when
        # count_include_pad, never the ceil_mode overhang.
        ones = np.ones((1, 1) + x.shape[2:], dt)
        inside = padded(ones, pads, float(node.attrs["count_include_pad"]))
        counted = padded(inside, [0] * len(pads), 0, extra)
        total = np.zeros(x.shape[:2] + tuple(outs), dt)
        count = np.zeros((1, 1) + tuple(outs), dt)
        for off in offsets(kernel):
            sl = window_slice(off, dil, strides, outs)
            total += xp[sl]
            count += counted[sl]
        with np.errstate(all="ignore"):
            return [(total / count).astype(x.dtype)]


class _Global(Op):
    def infer(self, ctx):
        x = ctx.shape(0)
        ctx.check(len(x) >= 3, f"expected X of rank ≥ 3 (N, C, spatial…), got {x}")
        return [TensorType(ctx.dtype(0), tuple(x[:2]) + (1,) * (len(x) - 2))]

    def compute(self, node, inputs):
        x = inputs[0]
        axes = tuple(range(2, x.ndim))
        return [np.asarray(self.fn(x, axes)).astype(x.dtype)]


@register
class GlobalAveragePool(_Global):
    @staticmethod
    def fn(x, axes):
        return np.mean(x, axis=axes, keepdims=True,
                       dtype=np.float32 if x.dtype == np.float16 else None)


@register
class GlobalMaxPool(_Global):
    @staticmethod
    def fn(x, axes):
        return np.max(x, axis=axes, keepdims=True)
