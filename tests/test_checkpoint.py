"""Checkpoints: exact resumption in a new process, atomic writes under SIGKILL, and refusal of
truncated, tampered or hostile files."""
from __future__ import annotations

import hashlib
import json
import signal
import struct
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import ember
from ember import nn, optim
from ember.graph import serialize
from ember.optim import lr_scheduler
from ember.runtime import checkpoint


def model():
    # Dropout: its masks must continue too (they are a function of the seed and the step)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Dropout(0.25), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 10))


def dataset(n=70, seed=0):
    r = np.random.default_rng(seed)
    return r.normal(size=(n, 1, 8, 8)).astype(np.float32), r.integers(0, 10, n)


def make_trainer(threads=1, seed=5, optimizer=None):
    # threads=1: a parallel reduction's order could differ between runs; bit-identity needs one
    return ember.Trainer(model(), input_shape=(1, 8, 8),
                         optimizer=optimizer or optim.Adam(lr=1e-2),
                         batch_size=16, seed=seed, threads=threads, l2=0.01,
                         scheduler=lr_scheduler.StepLR(step_size=1, gamma=0.7))


def run_child(code: str, cwd, timeout=300):
    """Run ``code`` in a fresh interpreter outside the repository."""
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd,
                       capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def test_restore_in_a_new_process_continues_bit_identically(tmp_path):
    X, y = dataset()
    np.savez(tmp_path / "data.npz", X=X, y=y)
    t = make_trainer()
    t.fit(X, y, epochs=2, verbose=False)       # Adam state, scheduler, shuffling all in use
    ckpt = tmp_path / "run.ember"
    t.save(ckpt)
    t.fit(X, y, epochs=2, verbose=False)       # the uninterrupted run: 2 more epochs...
    for _ in range(3):
        t.train_step(X[:16], y[:16])           # ... and 3 more steps
    run_child(f"""
        import numpy as np, ember
        d = np.load({str(tmp_path / 'data.npz')!r})
        t = ember.Trainer.restore({str(ckpt)!r}, threads=1)
        assert t.epoch == 2 and t.global_step == 10, (t.epoch, t.global_step)
        t.fit(d["X"], d["y"], epochs=2, verbose=False)
        for _ in range(3):
            t.train_step(d["X"][:16], d["y"][:16])
        np.savez("resumed.npz", **t.state_dict(), __lr=np.array(t.optimizer.lr),
                 __steps=np.array([t.global_step, t.epoch, t.optimizer.steps]))
        import json; print(json.dumps(t.history.history["loss"]))
    """, cwd=tmp_path)
    resumed = np.load(tmp_path / "resumed.npz")
    for k, v in t.state_dict().items():
        np.testing.assert_array_equal(resumed[k], v, err_msg=k)      # bit-identical
    assert float(resumed["__lr"]) == t.optimizer.lr
    assert list(resumed["__steps"]) == [t.global_step, t.epoch, t.optimizer.steps]


@pytest.mark.parametrize("threads", [1, 2])
def test_resume_with_dropout_and_batchnorm_is_bit_identical(tmp_path, threads):
    """Dropout's masks depend on (node seed, dropout step) and the step is checkpointed, so a
    restored Trainer draws the masks the uninterrupted one draws. Resetting the restored
    step to 0 (what a per-process counter would do) breaks the equality: the check has teeth."""
    X, y = dataset()
    t = make_trainer(threads)
    t.fit(X, y, epochs=1, verbose=False)
    t.save(tmp_path / "a.ember")
    t.fit(X, y, epochs=2, verbose=False)
    restored = ember.Trainer.restore(tmp_path / "a.ember", threads=threads)
    assert int(restored.dropout_step) == restored.global_step == 5
    stale = ember.Trainer.restore(tmp_path / "a.ember", threads=threads)
    stale.dropout_step[...] = 0
    for r in (restored, stale):
        r.fit(X, y, epochs=2, verbose=False)
    assert int(restored.dropout_step) == int(t.dropout_step) == 15
    for k, v in t.state_dict().items():
        np.testing.assert_array_equal(restored.state_dict()[k], v, err_msg=k)
    assert not np.array_equal(stale.state_dict()["6.weight"], t.state_dict()["6.weight"])


