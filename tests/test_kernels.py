"""ember's Cython kernels against small, obvious numpy twins written here (float64 oracles).

Tolerances (float32 kernels vs float64 twins): elementwise/pool rtol 1e-5, atol 1e-6 (one or a
few float32 roundings); gemm/conv atol 1e-5·K·scale (accumulation order differs: blocked FMA
sums vs float64 dot) with rtol 1e-4; transcendental activations rtol 1e-5, atol 1e-5 (libm
expf/tanhf are within a few ulp).
"""
import math

import numpy as np
import pytest

from ember.kernels import act_grad, conv, elementwise, gemm, normalization, pool, softmax

THREADS = [1, 2]
rng = np.random.default_rng(1234)


def rand(*shape):
    return rng.standard_normal(shape).astype(np.float32)


# ----------------------------------------------------------------------------- activations
def act_twin(v, code, a, b):
    v = v.astype(np.float64)
    with np.errstate(all="ignore"):
        table = {
            0: lambda: v,
            1: lambda: np.maximum(v, 0),
            2: lambda: np.where(v >= 0, v, a * v),
            3: lambda: np.where(v > 0, v, a * (np.exp(v) - 1)),
            4: lambda: np.where(v > 0, b * v, b * a * (np.exp(v) - 1)),
            5: lambda: 1 / (1 + np.exp(-v)),
            6: lambda: np.clip(a * v + b, 0, 1),
            7: lambda: v * np.clip(v / 6 + 0.5, 0, 1),
            8: lambda: np.tanh(v),
            9: lambda: np.log1p(np.exp(-np.abs(v))) + np.maximum(v, 0),
            10: lambda: np.minimum(np.maximum(v, a), b),
            11: lambda: np.exp(v),
            12: lambda: np.log(v),
            13: lambda: np.sqrt(v),
            14: lambda: -v,
            15: lambda: np.abs(v),
            16: lambda: 1 / v,
            17: lambda: v / (1 + np.exp(-v)),
            18: lambda: erf64(v),
            19: lambda: gelu64(v, a),
        }
        return table[code]()


def erf64(v):
    return np.array([math.erf(t) for t in np.asarray(v, np.float64).reshape(-1)]).reshape(
        np.shape(v))


def gelu64(v, a):
    """GELU in double: exact (a = 0) or the tanh form (a ≠ 0)."""
    v = np.asarray(v, np.float64)
    if a:
        return 0.5 * v * (1 + np.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v ** 3)))
    return 0.5 * v * (1 + erf64(v / math.sqrt(2)))


ACT_ARGS = {2: (0.1, 0.0), 3: (0.7, 0.0), 4: (1.67, 1.05), 6: (0.2, 0.5), 10: (-0.5, 0.8)}
N_CODES = 20


@pytest.mark.parametrize("code", range(N_CODES))
@pytest.mark.parametrize("nthreads", THREADS)
def test_unary_against_twin(code, nthreads):
    a, b = ACT_ARGS.get(code, (0.0, 0.0))
    x = rand(40000) * 3
    if code in (12, 13):
        x = np.abs(x) + 0.1
    if code == 16:
        x = np.where(np.abs(x) < 0.1, 0.5, x).astype(np.float32)
    y = np.empty_like(x)
    elementwise.unary(x, y, code, a, b, nthreads)
    np.testing.assert_allclose(y, act_twin(x, code, a, b), rtol=1e-5, atol=1e-5)


def test_unary_in_place_and_constants():
    x = rand(1001)
    expect = np.maximum(x, 0)
    elementwise.unary(x, x, elementwise.ACT_RELU, 0.0, 0.0, 2)
    np.testing.assert_array_equal(x, expect)
    assert elementwise.ACT_SILU == 17 and elementwise.OP_PRELU == 7
    assert elementwise.ACT_ERF == 18 and elementwise.ACT_GELU == 19


def test_erf_accuracy_dense_sweep():
    """The vector erf (kernels/vector_exp.h: x + x·P(x²) below 0.921875, 1 − exp(−|x|·(1 +
    Q(|x|))) above) against math.erf in double over 2·10⁵ evenly spaced points of [-5, 5] plus
    tiny, signed-zero and infinite inputs: measured max 0.98 ulp with FMA (AVX2), 1.11 ulp
    without (generic), 6.6e-8 absolute (1.2·10⁶ points of [-6, 6]); asserted ≤ 1.5 ulp and
    1e-7 absolute. NaN passes through."""
    x = np.concatenate([np.linspace(-5, 5, 200_001), [0.0, -0.0, 1e-30, -1e-30, 1e-6, 50.0,
                                                       -50.0, np.inf, -np.inf]]).astype(np.float32)
    y = np.empty_like(x)
    elementwise.unary(x, y, elementwise.ACT_ERF, 0.0, 0.0, 1)
    ref = erf64(x)
    err = np.abs(y.astype(np.float64) - ref)
    ulp = np.spacing(np.abs(ref).astype(np.float32)).astype(np.float64)
    assert err.max() <= 1e-7 and (err / ulp).max() <= 1.5, (err.max(), (err / ulp).max())
    nan = np.full(9, np.nan, np.float32)
    elementwise.unary(nan, nan, elementwise.ACT_ERF, 0.0, 0.0, 1)
    assert np.isnan(nan).all()


@pytest.mark.parametrize("code,a", [(18, 0.0), (19, 0.0), (19, 1.0)],
                         ids=["erf", "gelu", "gelu_tanh"])
