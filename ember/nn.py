"""Models written like torch.nn, traced once into a static ember graph.

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.fc = nn.Linear(8, 10)
        def forward(self, x):
            x = F.relu(self.conv(x))
            return self.fc(F.flatten(F.adaptive_avg_pool2d(x, 1)))

    graph = Net().eval().to_graph(input_shape=("N", 3, 32, 32), seed=0)
    sess = ember.Session(graph)          # input "input", output "output"

Names, arguments, defaults and parameter shapes mirror torch.nn, so parameter names
(``features.0.weight``) and counts match PyTorch's. Parameters know their shape at once but draw
their values only when needed (``to_graph``, ``state_dict``), so counting VGG-16's 138 M
parameters allocates nothing. ``forward`` runs once, on symbolic values (``ember.graph.builder
.Value``); each module lowers itself to ONNX-semantics IR ops.

A custom loss is a Module too: ``forward(pred, target)`` returning a scalar, passed as
``ember.Trainer(model, loss=MyLoss())``; the Trainer traces it onto the model's output (see
``runtime/losses.py``, ``ModuleLoss``). ``functional.sum``/``mean``/``narrow`` help write one.

Sequence modules (``Embedding``, ``RNN``, ``GRU``, ``LSTM``, ``MultiheadAttention``,
``functional.scaled_dot_product_attention``) trace to ONNX Gather, RNN/GRU/LSTM and
MatMul/Softmax ops; a ``forward`` that loops over time in Python unrolls into the static graph.

Transfer learning: ``nn.load_onnx(path, until="<value>", freeze=True)`` is an imported ONNX model
cut at a named value, as a Module to put in front of a new head (``OnnxModule``); frozen
parameters (``requires_grad_``, ``freeze``/``unfreeze``) are left alone by a Trainer.
"""
from __future__ import annotations

import difflib
import math
import re
import sys
import types
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import numpy as np

from .graph.builder import Builder, Value, initialize
from .graph.errors import ModelError, ShapeError
from .graph.ir import Graph, Node
from .graph.ops import get_op
from .graph.ops.base import fill_attrs

if TYPE_CHECKING:
    import os
    from collections.abc import Iterable, Iterator, Sequence

__all__ = ["Parameter", "Buffer", "Module", "Sequential", "ModuleList", "Conv1d", "Conv2d",
           "ConvTranspose2d", "MaxPool1d", "AvgPool1d", "LocalResponseNorm", "Linear",
           "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "BatchNorm1d", "BatchNorm2d",
           "LayerNorm", "Dropout", "ReLU", "ReLU6", "LeakyReLU", "ELU", "SiLU", "Sigmoid",
           "Tanh", "Softmax", "LogSoftmax", "Flatten", "Identity", "functional"]


# ---- parameters and buffers ------------------------------------------------------------------
class Parameter:
    """A trainable tensor: shape fixed at construction, values drawn on first need from
    ``init`` (an ``ember.graph.builder.initialize`` name plus its arguments) or given."""

    requires_grad = True

    def __init__(self, shape_or_data: Sequence[int] | np.ndarray, init: str = "zeros",
                 dtype: str | np.dtype = "float32", **init_args: float) -> None:
        if isinstance(shape_or_data, np.ndarray):
            self.data = np.array(shape_or_data, dtype=dtype, copy=True)
            self.shape = self.data.shape
        else:
            self.data = None
            self.shape = tuple(int(d) for d in shape_or_data)
        self.dtype = np.dtype(dtype)
        self.init, self.init_args = init, init_args

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def requires_grad_(self, requires_grad: bool = True) -> "Parameter":
        """torch's ``requires_grad_``: False freezes the parameter (a Trainer leaves it as it
        is and its optimizer holds no state for it)."""
        self.requires_grad = bool(requires_grad)
        return self

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        """A fresh initial value from ``rng`` (what ``materialize`` and tracing store)."""
        return initialize(self.init, self.shape, rng, self.dtype, **self.init_args)

    def materialize(self, rng: np.random.Generator) -> np.ndarray:
        if self.data is None:
            self.data = self.draw(rng)
        return self.data

    def graph_value(self) -> Value:
        """The value standing for this parameter in the graph being traced."""
        return _value(self)

    def numpy(self) -> np.ndarray:
        return self.materialize(np.random.default_rng())

    def __array__(self, dtype=None, copy=None):
        a = self.numpy()
        return a if dtype is None else a.astype(dtype)

    def __repr__(self):
        kind = type(self).__name__
        return f"{kind}(shape={self.shape}{', uninitialized' if self.data is None else ''})"


class Buffer(Parameter):
    """Model state that is not trained by gradient (BatchNorm's running statistics)."""
    requires_grad = False

    def requires_grad_(self, requires_grad: bool = True) -> "Buffer":
        if requires_grad:
            raise ModelError(f"{self!r} is a buffer: it is never trained by gradient")
        return self


# ---- tracing ---------------------------------------------------------------------------------
_TRACES: list = []


class _Trace:
    """The Builder of the running ``to_graph`` and the graph value of every Parameter."""

    def __init__(self, builder: Builder) -> None:
        self.builder = builder
        self.values: dict = {}      # id(Parameter) -> Value
        self.names: dict = {}       # id(Parameter) -> qualified name
        self.module_names: dict = {}  # id(Module) -> qualified name, for node names


def _value(p) -> Value:
    """The graph value standing for Parameter ``p`` (or ``p`` itself if already a Value)."""
    if isinstance(p, Value) or p is None:
        return p
    if not _TRACES:
        raise ModelError("modules run only while tracing: call model.to_graph(input_shape=...)")
    trace = _TRACES[-1]
    try:
        return trace.values[id(p)]
    except KeyError:
        raise ModelError(f"{p!r} is not registered in the traced model (assign it as a module "
                         f"attribute)") from None


def _pair(v, what="") -> tuple:
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"{what} expects an int or a pair, got {v!r}")
        return tuple(int(a) for a in v)
    return (int(v), int(v))


