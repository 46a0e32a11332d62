"""RNN, GRU and LSTM (``kernels/recurrent``): the whole time loop in one GIL-free call.

The fast path covers float32 with the default activations (sigmoid/tanh; RNN tanh) and every
other attribute (directions, layouts, ``sequence_lens``, initial states, peepholes, ``clip``,
``input_forget``, both ``linear_before_reset``). Other activations or dtypes run the numpy
reference of ``graph/ops/recurrent.py``.

At bind time R is split into blocks of hidden units (every gate of a block's units together,
so a thread finishes its block's epilogue without waiting for the others) and packed in the
block order the kernel reads; a constant R is packed once, a run-time one (training) on every
run through a precomputed gather map. The scratch holds the gates of every step (a training
graph's node writes them to its saved-gates output instead) and the state buffers, so ``run``
allocates nothing.

``RecurrentGrad`` (``kernels/recurrent_grad``) takes the same cases except ``clip``, reading
the forward's saved gates and Y.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...graph.ops import get_op
from ...graph.ops import recurrent as ops
from ...kernels import recurrent as kernel
from ...kernels import recurrent_grad as grad_kernel
from .registry import binds

CELLS = {"RNN": kernel.CELL_RNN, "GRU": kernel.CELL_GRU, "LSTM": kernel.CELL_LSTM}
# Batches at least this large keep the state packed as the GEMM's B panels (NR columns, so a
# batch of 3 computes NR/3 times the useful product, still faster than a row update on the
# AVX2 micro-kernel); smaller ones take the row-update product.
PANEL_MIN_BATCH = 3
ALIGN_FLOATS = 16   # 64 bytes: the packed panels' loads are aligned


@dataclass(frozen=True)
class Layout:
    """How one node's R is split and packed (shared by the scratch rule and the binder)."""
    T: int
    B: int
    H: int
    D: int
    G: int
    panels: bool
    nr: int              # state panel width (1: row-update product)
    parts: tuple         # gate index tuples computed together (GRU lbr=0: (z, r), (h))
    j0s: np.ndarray      # block boundaries over hidden units, int32
    part_rows: np.ndarray
    part_padded: np.ndarray
    mx_off: np.ndarray   # per (block, part), then the total
    part_off: np.ndarray  # per (direction, block, part) into the packed R
    packed_floats: int

    @property
    def work_floats(self) -> int:
        return int(kernel.recurrent_work_floats(self.B, self.H, self.nr, int(self.mx_off[-1])))

    @property
    def xw_floats(self) -> int:
        return self.T * self.B * self.D * self.G * self.H


def _round(n, m):
    return (n + m - 1) // m * m


