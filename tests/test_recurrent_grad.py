"""Backpropagation through time for RNN, GRU and LSTM (``RecurrentGrad``).

Oracles and tolerances:

* the gradient rule and the float64 reference (``RecurrentOp.backward``) against central
  finite differences of the forward's own reference, the gradient check of test_autodiff
  (relative error < 1e-7: float64, h = 1e-6);
* the float32 kernel (``kernels/recurrent_grad``) against that float64 reference on the same
  (float32-rounded) values: rtol 1e-4, atol 2e-5·(largest |gradient|) — each gradient is a
  float32 sum over seq·batch steps through a float32 forward (~1e-6 relative per step);
* torch.nn.RNN/GRU/LSTM with the same weights (gate orders mapped: ONNX iofc / zrh, torch
  ifgo / rzn; torch's GRU is ``linear_before_reset=1``), float32 on both sides: the same
  tolerance;
* ``ember.Trainer.from_onnx`` on an ONNX LSTM or GRU + Gemm head against torch doing the same SGD steps:
  losses and parameters to rtol 1e-4, atol 1e-5.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import ember
from ember.graph.autodiff import backward
from ember.graph.builder import Builder
from ember.graph.errors import InputError
from ember.runtime.session import Session
from test_autodiff import gradcheck, run

GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
TORCH_ORDER = {"RNN": [0], "GRU": [1, 0, 2], "LSTM": [0, 3, 1, 2]}  # ONNX gate k = torch's [k]


def values(op, T, B, I, H, direction="forward", layout=0, initial=False, peephole=False,
           seed=0):
    """Random inputs of one node, float32-representable float64, by input name."""
    rng = np.random.default_rng(seed)
    D, G = (2 if direction == "bidirectional" else 1), GATES[op]
    v = {"X": rng.standard_normal((B, T, I) if layout else (T, B, I)),
         "W": rng.uniform(-0.6, 0.6, (D, G * H, I)), "R": rng.uniform(-0.6, 0.6, (D, G * H, H)),
         "B": rng.uniform(-0.4, 0.4, (D, 2 * G * H))}
    state = (B, D, H) if layout else (D, B, H)
    if initial:
        v["initial_h"] = rng.uniform(-0.8, 0.8, state)
        if op == "LSTM":
            v["initial_c"] = rng.uniform(-0.8, 0.8, state)
    if peephole:
        v["P"] = rng.uniform(-0.5, 0.5, (D, 3 * H))
    return {k: a.astype(np.float32).astype(np.float64) for k, a in v.items()}


def build(op, vals, H, dtype="float64", lens=None, loss_weights=None, seed=1, **attrs):
    """(graph, wrt, feeds): one node on ``vals`` (X a graph input, the others parameters), and
    the loss Σ Y·w₀ + Σ Y_h·w₁ (+ Σ Y_c·w₂) with fixed random weights (``loss_weights`` to give
    them)."""
    b = Builder("bptt", seed=seed)
    rng = np.random.default_rng(seed)
    p = {k: b.parameter(k, a.shape, init=a.astype(dtype), dtype=dtype) for k, a in vals.items()
         if k != "X"}
    p["X"] = b.input("X", vals["X"].shape, dtype=dtype)
    ins = [p["X"], p["W"], p["R"], p["B"],
           None if lens is None else b.constant(np.asarray(lens, np.int32)),
           p.get("initial_h"), p.get("initial_c"), p.get("P")]
    if op != "LSTM":
        ins = ins[:6]
    outs = b.op(op, ins, num_outputs=2 + (op == "LSTM"), hidden_size=H, **attrs)
    loss = None
    for k, o in enumerate(outs):
        w = rng.uniform(-1.5, 1.5, o.shape) if loss_weights is None else loss_weights[k]
        term = b.op("ReduceSum", [o * b.constant(w, dtype=dtype)], keepdims=0)
        loss = term if loss is None else loss + term
    b.output(loss, "loss")
    return b.build(), list(vals), {"X": vals["X"].astype(dtype)}


def kernel_gradients(graph, wrt, feeds, threads):
    """The gradients through a compiled Session, and whether each recurrent node (forward and
    RecurrentGrad) ran its kernel."""
    new, grads = backward(graph, "loss", wrt)
    sess = Session(new, threads=threads, optimize=False)
    got = dict(zip(new.outputs, sess.run(None, feeds)))
    ran = [row.kernel for row in sess.profile(feeds, runs=1, warmup=0)
           if row.op_type in ("RecurrentGrad", *GATES)]
    return {k: got[grads[k]] for k in wrt}, ran


def close(got, want, rtol=1e-4, atol_rel=2e-5):
    want = np.asarray(want, np.float64)
    scale = max(float(np.abs(want).max()), 1e-30)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol_rel * scale)


# ---- the rule and the reference against finite differences -------------------------------------
FD_CASES = [  # op, direction, layout, lens, initial, peephole, attrs
    ("RNN", "forward", 0, None, False, False, {}),
    ("RNN", "bidirectional", 1, [3, 0], True, False, {}),
    ("RNN", "reverse", 0, None, True, False, {"activations": ["Relu"]}),
    ("GRU", "forward", 0, None, True, False, {"linear_before_reset": 1}),
    ("GRU", "bidirectional", 0, [2, 3], True, False, {"linear_before_reset": 1}),
    ("GRU", "reverse", 1, [1, 3], False, False, {}),
    ("GRU", "forward", 0, None, False, False, {"clip": 0.6}),
    ("LSTM", "forward", 0, None, True, False, {}),
    ("LSTM", "bidirectional", 1, [3, 2], True, True, {}),
    ("LSTM", "reverse", 0, None, True, True, {"input_forget": 1}),
    ("LSTM", "forward", 1, [0, 3], True, False,
     {"activations": ["HardSigmoid", "Softsign", "Elu"], "activation_alpha": [0.3, 0.9],
      "activation_beta": [0.45]}),
]


@pytest.mark.parametrize("op,direction,layout,lens,initial,peephole,attrs", FD_CASES)
def test_reference_gradient_matches_finite_differences(op, direction, layout, lens, initial,
                                                         peephole, attrs):
    vals = values(op, 3, 2, 2, 2, direction, layout, initial, peephole, seed=len(op) + layout)
    graph, wrt, feeds = build(op, vals, 2, lens=lens, direction=direction, layout=layout,
                              **attrs)
    gradcheck(graph, "loss", wrt, feeds)


# ---- the kernel against the reference ---------------------------------------------------------
KERNEL_CASES = [  # op, T, B, I, H, direction, layout, lens, initial, peephole, attrs, threads
    ("RNN", 4, 3, 5, 7, "bidirectional", 0, [4, 2, 0], True, False, {}, 1),
    ("RNN", 5, 1, 3, 13, "forward", 1, None, False, False, {}, 2),
    ("GRU", 4, 5, 6, 9, "bidirectional", 1, [4, 1, 3, 4, 2], True, False,
     {"linear_before_reset": 1}, 2),
    ("GRU", 5, 2, 4, 11, "reverse", 0, None, True, False, {"linear_before_reset": 1}, 1),
    ("GRU", 4, 17, 3, 8, "forward", 0, [4] * 8 + [2] * 9, True, False, {}, 2),
    ("GRU", 3, 4, 5, 6, "bidirectional", 1, None, False, False, {}, 1),
    ("LSTM", 4, 3, 5, 7, "bidirectional", 0, [2, 0, 3], True, True, {}, 2),
    ("LSTM", 6, 16, 8, 40, "forward", 1, None, True, False, {}, 2),
    ("LSTM", 4, 2, 3, 5, "reverse", 1, [1, 4], True, True, {"input_forget": 1}, 1),
]


@pytest.mark.parametrize("op,T,B,I,H,direction,layout,lens,initial,peephole,attrs,threads",
                         KERNEL_CASES)
def test_kernel_matches_reference(op, T, B, I, H, direction, layout, lens, initial, peephole,
                                  attrs, threads):
    vals = values(op, T, B, I, H, direction, layout, initial, peephole, seed=T + B + H)
    kw = dict(lens=lens, direction=direction, layout=layout, **attrs)
    g64, wrt, feeds = build(op, vals, H, **kw)
    new, grads = backward(g64, "loss", wrt)
    want = run(new, feeds)
    g32, _, feeds32 = build(op, vals, H, dtype="float32", **kw)
    got, ran = kernel_gradients(g32, wrt, feeds32, threads)
    assert ran and all(ran), "the recurrent kernels did not run"
    for name in wrt:
        assert got[name].dtype == np.float32
        close(got[name], want[grads[name]])


# ---- torch ------------------------------------------------------------------------------------
def torch_layer(op, I, H, direction, layout, nonlinearity="tanh"):
    kw = dict(bidirectional=direction == "bidirectional", batch_first=bool(layout))
    if op == "RNN":
        return torch.nn.RNN(I, H, nonlinearity=nonlinearity, **kw)
    return getattr(torch.nn, op)(I, H, **kw)


def onnx_weights(op, layer, H, directions):
    """ONNX W, R, B of a torch layer: gates reordered, biases concatenated."""
    order = TORCH_ORDER[op]
    rows = np.concatenate([np.arange(k * H, (k + 1) * H) for k in order])
    W, R, B = [], [], []
    for suffix in ["", "_reverse"][:directions]:
        get = lambda n: getattr(layer, f"{n}_l0{suffix}").detach().numpy()[rows]
        W.append(get("weight_ih"))
        R.append(get("weight_hh"))
        B.append(np.concatenate([get("bias_ih"), get("bias_hh")]))
    return np.stack(W), np.stack(R), np.stack(B), rows


@pytest.mark.parametrize("op,direction,layout,initial,nonlinearity", [
    ("LSTM", "forward", 0, True, "tanh"), ("LSTM", "bidirectional", 1, False, "tanh"),
    ("GRU", "forward", 1, True, "tanh"), ("GRU", "bidirectional", 0, True, "tanh"),
    ("RNN", "bidirectional", 0, True, "tanh"), ("RNN", "forward", 1, False, "relu")])
def test_matches_torch(op, direction, layout, initial, nonlinearity):
    T, B, I, H = 5, 4, 6, 8
    D = 2 if direction == "bidirectional" else 1
    torch.manual_seed(3)
    layer = torch_layer(op, I, H, direction, layout, nonlinearity)
    W, R, Bias, rows = onnx_weights(op, layer, H, D)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((B, T, I) if layout else (T, B, I)).astype(np.float32)
    state = [rng.uniform(-1, 1, (D, B, H)).astype(np.float32) for _ in range(1 + (op == "LSTM"))]
    wy = rng.uniform(-1, 1, (B, T, D, H) if layout else (T, D, B, H)).astype(np.float32)
    ws = [rng.uniform(-1, 1, (D, B, H)).astype(np.float32) for _ in state]

    xt = torch.tensor(x, requires_grad=True)
    st = [torch.tensor(s, requires_grad=True) for s in state]
    hx = (tuple(st) if op == "LSTM" else st[0]) if initial else None
    y, finals = layer(xt, hx)
    finals = finals if op == "LSTM" else (finals,)
    ty = wy.reshape(B, T, D * H) if layout else wy.transpose(0, 2, 1, 3).reshape(T, B, D * H)
    loss = (y * torch.tensor(ty)).sum() + sum((f * torch.tensor(w)).sum()
                                              for f, w in zip(finals, ws))
    loss.backward()

    vals = {"X": x, "W": W, "R": R, "B": Bias}
    state_layout = (lambda a: a.transpose(1, 0, 2)) if layout else (lambda a: a)
    if initial:
        vals["initial_h"] = state_layout(state[0])
        if op == "LSTM":
            vals["initial_c"] = state_layout(state[1])
    attrs = {"linear_before_reset": 1} if op == "GRU" else {}
    if op == "RNN":
        attrs["activations"] = [nonlinearity.capitalize()] * D
    graph, wrt, feeds = build(op, {k: np.asarray(v, np.float64) for k, v in vals.items()}, H,
                              dtype="float32", loss_weights=[wy] + [state_layout(w) for w in ws],
                              direction=direction, layout=layout, **attrs)
    got, ran = kernel_gradients(graph, wrt, feeds, threads=2)
    assert all(ran) == (nonlinearity != "relu")   # the kernels take sigmoid/tanh cells
    close(got["X"], xt.grad.numpy())
    for suffix_index, suffix in enumerate(["", "_reverse"][:D]):
        grad = lambda n: getattr(layer, f"{n}_l0{suffix}").grad.numpy()[rows]
        close(got["W"][suffix_index], grad("weight_ih"))
        close(got["R"][suffix_index], grad("weight_hh"))
        close(got["B"][suffix_index], np.concatenate([grad("bias_ih"), grad("bias_hh")]))
    if initial:
        for name, s in zip(("initial_h", "initial_c"), st):
            close(got[name], state_layout(s.grad.numpy()))


# ---- the public training path ----------------------------------------------------------------
def head_model(path, op, layer, head, T, I, H):
    """An ONNX LSTM/GRU (layout 1) whose Y_h feeds a Gemm head, with torch's weights."""
    W, R, B, _ = onnx_weights(op, layer, H, 1)
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for a, n in (
        (W, "W"), (R, "R"), (B, "B"), (head.weight.detach().numpy(), "hw"),
        (head.bias.detach().numpy(), "hb"))]
    attrs = {"linear_before_reset": 1} if op == "GRU" else {}
    nodes = [helper.make_node(op, ["X", "W", "R", "B"], ["", "Yh"], hidden_size=H, layout=1,
                              name="rnn", **attrs),
             helper.make_node("Flatten", ["Yh"], ["h"], axis=1),
             helper.make_node("Gemm", ["h", "hw", "hb"], ["out"], transB=1, name="head")]
    graph = helper.make_graph(
        nodes, "rnn_head", [helper.make_tensor_value_info("X", TensorProto.FLOAT,
                                                          ["batch", T, I])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 2])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    with open(path, "wb") as f:
        f.write(model.SerializeToString())


