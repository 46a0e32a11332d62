"""Trainer checkpoints: one self-checking file, written atomically.

Layout (integers little-endian)::

    magic    12 bytes  b"EMBERCKP\\r\\n\\x1a\\n"  (catches text-mode mangling, as PNG's does)
    version   4 bytes  uint32
    header    8 bytes  uint64 length, then that many bytes of UTF-8 JSON
    payload   8 bytes  uint64 length, then the arrays' raw bytes (graph/serialize.py table)
    sha256   32 bytes  of everything before it

Reading checks the magic, the version, that the lengths add up to the file's size exactly, and
the checksum — before parsing anything — and then parses only JSON and raw numeric arrays from a
fixed list of dtypes: nothing in the file is ever executed (no pickle). Any fault is a
``CheckpointError`` naming the file and what is wrong.

Writing goes to a temporary file in the same folder, which is flushed and fsync'ed, then
``os.replace``'d over the target (atomic on POSIX), and the folder is fsync'ed so the rename
itself is durable: a crash at any moment leaves either the old checkpoint or the new one, never a
mix. A killed writer may leave a ``.<name>.*.tmp`` file behind; it is never read.

Contents: the model graph (structure; graph/serialize.py), parameters, buffers, trainable
names, the optimizer's and scheduler's ``state_dict()``, the trainer's configuration (loss spec,
batch size, seed, l2, clip_grad_norm, input shape), the global step and epoch, the Dropout step
(Dropout's masks are a function of the node's seed and this step), the shuffling Generator's
state, every rank's augmentation Generator (``fit(transform=...)``) and the history (with when
and why a callback stopped the last fit) — everything needed for a restored Trainer to continue
exactly like one that never stopped.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import struct
import tempfile

import numpy as np

from ..graph.errors import CheckpointError, EmberError
from ..graph.ir import Graph, TensorType
from ..graph.serialize import ArrayReader, ArrayWriter, decode, encode
from . import losses, lr_scheduler, optim
from .history import History
from .session import Session

MAGIC = b"EMBERCKP\r\n\x1a\n"
VERSION = 1
_PREFIX = struct.Struct("<IQ")      # version, header length
_LEN = struct.Struct("<Q")
_DIGEST = 32
FORMAT = "ember-trainer"


# ---- file level -------------------------------------------------------------------------------
def save(path, state: dict) -> None:
    """Write ``state`` (nested plain data and numpy arrays) to ``path`` atomically."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    arrays = ArrayWriter()
    header = json.dumps({"state": encode(state, arrays), "arrays": arrays.table},
                        separators=(",", ":")).encode("utf-8")
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            digest = hashlib.sha256()

            def write(b):
                digest.update(b)
                f.write(b)
            write(MAGIC)
            write(_PREFIX.pack(VERSION, len(header)))
            write(header)
            write(_LEN.pack(arrays.size))
            for chunk in arrays.chunks():
                write(chunk)
            f.write(digest.digest())
            f.flush()
            os.fsync(f.fileno())
        try:
            mode = os.stat(path).st_mode & 0o777
        except FileNotFoundError:
            mode = 0o644
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(folder)


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return      # e.g. a platform where folders cannot be opened
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load(path) -> dict:
    """Read and verify a checkpoint; the decoded state (CheckpointError on any fault)."""
    path = os.fspath(path)

    def fail(what):
        raise CheckpointError(f"checkpoint {path!r}: {what}")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        fail(f"cannot be read: {e.strerror or e}")
    fixed = len(MAGIC) + _PREFIX.size + _LEN.size + _DIGEST
    if len(data) == 0:
        fail("the file is empty")
    if data[:len(MAGIC)] != MAGIC:
        if len(data) < len(MAGIC) and MAGIC.startswith(data):
            fail(f"truncated: {len(data)} bytes")
        fail("not an ember checkpoint (wrong magic bytes)")
    if len(data) < fixed:
        fail(f"truncated: {len(data)} bytes, less than the {fixed}-byte minimum")
    version, header_len = _PREFIX.unpack_from(data, len(MAGIC))
    if version != VERSION:
        fail(f"format version {version}; this ember reads version {VERSION}")
    start = len(MAGIC) + _PREFIX.size
    if start + header_len + _LEN.size + _DIGEST > len(data):
        fail(f"truncated: the header claims {header_len} bytes, the file has {len(data)}")
    (payload_len,) = _LEN.unpack_from(data, start + header_len)
    expected = start + header_len + _LEN.size + payload_len + _DIGEST
    if expected != len(data):
        fail(f"{'truncated' if expected > len(data) else 'has trailing bytes'}: the lengths "
             f"recorded add up to {expected} bytes, the file has {len(data)}")
    body = memoryview(data)[:-_DIGEST]
    if hashlib.sha256(body).digest() != data[-_DIGEST:]:
        fail("checksum mismatch: the file is corrupted or was modified")
    try:
        text = bytes(data[start:start + header_len]).decode("utf-8")
        depth = _nesting_depth(text)
        if depth > MAX_DEPTH:
            raise ValueError(f"the header's JSON is nested {depth} levels deep (at most "
                             f"{MAX_DEPTH})")
        header = json.loads(text, parse_constant=_NonFinite)
        if not isinstance(header, dict):
            raise ValueError("header is not an object")
        header = _finite(header, "header")
        payload_start = start + header_len + _LEN.size
        reader = ArrayReader(header.get("arrays"),
                             memoryview(data)[payload_start:payload_start + payload_len])
        return {"state": header.get("state"), "reader": reader}
    except (ValueError, UnicodeDecodeError, EmberError) as e:
        fail(f"malformed contents: {e}")


