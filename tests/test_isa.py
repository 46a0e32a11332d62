"""Run-time instruction-set dispatch (kernels/simd.pyx, kernels/isa.h).

The kernels are compiled once per level into ember.kernels.simd and one level is chosen at
import. Each level this machine can run gets the kernel suites in a child process with
EMBER_ISA set (the choice is made once per process); the default level is the one the rest of
the suite runs. The detection itself is checked against what Linux reports in /proc/cpuinfo, an
oracle ember did not write.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

import ember
from ember.kernels import simd
from ember.runtime.cpu import cache_sizes, cpu_info, describe, parse_cache_size

TESTS = os.path.dirname(os.path.abspath(__file__))
KERNELS = os.path.join(os.path.dirname(TESTS), "kernels")
LEVEL_RANK = {"generic": 0, "avx2": 1, "avx512": 2}
# the kernel suites each non-default level runs (numpy twins of every kernel, their gradients,
# Winograd against direct convolution)
KERNEL_SUITES = ["test_kernels.py", "test_winograd.py", "test_grad_kernels.py", "test_packed_conv.py"]


def cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def run_child(code: str, isa: str | None):
    env = dict(os.environ)
    env.pop("EMBER_ISA", None)
    if isa is not None:
        env["EMBER_ISA"] = isa
    # cwd outside the checkout: its ember/ folder must not shadow the installed package
    return subprocess.run([sys.executable, "-c", code], cwd=TESTS, env=env, capture_output=True,
                          text=True, timeout=300)


def runnable_levels() -> list:
    best = LEVEL_RANK[simd.cpu_isa()]
    levels = [name for name, rank in LEVEL_RANK.items() if rank <= best]
    if best >= LEVEL_RANK["avx2"]:
        levels.append("avx512-on-avx2")
    return levels


def test_default_level_is_the_best_the_cpu_runs():
    if os.environ.get("EMBER_ISA"):
        pytest.skip("EMBER_ISA is set for this run")
    assert simd.isa() == simd.cpu_isa()


@pytest.mark.skipif(not os.path.exists("/proc/cpuinfo"), reason="needs Linux's /proc/cpuinfo")
def test_detection_agrees_with_the_kernels_view_of_the_cpu():
    """CPUID + XGETBV (isa.h) against the flags Linux shows (which it clears for state the OS
    does not save)."""
    flags = cpu_flags()
    if not flags or not ({"sse2", "asimd", "fp"} & flags):
        pytest.skip("no x86 or arm flags line")
    expected = "generic"
    if {"avx2", "fma", "avx"} <= flags:
        expected = "avx2"
        if {"avx512f", "avx512dq", "avx512bw", "avx512vl"} <= flags:
            expected = "avx512"
    assert simd.cpu_isa() == expected


@pytest.mark.parametrize("asked", ["sse9", "AVX-512", "native"])
def test_an_unknown_level_is_refused_by_name(asked):
    r = run_child("import ember", asked)
    assert r.returncode != 0
    assert "UnsupportedIsaError" in r.stderr and repr(asked.lower()) in r.stderr
    assert "generic, avx2, avx512" in r.stderr


def test_a_level_above_the_cpu_is_refused():
    best = simd.cpu_isa()
    higher = [name for name, rank in LEVEL_RANK.items() if rank > LEVEL_RANK[best]]
    if not higher:
        pytest.skip(f"this CPU runs every level ember has ({best})")
    r = run_child("import ember", higher[-1])
    assert r.returncode != 0
    assert "UnsupportedIsaError" in r.stderr
    assert f"supports at most {best}" in r.stderr


@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512", "avx512-on-avx2", "auto"])
def test_each_runnable_level_is_the_one_reported(isa):
    if isa != "auto" and isa not in runnable_levels():
        pytest.skip(f"this CPU cannot run {isa}")
    r = run_child("import ember; from ember.kernels import simd; print(simd.isa(), "
                  "ember.cpu_info()['isa'])", isa)
    assert r.returncode == 0, r.stderr
    expected = simd.cpu_isa() if isa == "auto" else isa
    assert r.stdout.split() == [expected, expected]


@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512", "avx512-on-avx2"])
def test_kernel_suites_pass_on_every_level(isa):
    """Every kernel against its numpy twin, on each level but the default (the whole suite
    runs that one)."""
    if isa not in runnable_levels():
        pytest.skip(f"this CPU cannot run {isa}")
    if isa == simd.isa():
        pytest.skip(f"{isa} is this run's own level: the whole suite covers it")
    env = dict(os.environ, EMBER_ISA=isa)
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                        *KERNEL_SUITES], cwd=TESTS, env=env, capture_output=True, text=True,
                       timeout=900)
    tail = "\n".join(r.stdout.splitlines()[-15:])
    assert r.returncode == 0, f"EMBER_ISA={isa}:\n{tail}\n{r.stderr[-2000:]}"
    assert re.search(r"\d+ passed", tail) and " failed" not in tail


def pxd_modules_using_the_table() -> set:
    """Kernel .pxd files whose declarations come from simd.h (calling them needs the table)."""
    found = set()
    for name in os.listdir(KERNELS):
        if name.endswith(".pxd"):
            with open(os.path.join(KERNELS, name)) as f:
                if 'cdef extern from "simd.h"' in f.read():
                    found.add(name[:-4])
    return found


@pytest.mark.skipif(not os.path.isdir(KERNELS), reason="needs the source checkout")
def test_every_module_calling_the_table_fetches_it_at_import():
    """A module that calls a dispatched kernel before use_simd() ran dereferences NULL: each
    .pyx cimporting a table-backed .pxd must call use_simd() at module level."""
    users = pxd_modules_using_the_table() - {"simd"}
    assert "sgemm" in users
    missing = []
    for name in sorted(os.listdir(KERNELS)):
        if not name.endswith(".pyx") or name == "simd.pyx":
            continue
        with open(os.path.join(KERNELS, name)) as f:
            source = f.read()
        cimported = set(re.findall(r"^from kernels\.(\w+) cimport", source, re.M))
        cimported |= set(re.findall(r"^from kernels cimport (\w+)", source, re.M))
        if cimported & users and not re.search(r"^use_simd\(\)$", source, re.M):
            missing.append(name)
    assert not missing, f"call use_simd() at module level in: {missing}"


def test_cpu_info_describes_the_level_in_use():
    info = ember.cpu_info()
    assert info["isa"] == simd.isa() and info["best_isa"] == simd.cpu_isa()
    assert 1 <= info["threads"] <= info["cores"]
    g = info["gemm"]
    assert g["nr"] == (32 if simd.isa().startswith("avx512") else 16) and g["mr"] == 6
    assert g["a_block_bytes"] == 4 * g["mc"] * g["kc"]
    text = describe(info)
    assert f"isa      {info['isa']}" in text and "micro-kernel 6x" in text


def test_ember_info_cpu_prints_the_level(tmp_path):
    env = dict(os.environ)
    r = subprocess.run([sys.executable, "-m", "ember", "info", "--cpu"], cwd=TESTS, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert re.search(rf"^isa\s+{re.escape(simd.isa())}", r.stdout, re.M)
    assert re.search(r"^threads\s+\d+ of \d+ usable cores", r.stdout, re.M)


@pytest.mark.parametrize("text,expected", [("48K", 48 << 10), ("2048K", 2 << 20),
                                           ("32M", 32 << 20), ("512", 512), ("", None),
                                           (None, None), ("lots", None)])
def test_parse_cache_size(text, expected):
    assert parse_cache_size(text) == expected


def test_cache_sizes_read_a_sysfs_tree(tmp_path):
    for index, (level, kind, size) in enumerate([("1", "Data", "48K"), ("1", "Instruction", "32K"),
                                                  ("2", "Unified", "2048K"),
                                                  ("3", "Unified", "105M")]):
        d = tmp_path / f"index{index}"
        d.mkdir()
        (d / "level").write_text(level + "\n")
        (d / "type").write_text(kind + "\n")
        (d / "size").write_text(size + "\n")
    assert cache_sizes(str(tmp_path)) == {"L1d": 48 << 10, "L2": 2 << 20, "L3": 105 << 20}
    assert cache_sizes(str(tmp_path / "missing")) == {}
