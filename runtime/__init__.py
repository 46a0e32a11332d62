"""The planner, the compiled executor (Session), and (later) training and profiling."""
from .planner import Plan, make_plan
from .session import IOInfo, Session

__all__ = ["Plan", "make_plan", "IOInfo", "Session"]
