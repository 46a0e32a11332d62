"""Attacks on ember's thread pool that found a defect (or guard one that held): each case is
deterministic (fixed seeds, no timing); anything that could hang runs in a subprocess with a
timeout.

The oracle for thread counts is the same kernel at 1 thread, bit for bit (the 1-thread dW is
checked against numpy in test_grad_kernels.py)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from ember.kernels import conv_grad


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def conv_weight_grad(dy, x, kernel, stride, pad, nthreads):
    N, C, H, W = x.shape
    M, OH, OW = dy.shape[1:]
    dw = np.empty((M, C, kernel, kernel), np.float32)
    need = conv_grad.conv_grad_weight_scratch_floats(N, C, H, W, M, kernel, kernel, OH, OW,
                                                     stride, stride, pad, pad, 1, 1, 1, nthreads)
    conv_grad.conv_grad_weight(dy, x, dw, np.empty(need, np.float32), stride, stride, pad, pad,
                               1, 1, 1, nthreads)
    return dw


# Defect: a dense conv's dW summed one partial sum per thread when the batch split evenly
# (images t, t + nthreads, …), so 2 threads on a batch of 2 or 4 gave other bits than 1 thread
# (max |diff| ~1e-5). Now the parts are fixed by the batch alone.
@pytest.mark.parametrize("nthreads", [2, 3, 4])
@pytest.mark.parametrize("N, C, H, M, kernel, stride", [
    (2, 16, 20, 32, 3, 1), (4, 16, 20, 32, 3, 1), (6, 16, 20, 32, 3, 1),   # split evenly
    (12, 8, 6, 16, 3, 1),       # small planes: several images per product
    (16, 16, 10, 8, 1, 1),      # pointwise, more images than parts
    (9, 4, 30, 8, 5, 2),        # strided
])
def test_dense_conv_weight_grad_same_bits_at_any_thread_count(N, C, H, M, kernel, stride,
                                                              nthreads):
    pad = kernel // 2
    OH = (H + 2 * pad - kernel) // stride + 1
    x, dy = rand(N, C, H, H), rand(N, M, OH, OH, seed=1)
    want = conv_weight_grad(dy, x, kernel, stride, pad, 1)
    np.testing.assert_array_equal(conv_weight_grad(dy, x, kernel, stride, pad, nthreads), want)


def test_dense_conv_weight_grad_with_less_scratch_keeps_the_bits():
    # scratch for fewer slots than threads: fewer parts at once, the same sums in the same order
    x, dy = rand(8, 16, 20, 20), rand(8, 32, 20, 20, seed=1)
    want = conv_weight_grad(dy, x, 3, 1, 1, 1)
    one = conv_grad.conv_grad_weight_scratch_floats(8, 16, 20, 20, 32, 3, 3, 20, 20, 1, 1, 1, 1,
                                                    1, 1, 1, 1)
    dw = np.empty_like(want)
    conv_grad.conv_grad_weight(dy, x, dw, np.empty(one, np.float32), 1, 1, 1, 1, 1, 1, 1, 4)
    np.testing.assert_array_equal(dw, want)


# Held up (kept as guards): fork from the main thread while other threads are mid-run, hostile
# EMBER_POOL_SPIN_US, huge thread counts, failing runs beside good ones. A hang fails by timeout.
STRESS = textwrap.dedent("""
    import os, sys, threading
    import numpy as np
    sys.path.insert(0, {tests!r})
    import ember
    from ember.kernels import simd
    from models import small_vgg, random_input
    m = small_vgg(batch=2)
    data, feeds = m.SerializeToString(), random_input(m, batch=2)
    want = ember.load(data, threads=1).run(None, feeds)[0]
    sessions = [ember.load(data, threads=t) for t in (1, 2, 3, 500)]
    bad = {{k: v[:, :2] for k, v in feeds.items()}}
    wrong = []
    go = threading.Event()
    def work(i):
        s = sessions[i % len(sessions)]
        go.wait()
        for _ in range(6):
            if not np.array_equal(s.run(None, feeds)[0], want):
                wrong.append(i)
            try:
                s.run(None, bad)
            except ember.EmberError:
                pass
    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    go.set()
    for _ in range(4):           # fork while the other threads are (most likely) mid-run
        pid = os.fork()
        if pid == 0:
            ok = np.array_equal(ember.load(data, threads=3).run(None, feeds)[0], want)
            os._exit(0 if ok else 3)
        assert os.waitpid(pid, 0)[1] == 0, "child failed"
    for t in threads:
        t.join()
    assert not wrong, wrong
    assert simd.pool_stats()["holds"] == 0
    print("ok")
