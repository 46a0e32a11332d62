"""What ember knows about the machine it runs on: the instruction set its kernels use, the cores
and threads it will use, the caches, and the blocking its GEMM uses against them.

The instruction set is chosen once per process by ``ember.kernels.simd`` (CPUID and XGETBV, or
``EMBER_ISA``); this module only reports it, beside what Linux says of the caches
(``/sys/devices/system/cpu/cpu0/cache``) and the CPU's name (``/proc/cpuinfo``).
"""
from __future__ import annotations

import os
import platform

from ..graph.errors import UnsupportedIsaError
from ..kernels import simd
from .threads import affinity_cpus, default_threads

CACHE_DIR = "/sys/devices/system/cpu/cpu0/cache"


def check_requested_isa() -> None:
    """Raise UnsupportedIsaError when EMBER_ISA asked for a level that cannot run here."""
    reason = simd.refusal()
    if reason is not None:
        raise UnsupportedIsaError(reason)


check_requested_isa()   # at import: every way into ember's kernels imports ember first


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def parse_cache_size(text: str | None) -> int | None:
    """'48K' / '2048K' / '32M' (sysfs) -> bytes."""
    if not text:
        return None
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1].upper(), 1)
    digits = text[:-1] if text[-1].upper() in "KMG" else text
    return int(digits) * scale if digits.isdigit() else None


def cache_sizes(cache_dir: str = CACHE_DIR) -> dict:
    """{'L1d': bytes, 'L2': bytes, 'L3': bytes} of one core as sysfs lists them (the L3 is
    shared); levels Linux does not report are left out."""
    sizes = {}
    try:
        entries = sorted(os.listdir(cache_dir))
    except OSError:
        return sizes
    for entry in entries:
        if not entry.startswith("index"):
            continue
        base = os.path.join(cache_dir, entry)
        level, kind = _read(os.path.join(base, "level")), _read(os.path.join(base, "type"))
        size = parse_cache_size(_read(os.path.join(base, "size")))
        if level is None or size is None or kind == "Instruction":
            continue
        sizes[f"L{level}d" if level == "1" else f"L{level}"] = size
    return sizes


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    text = _read(cpuinfo) or ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model", "Hardware"):
            return value.strip()
    return platform.processor() or platform.machine()


def cpu_info() -> dict:
    """The machine as ember's kernels see it (``ember info --cpu`` prints it)."""
    blocking = simd.gemm_blocking()
    return {
        "cpu": cpu_model(),
        "isa": simd.isa(),
        "best_isa": simd.cpu_isa(),
        "isa_forced_by": os.environ.get("EMBER_ISA") or None,
        "cores": affinity_cpus(),
        "threads": default_threads(),
        "caches": cache_sizes(),
        "gemm": {
            **blocking,
            # what the blocks weigh (floats are 4 bytes): the A block is meant for L2, one B
            # micro-panel for L1
            "a_block_bytes": 4 * blocking["mc"] * blocking["kc"],
            "b_panel_bytes": 4 * blocking["kc"] * blocking["nr"],
        },
    }


def describe(info: dict) -> str:
    """cpu_info() as the lines ``ember info --cpu`` prints."""
    forced = f" (EMBER_ISA={info['isa_forced_by']})" if info["isa_forced_by"] else ""
    caches = "  ".join(f"{k} {v // 1024} KiB" for k, v in info["caches"].items()) or "unknown"
    g = info["gemm"]
    return "\n".join([
        f"cpu      {info['cpu']}",
        f"isa      {info['isa']}{forced}   best this CPU runs: {info['best_isa']}",
        f"threads  {info['threads']} of {info['cores']} usable cores",
        f"caches   {caches}",
        f"gemm     micro-kernel {g['mr']}x{g['nr']}   A block {g['mc']}x{g['kc']} "
        f"({g['a_block_bytes'] // 1024} KiB, for L2)   B panel {g['kc']}x{g['nr']} "
        f"({g['b_panel_bytes'] // 1024} KiB, for L1)   tasks up to {g['nc']} columns",
    ])
