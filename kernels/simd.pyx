"""Which instruction set ember's dispatched kernels run, chosen once when this module is imported.

Every hot loop that gains from wider vectors (the GEMM micro-kernel and packing, …: the
templates ``kernels/*_kernel.h``) is compiled once per level into this one extension
(``kernels/simd_<level>.c``), and each level's functions form a table (``kernels/simd.h``). At
import the best level the CPU and the OS support is taken (CPUID and XGETBV, ``kernels/isa.h``),
or the lower one ``EMBER_ISA`` names; the other kernel modules fetch the chosen table through
``table_capsule`` at their own import (``simd.pxd``: ``use_simd``).

``EMBER_ISA``: ``generic``, ``avx2``, ``avx512`` or ``auto`` (the default: the best the CPU has).
Naming a level the CPU lacks, or an unknown name, is refused: ``refusal()`` says why, and
``import ember`` raises it as ``ember.UnsupportedIsaError`` (runtime/cpu.py; the kernels cannot
import ember's error types), so no kernel ever runs on a level the user did not ask for. ``avx512-on-avx2`` (tests only) runs the
AVX-512 kernels' source compiled for AVX2, so their logic is tested on machines without AVX-512.
"""
import os

from cpython.pycapsule cimport PyCapsule_New


cdef extern from "simd.h" nogil:
    cdef struct ember_sgemm_kernels:
        int mr, nr, mc, kc, nc
    ctypedef struct ember_simd:
        const char *name
        int isa
        int needs
        const ember_sgemm_kernels *sgemm
    const ember_simd ember_simd_generic, ember_simd_avx2, ember_simd_avx512
    const ember_simd ember_simd_avx512_on_avx2
    int ember_cpu_isa()

cdef extern from "thread_pool.h" nogil:
    void ember_pool_stats(long *out)


def pool_stats():
    """The thread pool's state and counters (thread_pool.h): for tests and diagnosis."""
    cdef long out[6]
    ember_pool_stats(out)
    return dict(zip(("workers", "holds", "sleepers", "jobs", "busy_inline", "wakes"),
                    [out[i] for i in range(6)]))


LEVELS = ("generic", "avx2", "avx512")
TEST_LEVELS = ("avx512-on-avx2",)


cdef const ember_simd *table_for(str name):
    if name == "generic":
        return &ember_simd_generic
    if name == "avx2":
        return &ember_simd_avx2
    if name == "avx512":
        return &ember_simd_avx512
    return &ember_simd_avx512_on_avx2


def cpu_isa():
    """The best level this CPU and its OS can run: 'generic', 'avx2' or 'avx512'."""
    return LEVELS[ember_cpu_isa()]


def why_refused(str asked):
    """Why the EMBER_ISA value `asked` cannot be honoured here, or None when it can."""
    best = ember_cpu_isa()
    if asked == "auto":
        return None
    if asked not in LEVELS and asked not in TEST_LEVELS:
        return (f"EMBER_ISA={asked!r} is not an instruction set ember knows: use one of "
                f"{', '.join(LEVELS)} or auto")
    cdef const ember_simd *t = table_for(asked)
    if t.isa < 0:
        return (f"EMBER_ISA={asked!r}: this build of ember has no {asked} kernels (not an "
                f"x86-64 build); use generic")
    if t.needs > best:
        return (f"EMBER_ISA={asked!r} asks for {LEVELS[t.needs]} kernels, but this CPU (with "
                f"its OS) supports at most {LEVELS[best]}: set EMBER_ISA to {LEVELS[best]} or "
                f"lower, or unset it")
    return None


_asked = os.environ.get("EMBER_ISA", "").strip().lower() or "auto"
_refused = why_refused(_asked)
# a refused request runs nothing: ember's import raises before any kernel is called
cdef const ember_simd *chosen = table_for(
    LEVELS[ember_cpu_isa()] if _asked == "auto" or _refused else _asked)


def refusal():
    """Why this process's EMBER_ISA was refused (None when it was not)."""
    return _refused

# the chosen table, for the other kernel modules (simd.pxd: use_simd)
table_capsule = PyCapsule_New(<void *> chosen, b"ember.kernels.simd.table", NULL)


def isa():
    """The level the dispatched kernels run in this process."""
    return chosen.name.decode()


def gemm_blocking():
    """The GEMM's register and cache blocking on this level: micro-kernel rows x columns
    (mr x nr) and the A block (mc x kc floats, sized for L2), B panel (kc x nr, for L1) and
    widest task (nc columns)."""
    g = chosen.sgemm
    return {"mr": g.mr, "nr": g.nr, "mc": g.mc, "kc": g.kc, "nc": g.nc}
