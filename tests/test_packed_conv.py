"""The convolutions over weights packed once (kernels/conv.pyx): PackedConvStep (pixels ×
output-channel tiles) and DirectConvStep (few input channels, taps read straight from a padded,
phase-split input) against a float64 numpy conv written here, and their dispatch from the Conv
binder (static rule, run-time weights, the switches that turn them off, tuning's candidates).

Tolerance: the kernel sums the K = C/group·KH·KW products of an output in float32 in an order of
its own; for such a sum the error is within K·ε·Σ|x|·|w| (B below, float64) and, on random data,
a few √K·ε·B. The tests allow 4·√K·ε·max(B) — far below any indexing mistake, which moves an
output by a whole product.
"""
import numpy as np
import pytest

from ember.graph.ir import Graph, Node, TensorType
from ember.graph.ops import op_named
from ember.kernels import conv
from ember.runtime import tuning
from ember.runtime.binders import conv as conv_binder
from ember.runtime.session import Session

rng = np.random.default_rng(20261207)
EPS = float(np.finfo(np.float32).eps)
ACT_RELU, ACT_SIGMOID = 1, 5


def rand(*shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def out_size(n, k, s, p_lo, p_hi, d):
    return (n + p_lo + p_hi - d * (k - 1) - 1) // s + 1


def conv64(x, w, stride, pads, dil, group):
    """Cross-correlation in float64; pads (top, left, bottom, right)."""
    N, C, H, W = x.shape
    M, Cg, KH, KW = w.shape
    (sh, sw), (pt, pl, pb, pr), (dh, dw) = stride, pads, dil
    OH, OW = out_size(H, KH, sh, pt, pb, dh), out_size(W, KW, sw, pl, pr, dw)
    xp = np.zeros((N, C, H + pt + pb + sh * OH + dh * KH, W + pl + pr + sw * OW + dw * KW))
    xp[:, :, pt:pt + H, pl:pl + W] = x
    y = np.zeros((N, M, OH, OW))
    Mg = M // group
    for g in range(group):
        for kh in range(KH):
            for kw in range(KW):
                patch = xp[:, g * Cg:(g + 1) * Cg, kh * dh:kh * dh + sh * OH:sh,
                           kw * dw:kw * dw + sw * OW:sw]
                y[:, g * Mg:(g + 1) * Mg] += np.einsum(
                    "nchw,mc->nmhw", patch, w[g * Mg:(g + 1) * Mg, :, kh, kw].astype(np.float64))
    return y


def run_packed(x, w, bias, stride, pads, dil, group, act=0, threads=1):
    N, C, H, W = x.shape
    M, _, KH, KW = w.shape
    OH = out_size(H, KH, stride[0], pads[0], pads[2], dil[0])
    OW = out_size(W, KW, stride[1], pads[1], pads[3], dil[1])
    packed = conv_binder.packed_weights(w, group)
    y = np.full((N, M, OH, OW), np.nan, np.float32)
    scr = np.full(conv.packed_conv_scratch_floats(N, C, M, KH, KW, OH, OW, group, threads),
                  np.nan, np.float32)
    conv.PackedConvStep(x, packed, bias, y, scr, KH, KW, *stride, pads[0], pads[1], *dil, group,
                        act, 0.0, 0.0, threads)()
    return y


def check(got, x, w, bias, stride, pads, dil, group, act):
    want = conv64(x, w, stride, pads, dil, group)
    B = conv64(np.abs(x.astype(np.float64)), np.abs(w.astype(np.float64)), stride, pads, dil,
               group)
    if bias is not None:
        want += bias[None, :, None, None]
        B += np.abs(bias)[None, :, None, None]
    if act == ACT_RELU:
        want = np.maximum(want, 0)
    elif act == ACT_SIGMOID:
        want = 1 / (1 + np.exp(-want))
    K = w.shape[1] * w.shape[2] * w.shape[3]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=4 * np.sqrt(K) * EPS * B.max() + 1e-7)