# ---- Module ----------------------------------------------------------------------------------
class Module:
    """Base of every layer and model: holds Parameters, Buffers and sub-Modules by attribute
    name (in assignment order, as torch does) and traces ``forward`` into a graph."""

    # set in __init__ with object.__setattr__ (declared for type checkers)
    _parameters: OrderedDict[str, Parameter]
    _buffers: OrderedDict[str, Buffer]
    _modules: OrderedDict[str, Module]
    training: bool

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    def _ensure_init(self):
        if "_modules" not in self.__dict__:
            raise ModelError(f"{type(self).__name__}.__init__ must call super().__init__() "
                             f"before assigning layers or parameters")

    def __setattr__(self, name, value):
        if isinstance(value, (Parameter, Module)):
            self._ensure_init()
            for d in (self._parameters, self._buffers, self._modules):
                d.pop(name, None)
            if isinstance(value, Buffer):
                self._buffers[name] = value
            elif isinstance(value, Parameter):
                self._parameters[name] = value
            else:
                self._modules[name] = value
        elif value is None and "_parameters" in self.__dict__:
            self._parameters.pop(name, None)   # e.g. ``self.bias = None``
            self._buffers.pop(name, None)
        object.__setattr__(self, name, value)

    def __delattr__(self, name):
        for d in (self._parameters, self._buffers, self._modules):
            d.pop(name, None)
        object.__delattr__(self, name)

    def register_parameter(self, name: str, param: Parameter) -> None:
        setattr(self, name, param)

    def register_buffer(self, name: str, buffer: Buffer | np.ndarray) -> None:
        if not isinstance(buffer, Buffer):
            buffer = Buffer(np.asarray(buffer, dtype=np.float32))
        setattr(self, name, buffer)

    def add_module(self, name: str, module: Module) -> None:
        setattr(self, str(name), module)

    # forward ---------------------------------------------------------------------------------
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must define forward()")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        trace = _TRACES[-1] if _TRACES else None
        if trace is None:
            raise ModelError(f"{type(self).__name__} runs only while tracing: build the graph "
                             f"with model.to_graph(input_shape=...) and run it in "
                             f"ember.Session")
        name = trace.module_names.get(id(self)) if trace else None
        if not name:
            return self.forward(*args, **kwargs)
        scope = trace.builder.scope
        saved = list(scope)
        scope[:] = [name]          # qualified names are absolute: "features.0"
        try:
            return self.forward(*args, **kwargs)
        finally:
            scope[:] = saved

    # walking the tree ------------------------------------------------------------------------
    def named_children(self) -> Iterator[tuple[str, Module]]:
        yield from self._modules.items()

    def children(self) -> Iterator[Module]:
        for _, m in self.named_children():
            yield m

    def named_modules(self, prefix: str = "",
                      _seen: set[int] | None = None) -> Iterator[tuple[str, Module]]:
        seen = set() if _seen is None else _seen
        if id(self) in seen:
            return
        seen.add(id(self))
        yield prefix, self
        for name, m in self._modules.items():
            yield from m.named_modules(f"{prefix}.{name}" if prefix else name, seen)

    def modules(self) -> Iterator[Module]:
        for _, m in self.named_modules():
            yield m

    def _named(self, attr: str, prefix: str = ""):
        seen = set()
        for mprefix, m in self.named_modules(prefix):
            for name, p in getattr(m, attr).items():
                if id(p) in seen:
                    continue
                seen.add(id(p))
                yield (f"{mprefix}.{name}" if mprefix else name), p

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        """(torch-style dotted name, Parameter), each shared parameter once."""
        return self._named("_parameters", prefix)

    def parameters(self) -> Iterator[Parameter]:
        for _, p in self.named_parameters():
            yield p

    def named_buffers(self, prefix: str = "") -> Iterator[tuple[str, Buffer]]:
        return self._named("_buffers", prefix)

    def buffers(self) -> Iterator[Buffer]:
        for _, b in self.named_buffers():
            yield b

    def num_parameters(self) -> int:
        """Counted from shapes: nothing is allocated."""
        return sum(p.size for p in self.parameters())

    # state -----------------------------------------------------------------------------------
    def init_parameters(self, seed: int | None = None) -> "Module":
        """Draw every not-yet-drawn parameter and buffer, in name order, from one Generator."""
        rng = np.random.default_rng(seed)
        for _, p in self._state_items():
            p.materialize(rng)
        return self

    def _state_items(self):
        items = list(self.named_parameters()) + list(self.named_buffers())
        order = {name: k for k, (name, _) in enumerate(self._registration_order())}
        return sorted(items, key=lambda kv: order.get(kv[0], len(order)))

    def _registration_order(self):
        """Parameters and buffers module by module, as torch's state_dict lists them."""
        for mprefix, m in self.named_modules():
            for d in (m._parameters, m._buffers):
                for name, p in d.items():
                    yield (f"{mprefix}.{name}" if mprefix else name), p

    def state_dict(self) -> OrderedDict:
        """name -> numpy array (parameters and buffers; undrawn ones are drawn first)."""
        if any(p.data is None for _, p in self._state_items()):
            self.init_parameters()
        return OrderedDict((name, p.data) for name, p in self._state_items())

    def load_state_dict(self, state: dict, strict: bool = True) -> tuple[list[str], list[str]]:
        """Copy arrays in by name (torch's ``num_batches_tracked`` entries are ignored)."""
        own = dict(self._state_items())
        state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if strict and (missing or unexpected):
            raise ModelError(f"load_state_dict: missing keys {missing}, unexpected keys "
                             f"{unexpected}")
        for name, value in state.items():
            if name not in own:
                continue
            arr = np.asarray(value, dtype=own[name].dtype)
            if arr.shape != own[name].shape:
                raise ShapeError(f"load_state_dict: {name!r} has shape {arr.shape}, the model "
                                 f"expects {own[name].shape}")
            own[name].data = np.array(arr, copy=True)
        return missing, unexpected

    def requires_grad_(self, requires_grad: bool = True) -> "Module":
        """torch's ``requires_grad_``: every parameter of this module and its submodules
        trainable (True) or frozen (False)."""
        for p in self.parameters():
            p.requires_grad_(requires_grad)
        return self

    def freeze(self) -> "Module":
        """``requires_grad_(False)``: a Trainer leaves these parameters as they are, and
        BatchNorm layers whose affine parameters are all frozen keep their running statistics
        (used, not updated: Keras's frozen-layer rule)."""
        return self.requires_grad_(False)

    def unfreeze(self) -> "Module":
        return self.requires_grad_(True)

    def _fixed_statistics(self, model_training: bool):
        """The Buffers of this module (not of its submodules) that training must use and leave
        unchanged; ``model_training`` is the mode of the model being trained."""
        return ()

    def frozen_statistics(self) -> list:
        """Names of the running statistics a Trainer uses but does not update: those of
        BatchNorm layers that are frozen, or left in eval mode (``backbone.eval()``) inside a
        model in training mode, as torch keeps them."""
        fixed = {id(b) for m in self.modules() for b in m._fixed_statistics(self.training)}
        return [name for name, b in self.named_buffers() if id(b) in fixed]

    def train(self, mode: bool = True) -> "Module":
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self) -> "Module":
        return self.train(False)

    # tracing ---------------------------------------------------------------------------------
    def to_graph(self, input_shape: Sequence[int | str], seed: int | None = None,
                 dtype: str | np.dtype = "float32", name: str | None = None) -> Graph:
        """Trace ``forward`` once into a static Graph: input ``"input"`` of ``input_shape``
        (ints or symbolic str dims), output ``"output"`` (``output_1``… for a tuple). Parameters
        not drawn yet are drawn from ``seed``, in state_dict order; the drawn values are kept,
        so tracing again gives the same weights. Train/eval mode decides how Dropout and
        BatchNorm lower (eval: inference semantics)."""
        return self.trace_graph([("input", tuple(input_shape), dtype)], seed=seed, name=name)

    def trace_graph(self, inputs: Sequence[tuple[str, Sequence[int | str], str | np.dtype]],
                    seed: int | None = None, name: str | None = None) -> Graph:
        """``to_graph`` for any number of inputs: ``inputs`` lists (name, shape, dtype), fed to
        ``forward`` in that order. A custom loss is traced this way with ("pred", …) and
        ("target", …) (see ``runtime/losses.py``)."""
        b = Builder(name or type(self).__name__, seed=seed)
        trace = _Trace(b)
        for pname, p in self._state_items():
            init = p.data if p.data is not None else p.draw(b.rng)
            trace.values[id(p)] = b.parameter(pname, p.shape, init, p.dtype,
                                              trainable=p.requires_grad)
            trace.names[id(p)] = pname
        trace.module_names = {id(m): n for n, m in self.named_modules()}
        xs = [b.input(iname, tuple(shape), dtype) for iname, shape, dtype in inputs]
        _TRACES.append(trace)
        try:
            y = self(*xs)
        finally:
            _TRACES.pop()
        outs = list(y) if isinstance(y, (tuple, list)) else [y]
        for k, v in enumerate(outs):
            if not isinstance(v, Value):
                raise ModelError(f"forward() must return graph values, got {type(v).__name__}")
            b.output(v, "output" if k == 0 else f"output_{k}")
        graph = b.build()
        for pname, p in self._state_items():
            if p.data is None:
                p.data = graph.initializers[pname]
        return graph

    # printing --------------------------------------------------------------------------------
    def extra_repr(self) -> str:
        return ""

    def __repr__(self):
        lines = [f"  ({n}): " + repr(m).replace("\n", "\n  ") for n, m in self._modules.items()]
        head = f"{type(self).__name__}({self.extra_repr()}"
        return head + ")" if not lines else head + "\n" + "\n".join(lines) + "\n)"


# ---- containers ------------------------------------------------------------------------------
class Sequential(Module):
    """Modules applied in order; named "0", "1", … (or by an OrderedDict's keys)."""

    def __init__(self, *modules: Module) -> None:
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], (dict, OrderedDict)):
            for name, m in modules[0].items():
                self.add_module(name, m)
        else:
            for k, m in enumerate(modules):
                self.add_module(str(k), m)

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def __getitem__(self, idx):
        mods = list(self._modules.values())
        if isinstance(idx, slice):
            return Sequential(*mods[idx])
        return mods[idx]

    def append(self, module: Module) -> Sequential:
        self.add_module(str(len(self)), module)
        return self

    def forward(self, x: Value) -> Value:
        for m in self:
            x = m(x)
        return x


class ModuleList(Module):
    def __init__(self, modules: Iterable[Module] = ()) -> None:
        super().__init__()
        for m in modules:
            self.append(m)

    def append(self, module: Module) -> ModuleList:
        self.add_module(str(len(self._modules)), module)
        return self

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def __getitem__(self, idx):
        return list(self._modules.values())[idx]


# ---- layers with parameters ------------------------------------------------------------------
def _torch_weight(shape):
    """torch's default Conv/Linear weight init: kaiming_uniform(a=√5) = U(±1/√fan_in)."""
    return Parameter(shape, "kaiming_uniform", a=math.sqrt(5))


def _torch_bias(n, fan_in):
    bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    return Parameter((n,), "uniform", bound=bound)


