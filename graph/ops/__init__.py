"""The op registry. Each module holds one op family; importing it registers its ops."""
from .base import (REGISTRY, REQUIRED, TRAINING_DOMAIN, InferContext, NeedsValue, Op, get_op,
                   is_supported, op_named, register)

from . import (activation, control_flow, conv, elementwise, linear, loss,  # noqa: E402,F401
               normalization, pool, recurrent, reduce, resize, sampling, softmax, tensor)

__all__ = ["REGISTRY", "REQUIRED", "TRAINING_DOMAIN", "InferContext", "NeedsValue", "Op", "get_op",
           "is_supported", "op_named", "register", "supported_ops"]


def supported_ops() -> list:
    """Sorted op types ember can run (default ONNX domain)."""
    return sorted(t for (d, t) in REGISTRY if d == "")
