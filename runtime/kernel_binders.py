"""Fast paths: IR ops bound to ember's Cython kernels (see ``bindings`` for the contract).

Each binder does all the shape work once — views reshaped to what the kernel wants, strides,
pads, activation codes, BatchNorm's scale/shift — and returns a step that only calls the kernel.
It returns ``None`` (→ the op's numpy reference) for any case it does not cover: a dtype other
than float32, an unsupported rank, an unusual attribute, or a kernel module not built yet.

Arrays handed to a binder are arena views (C-contiguous, rewritten on every run) or compile-time
constants. ``_is_runtime`` tells them apart, so constant parameters are preprocessed at bind
time while run-time ones are read inside the step.
"""
from __future__ import annotations

import importlib
import math
import os
import weakref

import numpy as np

from ..graph.errors import InputError
from ..graph.ops import get_op
from .bindings import INPLACE, binder, scratch

F32 = np.dtype(np.float32)

# ---- kernel modules (imported lazily: a module not built yet means "no fast path") -------------
_MODULES: dict = {}


def _k(name: str):
    """``ember.kernels.<name>``, or None while that extension is not built. Any other import
    failure (a broken build) is a real error and propagates."""
    if name not in _MODULES:
        full = f"{__package__.rsplit('.', 1)[0]}.kernels.{name}"
        try:
            _MODULES[name] = importlib.import_module(full)
        except ModuleNotFoundError as e:
            if e.name != full:
                raise
            _MODULES[name] = None
    return _MODULES[name]


# ---- small helpers -------------------------------------------------------------------------------
def _opt(seq, i):
    return seq[i] if i < len(seq) else None


def _f32(*arrays) -> bool:
    return all(a is None or a.dtype == F32 for a in arrays)


def _root(a):
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


def _is_runtime(a, arena_ref) -> bool:
    """True when ``a``'s value may change between runs: it lives in the arena, or it is
    external state (parameters a Trainer updates in place). Only constants are preprocessed."""
    if a is None:
        return False
    root = _root(a)
    if root is _root(arena_ref):
        return True
    hit = EXTERNAL.get(id(root))
    return hit is not None and hit() is root


# Arrays bound as external state (``Session(external=...)``): id(root) -> weak reference.
EXTERNAL: dict = {}


def mark_external(a) -> None:
    """Register ``a`` as external state, so binders read it live instead of precomputing."""
    root = _root(a)
    key = id(root)
    EXTERNAL[key] = weakref.ref(root, lambda _, key=key: EXTERNAL.pop(key, None))


# Constant copies made at bind time, shared by every context of every Session: id(original) ->
# (weak reference to the original, copy). Entries die with their original.
_COPIES: dict = {}


def _c(a):
    """C-contiguous, writable float32. Arena views already are and pass through untouched;
    constants that are not (initializers are read-only buffers, which the kernels' non-const
    memoryviews refuse) are copied once and the copy is reused while the constant lives."""
    if a is None or (a.dtype == F32 and a.flags.c_contiguous and a.flags.writeable):
        return a
    hit = _COPIES.get(id(a))
    if hit is not None and hit[0]() is a:
        return hit[1]
    copy = np.array(a, dtype=F32, order="C", copy=True)
    key = id(a)
    try:
        ref = weakref.ref(a, lambda _r, key=key: _COPIES.pop(key, None))
    except TypeError:
        return copy
    _COPIES[key] = (ref, copy)
    return copy


def _empty_output(outs) -> bool:
    return any(o is not None and o.size == 0 for o in outs)


def _noop():
    return None


def _ints(v, n, fill):
    v = list(v) if v else []
    return [int(x) for x in v] if len(v) == n else [fill] * n


# ---- activation codes (kernels/CONTRACT.md) --------------------------------------------------
_FUSED_CODES = {"": 0, "Relu": 1, "LeakyRelu": 2, "Sigmoid": 5, "HardSwish": 7, "Tanh": 8,
                "Clip": 10, "SiLU": 17}


def _fused_act(node):
    """(code, a, b) of the activation a pass fused into Conv/Gemm/MatMul, None if unknown."""
    name = node.attrs.get("activation", "") or ""
    if name not in _FUSED_CODES:
        return None
    a = float(node.attrs.get("activation_alpha", 0.0) or 0.0)
    b = float(node.attrs.get("activation_beta", 0.0) or 0.0)
    return _FUSED_CODES[name], a, b


# op_type -> (code, attrs -> (a, b))
_UNARY = {
    "Relu": (1, lambda at: (0.0, 0.0)),
    "LeakyRelu": (2, lambda at: (at.get("alpha", 0.01), 0.0)),
    "Elu": (3, lambda at: (at.get("alpha", 1.0), 0.0)),
    "Selu": (4, lambda at: (at.get("alpha", 1.67326319217681884765625),
                            at.get("gamma", 1.05070102214813232421875))),
    "Sigmoid": (5, lambda at: (0.0, 0.0)),
    "HardSigmoid": (6, lambda at: (at.get("alpha", 0.2), at.get("beta", 0.5))),
    "HardSwish": (7, lambda at: (0.0, 0.0)),
    "Tanh": (8, lambda at: (0.0, 0.0)),
    "Softplus": (9, lambda at: (0.0, 0.0)),
    "Exp": (11, lambda at: (0.0, 0.0)),
    "Log": (12, lambda at: (0.0, 0.0)),
    "Sqrt": (13, lambda at: (0.0, 0.0)),
    "Neg": (14, lambda at: (0.0, 0.0)),
    "Abs": (15, lambda at: (0.0, 0.0)),
    "Reciprocal": (16, lambda at: (0.0, 0.0)),
    "SiLU": (17, lambda at: (0.0, 0.0)),
}


