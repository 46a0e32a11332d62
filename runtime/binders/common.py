"""Helpers every family's binders share: dtype checks, views reshaped for the kernels, constant
copies made once, conv/pool window geometry and the fused-activation codes."""
from __future__ import annotations

import weakref
from typing import NamedTuple

import numpy as np

from ...graph.errors import ShapeError
from ...graph.ops.activation import ACTIVATIONS
from ...kernels.elementwise import ACTIVATION_CODES

F32 = np.dtype(np.float32)

# Every activation a pass may fuse into Conv/Gemm/MatMul ("" = none) → its kernel code.
FUSED_CODES = {name: ACTIVATION_CODES[name] if name else 0 for name in ACTIVATIONS}
FUSED_ACTIVATIONS = tuple(name for name in ACTIVATIONS if name)


def optional_at(seq, i):
    """``seq[i]``, or None past its end (an absent optional input or output)."""
    return seq[i] if i < len(seq) else None


def all_float32(*arrays) -> bool:
    """True when every array given (None counts as absent) is float32."""
    return all(a is None or a.dtype == F32 for a in arrays)


def root_of(a):
    """The array owning ``a``'s memory (followed through every view)."""
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


def has_empty_output(outs) -> bool:
    return any(o is not None and o.size == 0 for o in outs)


def noop():
    """The step of a node whose output is empty: nothing to compute."""
    return None


def int_list(v, n, fill):
    """``v`` as n ints, or ``[fill] * n`` when it is absent or of another length."""
    v = list(v) if v else []
    return [int(x) for x in v] if len(v) == n else [fill] * n


def as_nchw(a):
    """(N, C, L) → (N, C, 1, L) view; 4-D unchanged: 1-D convs and pools run as 2-D."""
    return a.reshape(a.shape[0], a.shape[1], 1, a.shape[2]) if a.ndim == 3 else a


def as_nc_inner(a):
    """(N, C, *spatial) → (N, C, inner) view."""
    return a.reshape(a.shape[0], a.shape[1], -1)


# Constant copies made at bind time, shared by every context of every Session: id(original) ->
# (weak reference to the original, copy). Entries die with their original.
CONSTANT_COPIES: dict = {}


def contiguous_f32(a):
    """C-contiguous, writable float32. Arena views already are and pass through untouched;
    constants that are not (initializers are read-only buffers, which the kernels' non-const
    memoryviews refuse) are copied once and the copy is reused while the constant lives."""
    if a is None or (a.dtype == F32 and a.flags.c_contiguous and a.flags.writeable):
        return a
    hit = CONSTANT_COPIES.get(id(a))
    if hit is not None and hit[0]() is a:
        return hit[1]
    copy = np.array(a, dtype=F32, order="C", copy=True)
    key = id(a)
    try:
        ref = weakref.ref(a, lambda _r, key=key: CONSTANT_COPIES.pop(key, None))
    except TypeError:
        return copy
    CONSTANT_COPIES[key] = (ref, copy)
    return copy


# The C index types of the kernels, by the name a proof gives them: the largest value each holds.
INDEX_TYPES = {"int32": (1 << 31) - 1, "int64": (1 << 63) - 1}


def prove_fits(node, attribute: str | None, what: str, value: int, ctype: str) -> None:
    """ShapeError naming ``node`` and ``attribute`` (None: the quantity comes from its shapes)
    unless ``value`` — a quantity the node's kernel computes from its geometry, evaluated
    exactly as a Python int — fits the kernel's index type ``ctype``: past it the C arithmetic
    would wrap and read or write outside its buffers."""
    limit = INDEX_TYPES[ctype]
    if not -limit <= value <= limit:
        source = f"attribute {attribute!r}" if attribute else "its input and output shapes"
        raise ShapeError(f"{node}: {what} is {value:,} (from {source}), beyond the {ctype} "
                         f"index arithmetic of its kernel (|value| ≤ {limit:,})")


class WindowAxis(NamedTuple):
    """One spatial axis of a sliding window as a kernel walks it: ``out`` window positions
    ``stride`` apart, starting ``pad_begin`` before an axis of ``size``, each of ``kernel`` taps
    ``dilation`` apart. For the adjoint walks (col2im: a transposed conv, a conv's input
    gradient) ``size`` is the axis written and ``out`` the one read."""
    size: int
    out: int
    kernel: int
    stride: int
    dilation: int
    pad_begin: int
    pad_end: int


def prove_window(node, axes, ctype: str) -> None:
    """Prove every index a window kernel forms along ``axes`` fits ``ctype``.

    The kernels compute window starts (o·stride − pad_begin), tap positions (start +
    k·dilation), window ends, the clamps of a window to the image or to the padded image
    (``span_inside``: bound − start + step − 1, …) and the rows a depthwise or im2col pass
    packs; each is a sum of these terms, each with a sign ±1, o < out, k < kernel: size,
    pad_begin, pad_end, (out − 1)·stride, stride, (kernel − 1)·dilation, dilation, 1. So
    their absolute sum — the *reach* of the window — bounds every one of them, and proving
    it proves them all. Each term is checked first, to name the attribute that overflows."""
    for a in axes:
        dilated = (a.kernel - 1) * a.dilation
        pads = abs(a.pad_begin) + abs(a.pad_end)
        for attribute, value in (("kernel_shape", a.kernel), ("strides", a.stride),
                                 ("dilations", a.dilation), ("pads", a.pad_begin),
                                 ("pads", a.pad_end)):
            prove_fits(node, attribute, f"a {attribute} value", value, ctype)
        prove_fits(node, "dilations" if a.dilation > 1 else "kernel_shape",
                   "the dilated kernel extent (k − 1)·d + 1", dilated + 1, ctype)
        prove_fits(node, "pads", "the padded extent", a.size + pads, ctype)
        prove_fits(node, "strides", "the last window start (out − 1)·stride",
                   max(a.out - 1, 0) * a.stride, ctype)
        shares = {"pads": pads, "strides": max(a.out, 1) * a.stride,
                  "dilations" if a.dilation > 1 else "kernel_shape": dilated + a.dilation}
        reach = a.size + sum(shares.values()) + 1
        prove_fits(node, max(shares, key=shares.get), "the window's reach (padded extent + "
                   "stride × output positions + dilated kernel extent)", reach, ctype)


def window_geometry(node, nd):
    """(stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, (pad_bottom, pad_right)) of a 1-D or
    2-D conv/pool; a 1-D one is a 2-D one of height 1."""
    strides = int_list(node.attrs.get("strides"), nd, 1)
    dil = int_list(node.attrs.get("dilations"), nd, 1)
    pads = int_list(node.attrs.get("pads"), 2 * nd, 0)
    if nd == 1:
        return 1, strides[0], 0, pads[0], 1, dil[0], (0, pads[1])
    return strides[0], strides[1], pads[0], pads[1], dil[0], dil[1], (pads[2], pads[3])


def fused_activation(node):
    """(code, a, b) of the activation a pass fused into Conv/Gemm/MatMul, None if unknown."""
    name = node.attrs.get("activation", "") or ""
    if name not in FUSED_CODES:
        return None
    a = float(node.attrs.get("activation_alpha", 0.0) or 0.0)
    b = float(node.attrs.get("activation_beta", 0.0) or 0.0)
    return FUSED_CODES[name], a, b
