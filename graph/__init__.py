"""ember's IR, op registry, shape inference, graph passes and autodiff. Imports numpy only."""
from .errors import EmberError, InputError, ModelError, ShapeError, UnsupportedOpError
from .builder import Builder
from .ir import Graph, Node, TensorType

__all__ = ["EmberError", "InputError", "ModelError", "ShapeError", "UnsupportedOpError",
           "Graph", "Node", "TensorType", "Builder"]