@binder(*_UNARY)
def _unary(node, types, ins, outs, scratch_buf, threads):
    ew, x, y = _k("elementwise"), ins[0], outs[0]
    if ew is None or not _f32(x, y) or x.shape != y.shape:
        return None
    if _empty_output(outs):
        return _noop
    code, params = _UNARY[node.op_type]
    a, b = (float(v) for v in params(node.attrs))
    xf, yf, unary = _c(x).reshape(-1), y.reshape(-1), ew.unary
    return lambda: unary(xf, yf, code, a, b, threads)


@binder("Swish")
def _swish(node, types, ins, outs, scratch_buf, threads):
    """ONNX Swish is x·sigmoid(alpha·x): the SiLU kernel covers alpha = 1."""
    if float(node.attrs.get("alpha", 1.0)) != 1.0:
        return None
    ew, x, y = _k("elementwise"), ins[0], outs[0]
    if ew is None or not _f32(x, y) or x.shape != y.shape:
        return None
    if _empty_output(outs):
        return _noop
    xf, yf, unary = _c(x).reshape(-1), y.reshape(-1), ew.unary
    return lambda: unary(xf, yf, 17, 0.0, 0.0, threads)


@binder("Clip")
def _clip(node, types, ins, outs, scratch_buf, threads):
    """min/max are optional scalar inputs; run-time ones are read in the step (one float)."""
    ew, x, y = _k("elementwise"), ins[0], outs[0]
    lo, hi = _opt(ins, 1), _opt(ins, 2)
    if ew is None or not _f32(x, y, lo, hi) or x.shape != y.shape:
        return None
    if any(v is not None and v.size != 1 for v in (lo, hi)):
        return None
    if _empty_output(outs):
        return _noop
    xf, yf, unary = _c(x).reshape(-1), y.reshape(-1), ew.unary
    if _is_runtime(lo, y) or _is_runtime(hi, y):
        lof = lo.reshape(-1) if lo is not None else None
        hif = hi.reshape(-1) if hi is not None else None

        def step():
            a = float(lof[0]) if lof is not None else -math.inf
            b = float(hif[0]) if hif is not None else math.inf
            unary(xf, yf, 10, a, b, threads)
        return step
    a = float(lo.reshape(-1)[0]) if lo is not None else -math.inf
    b = float(hi.reshape(-1)[0]) if hi is not None else math.inf
    return lambda: unary(xf, yf, 10, a, b, threads)


# ---- elementwise binary ------------------------------------------------------------------------
_BINARY = {"Add": 0, "Sub": 1, "Mul": 2, "Div": 3, "Max": 4, "Min": 5, "Pow": 6, "PRelu": 7}


def _bstrides(shape, yshape):
    """Element strides of a C-contiguous array of ``shape`` broadcast over ``yshape``."""
    r = len(yshape)
    s = (1,) * (r - len(shape)) + tuple(shape)
    strides, acc = [0] * r, 1
    for i in reversed(range(r)):
        strides[i] = acc if s[i] != 1 else 0
        acc *= s[i]
    return np.array(strides, dtype=np.int64)


def _binary_step(ew, a, b, y, op, threads):
    """A step computing y = a ∘ b (broadcasting), or None when the rank is too high."""
    if a.shape == b.shape == y.shape:
        af, bf, yf, fn = _c(a).reshape(-1), _c(b).reshape(-1), y.reshape(-1), ew.binary
        return lambda: fn(af, bf, yf, op, threads)
    if y.ndim > 8:
        return None
    af, bf, yf = _c(a).reshape(-1), _c(b).reshape(-1), y.reshape(-1)
    sa, sb = _bstrides(a.shape, y.shape), _bstrides(b.shape, y.shape)
    shape, fn = np.array(y.shape, dtype=np.int64), ew.binary_broadcast
    return lambda: fn(af, sa, bf, sb, yf, shape, op, threads)


@binder(*_BINARY)
def _binary(node, types, ins, outs, scratch_buf, threads):
    ew, y = _k("elementwise"), outs[0]
    present = [i for i in ins if i is not None]
    if ew is None or not _f32(*present, y):
        return None
    if _empty_output(outs):
        return _noop
    op = _BINARY[node.op_type]
    if len(present) == 1:  # variadic Max/Min with one input
        x = present[0]
        return lambda: np.copyto(y, x)
    if len(present) == 2:
        return _binary_step(ew, present[0], present[1], y, op, threads)
    return _chain(ew, present, y, op, threads)


def _chain(ew, arrays, y, op, threads):
    """y = a0 ∘ a1 ∘ … for same-shape inputs (the kernel may write y over its input)."""
    if any(a.shape != y.shape for a in arrays):
        return None
    flats = [_c(a).reshape(-1) for a in arrays]
    yf, fn = y.reshape(-1), ew.binary
    first, rest = flats[:2], flats[2:]

    def step():
        fn(first[0], first[1], yf, op, threads)
        for f in rest:
            fn(yf, f, yf, op, threads)
    return step


