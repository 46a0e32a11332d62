"""ember's exception types: the bottom of the stack, re-exported by ``ember``.

Every error says what went wrong, where (node name, op, input) and what was expected.
"""


class EmberError(Exception):
    """Base of every error ember raises on purpose."""


class ModelError(EmberError):
    """The model itself is malformed: bad file, bad graph, bad attribute or constant."""


class UnsupportedOpError(ModelError):
    """The model uses ops ember does not implement.

    ``unsupported`` maps ``(op_type, domain, opset)`` to the list of node names using it, so a
    user sees every missing op at once.
    """

    def __init__(self, unsupported):
        self.unsupported = dict(unsupported)
        lines = []
        for (op_type, domain, opset), nodes in sorted(self.unsupported.items()):
            where = ", ".join(repr(n) for n in nodes[:5]) + (" …" if len(nodes) > 5 else "")
            dom = f"{domain}::" if domain else ""
            lines.append(f"  {dom}{op_type} (opset {opset}) used by {len(nodes)} node(s): {where}")
        super().__init__("unsupported ops in model:\n" + "\n".join(lines))


class ShapeError(ModelError):
    """Shapes or dtypes do not fit together at some node (found during shape inference)."""


class InputError(EmberError, ValueError):
    """A feed passed to ``Session.run`` (or a Trainer) has the wrong name, dtype or shape."""


class TrainingError(EmberError):
    """Training cannot go on: a NaN or infinite loss (naming the global step; the parameters are
    left as they were before that step), or a Trainer used in a way it cannot support."""


class CheckpointError(EmberError):
    """A checkpoint file cannot be restored: missing, truncated, tampered with (checksum), wrong
    magic or version, or its contents do not describe a model. Names the file and the fault."""


class DistributedError(EmberError):
    """Distributed training or inference cannot start or go on: mpi4py or MPI missing, ranks
    that disagree on the model or settings. Names the rank and what differs."""


class UnsupportedIsaError(EmberError):
    """``EMBER_ISA`` names an instruction set this CPU, its OS or this build cannot run (raised
    by ``import ember``, before any kernel runs)."""
