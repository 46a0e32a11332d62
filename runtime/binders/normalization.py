"""BatchNormalization (inference: ``kernels/normalization.channel_affine``; training mode:
``kernels/norm_grad``), InstanceNormalization, LayerNormalization, LRN, and the gradients
``BatchNormalizationGrad`` and ``LayerNormalizationGrad``."""
from __future__ import annotations

import numpy as np

from ...graph.ops import normalization as ops
from ...graph.ops.normalization import (normalized_axis, over_normalized_axes, row_vector,
                                        unbiased_factor)
from ...kernels import norm_grad, normalization
from .common import (F32, all_float32, as_nc_inner, contiguous_f32, has_empty_output, noop,
                     optional_at)
from .registry import binds


def _inference_batch_norm(node, ins, outs, ctx):
    x, gamma, beta, mean, var = ins[:5]
    y, threads = outs[0], ctx.threads
    if any(o is not None for o in outs[1:]):
        return None
    if x.ndim < 2 or not all_float32(x, gamma, beta, mean, var, y):
        return None
    if has_empty_output(outs):
        return noop
    eps = np.float32(node.attrs.get("epsilon", 1e-5))
    C = x.shape[1]
    scale, shift = np.empty(C, F32), np.empty(C, F32)
    tmp = np.empty(C, F32)
    params = [p.reshape(C) for p in (gamma, beta, mean, var)]

    def refresh():  # scale = γ/√(σ²+ε), shift = β − μ·scale (float32, like onnxruntime)
        g, b, m, v = params
        np.add(v, eps, out=tmp)
        np.sqrt(tmp, out=tmp)
        np.divide(g, tmp, out=scale)
        np.multiply(m, scale, out=tmp)
        np.subtract(b, tmp, out=shift)

    affine = normalization.ChannelAffineStep(as_nc_inner(contiguous_f32(x)), scale, shift,
                                             as_nc_inner(y), 0, 0.0, 0.0, threads)
    if any(ctx.is_runtime(p) for p in (gamma, beta, mean, var)):
        def step():
            refresh()
            affine()
        return step
    refresh()
    return affine


def _training_batch_norm(node, ins, outs, ctx):
    """Batch statistics, and the running statistics as outputs 1 and 2."""
    (x, scale, bias, mean, var), y = ins[:5], outs[0]
    run_mean, run_var = optional_at(outs, 1), optional_at(outs, 2)
    if x.ndim < 2 or not all_float32(x, scale, bias, mean, var, y, run_mean, run_var):
        return None
    if x.size == 0:
        return None
    eps, momentum = float(node.attrs.get("epsilon", 1e-5)), float(node.attrs.get("momentum", 0.9))
    factor = unbiased_factor(x.shape) if int(node.attrs.get("running_var_unbiased", 0)) else 1.0
    C, threads = x.shape[1], ctx.threads
    x3, y3 = as_nc_inner(contiguous_f32(x)), as_nc_inner(y)
    s1, b1, m1, v1 = (contiguous_f32(p).reshape(C) for p in (scale, bias, mean, var))
    rm = run_mean.reshape(C) if run_mean is not None else None
    rv = run_var.reshape(C) if run_var is not None else None
    # a native step: the parameters and statistics are read in place, through the views taken here
    return norm_grad.BatchNormTrainStep(x3, s1, b1, m1, v1, y3, rm, rv, eps, momentum, threads,
                                        factor)


@binds(ops.BatchNormalization, kernel="normalization")
def bind_batch_norm(node, ins, outs, scratch_buf, ctx):
    if int(node.attrs.get("training_mode", 0)):
        return _training_batch_norm(node, ins, outs, ctx)
    return _inference_batch_norm(node, ins, outs, ctx)


@binds(ops.InstanceNormalization, inplace=(), kernel="normalization")
def bind_instance_norm(node, ins, outs, scratch_buf, ctx):
    x, s, b, y = ins[0], ins[1], ins[2], outs[0]
    if x.ndim < 3 or not all_float32(x, s, b, y):
        return None
    if has_empty_output(outs) or x.size == 0:
        return None
    eps, threads = float(node.attrs.get("epsilon", 1e-5)), ctx.threads
    x3, y3 = as_nc_inner(contiguous_f32(x)), as_nc_inner(y)
    s1, b1 = contiguous_f32(s).reshape(-1), contiguous_f32(b).reshape(-1)
    fn = normalization.instance_norm
    return lambda: fn(x3, s1, b1, y3, eps, threads)


def _rows(shape, axis):
    """(rows, n): a LayerNormalization input seen as rows of its normalized axes."""
    return (int(np.prod(shape[:axis], dtype=np.int64)),
            int(np.prod(shape[axis:], dtype=np.int64)))


def _row_vector(a, norm, ctx):
    """A Scale/B as the float32 vector of the normalized size the kernels read, and the
    callable that refreshes it before each run (None when it needs none): a view when ``a``
    already has the normalized shape, else a copy of its broadcast."""
    extra = max(a.ndim - len(norm), 0)
    if tuple(a.shape[extra:]) == tuple(norm):
        return contiguous_f32(a).reshape(-1), None
    vec = np.empty(int(np.prod(norm, dtype=np.int64)), F32)

    def refresh():
        np.copyto(vec.reshape(norm), row_vector(a, norm))
    refresh()
    return vec, (refresh if ctx.is_runtime(a) else None)


