"""ember's training kernels (gradients, Dropout / BatchNormalization training forwards, softmax
cross entropy) against small numpy twins written here in float64, then their binders through a
compiled Session against the ops' own numpy ``compute``.

Tolerances: the kernels run in float32 and the twins in float64. Conv gradients sum over
N·OH·OW (dW) or M·KH·KW (dX) products in a blocked order, so the error grows with the number of
terms: atol = 1e-5·√terms·scale (scale = the largest |value| of the result), rtol 1e-4.
Pooling, elementwise and softmax gradients are one or a few float32 roundings (rtol 1e-5,
atol 1e-6·scale); per-channel sums (BiasGrad, BatchNorm) accumulate in double and round once,
but the normalised values pass through float32 (rtol 1e-4, atol 1e-5·scale).
"""
import numpy as np
import pytest

from ember.graph.ir import Graph, Node, TensorType
from ember.graph.ops import get_op, op_named
from ember.runtime.session import Session
from ember.kernels import act_grad, conv_grad, norm_grad, pool_grad, reduce_grad, softmax_grad

THREADS = [1, 2]
rng = np.random.default_rng(20240611)


def rand(*shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def close(got, want, rtol, atol_rel):
    want = np.asarray(want, np.float64)
    scale = max(float(np.max(np.abs(want))) if want.size else 0.0, 1e-30)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol_rel * scale)


def out_size(n, k, s, p0, p1, d, ceil=False):
    span = n + p0 + p1 - (k - 1) * d - 1
    o = (-(-span // s) if ceil else span // s) + 1
    if ceil and (o - 1) * s >= n + p0:
        o -= 1
    return o


# ----------------------------------------------------------------------------- conv gradients
def conv_grads_twin(x, w, dy, stride, pads, dil, group):
    """(dX, dW) by definition: every kernel tap (kh, kw) pairs output pixel (oh, ow) with input
    pixel (oh·sh − pt + kh·dh, ow·sw − pl + kw·dw) of a zero-padded image."""
    N, C, H, W = x.shape
    M, Cg, KH, KW = w.shape
    OH, OW = dy.shape[2:]
    (sh, sw), (pt, pl, _, _), (dh, dw) = stride, pads, dil
    Hp, Wp = pt + max(H, (OH - 1) * sh + (KH - 1) * dh + 1), pl + max(W, (OW - 1) * sw + (KW - 1) * dw + 1)
    xp = np.zeros((N, C, Hp, Wp))
    xp[:, :, pt:pt + H, pl:pl + W] = x
    dxp = np.zeros_like(xp)
    dW = np.zeros(w.shape)
    Mg = M // group
    for g in range(group):
        cs, ms = slice(g * Cg, (g + 1) * Cg), slice(g * Mg, (g + 1) * Mg)
        dyg = dy[:, ms].astype(np.float64)
        for kh in range(KH):
            for kw in range(KW):
                win = (slice(None), cs, slice(kh * dh, kh * dh + sh * (OH - 1) + 1, sh),
                       slice(kw * dw, kw * dw + sw * (OW - 1) + 1, sw))
                dW[ms, :, kh, kw] = np.einsum("nmhw,nchw->mc", dyg, xp[win])
                dxp[win] += np.einsum("nmhw,mc->nchw", dyg, w[ms, :, kh, kw].astype(np.float64))
    return dxp[:, :, pt:pt + H, pl:pl + W], dW


# (N, C, H, W, M, KH, KW, stride, pads (t, l, b, r), dilation, group)
CONV_CASES = [
    (3, 7, 11, 13, 24, 3, 3, (2, 2), (1, 0, 2, 1), (1, 1), 1),     # stride 2, odd input, asym pads
    (2, 6, 9, 9, 4, 3, 3, (1, 1), (1, 1, 1, 1), (2, 2), 2),        # groups + dilation
    (4, 13, 8, 8, 13, 3, 3, (2, 1), (1, 1, 0, 1), (1, 1), 13),     # depthwise
    (3, 24, 7, 5, 24, 3, 2, (1, 2), (0, 1, 2, 0), (2, 1), 24),     # depthwise, dilated, odd
    (2, 6, 13, 11, 6, 5, 5, (2, 2), (2, 1, 1, 2), (1, 1), 6),      # depthwise 5x5 s2, asym pads
    (2, 16, 29, 27, 16, 3, 3, (2, 2), (1, 1, 1, 1), (1, 1), 16),   # depthwise, 2 threads
    (1, 24, 30, 30, 24, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 24),   # MobileNet-like, 2 threads
    (1, 4, 6, 7, 4, 3, 3, (1, 1), (3, 3, 3, 3), (1, 1), 4),        # pads wider than the kernel
    (2, 5, 10, 14, 5, 3, 3, (1, 3), (1, 2, 0, 1), (2, 1), 5),      # stride 3 along W, dilated
    (1, 3, 9, 10, 3, 2, 4, (3, 2), (0, 3, 1, 0), (1, 2), 3),       # even, non-square kernel
    (2, 3, 2, 3, 3, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 3),        # map smaller than kernel
    (1, 8, 5, 7, 16, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1), 1),       # pointwise, batch 1
    (4, 8, 5, 7, 16, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1), 2),       # pointwise, groups
    (1, 13, 9, 9, 7, 5, 5, (1, 1), (2, 2, 2, 2), (1, 1), 1),       # batch 1: team GEMMs
    (8, 6, 14, 14, 16, 5, 5, (1, 1), (0, 0, 0, 0), (1, 1), 1),     # LeNet conv2 shape
    (5, 3, 7, 7, 6, 2, 3, (3, 2), (0, 1, 1, 0), (1, 2), 3),
    (2, 1, 6, 6, 1, 3, 3, (2, 2), (1, 1, 1, 1), (1, 1), 1),        # single channel
    (4, 4, 3, 3, 5, 1, 1, (2, 2), (0, 0, 0, 0), (1, 1), 1),        # 1x1 strided: not pointwise
]


