"""Winograd F(2×2,3×3) / F(4×4,3×3) convolution (kernels/winograd.pyx) against a float64 numpy
conv written here, and its dispatch from the Conv and ConvGradInput binders.

Tolerance, from the Winograd error bound: a float32 conv's error per output is at most a small
multiple of ε·Σ|x|·|w| over its taps (B below, computed in float64). Winograd adds the rounding
of its transforms, whose coefficients scale that multiple: F(2,3)'s (0, ±½, ±1) keep it like a
direct sum (measured ≤ 1.4 on N(0,1) data, scales 1 and 100, C up to 512), F(4,3)'s (up to 8 and
1/24) raise it ~10–20× (measured ≤ 23). The tests allow κ·ε·B with κ = 8 (F2) and 100 (F4).
"""
import numpy as np
import pytest

from ember.graph.ir import Graph, Node, TensorType
from ember.graph.ops import get_op, op_named
from ember.kernels import winograd as wg
from ember.runtime.session import Session

rng = np.random.default_rng(20240612)
EPS = float(np.finfo(np.float32).eps)
KAPPA = {2: 8.0, 4: 100.0}


def rand(*shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def conv64(x, w, pads):
    """Cross-correlation of x (N,C,H,W) with w (M,C,3,3) in float64, pads (top, left, bottom,
    right); the output size is H + top + bottom − 2 (likewise W)."""
    N, C, H, W = x.shape
    M = w.shape[0]
    pt, pl, pb, pr = pads
    OH, OW = H + pt + pb - 2, W + pl + pr - 2
    xp = np.zeros((N, C, H + pt + pb, W + pl + pr))
    xp[:, :, pt:pt + H, pl:pl + W] = x
    y = np.zeros((N, M, OH, OW))
    for kh in range(3):
        for kw in range(3):
            y += np.einsum("nchw,mc->nmhw", xp[:, :, kh:kh + OH, kw:kw + OW],
                           w[:, :, kh, kw].astype(np.float64))
    return y


def bound(x, w, pads):
    return conv64(np.abs(x.astype(np.float64)), np.abs(w.astype(np.float64)), pads)


def weights(w, tile, grad_input=False, threads=1):
    rows, cols = (w.shape[1], w.shape[0]) if grad_input else (w.shape[0], w.shape[1])
    a2 = (tile + 2) ** 2
    U = np.full((a2, wg.winograd_weight_floats(rows, cols, tile) // a2), np.nan, np.float32)
    wg.winograd_weights(w, U, tile, grad_input, threads)
    return U


def run(x, U, bias, M, OH, OW, tile, pt, pl, act=0, a=0.0, b=0.0, threads=1, offset=0):
    N, C, H, W = x.shape
    y = np.full((N, M, OH, OW), np.nan, np.float32)
    need = wg.winograd_scratch_floats(N, C, H, W, M, OH, OW, tile, threads)
    scr = np.full(need + offset, np.nan, np.float32)[offset:]   # misaligned on purpose
    wg.conv2d_winograd(x, U, bias, y, scr, tile, pt, pl, act, a, b, threads)
    return y


SHAPES = [  # N, C, M, H, W, pads (top, left, bottom, right)
    (1, 1, 1, 1, 1, (1, 1, 1, 1)),
    (1, 3, 7, 5, 2, (1, 1, 1, 1)),
    (3, 7, 3, 13, 5, (0, 0, 0, 0)),
    (1, 16, 16, 28, 28, (1, 1, 1, 1)),
    (3, 24, 33, 2, 13, (1, 0, 0, 1)),
    (1, 33, 24, 13, 28, (0, 1, 1, 0)),
    (3, 16, 7, 5, 5, (2, 1, 0, 2)),
    (1, 24, 16, 28, 13, (1, 1, 0, 0)),
    (2, 7, 16, 3, 3, (0, 0, 0, 0)),
    (3, 3, 33, 28, 2, (1, 1, 1, 1)),
    # rows wide enough for the vectorised phase split (its edges one by one)
    (1, 5, 6, 9, 150, (1, 1, 1, 1)),
    (2, 4, 5, 6, 97, (0, 2, 1, 0)),
    # few tiles, many channels: at 2 threads one block, its phases split over the team
    (1, 128, 96, 14, 14, (1, 1, 1, 1)),
]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("tile", [2, 4])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[:5])) + f"p{s[5]}")
def test_conv_matches_float64(shape, tile, threads):
    N, C, M, H, W, pads = shape
    x, w, bias = rand(N, C, H, W), rand(M, C, 3, 3), rand(M)
    OH, OW = H + pads[0] + pads[2] - 2, W + pads[1] + pads[3] - 2
    got = run(x, weights(w, tile, threads=threads), bias, M, OH, OW, tile, pads[0], pads[1],
              threads=threads, offset=threads)
    want = conv64(x, w, pads) + bias[:, None, None]
    err = np.abs(got - want)
    assert np.all(err <= KAPPA[tile] * EPS * (bound(x, w, pads) + np.abs(bias)[:, None, None])
                  + 1e-30), f"max error {err.max():.3g}"


