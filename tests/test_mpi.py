"""Data-parallel training and batch inference over MPI (runtime/DISTRIBUTED.md).

The MPI cases start ``mpirun -n 2`` on localhost (tests/mpi_worker.py is one rank) and compare
with a single process that ember runs here with the whole batch — and with onnxruntime for
``run-batch``. Without ``mpirun`` or ``mpi4py`` they are skipped, saying which is missing; the
sharding and Dropout-offset rules they rely on are tested here without MPI.

Tolerances: gradients are summed in a different order (each rank's mean, weighted, then summed
by the allreduce, against one mean over all rows), so parameters agree to float32 rounding
amplified over a few dozen SGD/Adam steps: atol 1e-5 on parameters of size ~0.3, rtol 1e-5 on
losses. Ranks agree with each other bit for bit.
"""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

import ember
from ember.runtime.distributed import shard

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "mpi_worker.py")
MPIRUN = shutil.which("mpirun")


def _mpi4py_works() -> bool:
    """mpi4py imports *and* finds an MPI library (asked in a child: importing it here would
    initialise MPI in the test process)."""
    if importlib.util.find_spec("mpi4py") is None:
        return False
    r = subprocess.run([sys.executable, "-c", "from mpi4py import MPI; MPI.Get_version()"],
                       capture_output=True, timeout=60, cwd=tempfile.gettempdir())
    return r.returncode == 0


HAVE_MPI4PY = _mpi4py_works()
needs_mpi = pytest.mark.skipif(
    MPIRUN is None or not HAVE_MPI4PY,
    reason="needs Open MPI's mpirun (apt install openmpi-bin) and mpi4py (pip install "
           "'ember[mpi]')" + ("" if MPIRUN else ": mpirun not found") +
           ("" if HAVE_MPI4PY else ": mpi4py not installed or finds no MPI library"))


def mpirun(args, timeout=120, env=None):
    """``mpirun -n 2`` on this host, as root if need be, oversubscribing if the CI machine has
    fewer slots than ranks; run outside the checkout, so the installed ember is the one
    imported."""
    e = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
             OMPI_MCA_rmaps_base_oversubscribe="1", OMPI_MCA_btl_vader_single_copy_mechanism="none")
    e.pop("EMBER_NUM_THREADS", None)
    e.update(env or {})
    t0 = time.monotonic()
    r = subprocess.run([MPIRUN, "-n", "2"] + args, capture_output=True, text=True,
                       timeout=timeout, env=e, cwd=tempfile.gettempdir())
    return r, time.monotonic() - t0


# ---- without MPI -------------------------------------------------------------------------------
@pytest.mark.parametrize("rows,size", [(16, 2), (13, 2), (1, 2), (0, 3), (10, 3), (7, 4)])
def test_shard_covers_rows_in_rank_order(rows, size):
    parts = [shard(rows, size, r) for r in range(size)]
    assert sum(c for _, c in parts) == rows
    start = 0
    for lo, c in parts:
        assert lo == start and c >= 0
        start += c
    assert max(c for _, c in parts) - min(c for _, c in parts) <= 1


@pytest.mark.parametrize("offset", [0, 5, 8191, 8192, 123457])
def test_dropout_offset_draws_the_global_tensor_slice(offset):
    """A rank's rows draw the masks one process draws for those rows of the whole batch — the
    kernel and the numpy reference alike."""
    from ember.graph.ops.tensor import dropout_keep
    from ember.kernels import act_grad
    n = 20000
    whole = dropout_keep(offset + n, 0.3, 11, 4)
    assert np.array_equal(dropout_keep(n, 0.3, 11, 4, offset), whole[offset:])
    x = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    y, mask = np.empty_like(x), np.empty(n, np.uint8)
    act_grad.dropout_forward(x, y, mask, 0.3, 11, 4, 2, offset)
    assert np.array_equal(mask.astype(bool), whole[offset:])