class Conv2d(Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, ...],
                 stride: int | tuple[int, ...] = 1, padding: int | tuple[int, ...] | str = 0,
                 dilation: int | tuple[int, ...] = 1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "zeros") -> None:
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"in_channels ({in_channels}) and out_channels ({out_channels}) "
                             f"must be divisible by groups ({groups})")
        if padding_mode != "zeros":
            raise ModelError(f"Conv2d padding_mode {padding_mode!r} is not supported (only "
                             f"'zeros')")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = _pair(stride, "stride")
        self.dilation = _pair(dilation, "dilation")
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(f"padding must be 'same', 'valid', an int or a pair, got "
                                 f"{padding!r}")
            if padding == "same" and self.stride != (1, 1):
                raise ValueError("padding='same' is not supported for strided convolutions")
            self.padding = padding
        else:
            self.padding = _pair(padding, "padding")
        self.weight = _torch_weight((out_channels, in_channels // groups) + self.kernel_size)
        fan_in = (in_channels // groups) * self.kernel_size[0] * self.kernel_size[1]
        self.bias = _torch_bias(out_channels, fan_in) if bias else None

    def _pads(self) -> list:
        if self.padding == "valid":
            return [0, 0, 0, 0]
        if self.padding == "same":   # torch puts the odd extra pixel at the end
            total = [d * (k - 1) for d, k in zip(self.dilation, self.kernel_size)]
            return [t // 2 for t in total] + [t - t // 2 for t in total]
        return list(self.padding) * 2

    def forward(self, x: Value) -> Value:
        return x.builder.conv(x, _value(self.weight), _value(self.bias), self.stride,
                              self._pads(), self.dilation, self.groups,
                              kernel_shape=list(self.kernel_size))

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}")


class Conv1d(Module):
    """torch.nn.Conv1d on (N, C, L), weight (out, in/groups, k). ember's kernels are 2-D, so it
    lowers to a 2-D Conv of a height-1 view: Unsqueeze → Conv with a 1×k kernel → Squeeze,
    which adds exactly the same products."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, ...],
                 stride: int | tuple[int, ...] = 1, padding: int | tuple[int, ...] | str = 0,
                 dilation: int | tuple[int, ...] = 1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "zeros") -> None:
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"in_channels ({in_channels}) and out_channels ({out_channels}) "
                             f"must be divisible by groups ({groups})")
        if padding_mode != "zeros":
            raise ModelError(f"Conv1d padding_mode {padding_mode!r} is not supported (only "
                             f"'zeros')")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = (_single(kernel_size, "kernel_size"),)
        self.stride = (_single(stride, "stride"),)
        self.dilation = (_single(dilation, "dilation"),)
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(f"padding must be 'same', 'valid' or an int, got {padding!r}")
            if padding == "same" and self.stride != (1,):
                raise ValueError("padding='same' is not supported for strided convolutions")
            self.padding = padding
        else:
            self.padding = (_single(padding, "padding"),)
        self.weight = _torch_weight((out_channels, in_channels // groups) + self.kernel_size)
        self.bias = _torch_bias(out_channels, (in_channels // groups) * self.kernel_size[0]) \
            if bias else None

    def forward(self, x: Value) -> Value:
        padding = self.padding if isinstance(self.padding, str) else self.padding[0]
        return functional.conv1d(x, self.weight, self.bias, self.stride[0], padding,
                                 self.dilation[0], self.groups)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}")


class ConvTranspose2d(Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, ...],
                 stride: int | tuple[int, ...] = 1, padding: int | tuple[int, ...] | str = 0,
                 output_padding: int | tuple[int, ...] = 0, groups: int = 1, bias: bool = True,
                 dilation: int | tuple[int, ...] = 1, padding_mode: str = "zeros") -> None:
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"in_channels ({in_channels}) and out_channels ({out_channels}) "
                             f"must be divisible by groups ({groups})")
        if padding_mode != "zeros":
            raise ModelError("ConvTranspose2d supports only padding_mode='zeros'")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = _pair(stride, "stride")
        self.padding = _pair(padding, "padding")
        self.output_padding = _pair(output_padding, "output_padding")
        self.dilation = _pair(dilation, "dilation")
        # torch: weight (in, out/groups, kH, kW); its fan_in is computed from dim 1.
        self.weight = _torch_weight((in_channels, out_channels // groups) + self.kernel_size)
        fan_in = (out_channels // groups) * self.kernel_size[0] * self.kernel_size[1]
        self.bias = _torch_bias(out_channels, fan_in) if bias else None

    def forward(self, x: Value) -> Value:
        return x.builder.op("ConvTranspose", [x, _value(self.weight), _value(self.bias)],
                            kernel_shape=list(self.kernel_size), strides=list(self.stride),
                            pads=list(self.padding) * 2, dilations=list(self.dilation),
                            output_padding=list(self.output_padding), group=self.groups)


class Linear(Module):
    """y = x·Wᵀ + b with torch's W of shape (out, in): Gemm(transB=1) for 2-D input, else
    MatMul with the transposed weight, applied to the last dim."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = _torch_weight((out_features, in_features))
        self.bias = _torch_bias(out_features, in_features) if bias else None

    def forward(self, x: Value) -> Value:
        return functional.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class _BatchNorm(Module):
    _ranks: tuple = ()

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True) -> None:
        super().__init__()
        if momentum is None or not track_running_stats:
            raise ModelError("BatchNorm with momentum=None or track_running_stats=False is not "
                             "supported")
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine = affine
        self.weight = Parameter((num_features,), "ones") if affine else None
        self.bias = Parameter((num_features,), "zeros") if affine else None
        self.running_mean = Buffer((num_features,), "zeros")
        self.running_var = Buffer((num_features,), "ones")

    def _fixed_statistics(self, model_training: bool):
        frozen = self.affine and not (self.weight.requires_grad or self.bias.requires_grad)
        if frozen or (model_training and not self.training):
            return (self.running_mean, self.running_var)
        return ()

    def forward(self, x: Value) -> Value:
        if x.ndim not in self._ranks:
            raise ShapeError(f"{type(self).__name__} expects input of rank {self._ranks}, got "
                             f"shape {x.shape}")
        return functional.batch_norm(x, self.running_mean, self.running_var, self.weight,
                                     self.bias, self.training, self.momentum, self.eps)


class BatchNorm1d(_BatchNorm):
    _ranks = (2, 3)


class BatchNorm2d(_BatchNorm):
    _ranks = (4,)


class LayerNorm(Module):
    """torch.nn.LayerNorm: each sample normalised over its last ``len(normalized_shape)`` dims
    (which must be ``normalized_shape``), then ``weight·x̂ + bias``; traced as ONNX's
    LayerNormalization with axis = −len(normalized_shape). The same statistics in training and
    in eval mode, as in torch."""

    def __init__(self, normalized_shape: int | tuple[int, ...], eps: float = 1e-5,
                 elementwise_affine: bool = True, bias: bool = True) -> None:
        super().__init__()
        self.normalized_shape = _normalized_shape(normalized_shape)
        self.eps, self.elementwise_affine = eps, elementwise_affine
        self.weight = Parameter(self.normalized_shape, "ones") if elementwise_affine else None
        self.bias = Parameter(self.normalized_shape, "zeros") \
            if elementwise_affine and bias else None

    def forward(self, x: Value) -> Value:
        return functional.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return (f"{self.normalized_shape}, eps={self.eps}, "
                f"elementwise_affine={self.elementwise_affine}")


# ---- layers without parameters ---------------------------------------------------------------
class MaxPool2d(Module):
    def __init__(self, kernel_size: int | tuple[int, ...],
                 stride: int | tuple[int, ...] | None = None,
                 padding: int | tuple[int, ...] | str = 0, dilation: int | tuple[int, ...] = 1,
                 return_indices: bool = False, ceil_mode: bool = False) -> None:
        super().__init__()
        if return_indices:
            raise ModelError("MaxPool2d(return_indices=True) is not supported")
        self.kernel_size, self.stride = kernel_size, stride
        self.padding, self.dilation, self.ceil_mode = padding, dilation, ceil_mode

    def forward(self, x: Value) -> Value:
        return functional.max_pool2d(x, self.kernel_size, self.stride, self.padding,
                                     self.dilation, self.ceil_mode)


class AvgPool2d(Module):
    def __init__(self, kernel_size: int | tuple[int, ...],
                 stride: int | tuple[int, ...] | None = None,
                 padding: int | tuple[int, ...] | str = 0, ceil_mode: bool = False,
                 count_include_pad: bool = True, divisor_override: int | None = None) -> None:
        super().__init__()
        if divisor_override is not None:
            raise ModelError("AvgPool2d(divisor_override=...) is not supported")
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.ceil_mode, self.count_include_pad = ceil_mode, count_include_pad

    def forward(self, x: Value) -> Value:
        return functional.avg_pool2d(x, self.kernel_size, self.stride, self.padding,
                                     self.ceil_mode, self.count_include_pad)


class MaxPool1d(Module):
    """torch.nn.MaxPool1d on (N, C, L): a 1×k MaxPool of the height-1 view."""

    def __init__(self, kernel_size: int | tuple[int, ...],
                 stride: int | tuple[int, ...] | None = None,
                 padding: int | tuple[int, ...] | str = 0, dilation: int | tuple[int, ...] = 1,
                 return_indices: bool = False, ceil_mode: bool = False) -> None:
        super().__init__()
        if return_indices:
            raise ModelError("MaxPool1d(return_indices=True) is not supported")
        self.kernel_size, self.stride = kernel_size, stride
        self.padding, self.dilation, self.ceil_mode = padding, dilation, ceil_mode

    def forward(self, x: Value) -> Value:
        return functional.max_pool1d(x, self.kernel_size, self.stride, self.padding,
                                     self.dilation, self.ceil_mode)


class AvgPool1d(Module):
    """torch.nn.AvgPool1d on (N, C, L): a 1×k AveragePool of the height-1 view."""

    def __init__(self, kernel_size: int | tuple[int, ...],
                 stride: int | tuple[int, ...] | None = None,
                 padding: int | tuple[int, ...] | str = 0, ceil_mode: bool = False,
                 count_include_pad: bool = True) -> None:
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.ceil_mode, self.count_include_pad = ceil_mode, count_include_pad

    def forward(self, x: Value) -> Value:
        return functional.avg_pool1d(x, self.kernel_size, self.stride, self.padding,
                                     self.ceil_mode, self.count_include_pad)


class LocalResponseNorm(Module):
    """torch.nn.LocalResponseNorm: x / (k + α/size · Σ x² over ``size`` neighbouring
    channels)^β. Both torch and ONNX divide α by size; for odd sizes their windows agree and it
    lowers to ONNX's LRN (bias = k). For even sizes torch centres the window one channel
    earlier than ONNX does, so it lowers to the same sums written out (x², a channel-window
    Conv of ones, Log/Exp for the power)."""

    def __init__(self, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0) -> None:
        super().__init__()
        if int(size) < 1:
            raise ValueError(f"LocalResponseNorm size must be at least 1, got {size}")
        self.size, self.alpha, self.beta, self.k = int(size), alpha, beta, k

    def forward(self, x: Value) -> Value:
        return functional.local_response_norm(x, self.size, self.alpha, self.beta, self.k)

    def extra_repr(self) -> str:
        return f"{self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"


class AdaptiveAvgPool2d(Module):
    def __init__(self, output_size: int | tuple[int, ...]) -> None:
        super().__init__()
        self.output_size = output_size

    def forward(self, x: Value) -> Value:
        return functional.adaptive_avg_pool2d(x, self.output_size)


class Dropout(Module):
    def __init__(self, p: float = 0.5, inplace: bool = False) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability has to be between 0 and 1, got {p}")
        self.p = p

    def forward(self, x: Value) -> Value:
        return functional.dropout(x, self.p, self.training)


class ReLU(Module):
    def __init__(self, inplace: bool = False) -> None:
        super().__init__()

    def forward(self, x: Value) -> Value:
        return functional.relu(x)


class ReLU6(ReLU):
    def forward(self, x: Value) -> Value:
        return functional.relu6(x)


class LeakyReLU(Module):
    def __init__(self, negative_slope: float = 0.01, inplace: bool = False) -> None:
        super().__init__()
        self.negative_slope = negative_slope

    def forward(self, x: Value) -> Value:
        return functional.leaky_relu(x, self.negative_slope)


class ELU(Module):
    def __init__(self, alpha: float = 1.0, inplace: bool = False) -> None:
        super().__init__()
        self.alpha = alpha

    def forward(self, x: Value) -> Value:
        return functional.elu(x, self.alpha)


class SiLU(ReLU):
    def forward(self, x: Value) -> Value:
        return functional.silu(x)


class Sigmoid(Module):
    def forward(self, x: Value) -> Value:
        return functional.sigmoid(x)


class Tanh(Module):
    def forward(self, x: Value) -> Value:
        return functional.tanh(x)


class Softmax(Module):
    def __init__(self, dim: int | None = None) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: Value) -> Value:
        return functional.softmax(x, self.dim)


class LogSoftmax(Softmax):
    def forward(self, x: Value) -> Value:
        return functional.log_softmax(x, self.dim)


class Flatten(Module):
    def __init__(self, start_dim: int = 1, end_dim: int = -1) -> None:
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x: Value) -> Value:
        return functional.flatten(x, self.start_dim, self.end_dim)