def fast_layout(node, types, threads) -> Layout | None:
    """The kernel's layout for ``node``, or None when the numpy reference runs it."""
    op = get_op(node.op_type)
    at = node.attrs
    names = [t for i, t in enumerate(node.inputs) if t and i != 4]
    if any(types[t].dtype != np.float32 or not types[t].is_static for t in names):
        return None
    if node.input(4) and not types[node.input(4)].is_static:
        return None
    acts = ops.resolved_activations(node, op)
    defaults = [(n, None, None) for n in op.default_activations] * (len(acts) //
                                                                      len(op.default_activations))
    if [a[0] for a in acts] != [a[0] for a in defaults]:
        return None
    x = types[node.inputs[0]].shape
    T, B = (int(x[1]), int(x[0])) if at["layout"] else (int(x[0]), int(x[1]))
    D = 2 if at["direction"] == "bidirectional" else 1
    G, H = op.gates, int(at["hidden_size"])
    panels = B >= PANEL_MIN_BATCH
    mr, nr = int(kernel.gemm_mr()), int(kernel.gemm_nr()) if panels else 1
    ncols = _round(B, nr)
    work = B * G * H * H
    nt = threads if threads > 1 and work >= 32768 else 1
    unit = _round(-(-H // (2 * nt)), 8) if nt > 1 else H
    j0s = np.array(list(range(0, H, unit)) + [H], np.int32)
    parts = ((0, 1), (2,)) if node.op_type == "GRU" and not at["linear_before_reset"] else \
        (tuple(range(G)),)
    rows, padded, mx = [], [], [0]
    for k in range(len(j0s) - 1):
        u = int(j0s[k + 1] - j0s[k])
        for p in parts:
            r = len(p) * u
            rows.append(r)
            padded.append(_round(r, mr) if panels else r)
            mx.append(mx[-1] + _round(padded[-1] * ncols if panels else r * B, ALIGN_FLOATS))
    offs, total = [], 0
    for _ in range(D):
        for q in range(len(rows)):
            offs.append(total)
            total += _round(padded[q] * H, ALIGN_FLOATS)
    return Layout(T, B, H, D, G, panels, nr, parts, j0s, np.array(rows, np.int32),
                  np.array(padded, np.int32), np.array(mx, np.int64), np.array(offs, np.int64),
                  total)


def pack_map(lay: Layout) -> np.ndarray:
    """Index into R (flat ``[D, G·H, H]``) of every float of the packed R; -1 for padding."""
    H, mr = lay.H, int(kernel.gemm_mr())
    index = np.full(lay.packed_floats, -1, np.int64)
    nparts = len(lay.parts)
    for d in range(lay.D):
        for k in range(len(lay.j0s) - 1):
            j0, u = int(lay.j0s[k]), int(lay.j0s[k + 1] - lay.j0s[k])
            for p, gates in enumerate(lay.parts):
                q = k * nparts + p
                off = int(lay.part_off[d * len(lay.part_rows) + q])
                rows = int(lay.part_rows[q])
                r = np.arange(rows)
                src_row = np.array(gates)[r // u] * H + j0 + r % u
                ch = np.arange(H)
                src = (d * lay.G * H + src_row)[:, None] * H + ch[None, :]   # rows × H
                if lay.panels:
                    dst = off + (r // mr * H * mr + r % mr)[:, None] + (ch * mr)[None, :]
                else:
                    dst = off + r[:, None] + (ch * rows)[None, :]
                index[dst.reshape(-1)] = src.reshape(-1)
    return index


def _scratch(node, types, threads):
    lay = fast_layout(node, types, threads)
    if lay is None:
        return 0
    return 4 * (lay.xw_floats + lay.work_floats + 2 * ALIGN_FLOATS)


def _aligned(buf, n):
    skip = (-buf.__array_interface__["data"][0] // 4) % ALIGN_FLOATS
    return buf[skip:skip + n]


def _biases(node, B, lay):
    """(bias folded into the input projection [D·G·H], GRU lbr=1's Rb of h [D·H] or None)."""
    D, G, H = lay.D, lay.G, lay.H
    b = np.zeros((D, 2 * G * H), np.float32) if B is None else B.reshape(D, 2 * G * H)
    wb, rb = b[:, :G * H], b[:, G * H:].copy()
    rbh = None
    if node.op_type == "GRU" and node.attrs["linear_before_reset"]:
        rbh = rb[:, 2 * H:].copy()        # a copy: for D = 1 the slice is a contiguous view
        rb[:, 2 * H:] = 0.0
    return np.ascontiguousarray((wb + rb).reshape(-1), np.float32), rbh


@binds(ops.RNN, ops.GRU, ops.LSTM, scratch=_scratch, inplace=(), kernel="recurrent")
def bind_recurrent(node, ins, outs, scratch_buf, ctx):
    lay = fast_layout(node, ctx.types, ctx.threads)
    if lay is None:
        return None
    need = lay.xw_floats + lay.work_floats + 2 * ALIGN_FLOATS
    if scratch_buf is None or scratch_buf.size < need:
        return None
    ins = list(ins) + [None] * (8 - len(ins))
    outs = list(outs) + [None] * (4 - len(outs))
    X, W, R, B, lens, h0, c0, P = ins[:8]
    at = node.attrs
    saved = outs[get_op(node.op_type).saved_index()] if len(outs) > 2 + (
        node.op_type == "LSTM") else None
    xw = (saved if saved is not None else _aligned(scratch_buf, lay.xw_floats)).reshape(
        lay.T * lay.B, lay.D * lay.G * lay.H)
    work = _aligned(scratch_buf[lay.xw_floats + ALIGN_FLOATS:], lay.work_floats)
    x2 = X.reshape(lay.T * lay.B, X.shape[2])
    w2 = np.ascontiguousarray(W.reshape(lay.D * lay.G * lay.H, X.shape[2]))
    index = pack_map(lay)
    packed = _aligned(np.empty(lay.packed_floats + ALIGN_FLOATS, np.float32), lay.packed_floats)
    runtime_r, runtime_b = ctx.is_runtime(R), ctx.is_runtime(B)
    if not runtime_r:
        kernel.gather(np.ascontiguousarray(R).reshape(-1), index, packed)
        index = None
    # a bias computed in the graph is read at run time: at bind time its arena bytes are garbage
    bias, rbh = (None, None) if runtime_b else _biases(node, B, lay)
    cell = CELLS[node.op_type]
    clip = None if at["clip"] is None else float(at["clip"])
    lbr = int(at.get("linear_before_reset", 0))
    forget = int(at.get("input_forget", 0))
    Y, Yh, Yc = outs[0], outs[1], outs[2] if node.op_type == "LSTM" else None
    P = P if node.op_type == "LSTM" else None
    args = (lay.part_off, lay.part_rows, lay.part_padded, lay.mx_off, lay.j0s, work, Y, Yh, Yc,
            h0, c0 if node.op_type == "LSTM" else None, P)
    fn, T, threads = kernel.recurrent_forward, lay.T, ctx.threads
    tail = (lay.T, lay.B, lay.H, lay.D, at["direction"], int(at["layout"]), lay.nr,
            lay.panels, len(lay.parts), lbr, forget, clip, threads)

    def step():
        if index is not None:
            kernel.gather(R.reshape(-1), index, packed)
        b, r = _biases(node, B, lay) if runtime_b else (bias, rbh)
        checked = None
        if lens is not None:
            if lens.size and (lens.min() < 0 or lens.max() > T):
                ops.check_sequence_lens(node, lens, T, lay.B)
            checked = lens
        fn(cell, x2, w2, b, xw, packed, *args, r, checked, *tail)
    return step


def _grad_case(node, types):
    """(cell op, T, B, H, D) when ``kernels/recurrent_grad`` runs ``node``, else None."""
    op = get_op(node.attrs["cell"])
    at = node.attrs
    names = [t for i, t in enumerate(node.inputs) if t and i != 7]
    names += [o for o in node.outputs if o]
    if any(types[t].dtype != np.float32 or not types[t].is_static for t in names):
        return None
    if at["clip"] is not None or not node.input(11) or not node.input(12):
        return None
    acts = ops.resolved_activations(node, op)
    if any(a[0] != want for a, want in zip(acts, op.default_activations * 2)):
        return None
    x = types[node.inputs[3]].shape
    T, B = (int(x[1]), int(x[0])) if at["layout"] else (int(x[0]), int(x[1]))
    if T == 0 or B == 0 or int(x[2]) == 0:
        return None
    D = 2 if at["direction"] == "bidirectional" else 1
    return op, T, B, int(at["hidden_size"]), D


def _grad_scratch(node, types, threads):
    case = _grad_case(node, types)
    if case is None:
        return 0
    op, T, B, H, D = case
    lbr = int(node.attrs["linear_before_reset"])
    return 4 * int(grad_kernel.backward_work_floats(CELLS[op.op_type], T, B, H, D, lbr))


@binds(ops.RecurrentGrad, scratch=_grad_scratch, inplace=(), kernel="recurrent_grad")
def bind_recurrent_grad(node, ins, outs, scratch_buf, ctx):
    case = _grad_case(node, ctx.types)
    if case is None:
        return None
    op, T, B, H, D = case
    at = node.attrs
    cell, lbr = CELLS[op.op_type], int(at["linear_before_reset"])
    need = int(grad_kernel.backward_work_floats(cell, T, B, H, D, lbr))
    if scratch_buf is None or scratch_buf.size < need:
        return None
    ins = list(ins) + [None] * (13 - len(ins))
    outs = list(outs) + [None] * (7 - len(outs))
    dY, dYh, dYc, X, W, R, Bias, lens, h0, c0, P, Y, saved = ins[:13]
    lstm = op.op_type == "LSTM"
    x2 = X.reshape(T * B, X.shape[2])
    w2 = W.reshape(D * op.gates * H, X.shape[2])
    s2 = saved.reshape(T * B, D * op.gates * H)
    work = scratch_buf[:need]
    fn, threads = grad_kernel.recurrent_backward, ctx.threads
    lstm_only = (lambda a: a if lstm else None)
    head = (cell, x2, w2, R.reshape(-1), s2, Y, dY, dYh, lstm_only(dYc), h0, lstm_only(c0),
            lstm_only(P))
    tail = (outs[0], outs[1], outs[2], outs[3], outs[4], lstm_only(outs[5]), lstm_only(outs[6]),
            work, T, B, H, D, at["direction"], int(at["layout"]), lbr,
            int(at["input_forget"]), threads)
    GH = op.gates * H

    def recurrent_h_bias():
        """GRU linear_before_reset's Rb of the h gate, [D·H] (None for the other cells)."""
        if op.op_type != "GRU" or not lbr:
            return None
        if Bias is None:
            return np.zeros(D * H, np.float32)
        return np.ascontiguousarray(Bias.reshape(D, 2 * GH)[:, GH + 2 * H:]).reshape(-1)
    runtime_bias = ctx.is_runtime(Bias)
    fixed_rbh = None if runtime_bias else recurrent_h_bias()

    def step():
        rbh = recurrent_h_bias() if runtime_bias else fixed_rbh
        checked = None
        if lens is not None:
            if lens.size and (lens.min() < 0 or lens.max() > T):
                ops.check_sequence_lens(node, lens, T, B)
            checked = lens
        fn(*head, rbh, checked, *tail)
    return step
