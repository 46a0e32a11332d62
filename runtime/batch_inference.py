"""``ember run-batch``: a model over every row of an array, in one process or across MPI ranks.

Under ``mpirun -n N`` each rank opens its own Session (its own share of the host's cores),
runs the contiguous rows ``shard(rows, N, rank)`` in chunks of ``batch``, and rank 0 gathers
the outputs in row order and writes them — the same array one process would write. Before the
gather every rank reports whether it succeeded, so an error on one rank (bad rows, a memory cap)
becomes the same clear error on every rank, naming it, instead of a job that waits forever.
"""
from __future__ import annotations

import os

import numpy as np

from ..graph.errors import DistributedError, EmberError, InputError
from .distributed import MPIContext, shard

# variables a launcher sets in every rank it starts (Open MPI, MPICH/Hydra and Intel MPI, PMIx)
LAUNCHER_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS")


def launched_by_mpi(environ=None) -> bool:
    env = os.environ if environ is None else environ
    return any(env.get(v) for v in LAUNCHER_VARS)


def _static(d) -> bool:
    return isinstance(d, (int, np.integer))


def check_rows(sess, x: np.ndarray, name: str) -> int | None:
    """The model's fixed batch size (None when it is symbolic); InputError when ``x`` does not
    fit the input's other dims."""
    info = next(i for i in sess.inputs if i.name == name)
    shape = tuple(info.shape)
    if x.ndim != len(shape) or x.ndim == 0:
        raise InputError(f"input {name!r} expects {len(shape)}-D rows of shape (N, "
                         f"{', '.join(map(str, shape[1:]))}), the file holds shape {x.shape}")
    for axis, (want, got) in enumerate(zip(shape[1:], x.shape[1:]), 1):
        if _static(want) and want != got:
            raise InputError(f"input {name!r}: axis {axis} must be {want} (model shape "
                             f"{shape}), the file has {got} (shape {x.shape})")
    if x.dtype != info.dtype:
        raise InputError(f"input {name!r} is {info.dtype}, the file holds {x.dtype}")
    return int(shape[0]) if _static(shape[0]) else None


def run_rows(sess, x: np.ndarray, input_name: str, output_names: list, batch: int,
             on_rows=None) -> dict:
    """{output name: its rows for every row of ``x``}, ``batch`` rows per run; a model with a
    fixed batch runs in chunks of exactly that size, the last one zero-padded and trimmed.
    ``on_rows(n)`` is told each chunk's rows once they ran (a progress bar)."""
    fixed = check_rows(sess, x, input_name)
    step = fixed or max(1, int(batch))
    outs: dict = {n: [] for n in output_names}
    for lo in range(0, len(x), step):
        chunk = np.ascontiguousarray(x[lo:lo + step])
        rows = len(chunk)
        if fixed and rows < fixed:
            pad = np.zeros((fixed - rows,) + chunk.shape[1:], chunk.dtype)
            chunk = np.concatenate([chunk, pad])
        results = sess.run(output_names, {input_name: chunk})
        for n, a in zip(output_names, results):
            if a.ndim == 0 or a.shape[0] != len(chunk):
                raise EmberError(f"output {n!r} has shape {a.shape}: its first axis is not the "
                                 f"batch ({len(chunk)} rows), so rows cannot be split")
            outs[n].append(a[:rows])
        if on_rows is not None:
            on_rows(rows)
    return {n: np.concatenate(parts) if parts else None for n, parts in outs.items()}


def _agree(ctx: MPIContext, error: str | None) -> None:
    """Every rank learns every rank's outcome; the same DistributedError everywhere if any
    failed."""
    failures = [(r, e) for r, e in enumerate(ctx.allgather(error, "sharing each rank's outcome"))
                if e is not None]
    if failures:
        r, e = failures[0]
        others = f" (and rank(s) {', '.join(str(r) for r, _ in failures[1:])})" \
            if len(failures) > 1 else ""
        raise DistributedError(f"rank {r} of {ctx.size} failed{others}: {e}")


