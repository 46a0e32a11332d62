"""ember IR → ONNX: the importer's mirror.

The IR holds one form per op, the newest opset's (see ``importers.onnx``), plus ember-only
attributes that passes add (a fused ``activation`` on Conv/Gemm/MatMul). Export writes each node
in the chosen opset's form:

* attributes are filtered through the op's ONNX schema at that opset, converted to the schema's
  attribute type, and omitted when equal to ONNX's default; an ember attribute the schema does
  not know is dropped when it holds ember's "not set" default and is an error otherwise (it
  would change the meaning), so ember-only attributes never leak into the file;
* a fused activation becomes its own standard node after the producer (SiLU as Sigmoid + Mul);
* older opsets get older forms where ember's meaning survives (Reduce* ``axes`` as an attribute
  before 18, an explicit ``split`` for uneven Split before 18, Pad ``axes`` spelled out as full
  pads); where it does not (Resize ``half_pixel_symmetric`` before 19, Pad ``wrap`` before 19)
  the error names the node and the opset it needs.

Training-only content has no ONNX form and is refused up front, listing every offending node:
gradient ops, ember's loss ops (ONNX's own ``SoftmaxCrossEntropyLoss`` excepted), BatchNorm in
``training_mode`` and Dropout with a training-mode input that is not a constant false.

``onnx`` is imported lazily, when a model is exported; loading never imports it.
"""
from __future__ import annotations

import math
import os
import secrets

import numpy as np

from ..graph.errors import ModelError, UnsupportedOpError
from ..graph.ir import Graph, Node, TensorType

DEFAULT_OPSET = 21      # the newest opset whose semantics every ember op follows
MIN_OPSET = 13          # Softmax's one-axis form, Squeeze/Unsqueeze/ReduceSum axes as inputs
# A protobuf message cannot exceed 2 GiB; keep room for the graph itself. Weights beyond this
# need ONNX external data, which this exporter does not write.
MAX_MODEL_BYTES = (1 << 31) - (64 << 20)

_DEFAULT_DOMAINS = ("", "ai.onnx")
_FUSED_ATTRS = ("activation", "activation_alpha", "activation_beta")
_REDUCE_AXES_ATTR_BEFORE_18 = ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd",
                               "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp",
                               "ReduceSumSquare")


def _onnx():
    try:
        import onnx
    except ImportError:  # pragma: no cover - depends on the environment
        raise ModelError("this needs the 'onnx' package: pip install onnx") from None
    return onnx


# ---- the public API -------------------------------------------------------------------------
def to_onnx(graph: Graph, opset: int | None = None, producer: str = "ember"):
    """An ``onnx.ModelProto`` computing what ``graph`` (an inference IR graph) computes.

    ``opset``: the default-domain opset to write (default ``DEFAULT_OPSET``); every node is
    written in that opset's form, or a ModelError names the node that needs a newer one."""
    onnx = _onnx()
    if not isinstance(graph, Graph):
        raise ModelError(f"to_onnx takes an ember Graph, got {type(graph).__name__}")
    if not graph.outputs:
        raise ModelError(f"graph {graph.name!r} has no outputs; nothing to export")
    _refuse_training_nodes(graph)
    opset = _check_opset(DEFAULT_OPSET if opset is None else opset)
    types = _value_types(graph)
    _check_size(graph)

    em = _Emitter(graph, opset, types)
    for node in graph.nodes:
        em.emit(node)
    gp = em.graph_proto()
    model = onnx.helper.make_model(
        gp, opset_imports=[onnx.helper.make_opsetid("", opset)],
        ir_version=onnx.helper.find_min_ir_version_for([onnx.helper.make_opsetid("", opset)]),
        producer_name=producer, producer_version=_ember_version())
    for key, value in graph.metadata.items():
        if isinstance(key, str) and isinstance(value, str) and key != "producer":
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception:
        _defer_to_onnx_inference(model)
        try:
            onnx.checker.check_model(model, full_check=True)
        except Exception as e:
            raise ModelError(f"the exported model of graph {graph.name!r} fails onnx.checker "
                             f"(an exporter bug, please report it): {e}") from None
    return model