class Identity(Module):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()

    def forward(self, x: Value) -> Value:
        return x.builder.identity(x)


# ---- functional ------------------------------------------------------------------------------
def _softmax_dim(x, dim):
    if dim is None:  # torch's legacy implicit choice
        return 0 if x.ndim in (0, 1, 3) else 1
    return int(dim)


def _pool_attrs(x, kernel_size, stride, padding, dilation=1, ceil_mode=False):
    k = _pair(kernel_size, "kernel_size")
    s = k if stride is None or stride == [] else _pair(stride, "stride")
    p = _pair(padding, "padding")
    if any(2 * pi > ki for pi, ki in zip(p, k)):
        raise ValueError(f"pad should be at most half of effective kernel size, got padding {p} "
                         f"for kernel {k}")
    return dict(kernel_shape=list(k), strides=list(s), pads=list(p) * 2,
                dilations=list(_pair(dilation, "dilation")), ceil_mode=int(bool(ceil_mode)))


def _flatten(x, start_dim=1, end_dim=-1):
    r = x.ndim
    s, e = start_dim % r if r else 0, end_dim % r if r else 0
    if s == 1 and e == r - 1:
        return x.builder.flatten(x, 1)
    if s > e:
        raise ValueError(f"flatten: start_dim {start_dim} comes after end_dim {end_dim}")
    tail = x.shape[e + 1:]
    if any(isinstance(d, str) for d in tail):
        raise ShapeError(f"flatten(start_dim={start_dim}, end_dim={end_dim}) needs static dims "
                         f"after end_dim, got shape {x.shape}")
    return x.builder.reshape(x, [0] * s + [-1] + [int(d) for d in tail])


def _linear(x, weight, bias=None):
    w, b = _value(weight), _value(bias)
    if x.ndim == 2:
        return x.builder.gemm(x, w, b, transB=1)
    y = x.builder.matmul(x, x.builder.transpose(w, (1, 0)))
    return y if b is None else y + b


def _batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False,
                momentum=0.1, eps=1e-5):
    b = x.builder
    c = x.shape[1]
    scale = _value(weight) if weight is not None else b.constant(np.ones(c, x.dtype))
    shift = _value(bias) if bias is not None else b.constant(np.zeros(c, x.dtype))
    mean, var = _value(running_mean), _value(running_var)
    ins = [x, scale, shift, mean, var]
    # ONNX's momentum weighs the old running value: torch's momentum m is ONNX's 1 − m.
    attrs = dict(epsilon=float(eps), momentum=float(1.0 - momentum))
    if not training:
        return b.op("BatchNormalization", ins, **attrs)
    y, new_mean, new_var = b.op("BatchNormalization", ins, num_outputs=3, training_mode=1,
                                running_var_unbiased=1, **attrs)   # torch's running variance
    updates = b.graph.metadata.setdefault("buffer_updates", {})
    updates[mean.name], updates[var.name] = new_mean.name, new_var.name
    return y


def _normalized_shape(normalized_shape) -> tuple:
    """torch's ``normalized_shape``: an int or a sequence of ints, as a tuple."""
    if isinstance(normalized_shape, (int, np.integer)):
        return (int(normalized_shape),)
    return tuple(int(d) for d in normalized_shape)


def _layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    shape = _normalized_shape(normalized_shape)
    k = len(shape)
    if k == 0 or x.ndim < k or tuple(x.shape[x.ndim - k:]) != shape:
        raise ShapeError(f"layer_norm: normalized_shape {list(shape)} expects input of shape "
                         f"[*, {', '.join(map(str, shape))}], got {x.shape}")
    b = x.builder
    scale = _value(weight) if weight is not None else \
        b.constant(np.ones(shape, x.dtype), dtype=x.dtype)
    ins = [x, scale] + ([_value(bias)] if bias is not None else [])
    return b.op("LayerNormalization", ins, axis=-k, epsilon=float(eps))


def _adaptive_avg_pool2d(x, output_size):
    if output_size not in (1, (1, 1), [1, 1]):
        raise ModelError(f"AdaptiveAvgPool2d supports only output size 1 (lowered to "
                         f"GlobalAveragePool), got {output_size!r}")
    return x.builder.global_avg_pool(x)


