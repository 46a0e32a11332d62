"""The training kernels on ember's thread pool give the same bits at any thread count.

Each output element of these kernels is computed by one task with the same arithmetic whichever
worker claims it, so 2 and 3 threads (tasks claimed dynamically, per-worker buffers indexed by
the worker) must reproduce the 1-thread result exactly; the 1-thread result itself is checked
against numpy in test_grad_kernels.py / test_layer_norm.py. Sizes are above PARALLEL_MIN_WORK
so the pool really runs, and some have fewer tasks than threads (idle workers, fewer buffers)."""
import numpy as np
import pytest

from ember.kernels import act_grad, conv_grad, norm_grad, pool_grad

THREADS = (2, 3)


def same_at_any_thread_count(run, nthreads):
    """run(nthreads) -> tuple of arrays; compared bit for bit with run(1)."""
    for want, got in zip(run(1), run(nthreads)):
        np.testing.assert_array_equal(got, want)


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("nthreads", THREADS)
@pytest.mark.parametrize("act", [1, 2, 5, 8])    # Relu, LeakyRelu, Sigmoid, Tanh
def test_activation_grad(act, nthreads):
    dy, t = rand(100_003), rand(100_003, seed=1)

    def run(n):
        dx = np.empty_like(dy)
        act_grad.activation_grad(dy, t, dx, act, 0.1, 0.0, n)
        return (dx,)
    same_at_any_thread_count(run, nthreads)


@pytest.mark.parametrize("nthreads", THREADS)
@pytest.mark.parametrize("offset", [0, 5_000])
def test_dropout(offset, nthreads):
    x = rand(70_001)

    def run(n):
        y, mask, dx = np.empty_like(x), np.empty(x.size, np.uint8), np.empty_like(x)
        act_grad.dropout_forward(x, y, mask, 0.3, 7, 2, n, offset)
        act_grad.dropout_grad(x, mask, dx, 0.3, n)
        return y, mask, dx
    same_at_any_thread_count(run, nthreads)


@pytest.mark.parametrize("nthreads", THREADS)
@pytest.mark.parametrize("shape", [(8, 13, 700), (2, 2, 20_000)])   # 2 channels: idle workers
def test_batch_norm_train_and_grad(shape, nthreads):
    x, dy = rand(*shape), rand(*shape, seed=1)
    C = shape[1]
    scale, bias = rand(C, seed=2), rand(C, seed=3)
    mean, var = np.zeros(C, np.float32), np.ones(C, np.float32)

    def run(n):
        y, m, v = np.empty_like(x), np.empty(C, np.float32), np.empty(C, np.float32)
        norm_grad.batch_norm_train(x, scale, bias, mean, var, y, m, v, 1e-5, 0.9, n)
        dx, ds, db = np.empty_like(x), np.empty(C, np.float32), np.empty(C, np.float32)
        norm_grad.batch_norm_grad(dy, x, scale, None, None, dx, ds, db, 1e-5, True, n)
        return y, m, v, dx, ds, db
    same_at_any_thread_count(run, nthreads)


@pytest.mark.parametrize("nthreads", THREADS)
@pytest.mark.parametrize("rows, n", [(4_001, 37), (3, 20_000)])
def test_layer_norm_grad(rows, n, nthreads):
    x, dy, scale = rand(rows, n), rand(rows, n, seed=1), rand(n, seed=2)

    def run(t):
        dx, ds, db = np.empty_like(x), np.empty(n, np.float32), np.empty(n, np.float32)
        stats = np.empty(2 * rows, np.float32)
        norm_grad.layer_norm_grad(dy, x, scale, dx, ds, db, stats, 1e-5, t)
        return dx, ds, db, stats
    same_at_any_thread_count(run, nthreads)


@pytest.mark.parametrize("nthreads", THREADS)
def test_pool_grads(nthreads):
    x = rand(3, 7, 33, 31)
    dy = rand(3, 7, 16, 15, seed=1)
    g = rand(3 * 7, seed=2)

    def run(n):
        dmax, davg = np.empty_like(x), np.empty_like(x)
        dglobal = np.empty((3 * 7, 33 * 31), np.float32)
        pool_grad.max_pool2d_grad(dy, x, dmax, 3, 3, 2, 2, 0, 0, 1, 1, n)
        pool_grad.avg_pool2d_grad(dy, davg, 3, 3, 2, 2, 0, 0, 0, 0, 1, 1, False, n)
        pool_grad.global_avg_pool_grad(g, dglobal, n)
        return dmax, davg, dglobal
    same_at_any_thread_count(run, nthreads)


@pytest.mark.parametrize("nthreads", THREADS)
@pytest.mark.parametrize("grouped", [True, False])
@pytest.mark.parametrize("N, C, H, stride", [(4, 24, 30, 1), (2, 19, 31, 2), (1, 3, 120, 1)])
def test_depthwise_conv_grads(N, C, H, stride, grouped, nthreads):
    x, w = rand(N, C, H, H), rand(C, 1, 3, 3, seed=1)
    OH = (H + 2 - 3) // stride + 1
    dy = rand(N, C, OH, OH, seed=2)
    old = conv_grad.set_depthwise_grouped(grouped)
    try:
        def run(n):
            dw, dx = np.empty_like(w), np.empty_like(x)
            conv_grad.conv_grad_weight(dy, x, dw, None, stride, stride, 1, 1, 1, 1, C, n)
            conv_grad.conv_grad_input(dy, w, dx, None, stride, stride, 1, 1, 1, 1, C, n)
            return dw, dx
        same_at_any_thread_count(run, nthreads)
    finally:
        conv_grad.set_depthwise_grouped(old)


@pytest.mark.parametrize("nthreads", THREADS)
@pytest.mark.parametrize("N", [1, 3])   # one image: team GEMMs, im2col and col2im on the pool
def test_conv_grad_input_col2im(N, nthreads):
    """dX by im2col GEMM: with one image (or a batch that does not split) the GEMM and col2im
    use the team, and each channel's scatter-add is one task."""
    x, w = rand(N, 16, 40, 40), rand(32, 16, 3, 3, seed=1)
    dy = rand(N, 32, 20, 20, seed=2)

    def run(n):
        dx = np.empty_like(x)
        need = conv_grad.conv_grad_input_scratch_floats(N, 16, 40, 40, 32, 3, 3, 20, 20, 2, 2,
                                                        1, 1, 1, 1, 1, n)
        conv_grad.conv_grad_input(dy, w, dx, np.empty(need, np.float32), 2, 2, 1, 1, 1, 1, 1, n)
        return (dx,)
    same_at_any_thread_count(run, nthreads)
