"""Conv and ConvTranspose (``kernels/conv``: im2col/implicit GEMM, or the packed-weight conv;
``kernels/winograd`` for 3×3 stride-1 convs — whichever measured fastest on this CPU) and their gradients ``ConvGradInput`` /
``ConvGradWeight`` (``kernels/conv_grad``, Winograd for dX where it pays)."""
from __future__ import annotations

import functools
import os
import weakref
from typing import NamedTuple

import numpy as np

from ...graph.ops import conv as ops
from ...kernels import conv, conv_grad, plan, winograd
from .common import (F32, FUSED_ACTIVATIONS, WindowAxis, all_float32, as_nchw, contiguous_f32,
                     fused_activation, has_empty_output, noop, optional_at, prove_fits,
                     prove_window, window_geometry)
from .registry import binds


class Window(NamedTuple):
    """Strides, pads and dilations of a conv or pool, as 2-D (a 1-D one has height 1)."""
    stride_h: int
    stride_w: int
    pad_top: int
    pad_left: int
    dil_h: int
    dil_w: int
    pad_bottom: int
    pad_right: int


def window_of(node, nd) -> Window:
    sh, sw, pt, pl, dh, dw, (pb, pr) = window_geometry(node, nd)
    return Window(sh, sw, pt, pl, dh, dw, pb, pr)


class ConvCase(NamedTuple):
    """A float32 1-D or 2-D Conv/ConvTranspose with static shapes, every shape as 4-D."""
    nd: int
    x: tuple        # (N, C, H, W)
    w: tuple
    y: tuple
    window: Window
    group: int


def prove_conv_geometry(node, x, w, y, g: Window, group: int, transposed: bool) -> None:
    """ShapeError unless every index the conv kernels (im2col, implicit GEMM, col2im, the
    depthwise planes, Winograd) form for this 4-D case fits their int32 arithmetic: the
    window walk of each axis, and the GEMM sizes and offsets the kernels keep in ints.
    ``transposed``: a ConvTranspose, whose col2im walks the output with the input's positions;
    x, w and y are (N, C, H, W), the weight, (N, M, OH, OW)."""
    (_, C, H, W), (_, _, KH, KW), (_, M, OH, OW) = x, w, y
    rows = [(H, OH, KH, g.stride_h, g.dil_h, g.pad_top, g.pad_bottom),
            (W, OW, KW, g.stride_w, g.dil_w, g.pad_left, g.pad_right)]
    prove_window(node, [WindowAxis(*((o, i) if transposed else (i, o)), *rest)
                        for i, o, *rest in rows], "int32")
    prove_fits(node, "kernel_shape", "the weight's element count (the offset of a channel's "
               "taps, and the GEMM's C/group·KH·KW rows)", int(np.prod(w, dtype=object)), "int32")
    prove_fits(node, None, "the input plane H·W", H * W, "int32")
    prove_fits(node, None, "the output plane OH·OW", OH * OW, "int32")


def conv_case(node, types) -> ConvCase | None:
    """The case, its geometry proven to fit the kernels (ShapeError otherwise); None when the
    kernels do not take it (rank, dtype, dynamic shapes)."""
    xt, wt, yt = (types.get(node.input(0)), types.get(node.input(1)),
                  types.get(node.outputs[0]))
    if xt is None or wt is None or yt is None or len(xt.shape) not in (3, 4):
        return None
    if not (xt.is_static and wt.is_static and yt.is_static):
        return None
    nd = len(xt.shape) - 2

    def as4(s):
        return (s[0], s[1], 1, s[2]) if nd == 1 else tuple(int(d) for d in s)
    case = ConvCase(nd, as4(xt.shape), as4(wt.shape), as4(yt.shape), window_of(node, nd),
                    int(node.attrs.get("group", 1) or 1))
    prove_conv_geometry(node, case.x, case.w, case.y, case.window, case.group,
                        node.op_type == "ConvTranspose")
    if any(t.dtype != F32 for t in (xt, wt, yt)):
        return None
    return case


def _conv_scratch_floats(node, types, threads):
    case = conv_case(node, types)
    if case is None:
        return 0
    (N, C, H, W), (M, _, KH, KW), (_, _, OH, OW), g = case.x, case.w, case.y, case.window
    return int(conv.conv2d_scratch_floats(C, H, W, M, KH, KW, OH, OW, g.stride_h, g.stride_w,
                                          g.pad_top, g.pad_left, g.dil_h, g.dil_w, case.group,
                                          threads))


# ---- Winograd F(2×2,3×3) / F(4×4,3×3) for 3×3 stride-1 convs (kernels/winograd.pyx) -----------
# Which of im2col-GEMM, F(2×2) and F(4×4) is fastest is measured at compile time on this CPU
# (runtime/tuning.py); ``EMBER_TUNE=0`` takes the static rule of ``static_winograd_tile``.
# A Conv on Winograd keeps its transformed weights U (16/9× or 4× the weight) beside W. Past this
# size per layer (ResNet-18's 512-channel 7×7 layers: 17 MB each) the memory costs more than the
# ~1.5× it gains: peak RSS would pass onnxruntime's (148 → 219 MB on ResNet-18 without the cap).
WINOGRAD_MAX_U_BYTES = 8 << 20
# Timing a case allocates its input and output at a batch cut down to stay under this (at least
# one image): the candidates' temporaries count in the load's peak RSS (at 32 MB the small VGG at
# batch 32 peaked above onnxruntime's).
TUNE_MAX_BYTES = 4 << 20


