"""Which arena byte ranges are taken during which plan steps: the planner's placement index.

Placing a buffer that lives over steps [first, last] needs the byte ranges of every placed
buffer whose life overlaps that interval. Scanning all placed buffers for each new one is
quadratic in the graph's length; this index answers the query from O(log n) merged range sets.

Steps are the leaves of a segment tree. A buffer living over [first, last] is stored, as a byte
range, in the *cover* set of each node of the interval's canonical decomposition, and in the
*within* set of those nodes and of all their ancestors (a walk up that stops where the range
is already held, since a within set holds all of its descendants'). The buffers overlapping a query
[first, last] are then exactly those in the within sets of the query's canonical nodes and in
the cover sets of their strict ancestors (two intervals meet iff some canonical node of one is
an ancestor-or-self of a canonical node of the other). Each set keeps its ranges merged, so a
long run of buffers stacked side by side costs one range, not one per buffer.

``work`` counts the index's elementary steps (tree nodes and ranges visited, binary-search
probes), so tests can check the cost per buffer without timing anything.
"""
from __future__ import annotations

from bisect import bisect_left, bisect_right


class RangeSet:
    """Disjoint, sorted half-open byte ranges; touching or overlapping ranges are merged."""

    __slots__ = ("starts", "ends")

    def __init__(self):
        self.starts: list = []
        self.ends: list = []

    def add(self, lo: int, hi: int) -> tuple:
        """Add [lo, hi); returns (steps taken: probes plus ranges merged, whether the set
        grew)."""
        starts, ends = self.starts, self.ends
        if not ends or lo > ends[-1]:        # past every range: the usual case, buffers are
            starts.append(lo)                # stacked upwards
            ends.append(hi)
            return 1, True
        if lo >= starts[-1]:                 # meets the last range only
            grew = hi > ends[-1]
            if grew:
                ends[-1] = hi
            return 1, grew
        i = bisect_left(ends, lo)
        j = bisect_right(starts, hi)
        steps = 2 * len(starts).bit_length() + (j - i)
        if j - i == 1 and starts[i] <= lo and hi <= ends[i]:
            return steps, False
        if i < j:
            lo = min(lo, starts[i])
            hi = max(hi, ends[j - 1])
        starts[i:j] = [lo]
        ends[i:j] = [hi]
        return steps, True


class Occupancy:
    """Byte ranges taken over plan steps 0 … ``steps - 1``."""

    def __init__(self, steps: int):
        self.leaves = 1 << max(0, steps - 1).bit_length()
        self.cover: dict = {}    # tree node -> RangeSet of buffers whose decomposition has it
        self.within: dict = {}   # tree node -> RangeSet of buffers with a piece in its subtree
        self.work = 0

    def _canonical(self, first: int, last: int) -> list:
        """The tree nodes whose step ranges exactly tile [first, last]."""
        lo, hi = first + self.leaves, last + self.leaves + 1
        nodes = []
        while lo < hi:
            if lo & 1:
                nodes.append(lo)
                lo += 1
            if hi & 1:
                hi -= 1
                nodes.append(hi)
            lo >>= 1
            hi >>= 1
        self.work += len(nodes) + 1
        return nodes

    def _strict_ancestors(self, nodes: list) -> list:
        seen: set = set()
        for v in nodes:
            v >>= 1
            while v and v not in seen:
                seen.add(v)
                v >>= 1
        self.work += len(seen) + len(nodes)
        return list(seen)

    def add(self, first: int, last: int, lo: int, hi: int) -> None:
        """Record that bytes [lo, hi) are taken during steps [first, last]."""
        canonical = self._canonical(first, last)
        for v in canonical:
            self.work += self._set(self.cover, v).add(lo, hi)[0]
        # within sets only grow towards the root: once one already holds the range, so do all
        # its ancestors, and the walk up stops there
        seen: set = set()
        for v in canonical:
            while v and v not in seen:
                seen.add(v)
                steps, grew = self._set(self.within, v).add(lo, hi)
                self.work += steps
                if not grew:
                    break
                v >>= 1

    @staticmethod
    def _set(sets: dict, v: int) -> RangeSet:
        s = sets.get(v)
        if s is None:
            s = sets[v] = RangeSet()
        return s

    def taken(self, first: int, last: int) -> list:
        """[(lo, hi)] sorted and merged: the bytes some buffer overlapping [first, last] holds."""
        canonical = self._canonical(first, last)
        sets = [self.within.get(v) for v in canonical]
        sets += [self.cover.get(v) for v in self._strict_ancestors(canonical)]
        ranges = []
        for s in sets:
            if s is not None:
                ranges.extend(zip(s.starts, s.ends))
        ranges.sort()
        self.work += len(sets) + len(ranges)
        merged: list = []
        for lo, hi in ranges:
            if merged and lo <= merged[-1][1]:
                if hi > merged[-1][1]:
                    merged[-1][1] = hi
            else:
                merged.append([lo, hi])
        return merged