def test_dropout_masks_change_with_the_step_and_repeat_with_the_seed():
    """lr = 0 keeps the parameters fixed, so the gradients of one batch change only through
    Dropout's masks: a new step gives new ones; another Trainer with the same seed, at the same
    step, the same ones; another seed other ones."""
    X, y = dataset(16)

    def trainer(seed):
        return make_trainer(seed=seed, optimizer=optim.SGD(lr=0.0))
    a, b, other = trainer(5), trainer(5), trainer(6)
    other.load_state_dict(a.state_dict())       # the same weights: only the masks differ
    g0 = a.gradients(X, y)["6.weight"]
    a.train_step(X, y)
    g1 = a.gradients(X, y)["6.weight"]
    assert not np.array_equal(g0, g1)
    np.testing.assert_array_equal(b.gradients(X, y)["6.weight"], g0)
    assert not np.array_equal(other.gradients(X, y)["6.weight"], g0)
    b.train_step(X, y)
    np.testing.assert_array_equal(b.gradients(X, y)["6.weight"], g1)


def test_restored_trainer_keeps_config_and_history(tmp_path):
    X, y = dataset()
    t = make_trainer()
    t.fit(X, y, epochs=1, verbose=False)
    t.save(tmp_path / "a.ember")
    r = ember.Trainer.restore(tmp_path / "a.ember", threads=1)
    assert isinstance(r, ember.Trainer)
    assert (r.batch_size, r.seed, r.l2, r.input_shape) == (16, 5, 0.01, (1, 8, 8))
    assert type(r.optimizer).__name__ == "Adam" and type(r.scheduler).__name__ == "StepLR"
    assert r.history.history == t.history.history
    assert list(r.state_dict()) == list(t.state_dict())
    np.testing.assert_array_equal(r.predict(X), t.predict(X))


def test_graph_serialization_round_trip():
    g = model().eval().to_graph(input_shape=("N", 1, 8, 8), seed=0)
    back = serialize.from_bytes(serialize.to_bytes(g))
    assert [n.op_type for n in back.nodes] == [n.op_type for n in g.nodes]
    x = np.random.default_rng(0).normal(size=(3, 1, 8, 8)).astype(np.float32)
    a = ember.Session(g, threads=1).run(None, {"input": x})[0]
    b = ember.Session(back, threads=1).run(None, {"input": x})[0]
    np.testing.assert_array_equal(a, b)


# ---- corrupt files -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def good_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("ck") / "good.ember"
    X, y = dataset(20)
    t = make_trainer()
    t.fit(X, y, epochs=1, verbose=False)
    t.save(path)
    return path.read_bytes()


def _write(tmp_path, data: bytes):
    p = tmp_path / "bad.ember"
    p.write_bytes(data)
    return p


@pytest.mark.parametrize("cut", [1, 11, 12, 30, 200, -33, -32, -1])
def test_truncated_file_is_refused(good_file, tmp_path, cut):
    p = _write(tmp_path, good_file[:cut] if cut > 0 else good_file[:len(good_file) + cut])
    with pytest.raises(ember.CheckpointError, match=r"bad\.ember.*(truncated|lengths)"):
        ember.Trainer.restore(p)


@pytest.mark.parametrize("where", [14, 40, 0.5, -40, -1])
def test_flipped_byte_is_refused(good_file, tmp_path, where):
    data = bytearray(good_file)
    i = int(where * len(data)) if isinstance(where, float) else where % len(data)
    data[i] ^= 0x10
    with pytest.raises(ember.CheckpointError, match=r"bad\.ember"):
        ember.Trainer.restore(_write(tmp_path, bytes(data)))


@pytest.mark.parametrize("data,match", [
    (b"", "empty"),
    (b"PK\x03\x04" + b"\0" * 100, "magic"),
    (b"\x80\x04\x95" + b"\0" * 100, "magic"),     # a pickle is not read, even partly
])
def test_not_a_checkpoint_is_refused(tmp_path, data, match):
    with pytest.raises(ember.CheckpointError, match=match):
        ember.Trainer.restore(_write(tmp_path, data))