def winograd_enabled() -> bool:
    """EMBER_WINOGRAD=0 turns Winograd off (A/B benchmarks, debugging); read at compile time."""
    return os.environ.get("EMBER_WINOGRAD", "1").strip().lower() not in ("0", "false", "no", "off")


def winograd_tiles_allowed(N, C, M, OH, OW) -> list:
    """The Winograd tiles this case may take: few channels make the transforms dominate, and
    U must stay under WINOGRAD_MAX_U_BYTES."""
    if C < 16 or M < 16 or N * OH * OW < 16 or not winograd_enabled():
        return []
    mp = -(-M // 6) * 6
    return [m for m in (2, 4) if 4 * (m + 2) ** 2 * mp * C <= WINOGRAD_MAX_U_BYTES]


def static_winograd_tile(N, C, M, OH, OW, allowed) -> int:
    """The rule without measuring: F(4×4) where its tiles fill 8×8 planes, F(2×2) on smaller
    ones, the GEMM path below 32 channels (the transforms' share grows as C, M shrink)."""
    if not allowed or C < 32 or M < 32:
        return 0
    if OH >= 8 and OW >= 8 and 4 in allowed:
        return 4
    return 2 if 2 in allowed and OH >= 4 and OW >= 4 else 0


def _tuning_candidate(name, N, C, M, OH, OW, threads, data=None):
    """One run of a candidate on a 3×3, pad-1 conv of this size with random data (the batch cut
    to TUNE_MAX_BYTES of input and output: tiles of all images share the GEMMs, so the ranking
    holds at the full batch). ``data``: the candidates' shared random x, w, y (_tuning_data)."""
    H, W = OH, OW
    n = max(1, min(N, TUNE_MAX_BYTES // max(1, 4 * (C + M) * OH * OW)))
    x, w, y = _tuning_data(data, (n, C, H, W), (M, C, 3, 3), (n, M, OH, OW))
    if name == "gemm":
        scr = np.empty(int(conv.conv2d_scratch_floats(C, H, W, M, 3, 3, OH, OW, 1, 1, 1, 1, 1, 1,
                                                      1, threads)) or 1, F32)
        return conv.Conv2dStep(x, w, None, y, scr, 1, 1, 1, 1, 1, 1, 1, 0, 0.0, 0.0, threads)
    tile = int(name[-1])
    U = winograd_weight_buffer(M, C, tile)
    winograd.winograd_weights(w, U, tile, False, threads)
    scr = np.empty(winograd_scratch_floats(n, C, H, W, M, OH, OW, tile, threads), F32)
    conv2d = winograd.conv2d_winograd
    return lambda: conv2d(x, U, None, y, scr, tile, 1, 1, 0, 0.0, 0.0, threads)


def _tuning_data(data, x_shape, w_shape, y_shape):
    """Random x, w and an output y for timing candidates, made once per case and shared by all
    its candidates (``data``, a dict, or None for a private set): they are all alive while
    they are timed in turn, and a copy each raised the peak RSS by megabytes a candidate."""
    if data is None:
        data = {}
    key = (x_shape, w_shape, y_shape)
    if key not in data:
        rng = np.random.default_rng(0)
        data[key] = (rng.standard_normal(x_shape, dtype=F32),
                     rng.standard_normal(w_shape, dtype=F32) * np.float32(0.05),
                     np.empty(y_shape, F32))
    return data[key]


def winograd_tile(N, C, M, OH, OW, threads=1) -> int:
    """The Winograd output tile (2 or 4) for a 3×3 stride-1 conv with C inputs, M outputs and an
    OH×OW output per image, or 0 for the im2col/implicit-GEMM path: the fastest measured on this
    CPU at ``threads`` (once per case, runtime/tuning.py), or the static rule with EMBER_TUNE=0."""
    from ..tuning import choose
    allowed = winograd_tiles_allowed(N, C, M, OH, OW)
    static = static_winograd_tile(N, C, M, OH, OW, allowed)
    names = ["gemm"] + [f"winograd{m}" for m in allowed]
    data: dict = {}
    chosen = choose("conv3x3", (N, C, M, OH, OW), threads,
                    lambda name: _tuning_candidate(name, N, C, M, OH, OW, threads, data), names,
                    f"winograd{static}" if static else "gemm")
    return 0 if chosen == "gemm" else int(chosen[-1])


class WinogradCase(NamedTuple):
    """A 3×3 stride-1 conv of an N×C×H×W input into N×M×OH×OW through Winograd tiles."""
    N: int
    C: int
    H: int
    W: int
    M: int
    OH: int
    OW: int
    pad_top: int
    pad_left: int
    tile: int


def winograd_eligible(case: ConvCase) -> bool:
    """A 2-D 3×3 stride-1 undilated ungrouped conv: the shape the Winograd kernels take."""
    g = case.window
    return case.nd == 2 and case.w[2:] == (3, 3) and \
        (g.stride_h, g.stride_w, g.dil_h, g.dil_w, case.group) == (1, 1, 1, 1, 1)


# ---- packed-weight conv (kernels/conv.pyx PackedConvStep): pixels × output-channel tiles ------
# Measured against the im2col GEMM it wins where the plane is small and the layer wide (ResNet's
# 7×7 and 14×14 stages, MobileNet's 7×7 pointwise layers, strided projections of many
# channels); the static rule below takes it there, and tuning measures it everywhere else.
PACKED_STATIC_MAX_PIXELS = 256     # N·OH·OW
PACKED_STATIC_MIN_CHANNELS = 128   # output channels per group, and K = C/group·KH·KW


# ---- direct conv (kernels/conv.pyx DirectConvStep) -----------------------------------------------
# Taps read straight from a padded, phase-split copy of the input, no im2col. First for layers
# with few input channels (a first layer, RGB in, 7×7/2 or 3×3/2, or LeNet's), where the static
# rule takes it (up to 4 channels: measured on Zen 3, ResNet's stem 1.14× onnxruntime's time
# against 1.45× for im2col). Tuning offers it for every group-1 conv: with its wide register block
# (8 channels × 3 vectors on AVX-512) it beat im2col + GEMM and Winograd on most of the small
# VGG's and ResNet-18's stride-2 layers on Zen 5 (e.g. 64→128 3×3/2 at 56²: 0.61 ms against
# 0.70 packed, 0.72 im2col).
DIRECT_STATIC_MAX_CHANNELS = 4
# The prepared image is the zero-padded input the taps reach: about the input's size on real
# layers, but a huge dilation with pads to match makes it (dilated kernel extent)² of zeros (43 GB
# for a 6×6 image at dilation 30,000) where im2col needs C·KH·KW·OH·OW. Past this many times the
# input and im2col panel together (plus a few KB a channel: small planes and the kernel's slack),
# the direct conv is not offered.
DIRECT_MAX_PREPARED_RATIO = 4
DIRECT_PREPARED_SLACK_FLOATS = 4096


def direct_allowed(case: ConvCase) -> bool:
    (N, C, H, W), (M, _, KH, KW), (_, _, OH, OW), g = case.x, case.w, case.y, case.window
    if case.group != 1 or C <= 0 or N * OH * OW * M == 0:
        return False
    # its floats (conv.pyx direct_sizes), in Python ints: nothing to overflow
    planes = min(g.stride_h, (KH - 1) * g.dil_h + 1) * min(g.stride_w, (KW - 1) * g.dil_w + 1)
    rows = OH + (KH - 1) * g.dil_h // g.stride_h
    prepared = C * planes * (rows * (OW + (KW - 1) * g.dil_w // g.stride_w) + 6 * 16)
    bound = C * (DIRECT_MAX_PREPARED_RATIO * (H * W + KH * KW * OH * OW) +
                 DIRECT_PREPARED_SLACK_FLOATS)
    return prepared <= bound and \
        os.environ.get("EMBER_DIRECT_CONV", "1").strip().lower() not in ("0", "false", "no", "off")


# The direct conv's kernels, as tuning candidates: "direct" puts output positions in the vector
# lanes (a block of 8 channels × up to 3 vectors of positions on AVX-512), "direct_ch" output
# channels (6 pixels × up to 4 vectors of channels): no padding columns or ragged last block on
# small planes (a 7×7 plane fills 49 of 64 lanes the other way), but a scatter to NCHW.
DIRECT_ALGORITHMS = ("direct", "direct_ch")


def direct_weights(w4: np.ndarray, algo: str = "direct") -> np.ndarray:
    M, C, KH, KW = w4.shape
    lanes = algo == "direct_ch"
    packed = np.empty(int(conv.direct_conv_weight_floats(M, C, KH, KW, lanes)), F32)
    conv.pack_direct_conv_weights(w4, packed, lanes)
    return packed


def direct_scratch_floats(case: ConvCase, threads: int) -> int:
    (_, C, _, _), (M, _, KH, KW), (_, _, OH, OW), g = case.x, case.w, case.y, case.window
    return int(conv.direct_conv_scratch_floats(C, M, KH, KW, OH, OW, g.stride_h, g.stride_w,
                                               g.dil_h, g.dil_w, threads))


def direct_step(case: ConvCase, x, packed, b, y, scr, act, threads, algo: str = "direct"):
    g, (code, aa, ab) = case.window, act
    return conv.DirectConvStep(x, packed, b, y, scr, case.w[2], case.w[3], g.stride_h,
                               g.stride_w, g.pad_top, g.pad_left, g.dil_h, g.dil_w, code, aa,
                               ab, threads, algo == "direct_ch")


def packed_allowed(case: ConvCase) -> bool:
    """Every conv but the depthwise ones (their own kernels) and those without input channels."""
    (N, C, _, _), (M, _, KH, KW), (_, _, OH, OW) = case.x, case.w, case.y
    depthwise = case.group == C == M and case.group > 1 or C == M == 1
    return not depthwise and C > 0 and N * OH * OW * M > 0 and os.environ.get(
        "EMBER_PACKED_CONV", "1").strip().lower() not in ("0", "false", "no", "off")


def static_packed(case: ConvCase) -> bool:
    (N, C, _, _), (M, _, KH, KW), (_, _, OH, OW) = case.x, case.w, case.y
    K = C // case.group * KH * KW
    return N * OH * OW <= PACKED_STATIC_MAX_PIXELS and \
        M // case.group >= PACKED_STATIC_MIN_CHANNELS and K >= PACKED_STATIC_MIN_CHANNELS


def aligned_floats(n: int) -> np.ndarray:
    """n float32 starting on a 64-byte boundary (the packed weights' aligned loads)."""
    buf = np.empty(n + 16, F32)
    off = (-buf.ctypes.data % 64) // 4
    return buf[off:off + n]


def packed_weights(w4: np.ndarray, group: int) -> np.ndarray:
    M, Cg, KH, KW = w4.shape
    packed = aligned_floats(int(conv.packed_conv_weight_floats(M, Cg * group, KH, KW, group)))
    conv.pack_conv_weights(w4, packed, group)
    return packed


def packed_scratch_floats(case: ConvCase, threads: int) -> int:
    (N, C, _, _), (M, _, KH, KW), (_, _, OH, OW) = case.x, case.w, case.y
    return int(conv.packed_conv_scratch_floats(N, C, M, KH, KW, OH, OW, case.group, threads))


def packed_step(case: ConvCase, x, packed, b, y, scr, act, threads):
    g, (code, aa, ab) = case.window, act
    return conv.PackedConvStep(x, packed, b, y, scr, case.w[2], case.w[3], g.stride_h,
                               g.stride_w, g.pad_top, g.pad_left, g.dil_h, g.dil_w, case.group,
                               code, aa, ab, threads)


# ---- pointwise conv through weights packed once (kernels/conv.pyx PointwiseConvStep) -----------
# conv2d's pointwise path packs W into the GEMM's micro-panels on every call: on MobileNetV2's 7×7
# planes (N = 49 columns) a sixth of the layer's time (960→160: 0.099 → 0.080 ms on Zen 5's
# AVX-512 kernels, 0.160 → 0.137 on its AVX2 ones); it was faster than im2col's pointwise GEMM
# and the packed conv on every MobileNetV2 layer, so the static rule takes it too.
def pointwise_allowed(case: ConvCase) -> bool:
    (N, C, H, W), (M, _, KH, KW), (_, _, OH, OW), g = case.x, case.w, case.y, case.window
    return case.group == 1 and KH == KW == 1 and g.stride_h == g.stride_w == 1 and \
        g.pad_top == g.pad_left == g.pad_bottom == g.pad_right == 0 and (H, W) == (OH, OW) and \
        C > 0 and N * OH * OW * M > 0


def pointwise_weights(w4: np.ndarray, group: int = 1) -> np.ndarray:
    M, C, KH, KW = w4.shape
    packed = aligned_floats(int(conv.pointwise_weight_floats(M, C * KH * KW)))
    conv.pack_pointwise_weights(w4, packed)
    return packed


def pointwise_step(case: ConvCase, x, packed, b, y, scr, act, threads):
    code, aa, ab = act
    return conv.PointwiseConvStep(x, packed, b, y, code, aa, ab, threads)


def _algorithm_candidate(name: str, case: ConvCase, threads: int, data=None):
    """One run of a candidate on this conv's geometry with random data (the batch cut to
    TUNE_MAX_BYTES of input and output), ``data`` shared by the case's candidates."""
    (N, C, H, W), (M, Cg, KH, KW), (_, _, OH, OW), g = case.x, case.w, case.y, case.window
    n = max(1, min(N, TUNE_MAX_BYTES // max(1, 4 * (C * H * W + M * OH * OW))))
    if name.startswith("winograd") and (H, W, g.pad_top, g.pad_left) == (OH, OW, 1, 1):
        return _tuning_candidate(name, n, C, M, OH, OW, threads, data)
    if name.startswith("winograd"):
        return _tuning_candidate(name, n, C, M, OH, OW, threads)
    c = case._replace(x=(n, C, H, W), y=(n, M, OH, OW))
    x, w, y = _tuning_data(data, c.x, c.w, c.y)
    if name in DIRECT_ALGORITHMS:
        scr = np.empty(max(1, direct_scratch_floats(c, threads)), F32)
        return direct_step(c, x, direct_weights(w, name), None, y, scr, (0, 0.0, 0.0), threads,
                           name)
    if name == "pointwise":
        return pointwise_step(c, x, pointwise_weights(w), None, y, None, (0, 0.0, 0.0), threads)
    if name == "packed":
        scr = np.empty(max(1, packed_scratch_floats(c, threads)), F32)
        return packed_step(c, x, packed_weights(w, c.group), None, y, scr, (0, 0.0, 0.0),
                           threads)
    scr = np.empty(int(conv.conv2d_scratch_floats(C, H, W, M, KH, KW, OH, OW, g.stride_h,
                                                  g.stride_w, g.pad_top, g.pad_left, g.dil_h,
                                                  g.dil_w, c.group, threads)) or 1, F32)
    return conv.Conv2dStep(x, w, None, y, scr, g.stride_h, g.stride_w, g.pad_top, g.pad_left,
                           g.dil_h, g.dil_w, c.group, 0, 0.0, 0.0, threads)


def conv_algorithm(case: ConvCase, threads=1) -> str:
    """How this forward conv runs: "gemm" (im2col / implicit GEMM, depthwise kernels),
    "winograd2" / "winograd4", "packed", "pointwise", or one of DIRECT_ALGORITHMS — the fastest measured on
    this CPU at ``threads`` (once per geometry, runtime/tuning.py), or the static rule with
    EMBER_TUNE=0."""
    from ..tuning import choose
    (N, C, _, _), (M, _, KH, KW), (_, _, OH, OW), g = case.x, case.w, case.y, case.window
    names, static = ["gemm"], "gemm"
    if winograd_eligible(case):
        allowed = winograd_tiles_allowed(N, C, M, OH, OW)
        names += [f"winograd{m}" for m in allowed]
        tile = static_winograd_tile(N, C, M, OH, OW, allowed)
        static = f"winograd{tile}" if tile else static
    if packed_allowed(case):
        names.append("packed")
        if static == "gemm" and static_packed(case):
            static = "packed"
    if direct_allowed(case):
        names += ["direct", "direct_ch"]
        if static == "gemm" and C <= DIRECT_STATIC_MAX_CHANNELS:
            static = "direct"
    if pointwise_allowed(case):   # faster than either GEMM form on every layer measured
        names.append("pointwise")
        static = "pointwise"
    key = (*case.x, M, KH, KW, *case.y[2:], *g, case.group)
    data: dict = {}
    return choose("conv", key, threads,
                  lambda name: _algorithm_candidate(name, case, threads, data), names, static)


def winograd_case(node, types, threads=1) -> WinogradCase | None:
    """The case when this Conv runs through Winograd, else None."""
    case = conv_case(node, types)
    if case is None or not winograd_eligible(case):
        return None
    algo = conv_algorithm(case, threads)
    if not algo.startswith("winograd"):
        return None
    (N, C, H, W), (M, _, _, _), (_, _, OH, OW), g = case.x, case.w, case.y, case.window
    return WinogradCase(N, C, H, W, M, OH, OW, g.pad_top, g.pad_left, int(algo[-1]))


def winograd_scratch_floats(N, C, H, W, M, OH, OW, tile, threads) -> int:
    return int(winograd.winograd_scratch_floats(N, C, H, W, M, OH, OW, tile, threads))


def winograd_weight_buffer(M, C, tile):
    """A fresh (α², ·) float32 buffer for the packed transformed weights of an M × C conv."""
    a2 = (tile + 2) ** 2
    return np.empty((a2, int(winograd.winograd_weight_floats(M, C, tile)) // a2), F32)


# Transformed constant weights shared by every context: (id(w), tile) -> (weak ref to w, U)
# (derived_weights).
WINOGRAD_WEIGHTS: dict = {}


def derived_weights(cache: dict, w_orig, tag, make):
    """``make()`` — a transformed or packed copy of the constant weight array ``w_orig`` — made
    once per array and ``tag`` and shared by every context, dropped with the array (the cache
    holds it by a weak reference)."""
    key = (id(w_orig), tag)
    hit = cache.get(key)
    if hit is not None and hit[0]() is w_orig:
        return hit[1]
    derived = make()
    try:
        cache[key] = (weakref.ref(w_orig, lambda _r, key=key: cache.pop(key, None)), derived)
    except TypeError:
        pass
    return derived


def _winograd_constant_weights(w_orig, w4, tile, threads):
    def transform():
        U = winograd_weight_buffer(w4.shape[0], w4.shape[1], tile)
        winograd.winograd_weights(w4, U, tile, False, threads)
        return U
    return derived_weights(WINOGRAD_WEIGHTS, w_orig, tile, transform)


def _winograd_conv(node, ins, outs, scratch_buf, ctx, act):
    """The Conv step through Winograd, or None when this case does not take it."""
    wc, threads = winograd_case(node, ctx.types, ctx.threads), ctx.threads
    if wc is None:
        return None
    N, C, H, W, M, OH, OW, pt, pl, tile = wc
    need = winograd_scratch_floats(N, C, H, W, M, OH, OW, tile, threads)
    if scratch_buf is None or scratch_buf.size < need:
        return None
    code, aa, ab = act
    x, w4 = contiguous_f32(ins[0]).reshape(N, C, H, W), contiguous_f32(ins[1]).reshape(M, C, 3, 3)
    b = contiguous_f32(optional_at(ins, 2))
    b = b.reshape(-1) if b is not None else None
    y, scr, conv2d = outs[0].reshape(N, M, OH, OW), scratch_buf[:need], winograd.conv2d_winograd
    if not ctx.is_runtime(ins[1]):
        U = _winograd_constant_weights(ins[1], w4, tile, threads)
        # a prepared native step: the plan runner runs it with no Python around it
        return winograd.WinogradStep(x, U, b, y, scr, tile, pt, pl, code, aa, ab, threads)
    # run-time weights (training): transformed on every call, a native step chained before
    U = winograd_weight_buffer(M, C, tile)
    step = plan.NativeChain([
        winograd.WinogradWeightsStep(w4, U, tile, False, threads),
        winograd.WinogradStep(x, U, b, y, scr, tile, pt, pl, code, aa, ab, threads)])
    step.winograd_tile = tile   # for tests and profiles: which algorithm this node runs
    return step


def _conv_scratch(node, types, threads):
    wc = winograd_case(node, types, threads)
    if wc is not None:
        return 4 * winograd_scratch_floats(wc.N, wc.C, wc.H, wc.W, wc.M, wc.OH, wc.OW, wc.tile,
                                           threads)
    case = conv_case(node, types)
    algo = conv_algorithm(case, threads) if case is not None else "gemm"
    if algo == "packed":
        return 4 * packed_scratch_floats(case, threads)
    if algo in DIRECT_ALGORITHMS:
        return 4 * direct_scratch_floats(case, threads)
    return _conv_scratch_floats(node, types, threads) * 4


# Packed constant weights shared by every context: (id(w), group, algorithm) -> (weak ref to w,
# packed).
PACKED_WEIGHTS: dict = {}


def _packed_constant_weights(w_orig, w4, group, algo, weights):
    return derived_weights(PACKED_WEIGHTS, w_orig, (group, algo), lambda: weights(w4, group))


def _packed_conv(case, ins, outs, scratch_buf, ctx, act):
    """The Conv step through packed weights (the packed conv's, or the direct conv's), or None
    when this case takes neither."""
    threads = ctx.threads
    algo = conv_algorithm(case, threads)
    if algo != "packed" and algo != "pointwise" and algo not in DIRECT_ALGORITHMS:
        return None
    if algo in DIRECT_ALGORITHMS:
        size, weights = direct_scratch_floats, lambda w4, group: direct_weights(w4, algo)
        make = functools.partial(direct_step, algo=algo)
    elif algo == "pointwise":
        size, weights, make = (lambda case, threads: 0), pointwise_weights, pointwise_step
    else:
        size, make, weights = packed_scratch_floats, packed_step, packed_weights
    scr = _planned(scratch_buf, size(case, threads))
    if scr is False:
        return None
    b = contiguous_f32(optional_at(ins, 2))
    b = b.reshape(-1) if b is not None else None
    x, w4 = contiguous_f32(ins[0]).reshape(case.x), contiguous_f32(ins[1]).reshape(case.w)
    y = outs[0].reshape(case.y)
    if not ctx.is_runtime(ins[1]):
        # a prepared native step: the plan runner runs it with no Python around it
        return make(case, x, _packed_constant_weights(ins[1], w4, case.group, algo, weights), b,
                    y, scr, act, threads)
    # run-time weights (training): packed on every call, a native step chained before the conv
    packed = weights(w4, case.group)
    step = plan.NativeChain([conv.ConvWeightsPackStep(w4, packed, case.group,
                                                      algo in DIRECT_ALGORITHMS,
                                                      algo == "direct_ch", algo == "pointwise"),
                             make(case, x, packed, b, y, scr, act, threads)])
    step.packed = algo   # for tests and profiles: which algorithm this node runs
    return step


def _planned(scratch_buf, need):
    """The planned scratch cut to ``need`` floats (None when none is needed); False when the
    plan gave less."""
    if not need:
        return None
    if scratch_buf is None or scratch_buf.size < need:
        return False
    return scratch_buf[:need]


def _conv_arrays(case, ins, outs, scratch_buf, need):
    """x, w, bias, y as the 4-D/1-D float32 views the conv kernels take, and the planned
    scratch cut to ``need`` floats; None when the plan gave less scratch than needed."""
    scr = _planned(scratch_buf, need)
    if scr is False:
        return None
    b = contiguous_f32(optional_at(ins, 2))
    return (contiguous_f32(ins[0]).reshape(case.x), contiguous_f32(ins[1]).reshape(case.w),
            b.reshape(-1) if b is not None else None, outs[0].reshape(case.y), scr)


@binds(ops.Conv, scratch=_conv_scratch, inplace=(), kernel="conv", activations=FUSED_ACTIVATIONS)
def bind_conv(node, ins, outs, scratch_buf, ctx):
    case, act = conv_case(node, ctx.types), fused_activation(node)
    if case is None or act is None or not all_float32(*ins, *outs):
        return None
    if has_empty_output(outs):
        return noop
    if ins[0].shape[1] == 0:   # no input channel: act(bias) everywhere, and no element of x or W
        return None            # the kernel could point at (the numpy reference answers)
    step = _winograd_conv(node, ins, outs, scratch_buf, ctx, act)
    if step is None:
        step = _packed_conv(case, ins, outs, scratch_buf, ctx, act)
    if step is not None:
        return step
    arrays = _conv_arrays(case, ins, outs, scratch_buf,
                          _conv_scratch_floats(node, ctx.types, ctx.threads))
    if arrays is None:
        return None
    x, w, b, y, scr = arrays
    g, (code, aa, ab) = case.window, act
    # a prepared native step: arguments resolved once, run without Python by the plan runner
    return conv.Conv2dStep(x, w, b, y, scr, g.stride_h, g.stride_w, g.pad_top, g.pad_left,
                           g.dil_h, g.dil_w, case.group, code, aa, ab, ctx.threads)


def _conv_transpose_scratch_floats(node, types, threads):
    case = conv_case(node, types)
    if case is None:
        return 0
    (N, C, H, W), (_, _, KH, KW), (_, M, _, _) = case.x, case.w, case.y
    return int(conv.conv_transpose2d_scratch_floats(C, H, W, M, KH, KW, case.group, threads))


def _conv_transpose_scratch(node, types, threads):
    return _conv_transpose_scratch_floats(node, types, threads) * 4


@binds(ops.ConvTranspose, scratch=_conv_transpose_scratch, inplace=(), kernel="conv")
def bind_conv_transpose(node, ins, outs, scratch_buf, ctx):
    case, threads = conv_case(node, ctx.types), ctx.threads
    if case is None or not all_float32(*ins, *outs) or fused_activation(node) != (0, 0.0, 0.0):
        return None  # the kernel has no activation epilogue
    if any(int(p) < 0 for p in node.attrs.get("pads") or []):
        return None  # negative pads grow the output: left to the reference
    if has_empty_output(outs):
        return noop
    arrays = _conv_arrays(case, ins, outs, scratch_buf,
                          _conv_transpose_scratch_floats(node, ctx.types, threads))
    if arrays is None:
        return None
    x, w, b, y, scr = arrays
    g, fn = case.window, conv.conv_transpose2d
    sh, sw, pt, pl, dh, dw, group = (g.stride_h, g.stride_w, g.pad_top, g.pad_left, g.dil_h,
                                     g.dil_w, case.group)
    return lambda: fn(x, w, b, y, scr, sh, sw, pt, pl, dh, dw, group, threads)


# ---- gradients ----------------------------------------------------------------------------------
from ...kernels.plan import NativeChain  # noqa: E402  (kept in the gradients' section)

class ConvGradCase(NamedTuple):
    """A 1-D or 2-D conv as the gradient kernels take it (the field order is their argument
    order): input N×C×H×W, weight M×(C/group)×KH×KW, output N×M×OH×OW."""
    N: int
    C: int
    H: int
    W: int
    M: int
    KH: int
    KW: int
    OH: int
    OW: int
    stride_h: int
    stride_w: int
    pad_top: int
    pad_left: int
    dil_h: int
    dil_w: int
    group: int


def _conv_grad_case(node, dy, x_shape, w_shape) -> ConvGradCase | None:
    """The case of a conv whose input has x_shape, weight w_shape and output dY (type ``dy``),
    its geometry proven to fit the kernels (ShapeError otherwise); None for ranks other than 3
    and 4 and for dtypes other than float32."""
    dy_shape = tuple(int(d) for d in dy.shape)
    if len(dy_shape) not in (3, 4) or not len(dy_shape) == len(x_shape) == len(w_shape):
        return None
    nd = len(dy_shape) - 2

    def as4(s):
        return (s[0], s[1], 1, s[2]) if nd == 1 else tuple(s)
    x4, w4, dy4 = as4(x_shape), as4(w_shape), as4(dy_shape)
    g, group = window_of(node, nd), int(node.attrs.get("group", 1) or 1)
    prove_conv_geometry(node, x4, w4, dy4, g, group, transposed=False)
    if dy.dtype != F32:
        return None
    (N, C, H, W), (M, _, KH, KW), (_, _, OH, OW) = x4, w4, dy4
    return ConvGradCase(N, C, H, W, M, KH, KW, OH, OW, g.stride_h, g.stride_w, g.pad_top,
                        g.pad_left, g.dil_h, g.dil_w, group)


def _grad_input_case(node, types):
    dy, w = types.get(node.input(0)), types.get(node.input(1))
    if dy is None or w is None or not (dy.is_static and w.is_static):
        return None
    return _conv_grad_case(node, dy, tuple(int(d) for d in node.attrs["input_shape"]),
                           tuple(int(d) for d in w.shape))


def _grad_weight_case(node, types):
    dy, x = types.get(node.input(0)), types.get(node.input(1))
    if dy is None or x is None or not (dy.is_static and x.is_static):
        return None
    return _conv_grad_case(node, dy, tuple(int(d) for d in x.shape),
                           tuple(int(d) for d in node.attrs["weight_shape"]))


def _grad_scratch_floats(kind, case_fn, node, types, threads):
    case = case_fn(node, types)
    if case is None:
        return 0
    return int(getattr(conv_grad, f"conv_grad_{kind}_scratch_floats")(*case, threads))


class WinogradGradInputCase(NamedTuple):
    """dX of a 3×3 stride-1 conv through Winograd: a 3×3 stride-1 conv of dY (N×M×OH×OW) into
    dX (N×C×H×W) with the weights flipped 180° and in/out channels swapped, padded by 2 − pad.
    ``weight_floats`` (the transformed weights, which change every step) and ``conv_floats``
    (the conv's blocks) make up its scratch."""
    N: int
    C: int
    H: int
    W: int
    M: int
    OH: int
    OW: int
    pad_top: int
    pad_left: int
    tile: int
    weight_floats: int
    conv_floats: int


def _winograd_grad_input_case(node, types, threads) -> WinogradGradInputCase | None:
    case = _grad_input_case(node, types)
    if case is None:
        return None
    c = case
    if (c.KH, c.KW) != (3, 3) or (c.stride_h, c.stride_w, c.dil_h, c.dil_w, c.group) != \
            (1, 1, 1, 1, 1) or c.H < 1 or c.W < 1:
        return None
    tile = winograd_tile(c.N, c.M, c.C, c.H, c.W, threads)
    if not tile:
        return None
    return WinogradGradInputCase(
        c.N, c.C, c.H, c.W, c.M, c.OH, c.OW, 2 - c.pad_top, 2 - c.pad_left, tile,
        int(winograd.winograd_weight_floats(c.C, c.M, tile)),
        winograd_scratch_floats(c.N, c.M, c.OH, c.OW, c.C, c.H, c.W, tile, threads))


def _conv_grad_input_scratch(node, types, threads):
    wc = _winograd_grad_input_case(node, types, threads)
    if wc is not None:
        return 4 * (wc.weight_floats + wc.conv_floats)
    return 4 * _grad_scratch_floats("input", _grad_input_case, node, types, threads)


def _conv_grad_weight_scratch(node, types, threads):
    return 4 * _grad_scratch_floats("weight", _grad_weight_case, node, types, threads)


def _conv_grad_binder(kind, case_fn, out_shape4):
    """The im2col/col2im GEMM binder of ConvGrad<kind>; ``out_shape4(case)``: its output as 4-D."""
    def bind(node, ins, outs, scratch_buf, ctx):
        case, threads = case_fn(node, ctx.types), ctx.threads
        if case is None or not all_float32(*ins, *outs):
            return None
        if has_empty_output(outs):
            return noop
        scr = _planned(scratch_buf,
                       _grad_scratch_floats(kind, case_fn, node, ctx.types, threads))
        if scr is False:
            return None
        c = case
        dy = contiguous_f32(ins[0]).reshape(c.N, c.M, c.OH, c.OW)
        other = as_nchw(contiguous_f32(ins[1]))
        out = outs[0].reshape(out_shape4(case))
        make = getattr(conv_grad, f"conv_grad_{kind}_step")
        return make(dy, other, out, scr, c.stride_h, c.stride_w, c.pad_top, c.pad_left, c.dil_h,
                    c.dil_w, c.group, threads)
    return bind


_conv_grad_input_gemm = _conv_grad_binder("input", _grad_input_case,
                                          lambda c: (c.N, c.C, c.H, c.W))
bind_conv_grad_weight = binds(
    ops.ConvGradWeight, scratch=_conv_grad_weight_scratch, kernel="conv_grad")(
    _conv_grad_binder("weight", _grad_weight_case,
                      lambda c: (c.M, c.C // c.group, c.KH, c.KW)))


@binds(ops.ConvGradInput, scratch=_conv_grad_input_scratch, kernel="conv_grad")
def bind_conv_grad_input(node, ins, outs, scratch_buf, ctx):
    """Winograd when the case takes it (and the plan gave its scratch), else col2im GEMM. On
    Winograd, W changes every step: one native step transforms it into the planned scratch,
    then convolves dY."""
    wc, threads = _winograd_grad_input_case(node, ctx.types, ctx.threads), ctx.threads
    if wc is None or not all_float32(*ins, *outs) or has_empty_output(outs):
        return _conv_grad_input_gemm(node, ins, outs, scratch_buf, ctx)
    N, C, H, W, M, OH, OW, pt, pl, tile, u_n, conv_n = wc
    if scratch_buf is None or scratch_buf.size < u_n + conv_n:
        return _conv_grad_input_gemm(node, ins, outs, scratch_buf, ctx)
    a2 = (tile + 2) ** 2
    U, scr = scratch_buf[:u_n].reshape(a2, u_n // a2), scratch_buf[u_n:u_n + conv_n]
    dy = contiguous_f32(ins[0]).reshape(N, M, OH, OW)
    w4, dx = contiguous_f32(ins[1]).reshape(M, C, 3, 3), outs[0].reshape(N, C, H, W)
    step = NativeChain([winograd.WinogradWeightsStep(w4, U, tile, True, threads),
                        winograd.WinogradStep(dy, U, None, dx, scr, tile, pt, pl, 0, 0.0, 0.0,
                                              threads)])
    step.winograd_tile = tile
    return step
