"""Conv and ConvTranspose (1-D/2-D/3-D, groups, strides, pads, dilations, auto_pad), plus the
sliding-window arithmetic that pool.py shares.

``infer`` resolves every shape-dependent attribute (auto_pad → explicit ``pads``, defaults for
strides/dilations/kernel_shape, ConvTranspose's ``output_shape`` → pads) so the runtime binder
and ``compute`` only read concrete values.
"""
from __future__ import annotations

import itertools

import numpy as np

from ..ir import TensorType
from .base import REQUIRED, TRAINING_DOMAIN, Op, register
from .activation import check_activation
from .linear import FUSED_ATTRS, finish

AUTO_PADS = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")


# ---- window arithmetic (shared with pool.py) ----------------------------------------------

def spatial_attr(ctx, name: str, nsp: int, default: int, length: int | None = None) -> list:
    """Read an int-list attribute of ``length`` entries (default ``nsp``), filling defaults."""
    length = nsp if length is None else length
    v = ctx.attrs.get(name) or [default] * length
    v = [int(x) for x in v]
    ctx.check(len(v) == length, f"expected {name} of {length} values, got {v}")
    ctx.attrs[name] = v
    return v


def auto_pads(mode: str, sizes, kernel, strides, dilations) -> list:
    """SAME_*: output = ceil(in / stride), the odd pixel at the end (UPPER) or start (LOWER)."""
    n = len(sizes)
    if mode == "VALID":
        return [0] * (2 * n)
    begin, end = [], []
    for i in range(n):
        out = -(-sizes[i] // strides[i])
        total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - sizes[i])
        small, big = total // 2, total - total // 2
        begin.append(small if mode == "SAME_UPPER" else big)
        end.append(big if mode == "SAME_UPPER" else small)
    return begin + end


def resolve_pads(ctx, sizes, kernel, strides, dilations) -> list:
    """Turn ``auto_pad`` into explicit ``pads`` in ``ctx.attrs`` and return them."""
    nsp = len(sizes)
    mode = ctx.attrs.get("auto_pad", "NOTSET") or "NOTSET"
    ctx.check(mode in AUTO_PADS, f"expected auto_pad among {AUTO_PADS}, got {mode!r}")
    if mode == "NOTSET":
        pads = spatial_attr(ctx, "pads", nsp, 0, 2 * nsp)
        ctx.check(all(p >= 0 for p in pads), f"expected non-negative pads, got {pads}")
        return pads
    ctx.check(all(isinstance(s, (int, np.integer)) for s in sizes),
              f"auto_pad={mode} needs static spatial sizes, got {tuple(sizes)}")
    pads = auto_pads(mode, [int(s) for s in sizes], kernel, strides, dilations)
    ctx.attrs["pads"], ctx.attrs["auto_pad"] = pads, "NOTSET"
    return pads


def window_out(ctx, size, k, s, d, pb, pe, ceil_mode=False, axis=0):
    """Output length of a sliding window; ceil_mode drops a last window that would start in the
    end padding (the ONNX/PyTorch rule). Symbolic sizes give a derived symbolic name."""
    if isinstance(size, str):
        return f"{size}_win{axis}"
    eff = (k - 1) * d + 1
    span = size + pb + pe - eff
    ctx.check(span >= 0, f"expected a window ({eff} wide incl. dilation) no larger than the "
                         f"padded input ({size}+{pb}+{pe}) on spatial axis {axis}")
    out = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= size + pb:
        out -= 1
    return out


def padded(x, pads, value=0, extra_end=None):
    """``x`` (N, C, *spatial) padded with ``value``; ``extra_end`` adds room at each end."""
    nsp = x.ndim - 2
    extra_end = extra_end or [0] * nsp
    widths = [(0, 0), (0, 0)] + [(pads[i], pads[i + nsp] + extra_end[i]) for i in range(nsp)]
    if not any(a or b for a, b in widths):
        return x
    return np.pad(x, widths, constant_values=value)