def _conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    w = _value(weight)
    k = tuple(w.shape[2:])
    d = _pair(dilation, "dilation")
    if padding == "same":
        total = [di * (ki - 1) for di, ki in zip(d, k)]
        pads = [t // 2 for t in total] + [t - t // 2 for t in total]
    elif padding == "valid":
        pads = [0, 0, 0, 0]
    else:
        pads = list(_pair(padding, "padding")) * 2
    return x.builder.conv(x, w, _value(bias), _pair(stride, "stride"), pads, d, groups,
                          kernel_shape=list(k))


def _single(v, what="") -> int:
    if isinstance(v, (tuple, list)):
        if len(v) != 1:
            raise ValueError(f"{what} expects an int or a 1-tuple, got {v!r}")
        return int(v[0])
    return int(v)


def _check_rank(x, rank, what):
    if x.ndim != rank:
        raise ShapeError(f"{what} expects input of rank {rank} (N, C, L), got shape {x.shape}")


_AXIS2 = np.array([2], np.int64)


def _as_2d(x):
    """(N, C, L) → (N, C, 1, L): the height-1 view the 2-D kernels run on."""
    return x.builder.op("Unsqueeze", [x, _AXIS2])


def _from_2d(y):
    return y.builder.op("Squeeze", [y, _AXIS2])


def _conv1d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    _check_rank(x, 3, "conv1d")
    w = _value(weight)
    k, d, s = int(w.shape[2]), _single(dilation, "dilation"), _single(stride, "stride")
    if padding == "same":
        total = d * (k - 1)
        pads = [0, total // 2, 0, total - total // 2]   # torch: the odd extra at the end
    elif padding == "valid":
        pads = [0, 0, 0, 0]
    else:
        p = _single(padding, "padding")
        pads = [0, p, 0, p]
    b = x.builder
    y = b.conv(_as_2d(x), b.op("Unsqueeze", [w, _AXIS2]), _value(bias), (1, s), pads, (1, d),
               groups, kernel_shape=[1, k])
    return _from_2d(y)


def _pool1d_attrs(x, kernel_size, stride, padding, dilation=1, ceil_mode=False):
    _check_rank(x, 3, "1-D pooling")
    k = _single(kernel_size, "kernel_size")
    s = k if stride is None or stride == [] else _single(stride, "stride")
    return _pool_attrs(x, (1, k), (1, s), (0, _single(padding, "padding")),
                       (1, _single(dilation, "dilation")), ceil_mode)


def _max_pool1d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    attrs = _pool1d_attrs(x, kernel_size, stride, padding, dilation, ceil_mode)
    return _from_2d(x.builder.op("MaxPool", [_as_2d(x)], **attrs))


def _avg_pool1d(x, kernel_size, stride=None, padding=0, ceil_mode=False,
                count_include_pad=True):
    attrs = _pool1d_attrs(x, kernel_size, stride, padding, 1, ceil_mode)
    del attrs["dilations"]
    return _from_2d(x.builder.op("AveragePool", [_as_2d(x)],
                                 count_include_pad=int(bool(count_include_pad)), **attrs))


def _local_response_norm(x, size, alpha=1e-4, beta=0.75, k=1.0):
    b, size = x.builder, int(size)
    if x.ndim < 3:
        raise ShapeError(f"local_response_norm expects input of rank ≥ 3 (N, C, …), got shape "
                         f"{x.shape}")
    if size % 2:
        return b.op("LRN", [x], size=size, alpha=float(alpha), beta=float(beta), bias=float(k))
    rest = x.shape[1:]
    if any(not isinstance(d, (int, np.integer)) for d in rest):
        raise ShapeError(f"local_response_norm with an even size needs static dims after the "
                         f"batch, got shape {x.shape}")
    c, m = int(rest[0]), int(np.prod(rest[1:], dtype=np.int64))
    # torch: window [c − size//2, c + (size−1)//2]; a Conv of ones over (N, 1, C, H·W) sums it.
    sq = b.reshape(x * x, [0, 1, c, m])
    ones = b.constant(np.ones((1, 1, size, 1), x.dtype))
    window = b.conv(sq, ones, None, (1, 1), [size // 2, 0, (size - 1) // 2, 0], (1, 1), 1,
                    kernel_shape=[size, 1])
    denom = b.reshape(window, [0] + [int(d) for d in rest]) * (float(alpha) / size) + float(k)
    return x * (denom.log() * (-float(beta))).exp()


def _reduce(op_type):
    def reduce(x, dim=None, keepdim=False):
        """torch.sum / torch.mean over ``dim`` (an int, a tuple, or None for every axis)."""
        dims = list(range(x.ndim)) if dim is None else \
            [int(d) for d in (dim if isinstance(dim, (tuple, list)) else (dim,))]
        return x.builder.op(op_type, [x, np.array(dims, np.int64)], keepdims=int(bool(keepdim)))
    return reduce


def _narrow(x, dim, start, length):
    """torch.narrow: ``length`` entries of axis ``dim`` from ``start`` (a Slice)."""
    return x.builder.op("Slice", [x, np.array([int(start)], np.int64),
                                  np.array([int(start) + int(length)], np.int64),
                                  np.array([int(dim)], np.int64)])


_GRID_SAMPLE_MODES = {"bilinear": "linear", "nearest": "nearest", "bicubic": "cubic"}


def _grid_sample(input, grid, mode="bilinear", padding_mode="zeros", align_corners=False):
    """torch.nn.functional.grid_sample as ONNX GridSample: ``mode`` bilinear (trilinear on a
    5-D input), nearest or bicubic (4-D only, as in torch); ``padding_mode`` zeros, border or
    reflection."""
    if mode not in _GRID_SAMPLE_MODES:
        raise ValueError(f"grid_sample: mode must be one of {tuple(_GRID_SAMPLE_MODES)}, got "
                         f"{mode!r}")
    if mode == "bicubic" and input.ndim != 4:
        raise ShapeError(f"grid_sample: mode 'bicubic' needs a 4-D input, got shape "
                         f"{input.shape}")
    return input.builder.op("GridSample", [input, grid], mode=_GRID_SAMPLE_MODES[mode],
                            padding_mode=str(padding_mode), align_corners=int(bool(align_corners)))


def _affine_grid(theta, size, align_corners=False):
    """torch.nn.functional.affine_grid as ONNX AffineGrid: theta (N, 2, 3) with size
    (N, C, H, W), or (N, 3, 4) with (N, C, D, H, W)."""
    b = theta.builder
    rest = np.array([int(d) for d in list(size)[1:]], np.int64)
    if isinstance(size[0], str):   # a symbolic batch: theta's, read at run time
        size = b.op("Concat", [b.op("Shape", [theta], start=0, end=1), rest], axis=0)
    else:
        size = np.concatenate([[int(size[0])], rest]).astype(np.int64)
    return b.op("AffineGrid", [theta, size], align_corners=int(bool(align_corners)))


functional = types.ModuleType(__name__ + ".functional",
                              "torch.nn.functional-style ops on traced graph values.")
functional.__dict__.update(
    relu=lambda x: x.builder.relu(x),
    relu6=lambda x: x.builder.clip(x, 0.0, 6.0),
    leaky_relu=lambda x, negative_slope=0.01: x.builder.leaky_relu(x, negative_slope),
    elu=lambda x, alpha=1.0: x.builder.elu(x, alpha),
    silu=lambda x: x.builder.silu(x),
    sigmoid=lambda x: x.builder.sigmoid(x),
    tanh=lambda x: x.builder.tanh(x),
    softmax=lambda x, dim=None: x.builder.softmax(x, _softmax_dim(x, dim)),
    log_softmax=lambda x, dim=None: x.builder.log_softmax(x, _softmax_dim(x, dim)),
    flatten=_flatten,
    concat=lambda tensors, dim=0: tensors[0].builder.concat(tensors, dim),
    cat=lambda tensors, dim=0: tensors[0].builder.concat(tensors, dim),
    add=lambda a, b: a + b,
    identity=lambda x: x.builder.identity(x),
    reshape=lambda x, shape: x.builder.reshape(x, shape),
    linear=_linear,
    conv2d=_conv2d,
    conv1d=_conv1d,
    max_pool1d=_max_pool1d,
    avg_pool1d=_avg_pool1d,
    local_response_norm=_local_response_norm,
    sum=_reduce("ReduceSum"),
    mean=_reduce("ReduceMean"),
    narrow=_narrow,
    batch_norm=_batch_norm,
    layer_norm=_layer_norm,
    max_pool2d=lambda x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False:
        x.builder.op("MaxPool", [x], **_pool_attrs(x, kernel_size, stride, padding, dilation,
                                                    ceil_mode)),
    avg_pool2d=lambda x, kernel_size, stride=None, padding=0, ceil_mode=False,
    count_include_pad=True: x.builder.op(
        "AveragePool", [x], count_include_pad=int(bool(count_include_pad)),
        **{k: v for k, v in _pool_attrs(x, kernel_size, stride, padding, 1,
                                        ceil_mode).items() if k != "dilations"}),
    adaptive_avg_pool2d=_adaptive_avg_pool2d,
    grid_sample=_grid_sample,
    affine_grid=_affine_grid,
    dropout=lambda x, p=0.5, training=True: x.builder.dropout(x, p, training),
    parameter=_value,
)
functional.__all__ = sorted(k for k in functional.__dict__ if not k.startswith("_"))
sys.modules[functional.__name__] = functional


# ---- losses (specs a Trainer appends to the graph; defined in runtime/losses.py) ----------------
# A custom loss is any Module whose forward(pred, target) returns a scalar (Trainer(loss=...));
# ``Loss`` is the base of the specs, for losses that append their own IR nodes (add_to_graph).
from .runtime.losses import (BCEWithLogitsLoss, CrossEntropyLoss, HuberLoss,  # noqa: E402
                             L1Loss, Loss, MSELoss)

__all__ += ["Loss", "CrossEntropyLoss", "BCEWithLogitsLoss", "MSELoss", "L1Loss", "HuberLoss"]

# ---- sequence modules ------------------------------------------------------------------------
# Embedding, RNN, GRU, LSTM, MultiheadAttention and ``functional.scaled_dot_product_attention``,
# with torch's arguments, parameter names, shapes and initialisation, so a torch ``state_dict``
# loads and gives torch's outputs.
#
# Each traces to ONNX ops: Embedding to ``Gather`` (trained through ``GatherGrad``, a
# scatter-add); a recurrent layer to one ONNX ``RNN``/``GRU``/``LSTM`` node per layer whose
# W/R/B are computed in the graph from the torch-shaped Parameters — torch's gate rows
# reordered by a ``Gather`` (torch LSTM i,f,g,o → ONNX i,o,f,c; GRU r,z,n → z,r,h; GRU with
# ``linear_before_reset=1``, torch's form), directions stacked by ``Concat`` — so gradients reach
# the Parameters and the graph folds to plain initializers for inference and export; attention to
# MatMul/Softmax/Transpose/Reshape.


def _axes(*axes) -> np.ndarray:
    return np.array(axes, np.int64)


# ---- Embedding -------------------------------------------------------------------------------
class _EmbeddingWeight(Parameter):
    """torch's Embedding init: N(0, 1), the ``padding_idx`` row zero."""

    def __init__(self, shape, padding_idx):
        super().__init__(shape, "normal")
        self.padding_idx = padding_idx

    def draw(self, rng):
        w = super().draw(rng)
        if self.padding_idx is not None:
            w[self.padding_idx] = 0
        return w


class Embedding(Module):
    """torch.nn.Embedding: row ``x[...]`` of ``weight`` (num_embeddings, embedding_dim) for each
    index, as ONNX Gather. Integer inputs are used as they are; float inputs (what a Trainer
    feeds) are cast to int64 (they must hold whole numbers). A negative index counts from the
    end (ONNX Gather's rule; torch refuses it); one outside [-num_embeddings, num_embeddings)
    is an InputError naming the node. ``padding_idx``: that
    row gets no gradient (and starts at zero), as in torch."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None,
                 max_norm: float | None = None, norm_type: float = 2.0,
                 scale_grad_by_freq: bool = False, sparse: bool = False, _weight: Any = None,
                 _freeze: bool = False) -> None:
        super().__init__()
        if max_norm is not None or scale_grad_by_freq or sparse:
            raise ModelError("Embedding(max_norm=, scale_grad_by_freq=, sparse=) is not "
                             "supported")
        n, d = int(num_embeddings), int(embedding_dim)
        if n < 1 or d < 1:
            raise ValueError(f"Embedding needs num_embeddings ≥ 1 and embedding_dim ≥ 1, got "
                             f"({num_embeddings}, {embedding_dim})")
        if padding_idx is not None:
            if not -n <= int(padding_idx) < n:
                raise ValueError(f"padding_idx must be within num_embeddings ({n}), got "
                                 f"{padding_idx}")
            padding_idx = int(padding_idx) % n
        self.num_embeddings, self.embedding_dim, self.padding_idx = n, d, padding_idx
        self.weight = _EmbeddingWeight((n, d), padding_idx)
        if _weight is not None:
            self.weight.data = np.array(_weight, np.float32).reshape(n, d)
        if _freeze:
            self.weight.requires_grad_(False)

    @classmethod
    def from_pretrained(cls, embeddings: Any, freeze: bool = True,
                        padding_idx: int | None = None) -> "Embedding":
        """torch's ``Embedding.from_pretrained``: the table given (frozen by default)."""
        e = np.asarray(embeddings, np.float32)
        if e.ndim != 2:
            raise ShapeError(f"Embedding.from_pretrained expects a 2-D table, got shape "
                             f"{e.shape}")
        return cls(e.shape[0], e.shape[1], padding_idx, _weight=e, _freeze=freeze)

    def forward(self, x: Value) -> Value:
        b = x.builder
        idx = x if x.dtype.kind in "iu" else b.op("Cast", [x], to="int64")
        return b.op("Gather", [_value(self.weight), idx], axis=0,
                    padding_idx=-1 if self.padding_idx is None else self.padding_idx)

    def extra_repr(self) -> str:
        pad = "" if self.padding_idx is None else f", padding_idx={self.padding_idx}"
        return f"{self.num_embeddings}, {self.embedding_dim}{pad}"


# ---- RNN, GRU, LSTM ----------------------------------------------------------------------------
class _RNNBase(Module):
    """What torch's RNN, GRU and LSTM share. ``_onnx_gates``: for each ONNX gate block, the
    torch block it is (the rows of W, R and the biases are reordered by a Gather)."""
    op_type = ""
    gates = 1
    _onnx_gates: tuple = (0,)

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0) -> None:
        super().__init__()
        if proj_size:
            raise ModelError(f"{type(self).__name__}(proj_size=...) is not supported")
        if int(hidden_size) < 1 or int(num_layers) < 1 or int(input_size) < 1:
            raise ValueError(f"{type(self).__name__}: input_size, hidden_size and num_layers "
                             f"must be positive, got {input_size}, {hidden_size}, {num_layers}")
        if not (isinstance(dropout, (int, float)) and 0 <= dropout <= 1) or \
                isinstance(dropout, bool):
            raise ValueError(f"dropout should be a number in range [0, 1] representing the "
                             f"probability of an element being zeroed, got {dropout!r}")
        self.input_size, self.hidden_size = int(input_size), int(hidden_size)
        self.num_layers, self.bias, self.batch_first = int(num_layers), bool(bias), \
            bool(batch_first)
        self.dropout, self.bidirectional = float(dropout), bool(bidirectional)
        D, G, H = self.directions, self.gates, self.hidden_size
        bound = 1 / math.sqrt(H)
        for layer in range(self.num_layers):
            size = self.input_size if layer == 0 else H * D
            for sfx in self._suffixes(layer):
                setattr(self, f"weight_ih{sfx}", Parameter((G * H, size), "uniform",
                                                           bound=bound))
                setattr(self, f"weight_hh{sfx}", Parameter((G * H, H), "uniform", bound=bound))
                if self.bias:
                    setattr(self, f"bias_ih{sfx}", Parameter((G * H,), "uniform", bound=bound))
                    setattr(self, f"bias_hh{sfx}", Parameter((G * H,), "uniform", bound=bound))

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    def _suffixes(self, layer):
        return [f"_l{layer}"] + ([f"_l{layer}_reverse"] if self.bidirectional else [])

    def _attrs(self) -> dict:
        return {}

    # the ONNX weights, computed from torch's ----------------------------------------------------
    def _onnx_rows(self, p, b):
        """Parameter ``p`` with its gate blocks in ONNX's order."""
        v = _value(p)
        if self._onnx_gates == tuple(range(self.gates)):
            return v
        H = self.hidden_size
        rows = np.concatenate([np.arange(g * H, (g + 1) * H) for g in self._onnx_gates])
        return b.op("Gather", [v, rows.astype(np.int64)], axis=0)

    def _stack(self, b, per_direction):
        """[D, …] from one value per direction (each gaining a leading axis)."""
        parts = [b.op("Unsqueeze", [v, _axes(0)]) for v in per_direction]
        return parts[0] if len(parts) == 1 else b.op("Concat", parts, axis=0)

    def _layer_weights(self, b, layer):
        W, R, B = [], [], []
        for sfx in self._suffixes(layer):
            W.append(self._onnx_rows(getattr(self, f"weight_ih{sfx}"), b))
            R.append(self._onnx_rows(getattr(self, f"weight_hh{sfx}"), b))
            if self.bias:
                B.append(b.op("Concat", [self._onnx_rows(getattr(self, f"bias_ih{sfx}"), b),
                                         self._onnx_rows(getattr(self, f"bias_hh{sfx}"), b)],
                              axis=0))
        return self._stack(b, W), self._stack(b, R), self._stack(b, B) if B else None

    # forward -----------------------------------------------------------------------------------
    def _check_input(self, x, states):
        name = type(self).__name__
        if x.ndim not in (2, 3):
            raise ShapeError(f"{name}: expected input of rank 2 (unbatched) or 3, got shape "
                             f"{x.shape}")
        if x.shape[-1] != self.input_size and not isinstance(x.shape[-1], str):
            raise ShapeError(f"{name}: input.size(-1) must be equal to input_size. Expected "
                             f"{self.input_size}, got {x.shape[-1]} (input shape {x.shape})")
        LD, H = self.num_layers * self.directions, self.hidden_size
        for k, h in enumerate(states):
            if h is None:
                continue
            want = (LD, H) if x.ndim == 2 else (LD, x.shape[0 if self.batch_first else 1], H)
            if h.ndim != len(want) or any(not isinstance(a, str) and not isinstance(w, str)
                                          and a != w for a, w in zip(h.shape, want)):
                what = "hx" if len(states) == 1 else ("h_0", "c_0")[k]
                raise ShapeError(f"{name}: expected {what} of shape {want}, got {h.shape}")

    def _run(self, x, states):
        """(output, final states) for input ``x`` and initial states (None: zeros)."""
        b = x.builder
        self._check_input(x, states)
        unbatched = x.ndim == 2
        if unbatched:
            x = b.op("Unsqueeze", [x, _axes(1)])
            states = [None if h is None else b.op("Unsqueeze", [h, _axes(1)]) for h in states]
        elif self.batch_first:
            x = b.transpose(x, (1, 0, 2))
        D, H = self.directions, self.hidden_size
        direction = "bidirectional" if self.bidirectional else "forward"
        finals = [[] for _ in states]
        for layer in range(self.num_layers):
            if layer and self.dropout:      # inference form in eval mode (a Trainer flips it)
                x = functional.dropout(x, self.dropout, self.training)
            W, R, B = self._layer_weights(b, layer)
            init = [None if h is None else b.op(
                "Slice", [h, _axes(layer * D), _axes((layer + 1) * D), _axes(0)]) for h in states]
            outs = b.op(self.op_type, [x, W, R, B, None] + init, num_outputs=1 + len(states),
                        hidden_size=H, direction=direction, **self._attrs())
            y = outs[0]
            for k, h in enumerate(outs[1:]):
                finals[k].append(h)
            # Y [T, D, N, H] → torch's [T, N, D·H]
            x = b.op("Squeeze", [y, _axes(1)]) if D == 1 else \
                b.reshape(b.transpose(y, (0, 2, 1, 3)), [0, 0, D * H])
        out = x
        hs = [f[0] if len(f) == 1 else b.op("Concat", f, axis=0) for f in finals]
        if unbatched:
            out = b.op("Squeeze", [out, _axes(1)])
            hs = [b.op("Squeeze", [h, _axes(1)]) for h in hs]
        elif self.batch_first:
            out = b.transpose(out, (1, 0, 2))
        return out, hs

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        for name, default in (("bias", True), ("batch_first", False), ("dropout", 0.0),
                              ("bidirectional", False)):
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)}"
        return s


