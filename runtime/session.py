"""The compiled executor.

A Session holds an imported ``Graph``. For each concrete set of input shapes it meets it compiles
once — infer shapes and fold constants, run the graph passes, plan the arena, bind every node to
a kernel with its views precomputed — and caches the result. ``run`` then only validates feeds,
copies them into the arena, runs the context's runner (the bound steps in order: consecutive
native steps — see ``kernels/plan.pyx`` — in one GIL-free loop) and copies the outputs out.

External state: ``Session(graph, external={name: array})`` binds graph inputs to caller-owned
arrays (a Trainer's parameters and buffers). They are read in place by every run — never copied,
never in the arena, never fed — and no step writes them; their owner may update them in place
between runs (an optimizer does), and every later run sees the new values.

Concurrency and memory: a compiled plan keeps its execution contexts (arena + bound steps) for
reuse, and a run holds one while it runs, so threads never share an arena. ``PlanCache`` bounds
them per Session: ``max_concurrent_runs`` contexts in use at once (a run beyond it waits), and
the bytes of every context of every cached plan under ``memory_cap``.

Pickling (multiprocessing, joblib, Dask): a Session pickles as its model (the ONNX file or
bytes ``ember.load`` read, or its graph serialized), its bound external state and the options the
caller gave — never arenas or plans; the unpickled Session compiles on its first run
(runtime/pickling.py).
"""
from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..graph import passes
from ..graph.errors import EmberError, InputError, ModelError, ShapeError
from ..graph.infer import infer_shapes
from ..graph.ir import Graph, TensorType
from ..graph.ops.base import NeedsValue
from . import binders
from .binders.control_flow import RuntimeShaped
from .plan_cache import PlanCache
from .planner import ALIGN, make_plan
from .threads import default_threads

if TYPE_CHECKING:
    from .planner import MemoryPlan
    from .profile import Profile


# Compiled plans (one per input shape, or per value of a shape-deciding input) are kept in a
# bounded least-recently-used cache, so a stream of distinct shapes cannot grow memory without
# limit: when it is full, the plan used longest ago goes (its arena is freed once no run holds it).
DEFAULT_MAX_PLANS = 16


