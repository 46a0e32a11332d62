"""MaxPool (with optional Indices), AveragePool, GlobalAveragePool, GlobalMaxPool.

Window geometry comes from conv.py; ``ceil_mode`` stays an attribute (it changes the output
size only) while ``auto_pad`` is resolved to explicit ``pads`` in ``infer``.
"""
from __future__ import annotations

import itertools

import numpy as np

from ..ir import TensorType
from .base import REQUIRED, TRAINING_DOMAIN, Op, register
from .conv import (padded, padded_image_elements, resolve_pads, spatial_attr, window_out,
                   window_slice)

POOL_ATTRS = {"auto_pad": "NOTSET", "ceil_mode": 0, "dilations": [], "kernel_shape": REQUIRED,
              "pads": [], "strides": []}


def infer_window(ctx, x=None):
    """Check X (input 0 unless given) and resolve the window attributes; return the output
    shape."""
    x = ctx.shape(0) if x is None else tuple(x)
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

    def reference_temporaries(self, node, types):
        return padded_image_elements(node, types, node.input(0), node.outputs[0])

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

    def reference_temporaries(self, node, types):
        return padded_image_elements(node, types, node.input(0), node.outputs[0])

    def infer(self, ctx):
        ctx.check(ctx.dtype(0).kind == "f", f"expected a float X, got {ctx.dtype(0)}")
        return [TensorType(ctx.dtype(0), infer_window(ctx))]

    def export(self, ctx, node, inputs, outputs, attrs):
        """Unit dilations are left out: ONNX has them on AveragePool only from opset 19."""
        dil = attrs.get("dilations")
        if dil is not None and all(int(d) == 1 for d in dil):
            attrs.pop("dilations")
        super().export(ctx, node, inputs, outputs, attrs)

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
        # the max (or mean) of an empty window is undefined: onnxruntime refuses it as well
        ctx.check(0 not in x[2:] or 0 in x[:2],
                  f"expected non-empty spatial dims (only N or C may be 0), got {x}")
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


# ---- gradients -------------------------------------------------------------------------------
def _crop(dxp, pads, shape):
    """The input's region of a padded gradient buffer."""
    nsp = len(shape) - 2
    return dxp[(slice(None), slice(None)) + tuple(slice(pads[i], pads[i] + shape[2 + i])
                                                  for i in range(nsp))]


def _check_dy(ctx, x_shape):
    want = infer_window(ctx, x_shape)
    ctx.check(tuple(ctx.shape(0)) == tuple(want),
              f"expected dY of shape {tuple(want)} for an input of {tuple(x_shape)}, got "
              f"{tuple(ctx.shape(0))}")
    ctx.check(ctx.dtype(0).kind == "f", f"expected a float dY, got {ctx.dtype(0)}")


@register
class MaxPoolGrad(Op):
    """dY routed to each window's first maximum (row-major window order, PyTorch's tie rule);
    overlapping windows accumulate."""
    domain = TRAINING_DOMAIN
    attrs = {**POOL_ATTRS, "storage_order": 0}
    num_inputs = (2, 2)

    def reference_temporaries(self, node, types):
        return padded_image_elements(node, types, node.input(1), node.input(0))

    def infer(self, ctx):
        _check_dy(ctx, ctx.shape(1))
        ctx.check(ctx.dtype(1) == ctx.dtype(0), f"expected X of dY's dtype {ctx.dtype(0)}, got "
                                                f"{ctx.dtype(1)}")
        return [ctx.type(1)]

    def compute(self, node, inputs):
        dy, x = inputs
        kernel, strides, dil, pads, outs, extra = geometry(x, node.attrs)
        xp = padded(x, pads, 0, extra)
        valid = padded(np.ones((1, 1) + x.shape[2:], bool), pads, False, extra)
        best = best_ok = best_k = None
        for k, off in enumerate(offsets(kernel)):
            sl = window_slice(off, dil, strides, outs)
            v, ok = xp[sl], np.broadcast_to(valid[sl], xp[sl].shape)
            if best is None:
                best, best_ok, best_k = v.copy(), ok.copy(), np.zeros(v.shape, np.int64)
                continue
            better = (v > best) | (np.isnan(v) & ~np.isnan(best))
            take = ok & (~best_ok | better)
            best = np.where(take, v, best)
            best_k = np.where(take, k, best_k)
            best_ok |= take
        dxp = np.zeros(xp.shape, np.float64)
        d = dy.astype(np.float64)
        for k, off in enumerate(offsets(kernel)):
            dxp[window_slice(off, dil, strides, outs)] += np.where(best_k == k, d, 0.0)
        return [np.ascontiguousarray(_crop(dxp, pads, x.shape)).astype(dy.dtype)]


