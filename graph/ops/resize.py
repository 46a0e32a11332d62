"""Resize (opset-19 semantics; the importer maps Upsample and older Resize forms to it).

Resizing is separable: each resized axis is done on its own as a gather of ``n`` taps with
per-output weights (nearest: one tap; linear: 2; cubic: 4; antialias: a stretched kernel), so
the work is vectorized over every output position and loops only over taps. The arithmetic
follows ``onnx.reference`` (float64, then a saturating cast back to the input dtype).
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import ModelError
from ..ir import TensorType
from .base import Op, register

MODES = ("nearest", "linear", "cubic")
NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")
COORD_MODES = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners",
               "asymmetric", "tf_crop_and_resize")
POLICIES = ("stretch", "not_larger", "not_smaller")


def _contiguous(a):
    """C-contiguous copy when needed; unlike np.ascontiguousarray, keeps 0-d arrays 0-d."""
    return a if a.flags.c_contiguous else a.copy(order="C")


def _str(v):
    return v.decode() if isinstance(v, bytes) else v


def _given(arr) -> bool:
    """An optional scales/sizes/roi input counts as absent when it is an empty tensor."""
    return arr is not None and np.size(arr) > 0


def _output_plan(in_shape, axes, scales, sizes, policy, fail):
    """(output shape, per-axis scale factor) over the full rank, as onnx.reference does it."""
    r = len(in_shape)
    if _given(scales) == _given(sizes):
        fail("exactly one of scales and sizes must be given (non-empty)")
    if _given(scales):
        scales = [float(s) for s in np.asarray(scales, dtype=np.float64).reshape(-1)]
        if len(scales) != len(axes):
            fail(f"scales {scales} must have one entry per resized axis {axes}")
        if any(not s > 0 for s in scales):
            fail(f"scales {scales} must be positive")
        factor = [1.0] * r
        for a, s in zip(axes, scales):
            factor[a] = s
        out = [int(in_shape[a] * factor[a]) if a in axes else in_shape[a] for a in range(r)]
        return out, factor
    sizes = [int(s) for s in np.asarray(sizes).reshape(-1)]
    if len(sizes) != len(axes):
        fail(f"sizes {sizes} must have one entry per resized axis {axes}")
    if any(s < 0 for s in sizes):
        fail(f"sizes {sizes} must not be negative")
    out = list(in_shape)
    for a, s in zip(axes, sizes):
        out[a] = s
    if any(in_shape[a] == 0 for a in axes):
        fail(f"cannot resize an empty axis (input shape {tuple(in_shape)})")
    factor = [out[a] / in_shape[a] for a in range(r)]
    if policy != "stretch":
        pick = min if policy == "not_larger" else max
        scale = pick(factor[a] for a in axes)
        factor = [scale if a in axes else 1.0 for a in range(r)]
        out = [int(scale * in_shape[a] + 0.5) if a in axes else in_shape[a] for a in range(r)]
    return out, factor


def _source_coords(mode, n_out, n_in, scale, roi):
    """Input coordinate of every output index along one axis, and the extrapolated mask."""
    y = np.arange(n_out, dtype=np.float64)
    out_f = scale * n_in  # the un-floored output length, as the spec's formulas use it
    if mode == "align_corners":
        x = np.zeros(n_out) if out_f == 1 else y * (n_in - 1) / (out_f - 1)
    elif mode == "asymmetric":
        x = y / scale
    elif mode == "tf_crop_and_resize":
        start, end = roi
        if out_f == 1:
            x = np.full(n_out, (end - start) * (n_in - 1) / 2)
        else:
            x = y * (end - start) * (n_in - 1) / (out_f - 1)
        x = x + start * (n_in - 1)
        return x, (x < 0) | (x > n_in - 1)
    elif mode == "pytorch_half_pixel":
        x = np.zeros(n_out) if out_f == 1 else (y + 0.5) / scale - 0.5
    elif mode == "half_pixel":
        x = (y + 0.5) / scale - 0.5
    else:  # half_pixel_symmetric
        offset = n_in / 2 * (1 - n_out / out_f)
        x = offset + (y + 0.5) / scale - 0.5
    return x, None


def _nearest_index(x, nearest_mode):
    if nearest_mode == "round_prefer_floor":
        return np.ceil(x - 0.5)
    if nearest_mode == "round_prefer_ceil":
        return np.floor(x + 0.5)
    if nearest_mode == "floor":
        return np.floor(x)
    return np.ceil(x)


def _cubic_kernel(t, a):
    t = np.abs(t)
    t2, t3 = t * t, t * t * t
    near = (a + 2) * t3 - (a + 3) * t2 + 1
    far = a * t3 - 5 * a * t2 + 8 * a * t - 4 * a
    return np.where(t <= 1, near, np.where(t < 2, far, 0.0))


def _taps(x, n_in, scale, attrs):
    """(indices, weights), each (n_out, taps), for linear/cubic along one axis."""
    cubic = attrs["mode"] == "cubic"
    antialias = bool(attrs["antialias"])
    s = min(scale, 1.0) if antialias else 1.0
    support = 2.0 if cubic else 1.0
    start = int(math.floor(-support / s) + 1) if antialias else (-1 if cubic else 0)
    n = 2 - 2 * start
    base = np.ceil(x) - 1                       # ratio in (0, 1]: prefer the left pixel
    ratio = x - base
    offsets = np.arange(start, start + n, dtype=np.float64)
    t = (offsets[None, :] - ratio[:, None]) * s
    w = _cubic_kernel(t, float(attrs["cubic_coeff_a"])) if cubic else np.clip(1 - np.abs(t), 0, 1)
    if antialias:
        w = w / w.sum(axis=1, keepdims=True)
    idx = (base[:, None] + offsets[None, :]).astype(np.int64)
    if attrs["exclude_outside"]:
        w = np.where((idx < 0) | (idx >= n_in), 0.0, w)
        total = w.sum(axis=1, keepdims=True)
        w = w / np.where(total == 0, 1.0, total)
    return np.clip(idx, 0, n_in - 1), w


def _saturate(values, dtype):
    """Cast like onnx.reference: round and clip into integer ranges, clip into float ranges."""
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.clip(np.round(values), info.min, info.max).astype(dtype)
    if dtype.kind == "f":
        info = np.finfo(dtype)
        return np.clip(values, info.min, info.max).astype(dtype)
    return np.asarray(values).astype(dtype)


def _resize_axis(data, axis, n_out, scale, roi, attrs):
    n_in = data.shape[axis]
    if n_out == 0:
        shape = list(data.shape)
        shape[axis] = 0
        return np.empty(shape, data.dtype)
    x, outside = _source_coords(attrs["coordinate_transformation_mode"], n_out, n_in, scale,
                                roi)
    if attrs["mode"] == "nearest":
        idx = np.clip(_nearest_index(x, attrs["nearest_mode"]), 0, n_in - 1).astype(np.intp)
        result = np.take(data, idx, axis=axis)
    else:
        idx, w = _taps(x, n_in, scale, attrs)
        wshape = (1,) * axis + (n_out,) + (1,) * (data.ndim - axis - 1)
        result = None
        for k in range(idx.shape[1]):
            term = np.take(data, idx[:, k].astype(np.intp), axis=axis) * w[:, k].reshape(wshape)
            result = term if result is None else result + term
    if outside is not None and outside.any():
        mask = outside.reshape((1,) * axis + (n_out,) + (1,) * (data.ndim - axis - 1))
        fill = _saturate(np.float64(attrs["extrapolation_value"]), result.dtype)
        result = np.where(mask, fill, result)
    return result


def _shrinking_first(axes, in_shape, out_shape):
    """``axes`` in the order to resize them: those that shrink first, then those that grow
    (each group in its given order). Every intermediate is then at most as large as the larger
    of the input and the output, which bounds the reference's memory to a small multiple of
    them; the axes are separable, so the order changes nothing but rounding."""
    return sorted(axes, key=lambda a: out_shape[a] >= in_shape[a])


@register
class Resize(Op):
    attrs = {"antialias": 0, "axes": None, "coordinate_transformation_mode": "half_pixel",
             "cubic_coeff_a": -0.75, "exclude_outside": 0, "extrapolation_value": 0.0,
             "keep_aspect_ratio_policy": "stretch", "mode": "nearest",
             "nearest_mode": "round_prefer_floor"}
    num_inputs = (1, 4)

    def infer(self, ctx):
        attrs = ctx.attrs
        for key, allowed in (("mode", MODES), ("nearest_mode", NEAREST_MODES),
                             ("coordinate_transformation_mode", COORD_MODES),
                             ("keep_aspect_ratio_policy", POLICIES)):
            attrs[key] = _str(attrs[key])
            ctx.check(attrs[key] in allowed, f"{key} {attrs[key]!r} is not one of {allowed}")
        ctx.check(ctx.dtype(0).kind in "iuf", f"cannot resize {ctx.dtype(0)} data")
        shape = ctx.shape(0)
        r = len(shape)
        raw_axes = list(range(r)) if attrs["axes"] is None else [int(a) for a in attrs["axes"]]
        for a in raw_axes:
            ctx.check(-r <= a < r, f"axis {a} is out of range for rank {r}")
        axes = [a % r for a in raw_axes]
        ctx.check(len(set(axes)) == len(axes), f"axes {raw_axes} has repeated axes")
        attrs["axes"] = axes
        scales = ctx.const(2, "scales") if ctx.has(2) and ctx.type(2).size else None
        sizes = ctx.const(3, "sizes") if ctx.has(3) and ctx.type(3).size else None
        if attrs["coordinate_transformation_mode"] == "tf_crop_and_resize" and ctx.has(1) \
                and ctx.type(1).size:
            ctx.check(ctx.type(1).size == 2 * len(axes),
                      f"roi must have 2 × {len(axes)} entries, got shape {ctx.shape(1)}")
        static = all(isinstance(shape[a], (int, np.integer)) for a in axes)
        probe = [int(d) if isinstance(d, (int, np.integer)) else 1 for d in shape]
        out, _ = _output_plan(probe, axes, scales, sizes, attrs["keep_aspect_ratio_policy"],
                              ctx.fail)
        if not static:
            out = [shape[a] if a not in axes else f"{ctx.node.name}_d{a}" for a in range(r)]
        else:
            out = [shape[a] if a not in axes else out[a] for a in range(r)]
        return [TensorType(ctx.dtype(0), tuple(out))]

    def export(self, ctx, node, inputs, outputs, attrs):
        """``half_pixel_symmetric`` has no form before opset 19; every axis in order is
        ONNX's default and is left out."""
        mode = _str(attrs.get("coordinate_transformation_mode", "half_pixel"))
        if mode == "half_pixel_symmetric" and ctx.opset < 19:
            raise ModelError(f"{node}: Resize coordinate_transformation_mode "
                             f"'half_pixel_symmetric' needs opset ≥ 19 (exporting at {ctx.opset})")
        axes, rank = attrs.get("axes"), ctx.rank(inputs[0])
        if axes is not None and rank is not None \
                and [int(a) % rank for a in axes] == list(range(rank)):
            attrs.pop("axes")
        super().export(ctx, node, inputs, outputs, attrs)

    def compute(self, node, inputs):
        inputs = list(inputs) + [None] * (4 - len(inputs))
        x, roi, scales, sizes = inputs
        attrs = node.attrs
        r = x.ndim
        axes = [int(a) % r for a in (attrs["axes"] if attrs["axes"] is not None else range(r))]

        def fail(msg):
            raise ValueError(msg)
        out, factor = _output_plan(list(x.shape), axes, scales, sizes,
                                   attrs["keep_aspect_ratio_policy"], fail)
        full_roi = [(0.0, 1.0)] * r
        if attrs["coordinate_transformation_mode"] == "tf_crop_and_resize" and _given(roi):
            roi = [float(v) for v in np.asarray(roi).reshape(-1)]
            for k, a in enumerate(axes):
                full_roi[a] = (roi[k], roi[len(axes) + k])
        if 0 in out:
            return [np.empty(out, x.dtype)]
        nearest = attrs["mode"] == "nearest"
        data = x if nearest else x.astype(np.float64)
        for a in _shrinking_first(axes, x.shape, out):
            identity = (math.isclose(factor[a], 1.0) and out[a] == data.shape[a]
                        and math.isclose(full_roi[a][0], 0.0)
                        and math.isclose(full_roi[a][1], 1.0))
            if not identity:
                data = _resize_axis(data, a, out[a], factor[a], full_roi[a], attrs)
        return [_contiguous(data if nearest else _saturate(data, x.dtype))]