def test_wrong_magic_and_trailing_bytes_are_refused(good_file, tmp_path):
    with pytest.raises(ember.CheckpointError, match="magic"):
        ember.Trainer.restore(_write(tmp_path, b"X" + good_file[1:]))
    with pytest.raises(ember.CheckpointError, match="trailing"):
        ember.Trainer.restore(_write(tmp_path, good_file + b"\0"))
    with pytest.raises(ember.CheckpointError, match="cannot be read"):
        ember.Trainer.restore(tmp_path / "missing.ember")


def forge(header, payload: bytes) -> bytes:
    """A file with a *valid* checksum around hostile contents (anyone can recompute SHA-256:
    the parser, not the checksum, must stand between a file and the process). ``header``: a
    JSON-able object, or the JSON text's bytes."""
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    body = checkpoint.MAGIC + struct.pack("<IQ", checkpoint.VERSION, len(h)) + h + \
        struct.pack("<Q", len(payload)) + payload
    return body + hashlib.sha256(body).digest()


def split(data: bytes) -> tuple:
    """(header object, payload bytes) of a checkpoint file."""
    start = len(checkpoint.MAGIC) + 12
    (hlen,) = struct.unpack_from("<Q", data, len(checkpoint.MAGIC) + 4)
    (plen,) = struct.unpack_from("<Q", data, start + hlen)
    return json.loads(data[start:start + hlen]), data[start + hlen + 8:start + hlen + 8 + plen]


@pytest.mark.parametrize("header,payload,match", [
    ({"state": {"format": "ember-trainer", "x": {"__array__": 0}},
      "arrays": [["object", [1], 0, 8]]}, b"\0" * 8, "dtype"),
    ({"state": {"format": "ember-trainer", "x": {"__array__": 0}},
      "arrays": [["float32", [1000], 0, 4000]]}, b"\0" * 8, "outside"),
    ({"state": {"format": "ember-trainer", "x": {"__array__": 5}}, "arrays": []}, b"",
     "out of range"),
    ({"state": {"format": "something else"}, "arrays": []}, b"", "Trainer"),
    ({"state": {"format": "ember-trainer"}, "arrays": []}, b"", "config is not an object"),
    ([1, 2, 3], b"", "malformed"),
])
def test_hostile_contents_with_a_valid_checksum_are_refused(tmp_path, header, payload, match):
    with pytest.raises(ember.CheckpointError, match=match):
        ember.Trainer.restore(_write(tmp_path, forge(header, payload)))


def test_forged_graph_with_unknown_op_is_refused(good_file, tmp_path):
    header, payload = split(good_file)
    header["state"]["graph"]["__graph__"]["nodes"][0]["op_type"] = "os.system"
    with pytest.raises(ember.CheckpointError, match="os.system"):
        ember.Trainer.restore(_write(tmp_path, forge(header, payload)))


# ---- forged contents, one class at a time -------------------------------------------------------
NEST = "\u0000nest"       # stands for 100,000 nested lists, written into the JSON text
D = 1 << 30


def _nodes(h, op):
    return [n for n in h["state"]["graph"]["__graph__"]["nodes"] if n["op_type"] == op]


def _set(*path_and_value):
    """A forgery setting ``header["state"][path...] = value``."""
    *path, value = path_and_value

    def forgery(h):
        target = h["state"]
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return forgery


def _each(op, **attrs):
    return lambda h: [n["attrs"].update(attrs) for n in _nodes(h, op)]


def _first_param_state(value):
    def forgery(h):
        state = h["state"]["optimizer"]["state"]
        state[next(iter(state))]["exp_avg"] = value(h)
    return forgery


def _param_swap(h):
    params = h["state"]["params"]
    conv, bias = [k for k in params if k.endswith(".weight")][0], \
        [k for k in params if k.endswith(".bias")][0]
    params[conv] = params[bias]


