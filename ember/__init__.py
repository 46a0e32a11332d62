"""ember: a compiled-graph neural-network runtime for the CPU.

    import ember
    sess = ember.load("model.onnx")
    (probs,) = sess.run(None, {"input": x})
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .graph.errors import (CheckpointError, DistributedError, EmberError, InputError,
                           ModelError, ShapeError, TrainingError, UnsupportedIsaError,
                           UnsupportedOpError)
from .runtime.cpu import cpu_info
from .runtime.session import IOInfo, Session

if TYPE_CHECKING:   # the lazy attributes below, as type checkers should see them
    import os

    from onnx import ModelProto

    from . import callbacks, datasets, distributed, init, nn, optim, transforms
    from .export import export_onnx
    from .trainer import Trainer

__version__ = "0.1.0"
__all__ = ["load", "Session", "IOInfo", "EmberError", "ModelError", "UnsupportedOpError",
           "ShapeError", "InputError", "TrainingError", "CheckpointError", "DistributedError",
           "Trainer", "optim", "export_onnx", "nn", "init", "datasets", "distributed",
           "callbacks", "transforms", "cpu_info", "UnsupportedIsaError", "__version__"]

# Model building and training pull in the builder, autodiff, the optimizer kernels and the loss
# ops: imported on first use so that ``import ember`` for inference stays fast.
_LAZY = {"Trainer": ("trainer", "Trainer"), "export_onnx": ("export", "export_onnx"),
         "optim": ("optim", None), "nn": ("nn", None), "init": ("init", None),
         "datasets": ("datasets", None), "distributed": ("distributed", None),
         "callbacks": ("callbacks", None), "transforms": ("transforms", None)}


def __getattr__(name):
    if name in _LAZY:
        import importlib
        module, attr = _LAZY[name]
        mod = importlib.import_module(f"{__name__}.{module}")
        value = mod if attr is None else getattr(mod, attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


def load(model: str | os.PathLike | bytes | bytearray | memoryview | ModelProto,
         threads: int | None = None, shapes: dict | None = None,
         memory_cap: int | None = None, optimize: bool = True,
         max_plans: int = 16, max_concurrent_runs: int | None = None) -> Session:
    """Load an ONNX model (a path, the file's bytes, or an ``onnx.ModelProto``) and compile it.

    ``threads``: threads of ember's pool this Session uses (default: the CPUs this process may use).
    ``shapes``: concrete shapes for inputs with symbolic dims, e.g. ``{"input": (8, 3, 224, 224)}``;
    without it such a model still loads, and each new input shape is compiled on first use.
    ``memory_cap``: bytes the Session may allocate for the model — the arenas of every cached
    plan and concurrent run, and numpy fallbacks' temporaries (default: available RAM).
    ``max_plans``: how many compiled input shapes to keep (least recently used goes first).
    ``max_concurrent_runs``: runs at once, each with its own arena (default: the usable CPUs).

    The Session pickles (multiprocessing, joblib, Dask) as the model it was given — the file,
    with its external data, read again when pickled, or the caller's bytes — and the options
    given here; a worker compiles on first use, with its own default thread count unless
    ``threads`` was given (ember/onnx_source.py, runtime/pickling.py).
    """
    from .importers.onnx import load_onnx
    from .onnx_source import OnnxSource
    graph = load_onnx(model)
    sess = Session(graph, threads=threads, shapes=shapes, memory_cap=memory_cap,
                   optimize=optimize, max_plans=max_plans,
                   max_concurrent_runs=max_concurrent_runs)
    return sess._keep_source(OnnxSource.capture(model))
