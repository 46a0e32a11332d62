"""BatchNormalization (inference, and training_mode with batch statistics), InstanceNormalization,
LayerNormalization, LRN."""
from __future__ import annotations

import numpy as np

from ..ir import TensorType
from .base import REQUIRED, TRAINING_DOMAIN, Op, register


def _wide(x):
    return x.astype(np.float32) if x.dtype == np.float16 else x


def per_channel(x, v):
    """A (C,) vector shaped to broadcast along axis 1 of ``x``."""
    return _wide(v).reshape((1, -1) + (1,) * (x.ndim - 2))


def check_channel_vectors(ctx, first: int, last: int, names):
    x = ctx.shape(0)
    ctx.check(len(x) >= 2, f"expected X of rank ≥ 2 (N, C, …), got {x}")
    ctx.check(ctx.dtype(0).kind == "f", f"expected a float X, got {ctx.dtype(0)}")
    for i, name in zip(range(first, last + 1), names):
        s = ctx.shape(i)
        ok = len(s) == 1 and (isinstance(x[1], str) or isinstance(s[0], str) or s[0] == x[1])
        ctx.check(ok, f"expected {name} of shape ({x[1]},) (X's channels), got {s}")
        ctx.check(ctx.dtype(i).kind == "f", f"expected a float {name}, got {ctx.dtype(i)}")


def unbiased_factor(x_shape) -> float:
    """n/(n − 1), n = the values per channel (N·∏spatial): turns a batch's population
    variance into torch's unbiased one. 1 when n ≤ 1 (no unbiased estimate exists; the
    population variance, 0, is used)."""
    n = 1
    for k, d in enumerate(x_shape):
        if k != 1:
            n *= int(d)
    return n / (n - 1) if n > 1 else 1.0


@register
class BatchNormalization(Op):
    """Y = scale·(X − mean)/√(var + ε) + B. With ``training_mode=1`` mean/var are the batch's
    (population variance) and outputs 1 and 2 are the updated running statistics
    (running = input·momentum + batch·(1 − momentum)), as ONNX opset 15 defines.

    ember attribute ``running_var_unbiased`` (default 0 = ONNX): 1 updates the running
    variance with the batch's *unbiased* variance (× n/(n − 1), n = N·∏spatial), as torch does;
    the normalisation itself always uses the population variance. ``to_training`` sets it
    (ember mirrors torch); training graphs are never exported, so it never reaches ONNX."""
    num_inputs = (5, 5)
    num_outputs = (1, 3)
    parameter_inputs = (1, 2)
    buffer_inputs = (3, 4)
    attrs = {"epsilon": 1e-5, "momentum": 0.9, "training_mode": 0, "running_var_unbiased": 0}

    def infer(self, ctx):
        check_channel_vectors(ctx, 1, 4, ("scale", "B", "input_mean", "input_var"))
        c = (ctx.shape(0)[1],)
        # Outside training_mode the extra outputs (which old exporters sometimes leave in)
        # just pass input_mean/input_var through.
        stats = TensorType(ctx.dtype(3), c)
        return [ctx.type(0), stats, stats]

    def export_refusal(self, node, graph):
        if node.attrs.get("training_mode", 0):
            return "runs in training mode (batch statistics)"
        return None

    def export(self, ctx, node, inputs, outputs, attrs):
        """Eval-mode BN: outputs 1 and 2 (running stats, unchanged) only exist in training mode
        in ONNX, so any reader of them gets an Identity of the statistic instead."""
        attrs.pop("training_mode", None)
        ctx.add("BatchNormalization", inputs, outputs[:1], node.name, attrs, node)
        for k, src in ((1, inputs[3]), (2, inputs[4])):
            if len(outputs) > k and outputs[k]:
                ctx.add("Identity", [src], [outputs[k]], ctx.fresh(f"{node.name}/stat{k}"), {},
                        node)

    def compute(self, node, inputs):
        x, scale, bias, mean, var = inputs
        a = node.attrs
        xw = _wide(x)
        if a["training_mode"]:
            axes = (0,) + tuple(range(2, x.ndim))
            bmean, bvar = xw.mean(axis=axes), xw.var(axis=axes)
            update_var = bvar * unbiased_factor(x.shape) if a["running_var_unbiased"] else bvar
            run_mean = _wide(mean) * a["momentum"] + bmean * (1 - a["momentum"])
            run_var = _wide(var) * a["momentum"] + update_var * (1 - a["momentum"])
            mean_used, var_used = bmean, bvar
        else:
            mean_used, var_used = _wide(mean), _wide(var)
            run_mean, run_var = mean, var
        inv = per_channel(x, scale) / np.sqrt(per_channel(x, var_used) + a["epsilon"])
        y = (xw - per_channel(x, mean_used)) * inv + per_channel(x, bias)
        return [y.astype(x.dtype), np.asarray(run_mean).astype(mean.dtype),
                np.asarray(run_var).astype(var.dtype)]


