"""BatchNormalization (inference: ``kernels/normalization.channel_affine``; training mode:
``kernels/norm_grad``), InstanceNormalization, LRN, and ``BatchNormalizationGrad``."""
from __future__ import annotations

import numpy as np

from ...graph.ops import normalization as ops
from ...graph.ops.normalization import unbiased_factor
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

    x3, y3, fn = as_nc_inner(contiguous_f32(x)), as_nc_inner(y), normalization.channel_affine
    if any(ctx.is_runtime(p) for p in (gamma, beta, mean, var)):
        def step():
            refresh()
            fn(x3, scale, shift, y3, 0, 0.0, 0.0, threads)
        return step
    refresh()
    return lambda: fn(x3, scale, shift, y3, 0, 0.0, 0.0, threads)


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
    x3, y3, fn = as_nc_inner(contiguous_f32(x)), as_nc_inner(y), norm_grad.batch_norm_train
    s1, b1, m1, v1 = (contiguous_f32(p).reshape(C) for p in (scale, bias, mean, var))
    rm = run_mean.reshape(C) if run_mean is not None else None
    rv = run_var.reshape(C) if run_var is not None else None
    return lambda: fn(x3, s1, b1, m1, v1, y3, rm, rv, eps, momentum, threads, factor)


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
    fn = norm_grad.batch_norm_grad
    return lambda: fn(g3, x3, s1, m1, v1, dx3, ds1, db1, eps, training, threads)