def padded_image_elements(node, types, image: str, windows: str) -> int:
    """Elements of the padded image a windowed op's numpy reference builds to walk the
    ``windows`` value's positions over the ``image`` value (both N, C, spatial…, attributes
    resolved by ``infer``): per spatial axis, the image with its pads or as far as the last
    window reaches, whichever is longer. Pads and dilations near 2^31 make it enormous while
    the image and the output stay tiny."""
    it, wt = types.get(image), types.get(windows)
    if it is None or wt is None or not (it.is_static and wt.is_static) or it.rank < 3 \
            or wt.rank != it.rank:
        return 0
    nsp, a = it.rank - 2, node.attrs
    kernel = a.get("kernel_shape") or [1] * nsp
    strides, dil = a.get("strides") or [1] * nsp, a.get("dilations") or [1] * nsp
    pads = a.get("pads") or [0] * (2 * nsp)
    if not len(kernel) == len(strides) == len(dil) == nsp or len(pads) != 2 * nsp:
        return 0
    n = int(it.shape[0]) * int(it.shape[1])
    for i in range(nsp):
        reach = (int(wt.shape[2 + i]) - 1) * int(strides[i]) + (int(kernel[i]) - 1) * \
            int(dil[i]) + 1
        n *= max(int(it.shape[2 + i]) + abs(int(pads[i])) + abs(int(pads[i + nsp])), reach)
    return n


def window_slice(offsets, dilations, strides, outs):
    """Index picking, for a kernel offset, the input pixel under it for every output pixel."""
    return (slice(None), slice(None)) + tuple(
        slice(o * d, o * d + s * (n - 1) + 1, s)
        for o, d, s, n in zip(offsets, dilations, strides, outs))


# ---- Conv ----------------------------------------------------------------------------------

def _checked_x_w(ctx):
    """X and W shapes of a Conv or ConvTranspose, after the checks both share: fused activation,
    ranks (N, C, spatial…) that agree, one float dtype."""
    check_activation(ctx)
    x, w = ctx.shape(0), ctx.shape(1)
    ctx.check(len(x) >= 3, f"expected X of rank ≥ 3 (N, C, spatial…), got {x}")
    ctx.check(len(w) == len(x), f"expected W of rank {len(x)} like X, got {w}")
    ctx.check(ctx.dtype(1) == ctx.dtype(0) and ctx.dtype(0).kind == "f",
              f"expected float X and W of one dtype, got {ctx.dtype(0)} and {ctx.dtype(1)}")
    return x, w


@register
class Conv(Op):
    num_inputs = (2, 3)
    parameter_inputs = (1, 2)
    attrs = {"auto_pad": "NOTSET", "dilations": [], "group": 1, "kernel_shape": [], "pads": [],
             "strides": [], **FUSED_ATTRS}

    def reference_temporaries(self, node, types):
        return padded_image_elements(node, types, node.input(0), node.outputs[0])

    def infer(self, ctx):
        x, w = _checked_x_w(ctx)
        nsp, g = len(x) - 2, int(ctx.attrs["group"])
        ctx.check(g >= 1, f"expected group ≥ 1, got {g}")
        m = w[0]
        ctx.check(all(isinstance(d, (int, np.integer)) for d in w), f"expected static W, got {w}")
        if not isinstance(x[1], str):
            ctx.check(x[1] == w[1] * g, f"expected X channels == W.shape[1]·group = {w[1]}·{g}"
                                        f" = {w[1] * g}, got X channels {x[1]} (X {x}, W {w})")
        ctx.check(m % g == 0, f"expected W.shape[0] ({m}) divisible by group ({g})")
        kernel = spatial_attr(ctx, "kernel_shape", nsp, 0)
        if not ctx.attrs["kernel_shape"] or not any(kernel):
            kernel = ctx.attrs["kernel_shape"] = list(w[2:])
        ctx.check(list(kernel) == list(w[2:]), f"expected kernel_shape == W spatial {w[2:]}, "
                                               f"got {kernel}")
        strides = spatial_attr(ctx, "strides", nsp, 1)
        dil = spatial_attr(ctx, "dilations", nsp, 1)
        ctx.check(min(strides + dil) >= 1, f"expected strides, dilations ≥ 1, got {strides}, {dil}")
        pads = resolve_pads(ctx, x[2:], kernel, strides, dil)
        if ctx.has(2):
            ctx.check(tuple(ctx.shape(2)) == (m,), f"expected bias B of shape ({m},), got "
                                                   f"{ctx.shape(2)}")
            ctx.check(ctx.dtype(2) == ctx.dtype(0), f"expected B of dtype {ctx.dtype(0)}")
        outs = tuple(window_out(ctx, x[2 + i], kernel[i], strides[i], dil[i], pads[i],
                                pads[i + nsp], axis=i) for i in range(nsp))
        return [TensorType(ctx.dtype(0), (x[0], m) + outs)]

    def macs(self, node, types):
        """One multiply-accumulate per output element per weight of one output channel."""
        y, w = types[node.outputs[0]].shape, types[node.inputs[1]].shape
        return int(np.prod(y, dtype=np.int64)) * int(np.prod(w[1:], dtype=np.int64))

    def compute(self, node, inputs):
        x, w = inputs[0], inputs[1]
        b = inputs[2] if len(inputs) > 2 else None
        a = node.attrs
        y = conv_reference(x, w, b, a["group"], a["strides"], a["pads"], a["dilations"])
        return [finish(y, x.dtype, a)]


