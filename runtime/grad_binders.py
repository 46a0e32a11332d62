"""Fast paths for training: gradient ops, Dropout's and BatchNormalization's training-mode
forwards, and the softmax cross-entropy loss (see ``bindings`` for the binder contract and
graph/TRAINING.md §2 for the ops).

Like ``kernel_binders``, each binder does the shape work once and returns a step that only calls
a kernel, or ``None`` (→ the op's numpy reference) for what it does not cover: another dtype or
rank, a kernel module not built. Unlike some inference binders, nothing here precomputes from
an input's *value* at bind time: parameters are external state in training and change between
runs, so every value is read inside the step.
"""
from __future__ import annotations

import math

import numpy as np

from ..graph.errors import InputError
from ..graph.ops.normalization import unbiased_factor
from ..graph.ops.tensor import dropout_seed
from .bindings import BINDERS, binder, scratch
from .kernel_binders import (F32, _as4d, _c, _conv_geometry, _empty_output, _f32, _ints, _k,
                             _nci, _noop, _opt, winograd_scratch_floats, winograd_tile)

U8 = np.uint8
_U64 = (1 << 64) - 1


def _as_u8(mask):
    """A bool array's bytes as uint8 (the kernels' mask type); same memory."""
    return mask.reshape(-1).view(U8)


def _scalar(a, default):
    """A one-element input as a Python float/bool (None → default), read when called."""
    return default if a is None else a.reshape(-1)[0].item()


# ---- convolution gradients ---------------------------------------------------------------------
def _conv_grad_case(node, dy_shape, x_shape, w_shape):
    """(N, C, H, W, M, KH, KW, OH, OW, sh, sw, pt, pl, dh, dw, group) for a 1-D or 2-D conv whose
    input has x_shape, weight w_shape and output dy_shape; None for other ranks."""
    if len(dy_shape) not in (3, 4) or not len(dy_shape) == len(x_shape) == len(w_shape):
        return None
    nd = len(dy_shape) - 2
    as4 = (lambda s: (s[0], s[1], 1, s[2])) if nd == 1 else tuple
    (N, C, H, W), (M, _, KH, KW), (_, _, OH, OW) = as4(x_shape), as4(w_shape), as4(dy_shape)
    sh, sw, pt, pl, dh, dw, _ = _conv_geometry(node, nd)
    return (N, C, H, W, M, KH, KW, OH, OW, sh, sw, pt, pl, dh, dw,
            int(node.attrs.get("group", 1) or 1))


def _grad_input_case(node, types):
    dy, w = types.get(node.input(0)), types.get(node.input(1))
    if dy is None or w is None or dy.dtype != F32 or not (dy.is_static and w.is_static):
        return None
    return _conv_grad_case(node, tuple(dy.shape), tuple(int(d) for d in node.attrs["input_shape"]),
                           tuple(w.shape))


def _grad_weight_case(node, types):
    dy, x = types.get(node.input(0)), types.get(node.input(1))
    if dy is None or x is None or dy.dtype != F32 or not (dy.is_static and x.is_static):
        return None
    return _conv_grad_case(node, tuple(dy.shape), tuple(x.shape),
                           tuple(int(d) for d in node.attrs["weight_shape"]))


def _scratch_floats(kind, case_fn, node, types, threads):
    cg, case = _k("conv_grad"), case_fn(node, types)
    if cg is None or case is None:
        return 0
    return int(getattr(cg, f"conv_grad_{kind}_scratch_floats")(*case, threads))


