"""RNN, GRU and LSTM: ONNX's recurrent layers.

Shapes (D = 2 when bidirectional, else 1; G gates per cell: RNN 1, GRU 3, LSTM 4):
X ``[seq, batch, input]`` (``layout=1``: ``[batch, seq, input]``); W ``[D, G·H, input]``;
R ``[D, G·H, H]``; B ``[D, 2·G·H]`` (the input biases, then the recurrent ones);
``sequence_lens`` ``[batch]`` int32; ``initial_h``/``initial_c`` ``[D, batch, H]`` (layout 1:
``[batch, D, H]``); P ``[D, 3·H]`` (LSTM peepholes i, o, f). Outputs Y ``[seq, D, batch, H]``
(layout 1: ``[batch, seq, D, H]``), Y_h and Y_c shaped as ``initial_h``; each optional.

Gate order is ONNX's: LSTM i, o, f, c; GRU z, r, h. ``sequence_lens`` follows onnxruntime: a
step at or past a sequence's length leaves its state unchanged and writes zeros into Y, so Y_h
is the state at the last valid step (the reverse direction starts at ``length - 1``), and a
sequence of length 0 ends in zeros (not its initial state).

``compute`` is the definition: a plain loop over time in numpy, in float64.
"""
from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..ir import TensorType
from .base import REQUIRED, Op, register

# name -> (function of (x, alpha, beta), default alpha, default beta); None: not used. ONNX
# names are matched without regard to case, as onnxruntime does.
ACTIVATION_FUNCTIONS = {
    "relu": (lambda x, a, b: np.maximum(x, 0.0), None, None),
    "tanh": (lambda x, a, b: np.tanh(x), None, None),
    "sigmoid": (lambda x, a, b: 0.5 * (1.0 + np.tanh(0.5 * x)), None, None),
    "affine": (lambda x, a, b: a * x + b, 1.0, 0.0),
    "leakyrelu": (lambda x, a, b: np.where(x >= 0, x, a * x), 0.01, None),
    "thresholdedrelu": (lambda x, a, b: np.where(x > a, x, 0.0), 1.0, None),
    "scaledtanh": (lambda x, a, b: a * np.tanh(b * x), 1.0, 1.0),
    "hardsigmoid": (lambda x, a, b: np.clip(a * x + b, 0.0, 1.0), 0.2, 0.5),
    "elu": (lambda x, a, b: np.where(x >= 0, x, a * np.expm1(np.minimum(x, 0.0))), 1.0, None),
    "softsign": (lambda x, a, b: x / (1.0 + np.abs(x)), None, None),
    "softplus": (lambda x, a, b: np.logaddexp(0.0, x), None, None),
}


def resolved_activations(node, cell) -> list:
    """One ``(name, alpha, beta)`` per activation of every direction (f, g[, h] per direction),
    the names lower-cased. ``activation_alpha``/``activation_beta`` are consumed in order by the
    activations that take them (onnxruntime's reading); a missing one is that activation's
    default. Raises ValueError with the reason for an unknown name or a wrong count."""
    per_direction = len(cell.default_activations)
    directions = 2 if node.attrs["direction"] == "bidirectional" else 1
    names = node.attrs["activations"] or list(cell.default_activations) * directions
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    if len(names) == per_direction and directions == 2:
        names = names * 2
    if len(names) != per_direction * directions:
        raise ValueError(f"expected {per_direction * directions} activations "
                         f"({per_direction} per direction), got {names}")
    alphas = list(node.attrs["activation_alpha"] or [])
    betas = list(node.attrs["activation_beta"] or [])
    out = []
    for name in names:
        key = name.lower()
        if key not in ACTIVATION_FUNCTIONS:
            raise ValueError(f"unknown activation {name!r}; ONNX allows "
                             f"{sorted(ACTIVATION_FUNCTIONS)}")
        _, da, db = ACTIVATION_FUNCTIONS[key]
        a = float(alphas.pop(0)) if da is not None and alphas else da
        b = float(betas.pop(0)) if db is not None and betas else db
        out.append((key, a, b))
    return out


def _apply(x, activation):
    name, a, b = activation
    return ACTIVATION_FUNCTIONS[name][0](x, a, b)


def check_sequence_lens(node, lens, seq_length: int, batch: int) -> np.ndarray:
    """``sequence_lens`` as int64, or InputError naming the node when a length is out of
    [0, seq_length] or the vector is not ``[batch]``."""
    lens = np.asarray(lens)
    if lens.shape != (batch,):
        raise InputError(f"{node}: sequence_lens has shape {lens.shape}, expected ({batch},)")
    bad = (lens < 0) | (lens > seq_length)
    if bad.any():
        i = int(np.argmax(bad))
        raise InputError(f"{node}: sequence_lens[{i}] = {int(lens[i])} is out of range: "
                         f"expected 0 ≤ length ≤ seq_length = {seq_length}")
    return lens.astype(np.int64)