def test_erf_gelu_gradients_against_central_differences(code, a):
    """ActivationGrad's erf/Gelu codes (dx = dy·f'(x)) against central differences of the
    double twins, h = 1e-4: truncation O(h²) ≈ 1e-8, well under the float32 rtol 1e-5."""
    x = np.linspace(-6, 6, 2001).astype(np.float32)
    dy = rand(x.size)
    dx = np.empty_like(x)
    act_grad.activation_grad(dy, x, dx, code, a, 0.0, 2)
    h, xd = 1e-4, x.astype(np.float64)
    slope = (act_twin(xd + h, code, a, 0) - act_twin(xd - h, code, a, 0)) / (2 * h)
    np.testing.assert_allclose(dx, dy * slope, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("approximate", [0.0, 1.0])
def test_gelu_both_forms(approximate):
    """Gelu's vector loop and scalar tail against double: within 2e-6 relative + 1e-6 absolute
    (erf ≤ 1.1 ulp, tanh a few, times x, plus the 1 + g rounding; the exact form loses the tiny
    negative tail below x ≈ -5.5, which is under 2e-7 in size)."""
    x = (np.linspace(-8, 8, 4003)).astype(np.float32)
    y = np.empty_like(x)
    elementwise.unary(x, y, elementwise.ACT_GELU, approximate, 0.0, 2)
    np.testing.assert_allclose(y, gelu64(x, approximate), rtol=2e-6, atol=1e-6)


def test_unary_extreme_inputs_stay_finite():
    x = np.array([-100.0, -30.0, 0.0, 30.0, 100.0], np.float32)
    for code in (5, 9, 17):
        y = np.empty_like(x)
        elementwise.unary(x, y, code, 0.0, 0.0, 1)
        assert np.all(np.isfinite(y))
        np.testing.assert_allclose(y, act_twin(x, code, 0, 0), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- binary
def binop_twin(a, b, op):
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    with np.errstate(all="ignore"):
            return [a + b, a - b, a * b, a / b, np.maximum(a, b), np.minimum(a, b),
                np.power(a, b), np.where(a >= 0, a, a * b)][op]


def operands(shape_a, shape_b, op):
    a = rand(*shape_a)
    b = rand(*shape_b)
    if op == 3:
        b = np.where(np.abs(b) < 0.1, 1.0, b).astype(np.float32)
    if op == 6:
        a = np.abs(a) + 0.5
    return a, b


@pytest.mark.parametrize("op", range(8))
@pytest.mark.parametrize("nthreads", THREADS)
def test_binary_same_shape(op, nthreads):
    a, b = operands((50001,), (50001,), op)
    y = np.empty_like(a)
    elementwise.binary(a, b, y, op, nthreads)
    np.testing.assert_allclose(y, binop_twin(a, b, op), rtol=1e-5, atol=1e-6)


def test_binary_in_place():
    a, b = rand(999), rand(999)
    expect = a * b
    elementwise.binary(a, b, a, elementwise.OP_MUL, 2)
    np.testing.assert_array_equal(a, expect)


def broadcast_strides(shape, out_shape):
    """Element strides of a C-contiguous `shape` over `out_shape` (0 on broadcast axes)."""
    shape = (1,) * (len(out_shape) - len(shape)) + tuple(shape)
    strides, step = [], 1
    for dim in reversed(shape):
        strides.append(step if dim != 1 else 0)
        step *= dim
    return np.array(strides[::-1], np.int64)


BROADCASTS = [
    ((2, 7, 5, 3), (7, 1, 1)),        # per-channel
    ((2, 7, 5, 3), (1,)),             # scalar
    ((3, 1, 5), (1, 4, 1)),           # outer product
    ((13,), (13,)),
    ((2, 3, 4, 5, 2, 3, 2, 3), (4, 1, 2, 1, 2, 1)),  # rank 8
    ((1, 200, 300), (200, 1)),        # long rows
    ((4, 1), (4, 60000)),             # a broadcast along a long inner dim
]


@pytest.mark.parametrize("shapes", BROADCASTS)
@pytest.mark.parametrize("op", range(8))
@pytest.mark.parametrize("nthreads", THREADS)
def test_binary_broadcast(shapes, op, nthreads):
    sa, sb = shapes
    a, b = operands(sa, sb, op)
    out_shape = np.broadcast_shapes(sa, sb)
    y = np.empty(out_shape, np.float32)
    elementwise.binary_broadcast(a.ravel(), broadcast_strides(sa, out_shape), b.ravel(),
                                 broadcast_strides(sb, out_shape), y.ravel(),
                                 np.array(out_shape, np.int64), op, nthreads)
    np.testing.assert_allclose(y, binop_twin(a, b, op), rtol=1e-5, atol=1e-6)


def test_binary_broadcast_in_place():
    a, b = rand(3, 4, 5), rand(4, 1)
    expect = a - b
    flat = a.ravel()
    elementwise.binary_broadcast(flat, broadcast_strides(a.shape, a.shape), b.ravel(),
                                 broadcast_strides(b.shape, a.shape), flat,
                                 np.array(a.shape, np.int64), elementwise.OP_SUB, 2)
    np.testing.assert_array_equal(a, expect)


# ----------------------------------------------------------------------------- gemm
def gemm_twin(A, B, Y0, ta, tb, alpha, beta, bias, axis, act, aa, ab):
    a = A.astype(np.float64).T if ta else A.astype(np.float64)
    b = B.astype(np.float64).T if tb else B.astype(np.float64)
    out = alpha * (a @ b)
    if beta != 0:
        out = out + beta * Y0
    if bias is not None:
        out = out + (bias[None, :] if axis == 1 else bias[:, None])
    return act_twin(out, act, aa, ab)


def run_gemm(M, N, K, ta, tb, alpha, beta, bias_axis, act, nthreads, aa=0.1, ab=0.0):
    A = rand(K, M) if ta else rand(M, K)
    B = rand(N, K) if tb else rand(K, N)
    Y0 = rand(M, N)
    bias = None if bias_axis is None else rand(N if bias_axis == 1 else M)
    Y = Y0.copy()
    gemm.gemm(A, B, Y, ta, tb, alpha, beta, bias, 1 if bias_axis is None else bias_axis, act,
              aa, ab, nthreads)
    expect = gemm_twin(A, B, Y0, ta, tb, alpha, beta, bias, bias_axis, act, aa, ab)
    np.testing.assert_allclose(Y, expect, rtol=1e-4, atol=1e-5 * max(K, 1) * max(abs(alpha), 1))


@pytest.mark.parametrize("ta", [False, True])
@pytest.mark.parametrize("tb", [False, True])
@pytest.mark.parametrize("bias_axis", [None, 0, 1])
@pytest.mark.parametrize("act", [0, 1, 2, 5, 10])
@pytest.mark.parametrize("nthreads", THREADS)
def test_gemm_combinations(ta, tb, bias_axis, act, nthreads):
    aa, ab = ACT_ARGS.get(act, (0.1, 0.0))
    run_gemm(37, 53, 29, ta, tb, 1.0, 0.0, bias_axis, act, nthreads, aa, ab)


@pytest.mark.parametrize("M,N,K", [(1, 1, 1), (5, 3, 1), (6, 16, 256), (7, 17, 257),
                                   (13, 24, 7), (145, 33, 300), (1, 700, 64), (300, 1, 50),
                                   (300, 500, 700)])
@pytest.mark.parametrize("nthreads", THREADS)
def test_gemm_shapes(M, N, K, nthreads):
    run_gemm(M, N, K, False, False, 1.0, 0.0, None, 0, nthreads)


@pytest.mark.parametrize("alpha,beta", [(0.5, 1.0), (1.0, -2.0), (2.0, 0.5), (0.0, 0.25)])
@pytest.mark.parametrize("nthreads", THREADS)
def test_gemm_alpha_beta(alpha, beta, nthreads):
    run_gemm(31, 45, 270, True, False, alpha, beta, 1, 1, nthreads)


# M <= 4 takes the unpacked gemv-like path (FC layers at batch 1): every layout, bias axis and
# beta, with N spanning several 256-column chunks and K not a multiple of the 16 dot lanes.
@pytest.mark.parametrize("M", [1, 3])
@pytest.mark.parametrize("ta", [False, True])
@pytest.mark.parametrize("tb", [False, True])
@pytest.mark.parametrize("alpha,beta,bias_axis", [(1.0, 0.0, 1), (0.5, 1.0, 0), (2.0, -0.5, None)])
@pytest.mark.parametrize("nthreads", THREADS)
def test_gemm_small_m(M, ta, tb, alpha, beta, bias_axis, nthreads):
    run_gemm(M, 700, 203, ta, tb, alpha, beta, bias_axis, 1, nthreads)


def test_gemm_beta_zero_ignores_garbage_in_y():
    A, B = rand(9, 11), rand(11, 20)
    Y = np.full((9, 20), np.nan, np.float32)
    gemm.gemm(A, B, Y, False, False, 1.0, 0.0, None, 1, 0, 0.0, 0.0, 2)
    np.testing.assert_allclose(Y, A.astype(np.float64) @ B, rtol=1e-4, atol=1e-4)


def act_f32(v, code, a, b):
    """The compare-only activations in float32, as the scalar epilogue writes them."""
    if code == 1:
        return np.where(v < 0, np.float32(0), v)
    if code == 2:
        return np.where(v >= 0, v, np.float32(a) * v)
    if code == 10:
        v = np.where(v < np.float32(a), np.float32(a), v)
        return np.where(v > np.float32(b), np.float32(b), v)
    return v


# Full MR × NR tiles apply bias and the compare-only activations in the micro-kernel's registers,
# ragged tiles after storing: both must give the bits of the product, plus the bias in float32,
# then the activation — and NaN must pass ReLU and Clip as their formulas let it.
@pytest.mark.parametrize("bias_axis", [0, 1])
@pytest.mark.parametrize("act", [0, 1, 2, 10])
@pytest.mark.parametrize("accumulate", [False, True])
@pytest.mark.parametrize("nthreads", THREADS)
def test_gemm_epilogue_in_registers_is_bit_exact(bias_axis, act, accumulate, nthreads):
    aa, ab = ACT_ARGS.get(act, (0.1, 0.0))
    M, N, K = 37, 85, 300            # 6 × 16 tiles, ragged rows and columns, two K slices
    A, B = rand(M, K), rand(K, N)
    A[3, 7] = np.nan                 # row 3 of the product is NaN
    Y0 = rand(M, N)
    bias = rand(N if bias_axis == 1 else M)
    beta = 1.0 if accumulate else 0.0
    plain = Y0.copy()
    gemm.gemm(A, B, plain, False, False, 1.0, beta, None, 1, 0, 0.0, 0.0, nthreads)
    fused = Y0.copy()
    gemm.gemm(A, B, fused, False, False, 1.0, beta, bias, bias_axis, act, aa, ab, nthreads)
    expect = act_f32(plain + (bias[None, :] if bias_axis == 1 else bias[:, None]), act, aa, ab)
    np.testing.assert_array_equal(fused, expect)
    assert np.isnan(fused[3]).all() and not np.isnan(np.delete(fused, 3, axis=0)).any()


def test_gemm_k_zero_gives_bias_only():
    A, B = np.zeros((4, 0), np.float32), np.zeros((0, 5), np.float32)
    Y = np.full((4, 5), 7.0, np.float32)
    bias = np.arange(5, dtype=np.float32)
    gemm.gemm(A, B, Y, False, False, 1.0, 0.0, bias, 1, 0, 0.0, 0.0, 1)
    np.testing.assert_array_equal(Y, np.tile(bias, (4, 1)))


# ----------------------------------------------------------------------------- conv
def conv_twin(x, w, bias, stride, pads, dil, group, out_hw):
    """Direct ONNX cross-correlation in float64: pad, then sum over (c, kh, kw) per output."""
    N, C, H, W = x.shape
    M, Cg, KH, KW = w.shape
    OH, OW = out_hw
    pt, pl = pads
    big = np.zeros((N, C, H + pt + KH * dil[0] + OH * stride[0],
                    W + pl + KW * dil[1] + OW * stride[1]))
    big[:, :, pt:pt + H, pl:pl + W] = x
    y = np.zeros((N, M, OH, OW))
    Mg = M // group
    for m in range(M):
        g = m // Mg
        for kh in range(KH):
            for kw in range(KW):
                r0, c0 = kh * dil[0], kw * dil[1]
                patch = big[:, g * Cg:(g + 1) * Cg, r0:r0 + OH * stride[0]:stride[0],
                            c0:c0 + OW * stride[1]:stride[1]]
                y[:, m] += np.einsum("nchw,c->nhw", patch, w[m, :, kh, kw])
        if bias is not None:
            y[:, m] += bias[m]
    return y


def out_size(n, k, s, p0, p1, d):
    return (n + p0 + p1 - d * (k - 1) - 1) // s + 1


CONV_CASES = [
    # N, C, H, W, M, KH, KW, stride, pads (t, l, b, r), dil, group
    (1, 3, 9, 11, 7, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),
    (2, 13, 8, 8, 24, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1), 1),    # pointwise -> gemm on x
    (3, 8, 6, 5, 12, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1), 4),     # grouped pointwise
    (2, 7, 13, 13, 5, 3, 3, (2, 2), (1, 1, 1, 1), (1, 1), 1),   # stride 2, odd input
    (1, 4, 15, 12, 6, 3, 2, (1, 2), (2, 0, 1, 3), (2, 1), 2),   # asymmetric pads, dilation
    (2, 6, 9, 9, 9, 5, 5, (1, 1), (2, 2, 2, 2), (1, 1), 3),
    (1, 2, 7, 7, 3, 1, 1, (2, 2), (0, 0, 0, 0), (1, 1), 1),     # 1x1 stride 2 -> im2col
    (4, 3, 10, 10, 8, 3, 3, (1, 1), (0, 0, 0, 0), (1, 1), 1),   # batch split over threads
    (1, 1, 6, 6, 1, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),
    # >= 256 output pixels: implicit im2col (B panels packed straight from the image)
    (1, 5, 20, 21, 7, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),   # panels cross output rows
    (2, 3, 40, 37, 6, 7, 7, (2, 2), (3, 3, 2, 1), (1, 1), 1),   # stem-like 7x7 stride 2
    (1, 4, 19, 36, 4, 3, 3, (1, 1), (0, 2, 1, 0), (2, 3), 2),   # dilation, groups, wide rows
    (1, 3, 18, 46, 5, 2, 3, (1, 3), (1, 0, 0, 2), (1, 1), 1),   # stride 3 along W
    # depthwise
    (2, 13, 11, 9, 13, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 13),
    (1, 7, 12, 13, 7, 3, 3, (2, 2), (1, 1, 1, 1), (1, 1), 7),
    (1, 24, 10, 10, 24, 3, 3, (1, 1), (0, 2, 1, 0), (1, 1), 24),
    (2, 7, 14, 9, 7, 5, 5, (2, 1), (2, 2, 2, 2), (1, 1), 7),
    (1, 5, 9, 9, 5, 3, 3, (1, 1), (2, 2, 2, 2), (2, 2), 5),
    (1, 6, 3, 2, 6, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 6),     # map smaller than kernel
    (1, 6, 13, 11, 6, 5, 5, (2, 2), (2, 1, 1, 2), (1, 1), 6),  # 5x5 stride 2, odd, asym pads
    (2, 16, 29, 27, 16, 3, 3, (2, 2), (1, 1, 1, 1), (1, 1), 16),  # big enough for 2 threads
    (1, 24, 30, 30, 24, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 24),  # MobileNet-like, 2 threads
    (1, 4, 6, 7, 4, 3, 3, (1, 1), (3, 3, 3, 3), (1, 1), 4),     # pads wider than the kernel
    (2, 5, 10, 14, 5, 3, 3, (1, 3), (1, 2, 0, 1), (2, 1), 5),   # stride 3 along W, dilated
    (1, 3, 9, 10, 3, 2, 4, (3, 2), (0, 3, 1, 0), (1, 2), 3),    # even, non-square kernel
]


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("nthreads", THREADS)
def test_conv2d_against_twin(case, with_bias, nthreads):
    N, C, H, W, M, KH, KW, stride, pads, dil, group = case
    x, w = rand(N, C, H, W), rand(M, C // group, KH, KW)
    bias = rand(M) if with_bias else None
    OH = out_size(H, KH, stride[0], pads[0], pads[2], dil[0])
    OW = out_size(W, KW, stride[1], pads[1], pads[3], dil[1])
    y = np.full((N, M, OH, OW), np.nan, np.float32)
    n_scratch = conv.conv2d_scratch_floats(C, H, W, M, KH, KW, OH, OW, *stride, pads[0],
                                           pads[1], *dil, group, nthreads)
    scratch = np.full(n_scratch, np.nan, np.float32) if n_scratch else None
    conv.conv2d(x, w, bias, y, scratch, *stride, pads[0], pads[1], *dil, group, 0, 0.0, 0.0,
                nthreads)
    K = C // group * KH * KW
    expect = conv_twin(x, w, bias, stride, pads[:2], dil, group, (OH, OW))
    np.testing.assert_allclose(y, expect, rtol=1e-4, atol=1e-5 * K)


@pytest.mark.parametrize("group,act", [(1, 1), (1, 7), (4, 10), (8, 2)])
def test_conv2d_fused_activation(group, act):
    aa, ab = ACT_ARGS.get(act, (0.1, 0.0))
    x, w, bias = rand(2, 8, 7, 7), rand(8, 8 // group, 3, 3), rand(8)
    y = np.empty((2, 8, 7, 7), np.float32)
    n = conv.conv2d_scratch_floats(8, 7, 7, 8, 3, 3, 7, 7, 1, 1, 1, 1, 1, 1, group, 2)
    conv.conv2d(x, w, bias, y, np.empty(n, np.float32) if n else None, 1, 1, 1, 1, 1, 1, group,
                act, aa, ab, 2)
    expect = act_twin(conv_twin(x, w, bias, (1, 1), (1, 1), (1, 1), group, (7, 7)), act, aa, ab)
    np.testing.assert_allclose(y, expect, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("act", range(N_CODES))
@pytest.mark.parametrize("kind", ["depthwise", "depthwise_s2", "pointwise"])
@pytest.mark.parametrize("nthreads", THREADS)
def test_conv2d_fused_activation_every_code(act, kind, nthreads):
    """Depthwise and pointwise fuse bias + activation themselves (vector loops for Relu and
    Clip, the table for the rest): every code against the twin."""
    aa, ab = ACT_ARGS.get(act, (0.1, 0.0))
    C, H, group, K, stride, pad = {"depthwise": (12, 15, 12, 3, 1, 1),
                                   "depthwise_s2": (12, 15, 12, 3, 2, 1),
                                   "pointwise": (12, 15, 1, 1, 1, 0)}[kind]
    M = 12 if group > 1 else 40
    x, w, bias = rand(2, C, H, H), rand(M, C // group, K, K), rand(M)
    if act in (12, 13):   # log, sqrt: keep the pre-activation positive
        x, w, bias = np.abs(x), np.abs(w), np.abs(bias) + 0.1
    OH = out_size(H, K, stride, pad, pad, 1)
    y = np.full((2, M, OH, OH), np.nan, np.float32)
    conv.conv2d(x, w, bias, y, None, stride, stride, pad, pad, 1, 1, group, act, aa, ab,
                nthreads)
    pre = conv_twin(x, w, bias, (stride, stride), (pad, pad), (1, 1), group, (OH, OH))
    keep = np.abs(pre) > 0.05 if act == 16 else np.ones(pre.shape, bool)  # 1/v near its pole
    np.testing.assert_allclose(y[keep], act_twin(pre, act, aa, ab)[keep], rtol=1e-4, atol=1e-4)


DEPTHWISE_CASES = [c for c in CONV_CASES if c[10] > 1 and c[10] == c[1] == c[4]]


@pytest.mark.parametrize("grouped_max_pixels", [0, 10 ** 9])
@pytest.mark.parametrize("case", DEPTHWISE_CASES)
@pytest.mark.parametrize("nthreads", THREADS)
def test_conv2d_depthwise_both_paths(case, grouped_max_pixels, nthreads):
    """Depthwise has two paths (one plane at a time; a channel group interleaved): whichever the
    shape picks, force each one and check it against the twin, with a fused Clip."""
    N, C, H, W, M, KH, KW, stride, pads, dil, group = case
    x, w, bias = rand(N, C, H, W), rand(M, 1, KH, KW), rand(M)
    OH = out_size(H, KH, stride[0], pads[0], pads[2], dil[0])
    OW = out_size(W, KW, stride[1], pads[1], pads[3], dil[1])
    y = np.full((N, M, OH, OW), np.nan, np.float32)
    old = conv.set_depthwise_grouped_max_pixels(grouped_max_pixels)
    try:
        conv.conv2d(x, w, bias, y, None, *stride, pads[0], pads[1], *dil, group, 10, -0.5, 0.8,
                    nthreads)
    finally:
        conv.set_depthwise_grouped_max_pixels(old)
    expect = act_twin(conv_twin(x, w, bias, stride, pads[:2], dil, group, (OH, OW)), 10, -0.5,
                      0.8)
    np.testing.assert_allclose(y, expect, rtol=1e-4, atol=1e-5 * KH * KW)


@pytest.mark.parametrize("C", range(1, 34))
@pytest.mark.parametrize("stride,K,H,W", [(1, 3, 11, 9), (2, 3, 11, 9), (1, 5, 6, 7),
                                          (2, 3, 150, 70), (1, 5, 90, 41)])
def test_conv2d_depthwise_channel_groups(C, stride, K, H, W):
    """The channel-group path (groups of 4, 8 or 16 channels: one vector of the ISA in use)
    with every count of channels up to 33: full groups, partial ones of every width, rows
    longer and shorter than the packing's transpose tiles, planes packed in several bands of
    rows (the last one short)."""
    x, w, bias = rand(1, C, H, W), rand(C, 1, K, K), rand(C)
    pad = K // 2
    OH, OW = out_size(H, K, stride, pad, pad, 1), out_size(W, K, stride, pad, pad, 1)
    y = np.full((1, C, OH, OW), np.nan, np.float32)
    old = conv.set_depthwise_grouped_max_pixels(10 ** 9)
    try:
        conv.conv2d(x, w, bias, y, None, stride, stride, pad, pad, 1, 1, C, 1, 0.0, 0.0, 1)
    finally:
        conv.set_depthwise_grouped_max_pixels(old)
    expect = act_twin(conv_twin(x, w, bias, (stride, stride), (pad, pad), (1, 1), C, (OH, OW)),
                      1, 0.0, 0.0)
    np.testing.assert_allclose(y, expect, rtol=1e-4, atol=1e-5 * K * K)


def test_conv2d_depthwise_relu_clip_keep_nan():
    """The vector Relu / Clip paths let NaN through, as the scalar table does."""
    x = rand(1, 4, 6, 6)
    x[0, 1, 2, 3] = np.nan
    w = rand(4, 1, 3, 3)
    for act, a, b in [(1, 0.0, 0.0), (10, 0.0, 6.0)]:
        y = np.zeros((1, 4, 6, 6), np.float32)
        conv.conv2d(x, w, None, y, None, 1, 1, 1, 1, 1, 1, 4, act, a, b, 1)
        assert np.isnan(y[0, 1, 1:4, 2:5]).all() and not np.isnan(y[0, [0, 2, 3]]).any()


def test_conv2d_scratch_zero_for_pointwise_and_depthwise():
    assert conv.conv2d_scratch_floats(16, 8, 8, 32, 1, 1, 8, 8, 1, 1, 0, 0, 1, 1, 1, 2) == 0
    assert conv.conv2d_scratch_floats(16, 8, 8, 16, 3, 3, 8, 8, 1, 1, 1, 1, 1, 1, 16, 2) == 0
    assert conv.conv2d_scratch_floats(4, 8, 8, 6, 3, 3, 8, 8, 1, 1, 1, 1, 1, 1, 2, 1) == 2 * 9 * 64


def conv_transpose_twin(x, w, bias, stride, pads, dil, group, out_hw):
    """Scatter every x[n, c, ih, iw]·w[c, m, kh, kw] to (ih·s − pad + kh·d, …), in float64."""
    N, C, H, W = x.shape
    _, Mg, KH, KW = w.shape
    OH, OW = out_hw
    Cg = C // group
    y = np.zeros((N, Mg * group, OH, OW))
    for c in range(C):
        g = c // Cg
        for kh in range(KH):
            for kw in range(KW):
                for ih in range(H):
                    oh = ih * stride[0] - pads[0] + kh * dil[0]
                    if not 0 <= oh < OH:
                        continue
                    for iw in range(W):
                        ow = iw * stride[1] - pads[1] + kw * dil[1]
                        if 0 <= ow < OW:
                            y[:, g * Mg:(g + 1) * Mg, oh, ow] += np.outer(
                                x[:, c, ih, iw], w[c, :, kh, kw])
    if bias is not None:
        y += bias[None, :, None, None]
    return y


CONVT_CASES = [
    # N, C, H, W, Mg, KH, KW, stride, pads(t, l), dil, group, extra (output_padding-ish)
    (1, 3, 4, 5, 2, 3, 3, (2, 2), (1, 1), (1, 1), 1, (1, 0)),
    (2, 4, 3, 3, 3, 2, 2, (2, 2), (0, 0), (1, 1), 2, (0, 0)),
    (1, 6, 5, 4, 1, 3, 2, (1, 3), (0, 1), (2, 1), 3, (0, 2)),
]


@pytest.mark.parametrize("case", CONVT_CASES)
@pytest.mark.parametrize("nthreads", THREADS)
def test_conv_transpose2d_against_twin(case, nthreads):
    N, C, H, W, Mg, KH, KW, stride, pads, dil, group, extra = case
    x, w, bias = rand(N, C, H, W), rand(C, Mg, KH, KW), rand(Mg * group)
    OH = (H - 1) * stride[0] - 2 * pads[0] + dil[0] * (KH - 1) + 1 + extra[0]
    OW = (W - 1) * stride[1] - 2 * pads[1] + dil[1] * (KW - 1) + 1 + extra[1]
    y = np.full((N, Mg * group, OH, OW), np.nan, np.float32)
    n = conv.conv_transpose2d_scratch_floats(C, H, W, Mg * group, KH, KW, group, nthreads)
    conv.conv_transpose2d(x, w, bias, y, np.empty(n, np.float32), *stride, *pads, *dil, group,
                          nthreads)
    expect = conv_transpose_twin(x, w, bias, stride, pads, dil, group, (OH, OW))
    np.testing.assert_allclose(y, expect, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- pooling
def pool_twin(x, k, stride, pads, dil, mode, include_pad=False):
    """Window by window with explicit bounds checks (pads = t, l, b, r)."""
    N, C, H, W = x.shape
    OH = out_size(H, k[0], stride[0], pads[0], pads[2], dil[0])
    OW = out_size(W, k[1], stride[1], pads[1], pads[3], dil[1])
    y = np.zeros((N, C, OH, OW))
    for oh in range(OH):
        for ow in range(OW):
            vals, padded_count = [], 0
            for i in range(k[0]):
                for j in range(k[1]):
                    ih = oh * stride[0] - pads[0] + i * dil[0]
                    iw = ow * stride[1] - pads[1] + j * dil[1]
                    if -pads[0] <= ih < H + pads[2] and -pads[1] <= iw < W + pads[3]:
                        padded_count += 1
                    if 0 <= ih < H and 0 <= iw < W:
                        vals.append(x[:, :, ih, iw].astype(np.float64))
            stack = np.stack(vals)
            if mode == "max":
                y[:, :, oh, ow] = stack.max(0)
            else:
                y[:, :, oh, ow] = stack.sum(0) / (padded_count if include_pad else len(vals))
    return y


POOL_CASES = [
    # N, C, H, W, k, stride, pads (t, l, b, r), dil
    (1, 3, 6, 6, (3, 3), (1, 1), (0, 0, 0, 0), (1, 1)),
    (2, 7, 13, 11, (2, 2), (2, 2), (0, 0, 0, 0), (1, 1)),
    (1, 5, 13, 13, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1)),
    (1, 4, 9, 10, (3, 2), (2, 3), (1, 0, 2, 1), (1, 1)),
    (2, 3, 12, 11, (3, 3), (1, 2), (2, 1, 2, 1), (2, 2)),
    # wide rows: the vectorised interior span of every stride path (1, 2, other)
    (1, 2, 20, 37, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1)),
    (1, 2, 9, 40, (2, 3), (1, 3), (0, 2, 0, 2), (1, 2)),
    (1, 2, 7, 33, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
]


@pytest.mark.parametrize("case", POOL_CASES)
@pytest.mark.parametrize("nthreads", THREADS)
def test_max_pool2d(case, nthreads):
    N, C, H, W, k, stride, pads, dil = case
    x = rand(N, C, H, W)
    expect = pool_twin(x, k, stride, pads, dil, "max")
    y = np.empty(expect.shape, np.float32)
    pool.max_pool2d(x, y, *k, *stride, pads[0], pads[1], *dil, nthreads)
    np.testing.assert_array_equal(y, expect.astype(np.float32))


@pytest.mark.parametrize("stride", [1, 2, 3])
def test_max_pool_nan_propagates(stride):
    """A NaN anywhere in a window wins (numpy's max), in the interior and at the borders."""
    x = rand(1, 2, 11, 30)
    x[0, 0, 4, 0] = x[0, 0, 6, 13] = x[0, 1, 10, 29] = np.nan
    k, pads = (3, 3), (1, 1, 1, 1)
    expect = pool_twin(x, k, (stride, stride), pads, (1, 1), "max")
    y = np.empty(expect.shape, np.float32)
    pool.max_pool2d(x, y, *k, stride, stride, 1, 1, 1, 1, 1)
    np.testing.assert_array_equal(y, expect.astype(np.float32))


def test_max_pool_padding_never_wins():
    x = -np.ones((1, 1, 3, 3), np.float32) * 5
    y = np.empty((1, 1, 3, 3), np.float32)
    pool.max_pool2d(x, y, 3, 3, 1, 1, 1, 1, 1, 1, 1)
    assert np.all(y == -5)


def test_max_pool_course_figure():
    x = np.zeros((1, 1, 6, 6), np.float32)
    x[0, 0, 1, 4] = x[0, 0, 3, 1] = 1
    y = np.empty((1, 1, 2, 2), np.float32)
    pool.max_pool2d(x, y, 3, 3, 3, 3, 0, 0, 1, 1, 1)
    np.testing.assert_array_equal(y[0, 0], [[0, 1], [1, 0]])


@pytest.mark.parametrize("case", [c for c in POOL_CASES if c[-1] == (1, 1)])
@pytest.mark.parametrize("include_pad", [False, True])
@pytest.mark.parametrize("nthreads", THREADS)
def test_avg_pool2d(case, include_pad, nthreads):
    N, C, H, W, k, stride, pads, dil = case
    x = rand(N, C, H, W)
    expect = pool_twin(x, k, stride, pads, dil, "avg", include_pad)
    y = np.empty(expect.shape, np.float32)
    pool.avg_pool2d(x, y, *k, *stride, *pads, include_pad, nthreads)
    np.testing.assert_allclose(y, expect, rtol=1e-5, atol=1e-6)


# Each path of the pooling kernels (kernels/pool_kernel.h) on the shapes that reach it, against
# the twin: 2×2/2 windows from row pairs (output rows narrower than a vector of every level — 1,
# 2, 4, 5 — one of AVX2's, one of AVX-512's, wider ones ending in an overlapping vector; odd sizes
# leaving a row and a column out), the separable dilation-1 path (the 3×3/2 pad-1 stem, 3×3/1
# pad 1 on 4×4 to 14×14 planes, 5×5, asymmetric pads, a ceil_mode overhang as bottom/right pads),
# and the direct path (dilation, windows taller than the separable ring) on narrow rows. Narrow
# rows are pooled in whole vectors whose spare lanes read and write past the row: many planes,
# and two threads (cases with enough work get both), put those lanes at plane, share and batch
# ends.
POOL_PATH_CASES = [
    # N, C, H, W, k, stride, pads (t, l, b, r), dil
    (2, 170, 10, 10, (2, 2), (2, 2), (0, 0, 0, 0), (1, 1)),    # LeNet: OW 5, split over threads
    (3, 7, 8, 8, (2, 2), (2, 2), (0, 0, 0, 0), (1, 1)),        # OW 4
    (2, 9, 4, 4, (2, 2), (2, 2), (0, 0, 0, 0), (1, 1)),        # OW 2
    (1, 5, 2, 2, (2, 2), (2, 2), (0, 0, 0, 0), (1, 1)),        # OW 1
    (1, 3, 16, 16, (2, 2), (2, 2), (0, 0, 0, 0), (1, 1)),      # OW 8
    (1, 3, 32, 32, (2, 2), (2, 2), (0, 0, 0, 0), (1, 1)),      # OW 16
    (2, 5, 11, 37, (2, 2), (2, 2), (0, 0, 0, 0), (1, 1)),      # OW 18, odd H and W
    (1, 3, 7, 7, (2, 2), (2, 2), (0, 0, 1, 1), (1, 1)),        # ceil overhang: separable
    (1, 64, 28, 28, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1)),     # the stem, split over threads
    (1, 9, 23, 23, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1)),
    (2, 6, 4, 4, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
    (2, 5, 7, 7, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
    (8, 64, 14, 14, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),     # split over threads
    (1, 4, 7, 19, (5, 5), (1, 1), (2, 2, 2, 2), (1, 1)),
    (1, 3, 9, 10, (3, 2), (2, 3), (1, 0, 2, 1), (1, 1)),
    (1, 4, 6, 6, (3, 3), (3, 3), (0, 0, 0, 0), (1, 1)),        # no overlap: the ring refills
    (2, 5, 6, 6, (3, 3), (1, 1), (2, 2, 2, 2), (2, 2)),        # dilation: direct, OW 6
    (2, 3, 12, 5, (9, 2), (1, 1), (4, 0, 4, 1), (1, 1)),       # kh 9: direct
    (1, 2, 5, 40, (1, 3), (1, 2), (0, 1, 0, 1), (1, 1)),
    (1, 3, 5, 4, (2, 3), (1, 1), (0, 2, 0, 2), (1, 2)),        # no interior column (hung)
]


def nan_sprinkled(shape):
    """Random data with NaNs at plane starts and ends, a row's end and the batch's last element."""
    x = rand(*shape)
    N, C, H, W = shape
    x[0, 0, 0, 0] = x[-1, -1, -1, -1] = x[N // 2, C // 2, H // 2, W - 1] = np.nan
    x[0, -1, H - 1, 0] = np.nan
    return x


@pytest.mark.parametrize("case", POOL_PATH_CASES)
@pytest.mark.parametrize("with_nan", [False, True])
@pytest.mark.parametrize("nthreads", THREADS)
def test_max_pool2d_paths(case, with_nan, nthreads):
    N, C, H, W, k, stride, pads, dil = case
    x = nan_sprinkled((N, C, H, W)) if with_nan else rand(N, C, H, W)
    expect = pool_twin(x, k, stride, pads, dil, "max")
    y = np.full(expect.shape, 7.0, np.float32)
    pool.max_pool2d(x, y, *k, *stride, pads[0], pads[1], *dil, nthreads)
    np.testing.assert_array_equal(y, expect.astype(np.float32))


@pytest.mark.parametrize("case", [c for c in POOL_PATH_CASES if c[-1] == (1, 1)])
@pytest.mark.parametrize("include_pad", [False, True])
@pytest.mark.parametrize("nthreads", THREADS)
def test_avg_pool2d_paths(case, include_pad, nthreads):
    N, C, H, W, k, stride, pads, dil = case
    x = rand(N, C, H, W)
    expect = pool_twin(x, k, stride, pads, dil, "avg", include_pad)
    y = np.full(expect.shape, 7.0, np.float32)
    pool.avg_pool2d(x, y, *k, *stride, *pads, include_pad, nthreads)
    np.testing.assert_allclose(y, expect, rtol=1e-5, atol=1e-6)


def test_avg_pool2d_nan_and_inf_spread_to_their_windows():
    x = nan_sprinkled((2, 3, 10, 10))
    x[1, 0, 4, 4] = np.inf
    for k, s, p in [(2, 2, 0), (3, 1, 1), (3, 2, 1)]:
        expect = pool_twin(x, (k, k), (s, s), (p,) * 4, (1, 1), "avg")
        y = np.empty(expect.shape, np.float32)
        pool.avg_pool2d(x, y, k, k, s, s, p, p, p, p, False, 1)
        np.testing.assert_allclose(y, expect, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("is_max", [False, True])
@pytest.mark.parametrize("nthreads", THREADS)
def test_global_pool(is_max, nthreads):
    x = rand(2 * 13, 49)
    y = np.empty(26, np.float32)
    pool.global_pool(x, y, is_max, nthreads)
    expect = x.max(1) if is_max else x.astype(np.float64).mean(1)
    np.testing.assert_allclose(y, expect, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- normalization
@pytest.mark.parametrize("act", [0, 1, 5])
@pytest.mark.parametrize("nthreads", THREADS)
def test_channel_affine(act, nthreads):
    x, scale, shift = rand(2, 7, 33), rand(7), rand(7)
    expect = act_twin(x * scale[None, :, None].astype(np.float64) + shift[None, :, None], act,
                      0, 0)
    y = np.empty_like(x)
    normalization.channel_affine(x, scale, shift, y, act, 0.0, 0.0, nthreads)
    np.testing.assert_allclose(y, expect, rtol=1e-5, atol=1e-6)
    normalization.channel_affine(x, scale, shift, x, act, 0.0, 0.0, nthreads)  # y is x
    np.testing.assert_allclose(x, expect, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("nthreads", THREADS)
def test_instance_norm(nthreads):
    x, scale, bias = rand(3, 5, 29) * 4 + 2, rand(5), rand(5)
    xd = x.astype(np.float64)
    mean, var = xd.mean(2, keepdims=True), xd.var(2, keepdims=True)
    expect = (xd - mean) / np.sqrt(var + 1e-5) * scale[None, :, None] + bias[None, :, None]
    y = np.empty_like(x)
    normalization.instance_norm(x, scale, bias, y, 1e-5, nthreads)
    np.testing.assert_allclose(y, expect, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("nthreads", THREADS)
def test_lrn(size, nthreads):
    x = rand(2, 7, 6)
    xd = x.astype(np.float64)
    alpha, beta, bias = 1e-3, 0.75, 2.0
    sq = np.zeros_like(xd)
    for c in range(7):
        lo, hi = max(0, c - (size - 1) // 2), min(6, c + int(np.ceil((size - 1) / 2)))
        sq[:, c] = (xd[:, lo:hi + 1] ** 2).sum(1)
    expect = xd / (bias + alpha / size * sq) ** beta
    y = np.empty_like(x)
    normalization.lrn(x, y, size, alpha, beta, bias, nthreads)
    np.testing.assert_allclose(y, expect, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- softmax
@pytest.mark.parametrize("shape", [(1, 4, 1), (3, 1000, 1), (2, 7, 13), (5, 1, 3)])
@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("nthreads", THREADS)
def test_softmax(shape, log, nthreads):
    x = rand(*shape) * 10
    xd = x.astype(np.float64)
    e = np.exp(xd - xd.max(1, keepdims=True))
    expect = e / e.sum(1, keepdims=True)
    if log:
        expect = np.log(expect)
    y = np.empty_like(x)
    softmax.softmax(x, y, log, nthreads)
    np.testing.assert_allclose(y, expect, rtol=1e-5, atol=1e-6)


def test_softmax_course_figure():
    x = np.array([5, 2, -1, 3], np.float32).reshape(1, 4, 1)
    y = np.empty_like(x)
    softmax.softmax(x, y, False, 1)
    np.testing.assert_allclose(y.ravel(), [0.842, 0.042, 0.002, 0.114], atol=6e-4)


def test_conv2d_rejects_short_scratch_and_uses_fewer_slots():
    x, w = rand(4, 3, 8, 8), rand(5, 3, 3, 3)
    y = np.empty((4, 5, 8, 8), np.float32)
    one_slot = 3 * 9 * 64
    with pytest.raises(ValueError):
        conv.conv2d(x, w, None, y, np.empty(one_slot - 1, np.float32), 1, 1, 1, 1, 1, 1, 1, 0,
                    0.0, 0.0, 2)
    conv.conv2d(x, w, None, y, np.empty(one_slot, np.float32), 1, 1, 1, 1, 1, 1, 1, 0, 0.0,
                0.0, 2)   # sized for one thread, run with two: still correct
    expect = conv_twin(x, w, None, (1, 1), (1, 1), (1, 1), 1, (8, 8))
    np.testing.assert_allclose(y, expect, rtol=1e-4, atol=1e-5 * 27)


# ---- reduce: (outer, n, inner) reductions against numpy in float64 ----------------------------
REDUCE_NUMPY = {"sum": np.sum, "mean": np.mean, "max": np.max, "min": np.min, "prod": np.prod}


@pytest.mark.parametrize("kind", list(REDUCE_NUMPY))
@pytest.mark.parametrize("shape", [(1, 7, 1), (5, 300, 1), (2, 9, 3), (3, 4, 600), (1, 1, 1)])
@pytest.mark.parametrize("nthreads", [1, 2])
def test_reduce_step_matches_numpy(kind, shape, nthreads):
    """Sums and means within 1e-6 relative (double accumulation against float64); max/min
    exact; products of values near 1 within 1e-5; a NaN anywhere in a line gives NaN."""
    from ember.kernels import reduce as kr
    gen = np.random.default_rng(sum(shape))
    x = gen.uniform(0.9, 1.1, shape).astype(np.float32) if kind == "prod" else \
        gen.standard_normal(shape).astype(np.float32)
    if shape[1] > 1:
        x[0, shape[1] // 2, 0] = np.nan
    y = np.full((shape[0], shape[2]), -7.0, np.float32)
    kr.ReduceStep(x, y, getattr(kr, f"REDUCE_{kind.upper()}"), nthreads)()
    want = REDUCE_NUMPY[kind](x.astype(np.float64), axis=1)
    np.testing.assert_allclose(y, want, rtol=1e-5 if kind == "prod" else 1e-6, atol=1e-6)
    assert np.isnan(y[0, 0]) == (shape[1] > 1)