MAX_DEPTH = 100          # JSON nesting a header may have (a real one has about 12)
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_NON_FINITE_ALLOWED = ("header.state.history.",)    # a diverged run's metrics are NaN or inf


def _nesting_depth(text: str) -> int:
    """How deeply ``text``'s JSON arrays and objects nest, counted without recursion (the
    parser itself would raise RecursionError on a deep enough file)."""
    bare = np.frombuffer(_JSON_STRING.sub('""', text).encode("utf-8"), np.uint8)
    step = np.isin(bare, (ord("["), ord("{"))).astype(np.int64) - \
        np.isin(bare, (ord("]"), ord("}")))
    return int(np.cumsum(step).max(initial=0))


class _NonFinite(str):
    """``NaN``, ``Infinity`` or ``-Infinity`` as the JSON parser met it (see ``_finite``)."""


def _finite(obj, path: str):
    """``obj`` with non-finite numbers made floats where they may stand (a history's metrics)
    and refused everywhere else: a learning rate, an L2 factor or a step count of ``Infinity``
    would train silently wrong or overflow far from the file."""
    if isinstance(obj, _NonFinite):
        if not path.startswith(_NON_FINITE_ALLOWED):
            raise ValueError(f"{path} is {obj}: numbers in a checkpoint must be finite")
        return float(obj)
    if isinstance(obj, dict):
        return {k: _finite(v, f"{path}.{k}") for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v, f"{path}[{i}]") for i, v in enumerate(obj)]
    return obj


# ---- trainer level ------------------------------------------------------------------------------
def trainer_state(trainer, augment_rngs: list | None = None) -> dict:
    """Everything a Trainer needs to continue (plain data and arrays). ``augment_rngs``: the
    state of every rank's augmentation generator, rank by rank (default: this trainer's)."""
    if augment_rngs is None:
        augment_rngs = [trainer.augment_rng.bit_generator.state]
    return {
        "format": FORMAT,
        "graph": trainer._model,
        "params": {n: a.copy() for n, a in trainer.params.items()},
        "buffers": {n: a.copy() for n, a in trainer.buffers.items()},
        "trainable": list(trainer.trainable),
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": None if trainer.scheduler is None else trainer.scheduler.state_dict(),
        "config": {"loss": trainer.loss.config(), "batch_size": trainer.batch_size,
                   "seed": trainer.seed, "l2": trainer.l2,
                   "clip_grad_norm": trainer.clip_grad_norm,
                   "input_shape": list(trainer.input_shape),
                   "data_input": trainer.data_input},
        "global_step": int(trainer.global_step),
        "dropout_step": int(trainer.dropout_step),
        "epoch": int(trainer.epoch),
        "rng": trainer.rng.bit_generator.state,
        "augment_rng": list(augment_rngs),
        "history": {"history": trainer.history.history, "epoch": trainer.history.epoch,
                    "stopped_epoch": trainer.history.stopped_epoch,
                    "stop_reason": trainer.history.stop_reason},
    }