class RecurrentOp(Op):
    """What the three cells share: attributes, slots, shape inference and the time loop. A cell
    says its gate count, default activations and ``step`` (one time step of one direction)."""
    gates = 1
    default_activations: tuple = ()
    has_cell_state = False
    num_inputs = (3, 6)
    num_outputs = (0, 2)
    parameter_inputs = (1, 2, 3)
    attrs = {"activation_alpha": [], "activation_beta": [], "activations": [], "clip": None,
             "direction": "forward", "hidden_size": REQUIRED, "layout": 0}

    # ---- checks and shapes ---------------------------------------------------------------------
    def infer(self, ctx):
        at = ctx.attrs
        ctx.check(at["direction"] in ("forward", "reverse", "bidirectional"),
                  f"direction must be forward, reverse or bidirectional, got {at['direction']!r}")
        ctx.check(at["layout"] in (0, 1), f"layout must be 0 or 1, got {at['layout']}")
        ctx.check(at["clip"] is None or float(at["clip"]) > 0,
                  f"clip must be positive, got {at['clip']}")
        try:
            resolved_activations(ctx.node, self)
        except ValueError as e:
            ctx.fail(str(e))
        D = 2 if at["direction"] == "bidirectional" else 1
        H, G = int(at["hidden_size"]), self.gates
        ctx.check(H > 0, f"hidden_size must be positive, got {H}")
        x = ctx.shape(0)
        dtype = ctx.dtype(0)
        ctx.check(dtype.kind == "f", f"X must be float16, float32 or float64, got {dtype}")
        ctx.check(len(x) == 3, f"X must be rank 3 ([seq, batch, input], layout {at['layout']}),"
                               f" got {x}")
        seq, batch = (x[1], x[0]) if at["layout"] else (x[0], x[1])
        size = x[2]
        expected = {1: (D, G * H, size), 2: (D, G * H, H), 3: (D, 2 * G * H),
                    5: (batch, D, H) if at["layout"] else (D, batch, H)}
        if self.has_cell_state:
            expected[6] = expected[5]
            expected[7] = (D, 3 * H)
        names = {1: "W", 2: "R", 3: "B", 4: "sequence_lens", 5: "initial_h", 6: "initial_c",
                 7: "P"}
        for i, want in expected.items():
            if i < ctx.n_inputs and ctx.has(i):
                got = ctx.shape(i)
                ctx.check(len(got) == len(want) and all(
                    isinstance(g, str) or isinstance(w, str) or int(g) == int(w)
                    for g, w in zip(got, want)),
                    f"{names[i]} has shape {got}, expected {want} for hidden_size {H}, "
                    f"direction {at['direction']}, {G} gate(s)")
                ctx.check(ctx.dtype(i) == dtype, f"{names[i]} is {ctx.dtype(i)}, X is {dtype}")
        if ctx.n_inputs > 4 and ctx.has(4):
            ctx.check(ctx.dtype(4) == np.int32, f"sequence_lens must be int32, got "
                                                f"{ctx.dtype(4)}")
            ctx.check(tuple(ctx.shape(4)) in ((batch,),) or len(ctx.shape(4)) == 1
                      and isinstance(ctx.shape(4)[0], str) or isinstance(batch, str),
                      f"sequence_lens has shape {ctx.shape(4)}, expected ({batch},)")
        y = (batch, seq, D, H) if at["layout"] else (seq, D, batch, H)
        state = expected[5]
        outs = [TensorType(dtype, y), TensorType(dtype, state)]
        if self.has_cell_state:
            outs.append(TensorType(dtype, state))
        return [t if name else None for t, name in zip(outs, ctx.node.outputs)]

    def macs(self, node, types):
        """Input projection and recurrent product: seq·batch·D·G·H·(input + H)."""
        x = types[node.inputs[0]].shape
        seq, batch = (x[1], x[0]) if node.attrs["layout"] else (x[0], x[1])
        D = 2 if node.attrs["direction"] == "bidirectional" else 1
        H = int(node.attrs["hidden_size"])
        return int(seq) * int(batch) * D * self.gates * H * (int(x[2]) + H)

    def reference_steps(self, node, types):
        """One Python step per time step and direction."""
        x = types[node.inputs[0]].shape
        D = 2 if node.attrs["direction"] == "bidirectional" else 1
        return D * int(x[1] if node.attrs["layout"] else x[0])

    # ---- the reference -------------------------------------------------------------------------
    def compute(self, node, inputs):
        at = node.attrs
        inputs = list(inputs) + [None] * (8 - len(inputs))
        dtype = inputs[0].dtype
        f64 = [None if a is None else np.asarray(a, np.float64) for a in inputs]
        X, W, R = f64[0], f64[1], f64[2]
        if at["layout"]:
            X = X.transpose(1, 0, 2)
        seq, batch, _ = X.shape
        D, GH, _ = W.shape
        H = GH // self.gates
        B = f64[3] if f64[3] is not None else np.zeros((D, 2 * GH))
        lens = np.full(batch, seq, np.int64) if inputs[4] is None else \
            check_sequence_lens(node, inputs[4], seq, batch)
        states = []
        for k in (5, 6)[:1 + self.has_cell_state]:
            s = f64[k] if f64[k] is not None else np.zeros((D, batch, H))
            states.append(s.transpose(1, 0, 2) if at["layout"] and f64[k] is not None else s)
        P = f64[7] if self.has_cell_state and f64[7] is not None else np.zeros((D, 3 * H))
        acts = resolved_activations(node, self)
        per = len(self.default_activations)
        clip = None if at["clip"] is None else float(at["clip"])
        Y = np.zeros((seq, D, batch, H))
        finals = [np.zeros((D, batch, H)) for _ in states]
        for d in range(D):
            reverse = at["direction"] == "reverse" or d == 1
            cell = dict(W=W[d], R=R[d], Wb=B[d, :GH], Rb=B[d, GH:], P=P[d], clip=clip,
                        acts=acts[d * per:(d + 1) * per], attrs=at)
            state = [s[d].copy() for s in states]
            for t in (range(seq - 1, -1, -1) if reverse else range(seq)):
                live = (t < lens)[:, None]
                new = self.step(cell, X[t], *state)
                state = [np.where(live, n, s) for n, s in zip(new, state)]
                Y[t, d] = np.where(live, state[0], 0.0)
            for f, s in zip(finals, state):   # a sequence of length 0 ends in zeros (onnxruntime)
                f[d] = np.where((lens > 0)[:, None], s, 0.0)
        if at["layout"]:
            Y = Y.transpose(2, 0, 1, 3)
            finals = [f.transpose(1, 0, 2) for f in finals]
        outs = [Y] + finals
        return [np.ascontiguousarray(o, dtype=dtype) for o in outs[:len(node.outputs)]]