@binder("Sum", "Mean")
def _sum_mean(node, types, ins, outs, scratch_buf, threads):
    ew, y = _k("elementwise"), outs[0]
    present = [i for i in ins if i is not None]
    if ew is None or not _f32(*present, y):
        return None
    if _empty_output(outs):
        return _noop
    if len(present) == 1:
        x = present[0]
        return lambda: np.copyto(y, x)
    step = (_binary_step(ew, present[0], present[1], y, 0, threads) if len(present) == 2
            else _chain(ew, present, y, 0, threads))
    if step is None or node.op_type == "Sum":
        return step
    scale = np.float32(1.0 / len(present))

    def mean():
        step()
        np.multiply(y, scale, out=y)
    return mean


def _same_shape_inplace(node, types, allowed=None):
    """In-place only when every input has the output's shape (then the kernel is ``binary``,
    which tolerates y being an input); ``binary_broadcast`` promises no aliasing."""
    op = get_op(node.op_type, node.domain)
    out_t = types.get(node.outputs[0])
    ins = [types.get(i) for i in node.inputs if i]
    if out_t is None or any(t is None or t.shape != out_t.shape for t in ins):
        return ()
    return tuple(k for k in op.inplace if allowed is None or k in allowed)


for _t in _BINARY:
    INPLACE[_t] = _same_shape_inplace
for _t in ("Sum", "Mean", "Max", "Min"):
    # a chain writes y before it reads inputs 2.., so only inputs 0 and 1 may share y's bytes
    INPLACE[_t] = lambda node, types: _same_shape_inplace(node, types, allowed=(0, 1))


# ---- convolution ------------------------------------------------------------------------------
def _conv_geometry(node, nd):
    """(stride_h, stride_w, pad_top, pad_left, dil_h, dil_w) of a 1-D or 2-D conv/pool."""
    strides = _ints(node.attrs.get("strides"), nd, 1)
    dil = _ints(node.attrs.get("dilations"), nd, 1)
    pads = _ints(node.attrs.get("pads"), 2 * nd, 0)
    if nd == 1:
        return 1, strides[0], 0, pads[0], 1, dil[0], (0, pads[1])
    return strides[0], strides[1], pads[0], pads[1], dil[0], dil[1], (pads[2], pads[3])


def _as4d(a):
    """(N, C, L) → (N, C, 1, L) view; 4-D unchanged."""
    return a.reshape(a.shape[0], a.shape[1], 1, a.shape[2]) if a.ndim == 3 else a


def _conv_case(node, types):
    """Shapes (as 4-D) and geometry of a float32 1-D/2-D Conv or ConvTranspose, or None."""
    xt, wt, yt = (types.get(node.input(0)), types.get(node.input(1)),
                  types.get(node.outputs[0]))
    if xt is None or wt is None or yt is None or len(xt.shape) not in (3, 4):
        return None
    if any(t.dtype != F32 for t in (xt, wt, yt)) or not (xt.is_static and yt.is_static):
        return None
    nd = len(xt.shape) - 2
    x4 = (xt.shape[0], xt.shape[1], 1, xt.shape[2]) if nd == 1 else tuple(xt.shape)
    w4 = (wt.shape[0], wt.shape[1], 1, wt.shape[2]) if nd == 1 else tuple(wt.shape)
    y4 = (yt.shape[0], yt.shape[1], 1, yt.shape[2]) if nd == 1 else tuple(yt.shape)
    return nd, x4, w4, y4, _conv_geometry(node, nd), int(node.attrs.get("group", 1) or 1)


def _conv_scratch_floats(node, types, threads):
    conv, case = _k("conv"), _conv_case(node, types)
    if conv is None or case is None:
        return 0
    nd, (N, C, H, W), (M, _, KH, KW), (_, _, OH, OW), g, group = case
    sh, sw, pt, pl, dh, dw, _ = g
    return int(conv.conv2d_scratch_floats(C, H, W, M, KH, KW, OH, OW, sh, sw, pt, pl, dh, dw,
                                          group, threads))


# ---- Winograd F(2×2,3×3) / F(4×4,3×3) for 3×3 stride-1 convs (kernels/winograd.pyx) -------------
# A cost model fitted to measurements on the 2-core AVX2 build machine (benchmarks by hand, see
# kernels/CONTRACT.md): seconds per GEMM flop, per byte of weights streamed from memory, and per
# channel-tile of the input / output transforms. The im2col path is modelled the same way.
_GEMM_S_PER_FLOP = 1 / 70e9
_BYTE_S = 1 / 12e9
_WINO_IN_S = {2: 16e-9, 4: 80e-9}
_WINO_OUT_S = {2: 3.5e-9, 4: 16e-9}
_WINO_MIN_GAIN = 1.15          # below this modelled speed-up keep the im2col path
# A Conv on Winograd keeps its transformed weights U (16/9× or 4× the weight) beside W. Past this
# size per layer (ResNet-18's 512-channel 7×7 layers: 17 MB each) the memory costs more than the
# ~1.5× it gains: peak RSS would pass onnxruntime's (148 → 219 MB on ResNet-18 without the cap).
_WINO_MAX_U_BYTES = 8 << 20


def winograd_enabled() -> bool:
    """EMBER_WINOGRAD=0 turns Winograd off (A/B benchmarks, debugging); read at compile time."""
    return os.environ.get("EMBER_WINOGRAD", "1").strip().lower() not in ("0", "false", "no", "off")