def _winograd_grad_input_case(node, types, threads):
    """(N, C, H, W, M, OH, OW, pad_top, pad_left, tile, U floats, conv scratch floats) when this
    ConvGradInput runs through Winograd: dX of a 3×3 stride-1 conv is a 3×3 stride-1 conv of dY
    with the weights flipped 180° and in/out channels swapped, padded by 2 − pad."""
    wg, case = _k("winograd"), _grad_input_case(node, types)
    if wg is None or case is None:
        return None
    N, C, H, W, M, KH, KW, OH, OW, sh, sw, pt, pl, dh, dw, group = case
    if (KH, KW) != (3, 3) or (sh, sw, dh, dw, group) != (1, 1, 1, 1, 1) or H < 1 or W < 1:
        return None
    tile = winograd_tile(N, M, C, H, W)
    if not tile:
        return None
    return (N, C, H, W, M, OH, OW, 2 - pt, 2 - pl, tile,
            int(wg.winograd_weight_floats(C, M, tile)),
            winograd_scratch_floats(N, M, OH, OW, C, H, W, tile, threads))


@scratch("ConvGradInput")
def _conv_grad_input_scratch(node, types, threads):
    wc = _winograd_grad_input_case(node, types, threads)
    if wc is not None:
        return 4 * (wc[10] + wc[11])   # transformed weights (they change every step) + blocks
    return 4 * _scratch_floats("input", _grad_input_case, node, types, threads)


@scratch("ConvGradWeight")
def _conv_grad_weight_scratch(node, types, threads):
    return 4 * _scratch_floats("weight", _grad_weight_case, node, types, threads)


def _planned(scratch_buf, need):
    """The planned scratch cut to ``need`` floats; False when the plan gave less."""
    if not need:
        return None
    if scratch_buf is None or scratch_buf.size < need:
        return False
    return scratch_buf[:need]


def _conv_grad_binder(kind, case_fn, out_shape4):
    def bind(node, types, ins, outs, scratch_buf, threads):
        cg, case = _k("conv_grad"), case_fn(node, types)
        if cg is None or case is None or not _f32(*ins, *outs):
            return None
        if _empty_output(outs):
            return _noop
        N, C, H, W, M, KH, KW, OH, OW, sh, sw, pt, pl, dh, dw, group = case
        scr = _planned(scratch_buf, _scratch_floats(kind, case_fn, node, types, threads))
        if scr is False:
            return None
        dy = _c(ins[0]).reshape(N, M, OH, OW)
        other = _as4d(_c(ins[1]))
        out = outs[0].reshape(out_shape4(case))
        fn = getattr(cg, f"conv_grad_{kind}")
        return lambda: fn(dy, other, out, scr, sh, sw, pt, pl, dh, dw, group, threads)
    return bind


_conv_grad_input_gemm = _conv_grad_binder("input", _grad_input_case,
                                          lambda c: (c[0], c[1], c[2], c[3]))


