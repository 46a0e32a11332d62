"""Data parallelism over MPI (runtime/DISTRIBUTED.md): one process per rank, each with its own
compiled steps and its own kernel threads, gradients averaged with MPI allreduces.

Why MPI (through ``mpi4py``, the optional extra ``ember[mpi]``): it is the engine clusters
already run — ``mpirun``/``srun`` start the ranks, place them on hosts and kill the whole job
when one dies — so ember never opens a socket of its own.

The pieces:

- ``MPIContext``: the communicator, this rank's place on its host (ranks per host, for the
  thread default), blocking collectives that give up after ``timeout`` seconds instead of
  hanging, and ``abort``: one rank's unexpected error stops every rank with a message naming it.
- ``shard``: which contiguous rows of a global batch a rank takes — the same split on every
  rank, so N ranks with per-rank batch B see exactly the rows one process with batch N·B sees.
- ``GradientSync``: one flat float32 buffer holding every gradient (last layer first, the order
  backward finishes them), the new BatchNorm running statistics and the loss; cut into buckets
  of about ``bucket_bytes``. A bucket's non-blocking allreduce starts from inside the compiled
  step, right after the kernel that finishes its last gradient, and travels while the rest of
  backward runs (buckets always start in layout order: collectives must match on every rank).
"""
from __future__ import annotations

import math
import os
import sys
import time
import zlib

import numpy as np

from ..graph.errors import DistributedError

DEFAULT_BUCKET_BYTES = 1 << 20
DEFAULT_TIMEOUT = 600.0          # seconds a collective may wait before the job is aborted
TIMEOUT_ENV = "EMBER_MPI_TIMEOUT"


def mpi_module():
    """mpi4py's ``MPI`` module, or a DistributedError that says what to install."""
    try:
        from mpi4py import MPI
    except Exception as e:          # not installed, or no libmpi behind it
        raise DistributedError(
            f"distributed='mpi' needs mpi4py and an MPI library ({type(e).__name__}: {e}); "
            f"install them with `pip install 'ember[mpi]'` and your system's Open MPI "
            f"(Debian/Ubuntu: apt install openmpi-bin libopenmpi-dev)") from None
    return MPI


def shard(rows: int, size: int, rank: int) -> tuple:
    """(first row, row count) of rank ``rank`` in a batch of ``rows`` split over ``size`` ranks:
    contiguous, in rank order, the first ``rows % size`` ranks taking one row more."""
    base, extra = divmod(int(rows), int(size))
    return rank * base + min(rank, extra), base + (1 if rank < extra else 0)