# class -> (forgery, what the CheckpointError must say)
FORGERIES = {
    "deeply nested header": (_set("history", "history", {"loss": NEST}), r"nested \d+ levels"),
    "Infinity learning rate": (_set("optimizer", "hyper", "lr", float("inf")),
                               r"optimizer\.hyper\.lr is Infinity"),
    "NaN L2 factor": (_set("config", "l2", float("nan")), r"config\.l2 is NaN"),
    "-Infinity step": (_set("global_step", -float("inf")), r"global_step is -Infinity"),
    "step past int64": (_set("global_step", 1 << 64), r"global_step must be an integer"),
    "optimizer steps at the int64 limit": (_set("optimizer", "steps", (1 << 63) - 1),
                                           r"optimizer\.steps must be an integer"),
    "float batch size": (_set("config", "batch_size", 2.5), r"config\.batch_size must be"),
    "string seed": (_set("config", "seed", "0"), r"config\.seed must be"),
    "huge input shape": (_set("config", "input_shape", [1, D, D]), r"graph input .*elements"),
    "another generator": (_set("rng", "bit_generator", "MT19937"), r"rng must be a PCG64"),
    "negative generator state": (_set("rng", "state", "state", -1), r"rng: a malformed"),
    "generator state of the wrong type": (_set("rng", "state", [1, 2]), r"rng: a malformed"),
    "optimizer state of the wrong shape": (_first_param_state(lambda h: {"__array__": 0}),
                                           r"optimizer state .*shape"),
    "optimizer state not an array": (_first_param_state(lambda h: 1.5),
                                     r"optimizer\.state\[.*must be a float array"),
    "optimizer state a list": (_set("optimizer", "state", [1]), r"optimizer\.state must map"),
    "optimizer hyper-parameter a string": (_set("optimizer", "hyper", "lr", "0.1"),
                                           r"optimizer\.hyper\.lr must be a number"),
    "scheduler rate a string": (_set("scheduler", "base_lrs", ["nan"]),
                                r"scheduler\.base_lrs"),
    "history of strings": (_set("history", "history", {"loss": ["x"]}), r"history must map"),
    "parameter of the wrong shape": (_param_swap, r"fails the checks ember\.load makes"),
    "Conv dilations past int32": (_each("Conv", pads=[D] * 4, dilations=[D, D]),
                                  r"ShapeError: Conv node .*'dilations'"),
    "Conv strides reaching past int32": (
        _each("Conv", strides=[1 << 28] * 2, pads=[939524093] * 2 + [939524094] * 2),
        r"ShapeError: Conv node .*'strides'"),
    "MaxPool window past int32": (_each("MaxPool", kernel_shape=[D * 2 - 1] * 2),
                                  r"MaxPool node"),
    "Conv group a list": (_each("Conv", group=[1]), r"Conv node .*'group' must be an int"),
}


def _forge_text(header, payload: bytes) -> bytes:
    text = json.dumps(header).replace(json.dumps(NEST), "[" * 100000 + "]" * 100000)
    return forge(text.encode(), payload)


@pytest.fixture(scope="module")
def bystanders(tmp_path_factory):
    """A Trainer and a Session in use: a refused restore must leave them exactly as they were."""
    X, y = dataset(16)
    t = make_trainer()
    t.fit(X, y, epochs=1, verbose=False)
    sess = ember.Session(t.graph(), threads=1)
    return t, sess, X


def _snapshot(t, sess, X):
    return (t.state_dict(), t.optimizer.state_dict(), t.rng.bit_generator.state,
            (t.global_step, t.epoch, t.optimizer.lr), t.predict(X),
            sess.run(None, {sess.get_inputs()[0].name: X})[0])


@pytest.mark.parametrize("forgery", sorted(FORGERIES))
def test_forged_contents_are_refused_by_name(good_file, tmp_path, bystanders, forgery):
    mutate, match = FORGERIES[forgery]
    header, payload = split(good_file)
    mutate(header)
    before = _snapshot(*bystanders)
    with pytest.raises(ember.CheckpointError, match=match):
        ember.Trainer.restore(_write(tmp_path, _forge_text(header, payload)), threads=1)
    after = _snapshot(*bystanders)
    for a, b in zip(before, after):
        if isinstance(a, dict):
            assert a.keys() == b.keys()
            for k in a:
                np.testing.assert_equal(a[k], b[k])
        else:
            np.testing.assert_equal(a, b)


