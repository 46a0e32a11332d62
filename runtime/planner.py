"""The memory planner: live ranges and one aligned arena shared by values whose lives do not
overlap.

Every non-constant value (graph inputs, which ``run`` copies in, and every node output) and every
node's kernel scratch gets a *buffer*. Buffers are grouped first:

* a view op's output (Reshape, Flatten, …) joins its input's group — same bytes, no copy;
* an in-place op's output joins the group of an input that dies at that node (same type).

*External* inputs (``external=``: parameters and buffers the caller owns and binds by reference)
get no buffer at all: they live outside the arena, so no view shares their bytes and no in-place
op overwrites them.

Each group lives from its first definition to its last use (graph outputs live to the end). Groups
are then placed greedily, largest first, each into the best-fitting gap among the already placed
groups whose lives overlap it (TFLite's "greedy by size"), found through an ``Occupancy`` index
rather than a scan of every placed group, so planning costs O(n log n) on long chains and wide
fan-outs alike. ``lower_bound_bytes`` is the largest total of group sizes live at any one step:
no placement can use less. ``work`` counts the planner's elementary steps (values, nodes and
members visited, the index's probes and ranges), for tests that check that cost per node.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .occupancy import Occupancy

ALIGN = 64


def align(n: int) -> int:
    return (int(n) + ALIGN - 1) // ALIGN * ALIGN


@dataclass
class Group:
    members: list
    size: int
    first: int
    last: int
    offset: int = -1


@dataclass
class MemoryPlan:
    order: list                      # nodes in execution order
    offsets: dict                    # value name -> byte offset in the arena
    scratch: dict                    # node index -> (offset, nbytes)
    lifetimes: dict                  # value name -> (first step, last step)
    sizes: dict                      # value name -> bytes (unaligned)
    arena_bytes: int
    naive_bytes: int
    lower_bound_bytes: int
    groups: list = field(default_factory=list)
    work: int = 0

    def describe(self, max_rows: int | None = None) -> str:
        """A readable allocation table: value, offset, size, lifetime."""
        rows = sorted(self.offsets.items(), key=lambda kv: (self.lifetimes[kv[0]][0], kv[1]))
        lines = [f"arena {self.arena_bytes:,} B   naive {self.naive_bytes:,} B   "
                 f"lower bound {self.lower_bound_bytes:,} B",
                 f"{'value':40s} {'offset':>12s} {'bytes':>12s}  life"]
        for name, off in rows[:max_rows]:
            a, b = self.lifetimes[name]
            lines.append(f"{name[:40]:40s} {off:12,d} {self.sizes[name]:12,d}  [{a}, {b}]")
        if max_rows is not None and len(rows) > max_rows:
            lines.append(f"… {len(rows) - max_rows} more")
        for idx, (off, nb) in sorted(self.scratch.items()):
            lines.append(f"{'scratch of ' + self.order[idx].name:40.40s} {off:12,d} {nb:12,d}  "
                         f"[{idx}, {idx}]")
        return "\n".join(lines)


class _UnionFind:
    def __init__(self):
        self.parent = {}

    def find(self, x):
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a, b):
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra
        return ra


def make_plan(graph, scratch_bytes: dict | None = None, is_view=None, inplace_inputs=None,
              allow_inplace: bool = True, external=()) -> MemoryPlan:
    """Plan the arena for a typed, topologically sorted graph.

    ``scratch_bytes``: node index -> bytes of kernel scratch it needs during its step.
    ``is_view(node) -> bool`` and ``inplace_inputs(node) -> tuple`` describe the ops (the
    runtime passes the op registry's ``view`` / ``inplace`` flags, refined by its kernels).
    ``external``: names of graph inputs bound to caller-owned arrays, kept out of the arena."""
    scratch_bytes = scratch_bytes or {}
    is_view = is_view or (lambda n: False)
    inplace_inputs = inplace_inputs or (lambda n: ())
    nodes = graph.nodes
    end = len(nodes)
    consts = graph.initializers
    external = frozenset(external)

    # 1. live ranges of every arena value
    first, last, sizes = {}, {}, {}
    for name in graph.inputs:
        if name not in consts and name not in external:
            first[name] = last[name] = 0
    for i, n in enumerate(nodes):
        for name in n.inputs:
            if name in first:
                last[name] = max(last[name], i)
        for name in n.outputs:
            if name and name not in consts and graph.types[name].is_static:
                first[name], last[name] = i, i   # (a run-time-shaped value has no arena bytes)
    for name in graph.outputs:
        if name in first:
            last[name] = end
    for name in first:
        sizes[name] = graph.types[name].nbytes

    # 2. grouping: views share their input's storage; in-place outputs reuse a dying input's
    uf = _UnionFind()
    for name in first:
        uf.find(name)
    for n in nodes:
        if is_view(n) and n.inputs[0] in first and n.outputs[0] in first:
            uf.union(n.inputs[0], n.outputs[0])

    members_of = {}
    for name in first:
        members_of.setdefault(uf.find(name), []).append(name)
    glast = {r: max(last[m] for m in ms) for r, ms in members_of.items()}
    work = 2 * len(first) + len(nodes)

    if allow_inplace:
        for i, n in enumerate(nodes):
            if is_view(n) or not n.outputs or n.outputs[0] not in first:
                continue
            out = n.outputs[0]
            for k in inplace_inputs(n):
                src = n.input(k)
                if src not in first or graph.types[src] != graph.types[out]:
                    continue
                rs, ro = uf.find(src), uf.find(out)
                if rs == ro or glast[rs] != i:
                    continue
                # the input's storage dies here: the output takes it over (the smaller member
                # list moves into the larger, so a long in-place chain merges in O(n log n))
                big, small = (rs, ro) if len(members_of[rs]) >= len(members_of[ro]) else (ro, rs)
                uf.union(big, small)
                merged = members_of.pop(big)
                moved = members_of.pop(small)
                merged.extend(moved)
                members_of[big] = merged     # re-inserted last: the order groups are sized in
                glast[big] = max(glast[big], glast.pop(small))
                work += len(moved)
                break

    groups = []
    for root, ms in members_of.items():
        groups.append(Group(ms, align(max(sizes[m] for m in ms)) or ALIGN,
                            min(first[m] for m in ms), max(last[m] for m in ms)))
    for idx, nb in scratch_bytes.items():
        if nb > 0:
            groups.append(Group([("scratch", idx)], align(nb), idx, idx))

    # 3. placement: largest first, best-fitting gap among the bytes taken during its life
    occupied = Occupancy(end + 1)
    for g in sorted(groups, key=lambda g: (-g.size, g.first)):
        best, best_gap, cursor = None, None, 0
        for lo, hi in occupied.taken(g.first, g.last):
            gap = lo - cursor
            if gap >= g.size and (best_gap is None or gap < best_gap):
                best, best_gap = cursor, gap
            cursor = hi
        g.offset = best if best is not None else cursor
        occupied.add(g.first, g.last, g.offset, g.offset + g.size)
    work += occupied.work + len(groups).bit_length() * len(groups)

    arena = max((g.offset + g.size for g in groups), default=0)
    change = [0] * (end + 2)          # live bytes per step, as differences between steps
    for g in groups:
        change[g.first] += g.size
        change[g.last + 1] -= g.size
    live, lower_bound = 0, 0
    for delta in change:
        live += delta
        lower_bound = max(lower_bound, live)
    offsets, scratch = {}, {}
    for g in groups:
        for m in g.members:
            if isinstance(m, tuple):
                scratch[m[1]] = (g.offset, scratch_bytes[m[1]])
            else:
                offsets[m] = g.offset
    naive = sum(align(s) for s in sizes.values()) + sum(align(b) for b in scratch_bytes.values())
    return MemoryPlan(order=list(nodes), offsets=offsets, scratch=scratch,
                      lifetimes={m: (first[m], last[m]) for m in first}, sizes=sizes,
                      arena_bytes=arena, naive_bytes=naive, lower_bound_bytes=lower_bound,
                      groups=groups, work=work + 2 * len(groups) + end)