def conv_case_arrays(case):
    N, C, H, W, M, KH, KW, st, pads, dil, g = case
    OH = out_size(H, KH, st[0], pads[0], pads[2], dil[0])
    OW = out_size(W, KW, st[1], pads[1], pads[3], dil[1])
    return rand(N, C, H, W), rand(M, C // g, KH, KW), rand(N, M, OH, OW)


def conv_geometry_args(case, dy, nthreads):
    N, C, H, W, M, KH, KW, st, pads, dil, g = case
    return (N, C, H, W, M, KH, KW, dy.shape[2], dy.shape[3], st[0], st[1], pads[0], pads[1],
            dil[0], dil[1], g, nthreads)


def conv_tolerance(terms):
    return 1e-4, 1e-5 * np.sqrt(terms)


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("nthreads", THREADS)
def test_conv_grad_weight(case, nthreads):
    x, w, dy = conv_case_arrays(case)
    _, dw_want = conv_grads_twin(x, w, dy, case[7], case[8], case[9], case[10])
    need = conv_grad.conv_grad_weight_scratch_floats(*conv_geometry_args(case, dy, nthreads))
    dw = np.full(w.shape, np.nan, np.float32)   # the kernel must overwrite, not accumulate
    st, pads, dil, g = case[7:]
    conv_grad.conv_grad_weight(dy, x, dw, np.zeros(need, np.float32), st[0], st[1], pads[0],
                               pads[1], dil[0], dil[1], g, nthreads)
    close(dw, dw_want, *conv_tolerance(dy.shape[0] * dy.shape[2] * dy.shape[3]))


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("nthreads", THREADS)
def test_conv_grad_input(case, nthreads):
    x, w, dy = conv_case_arrays(case)
    dx_want, _ = conv_grads_twin(x, w, dy, case[7], case[8], case[9], case[10])
    need = conv_grad.conv_grad_input_scratch_floats(*conv_geometry_args(case, dy, nthreads))
    dx = np.full(x.shape, np.nan, np.float32)
    st, pads, dil, g = case[7:]
    conv_grad.conv_grad_input(dy, w, dx, np.zeros(need, np.float32), st[0], st[1], pads[0],
                              pads[1], dil[0], dil[1], g, nthreads)
    close(dx, dx_want, *conv_tolerance(w.shape[0] * w.shape[2] * w.shape[3]))


DEPTHWISE_CASES = [c for c in CONV_CASES if c[10] > 1 and c[10] == c[1] == c[4]]


@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("case", DEPTHWISE_CASES)
@pytest.mark.parametrize("nthreads", THREADS)
def test_depthwise_grads_both_paths(case, grouped, nthreads):
    """Depthwise gradients have two paths (one plane at a time; a channel group interleaved,
    with a scatter for strided dX): force each and check dW and dX against the twin."""
    x, w, dy = conv_case_arrays(case)
    dx_want, dw_want = conv_grads_twin(x, w, dy, case[7], case[8], case[9], case[10])
    st, pads, dil, g = case[7:]
    dw, dx = np.full(w.shape, np.nan, np.float32), np.full(x.shape, np.nan, np.float32)
    old = conv_grad.set_depthwise_grouped(grouped)
    try:
        conv_grad.conv_grad_weight(dy, x, dw, None, st[0], st[1], pads[0], pads[1], dil[0],
                                   dil[1], g, nthreads)
        conv_grad.conv_grad_input(dy, w, dx, None, st[0], st[1], pads[0], pads[1], dil[0],
                                  dil[1], g, nthreads)
    finally:
        conv_grad.set_depthwise_grouped(old)
    close(dw, dw_want, *conv_tolerance(dy.shape[0] * dy.shape[2] * dy.shape[3]))
    close(dx, dx_want, *conv_tolerance(w.shape[0] * w.shape[2] * w.shape[3]))


@pytest.mark.parametrize("C", range(1, 34))
@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise_grads_channel_groups(C, stride):
    """The channel-group gradient kernels (groups of 4, 8 or 16 channels: one vector of the ISA
    in use; strided dX by scatter) with every count of channels up to 33."""
    case = (2, C, 11, 9, C, 3, 3, (stride, stride), (1, 1, 1, 1), (1, 1), C)
    x, w, dy = conv_case_arrays(case)
    dx_want, dw_want = conv_grads_twin(x, w, dy, case[7], case[8], case[9], case[10])
    dw, dx = np.full(w.shape, np.nan, np.float32), np.full(x.shape, np.nan, np.float32)
    old = conv_grad.set_depthwise_grouped(True)
    try:
        conv_grad.conv_grad_weight(dy, x, dw, None, stride, stride, 1, 1, 1, 1, C, 1)
        conv_grad.conv_grad_input(dy, w, dx, None, stride, stride, 1, 1, 1, 1, C, 1)
    finally:
        conv_grad.set_depthwise_grouped(old)
    close(dw, dw_want, *conv_tolerance(dy.shape[0] * dy.shape[2] * dy.shape[3]))
    close(dx, dx_want, *conv_tolerance(w.shape[0] * w.shape[2] * w.shape[3]))


def test_conv_grad_scratch_rules():
    """Depthwise needs none; a batch split over threads needs a panel (and a dW partial) per
    thread; less scratch than planned still gives the right answer with fewer slots; less than
    one panel is refused."""
    case = CONV_CASES[0]
    x, w, dy = conv_case_arrays(case)
    one = conv_grad.conv_grad_weight_scratch_floats(*conv_geometry_args(case, dy, 1))
    assert conv_grad.conv_grad_weight_scratch_floats(*conv_geometry_args(CONV_CASES[2], dy, 2)) == 0
    # 32 images: at least two chunks of images however small the planes, so two dW parts
    x4 = np.concatenate([x] * 11)[:32]
    dy4 = np.concatenate([dy] * 11)[:32]
    four = (32,) + conv_geometry_args(case, dy, 2)[1:]
    assert conv_grad.conv_grad_weight_scratch_floats(*four) > one
    dx_want, dw_want = conv_grads_twin(x4, w, dy4, case[7], case[8], case[9], case[10])
    st, pads, dil, g = case[7:]
    dw = np.empty_like(w)
    conv_grad.conv_grad_weight(dy4, x4, dw, np.zeros(one, np.float32), st[0], st[1], pads[0],
                               pads[1], dil[0], dil[1], g, 2)
    close(dw, dw_want, *conv_tolerance(32 * dy.shape[2] * dy.shape[3]))
    with pytest.raises(ValueError):
        conv_grad.conv_grad_weight(dy4, x4, dw, np.zeros(one - 1, np.float32), st[0], st[1],
                                   pads[0], pads[1], dil[0], dil[1], g, 2)
    with pytest.raises(ValueError):
        conv_grad.conv_grad_input(dy4, w, np.empty_like(x4), None, st[0], st[1], pads[0],
                                  pads[1], dil[0], dil[1], g, 2)


# ----------------------------------------------------------------------------- pooling gradients
def max_pool_grad_twin(dy, x, k, stride, pads, dil):
    """Loops: each window's dY goes to its first maximum (row-major), NaN beating numbers."""
    N, C, H, W = x.shape
    dx = np.zeros(x.shape)
    for n in range(N):
        for c in range(C):
            for oh in range(dy.shape[2]):
                for ow in range(dy.shape[3]):
                    best = None
                    for i in range(k[0]):
                        for j in range(k[1]):
                            ih = oh * stride[0] - pads[0] + i * dil[0]
                            iw = ow * stride[1] - pads[1] + j * dil[1]
                            if not (0 <= ih < H and 0 <= iw < W):
                                continue
                            v = x[n, c, ih, iw]
                            if best is None or v > best[0] or (np.isnan(v) and not np.isnan(best[0])):
                                best = (v, ih, iw)
                    if best is not None:
                        dx[n, c, best[1], best[2]] += dy[n, c, oh, ow]
    return dx


def avg_pool_grad_twin(dy, xshape, k, stride, pads, dil, include_pad):
    """Loops: each window's dY/count to each in-image tap; count = taps inside the image, or
    inside the explicitly padded image with count_include_pad."""
    N, C, H, W = xshape
    pt, pl, pb, pr = pads
    dx = np.zeros(xshape)
    for oh in range(dy.shape[2]):
        for ow in range(dy.shape[3]):
            taps = [(oh * stride[0] - pt + i * dil[0], ow * stride[1] - pl + j * dil[1])
                    for i in range(k[0]) for j in range(k[1])]
            lo_h, hi_h, lo_w, hi_w = (-pt, H + pb, -pl, W + pr) if include_pad else (0, H, 0, W)
            count = sum(lo_h <= a < hi_h and lo_w <= b < hi_w for a, b in taps)
            for a, b in taps:
                if 0 <= a < H and 0 <= b < W:
                    dx[:, :, a, b] += dy[:, :, oh, ow] / count
    return dx


# (N, C, H, W, kernel, stride, pads, dilation, ceil_mode)
POOL_CASES = [
    (2, 3, 8, 8, (2, 2), (2, 2), (0, 0, 0, 0), (1, 1), False),
    (1, 7, 9, 11, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), False),   # overlapping windows
    (3, 5, 7, 7, (3, 2), (2, 1), (1, 0, 0, 1), (1, 1), True),     # ceil overhang, asym pads
    (2, 4, 10, 9, (2, 3), (1, 2), (1, 1, 0, 2), (2, 2), False),   # dilation
    (1, 13, 5, 6, (2, 2), (3, 3), (0, 1, 1, 0), (1, 1), True),    # stride > kernel: gaps
]


