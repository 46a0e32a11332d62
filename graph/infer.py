"""Shape inference with constant propagation.

Walks the graph in topological order, asks each op for its output types, and, when every input
of a foldable node is known, computes its outputs with the op's numpy reference — unless they are
too large to keep or the reference too costly to run while loading (``folds``). That makes the
Shape→Gather→Unsqueeze→Concat→Reshape chains PyTorch exports collapse to constants, so every
Reshape target is known before planning. ``passes.fold_constants`` then turns the known values
into initializers.
"""
from __future__ import annotations

import numpy as np

from .cost import FOLD_BUDGET
from .errors import ModelError, ShapeError, UnsupportedOpError
from .ir import Graph, TensorType
from .ops import control_flow, get_op, is_supported
from .ops.base import InferContext, NeedsValue, fill_attrs

# Values bigger than this are left to run time rather than stored as folded constants.
MAX_FOLD_BYTES = 64 << 20
# Guard against absurd shapes (hostile models): no single tensor may exceed this many elements
# (nor ``span``), so its byte count, at most 16 bytes an element, fits numpy's index type too.
# Smaller absurdities (1e12 elements) are refused by the Session's memory cap before allocating.
MAX_ELEMENTS = 1 << 40
# Kernels take each dim as a C int: a larger dim would overflow at binding time.
MAX_DIM = (1 << 31) - 1


def _numpy_max_rank() -> int:
    """The most dims a numpy array may have (64 since numpy 2, 32 before): the arena views,
    folded constants and numpy references of a tensor all are numpy arrays."""
    for rank in (64, 32):
        try:
            np.empty((0,) * rank, dtype=np.uint8)
            return rank
        except ValueError:
            continue
    raise ImportError("numpy refuses 32-dimensional arrays")


# More dims than this is refused at load (initializers, graph inputs, every inferred value):
# past it numpy itself raises. Kernels needing fewer (elementwise broadcast: 8) fall back.
MAX_RANK = _numpy_max_rank()
# Attributes that are lists of ints in every op that has them (their defaults, [] or None, do
# not say so): a float or string here would reach numpy or a kernel as garbage.
INT_LIST_ATTRS = frozenset({"pads", "strides", "kernel_shape", "dilations", "perm",
                            "output_shape", "output_padding", "axes"})
# Attributes that are single ints in every op that has them (their default, None, does not
# say so): a list here would reach a binder's int() as garbage.
INT_ATTRS = frozenset({"seed", "ignore_index", "num_outputs", "end"})
# Boolean attributes, which ONNX spells as ints: any other value is refused rather than read as
# true (numpy's reading) or false (onnxruntime reads keepdims=2 that way).
FLAG_ATTRS = frozenset({"keepdims", "noop_with_empty_axes", "ceil_mode", "count_include_pad",
                        "transA", "transB", "allowzero", "antialias", "exclude_outside",
                        "training_mode", "saturate", "storage_order"})


def _is_int(v) -> bool:
    """An int that fits the int64 every kernel and ONNX itself hold attributes in (a Python int
    from a checkpoint or the builder can be any size)."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and \
        -(1 << 63) <= v < (1 << 63)


def _check_attr_types(op, node) -> None:
    """ModelError naming the node and attribute when an attribute has the wrong kind of value
    (e.g. Conv ``strides`` as a float, ``kernel_shape`` as a string, ``group`` as a list)."""
    for name, value in node.attrs.items():
        default = op.attrs.get(name)
        if value is None or name not in op.attrs:
            continue
        if name in INT_LIST_ATTRS or (isinstance(default, list) and default
                                      and all(_is_int(d) for d in default)):
            ok = isinstance(value, (list, tuple)) and all(_is_int(v) for v in value)
            want = "a list of int64s"
        elif name in FLAG_ATTRS:
            ok = _is_int(value) and value in (0, 1)
            want = "0 or 1"
        elif _is_int(default) or name in INT_ATTRS:
            ok = _is_int(value)
            want = "an int64"
        elif isinstance(default, float):
            ok = _is_int(value) or isinstance(value, (float, np.floating))
            want = "a float"
        elif isinstance(default, str):
            ok = isinstance(value, str)
            want = "a string"
        else:
            continue
        if not ok:
            raise ModelError(f"{node}: attribute {name!r} must be {want}, got "
                             f"{type(value).__name__} {value!r:.60}")


def span(shape) -> int:
    """The product of a static shape's dims with each 0 counted as 1: numpy refuses a shape
    whose span overflows even when a 0 dim leaves it empty, so ``MAX_ELEMENTS`` bounds it."""
    n = 1
    for d in shape:
        n *= max(int(d), 1)
    return n


def _check_input_type(name, t: TensorType):
    if t.rank > MAX_RANK:
        raise ShapeError(f"graph input {name!r} has {t.rank} dims, more than the {MAX_RANK} "
                         f"ember (numpy) supports")
    big = [d for d in t.shape if isinstance(d, (int, np.integer)) and d > MAX_DIM]
    if big:
        raise ShapeError(f"graph input {name!r} has dim {big[0]} (shape {t.shape}), more than "
                         f"ember's kernels index ({MAX_DIM})")
    if t.is_static and span(t.shape) > MAX_ELEMENTS:
        raise ShapeError(f"graph input {name!r} would span {span(t.shape)} elements (shape "
                         f"{t.shape}, 0 dims counted as 1), more than ember accepts")


def _check_type(node, out_name, t: TensorType):
    if t.rank > MAX_RANK:
        raise ShapeError(f"{node}: output {out_name!r} would have {t.rank} dims, more than "
                         f"the {MAX_RANK} ember (numpy) supports")
    for d in t.shape:
        if not isinstance(d, (int, np.integer)) and not isinstance(d, str):
            raise ShapeError(f"{node}: output {out_name!r} got a non-integer dim {d!r}")
        if isinstance(d, (int, np.integer)) and d < 0:
            raise ShapeError(f"{node}: output {out_name!r} would have negative dim {d} "
                             f"(shape {t.shape})")
        if isinstance(d, (int, np.integer)) and d > MAX_DIM:
            raise ShapeError(f"{node}: output {out_name!r} would have dim {d} (shape "
                             f"{t.shape}), more than ember's kernels index ({MAX_DIM})")
    if t.is_static and span(t.shape) > MAX_ELEMENTS:
        raise ShapeError(f"{node}: output {out_name!r} would span {span(t.shape)} elements "
                         f"(shape {t.shape}, 0 dims counted as 1), more than ember accepts")


def infer_node(graph: Graph, op, node, known: dict, runtime_inputs: set,
               producers: dict | None = None) -> list:
    """Check one node's attributes and arity, infer its output types and record them in
    ``graph.types``; returns the op's list of output types (``None`` for absent outputs).
    ``producers``: the graph's value -> producer map, when the caller walks many nodes."""
    fill_attrs(op, node)
    _check_attr_types(op, node)
    lo, hi = op.num_inputs
    if len(node.inputs) < lo or (hi is not None and len(node.inputs) > hi):
        raise ModelError(f"{node}: takes {lo}..{hi if hi is not None else 'n'} inputs, "
                         f"got {len(node.inputs)}")
    ctx = InferContext(graph, node, known, runtime_inputs, producers)
    try:
        out_types = op.infer(ctx)
    except (ModelError, NeedsValue):
        raise
    except Exception as e:  # an op's inference tripping over a malformed model
        raise ShapeError(f"{node}: cannot infer output shapes: {type(e).__name__}: {e}") from e
    if len(out_types) < len([o for o in node.outputs if o]):
        raise ModelError(f"{node}: has {len(node.outputs)} outputs, op defines "
                         f"{len(out_types)}")
    for name, t in zip(node.outputs, out_types):
        if name and t is not None:
            _check_type(node, name, t)
            graph.types[name] = t
    return out_types