@binds(ops.LayerNormalization, kernel="normalization")
def bind_layer_norm(node, ins, outs, scratch_buf, ctx):
    x, scale, bias = ins[0], ins[1], optional_at(ins, 2)
    y, mean, inv = outs[0], optional_at(outs, 1), optional_at(outs, 2)
    if not all_float32(x, scale, bias, y, mean, inv) or x.size == 0:
        return None
    axis = normalized_axis(node.attrs["axis"], x.ndim)
    norm = x.shape[axis:]
    if not all(p is None or over_normalized_axes(p.shape, norm) for p in (scale, bias)):
        return None
    rows, n = _rows(x.shape, axis)
    x2, y2 = contiguous_f32(x).reshape(rows, n), y.reshape(rows, n)
    m1 = mean.reshape(rows) if mean is not None else None
    i1 = inv.reshape(rows) if inv is not None else None
    s1, refresh_s = _row_vector(scale, norm, ctx)
    b1, refresh_b = _row_vector(bias, norm, ctx) if bias is not None else (None, None)
    refreshes = [f for f in (refresh_s, refresh_b) if f is not None]
    norm = normalization.LayerNormStep(x2, s1, b1, y2, m1, i1, float(node.attrs["epsilon"]),
                                       ctx.threads)
    if refreshes:
        def step():
            for f in refreshes:
                f()
            norm()
        return step
    return norm


@binds(ops.LRN, inplace=(), kernel="normalization")
def bind_lrn(node, ins, outs, scratch_buf, ctx):
    x, y, threads = ins[0], outs[0], ctx.threads
    if x.ndim < 2 or not all_float32(x, y):
        return None
    if has_empty_output(outs):
        return noop
    at = node.attrs
    size, alpha = int(at.get("size")), float(at.get("alpha", 1e-4))
    beta, bias = float(at.get("beta", 0.75)), float(at.get("bias", 1.0))
    x3, y3, fn = as_nc_inner(contiguous_f32(x)), as_nc_inner(y), normalization.lrn
    return lambda: fn(x3, y3, size, alpha, beta, bias, threads)


@binds(ops.BatchNormalizationGrad, kernel="norm_grad")
def bind_batch_norm_grad(node, ins, outs, scratch_buf, ctx):
    dy, x, scale = ins[0], ins[1], ins[2]
    mean, var = optional_at(ins, 3), optional_at(ins, 4)
    dx, dscale, dbias = optional_at(outs, 0), optional_at(outs, 1), optional_at(outs, 2)
    training = bool(int(node.attrs.get("training_mode", 0)))
    if x.ndim < 2 or not all_float32(dy, x, scale, mean, var, dx, dscale, dbias):
        return None
    if not training and (mean is None or var is None):
        return None
    if x.size == 0:
        return None
    C, eps, threads = x.shape[1], float(node.attrs.get("epsilon", 1e-5)), ctx.threads
    g3, x3 = as_nc_inner(contiguous_f32(dy)), as_nc_inner(contiguous_f32(x))
    s1 = contiguous_f32(scale).reshape(C)
    m1 = contiguous_f32(mean).reshape(C) if mean is not None else None
    v1 = contiguous_f32(var).reshape(C) if var is not None else None
    dx3 = as_nc_inner(dx) if dx is not None else None
    ds1 = dscale.reshape(C) if dscale is not None else None
    db1 = dbias.reshape(C) if dbias is not None else None
    return norm_grad.BatchNormGradStep(g3, x3, s1, m1, v1, dx3, ds1, db1, eps, training,
                                       threads)


def _layer_norm_grad_scratch(node, types, threads):
    """Each row's mean and inv (2 floats a row) between the kernel's row and column loops."""
    shape = types[node.inputs[1]].shape
    rows, _ = _rows(shape, normalized_axis(node.attrs["axis"], len(shape)))
    return 8 * rows


@binds(ops.LayerNormalizationGrad, scratch=_layer_norm_grad_scratch, kernel="norm_grad")
def bind_layer_norm_grad(node, ins, outs, scratch_buf, ctx):
    dy, x, scale = ins[0], ins[1], ins[2]
    dx, dscale, dbias = optional_at(outs, 0), optional_at(outs, 1), optional_at(outs, 2)
    if not all_float32(dy, x, scale, dx, dscale, dbias) or x.size == 0:
        return None
    axis = normalized_axis(node.attrs["axis"], x.ndim)
    norm = x.shape[axis:]
    rows, n = _rows(x.shape, axis)
    if scratch_buf is None or scratch_buf.size < 2 * rows:
        return None
    stats = scratch_buf[:2 * rows]
    g2, x2 = contiguous_f32(dy).reshape(rows, n), contiguous_f32(x).reshape(rows, n)
    dx2 = dx.reshape(rows, n) if dx is not None else None
    ds1 = dscale.reshape(n) if dscale is not None else None
    db1 = dbias.reshape(n) if dbias is not None else None
    s1, refresh = _row_vector(scale, norm, ctx)
    eps, threads, fn = float(node.attrs["epsilon"]), ctx.threads, norm_grad.layer_norm_grad
    if refresh is not None:
        def step():
            refresh()
            fn(g2, x2, s1, dx2, ds1, db1, stats, eps, threads)
        return step
    return lambda: fn(g2, x2, s1, dx2, ds1, db1, stats, eps, threads)
