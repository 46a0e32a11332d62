"""RNN, GRU and LSTM: ONNX's recurrent layers.

Shapes (D = 2 when bidirectional, else 1; G gates per cell: RNN 1, GRU 3, LSTM 4):
X ``[seq, batch, input]`` (``layout=1``: ``[batch, seq, input]``); W ``[D, G·H, input]``;
R ``[D, G·H, H]``; B ``[D, 2·G·H]`` (the input biases, then the recurrent ones);
``sequence_lens`` ``[batch]`` int32; ``initial_h``/``initial_c`` ``[D, batch, H]`` (layout 1:
``[batch, D, H]``); P ``[D, 3·H]`` (LSTM peepholes i, o, f). Outputs Y ``[seq, D, batch, H]``
(layout 1: ``[batch, seq, D, H]``), Y_h and Y_c shaped as ``initial_h``; each optional. A
training graph's node has one more output, ember's own (never in an ONNX file: export refuses
it): the activated gates of every step, ``[seq, batch, D·G·H]`` (layout 1: ``[batch, seq,
D·G·H]``), gate g of unit j of direction d at ``d·G·H + g·H + j`` (LSTM's f is 1 − i under
``input_forget``), zeros past a sequence's length — what ``RecurrentGrad``'s kernel reads
instead of running the forward again.

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
from .base import REQUIRED, TRAINING_DOMAIN, Op, get_op, register

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


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


# name -> derivative as a function of (x, alpha, beta): what backpropagation through time uses.
ACTIVATION_DERIVATIVES = {
    "relu": lambda x, a, b: (x > 0).astype(x.dtype),
    "tanh": lambda x, a, b: 1.0 - np.tanh(x) ** 2,
    "sigmoid": lambda x, a, b: _sigmoid(x) * (1.0 - _sigmoid(x)),
    "affine": lambda x, a, b: np.full_like(x, a),
    "leakyrelu": lambda x, a, b: np.where(x >= 0, 1.0, a),
    "thresholdedrelu": lambda x, a, b: (x > a).astype(x.dtype),
    "scaledtanh": lambda x, a, b: a * b * (1.0 - np.tanh(b * x) ** 2),
    "hardsigmoid": lambda x, a, b: np.where((a * x + b > 0) & (a * x + b < 1), a, 0.0),
    "elu": lambda x, a, b: np.where(x >= 0, 1.0, a * np.exp(np.minimum(x, 0.0))),
    "softsign": lambda x, a, b: 1.0 / (1.0 + np.abs(x)) ** 2,
    "softplus": lambda x, a, b: _sigmoid(x),
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


def _output(node, k: int) -> str:
    return node.outputs[k] if k < len(node.outputs) else ""


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
    num_outputs = (0, 2)   # ONNX's; a training graph's node has the saved gates after them
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
        outs.append(TensorType(dtype, (x[0], x[1], D * G * H)))
        return [t if name else None for t, name in zip(outs, ctx.node.outputs)]

    def saved_index(self) -> int:
        """The output index of the saved gates (training graphs only)."""
        return 2 + self.has_cell_state

    def export_refusal(self, node, graph):
        if _output(node, self.saved_index()):
            return "keeps its gates for backpropagation (a training graph)"
        return None

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
    def unroll(self, node, inputs) -> dict:
        """The forward in float64, time-major, keeping every step's cache for the backward:
        ``X`` ``[seq, batch, input]``, ``states`` (h[, c]) ``[D, batch, H]`` each, ``lens``,
        ``cells`` (one dict per direction), ``steps[d]`` = [(t, live, cache)] in the order
        run, ``Y`` ``[seq, D, batch, H]``, ``finals`` and ``saved`` ``[seq, batch, D·G·H]`` (the
        activated gates; zeros where a step is past its sequence's length)."""
        at = node.attrs
        inputs = list(inputs) + [None] * (8 - len(inputs))
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
        saved = np.zeros((seq, batch, D * GH))
        finals = [np.zeros((D, batch, H)) for _ in states]
        cells, steps = [], []
        for d in range(D):
            reverse = at["direction"] == "reverse" or d == 1
            cell = dict(W=W[d], R=R[d], Wb=B[d, :GH], Rb=B[d, GH:], P=P[d], clip=clip,
                        acts=acts[d * per:(d + 1) * per], attrs=at)
            cells.append(cell)
            steps.append([])
            state = [s[d].copy() for s in states]
            for t in (range(seq - 1, -1, -1) if reverse else range(seq)):
                live = (t < lens)[:, None]
                new, cache = self.step(cell, X[t], *state)
                steps[d].append((t, live, cache))
                state = [np.where(live, n, s) for n, s in zip(new, state)]
                Y[t, d] = np.where(live, state[0], 0.0)
                saved[t, :, d * GH:(d + 1) * GH] = np.where(live, cache["gates"], 0.0)
            for f, s in zip(finals, state):   # a sequence of length 0 ends in zeros (onnxruntime)
                f[d] = np.where((lens > 0)[:, None], s, 0.0)
        return dict(X=X, states=states, lens=lens, cells=cells, steps=steps, Y=Y,
                    finals=finals, saved=saved)

    def compute(self, node, inputs):
        dtype = np.asarray(inputs[0]).dtype
        run = self.unroll(node, inputs)
        Y, finals, saved = run["Y"], run["finals"], run["saved"]
        if node.attrs["layout"]:
            Y = Y.transpose(2, 0, 1, 3)
            finals = [f.transpose(1, 0, 2) for f in finals]
            saved = saved.transpose(1, 0, 2)
        outs = [Y] + finals + [saved]
        return [np.ascontiguousarray(o, dtype=dtype) for o in outs[:len(node.outputs)]]

    def backward(self, node, inputs, dY, dfinals) -> list:
        """Backpropagation through time in float64: (dX, dW, dR, dB, d initial_h,
        d initial_c, dP), shaped as the forward's inputs (``dfinals``: the gradients of Y_h
        and Y_c, None for none). A step past a sequence's length passes the state gradient
        through untouched; a sequence of length 0 ends in zeros, so its final states pass
        nothing back."""
        at = node.attrs
        run = self.unroll(node, inputs)
        X, lens = run["X"], run["lens"]
        seq, batch, size = X.shape
        D = len(run["cells"])
        GH = run["cells"][0]["W"].shape[0]
        H = GH // self.gates
        if dY is None:
            dY = np.zeros((seq, D, batch, H))
        else:
            dY = np.asarray(dY, np.float64)
            dY = dY.transpose(1, 2, 0, 3) if at["layout"] else dY
        nstate = 1 + self.has_cell_state
        dfin = []
        for k in range(nstate):
            g = dfinals[k] if k < len(dfinals) else None
            if g is None:
                dfin.append(np.zeros((D, batch, H)))
            else:
                g = np.asarray(g, np.float64)
                g = g.transpose(1, 0, 2) if at["layout"] else g
                dfin.append(np.where((lens > 0)[:, None], g, 0.0))   # length 0: Y_h is 0
        dX = np.zeros_like(X)
        dW, dR = np.zeros((D, GH, size)), np.zeros((D, GH, H))
        dB, dP = np.zeros((D, 2 * GH)), np.zeros((D, 3 * H))
        dinit = [np.zeros((D, batch, H)) for _ in range(nstate)]
        for d, cell in enumerate(run["cells"]):
            dstate = [f[d].copy() for f in dfin]
            for t, live, cache in reversed(run["steps"][d]):
                dstate[0] = dstate[0] + np.where(live, dY[t, d], 0.0)
                back = self.step_back(cell, cache, [np.where(live, s, 0.0) for s in dstate])
                dxw = back["dxw"]
                dX[t] += dxw @ cell["W"]
                dW[d] += dxw.T @ X[t]
                dB[d, :GH] += dxw.sum(axis=0)
                dB[d, GH:] += back["drb"].sum(axis=0)
                dR[d] += back["dR"]
                dP[d] += back.get("dP", 0.0)
                dstate = [np.where(live, p, s) for p, s in zip(back["dprev"], dstate)]
            for k in range(nstate):
                dinit[k][d] = dstate[k]
        if at["layout"]:
            dX = dX.transpose(1, 0, 2)
            dinit = [s.transpose(1, 0, 2) for s in dinit]
        return [dX, dW, dR, dB, *dinit, dP]

def _clip(x, clip):
    return x if clip is None else np.clip(x, -clip, clip)


def _activate(pre, c, k):
    """(activation k of the cell applied to the clipped ``pre``, its derivative w.r.t. ``pre``:
    zero where the clip cuts)."""
    name, a, b = c["acts"][k]
    x = _clip(pre, c["clip"])
    slope = ACTIVATION_DERIVATIVES[name](x, a, b)
    if c["clip"] is not None:
        slope = slope * (np.abs(pre) <= c["clip"])
    return ACTIVATION_FUNCTIONS[name][0](x, a, b), slope


def _activate_unclipped(pre, c, k):
    """LSTM's h(Cₜ): ONNX clips gate inputs, not the cell state."""
    return _activate(pre, dict(c, clip=None), k)


@register
class RNN(RecurrentOp):
    """Hₜ = f(Xₜ·Wᵀ + Hₜ₋₁·Rᵀ + Wb + Rb)."""
    gates = 1
    default_activations = ("tanh",)

    def step(self, c, x, h):
        y, slope = _activate(x @ c["W"].T + h @ c["R"].T + c["Wb"] + c["Rb"], c, 0)
        return [y], dict(gates=y, h=h, slope=slope)

    def step_back(self, c, k, dstate):
        da = dstate[0] * k["slope"]
        return dict(dxw=da, drb=da, dR=da.T @ k["h"], dprev=[da @ c["R"]])


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
        xw = x @ W.T + Wb
        rz, rz_slope = _activate(xw[:, :2 * H] + h @ R[:2 * H].T + Rb[:2 * H], c, 0)
        z, r = rz[:, :H], rz[:, H:]
        k = dict(h=h, z=z, r=r, rz_slope=rz_slope)
        if c["attrs"]["linear_before_reset"]:
            k["m"] = h @ R[2 * H:].T + Rb[2 * H:]
            pre = xw[:, 2 * H:] + r * k["m"]
        else:
            pre = xw[:, 2 * H:] + (r * h) @ R[2 * H:].T + Rb[2 * H:]
        hh, k["hh_slope"] = _activate(pre, c, 1)
        k["hh"] = hh
        k["gates"] = np.concatenate([z, r, hh], axis=1)
        return [(1.0 - k["z"]) * hh + z * h], k

    def step_back(self, c, k, dstate):
        dh = dstate[0]
        H = dh.shape[1]
        R = c["R"]
        h, z, r = k["h"], k["z"], k["r"]
        da_h = dh * (1.0 - z) * k["hh_slope"]
        dprev = dh * z
        dR = np.zeros_like(R)
        if c["attrs"]["linear_before_reset"]:
            dm = da_h * r
            dr = da_h * k["m"]
            dprev = dprev + dm @ R[2 * H:]
            dR[2 * H:] = dm.T @ h
            drb_h = dm
        else:
            drh = da_h @ R[2 * H:]
            dr = drh * h
            dprev = dprev + drh * r
            dR[2 * H:] = da_h.T @ (r * h)
            drb_h = da_h
        da_zr = np.concatenate([dh * (h - k["hh"]), dr], axis=1) * k["rz_slope"]
        dprev = dprev + da_zr @ R[:2 * H]
        dR[:2 * H] = da_zr.T @ h
        return dict(dxw=np.concatenate([da_zr, da_h], axis=1),
                    drb=np.concatenate([da_zr, drb_h], axis=1), dR=dR, dprev=[dprev])


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
        P = c["P"]
        a = x @ c["W"].T + h @ c["R"].T + c["Wb"] + c["Rb"]
        i, i_slope = _activate(a[:, :H] + P[:H] * cs, c, 0)
        if c["attrs"]["input_forget"]:
            fg, f_slope = 1.0 - i, np.zeros_like(i)
        else:
            fg, f_slope = _activate(a[:, 2 * H:3 * H] + P[2 * H:] * cs, c, 0)
        cc, cc_slope = _activate(a[:, 3 * H:], c, 1)
        c_new = fg * cs + i * cc
        o, o_slope = _activate(a[:, H:2 * H] + P[H:2 * H] * c_new, c, 0)
        hc, hc_slope = _activate_unclipped(c_new, c, 2)
        k = dict(h=h, c=cs, c_new=c_new, i=i, fg=fg, cc=cc, o=o, hc=hc, i_slope=i_slope,
                 f_slope=f_slope, cc_slope=cc_slope, o_slope=o_slope, hc_slope=hc_slope,
                 gates=np.concatenate([i, o, fg, cc], axis=1))
        return [o * hc, c_new], k

    def step_back(self, c, k, dstate):
        dh, dc = dstate
        P = c["P"]
        H = dh.shape[1]
        da_o = dh * k["hc"] * k["o_slope"]
        dcn = dc + dh * k["o"] * k["hc_slope"] + da_o * P[H:2 * H]
        dfg = dcn * k["c"]
        di = dcn * k["cc"] - (dfg if c["attrs"]["input_forget"] else 0.0)
        da_i = di * k["i_slope"]
        da_f = dfg * k["f_slope"]
        da_c = dcn * k["i"] * k["cc_slope"]
        dc_prev = dcn * k["fg"] + da_i * P[:H] + da_f * P[2 * H:]
        da = np.concatenate([da_i, da_o, da_f, da_c], axis=1)
        dP = np.concatenate([(da_i * k["c"]).sum(0), (da_o * k["c_new"]).sum(0),
                             (da_f * k["c"]).sum(0)])
        return dict(dxw=da, drb=da, dR=da.T @ k["h"], dP=dP,
                    dprev=[da @ c["R"], dc_prev])


# ---- gradients -------------------------------------------------------------------------------
GRAD_INPUTS = ("dY", "dY_h", "dY_c", "X", "W", "R", "B", "sequence_lens", "initial_h",
               "initial_c", "P", "Y", "saved")
GRAD_OUTPUTS = ("dX", "dW", "dR", "dB", "dinitial_h", "dinitial_c", "dP")
# The forward input each output of RecurrentGrad is the gradient of.
GRAD_OF_INPUT = (0, 1, 2, 3, 5, 6, 7)


@register
class RecurrentGrad(Op):
    """Backpropagation through time of one RNN, GRU or LSTM node (attribute ``cell``; the
    others are the forward node's). Inputs (``GRAD_INPUTS``, ``""`` for absent): the gradients
    of Y, Y_h, Y_c, then the forward's eight inputs, then its Y and saved gates (read by the
    kernel, which does not recompute the forward; the reference recomputes it in float64).
    Outputs (``GRAD_OUTPUTS``), each optional: the gradients of X, W, R, B, initial_h,
    initial_c and P, shaped as those inputs. The definition is ``RecurrentOp.backward``."""
    domain = TRAINING_DOMAIN
    num_inputs = (4, 13)
    num_outputs = (1, 7)
    attrs = {**LSTM.attrs, **GRU.attrs, "cell": REQUIRED}

    def cell(self, node) -> RecurrentOp:
        return get_op(node.attrs["cell"])

    def infer(self, ctx):
        ctx.check(ctx.attrs["cell"] in ("RNN", "GRU", "LSTM"),
                  f"cell must be RNN, GRU or LSTM, got {ctx.attrs['cell']!r}")
        x = ctx.type(3)
        for i in (0, 1, 2):
            if ctx.has(i):
                ctx.check(ctx.dtype(i) == x.dtype, f"{GRAD_INPUTS[i]} is {ctx.dtype(i)}, X is "
                                                   f"{x.dtype}")
        outs = []
        for k, i in enumerate(GRAD_OF_INPUT):
            name = _output(ctx.node, k)
            if not name:
                outs.append(None)
                continue
            ctx.check(ctx.has(3 + i), f"output {GRAD_OUTPUTS[k]} needs input "
                                      f"{GRAD_INPUTS[3 + i]}")
            outs.append(ctx.type(3 + i))
        return outs

    def macs(self, node, types):
        """Twice the forward's: the state and weight gradients."""
        x = types[node.inputs[3]].shape
        T, B = (x[1], x[0]) if node.attrs["layout"] else (x[0], x[1])
        D = 2 if node.attrs["direction"] == "bidirectional" else 1
        H = int(node.attrs["hidden_size"])
        return 2 * int(T) * int(B) * D * self.cell(node).gates * H * (int(x[2]) + H)

    def reference_steps(self, node, types):
        """The forward's steps, then as many backward."""
        x = types[node.inputs[3]].shape
        D = 2 if node.attrs["direction"] == "bidirectional" else 1
        return 2 * D * int(x[1] if node.attrs["layout"] else x[0])

    def compute(self, node, inputs):
        inputs = list(inputs) + [None] * (13 - len(inputs))
        dtype = inputs[3].dtype
        grads = self.cell(node).backward(node, inputs[3:11], inputs[0], inputs[1:3])
        return [np.ascontiguousarray(g, dtype=dtype) if name else None
                for g, name in zip(grads, node.outputs)]


def _recurrent_gradient(self, node, grads, g):
    """One RecurrentGrad node; the forward node gains its Y and saved-gates outputs."""
    y = g.output(0, "Y")
    saved = g.output(self.saved_index(), "saved_gates")
    grads = list(grads) + [None] * 3
    attrs = {k: node.attrs[k] for k in self.attrs}
    ins = [grads[0] or "", grads[1] or "", (grads[2] or "") if self.has_cell_state else ""]
    ins += [node.input(i) for i in range(8)] + [y, saved]
    used = [g.needs(i) for i in GRAD_OF_INPUT]
    outs = g.op("RecurrentGrad", ins, num_outputs=7, used=used, cell=node.op_type, **attrs)
    result = [None] * 8
    for k, i in enumerate(GRAD_OF_INPUT):
        result[i] = outs[k] or None
    return result[:len(node.inputs)]


RecurrentOp.gradient = _recurrent_gradient
