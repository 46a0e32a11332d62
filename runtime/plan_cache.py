"""A Session's compiled plans and their execution contexts, bounded in number and in bytes.

A context (one arena with every node of a plan bound to views into it) is what a run holds
while it runs; afterwards it stays with its plan for the next run. So a Session's memory is the
sum of the arenas of every live context of every cached plan, and that sum — not each plan
alone — is what ``memory_cap`` bounds. ``max_plans`` bounds the plans kept and
``max_contexts`` the contexts in use at once (concurrent runs).

``acquire(plan)``, in order:

1. an idle context of the plan is reused;
2. when ``max_contexts`` contexts are in use, the caller waits until one is released;
3. a new context is built once its bytes fit under the cap. To make room, plans no run holds
   leave the cache, least recently used first, then idle contexts of the other plans are
   dropped. If the bytes still do not fit, the caller waits while other runs are in flight (each
   releases bytes, or a context it may reuse) and gets ``ModelError`` when none is — always
   before allocating.
"""
from __future__ import annotations

import threading

from ..graph.errors import ModelError


class PlanCache:
    """Compiled plans by key (least recently used first) and the accounting of their contexts.

    A plan taking part carries ``context_bytes``, ``new_context()`` (builds one context) and the
    fields this cache keeps on it: ``idle`` (its idle contexts), ``busy`` (contexts in use) and
    ``retired`` (it left the cache: its contexts are freed when released)."""

    def __init__(self, max_plans: int, memory_cap: int, max_contexts: int):
        self.max_plans, self.memory_cap, self.max_contexts = max_plans, memory_cap, max_contexts
        self.plans: dict = {}
        self.held_bytes = 0   # every live context, idle or in use, of any plan
        self.busy = 0         # contexts in use
        self.waiting = 0      # callers of acquire waiting for a context or for bytes
        self._cond = threading.Condition()

    def get(self, key, touch: bool = True):
        """The plan cached under ``key`` (made the most recently used when ``touch``), or None."""
        with self._cond:
            plan = self.plans.get(key)
            if plan is not None and touch:
                self.plans[key] = self.plans.pop(key)
            return plan

    def put(self, key, plan) -> None:
        with self._cond:
            while len(self.plans) >= self.max_plans:
                self._retire(self.plans.pop(next(iter(self.plans))))
            self.plans[key] = plan

    def acquire(self, plan):
        need = plan.context_bytes
        with self._cond:
            while True:
                if plan.idle:
                    self._take(plan)
                    return plan.idle.pop()
                if self.busy < self.max_contexts:
                    self._make_room(need, plan)
                    if self.held_bytes + need <= self.memory_cap:
                        break
                    if self.busy == 0:
                        raise ModelError(
                            f"a context of this plan needs {need:,} bytes; with the "
                            f"{self.held_bytes:,} bytes other contexts hold, that is more than "
                            f"the memory cap of {self.memory_cap:,} bytes")
                self.waiting += 1
                try:
                    self._cond.wait()
                finally:
                    self.waiting -= 1
            self.held_bytes += need
            self._take(plan)
        try:
            return plan.new_context()
        except BaseException:
            with self._cond:
                self.held_bytes -= need
                self._give_back(plan)
            raise

    def release(self, plan, ctx) -> None:
        with self._cond:
            if plan.retired:
                self.held_bytes -= plan.context_bytes
            else:
                plan.idle.append(ctx)
            self._give_back(plan)

    def _take(self, plan) -> None:
        self.busy += 1
        plan.busy += 1

    def _give_back(self, plan) -> None:
        self.busy -= 1
        plan.busy -= 1
        self._cond.notify_all()

    def _retire(self, plan) -> None:
        plan.retired = True
        self.held_bytes -= len(plan.idle) * plan.context_bytes
        plan.idle.clear()
        self._cond.notify_all()

    def _make_room(self, need: int, keep) -> None:
        def fits():
            return self.held_bytes + need <= self.memory_cap
        for key in [k for k, p in self.plans.items() if p is not keep and p.busy == 0]:
            if fits():
                return
            self._retire(self.plans.pop(key))
        for plan in self.plans.values():
            while plan.idle and not fits():
                plan.idle.pop()
                self.held_bytes -= plan.context_bytes
