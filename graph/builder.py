"""Build a static IR graph op by op from Python.

    b = Builder("mlp", seed=0)
    x = b.input("x", ("N", 784))
    w = b.parameter("fc.weight", (10, 784), init="kaiming_uniform", a=5 ** 0.5)
    y = b.gemm(x, w, transB=1)
    b.output(y.relu(), "y")
    graph = b.build()

Every op is shape-inferred the moment it is added (with the op registry's own ``infer``), so a
bad shape raises ``ShapeError`` at the line that wrote it, naming the op. Parameters are
initializers listed in ``graph.metadata["parameters"]`` (creation order); buffers (e.g. running
statistics) in ``graph.metadata["buffers"]``. A ``seed`` makes every initializer reproducible.
"""
from __future__ import annotations

import math

import numpy as np

from .errors import ModelError, ShapeError
from .infer import infer_node, infer_shapes
from .ir import Graph, Node, TensorType
from .ops import get_op, op_named
from .ops.base import NeedsValue

INITS = ("kaiming_uniform", "kaiming_normal", "xavier_uniform", "xavier_normal", "zeros",
         "ones", "constant", "uniform", "normal")


# ---- initializers (PyTorch's torch.nn.init formulas) -------------------------------------------
def fans(shape) -> tuple:
    """(fan_in, fan_out) as torch computes them: dim 1 and dim 0 times the receptive field."""
    shape = tuple(shape)
    if len(shape) < 2:
        raise ModelError(f"fan_in/fan_out need a shape of rank >= 2, got {shape}; pass fan_in= "
                         f"explicitly (e.g. for a bias)")
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def calculate_gain(nonlinearity: str, param=None) -> float:
    """torch.nn.init.calculate_gain."""
    if nonlinearity in ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose2d", "sigmoid"):
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else float(param)
        return math.sqrt(2.0 / (1 + slope ** 2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ModelError(f"unknown nonlinearity {nonlinearity!r} for an initializer gain")


def initialize(init, shape, rng: np.random.Generator, dtype="float32", *, a: float = 0.0,
               mode: str = "fan_in", nonlinearity: str = "leaky_relu", gain: float = 1.0,
               value: float = 0.0, low: float | None = None, high: float | None = None,
               bound: float | None = None, mean: float = 0.0, std: float = 1.0,
               fan_in: int | None = None, fan_out: int | None = None) -> np.ndarray:
    """A new array of ``shape`` drawn as ``init`` says (a name from ``INITS`` or an array).

    kaiming_*: std = gain/√fan with gain = calculate_gain(nonlinearity, a), fan = fan_in or
    fan_out per ``mode`` (uniform bound = √3·std) — torch's defaults, so ``a=√5`` gives torch's
    Conv/Linear weight init U(−1/√fan_in, 1/√fan_in). xavier_*: std = gain·√(2/(fan_in+fan_out)).
    uniform: U(low, high) or U(−bound, bound); normal: N(mean, std).
    """
    shape = tuple(int(d) for d in shape)
    dtype = np.dtype(dtype)
    if isinstance(init, np.ndarray) or (not isinstance(init, str) and init is not None):
        arr = np.asarray(init, dtype=dtype)
        if arr.shape != shape:
            raise ShapeError(f"initial value has shape {arr.shape}, parameter shape is {shape}")
        return np.array(arr, dtype=dtype, copy=True)
    if init not in INITS:
        raise ModelError(f"unknown initializer {init!r}; expected one of {INITS} or an array")
    if init == "zeros":
        return np.zeros(shape, dtype)
    if init == "ones":
        return np.ones(shape, dtype)
    if init == "constant":
        return np.full(shape, value, dtype)
    if init == "normal":
        return rng.normal(mean, std, shape).astype(dtype)
    if init == "uniform":
        if bound is not None:
            low, high = -bound, bound
        low = 0.0 if low is None else low
        high = 1.0 if high is None else high
        return rng.uniform(low, high, shape).astype(dtype)
    if fan_in is None or fan_out is None:
        fi, fo = fans(shape)
        fan_in = fi if fan_in is None else fan_in
        fan_out = fo if fan_out is None else fan_out
    if init.startswith("kaiming"):
        if mode not in ("fan_in", "fan_out"):
            raise ModelError(f"kaiming mode must be 'fan_in' or 'fan_out', got {mode!r}")
        fan = fan_in if mode == "fan_in" else fan_out
        std = calculate_gain(nonlinearity, a) / math.sqrt(fan)
    else:
        std = gain * math.sqrt(2.0 / (fan_in + fan_out))
    if init.endswith("uniform"):
        b = math.sqrt(3.0) * std
        return rng.uniform(-b, b, shape).astype(dtype)
    return rng.normal(0.0, std, shape).astype(dtype)


# ---- value handles --------------------------------------------------------------------------
class Value:
    """A handle to one value of the graph being built: its name and its builder.

    Arithmetic operators add nodes (``x + y`` → Add, ``x @ w`` → MatMul); Python numbers and
    arrays become constants of the other operand's dtype.
    """

    __slots__ = ("name", "builder")
    __array_priority__ = 1000  # so ``ndarray + Value`` defers to Value.__radd__

    def __init__(self, name: str, builder: "Builder"):
        self.name, self.builder = name, builder

    @property
    def type(self) -> TensorType:
        return self.builder.graph.types[self.name]

    @property
    def shape(self) -> tuple:
        return self.type.shape

    @property
    def dtype(self) -> np.dtype:
        return self.type.dtype

    @property
    def ndim(self) -> int:
        return self.type.rank

    def __repr__(self):
        return f"Value({self.name!r}: {self.builder.graph.types.get(self.name, '?')})"

    # operators -------------------------------------------------------------------------------
    def _bin(self, op_type, other, reverse=False):
        ins = [other, self] if reverse else [self, other]
        return self.builder.op(op_type, ins)

    def __add__(self, o): return self._bin("Add", o)
    def __radd__(self, o): return self._bin("Add", o, True)
    def __sub__(self, o): return self._bin("Sub", o)
    def __rsub__(self, o): return self._bin("Sub", o, True)
    def __mul__(self, o): return self._bin("Mul", o)
    def __rmul__(self, o): return self._bin("Mul", o, True)
    def __truediv__(self, o): return self._bin("Div", o)
    def __rtruediv__(self, o): return self._bin("Div", o, True)
    def __matmul__(self, o): return self._bin("MatMul", o)
    def __rmatmul__(self, o): return self._bin("MatMul", o, True)
    def __neg__(self): return self.builder.op("Neg", [self])
    def __pow__(self, o): return self._bin("Pow", o)

    # a few methods, for forward() code that reads like torch -----------------------------------
    def relu(self): return self.builder.relu(self)
    def sigmoid(self): return self.builder.sigmoid(self)
    def tanh(self): return self.builder.tanh(self)
    def exp(self): return self.builder.op("Exp", [self])
    def log(self): return self.builder.op("Log", [self])
    def sqrt(self): return self.builder.op("Sqrt", [self])
    def flatten(self, start_dim: int = 1): return self.builder.flatten(self, start_dim)
    def reshape(self, *shape): return self.builder.reshape(self, _shape_args(shape))
    def view(self, *shape): return self.reshape(*shape)
    def transpose(self, perm): return self.builder.transpose(self, perm)
    def softmax(self, dim: int = -1): return self.builder.softmax(self, dim)
    def log_softmax(self, dim: int = -1): return self.builder.log_softmax(self, dim)


def _shape_args(shape):
    return tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) \
        else tuple(shape)


# ---- the builder ----------------------------------------------------------------------------
class Builder:
    """Writes a ``Graph`` op by op, inferring each value's type as it goes."""

    def __init__(self, name: str = "graph", seed=None, opset: int = 21):
        self.graph = Graph(name=name, opset=opset,
                           metadata={"parameters": [], "buffers": []})
        self.rng = np.random.default_rng(seed)
        self._taken: set = set()
        self._counts: dict = {}
        self.scope: list = []   # e.g. ["features.0"] while ember.nn traces that module

    def _node_base(self, op_type: str) -> str:
        """Default node names carry the scope, so errors point at the layer that wrote them."""
        return "/".join(self.scope + [op_type]) if self.scope else op_type

    # names -----------------------------------------------------------------------------------
    def _fresh(self, base: str) -> str:
        k = self._counts.get(base, 0)
        while True:
            name = base if k == 0 else f"{base}_{k}"
            k += 1
            if name not in self._taken:
                break
        self._counts[base] = k
        self._taken.add(name)
        return name

    def _claim(self, name: str) -> str:
        if name in self._taken:
            raise ModelError(f"graph {self.graph.name!r} already has a value named {name!r}")
        self._taken.add(name)
        return name

    # sources ---------------------------------------------------------------------------------
    def input(self, name: str, shape, dtype="float32") -> Value:
        """A runtime input (a feed). Dims are ints or symbolic names (str)."""
        self._claim(name)
        self.graph.inputs.append(name)
        self.graph.types[name] = TensorType(dtype, tuple(shape))
        return Value(name, self)

    def parameter(self, name: str, shape, init="kaiming_uniform", dtype="float32",
                  trainable: bool = True, **init_args) -> Value:
        """A trainable initializer, drawn with ``initialize(init, shape, self.rng, ...)``;
        ``trainable=False`` makes it a buffer (listed in metadata["buffers"])."""
        arr = initialize(init, shape, self.rng, dtype, **init_args)
        self._claim(name)
        self.graph.initializers[name] = arr
        self.graph.types[name] = TensorType(arr.dtype, arr.shape)
        self.graph.metadata["parameters" if trainable else "buffers"].append(name)
        return Value(name, self)

    def buffer(self, name: str, shape, init="zeros", dtype="float32", **init_args) -> Value:
        """A non-trainable initializer that is still part of the model's state."""
        return self.parameter(name, shape, init, dtype, trainable=False, **init_args)

    def constant(self, array, name: str | None = None, dtype=None) -> Value:
        arr = np.array(array, dtype=dtype, copy=True)
        if arr.dtype == np.float64 and dtype is None:
            arr = arr.astype(np.float32)
        name = self._claim(name) if name else self._fresh("const")
        self.graph.initializers[name] = arr
        self.graph.types[name] = TensorType(arr.dtype, arr.shape)
        return Value(name, self)

    def _as_value(self, v, like: Value | None) -> str:
        if v is None or (isinstance(v, str) and v == ""):
            return ""
        graph_value = getattr(v, "graph_value", None)   # e.g. an ember.nn.Parameter
        if callable(graph_value):
            v = graph_value()
        if isinstance(v, Value):
            if v.builder is not self:
                raise ModelError(f"value {v.name!r} belongs to another Builder")
            return v.name
        if isinstance(v, str):
            if v not in self.graph.types:
                raise ModelError(f"no value named {v!r} in graph {self.graph.name!r}")
            return v
        # Python numbers and float arrays follow the data's dtype; int arrays (shapes, axes,
        # split sizes) keep theirs.
        dtype = like.dtype if like is not None else None
        if isinstance(v, np.ndarray) and (v.dtype.kind != "f" or dtype is None
                                          or dtype.kind != "f"):
            dtype = None
        return self.constant(v, dtype=dtype).name

    # the generic op --------------------------------------------------------------------------
    def op(self, op_type: str, inputs, num_outputs: int = 1, name: str | None = None,
           domain: str | None = None, **attrs):
        """Add one node; return its output Value (a tuple of Values when num_outputs > 1).

        ``inputs`` are Values, value names, ``None`` (absent optional input) or numbers/arrays
        (made constants of the first Value input's dtype). Without ``domain`` the name picks
        the op (``ops.op_named``): an ONNX op, else one of ember's training ops (``MSELoss``,
        ``SumToShape``, …)."""
        op = op_named(op_type) if domain is None else get_op(op_type, domain)
        like = next((v for v in inputs if isinstance(v, Value)), None)
        names = [self._as_value(v, like) for v in inputs]
        while names and names[-1] == "":
            names.pop()
        node_name = self._claim(name) if name else self._fresh(self._node_base(op_type))
        outs = [node_name if k == 0 and num_outputs == 1 else f"{node_name}_out{k}"
                for k in range(num_outputs)]
        if num_outputs > 1:
            for o in outs:
                self._claim(o)
        node = Node(op_type, names, outs, dict(attrs), node_name, op.domain)
        try:
            self._infer(op, node)
        except Exception:
            for o in outs:
                self._taken.discard(o)
            self._taken.discard(node_name)
            raise
        self.graph.nodes.append(node)
        vals = tuple(Value(o, self) for o in outs)
        return vals[0] if num_outputs == 1 else vals

    def _infer(self, op, node: Node) -> None:
        """Shape inference for one node, as ``infer_shapes`` does it for a whole graph; every
        output must exist (the builder hands out a handle per output)."""
        g = self.graph
        try:
            out_types = infer_node(g, op, node, g.initializers, set(g.inputs))
        except NeedsValue as e:
            raise ShapeError(f"{node}: needs the value of input {e.name!r} to infer its shape; "
                             f"pass it as a constant") from None
        for o, t in zip(node.outputs, out_types):
            if t is None:
                for name in node.outputs:  # a failed op leaves nothing behind
                    g.types.pop(name, None)
                raise ModelError(f"{node}: output {o!r} is absent for these inputs")

    # outputs and the result ------------------------------------------------------------------
    def output(self, v: Value, name: str | None = None) -> Value:
        """Mark ``v`` as a graph output, renamed to ``name`` through an Identity if needed."""
        if name and name != v.name:
            v = self.op("Identity", [v], name=name)
        if v.name in self.graph.outputs:
            raise ModelError(f"{v.name!r} is already a graph output")
        self.graph.outputs.append(v.name)
        return v

    def build(self) -> Graph:
        """A validated copy of the graph (topologically sorted, every type inferred)."""
        if not self.graph.outputs:
            raise ModelError(f"graph {self.graph.name!r} has no outputs; call output() first")
        g = self.graph.copy()
        g.metadata = {k: list(v) if isinstance(v, list) else v for k, v in g.metadata.items()}
        g.toposort()
        infer_shapes(g, fold=False)
        return g

    # sugar: one method per common forward op -------------------------------------------------
    def add(self, a, b): return self.op("Add", [a, b])
    def sub(self, a, b): return self.op("Sub", [a, b])
    def mul(self, a, b): return self.op("Mul", [a, b])
    def div(self, a, b): return self.op("Div", [a, b])
    def matmul(self, a, b): return self.op("MatMul", [a, b])
    def relu(self, x): return self.op("Relu", [x])
    def sigmoid(self, x): return self.op("Sigmoid", [x])
    def tanh(self, x): return self.op("Tanh", [x])
    def identity(self, x): return self.op("Identity", [x])
    def leaky_relu(self, x, alpha=0.01): return self.op("LeakyRelu", [x], alpha=float(alpha))
    def elu(self, x, alpha=1.0): return self.op("Elu", [x], alpha=float(alpha))

    def clip(self, x, min=None, max=None):
        lo = None if min is None else np.array(min, dtype=x.dtype)
        hi = None if max is None else np.array(max, dtype=x.dtype)
        return self.op("Clip", [x, lo, hi])

    def silu(self, x):
        return x * self.sigmoid(x)

    def softmax(self, x, axis=-1): return self.op("Softmax", [x], axis=int(axis))
    def log_softmax(self, x, axis=-1): return self.op("LogSoftmax", [x], axis=int(axis))
    def flatten(self, x, axis=1): return self.op("Flatten", [x], axis=int(axis))
    def transpose(self, x, perm): return self.op("Transpose", [x], perm=[int(p) for p in perm])

    def reshape(self, x, shape):
        return self.op("Reshape", [x, np.array(shape, dtype=np.int64)])

    def concat(self, values, axis=1):
        return self.op("Concat", list(values), axis=int(axis))

    def conv(self, x, w, b=None, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), group=1,
             **attrs):
        return self.op("Conv", [x, w, b], strides=list(strides), pads=list(pads),
                       dilations=list(dilations), group=int(group), **attrs)

    def gemm(self, a, b, c=None, alpha=1.0, beta=1.0, transA=0, transB=0):
        return self.op("Gemm", [a, b, c], alpha=float(alpha), beta=float(beta),
                       transA=int(transA), transB=int(transB))

    def max_pool(self, x, kernel_shape, strides=None, pads=None, **attrs):
        k = list(kernel_shape)
        return self.op("MaxPool", [x], kernel_shape=k, strides=list(strides or k),
                       pads=list(pads or [0] * (2 * len(k))), **attrs)

    def avg_pool(self, x, kernel_shape, strides=None, pads=None, **attrs):
        k = list(kernel_shape)
        return self.op("AveragePool", [x], kernel_shape=k, strides=list(strides or k),
                       pads=list(pads or [0] * (2 * len(k))), **attrs)

    def global_avg_pool(self, x): return self.op("GlobalAveragePool", [x])

    def batch_norm(self, x, scale, bias, mean, var, epsilon=1e-5, momentum=0.9):
        return self.op("BatchNormalization", [x, scale, bias, mean, var],
                       epsilon=float(epsilon), momentum=float(momentum))

    def dropout(self, x, ratio=0.5, training=False):
        r = np.array(ratio, dtype=x.dtype)
        if not training:
            return self.op("Dropout", [x, r])
        return self.op("Dropout", [x, r, np.array(True)])
