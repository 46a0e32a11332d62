"""ember IR → ONNX: the importer's mirror.

The IR holds one form per op, the newest opset's (see ``importers.onnx``), plus ember-only
attributes that passes add (a fused ``activation`` on Conv/Gemm/MatMul) and the fused ops of
``FUSED_DOMAIN`` the pattern passes make (SiLU, Add with an activation). Export writes each node
in the chosen opset's form:

* attributes are filtered through the op's ONNX schema at that opset, converted to the schema's
  attribute type, and omitted when equal to ONNX's default; an ember attribute the schema does
  not know is dropped when it holds ember's "not set" default and is an error otherwise (it
  would change the meaning), so ember-only attributes never leak into the file;
* a fused activation becomes its own standard node after the producer, written by the
  activation's op (``export_fused``); SiLU, which no ONNX op names, as Sigmoid + Mul; a fused
  op writes the standard nodes it was made from;
* every op writes its own form (``Op.export``), older forms at older opsets where ember's
  meaning survives (Reduce* ``axes`` as an attribute before 18, …) and, where it does not, an
  error naming the node and the opset it needs.

Training-only content has no ONNX form and is refused up front, listing every offending node:
ember's training ops (``TRAINING_DOMAIN``: the gradient ops, ``SumToShape``, the loss a Trainer
appends), other ops outside the default domain or that ONNX does not define, and nodes whose op
refuses them (``Op.export_refusal``: BatchNorm in ``training_mode``, Dropout
with a training-mode input that is not a constant false).

The exporter holds only the generic machinery (``ExportContext``): adding an op never means
editing this module.

``onnx`` is imported lazily, when a model is exported; loading never imports it.
"""
from __future__ import annotations

import os
import secrets

import numpy as np

from ..graph.errors import ModelError, UnsupportedOpError
from ..graph.ir import Graph, Node, TensorType, fresh_name
from ..graph.ops import REGISTRY, TRAINING_DOMAIN, Op
from ..graph.ops.activation import FUSED_DOMAIN

DEFAULT_OPSET = 21      # the newest opset whose semantics every ember op follows
MIN_OPSET = 13          # Softmax's one-axis form, Squeeze/Unsqueeze/ReduceSum axes as inputs
# A protobuf message cannot exceed 2 GiB; keep room for the graph itself. Weights beyond this
# need ONNX external data, which this exporter does not write.
MAX_MODEL_BYTES = (1 << 31) - (64 << 20)

_DEFAULT_DOMAINS = ("", "ai.onnx")
_FUSED_ATTRS = ("activation", "activation_alpha", "activation_beta")


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

    ctx = ExportContext(graph, opset, types)
    for node in graph.nodes:
        ctx.emit(node)
    gp = ctx.graph_proto()
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


_PLAIN_OP = Op()


def _op(node: Node) -> Op:
    """The registered op of a default-domain or fused-domain node (a fused op writes itself back
    as standard nodes); a plain ``Op`` (written as it stands) for an op ember does not
    register."""
    domain = FUSED_DOMAIN if node.domain == FUSED_DOMAIN else ""
    return REGISTRY.get((domain, node.op_type)) or _PLAIN_OP


def _training_reason(graph: Graph, node: Node, has_onnx_op) -> str | None:
    """Why ``node`` cannot be exported (None when it can)."""
    if node.domain == TRAINING_DOMAIN:
        return (f"has no ONNX equivalent (one of ember's training ops, domain "
                f"{TRAINING_DOMAIN!r})")
    if node.domain == FUSED_DOMAIN and (FUSED_DOMAIN, node.op_type) in REGISTRY:
        return None
    if node.domain not in _DEFAULT_DOMAINS:
        return f"is in domain {node.domain!r}, which ONNX does not define"
    if not has_onnx_op(node.op_type):
        return ("has no ONNX equivalent (a training-only gradient or loss op, or an "
                "ember-only op)")
    return _op(node).export_refusal(node, graph)


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
        elif kind == A.GRAPH and isinstance(value, onnx.GraphProto):
            v = value   # written by ExportContext.subgraph
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