def pool_dy_shape(case):
    N, C, H, W, k, st, p, d, ceil = case
    return (N, C, out_size(H, k[0], st[0], p[0], p[2], d[0], ceil),
            out_size(W, k[1], st[1], p[1], p[3], d[1], ceil))


@pytest.mark.parametrize("case", POOL_CASES)
@pytest.mark.parametrize("nthreads", THREADS)
def test_max_pool_grad(case, nthreads):
    N, C, H, W, k, st, p, d, _ = case
    x = rand(N, C, H, W)
    x[0, 0, :2, :2] = 1.5                      # ties: the first in row-major order wins
    dy = rand(*pool_dy_shape(case))
    dx = np.full(x.shape, np.nan, np.float32)
    pool_grad.max_pool2d_grad(dy, x, dx, k[0], k[1], st[0], st[1], p[0], p[1], d[0], d[1],
                              nthreads)
    close(dx, max_pool_grad_twin(dy, x, k, st, p, d), 1e-5, 1e-6)


def test_max_pool_grad_nan_wins_and_ties_go_first():
    x = np.array([[[[1, 3, 3, 0], [2, np.nan, 3, 0]]]], np.float32)
    dy = np.array([[[[10, 20]]]], np.float32)
    dx = np.empty_like(x)
    pool_grad.max_pool2d_grad(dy, x, dx, 2, 2, 2, 2, 0, 0, 1, 1, 1)
    want = np.zeros_like(x)
    want[0, 0, 1, 1] = 10       # the NaN beats 3
    want[0, 0, 0, 2] = 20       # the first of the three 3s... and of 3 vs 3
    np.testing.assert_array_equal(dx, want)


@pytest.mark.parametrize("case", POOL_CASES)
@pytest.mark.parametrize("include_pad", [False, True])
@pytest.mark.parametrize("nthreads", THREADS)
def test_avg_pool_grad(case, include_pad, nthreads):
    N, C, H, W, k, st, p, d, _ = case
    dy = rand(*pool_dy_shape(case))
    dx = np.full((N, C, H, W), np.nan, np.float32)
    pool_grad.avg_pool2d_grad(dy, dx, k[0], k[1], st[0], st[1], p[0], p[1], p[2], p[3], d[0],
                              d[1], include_pad, nthreads)
    close(dx, avg_pool_grad_twin(dy, (N, C, H, W), k, st, p, d, include_pad), 1e-5, 1e-6)


# The gradient kernels' paths (kernels/pool_kernel.h): 2×2/2 windows from row pairs (rows
# narrower than a vector of every level, one of AVX2's, wider ones ending in an overlapping
# vector, odd sizes whose last row and column get no gradient), the separable argmax (dilation
# 1: the stem, 3×3/1 pad 1, asymmetric pads, ceil overhang, no overlap) and the direct one
# (dilation, tall windows) on narrow rows; enough planes for two threads where marked.
GRAD_PATH_CASES = [
    # (N, C, H, W, kernel, stride, pads, dilation)
    (2, 170, 10, 10, (2, 2), (2, 2), (0, 0, 0, 0), (1, 1)),    # split over threads
    (3, 7, 8, 8, (2, 2), (2, 2), (0, 0, 0, 0), (1, 1)),
    (2, 9, 4, 4, (2, 2), (2, 2), (0, 0, 0, 0), (1, 1)),
    (1, 5, 2, 2, (2, 2), (2, 2), (0, 0, 0, 0), (1, 1)),
    (1, 3, 16, 16, (2, 2), (2, 2), (0, 0, 0, 0), (1, 1)),
    (2, 5, 11, 37, (2, 2), (2, 2), (0, 0, 0, 0), (1, 1)),
    (1, 64, 28, 28, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1)),     # the stem, split over threads
    (2, 6, 4, 4, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
    (8, 16, 14, 14, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),     # split over threads
    (1, 3, 9, 10, (3, 2), (2, 3), (1, 0, 2, 1), (1, 1)),
    (1, 3, 7, 7, (2, 2), (2, 2), (0, 0, 1, 1), (1, 1)),        # ceil overhang
    (1, 4, 6, 6, (3, 3), (3, 3), (0, 0, 0, 0), (1, 1)),
    (2, 5, 6, 6, (3, 3), (1, 1), (2, 2, 2, 2), (2, 2)),        # dilation, OW 6
    (2, 3, 12, 5, (9, 2), (1, 1), (4, 0, 4, 1), (1, 1)),       # kh 9
    (1, 3, 5, 4, (2, 3), (1, 1), (0, 2, 0, 2), (1, 2)),        # no interior column (hung)
]


def max_pool_grad_twin_planes(dy, x, k, stride, pads, dil):
    """max_pool_grad_twin with numpy over the planes: per window, the first maximum in
    row-major order (a NaN beats numbers, the first NaN stays) of the in-image taps."""
    N, C, H, W = x.shape
    P, OH, OW = N * C, dy.shape[2], dy.shape[3]
    xf, dyf = x.reshape(P, H * W), dy.reshape(P, OH, OW).astype(np.float64)
    dx, planes = np.zeros((P, H * W)), np.arange(P)
    for oh in range(OH):
        for ow in range(OW):
            best, at = None, None
            for i in range(k[0]):
                for j in range(k[1]):
                    ih = oh * stride[0] - pads[0] + i * dil[0]
                    iw = ow * stride[1] - pads[1] + j * dil[1]
                    if not (0 <= ih < H and 0 <= iw < W):
                        continue
                    v = xf[:, ih * W + iw]
                    if best is None:
                        best, at = v.copy(), np.full(P, ih * W + iw)
                        continue
                    take = (v > best) | (np.isnan(v) & ~np.isnan(best))
                    best, at = np.where(take, v, best), np.where(take, ih * W + iw, at)
            if best is not None:
                dx[planes, at] += dyf[:, oh, ow]
    return dx.reshape(x.shape)