def _clip(x, clip):
    return x if clip is None else np.clip(x, -clip, clip)


@register
class RNN(RecurrentOp):
    """Hₜ = f(Xₜ·Wᵀ + Hₜ₋₁·Rᵀ + Wb + Rb)."""
    gates = 1
    default_activations = ("tanh",)

    def step(self, c, x, h):
        a = x @ c["W"].T + h @ c["R"].T + c["Wb"] + c["Rb"]
        return [_apply(_clip(a, c["clip"]), c["acts"][0])]


@register
class GRU(RecurrentOp):
    """z = f(·), r = f(·), h̃ = g(Xₜ·Whᵀ + (r ⊙ Hₜ₋₁)·Rhᵀ + Rbh + Wbh) — or with
    ``linear_before_reset`` g(Xₜ·Whᵀ + r ⊙ (Hₜ₋₁·Rhᵀ + Rbh) + Wbh) — and
    Hₜ = (1 − z) ⊙ h̃ + z ⊙ Hₜ₋₁. Gate order z, r, h."""
    gates = 3
    default_activations = ("sigmoid", "tanh")
    attrs = {**RecurrentOp.attrs, "linear_before_reset": 0}

    def step(self, c, x, h):
        H = h.shape[1]
        W, R, Wb, Rb = c["W"], c["R"], c["Wb"], c["Rb"]
        f, g = c["acts"]
        xw = x @ W.T + Wb
        rz = _apply(_clip(xw[:, :2 * H] + h @ R[:2 * H].T + Rb[:2 * H], c["clip"]), f)
        z, r = rz[:, :H], rz[:, H:]
        if c["attrs"]["linear_before_reset"]:
            pre = xw[:, 2 * H:] + r * (h @ R[2 * H:].T + Rb[2 * H:])
        else:
            pre = xw[:, 2 * H:] + (r * h) @ R[2 * H:].T + Rb[2 * H:]
        hh = _apply(_clip(pre, c["clip"]), g)
        return [(1.0 - z) * hh + z * h]


@register
class LSTM(RecurrentOp):
    """i = f(· + Pi ⊙ Cₜ₋₁), f = f(· + Pf ⊙ Cₜ₋₁), c̃ = g(·), Cₜ = f ⊙ Cₜ₋₁ + i ⊙ c̃,
    o = f(· + Po ⊙ Cₜ), Hₜ = o ⊙ h(Cₜ); gate order i, o, f, c; ``input_forget`` couples
    f = 1 − i."""
    gates = 4
    default_activations = ("sigmoid", "tanh", "tanh")
    has_cell_state = True
    num_inputs = (3, 8)
    num_outputs = (0, 3)
    attrs = {**RecurrentOp.attrs, "input_forget": 0}

    def step(self, c, x, h, cs):
        H = h.shape[1]
        f, g, hf = c["acts"]
        P, clip = c["P"], c["clip"]
        a = x @ c["W"].T + h @ c["R"].T + c["Wb"] + c["Rb"]
        i = _apply(_clip(a[:, :H] + P[:H] * cs, clip), f)
        if c["attrs"]["input_forget"]:
            fg = 1.0 - i
        else:
            fg = _apply(_clip(a[:, 2 * H:3 * H] + P[2 * H:] * cs, clip), f)
        cc = _apply(_clip(a[:, 3 * H:], clip), g)
        c_new = fg * cs + i * cc
        o = _apply(_clip(a[:, H:2 * H] + P[H:2 * H] * c_new, clip), f)
        return [o * _apply(c_new, hf), c_new]