def test_a_diverged_history_still_restores(good_file, tmp_path):
    """NaN and inf may stand in the history (a diverged run's metrics), nowhere else."""
    header, payload = split(good_file)
    header["state"]["history"]["history"]["loss"] = [float("nan"), float("inf")]
    t = ember.Trainer.restore(_write(tmp_path, forge(header, payload)), threads=1)
    assert np.isnan(t.history.history["loss"][0]) and t.history.history["loss"][1] == np.inf


# ---- atomic writes -----------------------------------------------------------------------------
SAVER = """
import os, signal, sys, numpy as np, ember
from ember import nn
from ember.graph import serialize
from ember.runtime import checkpoint
path, where = sys.argv[1], sys.argv[2]
m = nn.Sequential(nn.Flatten(), nn.Linear(1000, 2000), nn.ReLU(), nn.Linear(2000, 10))
t = ember.Trainer(m, input_shape=(1000,), threads=1)
v = 0

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def at(obj, name, after=0):
    # kill this process inside the second save, at obj.name's (after+1)-th call
    real, calls = getattr(obj, name), [0]
    def wrapper(*a, **k):
        if v == 2:
            calls[0] += 1
            if calls[0] > after:
                die()
        return real(*a, **k)
    setattr(obj, name, wrapper)

if where == "payload":        # half-way through the arrays
    real_chunks = serialize.ArrayWriter.chunks
    def chunks(self):
        for i, c in enumerate(real_chunks(self)):
            if v == 2 and i == 2:
                die()
            yield c
    serialize.ArrayWriter.chunks = chunks
elif where == "fsync":        # everything written, not yet durable
    at(checkpoint.os, "fsync")
elif where == "replace":      # durable, not yet renamed
    at(checkpoint.os, "replace")
while True:
    v += 1
    t.load_state_dict({n: np.full(a.shape, v, np.float32) for n, a in t.state_dict().items()})
    t.save(path)
    print(v, flush=True)
"""


def _saved_value(path) -> float:
    t = ember.Trainer.restore(path, threads=1)
    arrays = list(t.state_dict().values())
    values = {float(v) for a in arrays for v in np.unique(a)}
    assert len(values) == 1, f"a mix of saves: {sorted(values)}"
    return values.pop()


@pytest.mark.parametrize("where", ["payload", "fsync", "replace"])
def test_death_inside_save_leaves_the_previous_checkpoint(tmp_path, where):
    """The child kills itself (SIGKILL) at a fixed point inside its second save: the file
    still holds the first save, complete, and the half-written temporary never replaced it."""
    path = tmp_path / "big.ember"
    (tmp_path / "saver.py").write_text(SAVER)
    proc = subprocess.run([sys.executable, "saver.py", str(path), where], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert proc.stdout.split() == ["1"]
    assert _saved_value(path) == 1.0
    assert any(p.name.startswith(".big.ember.") and p.name.endswith(".tmp")
               for p in tmp_path.iterdir())


def test_sigkill_at_random_moments_never_tears_the_checkpoint(tmp_path):
    """A child saves an ~8 MB checkpoint over and over (every array set to the save's number
    v) and is killed from outside at a random moment, several times. The file must always
    restore and hold one complete save: the last one finished, or the one being renamed."""
    path = tmp_path / "big.ember"
    (tmp_path / "saver.py").write_text(SAVER)
    rng = np.random.default_rng(0)
    for _ in range(4):
        proc = subprocess.Popen([sys.executable, "saver.py", str(path), "random"],
                                cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        try:
            first = proc.stdout.readline()            # one save has completed
            assert first.strip(), proc.stderr.read()
            time.sleep(float(rng.uniform(0.0, 0.4)))  # then die anywhere in a later one
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
        done = [int(x) for x in (first + proc.stdout.read()).split()]
        assert done[-1] <= _saved_value(path) <= done[-1] + 1


def test_failed_save_leaves_no_temp_file_and_old_file_intact(tmp_path, good_file, monkeypatch):
    path = tmp_path / "x.ember"
    path.write_bytes(good_file)
    t = ember.Trainer.restore(path, threads=1)

    def disk_full(fd):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(checkpoint.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        t.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == good_file
    assert [p.name for p in tmp_path.iterdir()] == ["x.ember"]
