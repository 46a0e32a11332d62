"""If, Loop and Scan bound to their subgraphs' own compiled plans.

Each subgraph (an If branch, a Loop or Scan body) becomes a ``Session`` of its own when the node
is bound: captured values that are constants of the enclosing plan are baked into it as
initializers (so its constant folding and weight packing see them), the rest are fed. That
Session plans the subgraph once per input-shape signature it meets (and per value, when a value
decides a shape there, as at top level) and keeps the plans in its cache: the binder's state.
A run of the node is then Python only at the granularity of the control flow — choose a branch,
or step an iteration — with every node of the subgraph run by its plan.

A value whose shape only running decides (see ``graph/ops/control_flow.py``) is bound to a
``RuntimeShaped`` holder instead of an arena view: the step stores the array it allocates there,
after checking it fits the bytes the memory cap leaves beside the arena.
"""
from __future__ import annotations

import numpy as np

from ...graph.errors import InputError, ShapeError
from ...graph.ir import TensorType
from ...graph.ops import control_flow as ops
from .registry import binds


class RuntimeShaped:
    """The place of a value whose shape is decided when its step runs: the step stores the
    array (``set``), the Session reads it (``array``)."""

    def __init__(self, name: str, dtype):
        self.name, self.dtype = name, np.dtype(dtype)
        self.array = None

    def set(self, node, array, memory_left) -> None:
        if memory_left is not None and array.nbytes > memory_left:
            raise InputError(f"{node}: output {self.name!r} would take {array.nbytes:,} bytes "
                             f"({array.dtype}{list(array.shape)}), more than the "
                             f"{max(memory_left, 0):,} bytes the memory cap leaves beside the "
                             f"arena (set memory_cap= on ember.load to allow more)")
        self.array = array


class _Subgraph:
    """One subgraph as a Session, fed by name. ``run(formal inputs)`` returns its outputs as
    views into the arena of a context this object holds between runs (so an iteration costs a
    feed copy and the plan's steps, no lock and no allocation): valid until the next ``run``;
    ``release`` hands the context back at the end of the node's step."""

    def __init__(self, node, attr: str, formal_types: list, captures: list, ctx):
        g = ops.subgraph_of(node, attr).copy()
        own = len(g.inputs) - len(captures)
        self.formal = g.inputs[:own]
        for name, t in zip(self.formal, formal_types):
            g.types[name] = t
        self.feeds = {}
        for name, a in zip(g.inputs[own:], captures):
            if ctx.is_runtime(a):
                g.types[name] = TensorType(a.dtype, a.shape)
                self.feeds[name] = a
            else:
                g.initializers[name] = a
        g.inputs = [n for n in g.inputs if n not in g.initializers]
        cap = ctx.memory_left
        self.session = ctx.subgraph_session(g, threads=ctx.threads,
                               memory_cap=max(int(cap), 1) if cap is not None else None)
        self.outputs = list(g.outputs)
        self._held = None   # (compiled plan, its context)

    def run(self, formal: list) -> list:
        feeds = self.feeds
        for name, a in zip(self.formal, formal):
            feeds[name] = a
        compiled = self.session.plan_for(feeds)
        if self._held is None or self._held[0] is not compiled:
            self.release()
            self._held = (compiled, compiled.acquire())
        ctx = self._held[1]
        for name, dst in ctx.feeds:
            np.copyto(dst, feeds[name], casting="equiv")
        ctx.runner.run()
        return [ctx.output(n) for n in self.outputs]

    def release(self) -> None:
        if self._held is not None:
            compiled, ctx = self._held
            self._held = None
            compiled.release(ctx)


def _store(node, out, result, memory_left) -> None:
    if out is None:
        return
    if isinstance(out, RuntimeShaped):
        out.set(node, np.array(result), memory_left)
    elif out.shape != result.shape:
        raise ShapeError(f"{node}: a subgraph produced {result.dtype}{list(result.shape)} "
                         f"where the plan holds {out.dtype}{list(out.shape)}")
    else:
        np.copyto(out, result, casting="no")


