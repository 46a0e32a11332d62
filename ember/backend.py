"""ember as an ONNX backend (``onnx.backend.base.Backend``), so ONNX's own test harness and
tools written against that interface can drive ember.

    import ember.backend
    rep = ember.backend.prepare(model)
    outputs = rep.run([x])
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx.backend.base import Backend, BackendRep

from .graph.errors import InputError
from .graph.ops import supported_ops as registered_ops
from .importers.onnx import UPGRADE_TARGETS, load_onnx
from .runtime.session import Session


_SESSION_OPTIONS = ("threads", "shapes", "memory_cap", "optimize")


def supported_ops() -> list:
    """Sorted default-domain op types a model given to this backend may use: every op ember
    registers in the default domain, plus the older ops the importer rewrites into them (e.g.
    Upsample into Resize)."""
    ops = set(registered_ops())
    ops.update(old for old, targets in UPGRADE_TARGETS.items() if set(targets) <= ops)
    return sorted(ops)


class EmberBackendRep(BackendRep):
    """A prepared model: an ``ember.Session`` taking inputs in graph-input order."""

    def __init__(self, session: Session):
        self.session = session
        self.input_names = [i.name for i in session.get_inputs()]

    def run(self, inputs, **kwargs):
        if isinstance(inputs, dict):
            feeds = dict(inputs)
        else:
            if isinstance(inputs, np.ndarray):
                inputs = [inputs]
            inputs = list(inputs)
            if len(inputs) != len(self.input_names):
                raise InputError(f"the model takes {len(self.input_names)} inputs "
                                 f"{self.input_names}, got {len(inputs)}")
            feeds = dict(zip(self.input_names, inputs))
        return list(self.session.run(None, feeds))


class EmberBackend(Backend):
    @classmethod
    def is_compatible(cls, model, device: str = "CPU", **kwargs) -> bool:
        return cls.supports_device(device)

    @classmethod
    def prepare(cls, model, device: str = "CPU", **kwargs) -> EmberBackendRep:
        if not cls.supports_device(device):
            raise ValueError(f"ember runs on the CPU only, not on {device!r}")
        # onnx's test runner passes its own options (rtol, atol, …) through: keep ours only
        options = {k: v for k, v in kwargs.items() if k in _SESSION_OPTIONS}
        return EmberBackendRep(Session(load_onnx(model), **options))

    @classmethod
    def run_model(cls, model, inputs, device: str = "CPU", **kwargs):
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def run_node(cls, node, inputs, device: str = "CPU", outputs_info=None, **kwargs):
        """Run one NodeProto: wrap it in a one-node model with the inputs' types."""
        opset = kwargs.pop("opset_version", onnx.defs.onnx_opset_version())
        arrays = [np.asarray(a) for a in inputs]
        names = [n for n in node.input]
        graph_inputs = [onnx.helper.make_tensor_value_info(
            n, onnx.helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
            for n, a in zip(names, arrays) if n]
        outputs = [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.UNDEFINED, None)
                   for n in node.output if n]
        g = onnx.helper.make_graph([node], "run_node", graph_inputs, outputs)
        model = onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", opset)])
        feeds = {n: a for n, a in zip(names, arrays) if n}
        return cls.prepare(model, device, **kwargs).run(feeds)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return str(device).upper().startswith("CPU")


prepare = EmberBackend.prepare
run_model = EmberBackend.run_model
run_node = EmberBackend.run_node
supports_device = EmberBackend.supports_device
