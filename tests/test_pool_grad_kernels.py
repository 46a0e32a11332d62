"""The training kernels moved onto ember's thread pool (optim, softmax_grad, reduce_grad,
sampling, scatter): at sizes past PARALLEL_MIN_WORK, so the pool really splits the work, two
threads give the very bits one thread gives (every task owns its outputs and sums in a fixed
order), and the sums match numpy (float64 oracle, rtol 1e-5)."""
from __future__ import annotations

import numpy as np
import pytest

from ember.kernels import reduce_grad, sampling, scatter, softmax_grad

RNG_SEED = 7


def same_bits_at(threads, run):
    """run(nthreads) -> tuple of arrays, for each thread count; asserts they are identical."""
    results = [run(t) for t in threads]
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)
    return results[0]


def test_scatter_add_rows_threads_and_numpy():
    rng = np.random.default_rng(RNG_SEED)
    outer, rows, n, inner = 3, 50, 400, 130        # 156,000 element-taps: parallel
    dy = rng.standard_normal((outer, n, inner), dtype=np.float32)
    idx = rng.integers(-rows, rows, n).astype(np.int64)

    def run(t):
        dx = np.full((outer, rows, inner), np.nan, np.float32)
        scatter.scatter_add_rows(dy, idx, dx, 4, t)
        return (dx,)

    (dx,) = same_bits_at((1, 2), run)
    want = np.zeros((outer, rows, inner))
    keep = (idx % rows) != 4
    np.add.at(want, (slice(None), idx[keep] % rows), dy[:, keep].astype(np.float64))
    np.testing.assert_allclose(dx, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(700, 96, 1), (9, 40, 130)])   # column blocks; channels
def test_channel_sum_threads_and_numpy(shape):
    x = np.random.default_rng(RNG_SEED).standard_normal(shape, dtype=np.float32)

    def run(t):
        y = np.full(shape[1], np.nan, np.float32)
        reduce_grad.channel_sum(x, y, t)
        return (y,)

    (y,) = same_bits_at((1, 2), run)
    np.testing.assert_allclose(y, x.astype(np.float64).sum(axis=(0, 2)), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("log", [False, True])
def test_softmax_grad_threads(log):
    rng = np.random.default_rng(RNG_SEED)
    y = rng.random((6, 50, 130), dtype=np.float32)
    dy = rng.standard_normal(y.shape, dtype=np.float32)

    def run(t):
        dx = np.empty_like(y)
        softmax_grad.softmax_grad(dy, y, dx, log, t)
        return (dx,)

    same_bits_at((1, 2), run)


@pytest.mark.parametrize("reduction", [softmax_grad.REDUCTION_NONE, softmax_grad.REDUCTION_MEAN])
def test_softmax_xent_and_grad_threads(reduction):
    rng = np.random.default_rng(RNG_SEED)
    N, C = 300, 40                                   # N·C·4 = 48,000: parallel
    scores = rng.standard_normal((N, C), dtype=np.float32)
    labels = rng.integers(0, C, N).astype(np.int64)
    weights = rng.random(C, dtype=np.float32)
    nloss = N if reduction == softmax_grad.REDUCTION_NONE else 1

    def run(t):
        log_prob = np.empty_like(scores)
        loss = np.empty(nloss, np.float32)
        assert softmax_grad.softmax_xent(scores, labels, weights, log_prob, loss, reduction,
                                         3, True, t) == -1
        dloss = np.linspace(0.5, 1.5, nloss, dtype=np.float32)
        dscores = np.empty_like(scores)
        assert softmax_grad.softmax_xent_grad(dloss, log_prob, labels, weights, dscores,
                                              reduction, 3, True, t) == -1
        return log_prob, loss, dscores

    log_prob, _, dscores = same_bits_at((1, 2), run)
    s = scores.astype(np.float64)
    want = s - s.max(1, keepdims=True)
    want -= np.log(np.exp(want).sum(1, keepdims=True))
    np.testing.assert_allclose(log_prob, want, rtol=1e-5, atol=1e-5)
    assert not dscores[labels == 3].any()             # ignored rows: zero gradient


@pytest.mark.parametrize("mode", [0, 1, 2])          # linear, nearest, cubic
def test_grid_sample_threads(mode):
    rng = np.random.default_rng(RNG_SEED + mode)
    N, C, D, H, W = 2, 12, 1, 20, 24
    Ho, Wo = 30, 26
    x = rng.standard_normal((N, C, D, H, W), dtype=np.float32)
    grid = np.zeros((N, 1, Ho, Wo, 2), np.float32)
    grid[..., :] = rng.uniform(-1.2, 1.2, (N, 1, Ho, Wo, 2))
    dy = rng.standard_normal((N, C, 1, Ho, Wo), dtype=np.float32)

    def run(t):
        y = np.empty((N, C, 1, Ho, Wo), np.float32)
        sampling.grid_sample_forward(x, grid, y, mode, 0, False, t)
        dx = np.full_like(x, np.nan)
        sampling.grid_sample_grad_input(dy, grid, dx, mode, 0, False, t)
        dgrid = np.full_like(grid, np.nan)
        sampling.grid_sample_grad_grid(dy, x, grid, dgrid, mode, 0, False, t)
        return y, dx, dgrid

    y, dx, dgrid = same_bits_at((1, 2), run)
    assert np.isfinite(dx).all() and np.isfinite(dgrid).all()


def test_grid_sample_empty_image_zero_fill_threads():
    """X with an empty plane: Y is all zeros, written by the chunked zero fill."""
    N, C, Ho, Wo = 2, 40, 30, 30                      # 72,000 floats: parallel fill
    x = np.empty((N, C, 1, 0, 5), np.float32)
    grid = np.zeros((N, 1, Ho, Wo, 2), np.float32)

    def run(t):
        y = np.full((N, C, 1, Ho, Wo), np.nan, np.float32)
        sampling.grid_sample_forward(x, grid, y, 0, 0, False, t)
        return (y,)

    (y,) = same_bits_at((1, 2), run)
    assert not y.any()