def _captures(node, ins) -> list:
    return ins[len(ins) - int(node.attrs.get("captured", 0)):]


@binds(ops.If, kernel="subgraph")
def bind_if(node, ins, outs, scratch_buf, ctx):
    captures = _captures(node, ins)
    cond, left = ins[0].reshape(-1), ctx.memory_left
    if ctx.is_runtime(ins[0]):
        branches = (_Subgraph(node, "then_branch", [], captures, ctx),
                    _Subgraph(node, "else_branch", [], captures, ctx))
    else:   # a constant condition: only the branch taken is compiled (the other may not fit)
        taken = _Subgraph(node, "then_branch" if cond[0] else "else_branch", [], captures, ctx)
        branches = (taken, taken)

    def step():
        branch = branches[0 if cond[0] else 1]
        try:
            for out, r in zip(outs, branch.run([])):
                _store(node, out, r, left)
        finally:
            branch.release()
    return step


class _Growing:
    """A scan output whose length the loop decides: a buffer doubled as it fills, each size
    checked against the bytes the memory cap leaves."""

    def __init__(self, node, holder: RuntimeShaped, slice_type: TensorType, memory_left):
        self.node, self.holder, self.left = node, holder, memory_left
        self.slice_shape, self.dtype = tuple(slice_type.shape), slice_type.dtype
        self.buf, self.n = None, 0

    def check_rows(self, rows: int) -> None:
        """InputError naming the node when ``rows`` rows cannot fit the memory cap."""
        need = rows * int(np.prod(self.slice_shape, dtype=np.int64)) * self.dtype.itemsize
        if self.left is not None and need > self.left:
            raise InputError(f"{self.node}: scan output {self.holder.name!r} would take "
                             f"{need:,} bytes for {rows:,} iterations, more than the "
                             f"{max(self.left, 0):,} bytes the memory cap leaves beside the "
                             f"arena (set memory_cap= on ember.load to allow more)")

    def append(self, row) -> None:
        if self.buf is None or self.n == len(self.buf):
            self.check_rows(self.n + 1)
            rows = max(2 * self.n, 4)
            row_bytes = int(np.prod(self.slice_shape, dtype=np.int64)) * self.dtype.itemsize
            if self.left is not None and rows * row_bytes > self.left:
                rows = self.n + 1   # doubling would pass the cap: grow by one row instead
            grown = np.empty((rows, *self.slice_shape), self.dtype)
            if self.n:
                grown[:self.n] = self.buf[:self.n]
            self.buf = grown
        self.buf[self.n] = row
        self.n += 1

    def finish(self) -> None:
        self.holder.set(self.node, np.array(self.buf[:self.n]) if self.buf is not None
                        else np.zeros((0, *self.slice_shape), self.dtype), self.left)
        self.buf, self.n = None, 0