def test_many_tiles_per_thread_blocks():
    """Enough tiles for several blocks per thread (the per-thread scratch slots)."""
    x, w = rand(2, 16, 40, 36), rand(20, 16, 3, 3)
    for tile in (2, 4):
        got = run(x, weights(w, tile), None, 20, 40, 36, tile, 1, 1, threads=2)
        want = conv64(x, w, (1, 1, 1, 1))
        assert np.all(np.abs(got - want) <= KAPPA[tile] * EPS * bound(x, w, (1, 1, 1, 1)))


ACTS = {  # code -> (a, b, numpy twin)
    1: (0.0, 0.0, lambda v, a, b: np.maximum(v, 0)),
    2: (0.1, 0.0, lambda v, a, b: np.where(v >= 0, v, a * v)),
    5: (0.0, 0.0, lambda v, a, b: 1 / (1 + np.exp(-v))),
    7: (0.0, 0.0, lambda v, a, b: v * np.clip(v / 6 + 0.5, 0, 1)),
    8: (0.0, 0.0, lambda v, a, b: np.tanh(v)),
    10: (-0.5, 0.7, lambda v, a, b: np.clip(v, a, b)),
    17: (0.0, 0.0, lambda v, a, b: v / (1 + np.exp(-v))),
}


@pytest.mark.parametrize("tile", [2, 4])
@pytest.mark.parametrize("code", sorted(ACTS))
def test_fused_activation(code, tile):
    """Every activation a pass fuses into Conv, applied in the output transform's epilogue;
    these activations are 1.1-Lipschitz at most, so the conv's bound carries over (+ libm)."""
    a, b, twin = ACTS[code]
    x, w, bias = rand(3, 16, 9, 11), rand(24, 16, 3, 3, scale=0.3), rand(24)
    pads = (1, 0, 1, 1)
    got = run(x, weights(w, tile), bias, 24, 9, 10, tile, 1, 0, code, a, b, threads=2)
    want = twin(conv64(x, w, pads) + bias[:, None, None], a, b)
    tol = 1.1 * KAPPA[tile] * EPS * (bound(x, w, pads) + np.abs(bias)[:, None, None]) + 2e-7
    assert np.all(np.abs(got - want) <= tol)


@pytest.mark.parametrize("tile", [2, 4])
def test_grad_input_weights(tile):
    """dX of a 3×3 stride-1 conv = conv(dY, w flipped 180°, channels swapped), pads 2 − pad."""
    N, C, M, H, W, pt, pl = 2, 7, 16, 9, 6, 1, 0
    w, dy = rand(M, C, 3, 3), rand(N, M, H + pt + 1 - 2, W + pl - 2)   # bottom 1, right 0
    flipped = np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
    got = run(dy, weights(w, tile, grad_input=True), None, C, H, W, tile, 2 - pt, 2 - pl)
    pads = (2 - pt, 2 - pl, 2 - 1, 2 - 0)
    want = conv64(dy, flipped, pads)
    assert np.all(np.abs(got - want) <= KAPPA[tile] * EPS * bound(dy, flipped, pads))


def test_bad_arguments():
    x, w = rand(1, 4, 6, 6), rand(5, 4, 3, 3)
    U = weights(w, 2)
    y = np.empty((1, 5, 6, 6), np.float32)
    with pytest.raises(ValueError, match="scratch"):
        wg.conv2d_winograd(x, U, None, y, np.empty(16, np.float32), 2, 1, 1, 0, 0, 0, 1)
    scr = np.empty(wg.winograd_scratch_floats(1, 4, 6, 6, 5, 6, 6, 2, 1), np.float32)
    with pytest.raises(ValueError, match="U has shape"):
        wg.conv2d_winograd(x, weights(w, 4), None, y, scr, 2, 1, 1, 0, 0, 0, 1)
    with pytest.raises(ValueError, match="tile"):
        wg.conv2d_winograd(x, U, None, y, scr, 3, 1, 1, 0, 0, 0, 1)