class RNN(_RNNBase):
    """torch.nn.RNN: ``forward(input, hx=None)`` → ``(output, h_n)``; ``nonlinearity`` 'tanh'
    or 'relu'. Input (T, N, input_size), (N, T, input_size) with ``batch_first``, or
    (T, input_size) unbatched; h (num_layers·D, N, hidden_size)."""
    op_type = "RNN"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 nonlinearity: str = "tanh", bias: bool = True, batch_first: bool = False,
                 dropout: float = 0.0, bidirectional: bool = False) -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or "
                             f"'relu'.")
        self.nonlinearity = nonlinearity
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional)

    def _attrs(self):
        return {"activations": [self.nonlinearity.capitalize()] * self.directions}

    def forward(self, input: Value, hx: Any = None) -> tuple:
        out, (h,) = self._run(input, [_value(hx)])
        return out, h


class GRU(_RNNBase):
    """torch.nn.GRU: ``forward(input, hx=None)`` → ``(output, h_n)`` (ONNX GRU with
    ``linear_before_reset=1``, torch's cell)."""
    op_type = "GRU"
    gates = 3
    _onnx_gates = (1, 0, 2)      # ONNX z, r, h = torch blocks z(1), r(0), n(2)

    def _attrs(self):
        return {"linear_before_reset": 1}

    def forward(self, input: Value, hx: Any = None) -> tuple:
        out, (h,) = self._run(input, [_value(hx)])
        return out, h