def available_memory() -> int:
    """MemAvailable from /proc/meminfo, or a generous 16 GiB when it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 16 << 30


_ONNX_TYPE_NAMES = {"float32": "float", "float64": "double", "int64": "int64", "int32": "int32",
                    "bool": "bool", "uint8": "uint8", "int8": "int8", "float16": "float16"}


@dataclass(frozen=True)
class IOInfo:
    """Like onnxruntime's NodeArg: ``name``, ``shape`` (ints, or str for symbolic dims),
    ``dtype`` (a numpy dtype) and ``type`` (onnxruntime's string, e.g. ``tensor(float)``)."""

    name: str
    shape: tuple
    dtype: np.dtype

    @property
    def type(self) -> str:
        return f"tensor({_ONNX_TYPE_NAMES.get(self.dtype.name, self.dtype.name)})"


class _Context:
    """One arena with every node bound to views into it. Used by one run at a time.
    ``memory_left``: the bytes the memory cap leaves beside this context's own, which a numpy
    reference step's temporaries must fit."""

    def __init__(self, compiled: "Compiled", memory_left: int):
        g, plan = compiled.graph, compiled.plan
        raw = np.empty(compiled.context_bytes, dtype=np.uint8)
        shift = (-raw.ctypes.data) % ALIGN
        self.arena = raw[shift:shift + plan.arena_bytes]
        self._holders: dict = {}   # run-time-shaped values' holders, by name

        def view(name):
            if name in compiled.consts:
                return compiled.consts[name]
            if name in compiled.external:
                return compiled.external[name]
            t = g.types[name]
            if not t.is_static:
                return self._runtime_shaped(name, t)
            off = plan.offsets[name]
            return self.arena[off:off + t.nbytes].view(t.dtype).reshape(t.shape)

        self.feeds = [(name, view(name)) for name in g.inputs if name not in compiled.external]
        bind_ctx = binders.BindContext(g.types, compiled.threads, self.arena,
                                       live=[*compiled.external.values(), *compiled.fed],
                                       memory_left=memory_left, subgraph_session=Session)
        self.steps = []
        for idx, node in enumerate(g.nodes):
            ins = [view(i) if i else None for i in node.inputs]
            outs = [view(o) if o else None for o in node.outputs]
            scr = None
            if idx in plan.scratch:
                off, nb = plan.scratch[idx]
                scr = self.arena[off:off + nb // 4 * 4].view(np.float32)
            step = binders.bind(node, ins, outs, scr, bind_ctx)
            if step is not None:
                self.steps.append((node, step))
        self.outputs = {name: view(name) for name in g.outputs}
        self.runner = binders.make_runner([step for _, step in self.steps])

    def _runtime_shaped(self, name, t):
        """The holder of a value whose producing step decides its shape (an If whose branches
        disagree, a Loop's scan output): no arena bytes; ``output`` reads the step's array."""
        if name not in self._holders:
            self._holders[name] = RuntimeShaped(name, t.dtype)
        return self._holders[name]

    def output(self, name):
        """Output ``name`` after a run: its arena view, or a run-time-shaped value's array."""
        v = self.outputs[name]
        return v.array if isinstance(v, RuntimeShaped) else v


class Compiled:
    """A graph specialised to one set of input shapes, planned, with the contexts ``cache``
    (the Session's ``PlanCache``) lets it keep."""

    def __init__(self, graph: Graph, consts: dict, threads: int, cache: PlanCache,
                 external: dict | None = None, fed=()):
        self.graph, self.consts, self.threads = graph, consts, threads
        self.external = dict(external or {})
        self.fed = list(fed)   # fed arrays made constants of this plan (it is keyed on them)
        types = graph.types
        self._check_runtime_shaped(graph)
        scratch = {i: binders.scratch_bytes(n, types, threads) for i, n in enumerate(graph.nodes)}
        self.plan = make_plan(graph, scratch, is_view=binders.is_view,
                              inplace_inputs=lambda n: binders.inplace_inputs(n, types),
                              external=self.external)
        self.context_bytes = self.plan.arena_bytes + ALIGN   # the arena, aligned by hand
        memory_cap = cache.memory_cap
        if self.context_bytes > memory_cap:
            biggest = max(self.plan.sizes, key=lambda v: self.plan.sizes[v])
            producer = graph.producers().get(biggest)
            where = f"{producer}" if producer else "a graph input"
            raise ModelError(f"the plan needs a {self.plan.arena_bytes:,}-byte arena, more than "
                             f"the memory cap of {memory_cap:,} bytes; the largest value is "
                             f"{biggest!r} ({types[biggest]}, {self.plan.sizes[biggest]:,} bytes) "
                             f"from {where} (set memory_cap= on ember.load to allow more)")
        self._plans = cache
        self.idle: list = []      # kept by the PlanCache
        self.busy = 0
        self.retired = False

    @staticmethod
    def _check_runtime_shaped(graph: Graph) -> None:
        """A value whose shape only running decides may be a graph output only: a node reading
        it would need its shape to be bound."""
        for node in graph.nodes:
            for name in node.inputs:
                if name and not graph.types[name].is_static:
                    raise ShapeError(f"{node} reads {name!r} ({graph.types[name]}), whose shape "
                                     f"is only decided when the plan runs")

    def new_context(self) -> _Context:
        return _Context(self, self._plans.memory_cap - self.context_bytes)

    def native_steps(self) -> tuple:
        """(steps the plan runner makes from C, all steps, the op types of the others): how
        much of a run returns to Python between kernels (binds a context to count)."""
        ctx = self.acquire()
        try:
            python = [node.op_type for node, step in ctx.steps
                      if getattr(step, "_native", None) is None]
            return ctx.runner.native_steps, len(ctx.runner), sorted(set(python))
        finally:
            self.release(ctx)

    def acquire(self) -> _Context:
        """A context of this plan, for one run at a time; may wait for another run to release
        one (``max_concurrent_runs``, ``memory_cap``)."""
        return self._plans.acquire(self)

    def release(self, ctx: _Context) -> None:
        self._plans.release(self, ctx)


class Session:
    """A compiled model. ``run(output_names, feeds)`` has onnxruntime's signature."""

    def __init__(self, graph: Graph, threads: int | None = None, shapes: dict | None = None,
                 memory_cap: int | None = None, optimize: bool = True,
                 external: dict | None = None, max_plans: int = DEFAULT_MAX_PLANS,
                 max_concurrent_runs: int | None = None) -> None:
        self._setup(graph, threads, shapes, memory_cap, optimize, external, max_plans,
                    max_concurrent_runs, compile_now=True)

    def _setup(self, graph, threads, shapes, memory_cap, optimize, external, max_plans,
               max_concurrent_runs, compile_now: bool):
        """``__init__``'s body; ``compile_now=False`` (an unpickled Session) leaves even a
        static model's plan to its first run."""
        self._given = {k: v for k, v in (("threads", threads), ("shapes", shapes),
                                         ("memory_cap", memory_cap),
                                         ("max_concurrent_runs", max_concurrent_runs))
                       if v is not None}
        self._given.update(optimize=bool(optimize), max_plans=max_plans)
        self._source = None
        for setting, value, optional in (("max_plans", max_plans, False),
                                         ("threads", threads, True),
                                         ("max_concurrent_runs", max_concurrent_runs, True)):
            if (value is not None or not optional) and (
                    not isinstance(value, (int, np.integer)) or value < 1):
                raise EmberError(f"{setting} must be a positive integer, got {value!r}")
        self.max_plans = int(max_plans)
        self.external = self._check_external(graph, external or {})
        # BatchNorm folding is shape-independent: done once here, so every per-shape plan
        # shares the folded weights and the pre-fold ones are not kept (weights held once)
        self.graph = self._own_weights(self._fold_once(graph) if optimize else graph)
        graph = self.graph
        self.threads = int(threads) if threads else default_threads()
        self.memory_cap = int(memory_cap) if memory_cap else available_memory()
        # more runs at once than CPUs this process may use (EMBER_NUM_THREADS sizes a run's
        # team, not this) only queue in the OS scheduler, each holding its own arena
        self.max_concurrent_runs = int(max_concurrent_runs or default_threads(environ={}))
        self.optimize = optimize
        self._input_types = {}
        for name in graph.inputs:
            if name in self.external:
                continue
            t = graph.types[name]
            if shapes and name in shapes:
                t = self._override_shape(name, t, shapes[name])
            self._input_types[name] = t
        unknown = set(shapes or {}) - set(self._input_types)
        if unknown:
            raise InputError(f"shapes= names unknown inputs {sorted(unknown)}; the model's "
                             f"inputs are {list(graph.inputs)}")
        self._value_keyed: set = set()
        self._fast: tuple | None = None
        self._plans = PlanCache(self.max_plans, self.memory_cap, self.max_concurrent_runs)
        self._cache = self._plans.plans         # key -> Compiled, least recently used first
        self._compile_lock = threading.Lock()   # one compile at a time (held long)
        self.inputs = [IOInfo(n, t.shape, t.dtype) for n, t in self._input_types.items()]
        compiled = None
        self._static = all(t.is_static for t in self._input_types.values())
        if self._static and compile_now:
            # static models fail (or not) at load time, not on first run — unless an input's
            # value decides shapes, in which case compiling waits for the first feeds
            compiled = self._compile(dict(self._input_types), None, defer_on_value=True)
        self._signature = tuple((n, t.dtype, len(t.shape)) for n, t in self._input_types.items())
        self._all_outputs = list(graph.outputs)
        declared = graph.metadata.get("declared_output_types", {})
        self.outputs = []
        for n in graph.outputs:
            t = compiled.graph.types[n] if compiled else declared.get(n) or graph.types.get(n)
            self.outputs.append(IOInfo(n, t.shape if t else (),
                                       t.dtype if t else np.dtype("float32")))

    # ---- public onnxruntime-style API ------------------------------------------------------
    def get_inputs(self) -> list[IOInfo]:
        return list(self.inputs)

    def get_outputs(self) -> list[IOInfo]:
        return list(self.outputs)

    def run(self, output_names: str | Sequence[str] | None, feeds: Mapping[str, Any],
            run_options: Any = None) -> list[np.ndarray]:
        if not isinstance(feeds, dict):
            raise InputError(f"feeds must be a dict of input name -> array, got "
                             f"{type(feeds).__name__}")
        names = self._all_outputs if output_names is None else self._output_names(output_names)
        compiled = self._fast_compiled(feeds)
        if compiled is None:   # the general path: conversions, messages, shape-keyed plans
            arrays = self._validate(feeds)
            compiled = self._compiled_for(arrays)
        else:
            arrays = feeds
        ctx = compiled.acquire()
        try:
            for name, dst in ctx.feeds:
                np.copyto(dst, arrays[name], casting="equiv")
            ctx.runner.run()
            return [np.array(ctx.output(n), copy=True) for n in names]
        finally:
            compiled.release(ctx)

    def _fast_compiled(self, feeds: dict):
        """The plan for feeds that need no conversion — exactly the expected names, numpy
        arrays of the declared dtype and rank — whose shapes already have a plan, or None (then
        the general path validates, converts, explains and compiles). A cached plan's key was
        built from validated shapes, so a hit needs no other check. Saves ~5–20 µs per run: a
        LeNet at batch 1 runs in ~50 µs."""
        if len(feeds) != len(self._signature) or self._value_keyed:
            return None
        fast = self._fast
        if fast is not None:
            if fast[1].retired:
                return None
            for name, dtype, shape in fast[0]:
                a = feeds.get(name)
                if type(a) is not np.ndarray or a.dtype != dtype or a.shape != shape:
                    return None
            return fast[1]
        key = []
        for name, dtype, rank in self._signature:
            a = feeds.get(name)
            if type(a) is not np.ndarray or a.dtype != dtype or a.ndim != rank:
                return None
            key.append((name, a.shape))
        return self._plans.get(tuple(key))

    def plan_for(self, feeds: dict) -> Compiled:
        """The compiled plan ``run`` would use for ``feeds`` (compiled now if needed), for a
        caller that runs a context of it itself (a control-flow binder, once per iteration)."""
        compiled = self._fast_compiled(feeds)
        return compiled if compiled is not None else self._compiled_for(self._validate(feeds))

    def __call__(self, *arrays: Any, **named: Any) -> np.ndarray | list[np.ndarray]:
        if len(arrays) > len(self.inputs):
            raise InputError(f"model takes {len(self.inputs)} inputs, got {len(arrays)}")
        feeds = {info.name: a for info, a in zip(self.inputs, arrays)}
        feeds.update(named)
        out = self.run(None, feeds)
        return out[0] if len(out) == 1 else out

    def profile(self, feeds: Mapping[str, Any] | None = None, runs: int = 10,
                warmup: int = 2) -> Profile:
        """Time every node over ``runs`` runs (after ``warmup``) and return a ``Profile``: one
        row per node, slowest first, with its median time, share and GFLOP/s, and the median
        whole-run time. Every pass starts from the feeds (a plan reuses input bytes). Without
        ``feeds``, seeded random inputs of the load-time shapes (symbolic dims 1) are used."""
        from .profile import profile_steps
        for what, value, least in (("runs", runs, 1), ("warmup", warmup, 0)):
            if not isinstance(value, (int, np.integer)) or value < least:
                raise InputError(f"profile: {what} must be an integer ≥ {least}, got {value!r}")
        if feeds is None:
            rng = np.random.default_rng(0)
            feeds = {}
            for name, t in self._input_types.items():
                shape = tuple(d if isinstance(d, (int, np.integer)) else 1 for d in t.shape)
                feeds[name] = (rng.standard_normal(shape).astype(t.dtype)
                               if t.dtype.kind == "f" else np.ones(shape, t.dtype))
        arrays = self._validate(feeds)
        compiled = self._compiled_for(arrays)
        ctx = compiled.acquire()
        def refeed():
            for name, dst in ctx.feeds:
                np.copyto(dst, arrays[name], casting="equiv")

        try:
            for _ in range(warmup):
                refeed()
                ctx.runner.run()
            return profile_steps(compiled, ctx, runs, refeed)
        finally:
            compiled.release(ctx)

    def plan(self, shapes: dict | None = None) -> MemoryPlan:
        """The memory plan for the given input shapes (default: the load-time shapes)."""
        return self.compile(shapes).plan

    def compile(self, shapes: dict | None = None) -> Compiled:
        """Compile (or fetch) the plan for concrete input shapes; symbolic dims default to 1."""
        types = {}
        for name, t in self._input_types.items():
            shape = tuple(shapes[name]) if shapes and name in shapes else \
                tuple(d if isinstance(d, (int, np.integer)) else 1 for d in t.shape)
            types[name] = TensorType(t.dtype, shape)
        return self._compile(types, None)

    # ---- pickling ------------------------------------------------------------------------------
    def __reduce__(self):
        """Pickles as the model it was given, its bound external state and the options the
        caller chose — never arenas or plans (runtime/pickling.py)."""
        from .pickling import SerializedGraph, rebuild_session
        model = self._source.payload() if self._source is not None else \
            SerializedGraph.of(self.graph)
        return (rebuild_session, (type(self), model, dict(self._given), dict(self.external)))

    def _keep_source(self, source) -> "Session":
        """Remember the model this Session was loaded from (``ember.load``: an
        ``ember.onnx_source.OnnxSource``, or None), to pickle its ``payload()`` instead of
        the graph."""
        self._source = source
        return self

    @classmethod
    def _rebuilt(cls, graph: Graph, external: dict, options: dict,
                 worker_threads: int | None) -> "Session":
        """An unpickled Session: ``options`` as the caller gave them, a thread count not given
        taken from ``worker_threads`` (the pool's cap) or ember's default in this process."""
        sess = cls.__new__(cls)
        threads = options.get("threads", worker_threads)
        sess._setup(graph, threads, options.get("shapes"), options.get("memory_cap"),
                    options.get("optimize", True), external,
                    options.get("max_plans", DEFAULT_MAX_PLANS),
                    options.get("max_concurrent_runs"), compile_now=False)
        if "threads" not in options:
            sess._given.pop("threads", None)     # recomputed again wherever it goes next
        return sess

    # ---- internals ---------------------------------------------------------------------------
    @staticmethod
    def _check_external(graph: Graph, external: dict) -> dict:
        """Bound arrays must be graph inputs of exactly the declared dtype and (static) shape,
        C-contiguous and aligned: kernels read them in place, so nothing may be converted."""
        out = {}
        for name, a in external.items():
            if name not in graph.inputs:
                raise InputError(f"external state {name!r} is not a graph input; the graph's "
                                 f"inputs are {list(graph.inputs)}")
            t = graph.types.get(name)
            if not isinstance(a, np.ndarray):
                raise InputError(f"external state {name!r} must be a numpy array, got "
                                 f"{type(a).__name__}")
            if t is not None and a.dtype != t.dtype:
                raise InputError(f"external state {name!r}: expected dtype {t.dtype.name}, got "
                                 f"{a.dtype.name}")
            if t is not None and (a.ndim != t.rank or any(
                    isinstance(d, (int, np.integer)) and d != s for d, s in zip(t.shape, a.shape))):
                raise InputError(f"external state {name!r}: expected shape {t.shape}, got "
                                 f"{a.shape}")
            if not (a.flags.c_contiguous and a.flags.aligned and a.flags.writeable):
                raise InputError(f"external state {name!r} must be a writeable, C-contiguous, "
                                 f"aligned array (it is read in place, never copied); pass "
                                 f"np.array(a, order='C')")
            out[name] = a
        return out

    @staticmethod
    def _own_weights(graph: Graph) -> Graph:
        """``graph`` with every constant that kernels could not read in place (the importer's
        read-only, possibly misaligned views of the file's bytes) replaced by its own aligned,
        writeable, C-contiguous copy — a shallow copy of ``graph``, or ``graph`` itself when
        nothing needs it. One copy per weight here means binders never copy again, and the
        file's bytes are freed with the imported graph instead of living beside the copies."""
        loose = [k for k, a in graph.initializers.items() if isinstance(a, np.ndarray) and not (
            a.flags.writeable and a.flags.aligned and a.flags.c_contiguous)]
        if not loose:
            return graph
        g = graph.copy()
        for k in loose:
            g.initializers[k] = np.array(g.initializers[k], order="C", copy=True)
        return g

    @staticmethod
    def _fold_once(graph: Graph) -> Graph:
        """``graph`` with inference BatchNorms folded into their Conv/Gemm producers and the
        constants nothing reads any more dropped — a copy, or ``graph`` itself when nothing
        folds. BNs whose parameters only become constant after folding (Constant nodes,
        shape-dependent values) still fold per shape in ``optimize``."""
        if not any(n.op_type == "BatchNormalization" for n in graph.nodes):
            return graph
        # fold only a graph that checks (attributes, arities, parameter shapes) at the load-time
        # shapes, symbolic dims 1; anything else is left to the per-shape compile to explain
        probe = graph.copy()
        for name in probe.inputs:
            t = probe.types.get(name)
            if t is not None:
                probe.types[name] = TensorType(t.dtype, tuple(
                    d if isinstance(d, (int, np.integer)) else 1 for d in t.shape))
        try:
            infer_shapes(probe, fold=False)
            g = passes.fold_batchnorm(graph.copy())
        except Exception:  # noqa: BLE001 — the per-shape compile raises it with its message
            return graph
        if len(g.nodes) == len(graph.nodes):
            return graph
        live = {i for n in g.nodes for i in n.inputs if i} | set(g.outputs)
        for k in [k for k in g.initializers if k not in live]:
            del g.initializers[k]
            g.types.pop(k, None)
        return g

    @staticmethod
    def _override_shape(name, t, shape) -> TensorType:
        shape = tuple(shape)
        if len(shape) != len(t.shape) or any(
                isinstance(d, (int, np.integer)) and d != s for d, s in zip(t.shape, shape)):
            raise InputError(f"shapes[{name!r}] = {shape} does not fit the model's input "
                             f"{name!r} of shape {t.shape}")
        return TensorType(t.dtype, shape)

    def _output_names(self, output_names) -> list:
        if output_names is None:
            return list(self.graph.outputs)
        if isinstance(output_names, str):
            output_names = [output_names]
        bad = [n for n in output_names if n not in self.graph.outputs]
        if bad:
            raise InputError(f"unknown output(s) {bad}; the model's outputs are "
                             f"{list(self.graph.outputs)}")
        return list(output_names)

    def _validate(self, feeds: Mapping[str, Any]) -> dict:
        expected = self._input_types
        missing = [n for n in expected if n not in feeds]
        extra = [n for n in feeds if n not in expected]
        if missing or extra:
            msg = []
            if missing:
                msg.append("missing input(s) " + ", ".join(
                    f"{n!r} ({expected[n]})" for n in missing))
            if extra:
                msg.append(f"unknown input(s) {extra}")
            raise InputError("; ".join(msg) + f"; the model's inputs are {list(expected)}")
        out = {}
        for name, t in expected.items():
            a = feeds[name]
            if not isinstance(a, np.ndarray):
                try:
                    a = np.asarray(a)
                except Exception as e:
                    raise InputError(f"input {name!r}: cannot convert "
                                     f"{type(feeds[name]).__name__} to an array: {e}") from None
                if a.dtype != t.dtype and a.dtype.kind == t.dtype.kind:
                    a = a.astype(t.dtype)  # Python lists/scalars: accept the same kind of number
            if a.dtype.newbyteorder("=") != t.dtype:
                raise InputError(f"input {name!r}: expected dtype {t.dtype.name}, got "
                                 f"{a.dtype.name} (convert with .astype(np.{t.dtype.name}))")
            if a.ndim != len(t.shape) or any(isinstance(d, (int, np.integer)) and d != s
                                             for d, s in zip(t.shape, a.shape)):
                raise InputError(f"input {name!r}: expected shape {self._fmt(t.shape)}, got "
                                 f"{tuple(a.shape)}")
            out[name] = a
        return out

    @staticmethod
    def _fmt(shape):
        return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"

    def _compiled_for(self, arrays: dict) -> Compiled:
        key = self._key({n: arrays[n].shape for n in self._input_types}, arrays)
        compiled = self._plans.get(key)
        if compiled is not None:
            return compiled
        types = {n: TensorType(t.dtype, arrays[n].shape) for n, t in self._input_types.items()}
        try:
            return self._compile(types, arrays)
        except ShapeError as e:
            if any(not t.is_static for t in self._input_types.values()) or self._value_keyed:
                shapes = {n: a.shape for n, a in arrays.items()}
                raise InputError(f"inputs with shapes {shapes} do not fit the model: {e}") from e
            raise

    def _key(self, shapes: dict, arrays: dict | None) -> tuple:
        key = tuple((n, tuple(shapes[n])) for n in self._input_types)
        for n in sorted(self._value_keyed):
            key += ((n, self._value_of(n, shapes, arrays).tobytes()),)
        return key

    def _value_of(self, name, shapes, arrays):
        """Value of an input whose value decides shapes: the fed array when running, else
        ones (``compile()`` called without feeds, e.g. by ``ember info``)."""
        dtype = self._input_types[name].dtype
        if arrays is not None and name in arrays:
            return np.require(arrays[name], dtype, "C")   # (0-d stays 0-d)
        return np.ones(shapes[name], dtype)

    def _compile(self, types: dict, arrays: dict | None, defer_on_value: bool = False):
        with self._compile_lock:
            while True:
                shapes = {n: t.shape for n, t in types.items()}
                key = self._key(shapes, arrays)
                cached = self._plans.get(key, touch=False)
                if cached is not None:
                    return cached
                values = {n: self._value_of(n, shapes, arrays) for n in self._value_keyed}
                try:
                    compiled = self._specialise(types, values)
                except NeedsValue as e:
                    if e.name in self._value_keyed:
                        raise
                    # this input's value decides shapes: plans are keyed on it from now on
                    self._value_keyed.add(e.name)
                    if defer_on_value and arrays is None:
                        return None
                    continue
                # bind every node now: a binder's refusal (geometry past its kernel's index
                # type, a numpy reference too costly) belongs to compiling, not to the first
                # run; the context stays idle for that run
                compiled.release(compiled.acquire())
                self._plans.put(key, compiled)
                self._note_fast(types, compiled)
                return compiled

    def _note_fast(self, types: dict, compiled: Compiled) -> None:
        """run()'s fast path: a static model's plan for its own input shapes, not keyed on
        input values (set by the load-time compile, or by the first run of an unpickled
        Session)."""
        if not self._static or self._value_keyed or self._fast is not None:
            return
        fast = tuple((n, t.dtype, tuple(int(d) for d in t.shape))
                     for n, t in self._input_types.items())
        if all(tuple(types[n].shape) == shape for n, _, shape in fast):
            self._fast = (fast, compiled)

    def _specialise(self, types: dict, values: dict) -> Compiled:
        g = self.graph.copy()
        g.types.update(types)
        g.types.update({n: TensorType(a.dtype, a.shape) for n, a in self.external.items()})
        g.initializers.update(values)
        g.inputs = [n for n in g.inputs if n not in values]
        known = infer_shapes(g)
        g = passes.fold_constants(g, known)
        if self.optimize:
            g = passes.optimize(g)
        infer_shapes(g, fold=False)
        return Compiled(g, g.initializers, self.threads, self._plans, external=self.external,
                        fed=values.values())