@register
class InstanceNormalization(Op):
    """Per (n, c) plane: (X − mean)/√(var + ε)·scale[c] + B[c]."""
    num_inputs = (3, 3)
    parameter_inputs = (1, 2)
    attrs = {"epsilon": 1e-5}

    def infer(self, ctx):
        check_channel_vectors(ctx, 1, 2, ("scale", "B"))
        ctx.check(len(ctx.shape(0)) >= 3, f"expected X of rank ≥ 3, got {ctx.shape(0)}")
        return [ctx.type(0)]

    def compute(self, node, inputs):
        x, scale, bias = inputs
        xw = _wide(x)
        axes = tuple(range(2, x.ndim))
        mean = xw.mean(axis=axes, keepdims=True)
        var = ((xw - mean) ** 2).mean(axis=axes, keepdims=True)
        y = (xw - mean) / np.sqrt(var + node.attrs["epsilon"]) * per_channel(x, scale) \
            + per_channel(x, bias)
        return [y.astype(x.dtype)]


def normalized_axis(axis, rank: int) -> int:
    """LayerNormalization's ``axis`` in [0, rank): the first of the normalized axes."""
    axis = int(axis)
    return axis + rank if axis < 0 else axis


def broadcasts_to(small, big) -> bool:
    """Whether shape ``small`` is unidirectionally broadcastable to ``big`` (ONNX's rule:
    right-aligned, each dim equal or 1); a symbolic dim on either side may match anything."""
    if len(small) > len(big):
        return False
    return all(isinstance(s, str) or isinstance(b, str) or s == 1 or s == b
               for s, b in zip(small, big[len(big) - len(small):]))


def over_normalized_axes(shape, norm) -> bool:
    """Whether a Scale/B of ``shape`` varies over the normalized axes (of shape ``norm``)
    only: broadcastable to ``norm`` once its extra leading dims, which must be 1, are dropped.
    Then one vector of ``norm``'s size serves every row."""
    extra = max(len(shape) - len(norm), 0)
    return all(d == 1 for d in shape[:extra]) and broadcasts_to(tuple(shape[extra:]), norm)


def row_vector(a, norm):
    """A Scale/B ``a`` (``over_normalized_axes``) broadcast to the normalized shape ``norm``."""
    extra = max(a.ndim - len(norm), 0)
    return np.broadcast_to(a.reshape(a.shape[extra:]), tuple(norm))


def stash_dtype(dtype) -> np.dtype:
    """The precision LayerNormalization's statistics are computed in (stash_type 1 = float32):
    float16 widens to float32; float64 keeps float64, as onnx.reference and onnxruntime do."""
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


