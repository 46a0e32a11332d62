"""Resize (``kernels/resize``): nearest and bilinear resizes of the last two axes of float32
data, the coordinate modes torch and YOLO exports write. Everything else — cubic, antialias,
exclude_outside, tf_crop_and_resize, a resized leading axis, another dtype — runs the numpy
reference of ``graph/ops/resize.py``."""
from __future__ import annotations

import math

import numpy as np

from ...graph.ops import resize as ops
from ...kernels import resize
from .common import all_float32, contiguous_f32, has_empty_output, noop, optional_at
from .registry import binds


def _given(a) -> bool:
    return a is not None and a.size > 0


def plane_scales(node, x_shape, y_shape, scales, sizes):
    """(scale_h, scale_w) of the last two axes — the reference's factors (``_output_plan``) —
    or None when the kernel does not cover the node: a leading axis really resized, or an
    output shape other than the plan's."""
    r = len(x_shape)
    attrs = node.attrs
    axes = [int(a) % r for a in (attrs["axes"] if attrs["axes"] is not None else range(r))]

    def fail(msg):
        raise ValueError(msg)
    try:
        out, factor = ops._output_plan(list(x_shape), axes, scales, sizes,
                                       attrs["keep_aspect_ratio_policy"], fail)
    except ValueError:
        return None          # the reference raises the same at run time, naming the problem
    if tuple(out) != tuple(y_shape):
        return None
    for a in range(r - 2):   # leading axes: only ones the reference leaves alone (identity)
        if a in axes and not (math.isclose(factor[a], 1.0) and out[a] == x_shape[a]):
            return None
    return float(factor[r - 2]), float(factor[r - 1])


def kernel_covers(attrs) -> bool:
    return (attrs["mode"] in ("nearest", "linear") and not int(attrs["antialias"])
            and not int(attrs["exclude_outside"])
            and attrs["coordinate_transformation_mode"] in resize.COORDINATE_MODES
            and attrs["nearest_mode"] in resize.NEAREST_MODES)


@binds(ops.Resize, inplace=(), kernel="resize")
def bind_resize(node, ins, outs, scratch_buf, ctx):
    x, y = ins[0], outs[0]
    scales, sizes = optional_at(ins, 2), optional_at(ins, 3)
    if x.ndim < 2 or not all_float32(x, y) or not kernel_covers(node.attrs):
        return None
    if any(a is not None and ctx.is_runtime(a) for a in (scales, sizes)):
        return None          # factors that may change between runs: the reference reads them
    fs = plane_scales(node, x.shape, y.shape, scales if _given(scales) else None,
                      sizes if _given(sizes) else None)
    if fs is None:
        return None
    if has_empty_output(outs):
        return noop
    planes = int(np.prod(x.shape[:-2], dtype=np.int64))
    x3 = contiguous_f32(x).reshape(planes, x.shape[-2], x.shape[-1])
    y3 = y.reshape(planes, y.shape[-2], y.shape[-1])
    return resize.resize_step(x3, y3, node.attrs["mode"],
                              node.attrs["coordinate_transformation_mode"],
                              node.attrs["nearest_mode"], fs[0], fs[1], ctx.threads)
