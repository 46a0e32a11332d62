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
batch size, seed, l2, input shape), the global step and epoch, the Dropout step (Dropout's
masks are a function of the node's seed and this step), the shuffling Generator's state and
the history — everything needed for a restored Trainer to continue exactly like one that
never stopped.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile

import numpy as np

from ..graph.errors import CheckpointError, EmberError
from ..graph.ir import Graph
from ..graph.serialize import ArrayReader, ArrayWriter, decode, encode
from . import losses, lr_scheduler, optim
from .history import History

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
        header = json.loads(bytes(data[start:start + header_len]).decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("header is not an object")
        payload_start = start + header_len + _LEN.size
        reader = ArrayReader(header.get("arrays"),
                             memoryview(data)[payload_start:payload_start + payload_len])
        return {"state": header.get("state"), "reader": reader}
    except (ValueError, UnicodeDecodeError, EmberError) as e:
        fail(f"malformed contents: {e}")


# ---- trainer level ------------------------------------------------------------------------------
def trainer_state(trainer) -> dict:
    """Everything a Trainer needs to continue (plain data and arrays)."""
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
                   "input_shape": list(trainer.input_shape),
                   "data_input": trainer.data_input},
        "global_step": int(trainer.global_step),
        "dropout_step": int(trainer.dropout_step),
        "epoch": int(trainer.epoch),
        "rng": trainer.rng.bit_generator.state,
        "history": {"history": trainer.history.history, "epoch": trainer.history.epoch},
    }


def trainer_from_state(cls, loaded: dict, path, threads=None, memory_cap=None, loss=None,
                       distributed=None):
    """A ``cls`` Trainer rebuilt from ``load(path)``'s result. A custom loss (an ``ember.nn``
    Module) is stored by name only and never imported from the file: ``loss`` must give it
    (see ``losses.from_config``)."""
    path = os.fspath(path)
    try:
        state, reader = loaded["state"], loaded["reader"]
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise CheckpointError("it does not hold a Trainer's state")
        state = decode(state, reader)
        graph = state["graph"]
        if not isinstance(graph, Graph):
            raise CheckpointError("it holds no model graph")
        params, buffers = state["params"], state["buffers"]
        if not isinstance(params, dict) or not isinstance(buffers, dict):
            raise CheckpointError("parameters or buffers are malformed")
        cfg = state["config"]
        data = cfg["data_input"]
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
        try:
            loss_spec = losses.from_config(cfg["loss"], loss)
        except EmberError as e:
            raise CheckpointError(str(e)) from None
        optimizer = optim.from_state_dict(state["optimizer"])
        scheduler = None if state["scheduler"] is None else \
            lr_scheduler.from_state_dict(state["scheduler"])
        trainer = cls(graph, input_shape=tuple(cfg["input_shape"]),
                      loss=loss_spec, optimizer=optimizer,
                      batch_size=int(cfg["batch_size"]), threads=threads,
                      seed=int(cfg["seed"]), l2=float(cfg["l2"]), scheduler=scheduler,
                      trainable=list(state["trainable"]), memory_cap=memory_cap,
                      distributed=distributed)
        trainer.global_step = int(state["global_step"])
        # in place (compiled steps bind this array); a file without it: the global step
        trainer.dropout_step[...] = int(state.get("dropout_step", trainer.global_step))
        trainer.epoch = int(state["epoch"])
        trainer.rng.bit_generator.state = state["rng"]
        hist = state.get("history") or {}
        trainer.history = History(hist.get("history"), hist.get("epoch"))
        return trainer
    except CheckpointError as e:
        msg = str(e)
        if path in msg:
            raise
        raise CheckpointError(f"checkpoint {path!r}: {msg}") from None
    except (EmberError, KeyError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"checkpoint {path!r}: its contents do not describe a Trainer: "
                              f"{type(e).__name__}: {e}") from None
