"""Embedding ember in a service (issue 7): container-aware default threads, no idle spin, and
the reference HTTP service of examples/serve.py.

Oracles: hand-written fake cgroup trees (the expected thread count worked out by hand), the
process's own CPU time from the kernel (getrusage), a plain ``Session.run`` on the same arrays
(the service must be a lossless transport: bit-identical answers) and onnxruntime.
"""
from __future__ import annotations

import http.client
import importlib.util
import io
import json
import os
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

import ember
from ember.runtime import threads as th

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
DIGITS = ROOT / "ember" / "data" / "digits_cnn.onnx"


# ---- default threads: affinity mask capped by the cgroup CPU quota ---------------------------
def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def cgroup_v2(tmp_path, cpu_max: str | None, own: str = "/app", parent_max: str | None = None):
    """A fake unified hierarchy: root/cgroup.controllers, the process in ``own``."""
    root = tmp_path / "cgroup"
    write(root / "cgroup.controllers", "cpu memory pids\n")
    if parent_max is not None:
        write(root / own.strip("/").split("/")[0] / "cpu.max", parent_max)
    if cpu_max is not None:
        write(root / own.strip("/") / "cpu.max", cpu_max)
    (root / own.strip("/")).mkdir(parents=True, exist_ok=True)
    proc = tmp_path / "proc_cgroup"
    write(proc, f"0::{own}\n")
    return str(root), str(proc)


def cgroup_v1(tmp_path, quota: str, period: str = "100000", own: str = "/docker/abc",
              mount: str = "cpu,cpuacct"):
    root = tmp_path / "cgroup"
    d = root / mount / own.strip("/")
    write(d / "cpu.cfs_quota_us", quota + "\n")
    write(d / "cpu.cfs_period_us", period + "\n")
    write(root / mount / "cpu.cfs_quota_us", "-1\n")         # the host's root: no limit
    write(root / mount / "cpu.cfs_period_us", "100000\n")
    (root / "memory").mkdir()
    proc = tmp_path / "proc_cgroup"
    write(proc, f"12:memory:{own}\n4:cpu,cpuacct:{own}\n1:name=systemd:{own}\n0::/\n")
    return str(root), str(proc)


@pytest.mark.parametrize("cpu_max, affinity, expected", [
    ("150000 100000\n", 8, 2),      # 1.5 CPUs rounds up
    ("100000 100000\n", 8, 1),
    ("50000 100000\n", 8, 1),       # half a CPU: still one thread
    ("400000 100000\n", 2, 2),      # a quota above the affinity mask: the mask wins
    ("max 100000\n", 6, 6),         # no quota: the affinity mask
])
def test_cgroup_v2_quota_caps_the_affinity_mask(tmp_path, cpu_max, affinity, expected):
    root, proc = cgroup_v2(tmp_path, cpu_max)
    assert th.default_threads({}, root, proc, affinity=affinity) == expected


def test_cgroup_v2_tightest_ancestor_wins(tmp_path):
    root, proc = cgroup_v2(tmp_path, "max 100000", own="/kubepods/pod1",
                           parent_max="200000 100000")
    assert th.default_threads({}, root, proc, affinity=16) == 2


def test_cgroup_v2_host_path_without_namespace_reads_the_mount_root(tmp_path):
    # no cgroup namespace: /proc/self/cgroup names the host's path, absent from our mount
    root, proc = cgroup_v2(tmp_path, None, own="/app")
    write(Path(root) / "cpu.max", "300000 100000\n")
    write(Path(proc), "0::/system.slice/docker-123.scope\n")
    assert th.default_threads({}, root, proc, affinity=16) == 3


@pytest.mark.parametrize("quota, period, expected", [
    ("150000", "100000", 2), ("250000", "100000", 3), ("-1", "100000", 8), ("20000", "50000", 1)])
def test_cgroup_v1_cfs_quota(tmp_path, quota, period, expected):
    root, proc = cgroup_v1(tmp_path, quota, period)
    assert th.default_threads({}, root, proc, affinity=8) == expected


def test_cgroup_v1_separate_cpu_mount(tmp_path):
    root, proc = cgroup_v1(tmp_path, "150000", mount="cpu")
    assert th.default_threads({}, root, proc, affinity=8) == 2