def save_onnx(graph: Graph, path, opset: int | None = None, producer: str = "ember") -> None:
    """Write ``to_onnx(graph)`` to ``path`` atomically: a temporary file in the same folder,
    renamed over ``path`` only once completely written, so a crash never leaves half a model."""
    data = to_onnx(graph, opset=opset, producer=producer).SerializeToString()
    path = os.path.abspath(os.fspath(path))
    folder, base = os.path.split(path)
    tmp = None
    try:
        # os.open with mode 0o666 (not mkstemp's 0o600) so the file gets the usual umask bits
        tmp = os.path.join(folder, f".{base}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        raise ModelError(f"cannot write ONNX model to {path!r}: {e.strerror or e}") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            try:
                os.unlink(tmp)
            except OSError:
                pass


# ---- checks before writing ------------------------------------------------------------------
def _ember_version() -> str:
    try:
        from importlib.metadata import version
        return version("ember")
    except Exception:
        return ""


def _check_opset(opset) -> int:
    onnx = _onnx()
    newest = onnx.defs.onnx_opset_version()
    if not isinstance(opset, (int, np.integer)) or isinstance(opset, bool) \
            or not MIN_OPSET <= opset <= newest:
        raise ModelError(f"cannot export at opset {opset!r}: ember writes opsets {MIN_OPSET}.."
                         f"{newest} (the installed onnx {onnx.__version__} knows up to {newest})")
    return int(opset)


def _const_scalar(graph: Graph, name: str):
    """The value of a constant scalar input, or None when it is not a compile-time constant."""
    if name in graph.initializers:
        return np.asarray(graph.initializers[name]).reshape(-1)
    return None


def _training_reason(graph: Graph, node: Node, has_onnx_op) -> str | None:
    """Why ``node`` cannot be exported (None when it can)."""
    if node.domain not in _DEFAULT_DOMAINS:
        return f"is in domain {node.domain!r}, which ONNX does not define"
    if not has_onnx_op(node.op_type):
        return ("has no ONNX equivalent (a training-only gradient or loss op, or an "
                "ember-only op)")
    if node.op_type == "BatchNormalization" and node.attrs.get("training_mode", 0):
        return "runs in training mode (batch statistics)"
    if node.op_type == "Dropout" and node.input(2):
        value = _const_scalar(graph, node.input(2))
        if value is None or bool(value.any()):
            return "runs in training mode (a random mask)"
    return None


def _refuse_training_nodes(graph: Graph) -> None:
    """One ModelError listing every node ONNX inference cannot express."""
    onnx = _onnx()
    bad = []
    for node in graph.nodes:
        why = _training_reason(graph, node, lambda op: onnx.defs.has(op, ""))
        if why:
            bad.append(f"{node.op_type} node {node.name!r} {why}")
    if bad:
        shown = "; ".join(bad[:8]) + (f"; … ({len(bad)} nodes)" if len(bad) > 8 else "")
        raise ModelError(f"cannot export graph {graph.name!r} to ONNX: {shown}. Export the "
                         f"eval-mode graph (model.eval().to_graph(...) or trainer.graph())")


def _check_size(graph: Graph) -> None:
    total = sum(np.asarray(a).nbytes for a in graph.initializers.values())
    for n in graph.nodes:
        total += sum(np.asarray(v).nbytes for v in n.attrs.values() if isinstance(v, np.ndarray))
    if total > MAX_MODEL_BYTES:
        raise ModelError(f"graph {graph.name!r} holds {total / 2**30:.2f} GiB of weights; an "
                         f"ONNX file is limited to 2 GiB without external data, which ember's "
                         f"exporter does not write")


def _value_types(graph: Graph) -> dict:
    """Types of every graph input and output: the graph's own when present, else ember's shape
    inference on a copy. Values inference cannot type (a fed input decides a shape) are left
    out; ONNX's shape inference fills them in later."""
    types = dict(graph.types)
    missing = [n for n in graph.inputs if n not in types]
    if missing:
        raise ModelError(f"graph inputs {missing} have no type; an exported model needs each "
                         f"input's dtype and rank")
    if all(o in types or o in graph.initializers for o in graph.outputs):
        return types
    from ..graph.infer import infer_shapes
    from ..graph.ops import NeedsValue
    g = graph.copy()
    try:
        infer_shapes(g)
    except (NeedsValue, UnsupportedOpError):   # a shape fed at run time; an op ember lacks
        declared = graph.metadata.get("declared_output_types") or {}
        g.types.update({k: v for k, v in declared.items() if k not in g.types})
    for k, v in g.types.items():
        types.setdefault(k, v)
    return types


# ---- attribute conversion ---------------------------------------------------------------------
def _ember_default(op_type: str, name: str):
    from ..graph.ops import REGISTRY
    op = REGISTRY.get(("", op_type))
    return None if op is None else op.attrs.get(name)


def _unset(value) -> bool:
    """ember's spellings of "attribute not given"."""
    return value is None or (isinstance(value, (list, tuple)) and len(value) == 0)


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        try:
            return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
        except TypeError:
            return False
    if isinstance(a, bytes):
        a = a.decode()
    if isinstance(b, bytes):
        b = b.decode()
    if isinstance(a, (float, np.floating)) or isinstance(b, (float, np.floating)):
        try:
            return np.float32(a) == np.float32(b)
        except (TypeError, ValueError):
            return False
    return a == b


def _attribute(node: Node, name: str, value, schema_attr):
    """``value`` as an AttributeProto of the schema's type, or None when it is ONNX's default."""
    onnx = _onnx()
    A = onnx.AttributeProto
    kind = schema_attr.type
    try:
        if kind == A.FLOAT:
            v = float(np.asarray(value).reshape(()))
        elif kind == A.INT:
            v = int(np.asarray(value).reshape(()))
        elif kind == A.STRING:
            v = value.decode() if isinstance(value, bytes) else str(value)
        elif kind == A.FLOATS:
            v = [float(x) for x in np.asarray(value, dtype=np.float64).reshape(-1)]
        elif kind == A.INTS:
            v = [int(x) for x in np.asarray(value).reshape(-1)]
        elif kind == A.STRINGS:
            v = [x.decode() if isinstance(x, bytes) else str(x) for x in value]
        elif kind == A.TENSOR:
            v = onnx.numpy_helper.from_array(_c_order(np.asarray(value)))
        else:
            raise ModelError(f"{node}: attribute {name!r} is of ONNX type "
                             f"{A.AttributeType.Name(kind)}, which ember does not export")
    except (TypeError, ValueError) as e:
        raise ModelError(f"{node}: attribute {name!r} = {value!r:.60} does not convert to "
                         f"ONNX type {A.AttributeType.Name(kind)} ({e})") from None
    default = schema_attr.default_value
    if default.type != A.UNDEFINED and kind != A.TENSOR \
            and _same(v, onnx.helper.get_attribute_value(default)):
        return None
    return onnx.helper.make_attribute(name, v)


def _first_version(op_type: str) -> int:
    onnx = _onnx()
    for v in range(1, onnx.defs.onnx_opset_version() + 1):
        try:
            return onnx.defs.get_schema(op_type, v, "").since_version
        except Exception:
            continue
    return 0


# ---- the emitter ------------------------------------------------------------------------------
class _Emitter:
    """Writes NodeProtos for IR nodes at one opset, with fresh names and extra constants."""

    def __init__(self, graph: Graph, opset: int, types: dict):
        self.graph, self.opset, self.types = graph, opset, types
        self.nodes: list = []
        self.extra_inits: dict = {}
        self._taken = set(graph.initializers) | set(graph.inputs) | set(graph.outputs)
        self._constants = {}    # outputs of Constant nodes: compile-time values too
        for n in graph.nodes:
            self._taken.update(n.inputs)
            self._taken.update(n.outputs)
            self._taken.add(n.name)
            if n.op_type == "Constant" and n.outputs and n.attrs.get("value") is not None:
                self._constants[n.outputs[0]] = np.asarray(n.attrs["value"])

    # names and constants ------------------------------------------------------------------
    def fresh(self, base: str) -> str:
        name, k = base, 0
        while name in self._taken:
            k += 1
            name = f"{base}_{k}"
        self._taken.add(name)
        return name

    def const(self, base: str, array) -> str:
        name = self.fresh(base)
        self.extra_inits[name] = _c_order(array)
        return name

    def value(self, name: str):
        """Compile-time value of ``name`` (initializer or constant made here), else None."""
        if name in self.graph.initializers:
            return np.asarray(self.graph.initializers[name])
        return self.extra_inits.get(name, self._constants.get(name))

    def dtype(self, name: str, default="float32") -> np.dtype:
        t = self.types.get(name)
        if t is not None:
            return t.dtype
        v = self.value(name)
        return np.dtype(default) if v is None else v.dtype

    def rank(self, name: str):
        t = self.types.get(name)
        if t is not None:
            return t.rank
        v = self.value(name)
        return None if v is None else v.ndim

    # writing nodes ------------------------------------------------------------------------
    def add(self, op_type: str, inputs, outputs, name: str, attrs: dict, source: Node) -> None:
        """One ONNX node: attributes checked against the schema at this opset."""
        onnx = _onnx()
        try:
            schema = onnx.defs.get_schema(op_type, self.opset, "")
        except Exception:
            first = _first_version(op_type)
            raise ModelError(f"{source}: ONNX op {op_type} needs opset ≥ {first}; exporting at "
                             f"opset {self.opset}") from None
        protos = []
        for key, value in attrs.items():
            if key not in schema.attributes:
                if _unset(value) or _same(value, _ember_default(source.op_type, key)):
                    continue  # ember's "not given": nothing to write
                raise ModelError(f"{source}: attribute {key}={value!r:.60} has no form in "
                                 f"{op_type} at opset {self.opset}; export at a newer opset")
            if _unset(value):
                continue
            attr = _attribute(source, key, value, schema.attributes[key])
            if attr is not None:
                protos.append(attr)
        for key, a in schema.attributes.items():
            if a.required and key not in attrs:
                raise ModelError(f"{source}: required attribute {key!r} of {op_type} is missing")
        inputs, outputs = list(inputs), list(outputs)
        while inputs and not inputs[-1]:   # trailing absent optionals are simply left out
            inputs.pop()
        while len(outputs) > 1 and not outputs[-1]:
            outputs.pop()
        proto = onnx.helper.make_node(op_type, inputs, outputs, name=name)
        proto.attribute.extend(protos)
        self.nodes.append(proto)

    def emit(self, node: Node) -> None:
        attrs = dict(node.attrs)
        kind, alpha, beta = (attrs.pop(a, None) for a in _FUSED_ATTRS)
        fused = (kind or "", float(alpha or 0.0), float(beta or 0.0))
        outputs = list(node.outputs)
        final = None
        if fused[0]:
            final = outputs[0]
            outputs[0] = self.fresh(f"{final}_pre_{fused[0].lower()}")
        inputs = list(node.inputs)
        rewrite = _REWRITES.get(node.op_type)
        if not (rewrite and rewrite(self, node, inputs, outputs, attrs)):
            self.add(node.op_type, inputs, outputs, node.name, attrs, node)
        if final is not None:
            self.activation(node, fused, outputs[0], final)

    def activation(self, node: Node, fused, x: str, y: str) -> None:
        """The fused activation of ``node`` as standard ONNX nodes reading ``x``, writing ``y``."""
        kind, alpha, beta = fused
        base = f"{node.name}/{kind}"
        if kind in ("Relu", "Sigmoid", "Tanh", "HardSwish"):
            self.add(kind, [x], [y], self.fresh(base), {}, node)
        elif kind == "LeakyRelu":
            self.add(kind, [x], [y], self.fresh(base), {"alpha": float(alpha)}, node)
        elif kind == "Clip":
            dt = self.dtype(y)
            lo = "" if alpha == -math.inf else self.const(f"{node.name}_clip_min",
                                                          np.array(alpha, dt))
            hi = "" if beta == math.inf else self.const(f"{node.name}_clip_max",
                                                        np.array(beta, dt))
            self.add("Clip", [x, lo, hi], [y], self.fresh(base), {}, node)
        elif kind == "SiLU":
            s = self.fresh(f"{y}_sigmoid")
            self.add("Sigmoid", [x], [s], self.fresh(f"{node.name}/SiLU_sigmoid"), {}, node)
            self.add("Mul", [x, s], [y], self.fresh(f"{node.name}/SiLU_mul"), {}, node)
        else:
            raise ModelError(f"{node}: unknown fused activation {kind!r}")

    # the graph ----------------------------------------------------------------------------
    def graph_proto(self):
        onnx = _onnx()
        g = self.graph
        used = {i for n in self.nodes for i in n.input if i}
        inits, const_nodes = [], []
        for name, arr in list(g.initializers.items()) + list(self.extra_inits.items()):
            if name in g.outputs:  # an output must be produced by a node: write a Constant
                const_nodes.append(onnx.helper.make_node(
                    "Constant", [], [name], name=self.fresh(f"{name}/Constant"),
                    value=_tensor(arr, "")))
            elif name in used:
                inits.append(_tensor(arr, name))
        inputs = [_value_info(n, self.types[n]) for n in g.inputs]
        outputs = [_value_info(n, self.types.get(n) or _type_of_array(g.initializers.get(n)))
                   for n in g.outputs]
        gp = onnx.helper.make_graph(const_nodes + self.nodes, g.name or "graph", inputs, outputs,
                                    inits)
        if any(vi.type.tensor_type.elem_type == 0 for vi in gp.output):
            _fill_output_types(gp, self.opset)
        return gp


def _c_order(arr) -> np.ndarray:
    """C-contiguous without np.ascontiguousarray's promotion of 0-d arrays to 1-d."""
    a = np.asarray(arr)
    return a if a.flags.c_contiguous else a.copy(order="C")


def _tensor(arr, name: str):
    onnx = _onnx()
    a = _c_order(np.asarray(arr))
    try:
        return onnx.numpy_helper.from_array(a, name)
    except Exception as e:
        raise ModelError(f"constant {name!r} of dtype {a.dtype} cannot be written to ONNX "
                         f"({e})") from None


def _type_of_array(arr):
    return None if arr is None else TensorType(np.asarray(arr).dtype, np.asarray(arr).shape)


def _value_info(name: str, t: TensorType | None):
    onnx = _onnx()
    if t is None:
        return onnx.helper.make_empty_tensor_value_info(name)
    dims = [d if isinstance(d, str) else int(d) for d in t.shape]
    return onnx.helper.make_tensor_value_info(
        name, onnx.helper.np_dtype_to_tensor_dtype(np.dtype(t.dtype)), dims)


def _defer_to_onnx_inference(model) -> None:
    """Blank the declared output dims that ONNX's own shape inference computes differently.

    ember's shapes are the ones the runtimes produce, but onnx's inference has known slips (e.g.
    MaxPool/AveragePool with ceil_mode where the last window would start in the padding), and
    ``check_model(full_check=True)`` rejects any declared dim it disagrees with. An unknown dim
    is always valid, so those dims (only those) are left unnamed."""
    onnx = _onnx()
    declared = [type(vi)() for vi in model.graph.output]
    for saved, vi in zip(declared, model.graph.output):
        saved.CopyFrom(vi)
        for d in vi.type.tensor_type.shape.dim:
            d.Clear()
    try:
        inferred = {vi.name: vi for vi in onnx.shape_inference.infer_shapes(model).graph.output}
    except Exception:
        inferred = {}
    for saved, vi in zip(declared, model.graph.output):
        got = inferred.get(vi.name)
        got_dims = list(got.type.tensor_type.shape.dim) if got is not None else []
        vi.CopyFrom(saved)
        for k, d in enumerate(vi.type.tensor_type.shape.dim):
            theirs = got_dims[k] if k < len(got_dims) else None
            if theirs is not None and d.HasField("dim_value") and theirs.HasField("dim_value") \
                    and theirs.dim_value != d.dim_value:
                d.Clear()


def _fill_output_types(gp, opset: int) -> None:
    """Outputs ember could not type (their shape depends on a fed value): ONNX's inference."""
    onnx = _onnx()
    model = onnx.helper.make_model(gp, opset_imports=[onnx.helper.make_opsetid("", opset)])
    try:
        inferred = onnx.shape_inference.infer_shapes(model).graph
    except Exception:
        inferred = None
    found = {}
    if inferred is not None:
        for vi in list(inferred.value_info) + list(inferred.output):
            if vi.type.tensor_type.elem_type:
                found[vi.name] = vi
    for vi in gp.output:
        if vi.type.tensor_type.elem_type == 0:
            if vi.name not in found:
                raise ModelError(f"cannot tell the dtype of graph output {vi.name!r}; run shape "
                                 f"inference on the graph (or give fixed input values) first")
            vi.type.CopyFrom(found[vi.name].type)


# ---- per-op rewrites: (emitter, node, inputs, outputs, attrs) -> True when fully written ----
def _cast(em, node, inputs, outputs, attrs):
    onnx = _onnx()
    to = attrs.get("to")
    if isinstance(to, (int, np.integer)) and not isinstance(to, bool):
        code = int(to)
    else:
        try:
            code = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(to))
        except Exception:
            raise ModelError(f"{node}: cannot write target type {to!r}") from None
    attrs["to"] = code
    return False