@pytest.mark.parametrize("case", GRAD_PATH_CASES)
@pytest.mark.parametrize("with_nan", [False, True])
@pytest.mark.parametrize("nthreads", THREADS)
def test_max_pool_grad_paths(case, with_nan, nthreads):
    N, C, H, W, k, st, p, d = case
    x = rand(N, C, H, W)
    x[0, 0, :2, :2] = 1.5                      # ties: the first in row-major order wins
    x[-1, -1, -2:, -3:] = -0.25
    if with_nan:
        x[0, 0, 0, 1] = x[-1, -1, -1, -1] = x[N // 2, C // 2, H // 2, W - 1] = np.nan
        x[0, -1, H - 1, 0] = x[0, -1, H - 1, min(1, W - 1)] = np.nan   # the first NaN stays
    dy = rand(N, C, out_size(H, k[0], st[0], p[0], p[2], d[0]),
              out_size(W, k[1], st[1], p[1], p[3], d[1]))
    dx = np.full(x.shape, np.nan, np.float32)
    pool_grad.max_pool2d_grad(dy, x, dx, k[0], k[1], st[0], st[1], p[0], p[1], d[0], d[1],
                              nthreads)
    close(dx, max_pool_grad_twin_planes(dy, x, k, st, p, d), 1e-5, 1e-6)


@pytest.mark.parametrize("case", GRAD_PATH_CASES[1:8])
@pytest.mark.parametrize("include_pad", [False, True])
def test_avg_pool_grad_paths(case, include_pad):
    N, C, H, W, k, st, p, d = case
    dy = rand(N, C, out_size(H, k[0], st[0], p[0], p[2], d[0]),
              out_size(W, k[1], st[1], p[1], p[3], d[1]))
    dx = np.full((N, C, H, W), np.nan, np.float32)
    pool_grad.avg_pool2d_grad(dy, dx, k[0], k[1], st[0], st[1], p[0], p[1], p[2], p[3], d[0],
                              d[1], include_pad, 2)
    close(dx, avg_pool_grad_twin(dy, (N, C, H, W), k, st, p, d, include_pad), 1e-5, 1e-6)


@pytest.mark.parametrize("nthreads", THREADS)
def test_global_avg_pool_grad(nthreads):
    dy = rand(3 * 24)
    dx = np.empty((3 * 24, 35), np.float32)
    pool_grad.global_avg_pool_grad(dy, dx, nthreads)
    close(dx, np.repeat(dy[:, None] / 35.0, 35, axis=1), 1e-6, 1e-7)


# ----------------------------------------------------------------------------- elementwise
def act_grad_twin(g, t, code, a, b):
    g, t = g.astype(np.float64), t.astype(np.float64)
    a, b = float(np.float32(a)), float(np.float32(b))   # the kernel's bounds are float32
    sig = 1 / (1 + np.exp(-t))
    return {
        1: lambda: g * (t > 0),
        2: lambda: np.where(t > 0, g, a * g),
        3: lambda: np.where(t > 0, g, g * a * np.exp(np.minimum(t, 0))),
        5: lambda: g * t * (1 - t),
        6: lambda: np.where((a * t + b > 0) & (a * t + b < 1), a * g, 0),
        7: lambda: np.where(t < -3, 0, np.where(t > 3, g, g * (2 * t + 3) / 6)),
        8: lambda: g * (1 - t * t),
        9: lambda: g * sig,
        10: lambda: np.where((t >= a) & (t <= b), g, 0),
    }[code]()


ACT_GRAD_ARGS = {1: (0, 0), 2: (0.1, 0), 3: (0.7, 0), 5: (0, 0), 6: (0.2, 0.5), 7: (0, 0),
                 8: (0, 0), 9: (0, 0), 10: (-0.5, 0.8)}


@pytest.mark.parametrize("code", sorted(ACT_GRAD_ARGS))
@pytest.mark.parametrize("nthreads", THREADS)
def test_activation_grad(code, nthreads):
    a, b = ACT_GRAD_ARGS[code]
    g, t = rand(70001), rand(70001, scale=4.0)
    if code in (5, 8):                       # T is a sigmoid / tanh output
        t = (1 / (1 + np.exp(-t)) if code == 5 else np.tanh(t)).astype(np.float32)
    t[:5] = [0.0, -3.0, 3.0, a, b]           # the boundaries of every piecewise rule
    dx = np.empty_like(g)
    act_grad.activation_grad(g, t, dx, code, a, b, nthreads)
    close(dx, act_grad_twin(g, t, code, a, b), 1e-5, 1e-6)


@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.9, 1.0])
@pytest.mark.parametrize("nthreads", THREADS)
def test_dropout_forward_and_grad(ratio, nthreads):
    x = rand(100003)
    y, mask = np.empty_like(x), np.empty(x.size, np.uint8)
    act_grad.dropout_forward(x, y, mask, ratio, 7, 0, nthreads)
    keep = mask.astype(bool)
    scale = 1 / (1 - ratio) if ratio < 1 else 0.0
    np.testing.assert_allclose(y, np.where(keep, x * scale, 0), rtol=1e-6)
    # the kept fraction is a binomial draw: 5 standard deviations of slack
    assert abs(keep.mean() - (1 - ratio)) <= 5 * np.sqrt(ratio * (1 - ratio) / x.size) + 1e-9
    dy, dx = rand(x.size), np.empty_like(x)
    act_grad.dropout_grad(dy, mask, dx, ratio, nthreads)
    np.testing.assert_allclose(dx, np.where(keep, dy * scale, 0), rtol=1e-6)


def test_dropout_masks_are_reproducible_and_differ_per_run_and_seed():
    x = np.ones(5000, np.float32)
    draw = {}
    for seed, run, threads in [(1, 0, 1), (1, 0, 2), (1, 1, 1), (2, 0, 1)]:
        y, m = np.empty_like(x), np.empty(x.size, np.uint8)
        act_grad.dropout_forward(x, y, m, 0.5, seed, run, threads)
        draw[seed, run, threads] = m
    np.testing.assert_array_equal(draw[1, 0, 1], draw[1, 0, 2])   # threads do not matter
    assert (draw[1, 0, 1] != draw[1, 1, 1]).mean() > 0.4           # a new run, a new mask
    assert (draw[1, 0, 1] != draw[2, 0, 1]).mean() > 0.4           # a new seed, a new mask
    # neighbouring elements are not correlated (a weak hash would show it here)
    m = draw[1, 0, 1].astype(np.float64) - 0.5
    assert abs(np.mean(m[1:] * m[:-1])) < 0.02


# ----------------------------------------------------------------------------- reductions
@pytest.mark.parametrize("shape", [(3, 7, 5), (64, 13, 1), (1, 200, 1), (5, 1, 33), (0, 4, 3),
                                   (2, 24, 49)])
