"""Data-parallel training and batch inference over MPI (runtime/DISTRIBUTED.md).

    # mpirun -n 2 python train.py
    trainer = ember.Trainer(model, input_shape=(1, 28, 28), batch_size=32, distributed="mpi")
    trainer.fit(X, y, epochs=5)          # every rank passes the same X, y; each trains its share

Needs the optional extra ``pip install 'ember[mpi]'`` (mpi4py) and an MPI library.
"""
from __future__ import annotations

from .runtime.distributed import (DEFAULT_BUCKET_BYTES, DEFAULT_TIMEOUT, GradientSync,
                                   MPIContext, mpi_module, shard)

__all__ = ["MPIContext", "shard", "mpi_module", "GradientSync", "DEFAULT_BUCKET_BYTES",
           "DEFAULT_TIMEOUT"]