def winograd_tile(N, C, M, OH, OW) -> int:
    """The Winograd output tile (2 or 4) for a 3×3 stride-1 conv with C inputs, M outputs and an
    OH×OW output per image, or 0 when the im2col/implicit-GEMM path is modelled faster (few
    channels: the transforms dominate; 7×7 planes with wide layers: the tiles waste the GEMM's
    16-column panels and the transformed weights no longer fit in cache), or when the
    transformed weights would pass _WINO_MAX_U_BYTES."""
    if C < 16 or M < 16 or N * OH * OW < 16 or not winograd_enabled():
        return 0
    # the GEMM path runs at ~60 GFLOP/s with C ≥ 64, slower with fewer (K = 9·C rows): ~48 at 32
    old = (18.0 * M * C * N * OH * OW * _GEMM_S_PER_FLOP * 1.15 * max(1.0, 64.0 / C) ** 0.3
           + 36.0 * M * C * _BYTE_S)
    best, tile = old / _WINO_MIN_GAIN, 0
    mp = -(-M // 6) * 6
    for m in (2, 4):
        a2, tiles = (m + 2) ** 2, N * (-(-OH // m)) * (-(-OW // m))
        if 4 * a2 * mp * C > _WINO_MAX_U_BYTES:
            continue
        cols = -(-tiles // 16) * 16 if tiles < 256 else tiles
        t = (2.0 * a2 * mp * C * cols * _GEMM_S_PER_FLOP + 4.0 * a2 * mp * C * _BYTE_S
             + tiles * (C * _WINO_IN_S[m] + M * _WINO_OUT_S[m]))
        if t < best:
            best, tile = t, m
    return tile


def _winograd_case(node, types):
    """(N, C, H, W, M, OH, OW, pad_top, pad_left, tile) when this Conv runs through Winograd."""
    wg, case = _k("winograd"), _conv_case(node, types)
    if wg is None or case is None:
        return None
    nd, (N, C, H, W), (M, _, KH, KW), (_, _, OH, OW), geo, group = case
    sh, sw, pt, pl, dh, dw, _ = geo
    if nd != 2 or (KH, KW) != (3, 3) or (sh, sw, dh, dw, group) != (1, 1, 1, 1, 1):
        return None
    tile = winograd_tile(N, C, M, OH, OW)
    return (N, C, H, W, M, OH, OW, pt, pl, tile) if tile else None


def winograd_scratch_floats(N, C, H, W, M, OH, OW, tile, threads) -> int:
    return int(_k("winograd").winograd_scratch_floats(N, C, H, W, M, OH, OW, tile, threads))


def winograd_weight_buffer(M, C, tile):
    """A fresh (α², ·) float32 buffer for the packed transformed weights of an M × C conv."""
    a2 = (tile + 2) ** 2
    return np.empty((a2, int(_k("winograd").winograd_weight_floats(M, C, tile)) // a2), F32)


# Transformed constant weights shared by every context: (id(w), tile) -> (weak ref to w, U).
_WINO_U: dict = {}


def _winograd_constant_weights(w_orig, w4, tile, threads):
    key = (id(w_orig), tile)
    hit = _WINO_U.get(key)
    if hit is not None and hit[0]() is w_orig:
        return hit[1]
    U = winograd_weight_buffer(w4.shape[0], w4.shape[1], tile)
    _k("winograd").winograd_weights(w4, U, tile, False, threads)
    try:
        _WINO_U[key] = (weakref.ref(w_orig, lambda _r, key=key: _WINO_U.pop(key, None)), U)
    except TypeError:
        pass
    return U


def _winograd_conv(node, types, ins, outs, scratch_buf, threads, act):
    """The Conv step through Winograd, or None when this case does not take it."""
    wc = _winograd_case(node, types)
    if wc is None:
        return None
    N, C, H, W, M, OH, OW, pt, pl, tile = wc
    need = winograd_scratch_floats(N, C, H, W, M, OH, OW, tile, threads)
    if scratch_buf is None or scratch_buf.size < need:
        return None
    wg, code, aa, ab = _k("winograd"), *act
    x, w4 = _c(ins[0]).reshape(N, C, H, W), _c(ins[1]).reshape(M, C, 3, 3)
    b = _c(_opt(ins, 2))
    b = b.reshape(-1) if b is not None else None
    y, scr, conv = outs[0].reshape(N, M, OH, OW), scratch_buf[:need], wg.conv2d_winograd
    if not _is_runtime(ins[1], outs[0]):
        U = _winograd_constant_weights(ins[1], w4, tile, threads)

        def step():
            conv(x, U, b, y, scr, tile, pt, pl, code, aa, ab, threads)
    else:
        U, transform = winograd_weight_buffer(M, C, tile), wg.winograd_weights

        def step():   # run-time weights (training): transform them on every call
            transform(w4, U, tile, False, threads)
            conv(x, U, b, y, scr, tile, pt, pl, code, aa, ab, threads)
    step.winograd_tile = tile   # for tests and profiles: which algorithm this node runs
    return step


@scratch("Conv")
def _conv_scratch(node, types, threads):
    wc = _winograd_case(node, types)
    if wc is not None:
        N, C, H, W, M, OH, OW, _, _, tile = wc
        return 4 * winograd_scratch_floats(N, C, H, W, M, OH, OW, tile, threads)
    return _conv_scratch_floats(node, types, threads) * 4


def _conv_arrays(case, ins, outs, scratch_buf, need):
    """x, w, bias, y as the 4-D/1-D float32 views the conv kernels take, and the planned
    scratch cut to ``need`` floats; None when the plan gave less scratch than needed."""
    _, x4, w4, y4, _, _ = case
    scr = None
    if need:
        if scratch_buf is None or scratch_buf.size < need:
            return None
        scr = scratch_buf[:need]
    b = _c(_opt(ins, 2))
    return (_c(ins[0]).reshape(x4), _c(ins[1]).reshape(w4),
            b.reshape(-1) if b is not None else None, outs[0].reshape(y4), scr)


@binder("Conv")
def _conv(node, types, ins, outs, scratch_buf, threads):
    conv, case, act = _k("conv"), _conv_case(node, types), _fused_act(node)
    if conv is None or case is None or act is None or not _f32(*ins, *outs):
        return None
    if _empty_output(outs):
        return _noop
    step = _winograd_conv(node, types, ins, outs, scratch_buf, threads, act)
    if step is not None:
        return step
    nd, x4, w4, y4, geo, group = case
    sh, sw, pt, pl, dh, dw, _ = geo
    arrays = _conv_arrays(case, ins, outs, scratch_buf,
                          _conv_scratch_floats(node, types, threads))
    if arrays is None:
        return None
    x, w, b, y, scr = arrays
    code, aa, ab = act
    # a prepared native step: arguments resolved once, run without Python by the plan runner
    return conv.Conv2dStep(x, w, b, y, scr, sh, sw, pt, pl, dh, dw, group, code, aa, ab, threads)


def _convT_scratch_floats(node, types, threads):
    conv, case = _k("conv"), _conv_case(node, types)
    if conv is None or case is None:
        return 0
    nd, (N, C, H, W), (_, _, KH, KW), (_, M, _, _), geo, group = case
    return int(conv.conv_transpose2d_scratch_floats(C, H, W, M, KH, KW, group, threads))


@scratch("ConvTranspose")
def _convT_scratch(node, types, threads):
    return _convT_scratch_floats(node, types, threads) * 4


@binder("ConvTranspose")
def _conv_transpose(node, types, ins, outs, scratch_buf, threads):
    conv, case = _k("conv"), _conv_case(node, types)
    if conv is None or case is None or not _f32(*ins, *outs) or _fused_act(node) != (0, 0.0, 0.0):
        return None  # the kernel has no activation epilogue
    if any(int(p) < 0 for p in node.attrs.get("pads") or []):
        return None  # negative pads grow the output: left to the reference
    if _empty_output(outs):
        return _noop
    nd, x4, w4, y4, geo, group = case
    sh, sw, pt, pl, dh, dw, _ = geo
    arrays = _conv_arrays(case, ins, outs, scratch_buf,
                          _convT_scratch_floats(node, types, threads))
    if arrays is None:
        return None
    x, w, b, y, scr = arrays
    fn = conv.conv_transpose2d
    return lambda: fn(x, w, b, y, scr, sh, sw, pt, pl, dh, dw, group, threads)


# ---- pooling ---------------------------------------------------------------------------------
def _pool_views(ins, outs):
    x, y = ins[0], outs[0]
    if x.ndim not in (3, 4) or not _f32(x, y):
        return None
    return _as4d(_c(x)), _as4d(y), x.ndim - 2


@binder("MaxPool")
def _max_pool(node, types, ins, outs, scratch_buf, threads):
    pool = _k("pool")
    if pool is None or _opt(outs, 1) is not None or int(node.attrs.get("storage_order", 0)):
        return None
    v = _pool_views(ins, outs)
    if v is None:
        return None
    if _empty_output(outs):
        return _noop
    x, y, nd = v
    ks = _ints(node.attrs.get("kernel_shape"), nd, 0)
    kh, kw = (1, ks[0]) if nd == 1 else ks
    sh, sw, pt, pl, dh, dw, _ = _conv_geometry(node, nd)
    fn = pool.max_pool2d
    return lambda: fn(x, y, kh, kw, sh, sw, pt, pl, dh, dw, threads)


@binder("AveragePool")
def _avg_pool(node, types, ins, outs, scratch_buf, threads):
    pool = _k("pool")
    if pool is None:
        return None
    dil = node.attrs.get("dilations")
    if dil and any(int(d) != 1 for d in dil):
        return None  # the kernel has no dilation
    v = _pool_views(ins, outs)
    if v is None:
        return None
    if _empty_output(outs):
        return _noop
    x, y, nd = v
    ks = _ints(node.attrs.get("kernel_shape"), nd, 0)
    kh, kw = (1, ks[0]) if nd == 1 else ks
    sh, sw, pt, pl, _, _, (pb, pr) = _conv_geometry(node, nd)
    include = bool(int(node.attrs.get("count_include_pad", 0)))
    fn = pool.avg_pool2d
    return lambda: fn(x, y, kh, kw, sh, sw, pt, pl, pb, pr, include, threads)


@binder("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(node, types, ins, outs, scratch_buf, threads):
    pool, x, y = _k("pool"), ins[0], outs[0]
    if pool is None or x.ndim < 3 or not _f32(x, y):
        return None
    if _empty_output(outs) or x.size == 0:
        return None
    nc = x.shape[0] * x.shape[1]
    x2, y1 = _c(x).reshape(nc, -1), y.reshape(nc)
    is_max, fn = node.op_type == "GlobalMaxPool", pool.global_pool
    return lambda: fn(x2, y1, is_max, threads)


# ---- gemm / matmul -----------------------------------------------------------------------------
@binder("Gemm")
def _gemm(node, types, ins, outs, scratch_buf, threads):
    gm, act = _k("gemm"), _fused_act(node)
    A, B, C, Y = ins[0], ins[1], _opt(ins, 2), outs[0]
    if gm is None or act is None or not _f32(A, B, C, Y) or A.ndim != 2 or B.ndim != 2:
        return None
    if _empty_output(outs):
        return _noop
    ta, tb = bool(int(node.attrs.get("transA", 0))), bool(int(node.attrs.get("transB", 0)))
    alpha, beta = float(node.attrs.get("alpha", 1.0)), float(node.attrs.get("beta", 1.0))
    M, N = Y.shape
    A, B = _c(A), _c(B)
    code, aa, ab = act
    fn = gm.gemm
    bias, axis, kbeta, pre = None, 1, 0.0, None
    if C is None or beta == 0.0:
        pass
    elif np.shares_memory(C, Y):  # planned in place: Y already holds C
        kbeta = beta
    elif C.shape in ((N,), (1, N)) and (beta == 1.0 or not _is_runtime(C, Y)):
        bias = _c(C).reshape(N) if beta == 1.0 else _c(C.reshape(N) * np.float32(beta))
    elif C.shape == (M, 1) and (beta == 1.0 or not _is_runtime(C, Y)):
        bias = _c(C).reshape(M) if beta == 1.0 else _c(C.reshape(M) * np.float32(beta))
        axis = 0
    else:  # scalar, (M, N) or another broadcast: copy C into Y and let the kernel scale it
        kbeta, src = beta, C

        def pre():
            np.copyto(Y, src)
    if pre is None:
        return lambda: fn(A, B, Y, ta, tb, alpha, kbeta, bias, axis, code, aa, ab, threads)

    def step():
        pre()
        fn(A, B, Y, ta, tb, alpha, kbeta, bias, axis, code, aa, ab, threads)
    return step


def _gemm_inplace(node, types):
    """Y may take over C's bytes when C already has Y's shape (the kernel reads it as beta·Y)."""
    c, y = node.input(2), node.outputs[0]
    if c and c in types and y in types and types[c] == types[y] \
            and 2 in get_op(node.op_type, node.domain).inplace:
        return (2,)
    return ()


INPLACE["Gemm"] = _gemm_inplace


@binder("MatMul")
def _matmul(node, types, ins, outs, scratch_buf, threads):
    gm, act = _k("gemm"), _fused_act(node)
    A, B, Y = ins[0], ins[1], outs[0]
    if gm is None or act is None or not _f32(A, B, Y) or A.ndim == 0 or B.ndim == 0:
        return None
    if _empty_output(outs):
        return _noop
    A, B = _c(A), _c(B)
    K = A.shape[-1]
    A2 = A.reshape(1, K) if A.ndim == 1 else A
    B2 = B.reshape(K, 1) if B.ndim == 1 else B
    M, N = A2.shape[-2], B2.shape[-1]
    code, aa, ab = act
    fn = gm.gemm
    if A2.ndim == 2 and B2.ndim == 2:
        a, b, y = A2, B2, Y.reshape(M, N)
        return lambda: fn(a, b, y, False, False, 1.0, 0.0, None, 1, code, aa, ab, threads)
    if B2.ndim == 2:  # batched A times one matrix: a single (batch·M)×K by K×N product
        a, b, y = A2.reshape(-1, K), B2, Y.reshape(-1, N)
        return lambda: fn(a, b, y, False, False, 1.0, 0.0, None, 1, code, aa, ab, threads)
    batch = np.broadcast_shapes(A2.shape[:-2], B2.shape[:-2])
    A3 = A2.reshape((1,) * (len(batch) - (A2.ndim - 2)) + A2.shape)
    B3 = B2.reshape((1,) * (len(batch) - (B2.ndim - 2)) + B2.shape)
    Y3 = Y.reshape(batch + (M, N))
    triples = []
    for idx in np.ndindex(*batch):
        ia = tuple(i if d != 1 else 0 for i, d in zip(idx, A3.shape[:-2]))
        ib = tuple(i if d != 1 else 0 for i, d in zip(idx, B3.shape[:-2]))
        triples.append((A3[ia], B3[ib], Y3[idx]))

    def step():
        for a, b, y in triples:
            fn(a, b, y, False, False, 1.0, 0.0, None, 1, code, aa, ab, threads)
    return step


# ---- normalization -----------------------------------------------------------------------------
def _nci(a):
    """(N, C, *spatial) → (N, C, inner) view."""
    return a.reshape(a.shape[0], a.shape[1], -1)


@binder("BatchNormalization")
def _batch_norm(node, types, ins, outs, scratch_buf, threads):
    nm = _k("normalization")
    x, gamma, beta, mean, var = ins[:5]
    y = outs[0]
    if nm is None or int(node.attrs.get("training_mode", 0)) or any(
            o is not None for o in outs[1:]):
        return None
    if x.ndim < 2 or not _f32(x, gamma, beta, mean, var, y):
        return None
    if _empty_output(outs):
        return _noop
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

    x3, y3, fn = _nci(_c(x)), _nci(y), nm.channel_affine
    if any(_is_runtime(p, y) for p in (gamma, beta, mean, var)):
        def step():
            refresh()
            fn(x3, scale, shift, y3, 0, 0.0, 0.0, threads)
        return step
    refresh()
    return lambda: fn(x3, scale, shift, y3, 0, 0.0, 0.0, threads)


@binder("InstanceNormalization")
def _instance_norm(node, types, ins, outs, scratch_buf, threads):
    nm = _k("normalization")
    x, s, b, y = ins[0], ins[1], ins[2], outs[0]
    if nm is None or x.ndim < 3 or not _f32(x, s, b, y):
        return None
    if _empty_output(outs) or x.size == 0:
        return None
    eps = float(node.attrs.get("epsilon", 1e-5))
    x3, y3, s1, b1, fn = _nci(_c(x)), _nci(y), _c(s).reshape(-1), _c(b).reshape(-1), \
        nm.instance_norm
    return lambda: fn(x3, s1, b1, y3, eps, threads)


INPLACE["InstanceNormalization"] = lambda node, types: ()


@binder("LRN")
def _lrn(node, types, ins, outs, scratch_buf, threads):
    nm, x, y = _k("normalization"), ins[0], outs[0]
    if nm is None or x.ndim < 2 or not _f32(x, y):
        return None
    if _empty_output(outs):
        return _noop
    at = node.attrs
    size, alpha = int(at.get("size")), float(at.get("alpha", 1e-4))
    beta, bias = float(at.get("beta", 0.75)), float(at.get("bias", 1.0))
    x3, y3, fn = _nci(_c(x)), _nci(y), nm.lrn
    return lambda: fn(x3, y3, size, alpha, beta, bias, threads)


INPLACE["LRN"] = lambda node, types: ()


# ---- softmax ---------------------------------------------------------------------------------
@binder("Softmax", "LogSoftmax")
def _softmax(node, types, ins, outs, scratch_buf, threads):
    sm, x, y = _k("softmax"), ins[0], outs[0]
    if sm is None or x.ndim == 0 or not _f32(x, y):
        return None
    if _empty_output(outs):
        return _noop
    axis = int(node.attrs.get("axis", -1))
    axis = axis + x.ndim if axis < 0 else axis
    if not 0 <= axis < x.ndim:
        return None
    outer = int(np.prod(x.shape[:axis], dtype=np.int64))
    inner = int(np.prod(x.shape[axis + 1:], dtype=np.int64))
    shape3 = (outer, x.shape[axis], inner)
    x3, y3, log, fn = _c(x).reshape(shape3), y.reshape(shape3), node.op_type == "LogSoftmax", \
        sm.softmax
    return lambda: fn(x3, y3, log, threads)


for _t in ("Softmax", "LogSoftmax"):
    INPLACE[_t] = lambda node, types: ()


# ---- data movement with numpy (out=/copyto into the arena, no temporaries) --------------------
@binder("Concat")
def _concat(node, types, ins, outs, scratch_buf, threads):
    y = outs[0]
    xs = [x for x in ins if x is not None]
    if any(x.dtype != y.dtype for x in xs) or y.ndim == 0:
        return None
    axis = int(node.attrs.get("axis", 0))
    axis = axis + y.ndim if axis < 0 else axis
    pairs, off = [], 0
    for x in xs:
        n = x.shape[axis]
        if n:
            pairs.append((y[(slice(None),) * axis + (slice(off, off + n),)], x))
        off += n
    if off != y.shape[axis]:
        return None

    def step():
        for dst, src in pairs:
            np.copyto(dst, src)
    return step


@binder("Transpose")
def _transpose(node, types, ins, outs, scratch_buf, threads):
    x, y = ins[0], outs[0]
    if x.dtype != y.dtype:
        return None
    perm = node.attrs.get("perm") or list(range(x.ndim))[::-1]
    src = x.transpose([int(p) for p in perm])
    if src.shape != y.shape:
        return None
    return lambda: np.copyto(y, src)


@binder("Split")
def _split(node, types, ins, outs, scratch_buf, threads):
    x = ins[0]
    if x.ndim == 0:
        return None
    axis = int(node.attrs.get("axis", 0))
    axis = axis + x.ndim if axis < 0 else axis
    pairs, off = [], 0
    for name, o in zip(node.outputs, outs):
        if not name:
            continue
        t = types[name]
        n = int(t.shape[axis])
        if o is not None and n:
            if o.dtype != x.dtype:
                return None
            pairs.append((o, x[(slice(None),) * axis + (slice(off, off + n),)]))
        off += n
    if off != x.shape[axis]:
        return None

    def step():
        for dst, src in pairs:
            np.copyto(dst, src)
    return step


def _onnx_slices(shape, starts, ends, axes, steps):
    """ONNX Slice's clamping rules turned into Python slices (None on a bad step)."""
    sl = [slice(None)] * len(shape)
    for s, e, a, st in zip(starts, ends, axes, steps):
        a, s, e, st = int(a), int(s), int(e), int(st)
        if st == 0:
            return None
        a = a + len(shape) if a < 0 else a
        dim = int(shape[a])
        s = s + dim if s < 0 else s
        e = e + dim if e < 0 else e
        if st > 0:
            s, e = min(max(s, 0), dim), min(max(e, 0), dim)
            sl[a] = slice(s, e, st)
        else:
            s, e = min(max(s, 0), dim - 1), min(max(e, -1), dim - 1)
            sl[a] = slice(s, e if e >= 0 else None, st)
    return tuple(sl)


@binder("Slice")
def _slice(node, types, ins, outs, scratch_buf, threads):
    x, y = ins[0], outs[0]
    starts, ends, axes, steps = ins[1], ins[2], _opt(ins, 3), _opt(ins, 4)
    if x.dtype != y.dtype or any(_is_runtime(v, y) for v in (starts, ends, axes, steps)):
        return None  # shapes depend on these, so they are constants; be safe otherwise
    starts, ends = starts.reshape(-1).tolist(), ends.reshape(-1).tolist()
    axes = axes.reshape(-1).tolist() if axes is not None else list(range(len(starts)))
    steps = steps.reshape(-1).tolist() if steps is not None else [1] * len(starts)
    sl = _onnx_slices(x.shape, starts, ends, axes, steps)
    if sl is None:
        return None
    src = x[sl]
    if src.shape != y.shape:
        return None
    if y.size == 0:
        return _noop
    return lambda: np.copyto(y, src)


@binder("Gather")
def _gather(node, types, ins, outs, scratch_buf, threads):
    data, idx, y = ins[0], ins[1], outs[0]
    if data.dtype != y.dtype or idx.dtype.kind not in "iu" or data.ndim == 0:
        return None
    axis = int(node.attrs.get("axis", 0))
    axis = axis + data.ndim if axis < 0 else axis
    dim = data.shape[axis]
    if y.size == 0:
        return _noop
    if dim == 0:
        return None
    if not _is_runtime(idx, y):
        if idx.size and (idx.min() < -dim or idx.max() >= dim):
            return None  # the reference reports the bad index
        fixed = np.ascontiguousarray(np.where(idx < 0, idx + dim, idx), dtype=np.intp)
        return lambda: np.take(data, fixed, axis=axis, out=y, mode="wrap")

    def step():
        try:
            np.take(data, idx, axis=axis, out=y, mode="raise")
        except IndexError as e:
            raise InputError(f"{node}: index out of range for axis {axis} of size {dim}: "
                             f"{e}") from None
    return step


@binder("Pad")
def _pad(node, types, ins, outs, scratch_buf, threads):
    """Constant mode with non-negative pads: copy the interior, fill the borders."""
    x, pads, cval, axes, y = ins[0], ins[1], _opt(ins, 2), _opt(ins, 3), outs[0]
    if node.attrs.get("mode", "constant") not in ("constant", b"constant") or \
            x.dtype != y.dtype or _is_runtime(pads, y) or _is_runtime(axes, y):
        return None
    r = x.ndim
    p = [int(v) for v in pads.reshape(-1)]
    ax = [int(a) + r if int(a) < 0 else int(a) for a in axes.reshape(-1)] \
        if axes is not None else list(range(r))
    if len(p) != 2 * len(ax) or any(v < 0 for v in p):
        return None
    before, after = [0] * r, [0] * r
    for k, a in enumerate(ax):
        before[a], after[a] = p[k], p[k + len(ax)]
    interior = y[tuple(slice(b, b + n) for b, n in zip(before, x.shape))]
    if interior.shape != x.shape:
        return None
    borders = []
    for a in range(r):
        if before[a]:
            borders.append(y[(slice(None),) * a + (slice(0, before[a]),)])
        if after[a]:
            borders.append(y[(slice(None),) * a + (slice(y.shape[a] - after[a], None),)])
    if y.size == 0:
        return _noop
    if cval is not None and cval.size:
        cflat = cval.reshape(-1)
        if _is_runtime(cval, y):
            def value():
                return cflat[0]
        else:
            v0 = cflat[0].copy()

            def value():
                return v0
    else:
        zero = np.zeros((), y.dtype)

        def value():
            return zero

    def step():
        v = value()
        for b in borders:
            b.fill(v)
        np.copyto(interior, x)
    return step


for _t in ("Concat", "Transpose", "Split", "Slice", "Gather", "Pad", "MaxPool", "AveragePool",
           "GlobalAveragePool", "GlobalMaxPool", "Conv", "ConvTranspose", "MatMul"):
    INPLACE[_t] = lambda node, types: ()


# ---- reductions -------------------------------------------------------------------------------
_REDUCE = {"ReduceSum": np.add.reduce, "ReduceMax": np.maximum.reduce,
           "ReduceMin": np.minimum.reduce, "ReduceProd": np.multiply.reduce,
           "ReduceMean": None}


@binder(*_REDUCE)
def _reduce(node, types, ins, outs, scratch_buf, threads):
    x, axes_in, y = ins[0], _opt(ins, 1), outs[0]
    if x.dtype != y.dtype or x.dtype.kind != "f" or x.size == 0 or _is_runtime(axes_in, y):
        return None
    axes = [] if axes_in is None else [int(a) for a in axes_in.reshape(-1)]
    if not axes and axes_in is None:
        axes = [int(a) for a in (node.attrs.get("axes") or [])]  # pre-opset-18 form, if kept
    if not axes:
        if int(node.attrs.get("noop_with_empty_axes", 0)):
            return (lambda: np.copyto(y, x)) if x.shape == y.shape else None
        axes = list(range(x.ndim))
    axes = tuple(sorted({a + x.ndim if a < 0 else a for a in axes}))
    keep = tuple(1 if i in axes else d for i, d in enumerate(x.shape))
    if int(np.prod(keep, dtype=np.int64)) != y.size:
        return None
    yk = y.reshape(keep)
    if node.op_type == "ReduceMean":
        return lambda: np.mean(x, axis=axes, out=yk, keepdims=True)
    fn = _REDUCE[node.op_type]
    return lambda: fn(x, axis=axes, out=yk, keepdims=True)


# Ops bound to numpy calls that write straight into the arena (copies and reductions, where
# numpy's own loops are memory-bound already) rather than to a Cython kernel; `ember ops` says so.
NUMPY_BOUND = frozenset({"Concat", "Transpose", "Split", "Slice", "Gather", "Pad", *_REDUCE})