def test_distributed_needs_mpi4py_clearly(monkeypatch):
    import builtins
    real = builtins.__import__

    def no_mpi4py(name, *a, **k):
        if name.startswith("mpi4py"):
            raise ImportError("No module named 'mpi4py'")
        return real(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", no_mpi4py)
    with pytest.raises(ember.DistributedError, match=r"pip install 'ember\[mpi\]'"):
        ember.Trainer(ember.nn.Sequential(ember.nn.Linear(3, 2)), input_shape=(3,),
                      distributed="mpi")


def test_distributed_rejects_unknown_backend():
    with pytest.raises(ember.DistributedError, match="'mpi'"):
        ember.Trainer(ember.nn.Sequential(ember.nn.Linear(3, 2)), input_shape=(3,),
                      distributed="gloo")


def test_launcher_detection():
    from ember.runtime.batch_inference import launched_by_mpi
    assert not launched_by_mpi({})
    assert launched_by_mpi({"OMPI_COMM_WORLD_SIZE": "2"})
    assert launched_by_mpi({"PMI_SIZE": "4"})


# ---- data-parallel training --------------------------------------------------------------------
def single_process(opts, epochs=3):
    sys.path.insert(0, HERE)
    try:
        import mpi_worker
    finally:
        sys.path.remove(HERE)
    X, y = mpi_worker.data(opts.get("n", 61))
    whole = dict(opts, batch=2 * opts.get("batch", 8))
    t = mpi_worker.trainer(whole, None)
    hist = t.fit(X, y, epochs=epochs, verbose=False, validation_data=(X[:20], y[:20]))
    return t, hist


def run_training(tmp_path, opts):
    tmp_path.mkdir(exist_ok=True)
    r, _ = mpirun([sys.executable, WORKER, "train", str(tmp_path), json.dumps(opts)])
    assert r.returncode == 0, r.stderr[-3000:]
    return [dict(np.load(tmp_path / f"rank{k}.npz")) for k in range(2)]


CASES = {
    # 61 rows, global batch 16: the last batch (13 rows) splits 7 + 6
    "sgd-momentum": {"optimizer": "sgd"},
    # 49 rows: the last global batch is 1 row, so rank 1 trains on nothing in that step;
    # Dropout draws the whole batch's masks on each rank's rows; L2 on the weights
    "adam-dropout-l2-empty-shard": {"n": 49, "dropout": True, "l2": 0.1},
    # the global gradient norm is clipped after the allreduce, as one process clips it
    "sgd-clip-grad-norm": {"optimizer": "sgd", "clip_grad_norm": 0.05},
}


@needs_mpi
@pytest.mark.parametrize("case", sorted(CASES))
def test_two_ranks_train_like_one_process_with_twice_the_batch(tmp_path, case):
    opts = CASES[case]
    ranks = run_training(tmp_path, opts)
    ref, hist = single_process(opts)
    for k in ("loss", "val_loss", "accuracy"):
        np.testing.assert_allclose(ranks[0][k], hist.history[k], rtol=1e-5, err_msg=k)
    for name, a in ref.state_dict().items():
        np.testing.assert_allclose(ranks[0][f"state/{name}"], a, atol=1e-5, err_msg=name)
    # every rank holds the same parameters and optimizer state, bit for bit
    assert ranks[0].keys() == ranks[1].keys()
    for key in ranks[0]:
        if key.startswith(("state/", "opt/")):
            assert np.array_equal(ranks[0][key], ranks[1][key]), key
    np.testing.assert_allclose(ranks[0]["eval_loss"], ref.evaluate(*single_data(opts))["loss"],
                               rtol=1e-5)
    # the checkpoint comes from rank 0 and restores in a single process
    restored = ember.Trainer.restore(tmp_path / "ckpt.ember")
    for name, a in restored.state_dict().items():
        assert np.array_equal(a, ranks[0][f"state/{name}"]), name
    assert restored.global_step == ref.global_step


def single_data(opts):
    sys.path.insert(0, HERE)
    try:
        import mpi_worker
    finally:
        sys.path.remove(HERE)
    return mpi_worker.data(opts.get("n", 61))


@needs_mpi
def test_a_restored_job_continues_exactly(tmp_path):
    """2 epochs, checkpoint, restore on both ranks, 1 more epoch == 3 epochs straight."""
    straight = run_training(tmp_path / "a", {"epochs": 3, "dropout": True})
    run_training(tmp_path / "b", {"epochs": 2, "dropout": True})
    r, _ = mpirun([sys.executable, WORKER, "resume", str(tmp_path / "b"), "{}"])
    assert r.returncode == 0, r.stderr[-3000:]
    for k in range(2):
        resumed = np.load(tmp_path / "b" / f"resumed{k}.npz")
        for key in resumed:
            assert np.array_equal(resumed[key], straight[0][key]), key


@needs_mpi
def test_batchnorm_statistics_and_state_stay_identical_on_every_rank(tmp_path):
    """Each rank normalises with its own rows' statistics (as Horovod and DDP do without a
    synchronised BatchNorm), so the curve only approximates one process with the whole batch;
    the running statistics are the rows-weighted average over ranks and every rank holds the
    same state."""
    ranks = run_training(tmp_path, {"batchnorm": True})
    for key in ranks[0]:
        if key.startswith(("state/", "opt/")):
            assert np.array_equal(ranks[0][key], ranks[1][key]), key
    ref, hist = single_process({"batchnorm": True})
    np.testing.assert_allclose(ranks[0]["loss"], hist.history["loss"], rtol=0.05)
    assert ranks[0]["loss"][-1] < ranks[0]["loss"][0]
    mean = ranks[0]["state/1.running_mean"]
    np.testing.assert_allclose(mean, ref.state_dict()["1.running_mean"], atol=0.05)


@needs_mpi
def test_each_rank_takes_its_share_of_the_cores(tmp_path):
    ranks = run_training(tmp_path, {"epochs": 1})
    cpus = len(os.sched_getaffinity(0))
    for r in ranks:     # never more threads in all than cores, bound by mpirun or not
        assert int(r["world"]) == 2
        assert 1 <= int(r["threads"]) <= max(1, cpus // 2)


# ---- failures ----------------------------------------------------------------------------------
@needs_mpi
@pytest.mark.parametrize("mode,expect", [
    ("raise", r"rank 1 of 2 .*RuntimeError: rank 1 fails on purpose"),
    ("die", r"rank 1 .*(signal 9|Killed)"),
    ("stuck", r"rank 0 of 2 .*did not complete within 5 s"),
])
def test_a_failing_rank_stops_the_job_with_its_name_and_keeps_the_checkpoint(tmp_path, mode,
                                                                              expect):
    r, secs = mpirun([sys.executable, WORKER, mode, str(tmp_path), json.dumps({"timeout": 5})],
                     timeout=90)
    assert r.returncode != 0
    assert secs < 60, f"the job took {secs:.0f} s to stop"
    import re
    assert re.search(expect, r.stdout + r.stderr, re.S), (r.stdout + r.stderr)[-3000:]
    restored = ember.Trainer.restore(tmp_path / "ckpt.ember")   # intact, from before
    assert restored.global_step == 0


# ---- run-batch ---------------------------------------------------------------------------------
DEMO = os.path.join(os.path.dirname(ember.__file__), "data", "digits_cnn.onnx")


def rows(n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 1, 8, 8)).astype(np.float32)


def test_run_batch_single_process_matches_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    x = rows(37)
    np.save(tmp_path / "x.npy", x)
    from ember.cli import main
    assert main(["run-batch", DEMO, "--input", str(tmp_path / "x.npy"), "--output",
                 str(tmp_path / "y.npy"), "--batch", "8", "--mpi", "off"]) == 0
    expect = ort.InferenceSession(DEMO, providers=["CPUExecutionProvider"]).run(
        None, {"image": x})[0]
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expect, atol=1e-5)


