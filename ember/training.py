"""ember.Trainer: the runtime's Trainer plus the ONNX way in and out.

    trainer.export_onnx("model.onnx")           # eval mode: BatchNorm with running statistics
    t = ember.Trainer.from_onnx("model.onnx", loss="cross_entropy", optimizer=optim.SGD(lr=0.01),
                                trainable=["fc.*"])   # fine-tune the head, freeze the rest
"""
from __future__ import annotations

import fnmatch

import numpy as np

from .graph.errors import ModelError
from .graph.ir import TensorType
from .runtime import trainer as _trainer

# Which inputs of which ops are parameters when an ONNX file does not say (ONNX has no notion of
# a trainable tensor): float initializers feeding these slots.
PARAMETER_SLOTS = {
    "Conv": (1, 2), "ConvTranspose": (1, 2), "Gemm": (1, 2), "MatMul": (0, 1),
    "BatchNormalization": (1, 2), "InstanceNormalization": (1, 2),
    "Add": (0, 1), "Sub": (0, 1), "Mul": (0, 1), "Div": (1,), "PRelu": (1,),
}
BUFFER_SLOTS = {"BatchNormalization": (3, 4)}


class Trainer(_trainer.Trainer):
    __doc__ = _trainer.Trainer.__doc__

    def export_onnx(self, path, opset: int | None = None) -> None:
        """Write the eval-mode inference model (current parameters, BatchNorm with running
        statistics) as ONNX; onnxruntime's outputs match ``predict``."""
        from .importers.onnx_export import save_onnx
        save_onnx(self.graph(), path, opset=opset)

    @classmethod
    def from_onnx(cls, path, loss, optimizer=None, trainable=None, freeze=None,
                  input_shape=None, **kw) -> "Trainer":
        """Fine-tune an ONNX model. Parameters are the float initializers feeding Conv /
        ConvTranspose / Gemm / MatMul weights and biases, BatchNormalization scale and bias and
        the constant operand of Add/Sub/Mul (rank ≥ 1); BatchNormalization mean/var are buffers.
        ``trainable`` (glob patterns over initializer names, default all parameters) selects what
        trains, then ``freeze`` patterns remove names from it. The batch dim becomes symbolic."""
        from .importers.onnx import load_onnx
        g = load_onnx(path)
        params, buffers = [], []
        for node in g.nodes:
            for slots, out in ((PARAMETER_SLOTS.get(node.op_type, ()), params),
                               (BUFFER_SLOTS.get(node.op_type, ()), buffers)):
                for i in slots:
                    name = node.input(i)
                    a = g.initializers.get(name)
                    if a is None or np.asarray(a).dtype.kind != "f" or np.ndim(a) < 1:
                        continue
                    if name not in params and name not in buffers:
                        out.append(name)
        if not params:
            raise ModelError(f"{path!r}: found no parameters (float initializers feeding "
                             f"Conv/Gemm/MatMul/BatchNormalization/Add…) to train")
        selected = _match(trainable, params, "trainable") if trainable is not None \
            else list(params)
        if freeze is not None:
            frozen = set(_match(freeze, params, "freeze"))
            selected = [p for p in selected if p not in frozen]
        if not selected:
            raise ModelError("every parameter is frozen: nothing to train")
        g.metadata["parameters"], g.metadata["buffers"] = params, buffers
        data = [n for n in g.inputs if n not in g.initializers]
        if len(data) == 1:
            t = g.types[data[0]]
            if input_shape is None:
                input_shape = tuple(t.shape[1:])
                if not all(isinstance(d, (int, np.integer)) for d in input_shape):
                    raise ModelError(f"input {data[0]!r} has shape {t.shape}: pass "
                                     f"input_shape= (one sample's shape)")
            g.types[data[0]] = TensorType(t.dtype, ("N",) + tuple(input_shape))
        return cls(g, input_shape=input_shape, loss=loss, optimizer=optimizer,
                   trainable=selected, **kw)


def _match(patterns, names, what) -> list:
    if isinstance(patterns, str):
        patterns = [patterns]
    chosen = set()
    for p in patterns:
        hits = [n for n in names if n == p or fnmatch.fnmatchcase(n, p)]
        if not hits:
            raise ModelError(f"{what} pattern {p!r} matches no parameter (parameters: "
                             f"{names[:8]}{' …' if len(names) > 8 else ''})")
        chosen.update(hits)
    return [n for n in names if n in chosen]


def export_onnx(graph_or_module, path, input_shape=None, opset: int | None = None) -> None:
    """Write any inference Graph, an ``ember.nn`` Module (traced in eval mode with
    ``input_shape``, one sample's shape, batch dim symbolic) or a Trainer as ONNX."""
    from .graph.ir import Graph
    from .importers.onnx_export import save_onnx
    if isinstance(graph_or_module, _trainer.Trainer):
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
            graph = module.to_graph(input_shape=("N",) + tuple(input_shape))
        finally:
            module.train(was_training)
    else:
        raise ModelError(f"export_onnx takes a Graph, an nn.Module or a Trainer, got "
                         f"{type(graph_or_module).__name__}")
    save_onnx(graph, path, opset=opset)