def _check_supported(graph: Graph) -> None:
    """Every node's (domain, op_type) is registered, or one UnsupportedOpError names them all
    with their nodes (a graph built in Python, or a default-domain node naming a training op)."""
    missing: dict = {}
    for node in graph.nodes:
        if not is_supported(node.op_type, node.domain):
            missing.setdefault((node.op_type, node.domain, "?"), []).append(node.name or "?")
    if missing:
        raise UnsupportedOpError(missing)


def folds(op, node, types: dict, out_types: list) -> bool:
    """Whether constant folding evaluates ``node`` (all of whose inputs are known): a foldable
    op whose outputs are small enough to keep as constants and whose numpy reference costs no
    more than ``FOLD_BUDGET``. Any other node stays in the graph and runs at run time."""
    return (op.foldable
            and all(t is None or (t.is_static and t.nbytes <= MAX_FOLD_BYTES) for t in out_types)
            and op.work(node, types) <= FOLD_BUDGET)


def infer_shapes(graph: Graph, consts: dict | None = None, fold: bool = True) -> dict:
    """Fill ``graph.types`` for every value; return the dict of values known at compile time
    (initializers, ``consts`` given by the caller, and folded results: see ``folds``).

    Raises ShapeError naming the node on a mismatch, NeedsValue when a graph input's value is
    needed to infer a shape."""
    known = dict(graph.initializers)
    if consts:
        known.update(consts)
    for name, arr in graph.initializers.items():
        graph.types[name] = TensorType(arr.dtype, arr.shape)
    runtime_inputs = {n for n in graph.inputs if n not in known}
    for name in graph.inputs:
        if name not in graph.types:
            raise ModelError(f"graph input {name!r} has no type")
        _check_input_type(name, graph.types[name])
    _check_supported(graph)
    producers = graph.producers()
    for node in graph.nodes:
        op = get_op(node.op_type, node.domain)
        out_types = infer_node(graph, op, node, known, runtime_inputs, producers)
        if fold and all((not i) or i in known for i in node.inputs):
            if folds(op, node, graph.types, out_types):
                try:
                    values = op.compute(node, [known[i] if i else None for i in node.inputs])
                except (ModelError,):
                    raise
                except Exception as e:
                    raise ShapeError(f"{node}: failed to evaluate on constant inputs: "
                                     f"{type(e).__name__}: {e}") from e
                for name, v, t in zip(node.outputs, values, out_types):
                    if name and t is not None:
                        v = np.asarray(v)
                        if v.shape != tuple(t.shape) or v.dtype != t.dtype:
                            raise ShapeError(f"{node}: output {name!r} evaluated to "
                                             f"{v.dtype}{list(v.shape)}, inference said {t}")
                        known[name] = v
    for o in graph.outputs:
        if o not in graph.types:
            raise ModelError(f"graph output {o!r} has no type after inference")
    return known


control_flow.Machinery.infer_shapes, control_flow.Machinery.infer_node = infer_shapes, infer_node