def test_no_cgroup_filesystem_means_the_affinity_mask(tmp_path):
    assert th.default_threads({}, str(tmp_path / "nothing"), str(tmp_path / "none"),
                              affinity=5) == 5


@pytest.mark.parametrize("value, expected", [("3", 3), (" 1 ", 1), ("64", 64), ("", 2)])
def test_env_var_overrides_the_quota(tmp_path, value, expected):
    root, proc = cgroup_v2(tmp_path, "150000 100000")
    env = {"EMBER_NUM_THREADS": value}
    assert th.default_threads(env, root, proc, affinity=8) == expected


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5", "4x"])
def test_bad_env_value_is_an_error_naming_the_variable(tmp_path, value):
    root, proc = cgroup_v2(tmp_path, "max 100000")
    with pytest.raises(ember.EmberError, match="EMBER_NUM_THREADS"):
        th.default_threads({"EMBER_NUM_THREADS": value}, root, proc, affinity=8)


def test_this_machine_default_is_within_the_affinity_mask():
    n = th.default_threads({})
    assert 1 <= n <= len(os.sched_getaffinity(0))


def test_session_default_follows_ember_num_threads(monkeypatch):
    monkeypatch.setenv("EMBER_NUM_THREADS", "3")
    assert ember.load(str(DIGITS)).threads == 3
    assert ember.load(str(DIGITS), threads=1).threads == 1      # threads= overrides the env


def test_session_with_a_bad_env_value_names_the_variable(monkeypatch):
    monkeypatch.setenv("EMBER_NUM_THREADS", "lots")
    with pytest.raises(ember.EmberError, match="EMBER_NUM_THREADS='lots'"):
        ember.load(str(DIGITS))
    assert ember.load(str(DIGITS), threads=2).threads == 2      # not even read when given


# ---- fresh processes: idle CPU after a run; other libraries' thread settings ------------------
def run_fresh(code: str, cwd, env_extra: dict | None = None) -> str:
    env = {k: v for k, v in os.environ.items()
           if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "EMBER_NUM_THREADS",
                        "EMBER_POOL_SPIN_US")}
    env.update(env_extra or {})
    # cwd outside the repository: `python -c` from the root would import the checkout's ember/
    # folder instead of the installed package
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=180, cwd=cwd, env=env)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


IDLE = textwrap.dedent("""
    import resource, sys, time
    import numpy as np
    sys.path.insert(0, {tests!r})
    import ember
    from models import small_vgg
    s = ember.load(small_vgg(batch=4).SerializeToString(), threads=2)
    x = np.ones((4, 3, 32, 32), np.float32)
    for _ in range(5):
        s.run(None, {{s.inputs[0].name: x}})
    def cpu():
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime
    c0, t0 = cpu(), time.perf_counter()
    time.sleep(1.0)
    c1, t1 = cpu(), time.perf_counter()
    print((c1 - c0) / (t1 - t0))   # CPUs used while idle
""")


def test_idle_process_after_runs_uses_under_5_percent_of_a_cpu(tmp_path):
    used = float(run_fresh(IDLE.format(tests=str(TESTS)), tmp_path))
    assert used < 0.05, f"{used:.1%} of a CPU while idle: OpenMP threads are spinning"


def test_idle_measurement_sees_a_spinning_team(tmp_path):
    # the control: with the pool's workers told to spin for 5 s after their last task, the same
    # measurement must see the helper thread burning CPU — proof the test above can fail. A
    # spinning thread gets a whole CPU on a quiet machine and its share of the two when other
    # processes compete (a quarter at load 8), so the bar sits at twice the idle test's bound
    used = float(run_fresh(IDLE.format(tests=str(TESTS)), tmp_path,
                           {"EMBER_POOL_SPIN_US": "5000000"}))
    assert used > 0.10, f"only {used:.1%} of a CPU with EMBER_POOL_SPIN_US=5000000"


def test_openmp_settings_no_longer_make_ember_spin(tmp_path):
    # ember's kernels do not run on OpenMP: a process-wide OMP_WAIT_POLICY=ACTIVE (meant for
    # some other library) leaves ember's idle workers asleep
    used = float(run_fresh(IDLE.format(tests=str(TESTS)), tmp_path,
                           {"OMP_WAIT_POLICY": "ACTIVE"}))
    assert used < 0.05, f"{used:.1%} of a CPU while idle with OMP_WAIT_POLICY=ACTIVE"


