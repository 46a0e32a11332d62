"""Sequence modules of ``ember.nn``: Embedding, RNN, GRU, LSTM, MultiheadAttention and
``functional.scaled_dot_product_attention``, with torch's arguments, parameter names, shapes
and initialisation, so a torch ``state_dict`` loads and gives torch's outputs.

Each traces to ONNX ops: Embedding to ``Gather`` (trained through ``GatherGrad``, a
scatter-add); a recurrent layer to one ONNX ``RNN``/``GRU``/``LSTM`` node per layer whose
W/R/B are computed in the graph from the torch-shaped Parameters — torch's gate rows
reordered by a ``Gather`` (torch LSTM i,f,g,o → ONNX i,o,f,c; GRU r,z,n → z,r,h; GRU with
``linear_before_reset=1``, torch's form), directions stacked by ``Concat`` — so gradients reach
the Parameters and the graph folds to plain initializers for inference and export; attention to
MatMul/Softmax/Transpose/Reshape.
"""
from __future__ import annotations

import math

import numpy as np

from .graph.errors import ModelError, ShapeError
from .nn import Module, Parameter, _value, functional

__all__ = ["Embedding", "RNN", "GRU", "LSTM", "MultiheadAttention",
           "scaled_dot_product_attention"]


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
    feeds) are cast to int64 (they must hold whole numbers). An index outside
    [-num_embeddings, num_embeddings) is an InputError naming the node. ``padding_idx``: that
    row gets no gradient (and starts at zero), as in torch."""

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None, max_norm=None,
                 norm_type=2.0, scale_grad_by_freq=False, sparse=False, _weight=None,
                 _freeze=False):
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
    def from_pretrained(cls, embeddings, freeze=True, padding_idx=None):
        """torch's ``Embedding.from_pretrained``: the table given (frozen by default)."""
        e = np.asarray(embeddings, np.float32)
        if e.ndim != 2:
            raise ShapeError(f"Embedding.from_pretrained expects a 2-D table, got shape "
                             f"{e.shape}")
        return cls(e.shape[0], e.shape[1], padding_idx, _weight=e, _freeze=freeze)

    def forward(self, x):
        b = x.builder
        idx = x if x.dtype.kind in "iu" else b.op("Cast", [x], to="int64")
        return b.op("Gather", [_value(self.weight), idx], axis=0,
                    padding_idx=-1 if self.padding_idx is None else self.padding_idx)

    def extra_repr(self):
        pad = "" if self.padding_idx is None else f", padding_idx={self.padding_idx}"
        return f"{self.num_embeddings}, {self.embedding_dim}{pad}"


# ---- RNN, GRU, LSTM ----------------------------------------------------------------------------
class _RNNBase(Module):
    """What torch's RNN, GRU and LSTM share. ``_onnx_gates``: for each ONNX gate block, the
    torch block it is (the rows of W, R and the biases are reordered by a Gather)."""
    op_type = ""
    gates = 1
    _onnx_gates: tuple = (0,)

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0):
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
            if layer and self.dropout and self.training:
                x = functional.dropout(x, self.dropout, True)
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

    def extra_repr(self):
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

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or "
                             f"'relu'.")
        self.nonlinearity = nonlinearity
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional)

    def _attrs(self):
        return {"activations": [self.nonlinearity.capitalize()] * self.directions}

    def forward(self, input, hx=None):
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

    def forward(self, input, hx=None):
        out, (h,) = self._run(input, [_value(hx)])
        return out, h


class LSTM(_RNNBase):
    """torch.nn.LSTM: ``forward(input, (h_0, c_0)=None)`` → ``(output, (h_n, c_n))``."""
    op_type = "LSTM"
    gates = 4
    _onnx_gates = (0, 3, 1, 2)   # ONNX i, o, f, c = torch blocks i(0), o(3), f(1), g(2)

    def forward(self, input, hx=None):
        if hx is None:
            states = [None, None]
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


def _attention(q, k, v, mask, dropout_p, scale):
    """(weights·v, weights) with weights = softmax(q·kᵀ·scale + mask), dropped out when
    ``dropout_p`` > 0 (torch returns the dropped weights too): q (…, L, E), k (…, S, E),
    v (…, S, Ev)."""
    b = q.builder
    perm = list(range(k.ndim - 2)) + [k.ndim - 1, k.ndim - 2]
    scores = b.matmul(q * float(scale), b.transpose(k, perm))
    if mask is not None:
        scores = scores + mask
    weights = b.softmax(scores, -1)
    if dropout_p > 0:
        weights = functional.dropout(weights, dropout_p, True)
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

    def __init__(self, embed_dim, num_heads, dropout=0.0, bias=True, add_bias_kv=False,
                 add_zero_attn=False, kdim=None, vdim=None, batch_first=False):
        super().__init__()
        from .nn import Linear
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

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True,
                attn_mask=None, average_attn_weights=True, is_causal=False):
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
        heads = [self._heads(self._project(t, part)) for part, t in enumerate((q, k, v))]
        dropout = self.dropout if self.training else 0.0
        out, weights = _attention(*heads, mask, dropout, 1.0 / math.sqrt(self.head_dim))
        out = b.reshape(b.transpose(out, (0, 2, 1, 3)), [0, 0, self.embed_dim])
        out = self.out_proj(out)
        if not self.batch_first:
            out = b.transpose(out, (1, 0, 2))
        if not need_weights:
            return out, None
        if average_attn_weights:
            weights = b.op("ReduceMean", [weights, _axes(1)], keepdims=0)
        return out, weights

    def extra_repr(self):
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}"
