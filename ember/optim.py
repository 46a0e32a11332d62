"""ember.optim: torch.optim's optimizers and learning-rate schedules for ember's Trainer.

    from ember import optim
    opt = optim.Adam(lr=1e-3)                                  # params optional: the Trainer binds
    sched = optim.lr_scheduler.StepLR(step_size=5, gamma=0.5)  # stepped once per epoch

``ember.optim.lr_scheduler`` is importable as a submodule, as in torch
(``from ember.optim.lr_scheduler import StepLR``).
"""
import sys as _sys

from .runtime import lr_scheduler
from .runtime.optim import SGD, Adam, AdamW, Optimizer, RMSprop, from_state_dict

# This module is a plain module, not a package: registering the schedules under the dotted
# name lets ``import ember.optim.lr_scheduler`` and ``from ember.optim.lr_scheduler import ...``
# find them.
_sys.modules[__name__ + ".lr_scheduler"] = lr_scheduler

__all__ = ["Optimizer", "SGD", "RMSprop", "Adam", "AdamW", "lr_scheduler", "from_state_dict"]