class LSTM(_RNNBase):
    """torch.nn.LSTM: ``forward(input, (h_0, c_0)=None)`` → ``(output, (h_n, c_n))``."""
    op_type = "LSTM"
    gates = 4
    _onnx_gates = (0, 3, 1, 2)   # ONNX i, o, f, c = torch blocks i(0), o(3), f(1), g(2)

    def forward(self, input: Value, hx: Any = None) -> tuple:
        states: list = [None, None]
        if hx is None:
            pass
        elif isinstance(hx, (tuple, list)) and len(hx) == 2:
            states = [_value(hx[0]), _value(hx[1])]
        else:
            raise ModelError("LSTM: hx must be None or a pair (h_0, c_0)")
        out, (h, c) = self._run(input, states)
        return out, (h, c)


# ---- attention -----------------------------------------------------------------------------
def _additive_mask(b, mask, masked_when, like):
    """``mask`` as a float tensor added to the attention scores: a float mask as it is, a bool
    one as -inf where it equals ``masked_when`` and 0 elsewhere. numpy arrays become
    constants."""
    if mask is None:
        return None
    if isinstance(mask, np.ndarray):
        if mask.dtype == np.bool_:
            return b.constant(np.where(mask == masked_when, -np.inf, 0.0).astype(like.dtype))
        return b.constant(mask.astype(like.dtype))
    mask = _value(mask)
    if mask.dtype == np.bool_:
        cond = mask if masked_when else b.op("Not", [mask])
        return b.op("Where", [cond, np.array(-np.inf, like.dtype), np.array(0, like.dtype)])
    return mask


def _attention(q, k, v, mask, dropout_p, scale, training=True):
    """(weights·v, weights) with weights = softmax(q·kᵀ·scale + mask) through a Dropout node
    when ``dropout_p`` > 0 (its inference form unless ``training``; torch returns the dropped
    weights too): q (…, L, E), k (…, S, E), v (…, S, Ev)."""
    b = q.builder
    perm = list(range(k.ndim - 2)) + [k.ndim - 1, k.ndim - 2]
    scores = b.matmul(q * float(scale), b.transpose(k, perm))
    if mask is not None:
        scores = scores + mask
    weights = b.softmax(scores, -1)
    if dropout_p > 0:
        weights = functional.dropout(weights, dropout_p, training)
    return b.matmul(weights, v), weights


def _causal_mask(b, L, S, dtype):
    if isinstance(L, str) or isinstance(S, str):
        raise ShapeError(f"is_causal needs static sequence lengths, got L={L}, S={S}")
    keep = np.tril(np.ones((int(L), int(S)), bool))
    return b.constant(np.where(keep, 0.0, -np.inf).astype(dtype))


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0,
                                 is_causal=False, scale=None, enable_gqa=False):
    """torch.nn.functional.scaled_dot_product_attention: softmax(Q·Kᵀ·scale + mask)·V over the
    last two axes of query (…, L, E), key (…, S, E) and value (…, S, Ev), leading axes
    broadcast; ``scale`` defaults to 1/√E. ``attn_mask``: a bool mask (True: *may* attend, as
    torch) or a float one added to the scores, a graph value or a numpy array;
    ``is_causal``: position i attends to j ≤ i (needs static L and S). ``dropout_p`` drops
    attention weights whenever it is > 0, as torch's functional form does. A row with nothing
    to attend to gives NaN, as in torch."""
    if enable_gqa:
        raise ModelError("scaled_dot_product_attention(enable_gqa=True) is not supported")
    if is_causal and attn_mask is not None:
        raise ValueError("scaled_dot_product_attention: pass attn_mask or is_causal, not both")
    q, k, v = _value(query), _value(key), _value(value)
    b = q.builder
    E = q.shape[-1]
    if isinstance(E, str):
        raise ShapeError(f"scaled_dot_product_attention needs a static embedding size, got "
                         f"query shape {q.shape}")
    scale = 1.0 / math.sqrt(int(E)) if scale is None else float(scale)
    mask = _causal_mask(b, q.shape[-2], k.shape[-2], q.dtype) if is_causal else \
        _additive_mask(b, attn_mask, False, q)
    out, _ = _attention(q, k, v, mask, float(dropout_p), scale)
    return out


class MultiheadAttention(Module):
    """torch.nn.MultiheadAttention (``kdim = vdim = embed_dim``): ``forward(query, key, value,
    key_padding_mask=None, need_weights=True, attn_mask=None, average_attn_weights=True,
    is_causal=False)`` → ``(attn_output, attn_weights)``, attn_weights averaged over the heads
    (N, L, S) unless ``average_attn_weights=False`` (N, heads, L, S), None without
    ``need_weights``. Inputs (L, N, E), or (N, L, E) with ``batch_first``. Masks as torch: bool
    True (or a float added to the scores) where attention is *not* allowed; ``attn_mask``
    (L, S) or (N·heads, L, S), ``key_padding_mask`` (N, S). Parameters ``in_proj_weight``
    (3E, E), ``in_proj_bias`` (3E), ``out_proj.weight``, ``out_proj.bias``, initialised as
    torch does (Xavier-uniform in-projection, zero biases)."""

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 add_bias_kv: bool = False, add_zero_attn: bool = False, kdim: int | None = None,
                 vdim: int | None = None, batch_first: bool = False) -> None:
        super().__init__()
        E, h = int(embed_dim), int(num_heads)
        if E < 1 or h < 1 or E % h:
            raise ValueError(f"embed_dim ({embed_dim}) must be positive and divisible by "
                             f"num_heads ({num_heads})")
        if add_bias_kv or add_zero_attn or kdim not in (None, E) or vdim not in (None, E):
            raise ModelError("MultiheadAttention with add_bias_kv, add_zero_attn or kdim/vdim "
                             "other than embed_dim is not supported")
        self.embed_dim, self.num_heads, self.head_dim = E, h, E // h
        self.dropout, self.batch_first = float(dropout), bool(batch_first)
        self.in_proj_weight = Parameter((3 * E, E), "xavier_uniform")
        self.in_proj_bias = Parameter((3 * E,), "zeros") if bias else None
        self.out_proj = Linear(E, E, bias=bias)
        if bias:
            self.out_proj.bias = Parameter((E,), "zeros")

    def _project(self, x, part):
        """x·W_partᵀ + b_part, W_part = rows [part·E, (part+1)·E) of in_proj_weight."""
        b, E = x.builder, self.embed_dim
        lo, hi = _axes(part * E), _axes((part + 1) * E)
        w = b.op("Slice", [_value(self.in_proj_weight), lo, hi, _axes(0)])
        bias = None if self.in_proj_bias is None else \
            b.op("Slice", [_value(self.in_proj_bias), lo, hi, _axes(0)])
        return functional.linear(x, w, bias)

    def _heads(self, x):
        """(N, L, E) → (N, heads, L, head_dim)."""
        b = x.builder
        return b.transpose(b.reshape(x, [0, 0, self.num_heads, self.head_dim]), (0, 2, 1, 3))

    def forward(self, query: Value, key: Value, value: Value, key_padding_mask: Any = None,
                need_weights: bool = True, attn_mask: Any = None,
                average_attn_weights: bool = True, is_causal: bool = False) -> tuple:
        q, k, v = _value(query), _value(key), _value(value)
        b = q.builder
        for name, t in (("query", q), ("key", k), ("value", v)):
            if t.ndim != 3 or t.shape[-1] != self.embed_dim:
                raise ShapeError(f"MultiheadAttention: {name} must be (L, N, {self.embed_dim})"
                                 f" ({'batch first' if self.batch_first else 'sequence first'}"
                                 f"), got shape {t.shape}")
        if is_causal and attn_mask is None:
            raise ValueError("MultiheadAttention: is_causal needs attn_mask (as in torch)")
        if not self.batch_first:
            q, k, v = (b.transpose(t, (1, 0, 2)) for t in (q, k, v))
        mask = _additive_mask(b, attn_mask, True, q)
        if mask is not None and mask.ndim == 3:     # (N·heads, L, S) → (N, heads, L, S)
            mask = b.reshape(mask, [-1, self.num_heads, mask.shape[1], mask.shape[2]])
        pad = _additive_mask(b, key_padding_mask, True, q)
        if pad is not None:                         # (N, S) → (N, 1, 1, S)
            pad = b.op("Unsqueeze", [pad, _axes(1, 2)])
            mask = pad if mask is None else mask + pad
        hq, hk, hv = (self._heads(self._project(t, part)) for part, t in enumerate((q, k, v)))
        out, weights = _attention(hq, hk, hv, mask, self.dropout, 1.0 / math.sqrt(self.head_dim),
                                  self.training)
        out = b.reshape(b.transpose(out, (0, 2, 1, 3)), [0, 0, self.embed_dim])
        out = self.out_proj(out)
        if not self.batch_first:
            out = b.transpose(out, (1, 0, 2))
        if not need_weights:
            return out, None
        if average_attn_weights:
            weights = b.op("ReduceMean", [weights, _axes(1)], keepdims=0)
        return out, weights

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}"


functional.scaled_dot_product_attention = scaled_dot_product_attention
functional.__all__ = sorted(functional.__all__ + ["scaled_dot_product_attention"])
__all__ += ["Embedding", "RNN", "GRU", "LSTM", "MultiheadAttention"]


# ---- transfer learning: an imported ONNX model, cut at a named value ---------------------------
_BUILDER_ARGS = ("num_outputs", "name", "domain")   # attribute names Builder.op takes itself
_LISTED = 12    # value names an error message lists before eliding the rest


