"""Build ember: map the four source folders into the ``ember`` namespace and compile every
``kernels/*.pyx`` with -O3, for the architecture's baseline: the SIMD kernels are
compiled once per instruction set into ``ember.kernels.simd`` (``kernels/simd_<level>.c``) and
chosen at import from what the CPU reports, so every build (a wheel or ``pip install .``) runs
the same kernels on the same machine. There is no -march=native: it would only change how the
compiler vectorises the few loops left outside the dispatched kernels.

Environment switches:
  EMBER_PORTABLE=1    accepted for older scripts; every build is portable now
  EMBER_BOUNDSCHECK=1 Cython bounds and wraparound checks on in every kernel (CI safety run)

The kernels run on ember's own thread pool (kernels/thread_pool.c, POSIX threads), not OpenMP:
no libgomp is linked, loaded or needed at run time.
"""
import glob
import os

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


compile_args = ["-O3", "-fno-math-errno", "-Wno-unused-function",
                "-Wno-maybe-uninitialized", "-Wno-unreachable-code",
                "-Wno-psabi"]   # vector types in static functions of the per-ISA kernels
if not _flag("EMBER_DEBUG_SYMBOLS"):
    compile_args.append("-g0")   # Python's CFLAGS carry -g: debug info would triple the wheel
compile_args.append("-pthread")   # kernels/thread_pool.c
link_args = ["-pthread"]

checks = _flag("EMBER_BOUNDSCHECK")
directives = {
    "language_level": 3,
    "boundscheck": checks,
    "wraparound": checks,
    "initializedcheck": checks,
    "cdivision": True,
    "nonecheck": False,
    "embedsignature": True,
}

os.chdir(HERE)


def kernel_sources(pyx):
    """The sources of one kernel extension: its .pyx, and for ember.kernels.simd the one
    translation unit per instruction set that compiles every dispatched kernel for it."""
    if os.path.basename(pyx) == "simd.pyx":
        return [pyx] + sorted(glob.glob("kernels/simd_*.c")) + ["kernels/thread_pool.c"]
    return [pyx]


extensions = [
    Extension(f"ember.kernels.{os.path.splitext(os.path.basename(p))[0]}", kernel_sources(p),
              include_dirs=[np.get_include(), "kernels"],
              extra_compile_args=compile_args, extra_link_args=link_args,
              define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")])
    for p in sorted(glob.glob("kernels/*.pyx"))
]

setup(
    package_dir={
        "ember": "ember",
        "ember.graph": "graph",
        "ember.graph.ops": "graph/ops",
        "ember.runtime": "runtime",
        "ember.kernels": "kernels",
        "ember.importers": "importers",
    },
    packages=["ember", "ember.graph", "ember.graph.ops", "ember.runtime", "ember.runtime.binders",
              "ember.kernels", "ember.importers"],
    package_data={"ember": ["data/*", "py.typed"], "ember.kernels": ["*.pxd", "*.pyx", "*.h", "*.c", "CONTRACT.md"]},
    ext_modules=cythonize(extensions, compiler_directives=directives,
                          build_dir="build/cython" + ("-checked" if checks else ""),
                          quiet=True),
    zip_safe=False,
)