def trainer_from_state(cls, loaded: dict, path, threads=None, memory_cap=None, loss=None,
                       distributed=None):
    """A ``cls`` Trainer rebuilt from ``load(path)``'s result. A custom loss (an ``ember.nn``
    Module) is stored by name only and never imported from the file: ``loss`` must give it
    (see ``losses.from_config``). Nothing outside the new Trainer is touched, so a refused
    file leaves every existing Trainer and Session as it was."""
    path = os.fspath(path)
    try:
        state, reader = loaded["state"], loaded["reader"]
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise CheckpointError("it does not hold a Trainer's state")
        state = decode(state, reader)
        _check_fields(state)
        cfg = state["config"]
        data, input_shape = cfg["data_input"], tuple(cfg["input_shape"])
        graph = _stored_graph(state, data)
        _validate_graph(graph, data, input_shape, memory_cap)
        try:
            loss_spec = losses.from_config(cfg["loss"], loss)
        except EmberError as e:
            raise CheckpointError(str(e)) from None
        optimizer = optim.from_state_dict(state["optimizer"])
        scheduler = None if state["scheduler"] is None else \
            lr_scheduler.from_state_dict(state["scheduler"])
        trainer = cls(graph, input_shape=input_shape,
                      loss=loss_spec, optimizer=optimizer,
                      batch_size=cfg["batch_size"], threads=threads,
                      seed=cfg["seed"], l2=float(cfg["l2"]), scheduler=scheduler,
                      trainable=state["trainable"], memory_cap=memory_cap,
                      distributed=distributed, clip_grad_norm=cfg.get("clip_grad_norm"))
        trainer.global_step = state["global_step"]
        # in place (compiled steps bind this array); a file without it: the global step
        trainer.dropout_step[...] = state.get("dropout_step", trainer.global_step)
        trainer.epoch = state["epoch"]
        trainer.rng.bit_generator.state = state["rng"]
        _restore_augment_rng(trainer, state.get("augment_rng"))
        hist = state.get("history") or {"history": {}, "epoch": []}
        trainer.history = History(hist["history"], hist["epoch"], hist.get("stopped_epoch"),
                                  hist.get("stop_reason"))
        return trainer
    except CheckpointError as e:
        msg = str(e)
        if path in msg:
            raise
        raise CheckpointError(f"checkpoint {path!r}: {msg}") from None
    except (EmberError, KeyError, TypeError, ValueError, AttributeError, OverflowError,
            IndexError) as e:
        raise CheckpointError(f"checkpoint {path!r}: its contents do not describe a Trainer: "
                              f"{type(e).__name__}: {e}") from None


COUNTER_LIMIT = 1 << 62     # step and epoch counters live in int64s, and keep counting