# ---- dispatch through compiled Sessions ----------------------------------------------------------
def session_step(op_type, feeds, consts, attrs, threads=2):
    inputs = list(feeds) + list(consts)
    node = Node(op_type, inputs, ["y"], attrs=dict(attrs), name="node",
                domain=op_named(op_type).domain)
    types = {k: TensorType(v.dtype, v.shape) for k, v in {**feeds, **consts}.items()}
    g = Graph(nodes=[node], inputs=list(feeds), outputs=["y"], initializers=dict(consts),
              types=types)
    sess = Session(g, threads=threads, optimize=False)
    ctx = sess.compile(None).acquire()
    (cnode, step), = ctx.steps
    got = sess.run(None, feeds)[0]
    want = op_named(op_type).compute(cnode, [{**feeds, **consts}[i] for i in cnode.inputs])[0]
    return step, got, want, sess, cnode


def conv_attrs(k, stride, pads, **extra):
    return dict(kernel_shape=[k, k], strides=[stride, stride], pads=pads, dilations=[1, 1],
                group=1, **extra)


def close(got, want, tile):
    scale = float(np.max(np.abs(want)))
    np.testing.assert_allclose(got, want, rtol=0, atol=KAPPA[tile or 2] * 1e-5 * scale)


@pytest.mark.parametrize("runtime_weight", [False, True])
def test_session_conv_uses_winograd_for_a_big_3x3(runtime_weight):
    x, w, b = rand(1, 64, 28, 28), rand(64, 64, 3, 3, scale=0.05), rand(64)
    feeds, consts = ({"x": x, "w": w}, {"b": b}) if runtime_weight else ({"x": x}, {"w": w, "b": b})
    step, got, want, sess, cnode = session_step(
        "Conv", feeds, consts, conv_attrs(3, 1, [1, 1, 1, 1], activation="Relu"))
    assert getattr(step, "winograd_tile", 0) in (2, 4)
    close(got, want, step.winograd_tile)
    if runtime_weight:   # the same compiled session transforms new weights on the next run
        feeds = {"x": x, "w": rand(64, 64, 3, 3, scale=0.05)}
        want = get_op("Conv").compute(cnode, [{**feeds, **consts}[i] for i in cnode.inputs])[0]
        close(sess.run(None, feeds)[0], want, step.winograd_tile)


@pytest.mark.parametrize("k,stride,pads", [(1, 1, [0, 0, 0, 0]), (3, 2, [1, 1, 1, 1])])
def test_session_conv_keeps_gemm_for_1x1_and_strided(k, stride, pads):
    x, w = rand(1, 64, 28, 28), rand(64, 64, k, k, scale=0.05)
    step, got, want, *_ = session_step("Conv", {"x": x}, {"w": w}, conv_attrs(k, stride, pads))
    assert not getattr(step, "winograd_tile", 0)
    assert not getattr(step, "reference", False)
    close(got, want, 0)


def test_env_var_disables_winograd(monkeypatch):
    monkeypatch.setenv("EMBER_WINOGRAD", "0")
    x, w = rand(1, 64, 28, 28), rand(64, 64, 3, 3, scale=0.05)
    step, got, want, *_ = session_step("Conv", {"x": x}, {"w": w}, conv_attrs(3, 1, [1, 1, 1, 1]))
    assert not getattr(step, "winograd_tile", 0) and not getattr(step, "reference", False)
    close(got, want, 0)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("pads", [[1, 1, 1, 1], [0, 1, 1, 0], [2, 0, 1, 2]])
def test_session_conv_grad_input_via_winograd(pads, threads):
    """ConvGradInput of a 3×3 stride-1 conv runs the Winograd conv of dY with the flipped,
    channel-swapped weights; equal to the op's numpy reference."""
    N, C, M, H, W = 4, 48, 64, 22, 19
    OH, OW = H + pads[0] + pads[2] - 2, W + pads[1] + pads[3] - 2
    dy, w = rand(N, M, OH, OW), rand(M, C, 3, 3, scale=0.1)
    attrs = dict(strides=[1, 1], pads=pads, dilations=[1, 1], group=1,
                 input_shape=[N, C, H, W])
    step, got, want, *_ = session_step("ConvGradInput", {"dy": dy, "w": w}, {}, attrs, threads)
    assert getattr(step, "winograd_tile", 0) in (2, 4)
    close(got, want, step.winograd_tile)