def test_run_batch_rejects_rows_of_the_wrong_shape(tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.zeros((4, 2, 8, 8), np.float32))
    from ember.cli import main
    assert main(["run-batch", DEMO, "--input", str(tmp_path / "x.npy"), "--output",
                 str(tmp_path / "y.npy"), "--mpi", "off"]) == 2
    assert "axis 1 must be 1" in capsys.readouterr().err
    assert not (tmp_path / "y.npy").exists()


@needs_mpi
@pytest.mark.parametrize("n", [101, 1])
def test_run_batch_under_mpirun_equals_one_process(tmp_path, n):
    x = rows(n)
    np.save(tmp_path / "x.npy", x)
    r, _ = mpirun([sys.executable, "-m", "ember", "run-batch", DEMO, "--input",
                   str(tmp_path / "x.npy"), "--output", str(tmp_path / "y.npz"), "--batch",
                   "16"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 rank(s)" in r.stdout
    from ember.cli import main
    assert main(["run-batch", DEMO, "--input", str(tmp_path / "x.npy"), "--output",
                 str(tmp_path / "one.npz"), "--batch", "16", "--mpi", "off"]) == 0
    got, one = np.load(tmp_path / "y.npz"), np.load(tmp_path / "one.npz")
    assert list(got) == list(one) == ["probs"]
    # the shards' last runs hold fewer rows than one process's: GEMM blocking differs
    np.testing.assert_allclose(got["probs"], one["probs"], atol=1e-5)
    assert got["probs"].shape == (n, 10)


@needs_mpi
def test_run_batch_error_on_the_ranks_is_one_clear_message(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((5, 2, 8, 8), np.float32))
    r, _ = mpirun([sys.executable, "-m", "ember", "run-batch", DEMO, "--input",
                   str(tmp_path / "x.npy"), "--output", str(tmp_path / "y.npy")], timeout=60)
    assert r.returncode != 0
    assert r.stderr.count("ember: error: rank 0 of 2 failed") == 1, r.stderr
    assert "axis 1 must be 1" in r.stderr
    assert not (tmp_path / "y.npy").exists()