def _int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _real(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check_fields(state: dict) -> None:
    """The scalar fields of a decoded state have their types and ranges (CheckpointError
    naming the field): what a forged file could otherwise turn into an overflow, a silently
    truncated float or a generator in a state numpy would refuse after the Trainer is built."""
    def bad(field, why):
        raise CheckpointError(f"{field} {why}")
    cfg = state.get("config")
    if not isinstance(cfg, dict):
        bad("config", "is not an object")
    for name in ("global_step", "epoch", "dropout_step"):
        v = state.get(name, 0)
        if not (_int(v) and 0 <= v < COUNTER_LIMIT):
            bad(name, f"must be an integer in [0, 2^62), got {v!r:.60}")
    for name, ok, want in (
            ("batch_size", lambda v: _int(v) and 1 <= v < 1 << 31, "an integer in [1, 2^31)"),
            ("seed", lambda v: _int(v) and 0 <= v < COUNTER_LIMIT, "an integer in [0, 2^62)"),
            ("l2", lambda v: _real(v) and v >= 0, "a finite number >= 0"),
            ("clip_grad_norm", lambda v: v is None or (_real(v) and v > 0),
             "None or a finite number > 0"),
            ("data_input", lambda v: isinstance(v, str), "a string"),
            ("input_shape", lambda v: isinstance(v, list) and all(
                _int(d) and 1 <= d < 1 << 31 for d in v), "a list of integers in [1, 2^31)")):
        if not ok(cfg.get(name)):
            bad(f"config.{name}", f"must be {want}, got {cfg.get(name)!r:.60}")
    trainable = state.get("trainable")
    if not (isinstance(trainable, list) and all(isinstance(n, str) for n in trainable)):
        bad("trainable", "must be a list of parameter names")
    hist = state.get("history") or {"history": {}, "epoch": []}
    if not (isinstance(hist, dict) and isinstance(hist.get("history"), dict)
            and all(isinstance(k, str) and isinstance(v, list)
                    and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
                    for k, v in hist["history"].items())
            and isinstance(hist.get("epoch"), list) and all(_int(e) for e in hist["epoch"])):
        bad("history", "must map metric names to lists of numbers, with a list of epochs")
    stopped = hist.get("stopped_epoch")     # files written before callbacks have neither
    if stopped is not None and not (_int(stopped) and 0 <= stopped < COUNTER_LIMIT):
        bad("history.stopped_epoch", f"must be None or an integer in [0, 2^62), got "
                                     f"{stopped!r:.60}")
    if not isinstance(hist.get("stop_reason"), (str, type(None))):
        bad("history.stop_reason", f"must be None or a string, got "
                                   f"{hist.get('stop_reason')!r:.60}")
    _check_rng(state.get("rng"))
    _check_augment_rng(state.get("augment_rng"))
    _check_optimizer(state.get("optimizer"))
    _check_scheduler(state.get("scheduler"))


def _check_optimizer(opt) -> None:
    """The optimizer's state dict has the shape ``Optimizer.state_dict()`` gives it; its
    values' meaning (hyper-parameter ranges, array shapes) is checked by the optimizer."""
    if not isinstance(opt, dict):
        raise CheckpointError(f"optimizer must be an object, got {type(opt).__name__}")
    hyper = opt.get("hyper", {})
    if not isinstance(hyper, dict):
        raise CheckpointError(f"optimizer.hyper must be an object, got {type(hyper).__name__}")
    for key, value in hyper.items():
        values = value if isinstance(value, list) else [value]
        if not all(_real(v) or isinstance(v, bool) for v in values):
            raise CheckpointError(f"optimizer.hyper.{key} must be a number, a flag or a list "
                                  f"of numbers, got {value!r:.60}")
    params = opt.get("params")
    if params is not None and not (isinstance(params, list)
                                   and all(isinstance(p, str) for p in params)):
        raise CheckpointError(f"optimizer.params must be a list of names, got {params!r:.60}")
    if not (_int(opt.get("steps", 0)) and 0 <= opt.get("steps", 0) < COUNTER_LIMIT):
        raise CheckpointError(f"optimizer.steps must be an integer in [0, 2^62), got "
                              f"{opt.get('steps')!r:.60}")
    if opt.get("initial_lr") is not None and not _real(opt["initial_lr"]):
        raise CheckpointError(f"optimizer.initial_lr must be a number, got "
                              f"{opt['initial_lr']!r:.60}")
    state = opt.get("state", {})
    if not isinstance(state, dict):
        raise CheckpointError("optimizer.state must map parameter names to their arrays")
    for name, bufs in state.items():
        if not isinstance(bufs, dict):
            raise CheckpointError(f"optimizer.state[{name!r}] must map buffer names to arrays")
        for k, a in bufs.items():
            if not (isinstance(a, np.ndarray) and a.dtype.kind == "f"):
                raise CheckpointError(f"optimizer.state[{name!r}][{k!r}] must be a float "
                                      f"array, got {type(a).__name__}")


def _check_scheduler(sched) -> None:
    if sched is None:
        return
    if not isinstance(sched, dict):
        raise CheckpointError(f"scheduler must be an object, got {type(sched).__name__}")
    for key in ("base_lrs", "last_lr"):
        v = sched.get(key, [])
        if not (isinstance(v, list) and all(_real(x) and x >= 0 for x in v)):
            raise CheckpointError(f"scheduler.{key} must be a list of learning rates, got "
                                  f"{v!r:.60}")


def _restore_augment_rng(trainer, states) -> None:
    """Each rank takes its own saved augmentation generator. A file written before they were
    saved leaves the fresh one; a job of another size re-seeds every rank's from (seed, rank,
    global step), deterministic and distinct per rank."""
    if states is None:
        return
    if len(states) == trainer.world:
        trainer.augment_rng.bit_generator.state = states[trainer.rank]
    else:
        trainer.augment_rng = np.random.default_rng(
            [trainer.seed, trainer.rank, 1, trainer.global_step])


def _check_augment_rng(states) -> None:
    if states is None:
        return
    if not (isinstance(states, list) and 1 <= len(states) <= 1 << 20):
        raise CheckpointError(f"augment_rng must be a list of generator states, one per rank, "
                              f"got {type(states).__name__}")
    for rank, rng in enumerate(states):
        _check_rng(rng, f"augment_rng[{rank}]")


def _check_rng(rng, field: str = "rng") -> None:
    """A generator's state (the shuffling one, an augmentation one) is one numpy's PCG64
    accepts, tried on a scratch generator (numpy's own checks, without touching the
    Trainer's)."""
    scratch = np.random.default_rng(0).bit_generator
    kind = type(scratch).__name__
    if not (isinstance(rng, dict) and rng.get("bit_generator") == kind):
        got = rng.get("bit_generator") if isinstance(rng, dict) else type(rng).__name__
        raise CheckpointError(f"{field} must be a {kind} generator state, got {got!r:.60}")
    inner = rng.get("state")
    if not (isinstance(inner, dict) and all(
            _int(inner.get(k)) and 0 <= inner[k] < 1 << 128 for k in ("state", "inc"))
            and rng.get("has_uint32") in (0, 1)
            and _int(rng.get("uinteger")) and 0 <= rng["uinteger"] < 1 << 32):
        raise CheckpointError(f"{field}: a malformed {kind} state {rng!r:.120}")
    try:
        scratch.state = rng
    except (ValueError, TypeError, OverflowError, KeyError) as e:
        raise CheckpointError(f"{field}: numpy refuses the {kind} state: {e}") from None


def _stored_graph(state: dict, data: str) -> Graph:
    """The stored model graph with the stored parameters and buffers as its initializers."""
    graph = state.get("graph")
    if not isinstance(graph, Graph):
        raise CheckpointError("it holds no model graph")
    params, buffers = state.get("params"), state.get("buffers")
    if not isinstance(params, dict) or not isinstance(buffers, dict):
        raise CheckpointError("parameters or buffers are malformed")
    for name, a in list(params.items()) + list(buffers.items()):
        if not isinstance(a, np.ndarray) or a.dtype != np.float32:
            raise CheckpointError(f"state {name!r} is not a float32 array")
        if name not in graph.inputs:
            raise CheckpointError(f"state {name!r} is not an input of the stored graph")
        graph.initializers[name] = a
    graph.inputs = [n for n in graph.inputs if n not in graph.initializers]
    if graph.inputs != [data]:
        raise CheckpointError(f"the stored graph's inputs {graph.inputs} are not its data "
                              f"input {data!r}")
    graph.metadata["parameters"], graph.metadata["buffers"] = list(params), list(buffers)
    return graph


def _validate_graph(graph: Graph, data: str, input_shape: tuple, memory_cap) -> None:
    """Compile the stored graph for one sample as ``ember.load`` compiles a model: shape
    inference, the constant-folding budget, every binder's geometry proofs and the memory
    cap. A checkpoint is as untrusted as a model file, and the training step's kernels read
    the same geometry."""
    probe = graph.copy()
    t = probe.types.get(data)
    if t is None:
        raise CheckpointError(f"the stored graph's data input {data!r} has no type")
    if len(t.shape) != len(input_shape) + 1:
        raise CheckpointError(f"config.input_shape {list(input_shape)} does not match the "
                              f"stored graph's input {data!r} of shape {t.shape}")
    probe.types[data] = TensorType(t.dtype, (1,) + tuple(input_shape))
    try:
        Session(probe, threads=1, memory_cap=memory_cap, max_plans=1, max_concurrent_runs=1)
    except EmberError as e:
        raise CheckpointError(f"its model fails the checks ember.load makes: "
                              f"{type(e).__name__}: {e}") from None
