"""How many threads ember uses by default: the CPUs *this process* may use, never the host's.

Inside a container ``os.cpu_count()`` is the host's count, and even the affinity mask is often
the host's: the limit a container really gets is its cgroup CPU quota (``docker run --cpus 1.5``
writes ``150000 100000`` into ``cpu.max``). Sizing the thread pool's share from the host makes every
parallel region wait for threads the scheduler throttles. So the default is

    min(len(affinity mask), ceil(cgroup quota / period)), at least 1,

with the quota read from cgroup v2 (``cpu.max``) or v1 (``cpu.cfs_quota_us`` /
``cpu.cfs_period_us``), the tightest over the process's cgroup and its ancestors.
``EMBER_NUM_THREADS`` overrides it, and ``Session(threads=...)`` overrides both.

Every reader takes its file contents or paths as parameters so tests can feed fake trees; none
of this changes the thread settings of numpy or any other library.
"""
from __future__ import annotations

import math
import os

from ..graph.errors import EmberError

ENV_VAR = "EMBER_NUM_THREADS"
CGROUP_ROOT = "/sys/fs/cgroup"
PROC_CGROUP = "/proc/self/cgroup"


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


# ---- parsing (pure) ----------------------------------------------------------------------------
def parse_proc_cgroup(text: str) -> dict:
    """``/proc/self/cgroup`` -> {controller: path}; the cgroup v2 entry (``0::/path``) is keyed
    ``""``. A v1 line lists several controllers mounted together (``3:cpu,cpuacct:/x``)."""
    paths = {}
    for line in text.splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if not controllers:
            paths[""] = path
        for c in controllers.split(","):
            if c:
                paths[c] = path
    return paths


def parse_cpu_max(text: str | None) -> float | None:
    """cgroup v2 ``cpu.max`` (``"150000 100000"`` or ``"max 100000"``) -> CPUs, None if no limit."""
    if not text:
        return None
    fields = text.split()
    if not fields or fields[0] == "max":
        return None
    try:
        quota = int(fields[0])
        period = int(fields[1]) if len(fields) > 1 else 100000
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def parse_cfs(quota_text: str | None, period_text: str | None) -> float | None:
    """cgroup v1 ``cpu.cfs_quota_us`` and ``cpu.cfs_period_us`` -> CPUs; quota -1 is no limit."""
    if not quota_text or not period_text:
        return None
    try:
        quota, period = int(quota_text.strip()), int(period_text.strip())
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def parse_env_threads(value: str | None) -> int | None:
    """``EMBER_NUM_THREADS``: a positive integer, or unset/empty (None); anything else is an
    error naming the variable — a typo must not silently fall back to the default."""
    if value is None or not value.strip():
        return None
    try:
        n = int(value.strip())
    except ValueError:
        n = 0
    if n < 1:
        raise EmberError(f"{ENV_VAR}={value!r}: expected a positive integer number of threads "
                         f"(unset it to use the CPUs this process may use)")
    return n


# ---- the cgroup tree ---------------------------------------------------------------------------
def _ancestors(root: str, path: str) -> list:
    """Directories from the process's cgroup up to the mount root, innermost first. Without a
    cgroup namespace the listed path may not exist under the mount (it is the host's path):
    then only the mount root is read, which is the container's own cgroup."""
    path = path.strip().strip("/")
    here = os.path.join(root, path) if path else root
    if not os.path.isdir(here):
        return [root]
    dirs = []
    while True:
        dirs.append(here)
        if os.path.normpath(here) == os.path.normpath(root):
            return dirs
        here = os.path.dirname(here)


def cgroup_cpu_limit(root: str = CGROUP_ROOT, proc_cgroup: str = PROC_CGROUP) -> float | None:
    """The tightest CPU quota (in CPUs, may be fractional) over this process's cgroup and its
    ancestors, v2 first then v1; None when there is no quota or no cgroup filesystem."""
    paths = parse_proc_cgroup(_read(proc_cgroup) or "")
    limits = []
    if "" in paths and os.path.exists(os.path.join(root, "cgroup.controllers")):
        limits += [parse_cpu_max(_read(os.path.join(d, "cpu.max")))
                   for d in _ancestors(root, paths[""])]
    if "cpu" in paths:
        for mount in _v1_cpu_mounts(root):
            for d in _ancestors(mount, paths["cpu"]):
                limits.append(parse_cfs(_read(os.path.join(d, "cpu.cfs_quota_us")),
                                        _read(os.path.join(d, "cpu.cfs_period_us"))))
            break
    limits = [x for x in limits if x is not None]
    return min(limits) if limits else None


def _v1_cpu_mounts(root: str) -> list:
    """Where the v1 cpu controller is mounted under ``root`` (``cpu``, ``cpu,cpuacct``, …)."""
    try:
        names = os.listdir(root)
    except OSError:
        return []
    found = [os.path.join(root, n) for n in sorted(names)
             if "cpu" in n.split(",") and os.path.isdir(os.path.join(root, n))]
    return found


def affinity_cpu_set() -> set:
    """The CPUs in this process's affinity mask (``taskset``, ``--cpuset-cpus``, MPI binding)."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


def affinity_cpus() -> int:
    """How many CPUs this process's affinity mask holds."""
    return len(affinity_cpu_set()) or 1


def default_threads(environ=None, root: str = CGROUP_ROOT, proc_cgroup: str = PROC_CGROUP,
                    affinity: int | None = None) -> int:
    """Threads a Session uses when not told: ``EMBER_NUM_THREADS`` if set, else the affinity
    mask capped by the cgroup CPU quota (rounded up: 1.5 CPUs -> 2 threads), at least 1."""
    env = os.environ if environ is None else environ
    override = parse_env_threads(env.get(ENV_VAR))
    if override is not None:
        return override
    cpus = affinity if affinity is not None else affinity_cpus()
    quota = cgroup_cpu_limit(root, proc_cgroup)
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)