@register
class LayerNormalization(Op):
    """ONNX opset 17: each row of the axes from ``axis`` on is normalised,
    Y = (X − mean)/√(var + ε)·Scale + B, with Scale and B unidirectionally broadcastable to X
    (usually of shape X.shape[axis:]). The optional outputs Mean and InvStdDev = 1/√(var + ε)
    are float32 (stash_type 1, the only stash type ONNX defines for these tensors), of X's
    shape with the normalized axes set to 1."""
    num_inputs = (2, 3)
    num_outputs = (1, 3)
    parameter_inputs = (1, 2)
    attrs = {"axis": -1, "epsilon": 1e-5, "stash_type": 1}

    def infer(self, ctx):
        x = ctx.type(0)
        rank = len(x.shape)
        ctx.check(x.dtype.kind == "f", f"expected a float X, got {x.dtype}")
        ctx.check(rank >= 1, f"expected X of rank ≥ 1, got {x.shape}")
        axis = int(ctx.attrs["axis"])
        ctx.check(-rank <= axis < rank,
                  f"expected axis in [{-rank}, {rank - 1}] for X of rank {rank}, got {axis}")
        ctx.check(int(ctx.attrs["stash_type"]) == 1,
                  f"expected stash_type 1 (float32 statistics), got {ctx.attrs['stash_type']}")
        axis = normalized_axis(axis, rank)
        for i, name in ((1, "Scale"), (2, "B")):
            if i == 2 and not ctx.has(2):
                continue
            t = ctx.type(i)
            ctx.check(t.dtype == x.dtype, f"expected {name} of X's dtype {x.dtype}, got {t.dtype}")
            ctx.check(broadcasts_to(tuple(t.shape), tuple(x.shape)),
                      f"expected {name} of shape {tuple(x.shape[axis:])} (X's normalized axes) "
                      f"or another shape broadcastable to X's {tuple(x.shape)}, got "
                      f"{tuple(t.shape)}")
        stats = TensorType(np.float32, tuple(x.shape[:axis]) + (1,) * (rank - axis))
        return [x, stats, stats]

    def compute(self, node, inputs):
        x, scale = inputs[0], inputs[1]
        bias = inputs[2] if len(inputs) > 2 else None
        work = stash_dtype(x.dtype)
        axes = tuple(range(normalized_axis(node.attrs["axis"], x.ndim), x.ndim))
        n = int(np.prod([x.shape[a] for a in axes], dtype=np.int64))
        xs = x.astype(work)
        with np.errstate(invalid="ignore", divide="ignore"):   # rows of no values: NaN, as ONNX
            mean = xs.sum(axis=axes, keepdims=True) / work.type(n)
            d = xs - mean
            var = (d * d).sum(axis=axes, keepdims=True) / work.type(n)
            inv = work.type(1) / np.sqrt(var + work.type(node.attrs["epsilon"]))
        y = d * inv * scale.astype(work)
        if bias is not None:
            y = y + bias.astype(work)
        return [y.astype(x.dtype), mean.astype(np.float32), inv.astype(np.float32)]


@register
class LRN(Op):
    """Across-channel local response normalization:
    Y = X / (bias + alpha/size · Σ_{c' in window} X[c']²)^beta, window
    [c − ⌊(size−1)/2⌋, c + ⌈(size−1)/2⌉]."""
    attrs = {"alpha": 1e-4, "beta": 0.75, "bias": 1.0, "size": REQUIRED}
    inplace = (0,)

    def infer(self, ctx):
        ctx.check(len(ctx.shape(0)) >= 3, f"expected X of rank ≥ 3, got {ctx.shape(0)}")
        ctx.check(ctx.dtype(0).kind == "f", f"expected a float X, got {ctx.dtype(0)}")
        _check_lrn_size(ctx)
        return [ctx.type(0)]

    def compute(self, node, inputs):
        x = inputs[0]
        a = node.attrs
        s = _lrn_denominator(x.astype(np.float64), a)
        y = _wide(x) / s ** a["beta"]
        return [y.astype(x.dtype)]


def _check_lrn_size(ctx) -> None:
    """The window's size reaches the kernel as a C int."""
    size = int(ctx.attrs["size"])
    ctx.check(1 <= size <= LRN_MAX_SIZE, f"expected attribute 'size' in [1, {LRN_MAX_SIZE}], "
                                        f"got {size}")


LRN_MAX_SIZE = (1 << 31) - 1


def _channel_window_sum(v, before: int, after: int):
    """Σ v[:, j] over j in [c − before, c + after] (clipped to the channels), for every c.
    Prefix sums along channels make every window sum one subtraction."""
    c = v.shape[1]
    csum = np.concatenate([np.zeros_like(v[:, :1]), np.cumsum(v, axis=1)], axis=1)
    idx = np.arange(c)
    return csum[:, np.minimum(c, idx + after + 1)] - csum[:, np.maximum(0, idx - before)]


