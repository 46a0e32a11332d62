"""ember.export_onnx: any inference Graph, ``ember.nn`` Module or Trainer written as ONNX."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .graph.errors import ModelError
from .graph.ir import Graph
from .trainer import BATCH, Trainer

if TYPE_CHECKING:
    import os
    from collections.abc import Sequence

    from .nn import Module


def export_onnx(graph_or_module: Graph | Module | Trainer, path: str | os.PathLike,
                input_shape: Sequence[int] | None = None, opset: int | None = None) -> None:
    """Write any inference Graph, an ``ember.nn`` Module (traced in eval mode with
    ``input_shape``, one sample's shape, batch dim symbolic) or a Trainer as ONNX."""
    from .importers.onnx_export import save_onnx
    if isinstance(graph_or_module, Trainer):
        graph = graph_or_module.graph()
    elif isinstance(graph_or_module, Graph):
        graph = graph_or_module
    elif callable(getattr(graph_or_module, "to_graph", None)):
        if input_shape is None:
            raise ModelError("export_onnx of an nn.Module needs input_shape= (one sample's "
                             "shape, without the batch dim)")
        module = graph_or_module
        was_training = bool(getattr(module, "training", False))
        module.eval()
        try:
            graph = module.to_graph(input_shape=(BATCH,) + tuple(input_shape))
        finally:
            module.train(was_training)
    else:
        raise ModelError(f"export_onnx takes a Graph, an nn.Module or a Trainer, got "
                         f"{type(graph_or_module).__name__}")
    save_onnx(graph, path, opset=opset)
