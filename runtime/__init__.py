"""The planner, the compiled executor (Session), training (the compiled step, losses,
optimizers, schedules, checkpoints), data parallelism and profiling. The Trainer itself is
``ember.Trainer`` (ember/trainer.py): its ONNX entry points need ``importers``."""
from .planner import MemoryPlan, make_plan
from .session import IOInfo, Session

__all__ = ["MemoryPlan", "make_plan", "IOInfo", "Session"]