def _lrn_window(size: int) -> tuple:
    """(channels before, channels after) in LRN's window: ⌊(size−1)/2⌋, ⌈(size−1)/2⌉."""
    return (size - 1) // 2, -(-(size - 1) // 2)


def _lrn_denominator(x64, a):
    """s = bias + alpha/size · Σ_window x² (float64)."""
    size = int(a["size"])
    lo, hi = _lrn_window(size)
    return a["bias"] + a["alpha"] / size * _channel_window_sum(x64 * x64, lo, hi)


@register
class LRNGrad(Op):
    """dX of LRN (y = x·s^−β, s = bias + α/n·Σ_window x²), LRN's attributes:
    dx_i = dy_i·s_i^−β − 2αβ/n·x_i·Σ_{j: i ∈ window(j)} dy_j·x_j·s_j^(−β−1).
    The channels j whose window holds i are [i − ⌈(n−1)/2⌉, i + ⌊(n−1)/2⌋]: the window
    mirrored, which matters for even n."""
    domain = TRAINING_DOMAIN
    num_inputs = (2, 2)
    attrs = {"alpha": 1e-4, "beta": 0.75, "bias": 1.0, "size": REQUIRED}
    inplace = (0,)

    def infer(self, ctx):
        dy, x = ctx.type(0), ctx.type(1)
        ctx.check(tuple(dy.shape) == tuple(x.shape) and len(x.shape) >= 3,
                  f"expected dY and X of one shape (N, C, …), got {dy.shape} and {x.shape}")
        ctx.check(dy.dtype.kind == "f" and dy.dtype == x.dtype,
                  f"expected float dY and X of one dtype, got {dy.dtype} and {x.dtype}")
        _check_lrn_size(ctx)
        return [x]

    def compute(self, node, inputs):
        dy, x = inputs
        a = node.attrs
        size, beta = int(a["size"]), float(a["beta"])
        x64, d64 = x.astype(np.float64), dy.astype(np.float64)
        s = _lrn_denominator(x64, a)
        lo, hi = _lrn_window(size)
        t = d64 * x64 * s ** (-beta - 1.0)
        back = _channel_window_sum(t, hi, lo)      # the mirrored window
        dx = d64 * s ** -beta - 2.0 * float(a["alpha"]) * beta / size * x64 * back
        return [dx.astype(dy.dtype)]


def _lrn_gradient(self, node, grads, g):
    out = [None]
    if grads[0] is None or not g.needs(0):
        return out
    a = node.attrs
    out[0] = g.op("LRNGrad", [grads[0], g.input(0)], alpha=float(a["alpha"]),
                  beta=float(a["beta"]), bias=float(a["bias"]), size=int(a["size"]))
    return out


LRN.gradient = _lrn_gradient


