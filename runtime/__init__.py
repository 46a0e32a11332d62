"""The planner, the compiled executor (Session), and (later) training and profiling."""
from .planner import MemoryPlan, make_plan
from .session import IOInfo, Session

__all__ = ["MemoryPlan", "make_plan", "IOInfo", "Session"]
