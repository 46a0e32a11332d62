"""Helpers every family's binders share: dtype checks, views reshaped for the kernels, constant
copies made once, conv/pool window geometry and the fused-activation codes."""
from __future__ import annotations

import weakref

import numpy as np

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
