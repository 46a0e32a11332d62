"""A Session (and a Trainer) pickles: to worker processes of multiprocessing (spawn and fork),
ProcessPoolExecutor, joblib's default backend and a Dask cluster.

Oracles: onnxruntime on the same ONNX model (rtol/atol 1e-4: float32 sums in another order),
and, for what pickling must keep exactly, the Session or Trainer that was pickled (the same
kernels on the same bytes: bit-equal). Pools run the bundled digits CNN over 2 048 rows.

No oversubscription: every worker reports its pid, its Session's thread count and the process
CPU time and wall time of its task (``time.process_time``, no psutil). The threads of the
distinct workers must add up to at most the CPUs the test may use, and the CPU time of all tasks
at most the pool's wall time × those CPUs (with generous slack for start-up).
"""
from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import pickle
import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import ember
from ember.cli import DEMO_MODEL
from ember.runtime.threads import default_threads

from models import lenet5
from pickle_tasks import dask_block, infer_chunk, set_threads, worker_report

ROWS, CHUNK = 2048, 256
CPUS = default_threads(environ={})


@pytest.fixture(scope="module")
def rows():
    return np.random.default_rng(0).standard_normal((ROWS, 1, 8, 8)).astype(np.float32)


@pytest.fixture(scope="module")
def expected(rows):
    """onnxruntime's logits for every row."""
    peer = ort.InferenceSession(DEMO_MODEL, providers=["CPUExecutionProvider"])
    return peer.run(None, {"image": rows})[0]


def check_pool(results, expected, wall):
    out = np.concatenate([r[0] for r in results])
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
    threads = {pid: t for _, (pid, t, _, _) in results}
    assert sum(threads.values()) <= CPUS, f"workers {threads} oversubscribe {CPUS} CPUs"
    cpu = sum(c for _, (_, _, c, _) in results)
    assert cpu <= 1.5 * wall * CPUS + 0.5, (cpu, wall, CPUS)


def chunks(rows):
    return [rows[i:i + CHUNK] for i in range(0, len(rows), CHUNK)]


# ---- what a pickle carries ---------------------------------------------------------------------
def test_onnx_session_roundtrip_is_lazy_and_equal(rows, expected):
    sess = ember.load(DEMO_MODEL, shapes={"image": (CHUNK, 1, 8, 8)}, max_plans=3,
                      memory_cap=1 << 28)
    data = pickle.dumps(sess)
    # the ONNX bytes and a few options: no arena, no compiled plan
    assert len(data) < os.path.getsize(DEMO_MODEL) + 2048
    back = pickle.loads(data)
    assert len(back._plans.plans) == 0, "unpickling compiled eagerly"
    assert (back.max_plans, back.memory_cap, back.optimize) == (3, 1 << 28, True)
    assert [i.shape for i in back.inputs] == [(CHUNK, 1, 8, 8)]
    x = rows[:CHUNK]
    out = back.run(None, {"image": x})[0]
    np.testing.assert_array_equal(out, sess.run(None, {"image": x})[0])
    np.testing.assert_allclose(out, expected[:CHUNK], rtol=1e-4, atol=1e-4)
    assert len(back._plans.plans) == 1 and back._fast is not None


def test_session_from_bytes_keeps_the_callers_bytes():
    with open(DEMO_MODEL, "rb") as f:
        data = f.read()
    sess = ember.load(data)
    assert sess._source.data is data          # what the caller holds, not a copy
    assert ember.load(DEMO_MODEL)._source.data is None     # a file is read again when pickled


def test_a_model_file_changed_since_load_is_refused(tmp_path):
    path = tmp_path / "digits.onnx"
    path.write_bytes(open(DEMO_MODEL, "rb").read())
    sess = ember.load(str(path))
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(ember.ModelError, match=r"digits\.onnx.*changed since the model was "
                                                r"loaded"):
        pickle.dumps(sess)
    path.unlink()
    with pytest.raises(ember.ModelError, match="cannot be read now"):
        pickle.dumps(sess)