@pytest.mark.parametrize("op", ["LSTM", "GRU"])
def test_trainer_from_onnx_matches_torch_sgd(tmp_path, op):
    T, I, H, N, steps, lr = 6, 3, 10, 8, 4, 0.2
    torch.manual_seed(0)
    layer, head = getattr(torch.nn, op)(I, H, batch_first=True), torch.nn.Linear(H, 2)
    path = tmp_path / "rnn.onnx"
    head_model(str(path), op, layer, head, T, I, H)
    rng = np.random.default_rng(1)
    X = rng.standard_normal((steps, N, T, I)).astype(np.float32)
    Y = rng.standard_normal((steps, N, 2)).astype(np.float32)

    trainer = ember.Trainer.from_onnx(str(path), loss="mse", optimizer=ember.optim.SGD(lr=lr),
                                      batch_size=N, threads=2)
    opt = torch.optim.SGD([*layer.parameters(), *head.parameters()], lr=lr)
    for k in range(steps):
        got = trainer.train_step(X[k], Y[k])
        opt.zero_grad()
        h = layer(torch.tensor(X[k]))[1]
        h = h[0] if op == "LSTM" else h
        loss = torch.nn.functional.mse_loss(head(h[0]), torch.tensor(Y[k]))
        loss.backward()
        opt.step()
        np.testing.assert_allclose(got, loss.item(), rtol=1e-4, atol=1e-6)
    W, R, B, _ = onnx_weights(op, layer, H, 1)
    state = trainer.state_dict()
    for name, want in (("W", W), ("R", R), ("B", B), ("hw", head.weight.detach().numpy())):
        np.testing.assert_allclose(state[name], want, rtol=1e-4, atol=1e-5)


# ---- bad input ---------------------------------------------------------------------------------
def test_sequence_length_out_of_range_names_the_node():
    vals = values("LSTM", 3, 2, 2, 4)
    graph, wrt, feeds = build("LSTM", vals, 4, dtype="float32", lens=[3, 1])
    lens_name = next(n.input(4) for n in graph.nodes if n.op_type == "LSTM")
    graph.initializers[lens_name] = np.array([3, 7], np.int32)
    new, _ = backward(graph, "loss", wrt)
    with pytest.raises(InputError, match=r"sequence_lens\[1\] = 7"):
        Session(new, threads=1, optimize=False).run(None, feeds)