@binds(ops.Loop, kernel="subgraph")
def bind_loop(node, ins, outs, scratch_buf, ctx):
    n, k = ops.loop_layout(node)
    m_in, cond_in = ins[0], ins[1]
    carried_in = ins[2:2 + n]
    formal_types = [TensorType(np.int64, ()), TensorType(np.bool_, ()),
                    *(TensorType(a.dtype, a.shape) for a in carried_in)]
    body = _Subgraph(node, "body", formal_types, _captures(node, ins), ctx)
    outs = list(outs) + [None] * (n + k - len(outs))
    left = ctx.memory_left
    body_types = ctx.types
    slices = []
    for j in range(k):
        out = outs[n + j]
        t = body_types[node.outputs[n + j]] if out is not None else None
        slices.append(TensorType(t.dtype, t.shape[1:]) if t is not None else None)
    growing = [_Growing(node, out, s, left) if isinstance(out, RuntimeShaped) else None
               for out, s in zip(outs[n:], slices)]
    # no body condition can end it early: a trip count past the limit is refused up front
    fixed = ops.passes_condition_through(ops.subgraph_of(node, "body"), {})
    iteration, go_flag = np.zeros((), np.int64), np.ones((), np.bool_)
    carried_types = formal_types[2:]

    def step():
        trips = int(m_in.reshape(-1)[0]) if m_in is not None else None
        go = bool(cond_in.reshape(-1)[0]) if cond_in is not None else True
        if trips is not None and go and fixed:
            ops.check_iterations(node, trips)
            for grow in growing:
                if grow is not None:
                    grow.check_rows(trips)
        carried = [np.array(a) for a in carried_in]   # the body's outputs are copied here
        i = 0
        try:
            while go and (trips is None or i < trips):
                ops.check_iterations(node, i + 1)
                iteration[()] = i
                go_flag[()] = go
                results = body.run([iteration, go_flag, *carried])
                go = bool(results[0].reshape(-1)[0])
                for c, (buf, r) in enumerate(zip(carried, results[1:1 + n])):
                    if r.shape != buf.shape:
                        raise InputError(f"{node}: loop-carried value {c} changed shape from "
                                         f"{buf.shape} to {r.shape} at iteration {i}")
                    np.copyto(buf, r)
                for j in range(k):
                    out, row = outs[n + j], results[1 + n + j]
                    if out is None:
                        continue
                    if slices[j] is not None and row.shape != tuple(slices[j].shape):
                        raise InputError(f"{node}: scan output {j} has shape {row.shape} at "
                                         f"iteration {i}, {tuple(slices[j].shape)} before")
                    if growing[j] is not None:
                        growing[j].append(row)
                    else:
                        out[i] = row
                i += 1
        finally:
            body.release()
        for out, r in zip(outs[:n], carried):
            _store(node, out, r, left)
        for j in range(k):
            if growing[j] is not None:
                growing[j].finish()
            elif outs[n + j] is not None and i != len(outs[n + j]):
                raise InputError(f"{node}: the loop ran {i} iterations, its plan holds "
                                 f"{len(outs[n + j])} rows of scan output {j}")
    return step


@binds(ops.Scan, kernel="subgraph")
def bind_scan(node, ins, outs, scratch_buf, ctx):
    own = len(ins) - int(node.attrs.get("captured", 0))
    n, m, k = ops.scan_layout(node, own)
    states_in, xs = ins[:n], ins[n:n + m]
    xs_types = [TensorType(x.dtype, x.shape) for x in xs]
    in_axes, in_dirs, _, _ = ops.scan_axes(node, xs_types, k)
    length = xs[0].shape[in_axes[0]] if m else 0
    slice_types = [TensorType(x.dtype, x.shape[:a] + x.shape[a + 1:]) for x, a in zip(xs, in_axes)]
    state_types = [TensorType(a.dtype, a.shape) for a in states_in]
    body = _Subgraph(node, "body", state_types + slice_types, _captures(node, ins), ctx)
    outs = list(outs) + [None] * (n + k - len(outs))
    ranks = [ctx.types[o].rank if o else 1 for o in node.outputs[n:n + k]]
    ranks += [1] * (k - len(ranks))
    _, _, out_axes, out_dirs = ops.scan_axes(node, xs_types, k, ranks)

    def at(a, axis, idx):
        return a[(slice(None),) * axis + (idx, Ellipsis)]   # a view, 0-d included

    def step():
        states = [np.array(a) for a in states_in]   # the body's outputs are copied here
        try:
            for t in range(length):
                slices = [at(x, a, length - 1 - t if d else t)
                          for x, a, d in zip(xs, in_axes, in_dirs)]
                results = body.run([*states, *slices])
                for buf, r in zip(states, results[:n]):
                    np.copyto(buf, r)
                for j in range(k):
                    out = outs[n + j]
                    if out is not None:
                        pos = length - 1 - t if out_dirs[j] else t
                        at(out, out_axes[j], pos)[...] = results[n + j]
        finally:
            body.release()
        for out, r in zip(outs[:n], states):
            _store(node, out, r, None)
    return step