@pytest.mark.parametrize("as_given", ["bytearray", "model_proto"])
def test_a_model_the_caller_may_change_travels_as_its_graph(as_given, rows, expected):
    """A bytearray or an onnx.ModelProto may change after the load: the Session pickles the
    graph it compiled instead of holding a copy of either."""
    with open(DEMO_MODEL, "rb") as f:
        data = f.read()
    given = bytearray(data) if as_given == "bytearray" else onnx.load_from_string(data)
    sess = ember.load(given)
    assert sess._source is None
    back = pickle.loads(pickle.dumps(sess))
    np.testing.assert_allclose(back(rows[:8]), expected[:8], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("given", [None, 1])
def test_threads_travel_only_when_given(monkeypatch, given):
    sess = ember.load(DEMO_MODEL, threads=given)
    data = pickle.dumps(sess)
    monkeypatch.setenv("EMBER_NUM_THREADS", "3")
    back = pickle.loads(data)
    assert back.threads == (given or 3)
    monkeypatch.setenv("EMBER_NUM_THREADS", "2")
    assert pickle.loads(pickle.dumps(back)).threads == (given or 2)


def test_pool_thread_cap_is_respected(monkeypatch):
    """Dask's and joblib's workers set OMP_NUM_THREADS: a default thread count obeys it."""
    data = pickle.dumps(ember.load(DEMO_MODEL))
    monkeypatch.delenv("EMBER_NUM_THREADS", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert pickle.loads(data).threads == 1
    monkeypatch.setenv("EMBER_NUM_THREADS", "2")      # ember's own variable wins
    assert pickle.loads(data).threads == 2


def test_external_data_travels_with_the_model(tmp_path):
    model = lenet5(batch=2, seed=3)
    folder = tmp_path / "m"
    (folder / "weights").mkdir(parents=True)
    path = folder / "lenet.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights/lenet.bin", size_threshold=0)
    x = np.random.default_rng(1).standard_normal((2, 1, 32, 32)).astype(np.float32)
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {model.graph.input[0].name: x})[0]
    sess = ember.load(str(path))
    data = pickle.dumps(sess)
    for f in sorted(folder.rglob("*"), reverse=True):   # the worker has no such folder
        f.unlink() if f.is_file() else f.rmdir()
    back = pickle.loads(data)
    np.testing.assert_allclose(back(x), want, rtol=1e-4, atol=1e-4)
    assert pickle.loads(pickle.dumps(back))(x).tobytes() == back(x).tobytes()


def test_external_data_changed_since_load_is_refused(tmp_path):
    path = tmp_path / "lenet.onnx"
    onnx.save_model(lenet5(seed=4), str(path), save_as_external_data=True,
                    location="lenet.bin", size_threshold=0)
    sess = ember.load(str(path))
    blob = tmp_path / "lenet.bin"
    blob.write_bytes(blob.read_bytes()[::-1])
    later = time.time_ns() + 10**9      # file times are coarse: a write 1 ms after the load
    os.utime(blob, ns=(later, later))   # may carry the load's time; this one is plainly after
    with pytest.raises(ember.ModelError, match=r"lenet\.bin.*changed since the model was "
                                                r"loaded"):
        pickle.dumps(sess)


def test_python_built_session_with_external_state():
    """A graph built in Python travels in ember's serialized form, its bound external state
    beside it (a copy in the worker: the caller's arrays stay the caller's)."""
    from ember import nn
    g = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).to_graph((5, 4), seed=0)
    name = next(n for n, a in g.initializers.items() if a.ndim == 2)
    weight = np.array(g.initializers.pop(name), order="C")
    g.inputs.append(name)
    sess = ember.Session(g, external={name: weight})
    x = np.random.default_rng(2).standard_normal((5, 4)).astype(np.float32)
    back = pickle.loads(pickle.dumps(sess))
    np.testing.assert_array_equal(back(x), sess(x))
    weight *= 2                                    # the original reads it in place, not the copy
    assert not np.array_equal(back(x), sess(x))
    np.testing.assert_array_equal(back.external[name] * 2, weight)


def test_trainer_pickles_as_its_checkpoint():
    from ember import nn, optim
    from ember.datasets import load_digits
    x, y = load_digits()
    x, y = x[:256], y[:256]
    trainer = ember.Trainer(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), input_shape=(1, 8, 8),
                            optimizer=optim.SGD(lr=0.05, momentum=0.9), batch_size=32, seed=1)
    trainer.fit(x, y, epochs=1, verbose=False)
    twin = pickle.loads(pickle.dumps(trainer))
    assert (twin.global_step, twin.epoch) == (trainer.global_step, trainer.epoch)
    # momentum and the shuffling generator came along: one more epoch stays bit-equal
    for t in (trainer, twin):
        t.fit(x, y, epochs=1, verbose=False)
    for name, p in trainer.params.items():
        np.testing.assert_array_equal(twin.params[name], p)
    assert twin.history.history["loss"] == trainer.history.history["loss"]