@register
class AveragePoolGrad(Op):
    """dY spread evenly over each window, with AveragePool's divisor."""
    domain = TRAINING_DOMAIN
    attrs = {**POOL_ATTRS, "count_include_pad": 0, "input_shape": REQUIRED}

    def reference_temporaries(self, node, types):
        return padded_image_elements(node, types, node.outputs[0], node.input(0))

    def infer(self, ctx):
        xs = tuple(int(d) for d in ctx.attrs["input_shape"])
        _check_dy(ctx, xs)
        return [TensorType(ctx.dtype(0), xs)]

    def compute(self, node, inputs):
        dy = inputs[0]
        xs = tuple(int(d) for d in node.attrs["input_shape"])
        ghost = np.broadcast_to(np.empty((), np.bool_), xs)   # geometry reads its shape
        kernel, strides, dil, pads, outs, extra = geometry(ghost, node.attrs)
        ones = np.ones((1, 1) + xs[2:])
        inside = padded(ones, pads, float(node.attrs["count_include_pad"]))
        counted = padded(inside, [0] * len(pads), 0, extra)
        count = np.zeros((1, 1) + tuple(outs))
        for off in offsets(kernel):
            count += counted[window_slice(off, dil, strides, outs)]
        with np.errstate(all="ignore"):
            share = dy.astype(np.float64) / count
        dxp = np.zeros(xs[:2] + counted.shape[2:])
        for off in offsets(kernel):
            dxp[window_slice(off, dil, strides, outs)] += share
        return [np.ascontiguousarray(_crop(dxp, pads, xs)).astype(dy.dtype)]


@register
class GlobalAveragePoolGrad(Op):
    """dX[n, c, …] = dY[n, c] / (number of spatial positions)."""
    domain = TRAINING_DOMAIN
    attrs = {"input_shape": REQUIRED}

    def infer(self, ctx):
        xs = tuple(int(d) for d in ctx.attrs["input_shape"])
        dy = tuple(ctx.shape(0))
        ctx.check(len(xs) >= 3 and dy == xs[:2] + (1,) * (len(xs) - 2),
                  f"expected dY of shape {xs[:2] + (1,) * (len(xs) - 2)} for input_shape {xs}, "
                  f"got {dy}")
        ctx.check(ctx.dtype(0).kind == "f", f"expected a float dY, got {ctx.dtype(0)}")
        return [TensorType(ctx.dtype(0), xs)]

    def compute(self, node, inputs):
        dy = inputs[0]
        xs = tuple(int(d) for d in node.attrs["input_shape"])
        plane = int(np.prod(xs[2:]))
        return [np.broadcast_to(dy.astype(np.float64) / plane, xs).astype(dy.dtype)]


def _pool_attrs(node, *extra):
    a = node.attrs
    out = {k: list(a[k]) for k in ("kernel_shape", "strides", "pads", "dilations")}
    out["ceil_mode"] = int(a["ceil_mode"])
    out.update({k: a[k] for k in extra})
    return out


def _maxpool_gradient(self, node, grads, g):
    if grads[0] is None or not g.needs(0):
        return [None]
    return [g.op("MaxPoolGrad", [grads[0], g.input(0)], **_pool_attrs(node))]


def _avgpool_gradient(self, node, grads, g):
    if not g.needs(0):
        return [None]
    return [g.op("AveragePoolGrad", [grads[0]], input_shape=list(g.shape(g.input(0))),
                 **_pool_attrs(node, "count_include_pad"))]


def _gap_gradient(self, node, grads, g):
    if not g.needs(0):
        return [None]
    return [g.op("GlobalAveragePoolGrad", [grads[0]], input_shape=list(g.shape(g.input(0))))]


MaxPool.gradient = _maxpool_gradient
AveragePool.gradient = _avgpool_gradient
GlobalAveragePool.gradient = _gap_gradient