def test_ember_leaves_other_libraries_thread_settings_alone(tmp_path):
    # numpy's BLAS pool keeps its size, no *_NUM_THREADS variable is set, and ember brings no
    # OpenMP runtime into the process (its kernels run on its own pool, kernels/thread_pool.c)
    pytest.importorskip("threadpoolctl")
    code = textwrap.dedent(f"""
        import json, os
        import numpy as np
        from threadpoolctl import threadpool_info
        KEYS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "GOMP_SPINCOUNT", "OMP_WAIT_POLICY")
        def pools():
            return {{p["filepath"]: (p["internal_api"], p["num_threads"])
                    for p in threadpool_info()}}
        before, env = pools(), {{k: os.environ.get(k) for k in KEYS}}
        import ember
        s = ember.load({str(DIGITS)!r}, threads=1)
        s.run(None, {{"image": np.ones((2, 1, 8, 8), np.float32)}})
        np.ones((64, 64)) @ np.ones((64, 64))
        after = pools()
        print(json.dumps(dict(
            kept=all(after.get(k) == v for k, v in before.items()),
            env=env == {{k: os.environ.get(k) for k in KEYS}},
            openmp=[n for f, (api, n) in after.items() if api == "openmp" and f not in before],
            cpus=len(os.sched_getaffinity(0)))))
    """)
    got = json.loads(run_fresh(code, tmp_path))
    assert got["kept"] and got["env"]
    assert got["openmp"] == [], f"ember loaded an OpenMP runtime: {got}"   # its own pool only