# ---- gradients -------------------------------------------------------------------------------
@register
class BatchNormalizationGrad(Op):
    """(dX, dscale, dbias) of BatchNormalization. training_mode=1: the batch statistics are
    recomputed from X (mean/var inputs ignored); 0: the given (frozen) statistics."""
    domain = TRAINING_DOMAIN
    num_inputs = (3, 5)
    num_outputs = (1, 3)
    attrs = {"epsilon": 1e-5, "training_mode": 0}

    def infer(self, ctx):
        dy, x = ctx.type(0), ctx.type(1)
        ctx.check(tuple(dy.shape) == tuple(x.shape) and len(x.shape) >= 2,
                  f"expected dY and X of one shape (N, C, …), got {dy.shape} and {x.shape}")
        ctx.check(dy.dtype.kind == "f" and dy.dtype == x.dtype,
                  f"expected float dY and X of one dtype, got {dy.dtype} and {x.dtype}")
        c = x.shape[1]
        last = 4 if ctx.has(3) or ctx.has(4) or not ctx.attrs["training_mode"] else 2
        for i, what in ((2, "scale"), (3, "mean"), (4, "var")):
            if i > last:
                break
            ctx.check(tuple(ctx.shape(i)) == (c,),
                      f"expected {what} of shape ({c},) (X's channels), got {ctx.shape(i)}")
        vec = TensorType(ctx.dtype(2), (c,))
        return [x, vec, vec]

    def compute(self, node, inputs):
        dy, x, scale = inputs[:3]
        a = node.attrs
        axes = (0,) + tuple(range(2, x.ndim))
        x64, d64 = x.astype(np.float64), dy.astype(np.float64)
        if a["training_mode"]:
            mean, var = x64.mean(axis=axes), x64.var(axis=axes)
        else:
            mean, var = inputs[3].astype(np.float64), inputs[4].astype(np.float64)
        shape = (1, -1) + (1,) * (x.ndim - 2)
        inv = 1.0 / np.sqrt(var + a["epsilon"])
        xhat = (x64 - mean.reshape(shape)) * inv.reshape(shape)
        dbias = d64.sum(axis=axes)
        dscale = (d64 * xhat).sum(axis=axes)
        k = (scale.astype(np.float64) * inv).reshape(shape)
        if a["training_mode"]:
            m = x.size // x.shape[1]
            dx = k / m * (m * d64 - dbias.reshape(shape) - xhat * dscale.reshape(shape))
        else:
            dx = d64 * k
        return [dx.astype(dy.dtype), dscale.astype(scale.dtype), dbias.astype(scale.dtype)]


@register
class LayerNormalizationGrad(Op):
    """(dX, dScale, dB) of LayerNormalization, the row statistics recomputed from X (here in
    float64). Per row of n normalized values, with x̂ = (X − mean)·inv and
    g = dY·Scale: dX = inv·(g − Σg/n − x̂·Σ(g·x̂)/n); dScale = Σ_rows dY·x̂ and dB = Σ_rows dY,
    both of the normalized shape X.shape[axis:]. Scale broadcasts to that shape."""
    domain = TRAINING_DOMAIN
    num_inputs = (3, 3)
    num_outputs = (1, 3)
    attrs = {"axis": -1, "epsilon": 1e-5}

    def infer(self, ctx):
        dy, x, scale = ctx.type(0), ctx.type(1), ctx.type(2)
        ctx.check(tuple(dy.shape) == tuple(x.shape) and len(x.shape) >= 1,
                  f"expected dY and X of one shape, got {dy.shape} and {x.shape}")
        ctx.check(dy.dtype.kind == "f" and dy.dtype == x.dtype == scale.dtype,
                  f"expected float dY, X and Scale of one dtype, got {dy.dtype}, {x.dtype} and "
                  f"{scale.dtype}")
        rank = len(x.shape)
        ctx.check(-rank <= int(ctx.attrs["axis"]) < rank,
                  f"expected axis in [{-rank}, {rank - 1}], got {ctx.attrs['axis']}")
        norm = tuple(x.shape[normalized_axis(ctx.attrs["axis"], rank):])
        ctx.check(over_normalized_axes(tuple(scale.shape), norm),
                  f"expected Scale broadcastable to the normalized shape {norm}, got "
                  f"{tuple(scale.shape)}")
        vec = TensorType(x.dtype, norm)
        return [x, vec, vec]

    def compute(self, node, inputs):
        dy, x, scale = inputs
        axis = normalized_axis(node.attrs["axis"], x.ndim)
        norm = x.shape[axis:]
        rows, n = (int(np.prod(s, dtype=np.int64)) for s in (x.shape[:axis], norm))
        x64 = x.astype(np.float64).reshape(rows, n)
        d64 = dy.astype(np.float64).reshape(rows, n)
        s64 = row_vector(scale.astype(np.float64), norm).reshape(1, -1)
        mean = x64.mean(axis=1, keepdims=True)
        inv = 1.0 / np.sqrt(((x64 - mean) ** 2).mean(axis=1, keepdims=True)
                            + node.attrs["epsilon"])
        xhat = (x64 - mean) * inv
        g = d64 * s64
        g_mean, gx_mean = g.mean(axis=1, keepdims=True), (g * xhat).mean(axis=1, keepdims=True)
        dx = inv * (g - g_mean - xhat * gx_mean)
        dscale = (d64 * xhat).sum(axis=0).reshape(norm)
        dbias = d64.sum(axis=0).reshape(norm)
        return [dx.reshape(x.shape).astype(dy.dtype), dscale.astype(dy.dtype),
                dbias.astype(dy.dtype)]