def _constant(em, node, inputs, outputs, attrs):
    given = {k: v for k, v in attrs.items() if v is not None}
    if "sparse_value" in given:  # the importer keeps it dense
        given["value"] = np.asarray(given.pop("sparse_value"))
    if len(given) != 1:
        raise ModelError(f"{node}: a Constant needs exactly one value attribute, got "
                         f"{sorted(given)}")
    em.add("Constant", [], outputs, node.name, given, node)
    return True


def _constant_of_shape(em, node, inputs, outputs, attrs):
    if attrs.get("value") is not None:
        attrs["value"] = np.asarray(attrs["value"]).reshape(-1)[:1]
    return False


def _dropout(em, node, inputs, outputs, attrs):
    if len(inputs) > 2:
        inputs[2] = ""  # a constant false training_mode (checked up front): the default
    if attrs.get("seed") is None:
        attrs.pop("seed", None)
    em.add("Dropout", inputs, outputs, node.name, attrs, node)
    return True


def _batchnorm(em, node, inputs, outputs, attrs):
    """Eval-mode BN: outputs 1 and 2 (running stats, unchanged) only exist in training mode in
    ONNX, so any reader of them gets an Identity of the statistic instead."""
    attrs.pop("training_mode", None)
    em.add("BatchNormalization", inputs, outputs[:1], node.name, attrs, node)
    for k, src in ((1, inputs[3]), (2, inputs[4])):
        if len(outputs) > k and outputs[k]:
            em.add("Identity", [src], [outputs[k]], em.fresh(f"{node.name}/stat{k}"), {}, node)
    return True