# ---- the reference service ---------------------------------------------------------------------
def load_serve():
    spec = importlib.util.spec_from_file_location("ember_example_serve",
                                                  ROOT / "examples" / "serve.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


serve = load_serve()


@pytest.fixture(scope="module")
def server():
    srv = serve.make_server(str(DIGITS), threads=1, max_inflight=4, max_body=1 << 16, quiet=True)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def reference():
    return ember.load(str(DIGITS), threads=1)


def images(n, seed=0):
    return np.random.default_rng(seed).random((n, 1, 8, 8), dtype=np.float32) * 16


def npy(a) -> bytes:
    b = io.BytesIO()
    np.save(b, a)
    return b.getvalue()


def request(conn, method, path, body=None, headers=None):
    conn.request(method, path, body=body, headers=headers or {})
    r = conn.getresponse()
    return r.status, json.loads(r.read())


@pytest.fixture
def conn(server):
    c = http.client.HTTPConnection(*server.server_address[:2], timeout=30)
    yield c
    c.close()


def test_health_and_model(conn):
    assert request(conn, "GET", "/health") == (200, {"status": "ok"})
    status, doc = request(conn, "GET", "/model")
    assert status == 200 and doc["engine"] == "ember"
    assert doc["inputs"] == [{"name": "image", "shape": ["N", 1, 8, 8], "dtype": "float32"}]
    assert doc["outputs"][0]["name"] == "probs"
    assert request(conn, "GET", "/nope")[0] == 404


@pytest.mark.parametrize("kind", ["input", "inputs", "npy", "npz"])
def test_predict_matches_session_run_exactly(conn, reference, kind):
    x = images(3, seed=1)
    body, headers = {
        "input": (json.dumps({"input": x.tolist()}), {}),
        "inputs": (json.dumps({"inputs": {"image": x.tolist()}}),
                   {"Content-Type": "application/json"}),
        "npy": (npy(x), {"Content-Type": "application/x-npy"}),
        "npz": (None, {"Content-Type": "application/x-npz"}),
    }[kind]
    if kind == "npz":
        b = io.BytesIO()
        np.savez(b, image=x)
        body = b.getvalue()
    status, doc = request(conn, "POST", "/predict", body, headers)
    assert status == 200, doc
    (want,) = reference.run(None, {"image": x})
    got = np.array(doc["outputs"]["probs"], np.float32)
    np.testing.assert_array_equal(got, want)           # JSON float round-trip is exact
    assert doc["argmax"]["probs"] == want.argmax(1).tolist()


def test_integer_json_pixels_are_accepted_for_a_float_input(conn, reference):
    x = np.arange(64, dtype=np.int64).reshape(1, 1, 8, 8) % 17
    status, doc = request(conn, "POST", "/predict", json.dumps({"input": x.tolist()}))
    assert status == 200
    np.testing.assert_array_equal(np.array(doc["outputs"]["probs"], np.float32),
                                  reference.run(None, {"image": x.astype(np.float32)})[0])


def test_answers_agree_with_onnxruntime(conn):
    ort = pytest.importorskip("onnxruntime")
    x = images(4, seed=2)
    status, doc = request(conn, "POST", "/predict", npy(x), {"Content-Type": "application/x-npy"})
    want = ort.InferenceSession(str(DIGITS), providers=["CPUExecutionProvider"]).run(
        None, {"image": x})[0]
    np.testing.assert_allclose(np.array(doc["outputs"]["probs"]), want, rtol=1e-4, atol=1e-6)


BAD = {
    "bad json": ("{not json", {}, "not valid JSON"),
    "not an object": ("[1, 2]", {}, "expected a JSON object"),
    "wrong shape": (json.dumps({"input": [[1.0, 2.0]]}), {}, "expected shape (N, 1, 8, 8)"),
    "ragged": (json.dumps({"input": [[[[1.0]], [[1.0, 2.0]]]]}), {}, "cannot convert"),
    "strings": (json.dumps({"input": [[[["a"] * 8] * 8]]}), {}, "expected dtype float32"),
    "unknown name": (json.dumps({"inputs": {"img": [1]}}), {}, "unknown input(s) ['img']"),
    "float64 npy": (npy(np.zeros((1, 1, 8, 8))), {"Content-Type": "application/x-npy"},
                    "expected dtype float32, got float64"),
    "broken npy": (b"\x93NUMPY garbage", {"Content-Type": "application/x-npy"},
                   "not a valid .npy"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_request_is_400_with_embers_message_and_serving_goes_on(conn, reference, case):
    body, headers, message = BAD[case]
    status, doc = request(conn, "POST", "/predict", body, headers)
    assert status == 400
    assert message in doc["error"]
    x = images(1, seed=3)   # the same keep-alive connection still gets right answers
    status, doc = request(conn, "POST", "/predict", json.dumps({"input": x.tolist()}))
    assert status == 200
    np.testing.assert_array_equal(np.array(doc["outputs"]["probs"], np.float32),
                                  reference.run(None, {"image": x})[0])


def test_body_over_the_cap_is_refused_unread(server, conn):
    big = npy(np.zeros((300, 1, 8, 8), np.float32))      # 77 kB > the 64 kB cap
    status, doc = request(conn, "POST", "/predict", big, {"Content-Type": "application/x-npy"})
    assert status == 413 and "over the limit" in doc["error"]
    fresh = http.client.HTTPConnection(*server.server_address[:2], timeout=30)
    try:
        status, _ = request(fresh, "POST", "/predict", npy(images(2)),
                            {"Content-Type": "application/x-npy"})
        assert status == 200
    finally:
        fresh.close()


def test_concurrent_requests_from_8_threads_get_their_own_answers(server, reference):
    inputs = [images(1 + i % 3, seed=100 + i) for i in range(8)]
    wants = [reference.run(None, {"image": x})[0] for x in inputs]
    results, errors = [None] * 8, []
    start = threading.Barrier(8)

    def client(i):
        try:
            c = http.client.HTTPConnection(*server.server_address[:2], timeout=60)
            start.wait()
            got = []
            for _ in range(10):
                status, doc = request(c, "POST", "/predict", npy(inputs[i]),
                                      {"Content-Type": "application/x-npy"})
                assert status == 200, doc
                got.append(np.array(doc["outputs"]["probs"], np.float32))
            c.close()
            results[i] = got
        except Exception as e:   # reported below, with the thread's index
            errors.append((i, e))

    workers = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors, errors
    for got, want in zip(results, wants):
        for g in got:
            np.testing.assert_array_equal(g, want)


def test_onnxruntime_engine_serves_the_same_api(reference):
    pytest.importorskip("onnxruntime")
    srv = serve.make_server(str(DIGITS), threads=1, engine="onnxruntime", quiet=True)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        c = http.client.HTTPConnection(*srv.server_address[:2], timeout=30)
        x = images(2, seed=5)
        status, doc = request(c, "POST", "/predict", json.dumps({"input": x.tolist()}))
        assert status == 200
        np.testing.assert_allclose(np.array(doc["outputs"]["probs"]),
                                   reference.run(None, {"image": x})[0], rtol=1e-4, atol=1e-6)
        status, doc = request(c, "POST", "/predict", json.dumps({"input": [[1.0]]}))
        assert status == 400 and "image" in doc["error"]
        c.close()
    finally:
        srv.shutdown()
        srv.server_close()


# ---- the reference service under hostile clients (issue 19 §6) --------------------------------
@pytest.fixture
def hardened():
    """A server of its own for each test, so a test may stall every worker: two workers, reads
    that give up after half a second."""
    def start(**kw):
        srv = serve.make_server(str(DIGITS), threads=1, quiet=True, **kw)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return srv

    servers = []
    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def raw(srv, data: bytes = b"") -> socket.socket:
    s = socket.create_connection(srv.server_address[:2], timeout=30)
    if data:
        s.sendall(data)
    return s


def read_until_closed(s: socket.socket) -> bytes:
    """Everything the server sends before it closes the socket (a reset counts as closed); a
    server that never closes fails the test at the socket's timeout instead of blocking it."""
    got = b""
    try:
        for _ in range(10_000):
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
    except ConnectionResetError:
        pass
    s.close()
    return got


def predicts(srv) -> bool:
    c = http.client.HTTPConnection(*srv.server_address[:2], timeout=30)
    try:
        status, doc = request(c, "POST", "/predict", npy(images(1)),
                              {"Content-Type": "application/x-npy"})
        return status == 200 and "probs" in doc["outputs"]
    finally:
        c.close()


def test_stalled_clients_are_closed_after_the_read_timeout(hardened):
    srv = hardened(workers=2, read_timeout=0.5)
    silent = raw(srv)
    half_line = raw(srv, b"POST /predi")
    half_body = raw(srv, b"POST /predict HTTP/1.1\r\nContent-Type: application/x-npy\r\n"
                         b"Content-Length: 1000\r\n\r\n\x93NUMPY")
    # three stalled clients on two workers: the third waits in the backlog until one is freed
    assert read_until_closed(silent) == b""
    assert read_until_closed(half_line) == b""
    answer = read_until_closed(half_body)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b"--read-timeout" in answer.split(b"\r\n\r\n", 1)[1]
    assert predicts(srv)


def test_fifty_stalled_connections_hold_no_more_threads_than_workers(hardened):
    srv = hardened(workers=4, read_timeout=30)

    def workers():
        return sum(t.name == srv.worker_name for t in threading.enumerate())

    stalled = [raw(srv) for _ in range(50)]
    for _ in range(400):                  # until the four workers hold a connection each
        if workers() >= 4:
            break
        time.sleep(0.025)
    time.sleep(0.3)                       # time for more threads to appear, if any would
    assert workers() == 4
    for s in stalled:
        s.close()
    assert predicts(srv)                  # the backlog drains and the service answers


@pytest.mark.parametrize("body, message", [
    ("[" * 30_000 + "]" * 30_000, "nested 30000 levels deep"),      # 60 kB, under the cap
    (json.dumps({"input": 0}).replace("0", "[" * 40 + "1.0" + "]" * 40), "nested 41 levels"),
], ids=["30000 lists", "a 40-d input"])
def test_deeply_nested_json_is_400_before_parsing(conn, body, message):
    status, doc = request(conn, "POST", "/predict", body)
    assert status == 400 and message in doc["error"]


def test_brackets_inside_json_strings_do_not_count_as_nesting():
    assert serve.json_depth(b'{"a": "[[[[[\\"[[[[", "b": [[1]]}') == 3
    assert serve.json_depth(b'"\\\\"') == 0


@pytest.mark.parametrize("value, message", [
    ([[[[[[[[1.0]]]]]]]], "expected shape (N, 1, 8, 8)"),      # deeper than the input's rank
    ([[[[1.0]], [[1.0, 2.0]]]], "cannot convert"),                # ragged
    ([[[[10 ** 400]]]], "expected dtype float32"),               # no float holds it
])
def test_json_inputs_of_absurd_shape_or_values_are_400(conn, value, message):
    status, doc = request(conn, "POST", "/predict", json.dumps({"input": value}))
    assert status == 400 and message in doc["error"]


def npz_bomb(decompressed: int) -> bytes:
    """A valid .npz whose one member, ``image.npy``, is ``decompressed`` bytes of zeros (about
    a thousandth of that compressed)."""
    n = (decompressed - 128) // 256
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                  "shape": (n, 1, 8, 8)})
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("image.npy", "w", force_zip64=True) as member:
            member.write(header.getvalue())
            zeros = bytes(1 << 20)
            for _ in range(n * 256 >> 20):
                member.write(zeros)
            member.write(bytes(n * 256 % (1 << 20)))
    return out.getvalue()


def forge_sizes(archive: bytes, size: int) -> bytes:
    """The archive with every header claiming its member decompresses to ``size`` bytes."""
    z = zipfile.ZipFile(io.BytesIO(archive))
    real = z.infolist()[0].file_size
    for fmt in ("<Q", "<I"):        # zip64 extra fields and plain headers
        archive = archive.replace(struct.pack(fmt, real), struct.pack(fmt, size))
    return archive


INPUTS = [("image", ["N", 1, 8, 8], np.dtype(np.float32))]


@pytest.mark.parametrize("forged", [False, True])
def test_npz_zip_bomb_is_refused_without_decompressing_it(forged):
    bomb = npz_bomb(64 << 20)
    assert len(bomb) < 100_000
    if forged:                      # headers that lie: the stream is bounded, not the headers
        bomb = forge_sizes(bomb, 1000)
    tracemalloc.start()
    try:
        with pytest.raises(serve.BadRequest) as refused:
            serve.parse_body(bomb, "application/x-npz", INPUTS, max_bytes=1 << 20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"{peak:,} bytes allocated to refuse a bomb"
    if forged:
        assert refused.value.status == 400 and "not a valid .npz" in str(refused.value)
    else:
        assert refused.value.status == 413 and "over the limit of 1,048,576" in str(refused.value)


def test_npz_decompressing_past_the_limit_is_413_over_http(conn, server):
    bomb = npz_bomb(16 << 20)
    status, doc = request(conn, "POST", "/predict", bomb, {"Content-Type": "application/x-npz"})
    assert status == 413 and "decompressed" in doc["error"]
    assert predicts(server)


def test_npz_under_the_limit_still_predicts(conn, reference):
    x = images(2, seed=7)
    b = io.BytesIO()
    np.savez_compressed(b, image=x)
    status, doc = request(conn, "POST", "/predict", b.getvalue(),
                          {"Content-Type": "application/x-npz"})
    assert status == 200
    np.testing.assert_array_equal(np.array(doc["outputs"]["probs"], np.float32),
                                  reference.run(None, {"image": x})[0])


def npy_declaring(shape, data: bytes) -> bytes:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                  "shape": shape})
    return header.getvalue() + data


@pytest.mark.parametrize("body, status, message", [
    (npy_declaring((1 << 40, 1, 8, 8), bytes(256)), 413, "declares shape (1099511627776, 1, 8"),
    (npy_declaring((4, 1, 8, 8), bytes(256)), 400, "declares 1,024 bytes of data, it holds 256"),
])
def test_npy_header_is_checked_before_allocating(conn, body, status, message):
    got, doc = request(conn, "POST", "/predict", body, {"Content-Type": "application/x-npy"})
    assert got == status and message in doc["error"]


@pytest.mark.parametrize("data, status", [
    (b"GET /a b HTTP/1.1\r\n\r\n", 400),                              # not a request line
    (b"PUT /predict HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 501),     # no such method
    (b"GET /health HTTP/1.1\r\nX: " + b"a" * 70_000 + b"\r\n\r\n", 431),  # header too long
], ids=["bad request line", "unknown method", "header too long"])
def test_malformed_requests_get_a_json_error_and_serving_goes_on(server, data, status):
    answer = read_until_closed(raw(server, data))
    head, body = answer.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 %d " % status)
    assert json.loads(body)["error"]
    assert predicts(server)