@pytest.mark.parametrize("nthreads", THREADS)
def test_channel_sum(shape, nthreads):
    x = rand(*shape, scale=3.0)
    y = np.full(shape[1], np.nan, np.float32)
    reduce_grad.channel_sum(x, y, nthreads)
    close(y, x.astype(np.float64).sum(axis=(0, 2)), 1e-5, 1e-6)


# ----------------------------------------------------------------------------- softmax
@pytest.mark.parametrize("shape", [(4, 10, 1), (1, 7, 13), (3, 5, 6), (64, 1000, 1)])
@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("nthreads", THREADS)
def test_softmax_grad(shape, log, nthreads):
    x, g = rand(*shape, scale=2.0).astype(np.float64), rand(*shape)
    p = np.exp(x - x.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    y = (np.log(p) if log else p).astype(np.float32)
    g64, y64 = g.astype(np.float64), y.astype(np.float64)
    want = (g64 - np.exp(y64) * g64.sum(axis=1, keepdims=True) if log
            else y64 * (g64 - (g64 * y64).sum(axis=1, keepdims=True)))
    dx = np.empty_like(y)
    softmax_grad.softmax_grad(g, y, dx, log, nthreads)
    close(dx, want, 1e-4, 1e-6)


def xent_twin(scores, labels, weights, reduction, ignore):
    s = scores.astype(np.float64)
    logp = s - s.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    w = np.array([0.0 if (ignore is not None and l == ignore) else
                  (1.0 if weights is None else weights[l]) for l in labels])
    per = np.array([-w[i] * logp[i, l] if w[i] else 0.0 for i, l in enumerate(labels)])
    loss = {"none": per, "sum": per.sum(), "mean": per.sum() / w.sum()}[reduction]
    # d loss / d scores (dloss = 1 for the scalar reductions, given per row for "none")
    dloss = np.linspace(0.5, 1.5, len(labels)) if reduction == "none" else np.array(1.0)
    coef = w * (dloss if reduction == "none" else dloss / (w.sum() if reduction == "mean" else 1))
    d = np.exp(logp)
    d[np.arange(len(labels)), np.where(w > 0, labels, 0)] -= (w > 0)
    return logp, loss, d * coef[:, None], dloss.astype(np.float32)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("ignore", [None, 2])
@pytest.mark.parametrize("nthreads", THREADS)
def test_softmax_cross_entropy(reduction, weighted, ignore, nthreads):
    N, C = 37, 11
    scores, labels = rand(N, C, scale=3.0), rng.integers(0, C, N).astype(np.int64)
    weights = (rng.random(C) + 0.5).astype(np.float32) if weighted else None
    code = {"none": 0, "sum": 1, "mean": 2}[reduction]
    logp_want, loss_want, d_want, dloss = xent_twin(scores, labels, weights, reduction, ignore)
    logp, loss = np.empty_like(scores), np.empty(N if reduction == "none" else 1, np.float32)
    ig = ignore if ignore is not None else 0
    assert softmax_grad.softmax_xent(scores, labels, weights, logp, loss, code, ig,
                                     ignore is not None, nthreads) == -1
    close(logp, logp_want, 1e-5, 1e-6)
    close(loss, np.reshape(loss_want, -1), 1e-5, 1e-6)
    d = np.empty_like(scores)
    assert softmax_grad.softmax_xent_grad(dloss.reshape(-1), logp, labels, weights, d, code,
                                          ig, ignore is not None, nthreads) == -1
    close(d, d_want, 1e-5, 1e-6)


def test_softmax_cross_entropy_reports_bad_labels_and_all_ignored():
    scores, logp = rand(4, 3), np.empty((4, 3), np.float32)
    loss = np.empty(1, np.float32)
    labels = np.array([0, 2, 3, 1], np.int64)
    assert softmax_grad.softmax_xent(scores, labels, None, logp, loss, 2, 0, False, 1) == 2
    labels = np.array([-1, -1, -1, -1], np.int64)   # ignore_index -1: fine, but empty mean
    assert softmax_grad.softmax_xent(scores, labels, None, logp, loss, 2, -1, True, 1) == -1
    assert np.isnan(loss[0])
    assert softmax_grad.softmax_xent(scores, labels, None, logp, loss, 2, 0, False, 1) == 0


# ----------------------------------------------------------------------------- batch norm
def bn_twin(x, scale, bias, eps):
    x64 = x.astype(np.float64)
    axes = (0, 2)
    mean, var = x64.mean(axes), x64.var(axes)
    xhat = (x64 - mean[None, :, None]) / np.sqrt(var + eps)[None, :, None]
    return mean, var, xhat, xhat * scale[None, :, None] + bias[None, :, None]


BN_SHAPES = [(4, 7, 25), (1, 13, 9), (3, 24, 1), (64, 6, 196)]


@pytest.mark.parametrize("shape", BN_SHAPES)
@pytest.mark.parametrize("nthreads", THREADS)
def test_batch_norm_train_forward(shape, nthreads):
    N, C, L = shape
    x = rand(N, C, L, scale=2.0) + 3.0          # a mean far from 0 exercises the variance
    scale, bias, rm, rv = rand(C), rand(C), rand(C), np.abs(rand(C)) + 0.5
    mean, var, _, y_want = bn_twin(x, scale, bias, 1e-5)
    y, mo, vo = np.empty_like(x), np.empty(C, np.float32), np.empty(C, np.float32)
    norm_grad.batch_norm_train(x, scale, bias, rm, rv, y, mo, vo, 1e-5, 0.9, nthreads)
    close(y, y_want, 1e-4, 1e-5)
    close(mo, rm * 0.9 + mean * 0.1, 1e-5, 1e-6)
    close(vo, rv * 0.9 + var * 0.1, 1e-5, 1e-6)
    norm_grad.batch_norm_train(x, scale, bias, rm, rv, y, None, None, 1e-5, 0.9, nthreads)
    close(y, y_want, 1e-4, 1e-5)
    n = N * L                                   # torch's unbiased running-variance update
    norm_grad.batch_norm_train(x, scale, bias, rm, rv, y, mo, vo, 1e-5, 0.9, nthreads,
                               n / (n - 1) if n > 1 else 1.0)
    close(y, y_want, 1e-4, 1e-5)
    close(mo, rm * 0.9 + mean * 0.1, 1e-5, 1e-6)
    close(vo, rv * 0.9 + (x.astype(np.float64).var((0, 2), ddof=1) if n > 1 else var) * 0.1,
          1e-5, 1e-6)


@pytest.mark.parametrize("shape", BN_SHAPES)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("nthreads", THREADS)
def test_batch_norm_grad(shape, training, nthreads):
    N, C, L = shape
    x, dy = rand(N, C, L, scale=2.0) + 1.0, rand(N, C, L)
    scale, eps = rand(C), 1e-3
    if training:
        mean, var, xhat, _ = bn_twin(x, scale, np.zeros(C), eps)
    else:
        mean, var = rand(C).astype(np.float64), np.abs(rand(C)).astype(np.float64) + 0.5
        xhat = (x - mean[None, :, None]) / np.sqrt(var + eps)[None, :, None]
    g = dy.astype(np.float64)
    dbias, dscale = g.sum((0, 2)), (g * xhat).sum((0, 2))
    k = (scale / np.sqrt(var + eps))[None, :, None]
    M = N * L
    dx_want = (k / M * (M * g - dbias[None, :, None] - xhat * dscale[None, :, None])
               if training else g * k)
    dx, ds, db = np.empty_like(x), np.empty(C, np.float32), np.empty(C, np.float32)
    m32, v32 = (None, None) if training else (mean.astype(np.float32), var.astype(np.float32))
    norm_grad.batch_norm_grad(dy, x, scale, m32, v32, dx, ds, db, eps, training, nthreads)
    close(dx, dx_want, 1e-4, 1e-5)
    close(ds, dscale, 1e-4, 1e-5)
    close(db, dbias, 1e-4, 1e-5)
    ds2 = np.empty_like(ds)       # any output may be absent
    norm_grad.batch_norm_grad(dy, x, scale, m32, v32, None, ds2, None, eps, training, nthreads)
    np.testing.assert_array_equal(ds2, ds)


# ----------------------------------------------------------------------------- native steps
@pytest.mark.parametrize("case", [CONV_CASES[0], CONV_CASES[1], CONV_CASES[2], CONV_CASES[11],
                                  CONV_CASES[14]])
@pytest.mark.parametrize("nthreads", THREADS)
def test_conv_grad_steps_in_the_plan_runner(case, nthreads):
    """ConvGradStep run from C by the plan runner (no Python between the two gradients), twice
    (a step is reusable), against the twin."""
    from ember.kernels import plan
    x, w, dy = conv_case_arrays(case)
    dx_want, dw_want = conv_grads_twin(x, w, dy, case[7], case[8], case[9], case[10])
    geo = conv_geometry_args(case, dy, nthreads)
    st, pads, dil, g = case[7:]
    args = (st[0], st[1], pads[0], pads[1], dil[0], dil[1], g, nthreads)
    dw, dx = np.full(w.shape, np.nan, np.float32), np.full(x.shape, np.nan, np.float32)
    steps = [conv_grad.conv_grad_weight_step(
                 dy, x, dw, np.zeros(conv_grad.conv_grad_weight_scratch_floats(*geo), np.float32),
                 *args),
             conv_grad.conv_grad_input_step(
                 dy, w, dx, np.zeros(conv_grad.conv_grad_input_scratch_floats(*geo), np.float32),
                 *args)]
    runner = plan.PlanRunner(steps)
    assert runner.native_steps == 2
    for _ in range(2):
        runner.run()
        close(dw, dw_want, *conv_tolerance(dy.shape[0] * dy.shape[2] * dy.shape[3]))
        close(dx, dx_want, *conv_tolerance(w.shape[0] * w.shape[2] * w.shape[3]))


@pytest.mark.parametrize("nthreads", THREADS)
def test_batch_norm_and_loss_steps_in_the_plan_runner(nthreads):
    """BatchNormTrainStep → BatchNormGradStep and XentStep (loss, gradient) run from C, equal to
    the def kernels (each already checked against its twin above); a bad label stops the runner
    and raises what the step's ``on_bad_label`` makes."""
    from ember.kernels import plan
    N, C, L = 8, 6, 49
    x, dy = rand(N, C, L, scale=2.0) + 1.0, rand(N, C, L)
    scale, bias, rm, rv = rand(C), rand(C), rand(C), np.abs(rand(C)) + 0.5
    y, mo, vo = np.empty_like(x), np.empty(C, np.float32), np.empty(C, np.float32)
    dx, ds, db = np.empty_like(x), np.empty(C, np.float32), np.empty(C, np.float32)
    scores, labels = rand(N, 5, scale=2.0), (np.arange(N) % 5).astype(np.int64)
    logp, loss, dl = np.empty((N, 5), np.float32), np.empty(1, np.float32), np.ones(1, np.float32)
    dscores = np.empty_like(scores)
    steps = [norm_grad.BatchNormTrainStep(x, scale, bias, rm, rv, y, mo, vo, 1e-5, 0.9, nthreads),
             norm_grad.BatchNormGradStep(dy, x, scale, None, None, dx, ds, db, 1e-5, True,
                                         nthreads),
             softmax_grad.softmax_xent_step(scores, labels, None, logp, loss, 2, 0, False,
                                            nthreads, lambda row: KeyError(row)),
             softmax_grad.softmax_xent_grad_step(dl, logp, labels, None, dscores, 2, 0, False,
                                                 nthreads)]
    runner = plan.PlanRunner(steps)
    assert runner.native_steps == 4
    runner.run()
    want = [np.empty_like(a) for a in (y, mo, vo, dx, ds, db, logp, loss, dscores)]
    norm_grad.batch_norm_train(x, scale, bias, rm, rv, want[0], want[1], want[2], 1e-5, 0.9,
                               nthreads)
    norm_grad.batch_norm_grad(dy, x, scale, None, None, want[3], want[4], want[5], 1e-5, True,
                              nthreads)
    softmax_grad.softmax_xent(scores, labels, None, want[6], want[7], 2, 0, False, nthreads)
    softmax_grad.softmax_xent_grad(dl, want[6], labels, None, want[8], 2, 0, False, nthreads)
    for got, w in zip((y, mo, vo, dx, ds, db, logp, loss, dscores), want):
        np.testing.assert_array_equal(got, w)
    labels[3] = 7
    with pytest.raises(KeyError, match="3"):
        runner.run()


# ----------------------------------------------------------------------------- binders
def compile_one(op_type, feeds, attrs, n_outputs=1, consts=None, threads=2, absent_outputs=()):
    """A one-node graph, compiled: (session, the compiled node, its step)."""
    consts = consts or {}
    inputs = [k for k in feeds] + [k for k in consts]
    outputs = [("" if k in absent_outputs else f"out{k}") for k in range(n_outputs)]
    node = Node(op_type, [i if not i.startswith("absent") else "" for i in inputs], outputs,
                attrs=dict(attrs), name="node", domain=op_named(op_type).domain)
    types = {k: TensorType(v.dtype, v.shape) for k, v in {**feeds, **consts}.items()}
    g = Graph(nodes=[node], inputs=list(feeds), outputs=[o for o in outputs if o],
              initializers=dict(consts), types=types)
    sess = Session(g, threads=threads, optimize=False)
    ctx = sess.compile(None).acquire()
    (cnode, step), = [(n, s) for n, s in ctx.steps]
    return sess, cnode, step


def check_binder(op_type, feeds, attrs, n_outputs=1, consts=None, rtol=1e-4, atol_rel=1e-5,
                 absent_outputs=(), threads=2):
    sess, cnode, step = compile_one(op_type, feeds, attrs, n_outputs, consts, threads,
                                    absent_outputs)
    assert not getattr(step, "reference", False), f"{op_type} ran its numpy reference"
    got = sess.run(None, feeds)
    ins = [{**feeds, **(consts or {})}.get(i) if i else None for i in cnode.inputs]
    want = [w for k, w in enumerate(op_named(op_type).compute(cnode, ins))
            if k not in absent_outputs]
    for gv, wv in zip(got, want):
        assert gv.shape == np.shape(wv) and gv.dtype == wv.dtype
        close(gv, wv, rtol, atol_rel)
    return sess


CONV_ATTRS = dict(strides=[2, 1], pads=[1, 0, 2, 1], dilations=[1, 2], group=2)


@pytest.mark.parametrize("threads", THREADS)
def test_binders_conv_grads(threads):
    x, w = rand(3, 6, 9, 8), rand(4, 3, 3, 2)
    dy = rand(3, 4, out_size(9, 3, 2, 1, 2, 1), out_size(8, 2, 1, 0, 1, 2))
    check_binder("ConvGradInput", {"dy": dy, "w": w}, dict(CONV_ATTRS, input_shape=list(x.shape)),
                 threads=threads)
    check_binder("ConvGradWeight", {"dy": dy, "x": x},
                 dict(CONV_ATTRS, weight_shape=list(w.shape)), threads=threads)
    x1, w1 = rand(2, 4, 11), rand(5, 4, 3)         # 1-D conv
    dy1 = rand(2, 5, 11)
    attrs1 = dict(strides=[1], pads=[1, 1], dilations=[1], group=1)
    check_binder("ConvGradInput", {"dy": dy1, "w": w1}, dict(attrs1, input_shape=[2, 4, 11]))
    check_binder("ConvGradWeight", {"dy": dy1, "x": x1}, dict(attrs1, weight_shape=[5, 4, 3]))


def test_binders_pool_grads():
    x = rand(2, 5, 7, 9)
    pool = dict(kernel_shape=[3, 2], strides=[2, 2], pads=[1, 0, 0, 1], dilations=[1, 1],
                ceil_mode=1)
    dy = rand(2, 5, out_size(7, 3, 2, 1, 0, 1, True), out_size(9, 2, 2, 0, 1, 1, True))
    check_binder("MaxPoolGrad", {"dy": dy, "x": x}, pool)
    for include in (0, 1):
        check_binder("AveragePoolGrad", {"dy": dy},
                     dict(pool, count_include_pad=include, input_shape=list(x.shape)))
    check_binder("GlobalAveragePoolGrad", {"dy": rand(2, 5, 1, 1)}, dict(input_shape=[2, 5, 7, 9]))


@pytest.mark.parametrize("activation,alpha,beta", [
    ("Relu", 0, 0), ("Sigmoid", 0, 0), ("Tanh", 0, 0), ("LeakyRelu", 0.1, 0), ("Elu", 0.8, 0),
    ("Clip", -0.5, 0.7), ("Clip", float("-inf"), 0.7), ("HardSigmoid", 0.2, 0.5),
    ("HardSwish", 0, 0), ("Softplus", 0, 0)])
def test_binder_activation_grad(activation, alpha, beta):
    t = rand(4, 6, 5, 5, scale=3.0)
    if activation in ("Sigmoid", "Tanh"):
        t = (np.tanh(t) if activation == "Tanh" else 1 / (1 + np.exp(-t))).astype(np.float32)
    check_binder("ActivationGrad", {"dy": rand(*t.shape), "t": t},
                 dict(activation=activation, alpha=alpha, beta=beta), rtol=1e-5, atol_rel=1e-6)


@pytest.mark.parametrize("op_type,shape,attrs", [
    ("BiasGrad", (4, 7, 3, 3), dict(axis=1)), ("BiasGrad", (64, 10), dict(axis=1)),
    ("BiasGrad", (3, 5, 6), dict(axis=-1)),
    ("SumToShape", (4, 7, 3, 3), dict(shape=[7, 1, 1])),
    ("SumToShape", (4, 7, 3, 3), dict(shape=[1, 7, 1, 1])),
    ("SumToShape", (64, 10), dict(shape=[10])), ("SumToShape", (3, 4), dict(shape=[3, 1])),
    ("SumToShape", (3, 4, 5), dict(shape=[4, 5])), ("SumToShape", (3, 4, 5), dict(shape=[])),
    ("SumToShape", (3, 4, 5), dict(shape=[3, 4, 5])),
    ("SumToShape", (3, 4, 5), dict(shape=[3, 1, 5])),      # not one block: numpy's sum
])
def test_binders_reductions(op_type, shape, attrs):
    check_binder(op_type, {"dy": rand(*shape)}, attrs)


@pytest.mark.parametrize("op_type", ["SoftmaxGrad", "LogSoftmaxGrad"])
@pytest.mark.parametrize("axis", [-1, 1, 0])
def test_binders_softmax_grads(op_type, axis):
    x = rand(3, 5, 4).astype(np.float64)
    p = np.exp(x - x.max(axis, keepdims=True))
    p /= p.sum(axis, keepdims=True)
    y = (np.log(p) if op_type == "LogSoftmaxGrad" else p).astype(np.float32)
    check_binder(op_type, {"dy": rand(*y.shape), "y": y}, dict(axis=axis), rtol=1e-5,
                 atol_rel=1e-6)


def test_binder_dropout_grad():
    mask = rng.random((4, 9)) > 0.3
    check_binder("DropoutGrad", {"dy": rand(4, 9), "mask": mask}, dict(ratio=0.3))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
def test_binders_softmax_cross_entropy(reduction, weighted):
    N, C = 16, 10
    scores, labels = rand(N, C, scale=2.0), rng.integers(0, C, N).astype(np.int64)
    labels[3] = -100
    feeds = {"scores": scores, "labels": labels}
    if weighted:
        feeds["weights"] = (rng.random(C) + 0.5).astype(np.float32)
    attrs = dict(reduction=reduction, ignore_index=-100)
    sess = check_binder("SoftmaxCrossEntropyLoss", feeds, attrs, n_outputs=2, rtol=1e-5,
                        atol_rel=1e-6)
    logp = sess.run(None, feeds)[1]
    dloss = rand(N) if reduction == "none" else np.array(0.7, np.float32)
    gfeeds = {"dloss": dloss, "logp": logp, "labels": labels}
    if weighted:
        gfeeds["weights"] = feeds["weights"]
    check_binder("SoftmaxCrossEntropyLossGrad", gfeeds, attrs, rtol=1e-5, atol_rel=1e-6)
    labels_bad = labels.copy()
    labels_bad[0] = C
    with pytest.raises(Exception, match="outside"):
        sess.run(None, {**feeds, "labels": labels_bad})


@pytest.mark.parametrize("training", [0, 1])
@pytest.mark.parametrize("absent", [(), (0,), (1, 2)])
def test_binder_batch_norm_grad(training, absent):
    C = 6
    feeds = {"dy": rand(4, C, 3, 5), "x": rand(4, C, 3, 5) + 2, "scale": rand(C),
             "mean": rand(C), "var": np.abs(rand(C)) + 0.5}
    check_binder("BatchNormalizationGrad", feeds, dict(epsilon=1e-3, training_mode=training),
                 n_outputs=3, absent_outputs=absent)


@pytest.mark.parametrize("threads", THREADS)
def test_binder_batch_norm_training_forward(threads):
    C = 7
    feeds = {"x": rand(5, C, 4, 3) * 2 + 1, "scale": rand(C), "bias": rand(C),
             "mean": rand(C), "var": np.abs(rand(C)) + 0.5}
    check_binder("BatchNormalization", feeds, dict(epsilon=1e-5, momentum=0.8, training_mode=1),
                 n_outputs=3, threads=threads)
    # eval mode still goes to the inference binder
    _, _, step = compile_one("BatchNormalization", feeds, dict(training_mode=0))
    assert not getattr(step, "reference", False)


@pytest.mark.parametrize("unbiased", [0, 1])
@pytest.mark.parametrize("shape", [(5, 7, 4, 3), (6, 3), (1, 4, 1, 1)])
def test_batch_norm_training_running_variance(unbiased, shape):
    """ONNX semantics (attribute 0, the default): running_var moves toward the batch's
    population variance; ``running_var_unbiased=1`` (torch's): toward the unbiased one,
    n/(n − 1) times it, n = N·∏spatial (the population one when n = 1). The kernel binder and
    the numpy reference both against the formula written here."""
    C = shape[1]
    x = rand(*shape) * 2 + 1
    feeds = {"x": x, "scale": rand(C), "bias": rand(C), "mean": rand(C),
             "var": np.abs(rand(C)) + 0.5}
    attrs = dict(epsilon=1e-5, momentum=0.8, training_mode=1, running_var_unbiased=unbiased)
    axes = (0,) + tuple(range(2, x.ndim))
    n = x.size // C
    batch_var = x.astype(np.float64).var(axes, ddof=1 if unbiased and n > 1 else 0)
    want = feeds["var"] * 0.8 + batch_var * 0.2
    sess, cnode, step = compile_one("BatchNormalization", feeds, attrs, n_outputs=3)
    assert not getattr(step, "reference", False)
    close(sess.run(None, feeds)[2], want, 1e-5, 1e-6)
    ref = get_op("BatchNormalization").compute(cnode, [feeds[k] for k in
                                                         ("x", "scale", "bias", "mean", "var")])
    close(ref[2], want, 1e-5, 1e-6)


@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("seed,step", [(7, 0), (7, 1), (2 ** 63 + 5, 2 ** 40 + 3)])
@pytest.mark.parametrize("nthreads", THREADS)
def test_dropout_kernel_mask_is_the_references_bit_for_bit(ratio, seed, step, nthreads):
    """kernels/act_grad's dropout_forward and the numpy reference (graph/ops/tensor.py) draw
    the same mask from (seed, step, element) — and the same y and dX bits."""
    from ember.graph.ops.tensor import dropout_keep
    x = rand(70001)
    y, mask = np.empty_like(x), np.empty(x.size, np.uint8)
    act_grad.dropout_forward(x, y, mask, ratio, seed, step, nthreads)
    keep = dropout_keep(x.size, ratio, seed, step)
    np.testing.assert_array_equal(mask.astype(bool), keep)
    node = Node("Dropout", ["x", "r", "t", "s"], ["y", "m"], {"seed": seed}, "d")
    ref_y, ref_m = get_op("Dropout").compute(node, [x, np.array(ratio, np.float32),
                                                    np.array(True), np.array(step)])
    if ratio:
        np.testing.assert_array_equal(ref_m, keep)
        np.testing.assert_array_equal(ref_y, y)
    dy, dx = rand(x.size), np.empty_like(x)
    act_grad.dropout_grad(dy, mask, dx, ratio, nthreads)
    gnode = Node("DropoutGrad", ["dy", "m"], ["dx"], {"ratio": ratio}, "g")
    np.testing.assert_array_equal(op_named("DropoutGrad").compute(gnode, [dy, keep])[0], dx)


@pytest.mark.parametrize("threads", THREADS)
def test_binder_dropout_reads_the_step_input_live(threads):
    """With the 4th input (the training step) the mask is a function of (seed, step): the
    same step gives the same mask in any Session, another step another mask, and the kernel
    binder agrees with the numpy reference bit for bit."""
    x = rand(64, 100)
    consts = {"ratio": np.array(0.25, np.float32), "training_mode": np.array(True)}
    feeds = lambda k: {"x": x, "step": np.array(k, np.int64)}    # noqa: E731
    order = {"x": x, "ratio": consts["ratio"], "training_mode": consts["training_mode"],
             "step": np.array(0, np.int64)}
    node = Node("Dropout", list(order), ["y", "m"], {"seed": 3}, "node")
    types = {k: TensorType(v.dtype, v.shape) for k, v in order.items()}
    g = Graph(nodes=[node], inputs=["x", "step"], outputs=["y", "m"], initializers=consts,
              types=types)
    sess = Session(g, threads=threads, optimize=False)
    (_, step_fn), = sess.compile(None).acquire().steps
    assert not getattr(step_fn, "reference", False)
    y5, m5 = sess.run(None, feeds(5))
    y6, m6 = sess.run(None, feeds(6))
    again = Session(g, threads=1, optimize=False).run(None, feeds(5))
    np.testing.assert_array_equal(again[1], m5)
    np.testing.assert_array_equal(sess.run(None, feeds(5))[1], m5)   # no hidden counter
    assert (m5 != m6).mean() > 0.2
    ref = get_op("Dropout").compute(node, [x, consts["ratio"], consts["training_mode"],
                                           np.array(5)])
    np.testing.assert_array_equal(ref[0], y5)
    np.testing.assert_array_equal(ref[1], m5)


def test_binder_dropout_training_forward():
    x = rand(64, 100)
    consts = {"ratio": np.array(0.25, np.float32), "training_mode": np.array(True)}
    sess, _, step = compile_one("Dropout", {"x": x}, dict(seed=3), n_outputs=2, consts=consts)
    assert not getattr(step, "reference", False)
    y1, m1 = sess.run(None, {"x": x})
    y2, m2 = sess.run(None, {"x": x})
    assert m1.dtype == np.bool_ and m1.shape == x.shape
    np.testing.assert_allclose(y1, np.where(m1, x / 0.75, 0), rtol=1e-6)
    assert abs(m1.mean() - 0.75) < 5 * np.sqrt(0.25 * 0.75 / x.size)
    assert (m1 != m2).any()                          # a new mask every run
    again = compile_one("Dropout", {"x": x}, dict(seed=3), n_outputs=2, consts=consts)[0]
    np.testing.assert_array_equal(again.run(None, {"x": x})[1], m1)   # same seed, same masks
    consts_eval = {"ratio": np.array(0.25, np.float32), "training_mode": np.array(False)}
    ev = compile_one("Dropout", {"x": x}, dict(seed=3), n_outputs=2, consts=consts_eval)[0]
    ye, me = ev.run(None, {"x": x})
    np.testing.assert_array_equal(ye, x)
    assert me.all()