def _reduce(em, node, inputs, outputs, attrs):
    if em.opset >= 18 or node.op_type not in _REDUCE_AXES_ATTR_BEFORE_18:
        return False
    noop = bool(attrs.pop("noop_with_empty_axes", 0))
    axes = None
    if len(inputs) > 1 and inputs[1]:
        value = em.value(inputs[1])
        if value is None:
            raise ModelError(f"{node}: axes computed at run time need opset ≥ 18 (exporting "
                             f"at {em.opset})")
        axes = [int(a) for a in value.reshape(-1)]
    if not axes:
        if noop:
            em.add("Identity", inputs[:1], outputs, node.name, {}, node)
            return True
        axes = None
    if axes is not None:
        attrs["axes"] = axes
    em.add(node.op_type, inputs[:1], outputs, node.name, attrs, node)
    return True


def _split(em, node, inputs, outputs, attrs):
    has_split = len(inputs) > 1 and bool(inputs[1])
    n_out = len(outputs)
    if em.opset >= 18:
        if has_split:
            attrs.pop("num_outputs", None)  # ONNX: split or num_outputs, never both
        elif attrs.get("num_outputs") is None:
            attrs["num_outputs"] = n_out
        return False
    attrs.pop("num_outputs", None)
    if has_split or n_out == 1:
        return False
    t = em.types.get(inputs[0])
    dim = None
    if t is not None:
        axis = int(attrs.get("axis", 0)) % max(t.rank, 1)
        dim = t.shape[axis]
    if isinstance(dim, (int, np.integer)):
        chunk = -(-int(dim) // n_out)
        sizes = [chunk] * (n_out - 1) + [int(dim) - chunk * (n_out - 1)]
        if len(set(sizes)) > 1:  # opset < 18 splits equally only: spell the sizes out
            inputs = [inputs[0], em.const(f"{node.name}_split", np.array(sizes, np.int64))]
            em.add("Split", inputs, outputs, node.name, attrs, node)
            return True
    return False


def _pad(em, node, inputs, outputs, attrs):
    mode = attrs.get("mode", "constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode == "wrap" and em.opset < 19:
        raise ModelError(f"{node}: Pad mode 'wrap' needs opset ≥ 19 (exporting at {em.opset})")
    if em.opset >= 18 or len(inputs) < 4 or not inputs[3]:
        return False
    pads, axes, rank = em.value(inputs[1]), em.value(inputs[3]), em.rank(inputs[0])
    if pads is None or axes is None or rank is None:
        raise ModelError(f"{node}: Pad with axes computed at run time needs opset ≥ 18 "
                         f"(exporting at {em.opset})")
    pads, axes = [int(p) for p in pads.reshape(-1)], [int(a) % rank for a in axes.reshape(-1)]
    full = [0] * (2 * rank)
    for k, a in enumerate(axes):
        full[a], full[a + rank] = pads[k], pads[k + len(axes)]
    inputs = [inputs[0], em.const(f"{node.name}_pads", np.array(full, np.int64))] + inputs[2:3]
    em.add("Pad", inputs, outputs, node.name, attrs, node)
    return True


def _resize(em, node, inputs, outputs, attrs):
    mode = attrs.get("coordinate_transformation_mode", "half_pixel")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode == "half_pixel_symmetric" and em.opset < 19:
        raise ModelError(f"{node}: Resize coordinate_transformation_mode "
                         f"'half_pixel_symmetric' needs opset ≥ 19 (exporting at {em.opset})")
    axes, rank = attrs.get("axes"), em.rank(inputs[0])
    if axes is not None and rank is not None \
            and [int(a) % rank for a in axes] == list(range(rank)):
        attrs.pop("axes")  # every axis in order: ONNX's default
    return False


def _average_pool(em, node, inputs, outputs, attrs):
    dil = attrs.get("dilations")
    if dil is not None and all(int(d) == 1 for d in dil):
        attrs.pop("dilations")
    return False


def _transpose(em, node, inputs, outputs, attrs):
    perm, rank = attrs.get("perm"), em.rank(inputs[0])
    if perm is not None and rank is not None and list(perm) == list(range(rank))[::-1]:
        attrs.pop("perm")
    return False


_REWRITES = {
    "Cast": _cast, "Constant": _constant, "ConstantOfShape": _constant_of_shape,
    "Dropout": _dropout, "BatchNormalization": _batchnorm, "Split": _split, "Pad": _pad,
    "Resize": _resize, "AveragePool": _average_pool, "Transpose": _transpose,
}
for _op in _REDUCE_AXES_ATTR_BEFORE_18:
    _REWRITES[_op] = _reduce