def conv_reference(x, w, b, group, strides, pads, dilations):
    """Direct convolution as one (M/g × C/g) @ (C/g × pixels) product per kernel offset."""
    dt = np.float32 if x.dtype == np.float16 else x.dtype
    x, w = x.astype(dt, copy=False), w.astype(dt, copy=False)
    n = x.shape[0]
    m, cg = w.shape[:2]
    kernel = w.shape[2:]
    nsp = len(kernel)
    outs = [(x.shape[2 + i] + pads[i] + pads[i + nsp] - (kernel[i] - 1) * dilations[i] - 1)
            // strides[i] + 1 for i in range(nsp)]
    xp = padded(x, pads)
    pixels = int(np.prod(outs))   # explicit sizes: -1 cannot be solved with no input channel
    wg = w.reshape(group, m // group, cg, int(np.prod(kernel)))
    y = np.zeros((n, group, m // group, pixels), dtype=dt)
    for k, off in enumerate(itertools.product(*(range(s) for s in kernel))):
        xs = xp[window_slice(off, dilations, strides, outs)].reshape(n, group, cg, pixels)
        y += wg[None, :, :, :, k] @ xs
    y = y.reshape(n, m, *outs)
    if b is not None:
        y += b.astype(dt).reshape((1, m) + (1,) * nsp)
    return y


# ---- ConvTranspose -------------------------------------------------------------------------

@register
class ConvTranspose(Op):
    num_inputs = (2, 3)
    parameter_inputs = (1, 2)
    attrs = {"auto_pad": "NOTSET", "dilations": [], "group": 1, "kernel_shape": [],
             "output_padding": [], "output_shape": [], "pads": [], "strides": [], **FUSED_ATTRS}

    def reference_temporaries(self, node, types):
        return padded_image_elements(node, types, node.outputs[0], node.input(0))

    def infer(self, ctx):
        x, w = _checked_x_w(ctx)
        ctx.check(all(isinstance(d, (int, np.integer)) for d in x[2:]),
                  f"expected static spatial sizes, got {x}")
        nsp, g = len(x) - 2, int(ctx.attrs["group"])
        ctx.check(g >= 1 and w[0] % g == 0, f"expected W.shape[0] ({w[0]}) divisible by group {g}")
        if not isinstance(x[1], str):
            ctx.check(x[1] == w[0], f"expected X channels == W.shape[0] = {w[0]}, got {x[1]} "
                                    f"(X {x}, W {w})")
        m = w[1] * g
        kernel = spatial_attr(ctx, "kernel_shape", nsp, 0)
        if not any(kernel):
            kernel = ctx.attrs["kernel_shape"] = list(w[2:])
        ctx.check(list(kernel) == list(w[2:]), f"expected kernel_shape == W spatial {w[2:]}, "
                                               f"got {kernel}")
        strides = spatial_attr(ctx, "strides", nsp, 1)
        dil = spatial_attr(ctx, "dilations", nsp, 1)
        ctx.check(min(strides + dil) >= 1,
                  f"expected strides, dilations ≥ 1, got {strides}, {dil}")
        opad = spatial_attr(ctx, "output_padding", nsp, 0)
        ctx.check(all(0 <= p < max(s, d) for p, s, d in zip(opad, strides, dil)),
                  f"expected output_padding smaller than stride or dilation, got {opad}")
        full = [strides[i] * (x[2 + i] - 1) + opad[i] + (kernel[i] - 1) * dil[i] + 1
                for i in range(nsp)]
        mode = ctx.attrs["auto_pad"] or "NOTSET"
        ctx.check(mode in AUTO_PADS, f"expected auto_pad among {AUTO_PADS}, got {mode!r}")
        out_shape = [int(v) for v in ctx.attrs["output_shape"] or []]
        if len(out_shape) == nsp + 2:   # some exporters give N and C too
            out_shape = out_shape[2:]
        if mode in ("SAME_UPPER", "SAME_LOWER") and not out_shape:
            out_shape = [x[2 + i] * strides[i] for i in range(nsp)]
        if out_shape:
            ctx.check(len(out_shape) == nsp, f"expected output_shape of {nsp} values, got "
                                             f"{out_shape}")
            total = [full[i] - out_shape[i] for i in range(nsp)]
            upper = mode == "SAME_UPPER"
            pads = ([t // 2 if upper else t - t // 2 for t in total]
                    + [t - t // 2 if upper else t // 2 for t in total])
        elif mode == "VALID":
            pads = [0] * (2 * nsp)
        else:
            pads = spatial_attr(ctx, "pads", nsp, 0, 2 * nsp)
        ctx.attrs.update(pads=pads, auto_pad="NOTSET", output_shape=[])
        outs = tuple(full[i] - pads[i] - pads[i + nsp] for i in range(nsp))
        ctx.check(min(outs) >= 1, f"expected a positive output size, got {outs}")
        if ctx.has(2):
            ctx.check(tuple(ctx.shape(2)) == (m,), f"expected bias B of shape ({m},), got "
                                                   f"{ctx.shape(2)}")
        return [TensorType(ctx.dtype(0), (x[0], m) + outs)]

    def macs(self, node, types):
        """Each input element meets every weight of one input channel."""
        x, w = types[node.inputs[0]].shape, types[node.inputs[1]].shape
        return int(np.prod(x, dtype=np.int64)) * int(np.prod(w[1:], dtype=np.int64))

    def compute(self, node, inputs):
        x, w = inputs[0], inputs[1]
        b = inputs[2] if len(inputs) > 2 else None
        a = node.attrs
        y = conv_transpose_reference(x, w, b, a["group"], a["strides"], a["pads"],
                                     a["dilations"], a["output_padding"])
        return [finish(y, x.dtype, a)]


def conv_transpose_reference(x, w, b, group, strides, pads, dilations, output_padding):
    """Scatter form: each kernel offset adds (W_offsetᵀ @ X) into a strided slice of the
    un-padded output, which is then cropped by ``pads`` (negative pads grow it with zeros)."""
    dt = np.float32 if x.dtype == np.float16 else x.dtype
    x, w = x.astype(dt, copy=False), w.astype(dt, copy=False)
    n, c = x.shape[:2]
    mg = w.shape[1]
    kernel = w.shape[2:]
    nsp = len(kernel)
    ins = x.shape[2:]
    full = [strides[i] * (ins[i] - 1) + output_padding[i] + (kernel[i] - 1) * dilations[i] + 1
            for i in range(nsp)]
    outs = [full[i] - pads[i] - pads[i + nsp] for i in range(nsp)]
    shift = [max(0, -pads[i]) for i in range(nsp)]
    length = [shift[i] + max(full[i], pads[i] + outs[i]) for i in range(nsp)]
    buf = np.zeros((n, group * mg, *length), dtype=dt)
    wg = np.swapaxes(w.reshape(group, c // group, mg, -1), 1, 2)   # (g, M/g, C/g, K)
    xg = x.reshape(n, group, c // group, -1)
    for k, off in enumerate(itertools.product(*(range(s) for s in kernel))):
        contrib = (wg[None, :, :, :, k] @ xg).reshape(n, group * mg, *ins)
        idx = (slice(None), slice(None)) + tuple(
            slice(shift[i] + off[i] * dilations[i],
                  shift[i] + off[i] * dilations[i] + strides[i] * (ins[i] - 1) + 1, strides[i])
            for i in range(nsp))
        buf[idx] += contrib
    crop = (slice(None), slice(None)) + tuple(
        slice(shift[i] + pads[i], shift[i] + pads[i] + outs[i]) for i in range(nsp))
    y = buf[crop]
    if b is not None:
        y = y + b.astype(dt).reshape((1, group * mg) + (1,) * nsp)
    return np.ascontiguousarray(y)


# ---- gradients -------------------------------------------------------------------------------
GRAD_CONV_ATTRS = {"strides": [], "pads": [], "dilations": [], "group": 1}


def _grad_geometry(ctx, spatial_in, kernel, dy):
    """Check the resolved window attributes against X's spatial sizes and dY's; return them."""
    nsp = len(spatial_in)
    strides = spatial_attr(ctx, "strides", nsp, 1)
    dil = spatial_attr(ctx, "dilations", nsp, 1)
    pads = spatial_attr(ctx, "pads", nsp, 0, 2 * nsp)
    ctx.check(min(strides + dil) >= 1 and min(pads) >= 0,
              f"expected strides, dilations ≥ 1 and pads ≥ 0, got {strides}, {dil}, {pads}")
    outs = tuple(window_out(ctx, spatial_in[i], kernel[i], strides[i], dil[i], pads[i],
                            pads[i + nsp], axis=i) for i in range(nsp))
    ctx.check(tuple(dy[2:]) == outs, f"expected dY spatial sizes {outs} for an input of "
                                     f"{tuple(spatial_in)} and kernel {tuple(kernel)}, got "
                                     f"{tuple(dy[2:])}")
    return strides, pads, dil


def _check_grad_pair(ctx, x_like, w_like, what_x, what_w):
    dy = ctx.shape(0)
    g = int(ctx.attrs["group"])
    ctx.check(len(dy) >= 3 and len(x_like) == len(dy) and len(w_like) == len(dy),
              f"expected dY, {what_x} and {what_w} of one rank ≥ 3, got {dy}, {x_like}, "
              f"{w_like}")
    ctx.check(g >= 1 and w_like[0] % g == 0,
              f"expected {what_w}.shape[0] ({w_like[0]}) divisible by group ({g})")
    ctx.check(dy[0] == x_like[0], f"expected dY batch {dy[0]} == {what_x} batch {x_like[0]}")
    ctx.check(dy[1] == w_like[0], f"expected dY channels {dy[1]} == {what_w}.shape[0] "
                                  f"{w_like[0]}")
    ctx.check(x_like[1] == w_like[1] * g, f"expected {what_x} channels {x_like[1]} == "
                                          f"{what_w}.shape[1]·group = {w_like[1]}·{g}")
    ctx.check(ctx.dtype(0).kind == "f" and ctx.dtype(1) == ctx.dtype(0),
              f"expected float dY and input 1 of one dtype, got {ctx.dtype(0)} and "
              f"{ctx.dtype(1)}")
    _grad_geometry(ctx, x_like[2:], w_like[2:], dy)


@register
class ConvGradInput(Op):
    """dX of Conv(X, W) from dY and W (a transposed convolution cropped to X's shape)."""
    domain = TRAINING_DOMAIN
    num_inputs = (2, 2)
    attrs = {**GRAD_CONV_ATTRS, "input_shape": REQUIRED}

    def reference_temporaries(self, node, types):
        return padded_image_elements(node, types, node.outputs[0], node.input(0))

    def infer(self, ctx):
        xs = tuple(int(d) for d in ctx.attrs["input_shape"])
        _check_grad_pair(ctx, xs, tuple(ctx.shape(1)), "input_shape", "W")
        return [TensorType(ctx.dtype(0), xs)]

    def compute(self, node, inputs):
        dy, w = inputs
        a = node.attrs
        xs = [int(d) for d in a["input_shape"]]
        nsp = dy.ndim - 2
        eff = [(w.shape[2 + i] - 1) * a["dilations"][i] + 1 for i in range(nsp)]
        opad = [xs[2 + i] + a["pads"][i] + a["pads"][i + nsp] - eff[i]
                - a["strides"][i] * (dy.shape[2 + i] - 1) for i in range(nsp)]
        dx = conv_transpose_reference(dy.astype(np.float64), w.astype(np.float64), None,
                                      a["group"], a["strides"], a["pads"], a["dilations"], opad)
        return [dx.astype(dy.dtype)]


@register
class ConvGradWeight(Op):
    """dW of Conv(X, W) from dY and X: per kernel offset, dY·(X window)ᵀ summed over the batch
    and output pixels, per group."""
    domain = TRAINING_DOMAIN
    num_inputs = (2, 2)
    attrs = {**GRAD_CONV_ATTRS, "weight_shape": REQUIRED}

    def reference_temporaries(self, node, types):
        return padded_image_elements(node, types, node.input(1), node.input(0))

    def infer(self, ctx):
        ws = tuple(int(d) for d in ctx.attrs["weight_shape"])
        _check_grad_pair(ctx, tuple(ctx.shape(1)), ws, "X", "weight_shape")
        return [TensorType(ctx.dtype(0), ws)]

    def compute(self, node, inputs):
        dy, x = inputs
        a = node.attrs
        ws = [int(d) for d in a["weight_shape"]]
        group = int(a["group"])
        m, cg, kernel = ws[0], ws[1], ws[2:]
        n, outs = dy.shape[0], dy.shape[2:]
        xp = padded(x.astype(np.float64), a["pads"])
        dyg = dy.astype(np.float64).reshape(n, group, m // group, -1)
        dw = np.zeros((group, m // group, cg, int(np.prod(kernel))))
        for k, off in enumerate(itertools.product(*(range(s) for s in kernel))):
            xs = xp[window_slice(off, a["dilations"], a["strides"], outs)].reshape(n, group, cg,
                                                                                 -1)
            dw[..., k] = np.einsum("ngmp,ngcp->gmc", dyg, xs)
        return [dw.reshape(ws).astype(dy.dtype)]


def _window_attrs(node):
    a = node.attrs
    return dict(strides=list(a["strides"]), pads=list(a["pads"]),
                dilations=list(a["dilations"]), group=int(a["group"]))


def _conv_gradient(self, node, grads, g):
    if grads[0] is None:
        return [None] * len(node.inputs)
    from .activation import fused_activation_grad
    dy = fused_activation_grad(node, grads[0], g)
    x, w = g.input(0), g.input(1)
    attrs = _window_attrs(node)
    dx = dw = db = None
    if g.needs(0):
        dx = g.op("ConvGradInput", [dy, w], input_shape=list(g.shape(x)), **attrs)
    if g.needs(1):
        dw = g.op("ConvGradWeight", [dy, x], weight_shape=list(g.shape(w)), **attrs)
    if g.needs(2):
        db = g.op("BiasGrad", [dy], axis=1)
    return [dx, dw, db][:len(node.inputs)]


def _conv_transpose_gradient(self, node, grads, g):
    """Y = ConvTranspose(X, W) is Conv's input gradient with dY in X's place, so dX is a Conv of
    dY with W and dW is ConvGradWeight with the roles of X and dY swapped."""
    if grads[0] is None:
        return [None] * len(node.inputs)
    from .activation import fused_activation_grad
    dy = fused_activation_grad(node, grads[0], g)
    x, w = g.input(0), g.input(1)
    attrs = _window_attrs(node)
    dx = dw = db = None
    if g.needs(0):
        dx = g.op("Conv", [dy, w], kernel_shape=list(g.shape(w)[2:]), **attrs)
        if g.shape(dx) != g.shape(x):
            g.fail(f"output_padding {node.attrs['output_padding']} not smaller than the stride: "
                   f"gradient shape {g.shape(dx)} differs from X {g.shape(x)}")
    if g.needs(1):
        dw = g.op("ConvGradWeight", [x, dy], weight_shape=list(g.shape(w)), **attrs)
    if g.needs(2):
        db = g.op("BiasGrad", [dy], axis=1)
    return [dx, dw, db][:len(node.inputs)]


Conv.gradient = _conv_gradient
ConvTranspose.gradient = _conv_transpose_gradient