@binder("ConvGradInput")
def _conv_grad_input(node, types, ins, outs, scratch_buf, threads):
    """Winograd when the case takes it (and the plan gave its scratch), else col2im GEMM."""
    wc = _winograd_grad_input_case(node, types, threads)
    if wc is None or not _f32(*ins, *outs) or _empty_output(outs):
        return _conv_grad_input_gemm(node, types, ins, outs, scratch_buf, threads)
    N, C, H, W, M, OH, OW, pt, pl, tile, u_n, conv_n = wc
    if scratch_buf is None or scratch_buf.size < u_n + conv_n:
        return _conv_grad_input_gemm(node, types, ins, outs, scratch_buf, threads)
    wg, a2 = _k("winograd"), (tile + 2) ** 2
    U, scr = scratch_buf[:u_n].reshape(a2, u_n // a2), scratch_buf[u_n:u_n + conv_n]
    dy, w4, dx = _c(ins[0]).reshape(N, M, OH, OW), _c(ins[1]).reshape(M, C, 3, 3), \
        outs[0].reshape(N, C, H, W)
    transform, conv = wg.winograd_weights, wg.conv2d_winograd

    def step():
        transform(w4, U, tile, True, threads)
        conv(dy, U, None, dx, scr, tile, pt, pl, 0, 0.0, 0.0, threads)
    step.winograd_tile = tile
    return step


binder("ConvGradWeight")(_conv_grad_binder(
    "weight", _grad_weight_case, lambda c: (c[4], c[1] // c[15], c[5], c[6])))


# ---- reductions: BiasGrad, SumToShape ------------------------------------------------------------
def _channel_sum_step(x, y, outer, c, inner, threads):
    fn = _k("reduce_grad").channel_sum
    x3, y1 = _c(x).reshape(outer, c, inner), y.reshape(c)
    return lambda: fn(x3, y1, threads)


@binder("BiasGrad")
def _bias_grad(node, types, ins, outs, scratch_buf, threads):
    x, y = ins[0], outs[0]
    if _k("reduce_grad") is None or x.ndim == 0 or not _f32(x, y):
        return None
    axis = int(node.attrs.get("axis", 1)) % x.ndim
    outer = int(np.prod(x.shape[:axis], dtype=np.int64))
    inner = int(np.prod(x.shape[axis + 1:], dtype=np.int64))
    return _channel_sum_step(x, y, outer, x.shape[axis], inner, threads)


@binder("SumToShape")
def _sum_to_shape(node, types, ins, outs, scratch_buf, threads):
    """One kept block of axes (the usual bias-like shapes) → channel_sum; no summed axis → a
    copy; any other pattern → numpy's sum straight into the output."""
    x, y = ins[0], outs[0]
    if _k("reduce_grad") is None or not _f32(x, y):
        return None
    target = (1,) * (x.ndim - y.ndim) + tuple(y.shape)
    summed = [i for i in range(x.ndim) if target[i] == 1 and x.shape[i] != 1]
    if not summed:
        return lambda: np.copyto(y, x.reshape(y.shape))
    kept = [i for i in range(x.ndim) if i not in summed and x.shape[i] != 1]
    a, b = (min(kept), max(kept) + 1) if kept else (0, 0)
    if not any(a <= i < b for i in summed):
        outer = int(np.prod(x.shape[:a], dtype=np.int64))
        inner = int(np.prod(x.shape[b:], dtype=np.int64))
        return _channel_sum_step(x, y, outer, int(np.prod(x.shape[a:b], dtype=np.int64)),
                                 inner, threads)
    axes, yk = tuple(summed), y.reshape(target)
    return lambda: np.sum(x, axis=axes, keepdims=True, out=yk)


# ---- pooling gradients ---------------------------------------------------------------------------
def _window(node, nd):
    """(kh, kw, sh, sw, pt, pl, pb, pr, dh, dw) of a 1-D or 2-D pool."""
    ks = _ints(node.attrs.get("kernel_shape"), nd, 0)
    kh, kw = (1, ks[0]) if nd == 1 else ks
    sh, sw, pt, pl, dh, dw, (pb, pr) = _conv_geometry(node, nd)
    return kh, kw, sh, sw, pt, pl, pb, pr, dh, dw


@binder("MaxPoolGrad")
def _max_pool_grad(node, types, ins, outs, scratch_buf, threads):
    pg, dy, x, dx = _k("pool_grad"), ins[0], ins[1], outs[0]
    if pg is None or x.ndim not in (3, 4) or not _f32(dy, x, dx):
        return None
    if _empty_output(outs):
        return _noop
    kh, kw, sh, sw, pt, pl, _, _, dh, dw = _window(node, x.ndim - 2)
    dy4, x4, dx4, fn = _as4d(_c(dy)), _as4d(_c(x)), _as4d(dx), pg.max_pool2d_grad
    return lambda: fn(dy4, x4, dx4, kh, kw, sh, sw, pt, pl, dh, dw, threads)


@binder("AveragePoolGrad")
def _avg_pool_grad(node, types, ins, outs, scratch_buf, threads):
    pg, dy, dx = _k("pool_grad"), ins[0], outs[0]
    if pg is None or dx.ndim not in (3, 4) or not _f32(dy, dx):
        return None
    if _empty_output(outs):
        return _noop
    kh, kw, sh, sw, pt, pl, pb, pr, dh, dw = _window(node, dx.ndim - 2)
    include = bool(int(node.attrs.get("count_include_pad", 0)))
    dy4, dx4, fn = _as4d(_c(dy)), _as4d(dx), pg.avg_pool2d_grad
    return lambda: fn(dy4, dx4, kh, kw, sh, sw, pt, pl, pb, pr, dh, dw, include, threads)


@binder("GlobalAveragePoolGrad")
def _global_avg_pool_grad(node, types, ins, outs, scratch_buf, threads):
    pg, dy, dx = _k("pool_grad"), ins[0], outs[0]
    if pg is None or dx.ndim < 3 or not _f32(dy, dx):
        return None
    if _empty_output(outs):
        return _noop
    nc = dx.shape[0] * dx.shape[1]
    dy1, dx2, fn = _c(dy).reshape(nc), dx.reshape(nc, -1), pg.global_avg_pool_grad
    return lambda: fn(dy1, dx2, threads)


# ---- elementwise: ActivationGrad, Dropout, DropoutGrad --------------------------------------------
_ACT_CODES = {"Relu": 1, "LeakyRelu": 2, "Elu": 3, "Sigmoid": 5, "HardSigmoid": 6,
              "HardSwish": 7, "Tanh": 8, "Softplus": 9, "Clip": 10}


@binder("ActivationGrad")
def _activation_grad(node, types, ins, outs, scratch_buf, threads):
    ag, dy, t, dx = _k("act_grad"), ins[0], ins[1], outs[0]
    code = _ACT_CODES.get(node.attrs.get("activation"))
    if ag is None or code is None or not _f32(dy, t, dx) or dy.shape != t.shape:
        return None
    if _empty_output(outs):
        return _noop
    a, b = float(node.attrs.get("alpha", 0.0)), float(node.attrs.get("beta", 0.0))
    if code == 10:   # Clip: absent bounds arrive as ±inf, which float32 keeps
        a, b = (-math.inf if math.isnan(a) else a), (math.inf if math.isnan(b) else b)
    g1, t1, dx1, fn = _c(dy).reshape(-1), _c(t).reshape(-1), dx.reshape(-1), ag.activation_grad
    return lambda: fn(g1, t1, dx1, code, a, b, threads)


@binder("DropoutGrad")
def _dropout_grad(node, types, ins, outs, scratch_buf, threads):
    ag, dy, mask, dx = _k("act_grad"), ins[0], ins[1], outs[0]
    if ag is None or not _f32(dy, dx) or mask.dtype != np.bool_ or mask.shape != dy.shape:
        return None
    if _empty_output(outs):
        return _noop
    ratio = float(node.attrs.get("ratio", 0.5))
    g1, m1, dx1, fn = _c(dy).reshape(-1), _as_u8(mask), dx.reshape(-1), ag.dropout_grad
    return lambda: fn(g1, m1, dx1, ratio, threads)


@binder("Dropout")
def _dropout(node, types, ins, outs, scratch_buf, threads):
    """Training: the mask of (seed, step, element). The step is the node's optional 4th input,
    read live every run (the Trainer's ``dropout_step`` counter, graph/TRAINING.md §1); without
    one, a counter in this closure, so each compiled context draws its own reproducible
    sequence. Inference: y = x, mask all True. ratio / training_mode are read every run (they
    are one element). Same masks as the numpy reference (``tensor.dropout_keep``)."""
    ag, x, y = _k("act_grad"), ins[0], outs[0]
    ratio_in, train_in, step_in, mask = _opt(ins, 1), _opt(ins, 2), _opt(ins, 3), _opt(outs, 1)
    if ag is None or not _f32(x, y) or (ratio_in is not None and ratio_in.dtype.kind != "f"):
        return None
    if step_in is not None and step_in.dtype.kind not in "iu":
        return None
    if _empty_output(outs):
        return _noop
    x1, y1, fn = _c(x).reshape(-1), y.reshape(-1), ag.dropout_forward
    m1 = _as_u8(mask) if mask is not None else np.empty(x.size, U8)   # bind time, reused
    seed, run, offset = dropout_seed(node), [0], int(node.attrs.get("offset", 0))
    step1 = step_in.reshape(-1) if step_in is not None else None

    def step():
        ratio = float(_scalar(ratio_in, 0.5))
        if not bool(_scalar(train_in, False)) or ratio == 0.0:
            np.copyto(y1, x1)
            m1.fill(1)
            return
        if not 0.0 <= ratio <= 1.0:
            raise InputError(f"{node}: ratio {ratio} must lie in [0, 1]")
        if step1 is not None:
            fn(x1, y1, m1, ratio, seed, int(step1[0]) & _U64, threads, offset)
        else:
            fn(x1, y1, m1, ratio, seed, run[0], threads, offset)
            run[0] += 1
    return step


# ---- softmax gradients ---------------------------------------------------------------------------
@binder("SoftmaxGrad", "LogSoftmaxGrad")
def _softmax_grad(node, types, ins, outs, scratch_buf, threads):
    sg, dy, y, dx = _k("softmax_grad"), ins[0], ins[1], outs[0]
    if sg is None or y.ndim == 0 or not _f32(dy, y, dx) or dy.shape != y.shape:
        return None
    if _empty_output(outs):
        return _noop
    axis = int(node.attrs.get("axis", -1)) % y.ndim
    outer = int(np.prod(y.shape[:axis], dtype=np.int64))
    inner = int(np.prod(y.shape[axis + 1:], dtype=np.int64))
    shape3 = (outer, y.shape[axis], inner)
    g3, y3, dx3 = _c(dy).reshape(shape3), _c(y).reshape(shape3), dx.reshape(shape3)
    log, fn = node.op_type == "LogSoftmaxGrad", sg.softmax_grad
    return lambda: fn(g3, y3, dx3, log, threads)


# ---- softmax cross entropy -----------------------------------------------------------------------
_REDUCTION = {"none": 0, "sum": 1, "mean": 2}


def _xent_args(node, labels, weights, n_classes):
    """(reduction code, ignore_index, has_ignore) or None when the kernel does not cover it."""
    red = _REDUCTION.get(node.attrs.get("reduction", "mean"))
    if red is None or labels.dtype != np.int64 or labels.ndim != 1 or \
            (weights is not None and weights.shape != (n_classes,)):
        return None
    ignore = node.attrs.get("ignore_index")
    return red, (0 if ignore is None else int(ignore)), ignore is not None


def _bad_label(node, labels, row, n_classes):
    return InputError(f"{node}: label {int(labels.reshape(-1)[row])} is outside [0, "
                      f"{n_classes}) (and is not ignore_index {node.attrs.get('ignore_index')})")


@binder("SoftmaxCrossEntropyLoss")
def _softmax_xent(node, types, ins, outs, scratch_buf, threads):
    sg, scores, labels, weights = _k("softmax_grad"), ins[0], ins[1], _opt(ins, 2)
    loss, logp = outs[0], _opt(outs, 1)
    if sg is None or scores.ndim != 2 or not _f32(scores, weights, loss, logp):
        return None
    args = _xent_args(node, labels, weights, scores.shape[1])
    if args is None:
        return None
    red, ignore, has_ignore = args
    s2, w1, loss1 = _c(scores), _c(weights), loss.reshape(-1)
    lp = logp if logp is not None else np.empty(scores.shape, F32)   # bind time, reused
    fn, C = sg.softmax_xent, scores.shape[1]

    def step():
        bad = fn(s2, labels, w1, lp, loss1, red, ignore, has_ignore, threads)
        if bad >= 0:
            raise _bad_label(node, labels, bad, C)
    return step


@binder("SoftmaxCrossEntropyLossGrad")
def _softmax_xent_grad(node, types, ins, outs, scratch_buf, threads):
    sg, dloss, logp, labels, weights = _k("softmax_grad"), ins[0], ins[1], ins[2], _opt(ins, 3)
    dscores = outs[0]
    if sg is None or logp.ndim != 2 or not _f32(dloss, logp, weights, dscores):
        return None
    args = _xent_args(node, labels, weights, logp.shape[1])
    if args is None:
        return None
    if _empty_output(outs):
        return _noop
    red, ignore, has_ignore = args
    d1, lp2, w1, fn, C = _c(dloss).reshape(-1), _c(logp), _c(weights), sg.softmax_xent_grad, \
        logp.shape[1]

    def step():
        bad = fn(d1, lp2, labels, w1, dscores, red, ignore, has_ignore, threads)
        if bad >= 0:
            raise _bad_label(node, labels, bad, C)
    return step


# ---- BatchNormalization: training forward and gradient ------------------------------------------
_eval_batch_norm = BINDERS.get("BatchNormalization")


@binder("BatchNormalization")
def _batch_norm(node, types, ins, outs, scratch_buf, threads):
    """training_mode=1 here (batch statistics, running-stat outputs); otherwise the inference
    binder in kernel_binders."""
    if not int(node.attrs.get("training_mode", 0)):
        return _eval_batch_norm(node, types, ins, outs, scratch_buf, threads) \
            if _eval_batch_norm else None
    ng, (x, scale, bias, mean, var), y = _k("norm_grad"), ins[:5], outs[0]
    run_mean, run_var = _opt(outs, 1), _opt(outs, 2)
    if ng is None or x.ndim < 2 or not _f32(x, scale, bias, mean, var, y, run_mean, run_var):
        return None
    if x.size == 0:
        return None
    eps, momentum = float(node.attrs.get("epsilon", 1e-5)), float(node.attrs.get("momentum", 0.9))
    factor = unbiased_factor(x.shape) if int(node.attrs.get("running_var_unbiased", 0)) else 1.0
    C = x.shape[1]
    x3, y3, fn = _nci(_c(x)), _nci(y), ng.batch_norm_train
    s1, b1, m1, v1 = (_c(p).reshape(C) for p in (scale, bias, mean, var))
    rm = run_mean.reshape(C) if run_mean is not None else None
    rv = run_var.reshape(C) if run_var is not None else None
    return lambda: fn(x3, s1, b1, m1, v1, y3, rm, rv, eps, momentum, threads, factor)


@binder("BatchNormalizationGrad")
def _batch_norm_grad(node, types, ins, outs, scratch_buf, threads):
    ng, dy, x, scale = _k("norm_grad"), ins[0], ins[1], ins[2]
    mean, var = _opt(ins, 3), _opt(ins, 4)
    dx, dscale, dbias = _opt(outs, 0), _opt(outs, 1), _opt(outs, 2)
    training = bool(int(node.attrs.get("training_mode", 0)))
    if ng is None or x.ndim < 2 or not _f32(dy, x, scale, mean, var, dx, dscale, dbias):
        return None
    if not training and (mean is None or var is None):
        return None
    if x.size == 0:
        return None
    C, eps = x.shape[1], float(node.attrs.get("epsilon", 1e-5))
    g3, x3, s1 = _nci(_c(dy)), _nci(_c(x)), _c(scale).reshape(C)
    m1 = _c(mean).reshape(C) if mean is not None else None
    v1 = _c(var).reshape(C) if var is not None else None
    dx3 = _nci(dx) if dx is not None else None
    ds1 = dscale.reshape(C) if dscale is not None else None
    db1 = dbias.reshape(C) if dbias is not None else None
    fn = ng.batch_norm_grad
    return lambda: fn(g3, x3, s1, m1, v1, dx3, ds1, db1, eps, training, threads)