def _batchnorm_gradient(self, node, grads, g):
    """BatchNormalizationGrad; in frozen mode the statistics inputs, when they need a
    gradient, get dmean = −k·dbias and dvar = −½·scale·dscale/(var + ε), k = scale/√(var + ε)."""
    training = int(node.attrs["training_mode"])
    if any(d is not None for d in grads[1:]):
        g.fail("gradient through the running-statistic outputs is not supported")
    out = [None] * 5
    if grads[0] is None:
        return out
    x, scale, bias, mean, var = (g.input(i) for i in range(5))
    stats_need = not training and (g.needs(3) or g.needs(4))
    used = [g.needs(0), g.needs(1) or stats_need, g.needs(2) or stats_need]
    if not any(used):
        return out
    ins = [grads[0], x, scale, mean, var]
    dx, dscale, dbias = g.op("BatchNormalizationGrad", ins, num_outputs=3, used=used,
                             epsilon=float(node.attrs["epsilon"]), training_mode=training)
    out[:3] = [dx or None, (dscale or None) if g.needs(1) else None,
               (dbias or None) if g.needs(2) else None]
    if stats_need:
        dt = g.type(var).dtype
        var_eps = g.op("Add", [var, g.const(np.array(node.attrs["epsilon"], dt), "epsilon")])
        if g.needs(3):
            k = g.op("Div", [scale, g.op("Sqrt", [var_eps])])
            out[3] = g.op("Neg", [g.op("Mul", [dbias, k])])
        if g.needs(4):
            t = g.op("Div", [g.op("Mul", [scale, dscale]), var_eps])
            out[4] = g.op("Mul", [t, g.const(np.array(-0.5, dt), "minus_half")])
    return out


BatchNormalization.gradient = _batchnorm_gradient


def _to_parameter_shape(g, grad, shape, norm):
    """A gradient of the normalized shape ``norm`` summed and reshaped to a Scale/B of
    ``shape`` (``over_normalized_axes(shape, norm)``)."""
    core = tuple(shape[max(len(shape) - len(norm), 0):])
    return g.reshape(g.sum_to(grad, core), shape)


def _layer_norm_gradient(self, node, grads, g):
    """LayerNormalizationGrad for X, Scale and B (Scale and B must not vary over the axes
    before ``axis``: their gradient is then a sum over the rows)."""
    if any(d is not None for d in grads[1:]):
        g.fail("gradient through the Mean/InvStdDev outputs is not supported")
    out = [None] * 3
    if grads[0] is None:
        return out
    x, scale, bias = g.input(0), g.input(1), g.input(2)
    x_shape = g.shape(x)
    axis = normalized_axis(node.attrs["axis"], len(x_shape))
    norm = x_shape[axis:]
    for name in (scale, bias):
        if name and not over_normalized_axes(g.shape(name), norm):
            g.fail(f"{name!r} of shape {g.shape(name)} varies over the axes before axis "
                   f"{axis}: only Scale/B over the normalized axes {norm} are differentiable")
    used = [g.needs(0), g.needs(1), bool(bias) and g.needs(2)]
    if not any(used):
        return out
    dx, dscale, dbias = g.op("LayerNormalizationGrad", [grads[0], x, scale], num_outputs=3,
                             used=used, axis=axis, epsilon=float(node.attrs["epsilon"]))
    out[0] = dx or None
    if used[1]:
        out[1] = _to_parameter_shape(g, dscale, g.shape(scale), norm)
    if used[2]:
        out[2] = _to_parameter_shape(g, dbias, g.shape(bias), norm)
    return out


LayerNormalization.gradient = _layer_norm_gradient
