"""ember's benchmarks, run from the repository root: ``python -m benchmarks`` (see run.py).

The checkout's ``ember/`` folder is only the public face — setup.py maps ``graph/``,
``runtime/`` and ``kernels/`` into the ``ember`` package when it is installed — so with the
root on ``sys.path`` (``python -m`` puts the cwd first) ``import ember`` would find a package
without its kernels. Dropping the root here lets the installed ember win; this package's own
modules are still found through its ``__path__``.
"""
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _ROOT]