GEOMETRIES = [
    # N, C, H, W, M, KH, KW, stride, pads (t, l, b, r), dilation, group
    (1, 8, 7, 7, 16, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),          # one tile of NR
    (2, 6, 9, 8, 20, 3, 2, (2, 1), (1, 0, 2, 1), (1, 1), 1),          # asymmetric everything
    (3, 4, 5, 5, 10, 1, 1, (2, 2), (0, 0, 0, 0), (1, 1), 2),          # strided 1×1, groups
    (1, 3, 23, 23, 64, 7, 7, (2, 2), (3, 3, 3, 3), (1, 1), 1),        # a stem
    (2, 40, 5, 6, 47, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),         # K = 360 > one K slice
    (1, 600, 3, 3, 70, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1), 1),        # K = 600: three slices
    (2, 12, 9, 9, 24, 3, 3, (2, 2), (2, 2, 2, 2), (2, 2), 3),         # dilated, grouped
    (1, 5, 4, 4, 7, 5, 5, (1, 1), (2, 2, 2, 2), (1, 1), 1),           # window wider than the plane
    (2, 3, 4, 4, 9, 3, 3, (3, 3), (4, 4, 4, 4), (1, 1), 1),           # windows entirely in padding
    (1, 2, 130, 140, 16, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),      # several chunks of pixels
    (2, 3, 100, 100, 16, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),      # a chunk ends mid-image
]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("geom", GEOMETRIES, ids=lambda g: "x".join(map(str, g[:7])))
def test_packed_conv_matches_float64(geom, threads):
    N, C, H, W, M, KH, KW, stride, pads, dil, group = geom
    x, w, b = rand(N, C, H, W), rand(M, C // group, KH, KW, scale=0.2), rand(M)
    act = ACT_RELU if threads == 1 else ACT_SIGMOID
    got = run_packed(x, w, b, stride, pads, dil, group, act, threads)
    check(got, x, w, b, stride, pads, dil, group, act)


DIRECT_GEOMETRIES = [
    # N, C, H, W, M, KH, KW, stride, pads (t, l, b, r), dilation
    (1, 3, 23, 23, 64, 7, 7, (2, 2), (3, 3, 3, 3), (1, 1)),        # a ResNet stem
    (1, 3, 30, 30, 32, 3, 3, (2, 2), (1, 1, 1, 1), (1, 1)),        # a MobileNet stem
    (2, 1, 32, 32, 6, 5, 5, (1, 1), (0, 0, 0, 0), (1, 1)),         # LeNet's first layer
    (3, 6, 14, 14, 16, 5, 5, (1, 1), (0, 0, 0, 0), (1, 1)),        # LeNet's second
    (1, 2, 9, 30, 5, 3, 2, (3, 2), (2, 1, 0, 3), (2, 2)),          # odd strides, dilations, pads
    (1, 4, 5, 5, 9, 5, 5, (1, 1), (2, 2, 2, 2), (1, 1)),           # window wider than the plane
    (2, 8, 7, 61, 3, 1, 3, (1, 3), (0, 4, 0, 4), (1, 2)),          # rows longer than a block
    # many channels (taken by tuning): row and column phases, narrow and wide blocks, channel
    # blocks split over the team when the batch is smaller than it, M past a whole block
    (1, 32, 28, 28, 40, 3, 3, (2, 2), (1, 1, 1, 1), (1, 1)),       # a stride-2 3×3
    (1, 64, 7, 7, 72, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1)),         # a 7×7 plane: a narrow block
    (1, 8, 12, 100, 16, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1)),       # blocks stored whole
    (1, 16, 20, 20, 24, 1, 1, (2, 2), (0, 0, 0, 0), (1, 1)),       # a strided 1×1 projection
    (2, 17, 13, 11, 19, 3, 5, (2, 3), (1, 2, 0, 1), (2, 1)),       # row stride with dilation
    (1, 5, 40, 3, 9, 4, 1, (3, 1), (2, 0, 1, 0), (3, 1)),          # row stride 3, dilation 3
    (1, 4, 30, 6, 8, 2, 2, (5, 1), (0, 0, 0, 0), (1, 1)),          # row stride past the kernel
]