def test_a_distributed_trainer_refuses_and_names_the_checkpoint_way(monkeypatch):
    from ember import nn
    trainer = ember.Trainer(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), input_shape=(1, 8, 8))
    monkeypatch.setattr(trainer, "dist", object())      # as if it were one rank of an MPI job
    with pytest.raises(ember.TrainingError, match=r"trainer\.save\(path\).*Trainer\.restore"):
        pickle.dumps(trainer)


# ---- pools ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_multiprocessing_pool(method, rows, expected, tmp_path, monkeypatch):
    """The README's rule for a pool of N workers on N cores: 1 thread each (threads=1 travels
    with the Session)."""
    monkeypatch.chdir(tmp_path)          # a spawned child must not import the checkout's ember/
    sess = ember.load(DEMO_MODEL, threads=1)
    sess.run(None, {"image": rows[:CHUNK]})        # the parent has run OpenMP before forking
    workers = min(2, CPUS)
    t0 = time.perf_counter()
    with multiprocessing.get_context(method).Pool(workers) as pool:
        results = pool.starmap_async(infer_chunk, [(sess, c) for c in chunks(rows)]).get(120)
    check_pool(results, expected, time.perf_counter() - t0)


def test_process_pool_executor_recomputes_threads(rows, expected, tmp_path, monkeypatch):
    """A Session loaded with the default thread count: each worker computes its own, here
    from EMBER_NUM_THREADS set by the pool's initializer."""
    monkeypatch.chdir(tmp_path)
    sess = ember.load(DEMO_MODEL)
    workers = min(2, CPUS)
    t0 = time.perf_counter()
    with concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("fork"),
            initializer=set_threads, initargs=(CPUS // workers,)) as pool:
        results = list(pool.map(infer_chunk, [sess] * (ROWS // CHUNK), chunks(rows),
                                timeout=120))
    assert {t for _, (_, t, _, _) in results} == {CPUS // workers}
    check_pool(results, expected, time.perf_counter() - t0)


def test_joblib_default_backend(rows, expected, tmp_path, monkeypatch):
    joblib = pytest.importorskip("joblib")
    monkeypatch.chdir(tmp_path)
    sess = ember.load(DEMO_MODEL)       # default threads: loky's per-worker cap applies
    t0 = time.perf_counter()
    results = joblib.Parallel(n_jobs=min(2, CPUS))(
        joblib.delayed(infer_chunk)(sess, c) for c in chunks(rows))
    check_pool(results, expected, time.perf_counter() - t0)


@pytest.fixture
def environment_restored():
    """Starting a LocalCluster sets OMP_NUM_THREADS=1 (and the like) in this process's own
    environment, which later tests' subprocesses would inherit: put it back."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def test_dask_map_blocks_on_a_local_cluster(tmp_path, monkeypatch, environment_restored):
    """The README's way for batch inference in a data pipeline: ``map_blocks`` with the
    Session as an argument, on a 2-worker LocalCluster; equal to one Session (bit-equal: the
    same kernels, batch rows independent) and to onnxruntime."""
    da = pytest.importorskip("dask.array")
    distributed = pytest.importorskip("dask.distributed")
    monkeypatch.chdir(tmp_path)
    x = np.random.default_rng(5).standard_normal((8192, 1, 8, 8)).astype(np.float32)
    sess = ember.load(DEMO_MODEL)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None, local_directory=str(tmp_path)) \
            as cluster, distributed.Client(cluster) as client:
        arr = da.from_array(x, chunks=(1024, 1, 8, 8))
        logits = arr.map_blocks(dask_block, sess, chunks=(1024, 10), drop_axis=[2, 3],
                                dtype=np.float32)
        cpu0 = sum(client.run(time.process_time).values())
        t0 = time.perf_counter()
        out = logits.compute()
        wall = time.perf_counter() - t0
        cpu = sum(client.run(time.process_time).values()) - cpu0
        reports = client.run(worker_report, sess)
    np.testing.assert_array_equal(out, sess.run(None, {"image": x})[0])
    peer = ort.InferenceSession(DEMO_MODEL, providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(out, peer.run(None, {"image": x})[0], rtol=1e-4, atol=1e-4)
    threads = dict(reports.values())
    assert sum(threads.values()) <= max(CPUS, len(threads)), threads
    assert cpu <= 1.5 * wall * CPUS + 1.0, (cpu, wall)