class RowProgress:
    """Rows done on every rank, drawn as one bar on rank 0 (``progress.bar``): the other
    ranks send each chunk's row count to rank 0 without waiting (``isend``), and rank 0 reads
    what has arrived after each of its own chunks, then the rest once its shard is done — each
    rank ends with a -1, sent whether its shard ran or failed, so rank 0 never waits for rows
    that will not come. Whether to draw is rank 0's decision (its stderr), shared with all."""

    TAG = 0x7E3B     # message tag of the row counts, apart from anything else on the comm

    def __init__(self, ctx: MPIContext | None, total: int, enabled: bool):
        from . import progress
        self.ctx = ctx
        if ctx is not None and ctx.size > 1:
            enabled = bool(ctx.allgather(enabled, "deciding on the progress bar")[0])
        self.enabled = enabled
        self.root = ctx is None or ctx.rank == 0
        self.bar = progress.bar(total, "run-batch", "rows", enabled) if self.root else None
        self._sent: list = []
        self._ended = 0       # ranks whose -1 arrived

    def __call__(self, rows: int) -> None:
        if not self.enabled:
            return
        if self.root:
            if self.bar is not None:
                self.bar.update(rows)
            self._receive(block=False)
        else:
            self._sent.append(self.ctx.comm.isend(int(rows), dest=0, tag=self.TAG))

    def finish(self) -> None:
        """After this rank's shard (ran or failed): the other ranks' last counts, the bar
        closed."""
        if not self.enabled:
            return
        if not self.root:
            self._sent.append(self.ctx.comm.isend(-1, dest=0, tag=self.TAG))
            self.ctx.wait(self._sent, "sending the progress of this rank's rows")
        elif self.ctx is not None:
            self._receive(block=True)
        if self.bar is not None:
            self.bar.close()

    def _receive(self, block: bool) -> None:
        if self.ctx is None or self.ctx.size == 1:
            return
        import time
        comm, MPI = self.ctx.comm, self.ctx.MPI
        deadline = time.monotonic() + self.ctx.timeout
        while self._ended < self.ctx.size - 1:
            if not comm.iprobe(source=MPI.ANY_SOURCE, tag=self.TAG):
                if not block or time.monotonic() > deadline:
                    return       # a rank that never reports is _agree's to explain
                time.sleep(0.001)
                continue
            rows = comm.recv(source=MPI.ANY_SOURCE, tag=self.TAG)
            if rows < 0:
                self._ended += 1
            elif self.bar is not None:
                self.bar.update(rows)


def run_batch(model: str, x: np.ndarray, batch: int, threads: int | None,
              input_name: str | None, output_names: list | None, ctx: MPIContext | None,
              load, progress: bool = False) -> dict | None:
    """The outputs for every row (on rank 0; None on the other ranks). ``load(model, threads)``
    opens the Session. ``progress``: draw a bar of every rank's rows on rank 0."""
    rank, size = (ctx.rank, ctx.size) if ctx else (0, 1)
    if threads is None and ctx is not None:
        threads = ctx.threads()
    error, local, names = None, None, None
    counter = RowProgress(ctx, len(x), progress)
    try:
        sess = load(model, threads)
        inputs = [i.name for i in sess.inputs]
        if input_name is None:
            if len(inputs) != 1:
                raise InputError(f"the model has inputs {inputs}: name the one the rows feed "
                                 f"with --input-name")
            input_name = inputs[0]
        elif input_name not in inputs:
            raise InputError(f"--input-name {input_name!r}: the model's inputs are {inputs}")
        if len(inputs) != 1:
            raise InputError(f"run-batch feeds one input; the model has {inputs}")
        names = output_names or [o.name for o in sess.outputs]
        unknown = [n for n in names if n not in [o.name for o in sess.outputs]]
        if unknown:
            raise InputError(f"unknown output(s) {unknown}; the model's outputs are "
                             f"{[o.name for o in sess.outputs]}")
        check_rows(sess, x, input_name)
        lo, count = shard(len(x), size, rank)
        local = run_rows(sess, x[lo:lo + count], input_name, names, batch, counter)
    except EmberError as e:
        if ctx is None or size == 1:
            raise
        error = str(e)
    except (OSError, MemoryError) as e:
        if ctx is None or size == 1:
            raise EmberError(f"{type(e).__name__}: {e}") from None
        error = f"{type(e).__name__}: {e}"
    finally:
        counter.finish()
    if ctx is None or size == 1:
        return local
    _agree(ctx, error)
    gathered = {n: _gather(ctx, local[n], len(x)) for n in names}
    return gathered if rank == 0 else None


def _gather(ctx: MPIContext, local: np.ndarray | None, rows: int) -> np.ndarray | None:
    """Every rank's rows, in rank order, on rank 0."""
    from mpi4py.util.dtlib import from_numpy_dtype
    # shapes and dtypes first: a rank with no rows has no array to tell them from
    meta = ctx.allgather(None if local is None else (local.shape[1:], local.dtype.str),
                         "sharing the output shapes")
    row_shape, dtype = next(m for m in meta if m is not None)
    row_shape, dtype = tuple(row_shape), np.dtype(dtype)
    per_row = int(np.prod(row_shape, dtype=np.int64))
    mine = np.ascontiguousarray(local if local is not None else
                                np.empty((0,) + row_shape, dtype))
    counts = [shard(rows, ctx.size, r)[1] * per_row for r in range(ctx.size)]
    out = np.empty((rows,) + row_shape, dtype) if ctx.rank == 0 else None
    mpi_type = from_numpy_dtype(dtype)
    recv = [out, counts, mpi_type] if ctx.rank == 0 else None
    ctx.wait([ctx.comm.Igatherv([mine, mpi_type], recv, root=0)],
             "gathering the outputs on rank 0")
    return out