def _tensor_type_str(dtype) -> str | None:
    """ONNX's spelling of a tensor type in schemas, e.g. ``tensor(float16)``."""
    onnx = _onnx()
    try:
        code = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    except Exception:
        return None
    return f"tensor({onnx.TensorProto.DataType.Name(code).lower()})"


def _schema_or_none(op_type: str, opset: int):
    try:
        return _onnx().defs.get_schema(op_type, opset, "")
    except Exception:
        return None


def _allows(schema, formal, type_str: str) -> bool:
    """Whether ``schema``'s input ``formal`` (matched by name) may hold ``type_str``."""
    if schema is None:
        return False
    same = [f for f in schema.inputs if f.name == formal.name]
    t = (same[0] if same else formal).type_str
    allowed = {c.type_param_str: c.allowed_type_strs for c in schema.type_constraints}
    return type_str in allowed.get(t, [t])


def _first_version(op_type: str) -> int:
    onnx = _onnx()
    for v in range(1, onnx.defs.onnx_opset_version() + 1):
        try:
            return onnx.defs.get_schema(op_type, v, "").since_version
        except Exception:
            continue
    return 0


# ---- the export context ----------------------------------------------------------------------
class ExportContext:
    """Writes NodeProtos for IR nodes at one opset, with fresh names and extra constants.

    What an op's ``export``/``export_fused`` sees: ``opset``, ``types`` (value name →
    TensorType, where known), ``add`` (one ONNX node, attributes checked against the schema),
    ``fresh`` (an unused name), ``const`` (a new initializer), ``value``/``dtype``/``rank`` (what
    is known of a value at export time) and ``tensor_type_code``."""

    def __init__(self, graph: Graph, opset: int, types: dict):
        self.graph, self.opset, self.types = graph, opset, types
        self.nodes: list = []
        self.extra_inits: dict = {}
        self._taken = set(graph.initializers) | set(graph.inputs) | set(graph.outputs)
        self._constants = {}    # outputs of Constant nodes: compile-time values too
        self.captured: set = set()   # values read by subgraphs written so far
        for n in graph.nodes:
            self._taken.update(n.inputs)
            self._taken.update(n.outputs)
            self._taken.add(n.name)
            if n.op_type == "Constant" and n.outputs and n.attrs.get("value") is not None:
                self._constants[n.outputs[0]] = np.asarray(n.attrs["value"])

    # names and constants ------------------------------------------------------------------
    def fresh(self, base: str) -> str:
        return fresh_name(self._taken, base)

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

    def tensor_type_code(self, dtype, source: Node) -> int:
        """ONNX's TensorProto type code of ``dtype`` (a numpy dtype or its name; a code passes
        through)."""
        if isinstance(dtype, (int, np.integer)) and not isinstance(dtype, bool):
            return int(dtype)
        try:
            return _onnx().helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
        except Exception:
            raise ModelError(f"{source}: cannot write target type {dtype!r}") from None

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
        self._check_input_types(op_type, schema, inputs, source)
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

    def _check_input_types(self, op_type: str, schema, inputs, source: Node) -> None:
        """Each input's dtype must be one the schema at this opset allows (ONNX widens an
        op's types over opsets: Range takes float16 from 27); else name the opset it needs."""
        for k, name in enumerate(inputs):
            if not name or not schema.inputs or name not in self.types:
                continue
            type_str = _tensor_type_str(self.types[name].dtype)
            formal = schema.inputs[min(k, len(schema.inputs) - 1)]
            if type_str is None or _allows(schema, formal, type_str):
                continue
            newer = [v for v in range(self.opset + 1, _onnx().defs.onnx_opset_version() + 1)
                     if _allows(_schema_or_none(op_type, v), formal, type_str)]
            since = f"from opset {newer[0]} on" if newer else "at no opset ONNX defines yet"
            raise ModelError(f"{source}: ONNX {op_type} input {formal.name!r} takes {type_str} "
                             f"{since}; exporting at opset {self.opset}")

    def emit(self, node: Node) -> None:
        attrs = dict(node.attrs)
        kind, alpha, beta = (attrs.pop(a, None) for a in _FUSED_ATTRS)
        fused = (kind or "", float(alpha or 0.0), float(beta or 0.0))
        outputs = list(node.outputs)
        final = None
        if fused[0]:
            final = outputs[0]
            outputs[0] = self.fresh(f"{final}_pre_{fused[0].lower()}")
        _op(node).export(self, node, list(node.inputs), outputs, attrs)
        if final is not None:
            self.activation(node, fused, outputs[0], final)

    def activation(self, node: Node, fused, x: str, y: str) -> None:
        """The fused activation of ``node`` as standard ONNX nodes reading ``x``, writing ``y``:
        the activation's own op writes it (SiLU's, ember's fused one, as x·Sigmoid(x))."""
        kind, alpha, beta = fused
        op = REGISTRY.get(("", kind)) or REGISTRY.get((FUSED_DOMAIN, kind))
        if op is None or not hasattr(op, "export_fused"):
            raise ModelError(f"{node}: unknown fused activation {kind!r}")
        op.export_fused(self, node, x, y, alpha, beta)

    def subgraph(self, sub: Graph, formal_types: list, outer: list, source: Node):
        """An If branch or a Loop/Scan body as a GraphProto: its formal inputs typed by
        ``formal_types``, its captured inputs read from the enclosing graph's values ``outer``
        by name (through an Identity where a pass renamed the outer value)."""
        onnx = _onnx()
        own = len(sub.inputs) - len(outer)
        self.captured.update(outer)
        g = sub.copy()
        for name, t in zip(g.inputs, formal_types):
            if t is not None:
                g.types[name] = t
        for name, outer_name in zip(g.inputs[own:], outer):
            if outer_name in self.types:
                g.types[name] = self.types[outer_name]
        types = dict(g.types)
        try:
            from ..graph.infer import infer_shapes
            typed = g.copy()
            infer_shapes(typed, {n: self.value(o) for n, o in zip(g.inputs[own:], outer)
                                 if self.value(o) is not None})
            types.update(typed.types)
        except Exception:   # noqa: BLE001 — ONNX's checker infers what ember cannot here
            pass
        inner = ExportContext(g, self.opset, types)
        inner._taken |= self._taken
        for name, outer_name in zip(g.inputs[own:], outer):
            if name != outer_name:
                inner.nodes.append(onnx.helper.make_node("Identity", [outer_name], [name],
                                                         name=inner.fresh(f"{name}/capture")))
        for node in g.nodes:
            inner.emit(node)
        produced = {o for n in inner.nodes for o in n.output}
        outs = []
        for name in g.outputs:   # an output passed straight through is written by an Identity
            if name not in produced:
                fresh = inner.fresh(f"{name}/out")
                inner.nodes.append(onnx.helper.make_node("Identity", [name], [fresh],
                                                         name=fresh))
                types[fresh] = types.get(name)
                name = fresh
            outs.append(name)
        self._taken |= inner._taken
        used = {i for n in inner.nodes for i in n.input if i}
        inits = [_tensor(a, k) for k, a in list(g.initializers.items()) +
                 list(inner.extra_inits.items()) if k in used]
        inputs = [_value_info(n, types.get(n)) for n in g.inputs[:own]]
        outputs = [_value_info(n, types.get(n)) for n in outs]
        return onnx.helper.make_graph(inner.nodes, g.name or source.name, inputs, outputs, inits)

    # the graph ----------------------------------------------------------------------------
    def graph_proto(self):
        onnx = _onnx()
        g = self.graph
        used = {i for n in self.nodes for i in n.input if i} | self.captured
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