class OnnxModule(Module):
    """The part of an ONNX model (path, bytes or ``onnx.ModelProto``) that computes ``until``
    (None: the model's single output) from the data input ``input_name`` (None: the model's
    single non-initializer input) — transfer learning:

        backbone = nn.load_onnx("digits0-4.onnx", until="flatten/Flatten", freeze=True)
        model = nn.Sequential(backbone, nn.Linear(256, 5))       # a new head
        trainer = ember.Trainer(model, input_shape=(1, 8, 8))    # trains the head only

    ``forward`` writes the imported nodes from the data input up to the producer of ``until``
    into the graph being traced, as the file wrote them (inference semantics: the Trainer
    switches BatchNormalization and Dropout to their training forms itself). The float
    initializers feeding an op's ``parameter_inputs`` / ``buffer_inputs`` (the rule of
    ``Trainer.from_onnx``) become Parameters and Buffers named after the initializers (as
    state_dict keys: letters, digits, ``_`` and dots), so the cut model's state_dict keys are the
    exporting model's; other initializers (shapes, axes) stay constants.

    ``freeze=True`` freezes every parameter (``requires_grad_(False)``). A BatchNorm node whose
    scale and bias are both frozen, or every one while this module is in eval mode inside a model
    in training mode, keeps its running statistics in training (``frozen_statistics``)."""

    def __init__(self, src: str | os.PathLike | bytes, until: str | None = None,
                 freeze: bool = True, input_name: str | None = None) -> None:
        super().__init__()
        from .importers.onnx import load_onnx as import_onnx
        graph = import_onnx(src)
        self.input_name = _data_input(graph, input_name)
        self.input_type = graph.types[self.input_name]
        self.until = _output(graph, until)
        self._nodes = _cut(graph, self.input_name, self.until)
        self._constants, self._state = {}, {}    # initializer -> array / Parameter or Buffer
        self._batch_norms = []                   # (scale, bias, mean, var) initializer names
        self._collect_state(graph)
        if freeze:
            self.freeze()

    def _collect_state(self, graph: Graph):
        keys: set = set()
        for node in self._nodes:
            op = get_op(node.op_type, node.domain)
            for slots, kind in ((op.parameter_inputs, Parameter), (op.buffer_inputs, Buffer)):
                for i in slots:
                    name = node.input(i)
                    a = graph.initializers.get(name)
                    if a is None or name in self._state or np.asarray(a).dtype.kind != "f" \
                            or np.ndim(a) < 1:
                        continue
                    a = np.asarray(a)
                    p = kind(a, dtype=a.dtype)
                    self._state[name] = p
                    store = self._buffers if kind is Buffer else self._parameters
                    store[_state_key(name, keys)] = p
            if node.op_type == "BatchNormalization":
                self._batch_norms.append(tuple(node.input(i) for i in range(1, 5)))
        for node in self._nodes:
            for name in node.inputs:
                if name in graph.initializers and name not in self._state:
                    self._constants[name] = np.asarray(graph.initializers[name])
        self._nodes = [n for n in self._nodes if not self._fold_constant_node(n)]

    def _fold_constant_node(self, node) -> bool:
        """A Constant node's value (axes, pads, shapes torch writes as nodes) made a constant
        of the traced graph, so that the nodes reading it can be shape-inferred as traced."""
        if node.op_type != "Constant" or node.domain:
            return False
        op = get_op(node.op_type, node.domain)
        filled = Node(node.op_type, [], list(node.outputs), dict(node.attrs), node.name)
        fill_attrs(op, filled)
        (value,) = op.compute(filled, [])
        if value is None or not node.outputs:
            return False            # tracing it names what is wrong
        self._constants[node.outputs[0]] = np.asarray(value)
        return True

    def _fixed_statistics(self, model_training: bool):
        fixed = []
        for names in self._batch_norms:
            scale, bias, mean, var = (self._state.get(n) for n in names)
            if not (isinstance(mean, Buffer) and isinstance(var, Buffer)):
                continue
            affine = [p for p in (scale, bias) if isinstance(p, Parameter)]
            if (model_training and not self.training) or \
                    (affine and not any(p.requires_grad for p in affine)):
                fixed += [mean, var]
        return fixed

    def forward(self, x: Value) -> Value:
        self._check_input(x)
        b = x.builder
        env = {self.input_name: x}
        for name, p in self._state.items():
            env[name] = _value(p)
        for name, a in self._constants.items():
            env[name] = b.constant(a, dtype=a.dtype)
        for node in self._nodes:
            outs = list(node.outputs)
            while len(outs) > 1 and not outs[-1]:
                outs.pop()
            attrs = {k: v for k, v in node.attrs.items() if k not in _BUILDER_ARGS}
            b.scope.append(node.name)     # node names carry the imported node's name
            try:
                ys = b.op(node.op_type, [env[i] if i else None for i in node.inputs],
                          num_outputs=len(outs), domain=node.domain, **attrs)
            finally:
                b.scope.pop()
            b.graph.nodes[-1].attrs.update((k, v) for k, v in node.attrs.items()
                                           if k in _BUILDER_ARGS)
            env.update((o, y) for o, y in zip(outs, ys if len(outs) > 1 else (ys,)) if o)
        return env[self.until]

    def _check_input(self, x):
        want = self.input_type.shape
        if x.dtype != self.input_type.dtype or x.ndim != len(want) or any(
                isinstance(w, (int, np.integer)) and isinstance(d, (int, np.integer)) and w != d
                for w, d in zip(want[1:], x.shape[1:])):
            raise ShapeError(f"OnnxModule: input {self.input_name!r} of the imported model is "
                             f"{self.input_type}, got {x.dtype}[{'×'.join(map(str, x.shape))}]")

    def extra_repr(self) -> str:
        return (f"input={self.input_name!r}, until={self.until!r}, nodes={len(self._nodes)}, "
                f"params={self.num_parameters()}")


def load_onnx(src: str | os.PathLike | bytes, until: str | None = None, freeze: bool = True,
              input_name: str | None = None) -> OnnxModule:
    """``OnnxModule(src, until, freeze, input_name)``: an imported ONNX model, cut at value
    ``until``, as a Module to put in front of a new head."""
    return OnnxModule(src, until, freeze, input_name)


# ---- choosing the nodes ------------------------------------------------------------------------
def _data_input(graph: Graph, input_name):
    data = [n for n in graph.inputs if n not in graph.initializers]
    if input_name is None:
        if len(data) != 1:
            raise ModelError(f"load_onnx: the model has {len(data)} data inputs {data}; pass "
                             f"input_name= to choose the one the module's forward(x) feeds")
        return data[0]
    if input_name not in data:
        raise ModelError(f"load_onnx: input_name {input_name!r} is not a data input of the "
                         f"model (its data inputs: {data})")
    return input_name


def _output(graph: Graph, until):
    if until is not None:
        return str(until)
    if len(graph.outputs) != 1:
        raise ModelError(f"load_onnx: the model has {len(graph.outputs)} outputs "
                         f"{graph.outputs}; pass until= to name the value to cut at")
    return graph.outputs[0]


def _cut(graph: Graph, data: str, until: str) -> list:
    """The nodes that compute ``until`` from ``data`` and the initializers, in graph order."""
    producer = {o: n for n in graph.nodes for o in n.outputs if o}
    reachable = {data}
    for node in graph.nodes:
        if any(i in reachable for i in node.inputs if i):
            reachable.update(o for o in node.outputs if o)
    on_path = [o for n in graph.nodes for o in n.outputs if o in reachable]
    if until not in producer:
        what = ("is the data input itself" if until == data else
                "is an initializer (a constant), not a computed value"
                if until in graph.initializers else
                "is an input of the model, not a computed value" if until in graph.inputs else
                "names no value of the model")
        raise ModelError(f"load_onnx: until={until!r} {what}; {_nearby(until, on_path)}")
    if until not in reachable:
        raise ModelError(f"load_onnx: until={until!r} does not depend on the input {data!r}; "
                         f"{_nearby(until, on_path)}")
    needed, wanted = set(), [until]
    while wanted:
        node = producer.get(wanted.pop())
        if node is None or id(node) in needed:
            continue
        needed.add(id(node))
        for i in node.inputs:
            if not i or i == data or i in graph.initializers:
                continue
            if i not in producer:
                raise ModelError(f"load_onnx: until={until!r} needs {i!r}, an input of the "
                                 f"model other than {data!r}; pass input_name= or cut earlier")
            wanted.append(i)
    return [n for n in graph.nodes if id(n) in needed]


def _nearby(name: str, values: list) -> str:
    """Close matches to ``name``, then the values computed from the input, in order."""
    close = difflib.get_close_matches(name, values, n=3, cutoff=0.5)
    shown = values if len(values) <= 2 * _LISTED else \
        values[:_LISTED] + ["…"] + values[-_LISTED:]
    hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
    return f"{hint}values computed from the input, in order: {', '.join(shown)}"


_UNSAFE = re.compile(r"[^0-9A-Za-z_.]")


def _state_key(name: str, taken: set) -> str:
    """``name`` as a state_dict key: letters, digits, ``_`` and non-empty dotted parts."""
    key = ".".join(p for p in _UNSAFE.sub("_", name).split(".") if p) or "param"
    unique, k = key, 0
    while unique in taken:
        k += 1
        unique = f"{key}_{k}"
    taken.add(unique)
    return unique


__all__ += ["OnnxModule", "load_onnx"]