@pytest.mark.parametrize("algo", ["direct", "direct_ch"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("geom", DIRECT_GEOMETRIES, ids=lambda g: "x".join(map(str, g[:7])))
def test_direct_conv_matches_float64(geom, threads, algo):
    N, C, H, W, M, KH, KW, stride, pads, dil = geom
    x, w, b = rand(N, C, H, W), rand(M, C, KH, KW, scale=0.2), rand(M)
    OH = out_size(H, KH, stride[0], pads[0], pads[2], dil[0])
    OW = out_size(W, KW, stride[1], pads[1], pads[3], dil[1])
    act = ACT_RELU if threads == 1 else ACT_SIGMOID
    y = np.full((N, M, OH, OW), np.nan, np.float32)
    scr = np.full(conv.direct_conv_scratch_floats(C, M, KH, KW, OH, OW, *stride, *dil, threads),
                  np.nan, np.float32)
    conv.DirectConvStep(x, conv_binder.direct_weights(w, algo), b, y, scr, KH, KW, *stride,
                        pads[0], pads[1], *dil, act, 0.0, 0.0, threads, algo == "direct_ch")()
    check(y, x, w, b, stride, pads, dil, 1, act)


POINTWISE_GEOMETRIES = [   # N, C, H, W, M
    (1, 960, 7, 7, 160),     # MobileNetV2's last stage: 49 columns, ragged GEMM panels
    (2, 16, 5, 9, 33),       # M past whole micro-panels, two images
    (3, 7, 1, 1, 5),         # one pixel: the GEMM's narrowest panel
    (1, 300, 12, 12, 7),     # K past one K slice
]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("geom", POINTWISE_GEOMETRIES, ids=lambda g: "x".join(map(str, g)))
def test_pointwise_conv_matches_float64(geom, threads):
    N, C, H, W, M = geom
    x, w, b = rand(N, C, H, W), rand(M, C, 1, 1, scale=0.2), rand(M)
    act = ACT_RELU if threads == 1 else ACT_SIGMOID
    y = np.full((N, M, H, W), np.nan, np.float32)
    conv.PointwiseConvStep(x, conv_binder.pointwise_weights(w), b, y, act, 0.0, 0.0, threads)()
    check(y, x, w, b, (1, 1), (0, 0, 0, 0), (1, 1), 1, act)
    y = np.full((N, M, H, W), np.nan, np.float32)
    conv.PointwiseConvStep(x, conv_binder.pointwise_weights(w), None, y, 0, 0.0, 0.0, threads)()
    check(y, x, w, None, (1, 1), (0, 0, 0, 0), (1, 1), 1, 0)


def test_pointwise_conv_arguments_are_checked():
    x, w = rand(1, 8, 4, 4), rand(5, 8, 1, 1)
    packed = conv_binder.pointwise_weights(w)
    y = np.empty((1, 5, 4, 4), np.float32)
    with pytest.raises(ValueError, match="packed weights hold"):
        conv.PointwiseConvStep(x, packed[:-1], None, y, 0, 0.0, 0.0, 1)
    with pytest.raises(ValueError, match="bias"):
        conv.PointwiseConvStep(x, packed, rand(4), y, 0, 0.0, 0.0, 1)
    with pytest.raises(ValueError, match="does not match"):
        conv.PointwiseConvStep(x, packed, None, np.empty((1, 5, 4, 3), np.float32), 0, 0.0,
                               0.0, 1)
    with pytest.raises(ValueError, match="needs"):
        conv.pack_pointwise_weights(w, packed[:-1])


def test_pointwise_path_repacks_run_time_weights():
    x, w = rand(2, 40, 7, 7), rand(24, 40, 1, 1, scale=0.1)
    sess, cnode, step = session_conv({"x": x, "w": w}, {}, attrs1x1())
    assert getattr(step, "packed", None) == "pointwise"
    for _ in range(2):   # new weights each run: the packed copy follows them
        w = rand(24, 40, 1, 1, scale=0.1)
        got = sess.run(None, {"x": x, "w": w})[0]
        np.testing.assert_allclose(got, reference(cnode, {"x": x, "w": w}), rtol=0,
                                   atol=1e-5 * np.abs(got).max())


def test_direct_conv_arguments_are_checked():
    x, w, y = rand(1, 3, 8, 8), rand(4, 3, 3, 3), np.empty((1, 4, 8, 8), np.float32)
    packed = conv_binder.direct_weights(w)
    scr = np.empty(conv.direct_conv_scratch_floats(3, 4, 3, 3, 8, 8, 1, 1, 1, 1, 1), np.float32)
    with pytest.raises(ValueError, match="scratch"):
        conv.DirectConvStep(x, packed, None, y, scr[:-1], 3, 3, 1, 1, 1, 1, 1, 1, 0, 0.0, 0.0, 1)
    with pytest.raises(ValueError, match="packed weights hold"):
        conv.DirectConvStep(x, packed[:-1], None, y, scr, 3, 3, 1, 1, 1, 1, 1, 1, 0, 0.0, 0.0, 1)
    with pytest.raises(ValueError, match="bias"):
        conv.DirectConvStep(x, packed, rand(2), y, scr, 3, 3, 1, 1, 1, 1, 1, 1, 0, 0.0, 0.0, 1)
    with pytest.raises(ValueError, match="needs"):
        conv.pack_direct_conv_weights(w, packed[:-1])


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_empty_batch_is_a_no_op(threads):
    """N = 0 at the kernel: the direct step used to divide by N when the batch was smaller than
    the team (SIGFPE, the process gone); both steps must do nothing and leave y alone."""
    x, w = np.empty((0, 3, 8, 8), np.float32), rand(4, 3, 3, 3)
    y = np.empty((0, 4, 8, 8), np.float32)
    scr = np.empty(max(1, conv.direct_conv_scratch_floats(3, 4, 3, 3, 8, 8, 1, 1, 1, 1, threads)),
                   np.float32)
    conv.DirectConvStep(x, conv_binder.direct_weights(w), None, y, scr, 3, 3, 1, 1, 1, 1, 1, 1,
                        0, 0.0, 0.0, threads)()
    conv.PackedConvStep(x, conv_binder.packed_weights(w, 1), None, y, None, 3, 3, 1, 1, 1, 1,
                        1, 1, 1, 0, 0.0, 0.0, threads)()


def test_packed_conv_without_bias():
    x, w = rand(2, 16, 6, 6), rand(33, 16, 3, 3, scale=0.2)
    got = run_packed(x, w, None, (1, 1), (1, 1, 1, 1), (1, 1), 1)
    check(got, x, w, None, (1, 1), (1, 1, 1, 1), (1, 1), 1, 0)


def test_packed_weights_layout_is_checked():
    w = rand(16, 8, 3, 3)
    n = conv.packed_conv_weight_floats(16, 8, 3, 3, 1)
    good = conv_binder.aligned_floats(n)
    with pytest.raises(ValueError, match="64-byte"):
        conv.pack_conv_weights(w, conv_binder.aligned_floats(n + 1)[1:], 1)
    with pytest.raises(ValueError, match="needs"):
        conv.pack_conv_weights(w, good[:n - 1], 1)
    with pytest.raises(ValueError, match="groups"):
        conv.pack_conv_weights(w, good, 3)
    conv.pack_conv_weights(w, good, 1)
    x, y = rand(1, 8, 5, 5), np.empty((1, 16, 5, 5), np.float32)
    scr = np.empty(conv.packed_conv_scratch_floats(1, 8, 16, 3, 3, 5, 5, 1, 1), np.float32)
    with pytest.raises(ValueError, match="scratch"):
        conv.PackedConvStep(x, good, None, y, scr[:-1], 3, 3, 1, 1, 1, 1, 1, 1, 1, 0, 0.0, 0.0, 1)
    with pytest.raises(ValueError, match="packed weights hold"):
        conv.PackedConvStep(x, good[:-16], None, y, scr, 3, 3, 1, 1, 1, 1, 1, 1, 1, 0, 0.0, 0.0, 1)
    with pytest.raises(ValueError, match="bias"):
        conv.PackedConvStep(x, good, rand(3), y, scr, 3, 3, 1, 1, 1, 1, 1, 1, 1, 0, 0.0, 0.0, 1)


# ---- dispatch from the Conv binder ----------------------------------------------------------
def session_conv(feeds, consts, attrs, threads=2):
    node = Node("Conv", list(feeds) + list(consts), ["y"], attrs=dict(attrs), name="node")
    types = {k: TensorType(v.dtype, v.shape) for k, v in {**feeds, **consts}.items()}
    g = Graph(nodes=[node], inputs=list(feeds), outputs=["y"], initializers=dict(consts),
              types=types)
    sess = Session(g, threads=threads, optimize=False)
    (cnode, step), = sess.compile(None).acquire().steps
    return sess, cnode, step


def reference(cnode, values):
    return op_named("Conv").compute(cnode, [values[i] for i in cnode.inputs])[0]


def attrs3x3(stride=1):
    return dict(kernel_shape=[3, 3], strides=[stride, stride], pads=[1, 1, 1, 1],
                dilations=[1, 1], group=1)


def attrs1x1():
    return dict(kernel_shape=[1, 1], strides=[1, 1], pads=[0, 0, 0, 0], dilations=[1, 1],
                group=1)


@pytest.mark.parametrize("k,kind", [(1, "PointwiseConvStep"), (3, "PackedConvStep")])
def test_small_plane_wide_layer_takes_a_packed_weights_path(k, kind):
    """ResNet's and MobileNet's last stages in miniature: a 1×1 conv on a 7×7 plane (the
    pointwise GEMM on weights packed once), a 3×3/2 from 14×14 to 7×7 (the packed conv); 128
    outputs."""
    x = rand(1, 160, 7, 7) if k == 1 else rand(1, 64, 14, 14)
    w, b = rand(128, x.shape[1], k, k, scale=0.05), rand(128)
    sess, cnode, step = session_conv({"x": x}, {"w": w, "b": b},
                                     attrs1x1() if k == 1 else attrs3x3(2))
    assert type(step).__name__ == kind
    got = sess.run(None, {"x": x})[0]
    np.testing.assert_allclose(got, reference(cnode, {"x": x, "w": w, "b": b}), rtol=0,
                               atol=1e-5 * np.abs(got).max())


def test_first_layer_takes_the_direct_path():
    x, w, b = rand(2, 3, 32, 32), rand(16, 3, 7, 7, scale=0.1), rand(16)
    attrs = dict(kernel_shape=[7, 7], strides=[2, 2], pads=[3, 3, 3, 3], dilations=[1, 1],
                 group=1)
    sess, cnode, step = session_conv({"x": x}, {"w": w, "b": b}, attrs)
    assert type(step).__name__ == "DirectConvStep"
    got = sess.run(None, {"x": x})[0]
    np.testing.assert_allclose(got, reference(cnode, {"x": x, "w": w, "b": b}), rtol=0,
                               atol=1e-5 * np.abs(got).max())


def test_direct_path_with_a_huge_column_stride():
    """A column stride far past the kernel (an output one column wide): the direct conv used to
    prepare one phase plane per unit of stride, C·sw·PS floats of scratch (3 GB at sw = 3·10⁶,
    a refused 984 GB arena at 10⁹); the taps only reach (KW − 1)·dw + 1 phases."""
    x, w, b = rand(2, 3, 20, 20), rand(8, 3, 3, 3, scale=0.2), rand(8)
    attrs = dict(kernel_shape=[3, 3], strides=[1, 10 ** 9], pads=[1, 1, 1, 1], dilations=[1, 1],
                 group=1)
    assert conv.direct_conv_scratch_floats(3, 8, 3, 3, 20, 1, 1, 10 ** 9, 1, 1, 1) < 10 * x.size
    sess, cnode, step = session_conv({"x": x}, {"w": w, "b": b}, attrs)
    assert type(step).__name__ == "DirectConvStep"
    got = sess.run(None, {"x": x})[0]
    assert got.shape == (2, 8, 20, 1)
    # one output column, so the stride never applies: the conv of the first two input columns
    check(got, np.ascontiguousarray(x[..., :2]), w, b, (1, 1), (1, 1, 1, 0), (1, 1), 1, 0)


def test_huge_dilation_keeps_the_direct_conv_out():
    """Dilation 1000 with pads to match on a 6×6 image: the direct conv's prepared image would be
    ~2000² zeros a channel (and a refused 43 GB arena at dilation 30,000); im2col needs a few
    hundred floats, so the binder takes the GEMM."""
    x, w, b = rand(1, 3, 6, 6), rand(8, 3, 3, 3, scale=0.2), rand(8)
    d = 1000
    attrs = dict(kernel_shape=[3, 3], strides=[1, 1], pads=[d] * 4, dilations=[d, d], group=1)
    sess, cnode, step = session_conv({"x": x}, {"w": w, "b": b}, attrs)
    assert type(step).__name__ == "Conv2dStep"
    got = sess.run(None, {"x": x})[0]
    # only the centre tap lands inside the image: y = w[:, :, 1, 1]·x + b
    want = np.einsum("mc,nchw->nmhw", w[:, :, 1, 1].astype(np.float64), x) + b[:, None, None]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("shape,algo", [((128, 64, 14, 14), "packed"), ((16, 3, 14, 14), "direct")])
def test_packed_path_repacks_run_time_weights(shape, algo):
    M, C, H, W = shape
    x, w = rand(1, C, H, W), rand(M, C, 3, 3, scale=0.05)
    sess, cnode, step = session_conv({"x": x, "w": w}, {}, attrs3x3(2))
    assert getattr(step, "packed", None) == algo
    for _ in range(2):   # new weights each run: the packed copy follows them
        w = rand(M, C, 3, 3, scale=0.05)
        got = sess.run(None, {"x": x, "w": w})[0]
        np.testing.assert_allclose(got, reference(cnode, {"x": x, "w": w}), rtol=0,
                                   atol=1e-5 * np.abs(got).max())


def test_big_planes_keep_the_gemm_and_the_switch_turns_packing_off(monkeypatch):
    x, w = rand(1, 16, 28, 28), rand(128, 16, 3, 3, scale=0.05)
    _, _, step = session_conv({"x": x}, {"w": w}, attrs3x3())
    assert type(step).__name__ == "Conv2dStep"
    monkeypatch.setenv("EMBER_PACKED_CONV", "0")
    _, _, step = session_conv({"x": rand(1, 64, 14, 14)}, {"w": rand(128, 64, 3, 3)},
                              attrs3x3(2))
    assert type(step).__name__ != "PackedConvStep"


def test_tuning_measures_the_packed_and_direct_candidates(monkeypatch):
    monkeypatch.setenv("EMBER_TUNE", "1")
    monkeypatch.delenv("EMBER_TUNE_CACHE", raising=False)
    tuning.forget()
    calls = []
    real = tuning.measure

    def counting(candidates):
        calls.append(sorted(candidates))
        return real(candidates)
    monkeypatch.setattr(tuning, "measure", counting)
    try:
        case = conv_binder.ConvCase(2, (1, 32, 9, 9), (48, 32, 3, 3), (1, 48, 5, 5),
                                    conv_binder.Window(2, 2, 1, 1, 1, 1, 1, 1), 1)
        assert conv_binder.conv_algorithm(case, 1) in ("gemm", "packed", "direct", "direct_ch")
        assert calls == [["direct", "direct_ch", "gemm", "packed"]]
    finally:
        tuning.forget()


# ---- every conv algorithm the tuner may pick, on random geometries ------------------------------
def random_geometries(count, seed, pointwise=False):
    """Fixed-seed random group-1 geometries (N, C, H, W, M, KH, KW, stride, pads, dilation),
    each with an output of at least one pixel; ``pointwise``: 1×1, stride 1, no pads."""
    rng = np.random.default_rng(seed)
    made = []
    while len(made) < count:
        N, C, M = int(rng.integers(1, 3)), int(rng.integers(1, 40)), int(rng.integers(1, 70))
        H, W = (int(v) for v in rng.integers(1, 24, 2))
        if pointwise:
            KH = KW = 1
            stride, pads, dil = (1, 1), (0, 0, 0, 0), (1, 1)
        else:
            KH, KW = (int(v) for v in rng.integers(1, 6, 2))
            stride = tuple(int(v) for v in rng.integers(1, 4, 2))
            pads = tuple(int(v) for v in rng.integers(0, 3, 4))
            dil = tuple(int(v) for v in rng.integers(1, 3, 2))
        if out_size(H, KH, stride[0], pads[0], pads[2], dil[0]) < 1 or \
                out_size(W, KW, stride[1], pads[1], pads[3], dil[1]) < 1:
            continue
        made.append((N, C, H, W, M, KH, KW, stride, pads, dil))
    return made


def algorithm_step(algo, geom, x, w, b, y, act, threads):
    """The step the Conv binder builds for ``algo`` (its packed weights and scratch)."""
    N, C, H, W, M, KH, KW, stride, pads, dil = geom
    window = conv_binder.Window(*stride, pads[0], pads[1], *dil, pads[2], pads[3])
    case = conv_binder.ConvCase(2, x.shape, w.shape, y.shape, window, 1)
    code = (act, 0.0, 0.0)
    if algo in conv_binder.DIRECT_ALGORITHMS:
        assert conv_binder.direct_allowed(case)
        scr = np.full(max(1, conv_binder.direct_scratch_floats(case, threads)), np.nan,
                      np.float32)
        return conv_binder.direct_step(case, x, conv_binder.direct_weights(w, algo), b, y, scr,
                                       code, threads, algo)
    if algo == "packed":
        scr = np.full(max(1, conv_binder.packed_scratch_floats(case, threads)), np.nan,
                      np.float32)
        return conv_binder.packed_step(case, x, conv_binder.packed_weights(w, 1), b, y, scr,
                                       code, threads)
    assert algo == "pointwise" and conv_binder.pointwise_allowed(case)
    return conv_binder.pointwise_step(case, x, conv_binder.pointwise_weights(w), b, y, None, code,
                                      threads)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("algo", ["direct", "direct_ch", "packed"])
@pytest.mark.parametrize("geom", random_geometries(24, 30), ids=lambda g: "x".join(map(str, g[:7])))
def test_every_algorithm_on_random_geometries(geom, algo, threads):
    """What tuning may choose for any group-1 conv, against float64 (scratch full of NaN: a
    kernel reading what it never wrote would show)."""
    N, C, H, W, M, KH, KW, stride, pads, dil = geom
    x, w, b = rand(N, C, H, W), rand(M, C, KH, KW, scale=0.3), rand(M)
    OH = out_size(H, KH, stride[0], pads[0], pads[2], dil[0])
    OW = out_size(W, KW, stride[1], pads[1], pads[3], dil[1])
    y = np.full((N, M, OH, OW), np.nan, np.float32)
    algorithm_step(algo, geom, x, w, b, y, ACT_RELU, threads)()
    check(y, x, w, b, stride, pads, dil, 1, ACT_RELU)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("algo", ["direct", "direct_ch", "packed", "pointwise"])
@pytest.mark.parametrize("geom", random_geometries(10, 31, pointwise=True),
                         ids=lambda g: "x".join(map(str, g[:5])))
def test_every_algorithm_on_random_pointwise_geometries(geom, algo, threads):
    N, C, H, W, M = geom[:5]
    x, w, b = rand(N, C, H, W), rand(M, C, 1, 1, scale=0.3), rand(M)
    y = np.full((N, M, H, W), np.nan, np.float32)
    algorithm_step(algo, geom, x, w, b, y, ACT_SIGMOID, threads)()
    check(y, x, w, b, (1, 1), (0, 0, 0, 0), (1, 1), 1, ACT_SIGMOID)