""")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.parametrize("spin", ["junk", "-5", "99999999999999999999999", "0", ""])
def test_forks_mid_run_and_hostile_spin_settings_neither_hang_nor_change_results(spin):
    tests = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, EMBER_POOL_SPIN_US=spin, EMBER_TUNE="0")
    out = subprocess.run([sys.executable, "-c", STRESS.format(tests=tests)], capture_output=True,
                         text=True, timeout=240, cwd=tests, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")


INTERRUPTS = textwrap.dedent("""
    import os, sys, signal, threading
    import numpy as np
    sys.path.insert(0, {tests!r})
    import ember
    from ember import nn, optim
    from ember.kernels import simd
    from models import small_vgg, random_input
    m = small_vgg(batch=4)
    data, feeds = m.SerializeToString(), random_input(m, batch=4)
    s = ember.load(data, threads=2)
    want = ember.load(data, threads=1).run(None, feeds)[0]
    for k in range(8):        # SIGINT lands at some point of some run (where does not matter)
        threading.Timer(0.002 * (k + 1), os.kill, (os.getpid(), signal.SIGINT)).start()
        try:
            for _ in range(200):
                s.run(None, feeds)
        except KeyboardInterrupt:
            pass
        assert simd.pool_stats()["holds"] == 0, simd.pool_stats()
    # a Trainer's steps beside inference threads, all on the pool
    rng = np.random.default_rng(0)
    X = rng.standard_normal((48, 3, 16, 16)).astype(np.float32)
    y = rng.integers(0, 10, 48)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(),
                        nn.Linear(8 * 16 * 16, 10))
    tr = ember.Trainer(net, input_shape=(3, 16, 16), loss=nn.CrossEntropyLoss(),
                       optimizer=optim.SGD(lr=0.01), batch_size=16, threads=3)
    wrong = []
    def infer():
        for _ in range(5):
            if not np.array_equal(s.run(None, feeds)[0], want):
                wrong.append(1)
    threads = [threading.Thread(target=infer) for _ in range(3)]
    for t in threads:
        t.start()
    tr.fit(X, y, epochs=2, verbose=False)
    for t in threads:
        t.join()
    assert not wrong
    assert np.array_equal(s.run(None, feeds)[0], want)
    assert simd.pool_stats()["holds"] == 0
    print("ok")
""")


def test_interrupted_runs_let_go_and_training_beside_inference_keeps_the_bits():
    tests = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, EMBER_TUNE="0")
    out = subprocess.run([sys.executable, "-c", INTERRUPTS.format(tests=tests)],
                         capture_output=True, text=True, timeout=240, cwd=tests, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_the_pool_alone_under_caller_threads_nesting_holds_and_forks(tmp_path):
    """The pool's protocol without Python: tests/pool_stress_driver.c against thread_pool.c.
    Also clean under -fsanitize=thread (TSAN_OPTIONS=die_after_fork=0), not run here."""
    import shutil
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("needs a C compiler")
    tests = os.path.dirname(os.path.abspath(__file__))
    kernels = os.path.join(os.path.dirname(tests), "kernels")
    exe = str(tmp_path / "pool_stress")
    subprocess.run([cc, "-O2", "-I", kernels, os.path.join(tests, "pool_stress_driver.c"),
                    os.path.join(kernels, "thread_pool.c"), "-o", exe, "-pthread"],
                   check=True, timeout=120)
    for spin in ("0", "30", "junk"):
        out = subprocess.run([exe, "4"], capture_output=True, text=True, timeout=120,
                             env=dict(os.environ, EMBER_POOL_SPIN_US=spin))
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith("ok")