class MPIContext:
    """This process's place in an MPI job. ``Trainer(distributed="mpi")`` builds one on
    ``COMM_WORLD``; pass your own to choose the communicator, the bucket size or the timeout.

    ``timeout``: seconds any collective may wait (default ``$EMBER_MPI_TIMEOUT`` or 600); past
    it the job is aborted with a message naming this rank and what it waited for.
    ``abort_on_exception``: an exception that escapes the script on one rank aborts every rank
    (``MPI_Abort``) after printing it with the rank's number, instead of leaving the others
    waiting in a collective forever.
    """

    def __init__(self, comm=None, bucket_bytes: int = DEFAULT_BUCKET_BYTES,
                 timeout: float | None = None, abort_on_exception: bool = True):
        MPI = mpi_module()
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.host = MPI.Get_processor_name()
        local = self.comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank, self.local_size = local.Get_rank(), local.Get_size()
        self._local = local
        if not (isinstance(bucket_bytes, (int, np.integer)) and bucket_bytes >= 4):
            raise DistributedError(f"bucket_bytes must be an integer ≥ 4, got {bucket_bytes!r}")
        self.bucket_bytes = int(bucket_bytes)
        if timeout is None:
            raw = os.environ.get(TIMEOUT_ENV, "")
            try:
                timeout = float(raw) if raw.strip() else DEFAULT_TIMEOUT
            except ValueError:
                raise DistributedError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds") \
                    from None
        if not (timeout > 0 and math.isfinite(timeout)):
            raise DistributedError(f"timeout must be a positive number of seconds, got "
                                   f"{timeout!r}")
        self.timeout = float(timeout)
        if abort_on_exception and self.size > 1:
            install_excepthook(self)

    def __repr__(self):
        return (f"MPIContext(rank {self.rank} of {self.size}, host {self.host!r}, local rank "
                f"{self.local_rank} of {self.local_size})")

    @property
    def where(self) -> str:
        return f"rank {self.rank} of {self.size} (host {self.host}, pid {os.getpid()})"

    # ---- threads -----------------------------------------------------------------------------
    def threads(self) -> int:
        """This rank's share of its host's CPUs: ``EMBER_NUM_THREADS`` when set; else the CPUs
        it may run on (affinity, cgroup quota) divided by the ranks on this host that share
        them — so ``mpirun -n 2`` on 2 cores gives each rank 1 thread, bound or not."""
        from .threads import ENV_VAR, affinity_cpu_set, cgroup_cpu_limit, default_threads, \
            parse_env_threads
        override = parse_env_threads(os.environ.get(ENV_VAR))
        if override is not None:
            return override
        mine = affinity_cpu_set()
        sets = self._local.allgather(sorted(mine))
        sharing = sum(1 for s in sets if mine & set(s)) or 1
        threads = max(1, default_threads() // sharing)
        quota = cgroup_cpu_limit()
        if quota is not None:           # one quota for the whole container, every rank in it
            threads = min(threads, max(1, math.floor(quota / self.local_size)))
        return threads

    # ---- collectives with a deadline ---------------------------------------------------------
    def wait(self, requests: list, what: str) -> None:
        """Complete non-blocking requests, polling (which also drives MPI's progress) until the
        deadline; past it, abort the job naming this rank and ``what``."""
        if not requests:
            return
        Testall = self.MPI.Request.Testall
        deadline = time.monotonic() + self.timeout
        spins = 0
        while not Testall(requests):
            spins += 1
            if spins > 2000:
                if time.monotonic() > deadline:
                    self.abort(f"{what} did not complete within {self.timeout:g} s: another "
                               f"rank is stuck, dead or was never started (set "
                               f"{TIMEOUT_ENV} to wait longer)")
                time.sleep(0.0002)

    def allreduce(self, array: np.ndarray, what: str) -> np.ndarray:
        """Sum ``array`` (C-contiguous) over the ranks, in place."""
        if self.size > 1:
            self.wait([self.comm.Iallreduce(self.MPI.IN_PLACE, array, op=self.MPI.SUM)], what)
        return array

    def bcast(self, array: np.ndarray, what: str, root: int = 0) -> np.ndarray:
        if self.size > 1:
            self.wait([self.comm.Ibcast(array, root=root)], what)
        return array

    def barrier(self, what: str) -> None:
        if self.size > 1:
            self.wait([self.comm.Ibarrier()], what)

    def allgather(self, value, what: str) -> list:
        """Small Python objects from every rank (guarded by the deadline through a barrier)."""
        if self.size == 1:
            return [value]
        self.barrier(what)
        return self.comm.allgather(value)

    def check_same(self, value, what: str) -> None:
        """DistributedError on every rank unless every rank passes an equal ``value``."""
        values = self.allgather(value, f"comparing {what} across ranks")
        differ = [r for r, v in enumerate(values) if v != values[0]]
        if differ:
            raise DistributedError(f"{what} differs between ranks: rank 0 has {values[0]!r}, "
                                   f"rank {differ[0]} has {values[differ[0]]!r}; every rank must "
                                   f"run the same model and settings")

    def abort(self, message: str, code: int = 1):
        """Print ``message`` naming this rank and stop every rank of the job (MPI_Abort)."""
        sys.stderr.write(f"ember.distributed: {self.where}: {message}\n")
        sys.stderr.flush()
        self.comm.Abort(code)
        os._exit(code)      # Abort does not return; this is in case an MPI build lets it


def install_excepthook(ctx: MPIContext) -> None:
    """An uncaught exception on one rank aborts the job (naming the rank) rather than leaving the
    other ranks blocked in their next collective; chains to the hook already installed."""
    previous = sys.excepthook
    if getattr(previous, "_ember_mpi", False):
        return

    def hook(kind, value, tb):
        try:
            previous(kind, value, tb)
        finally:
            if not issubclass(kind, SystemExit) or value.code not in (None, 0):
                ctx.abort(f"uncaught {kind.__name__}: {value}")

    hook._ember_mpi = True
    sys.excepthook = hook


def resolve(distributed) -> MPIContext | None:
    """``None`` (one process), ``"mpi"`` (COMM_WORLD) or an ``MPIContext``."""
    if distributed is None or distributed is False:
        return None
    if isinstance(distributed, MPIContext):
        return distributed
    if distributed == "mpi":
        return MPIContext()
    raise DistributedError(f"distributed must be None, 'mpi' or an ember.distributed.MPIContext, "
                           f"got {distributed!r}")


def state_digest(arrays) -> int:
    """A checksum of arrays' bytes, to tell whether ranks hold the same state."""
    crc = 0
    for a in arrays:
        crc = zlib.crc32(np.ascontiguousarray(a).view(np.uint8).reshape(-1), crc)
    return crc


class GradientSync:
    """The flat buffer every rank allreduces after (and during) backward; see the module doc.

    Layout: the trainable parameters' gradients in reverse order (backward finishes the last
    layer first), then the buffers' new values (BatchNorm running statistics), then the loss.
    ``grads`` (parameter -> view into the buffer, parameter's shape) is what the optimizer
    reads once ``finish`` returned; ``buffers`` likewise holds the averaged running statistics.
    """

    def __init__(self, ctx: MPIContext, trainable: list, params: dict, buffers: list,
                 buffer_arrays: dict):
        self.ctx = ctx
        layout = [(n, params[n].shape) for n in reversed(trainable)]
        self.n_grads = len(layout)
        layout += [(b, buffer_arrays[b].shape) for b in buffers]
        layout.append(("<loss>", ()))
        self.slots, offset = {}, 0
        for name, shape in layout:
            size = int(np.prod(shape, dtype=np.int64))
            self.slots[name] = (offset, size, shape)
            offset += size
        self.flat = np.zeros(offset, np.float32)
        self.grads = {n: self._view(n) for n in trainable}
        self.buffers = {b: self._view(b) for b in buffers}
        self.loss = self._view("<loss>").reshape(1)
        # buckets: consecutive gradient slots up to bucket_bytes each, then one tail bucket for
        # the running statistics and the loss (known only once the whole step has run)
        limit = max(1, ctx.bucket_bytes // 4)
        self.buckets, members, lo = [], [], 0
        for name, _ in layout[:self.n_grads]:
            off, size, _ = self.slots[name]
            if members and off + size - lo > limit:
                self.buckets.append((lo, off, members))
                members, lo = [], off
            members.append(name)
        if members:
            self.buckets.append((lo, self.slots[members[-1]][0] + self.slots[members[-1]][1],
                                 members))
        tail = self.slots[layout[self.n_grads][0]][0] if len(layout) > self.n_grads else offset
        self.buckets.append((tail, offset, [n for n, _ in layout[self.n_grads:]]))
        self.bucket_of = {n: i for i, (_, _, ms) in enumerate(self.buckets) for n in ms}
        self.wait_seconds = 0.0      # time spent waiting for allreduces (benchmarks read it)
        self._reset()

    def _view(self, name):
        off, size, shape = self.slots[name]
        return self.flat[off:off + size].reshape(shape)

    def signature(self) -> list:
        return [(n, tuple(int(d) for d in s)) for n, (_, _, s) in self.slots.items()]

    # ---- one step ----------------------------------------------------------------------------
    def _reset(self):
        self._missing = [len(ms) for _, _, ms in self.buckets]
        self._next = 0
        self._requests = []

    def begin(self, scale: float) -> None:
        self._reset()
        self.scale = np.float32(scale)

    def put(self, name: str, value, scale=None) -> None:
        """Slot ``name`` = value·scale; starts every bucket that became complete, in order."""
        np.multiply(value, self.scale if scale is None else np.float32(scale),
                    out=self._view(name), casting="unsafe")
        self._filled(name)

    def put_zero(self, name: str) -> None:
        self._view(name).fill(0.0)
        self._filled(name)

    def _filled(self, name: str) -> None:
        b = self.bucket_of[name]
        self._missing[b] -= 1
        MPI, comm = self.ctx.MPI, self.ctx.comm
        while self._next < len(self.buckets) and self._missing[self._next] == 0:
            lo, hi, _ = self.buckets[self._next]
            if self.ctx.size > 1:
                self._requests.append(comm.Iallreduce(MPI.IN_PLACE, self.flat[lo:hi],
                                                      op=MPI.SUM))
            self._next += 1
        if self._requests:      # give MPI a chance to move the buckets already in flight
            MPI.Request.Testall(self._requests)

    def finish(self, what: str) -> None:
        """Wait for every bucket (all must have been filled)."""
        assert self._next == len(self.buckets), "a gradient slot was never filled"
        t0 = time.perf_counter()
        self.ctx.wait(self._requests, what)
        self.wait_seconds += time.perf_counter() - t0
        self._requests = []


class StepHooks:
    """A compiled TrainingStep's runner with ``GradientSync.put`` calls spliced in right after
    the kernel that finishes each gradient (gradients folded to constants, and those whose
    producer has no bound step, are put once the step has run)."""

    def __init__(self, step, sync: GradientSync):
        from .binders import make_runner
        self.step, self.sync = step, sync
        graph = step.compiled.graph
        position = {id(node): i for i, node in enumerate(graph.nodes)}
        producer = {o: i for i, node in enumerate(graph.nodes) for o in node.outputs if o}
        grad_value = step.grad_values         # parameter -> graph value of its gradient
        bound = [(position[id(node)], fn) for node, fn in step.ctx.steps]
        hooks: dict = {}                      # index into bound -> parameters finished there
        self.after_run = []
        const = {id(private) for private, _ in step._const_grads}
        for p, value in grad_value.items():
            at = producer.get(value)
            if at is None or id(step.grads[p]) in const:
                self.after_run.append(p)
                continue
            last = max((k for k, (i, _) in enumerate(bound) if i <= at), default=None)
            if last is None:
                self.after_run.append(p)
            else:
                hooks.setdefault(last, []).append(p)
        steps = []
        for k, (_, fn) in enumerate(bound):
            steps.append(fn)
            if k in hooks:
                steps.append(self._hook(hooks[k]))
        self.runner = make_runner(steps)

    def _hook(self, names):
        sync, grads = self.sync, self.step.grads

        def put_finished_gradients():
            for p in names:
                sync.put(p, grads[p])
        return put_finished_gradients

    def run(self) -> float:
        """Forward + backward with the gradient buckets leaving as they are finished; returns
        this rank's (unscaled) loss. The tail bucket is left to the caller."""
        step = self.step
        self.runner.run()
        for private, const in step._const_grads:
            np.copyto(private, const)
        for p in self.after_run:
            self.sync.put(p, step.grads[p])
        return float(step.loss_view)


class DistributedStep:
    """One optimisation step over every rank (the Trainer's side of data parallelism).

    Each rank runs its compiled step on its rows with the gradient buckets leaving as backward
    finishes them; its contributions are weighted so the sums are the single-process batch's:
    gradients and loss by ``loss_scale`` (this rank's share of the loss weight — its rows, or
    its non-ignored targets — for a mean loss; 1 for a sum), running statistics by
    ``stat_scale`` (its share of the rows). A rank with no rows (a last batch smaller than the
    job) contributes zeros. Then every rank applies the same update to the same parameters."""

    def __init__(self, ctx: MPIContext, runner, trainable: list, params: dict, buffers: dict):
        self.ctx, self.runner = ctx, runner
        self.buffers = buffers
        self.sync = GradientSync(ctx, trainable, params, list(buffers), buffers)
        self._hooks: dict = {}
        self.steps_run = 0

    def hooks_for(self, step) -> StepHooks:
        hooks = self._hooks.get(id(step))
        if hooks is None or hooks.step is not step:
            hooks = self._hooks[id(step)] = StepHooks(step, self.sync)
        return hooks

    def __call__(self, step, loss_scale: float, stat_scale: float, m: int,
                 global_step: int) -> float:
        """``step`` (None when this rank has no rows) → the global batch's loss; the update is
        applied. ``m``: the global batch's rows (for the L2 term)."""
        sync = self.sync
        sync.begin(loss_scale)
        if step is None:
            for name in sync.slots:
                sync.put_zero(name)
        else:
            local = self.hooks_for(step).run()
            new = dict(zip(step.update_names, (v for _, v in step.updates)))
            for name, buf in self.buffers.items():
                sync.put(name, new.get(name, buf), stat_scale)
            sync.put("<loss>", np.float32(local))
        sync.finish(f"the gradient allreduce of step {global_step}")
        self.steps_run += 1
        updates = [(buf, sync.buffers[name]) for name, buf in self.buffers.items()]
        return self.runner.apply(sync.grads, updates, float(sync.loss[0]), m, global_step)

    def resync(self, arrays: list, what: str) -> bool:
        """Make every rank hold rank 0's bytes for ``arrays`` when they differ (allreduce
        results can differ in the last bit between ranks with more than 2 of them); True when
        a copy was needed."""
        digests = self.ctx.allgather(state_digest(arrays), f"comparing {what}")
        if all(d == digests[0] for d in digests):
            return False
        for a in arrays:
            self.ctx.bcast(a, f"broadcasting {what}")
        return True
