"""RNN, GRU and LSTM against onnxruntime and torch.

Oracles: onnxruntime on the same ONNX model (random weights; every direction, layout,
``sequence_lens``, initial states, peepholes, ``linear_before_reset``, ``clip``,
``input_forget`` and non-default activations), and torch.nn.RNN/GRU/LSTM with the same weights
(gate order converted: torch's ifgo / rzn against ONNX's iofc / zrh). onnxruntime's CPU kernels
take no ``layout=1``: those models are checked against onnxruntime on the layout-0 model with
the inputs and outputs transposed. Tolerance 2e-5 absolute + relative: float32 state over a
few steps, each a sum of ≤ 2·16 products in another order than the oracle, and ember's vector
exp/tanh (≤ 1 ulp).
"""
from __future__ import annotations

import itertools

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

import ember

TOL = dict(rtol=2e-5, atol=2e-5)
GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}


def make_model(op, T, B, I, H, direction="forward", layout=0, lens=False, initial=False,
               peephole=False, seed=0, opset=14, **attrs):
    """(model, feeds, weights): the node with W, R, B, P as initializers, X, sequence_lens and
    the initial states as graph inputs, all three outputs."""
    rng = np.random.default_rng(seed)
    D, G = (2 if direction == "bidirectional" else 1), GATES[op]
    w = {"W": rng.uniform(-0.6, 0.6, (D, G * H, I)), "R": rng.uniform(-0.6, 0.6, (D, G * H, H)),
         "B": rng.uniform(-0.4, 0.4, (D, 2 * G * H))}
    if peephole:
        w["P"] = rng.uniform(-0.5, 0.5, (D, 3 * H))
    w = {k: v.astype(np.float32) for k, v in w.items()}
    xshape = (B, T, I) if layout else (T, B, I)
    state = (B, D, H) if layout else (D, B, H)
    feeds = {"X": rng.standard_normal(xshape).astype(np.float32)}
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, xshape)]
    names = ["X", "W", "R", "B", "", "", "", ""]
    if lens:
        feeds["lens"] = rng.integers(0, T + 1, B).astype(np.int32)
        feeds["lens"][0] = T
        inputs.append(helper.make_tensor_value_info("lens", TensorProto.INT32, (B,)))
        names[4] = "lens"
    if initial:
        for k, name in ((5, "h0"), (6, "c0"))[:1 + (op == "LSTM")]:
            feeds[name] = rng.standard_normal(state).astype(np.float32)
            inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, state))
            names[k] = name
    if peephole:
        names[7] = "P"
    while names[-1] == "":
        names.pop()
    outputs = ["Y", "Y_h", "Y_c"][:3 if op == "LSTM" else 2]
    node = helper.make_node(op, names, outputs, name="cell", hidden_size=H,
                            direction=direction, **({"layout": layout} if layout else {}),
                            **attrs)
    out_info = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs]
    graph = helper.make_graph([node], "g", inputs, out_info,
                              [onnx.numpy_helper.from_array(v, k) for k, v in w.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model, feeds, w


def onnxruntime_outputs(op, T, B, I, H, layout=0, **kw):
    """onnxruntime's outputs; a layout-1 model runs as its layout-0 twin (same weights) fed
    the layout-1 model's inputs transposed."""
    model, feeds, _ = make_model(op, T, B, I, H, layout=0, **kw)
    if layout:
        feeds = make_model(op, T, B, I, H, layout=1, **kw)[1]
        feeds = {k: (v.transpose(1, 0, 2) if v.ndim == 3 else v) for k, v in feeds.items()}
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = sess.run(None, feeds)
    if layout:
        outs = [outs[0].transpose(2, 0, 1, 3)] + [o.transpose(1, 0, 2) for o in outs[1:]]
    return outs


def ember_outputs(model, feeds, threads=1):
    return ember.load(model, threads=threads).run(None, feeds)


def runs_kernel(sess, feeds) -> bool:
    """True when the Session runs the node with the recurrent kernel (not the reference)."""
    return all(row.kernel for row in sess.profile(feeds, runs=1, warmup=0)
               if row.op_type in GATES)


CASES = [
    (op, direction, layout, lens, initial, peephole, lbr)
    for op in ("RNN", "GRU", "LSTM")
    for direction, layout, lens, initial in itertools.product(
        ("forward", "reverse", "bidirectional"), (0, 1), (False, True), (False, True))
    for peephole in ((False, True) if op == "LSTM" else (False,))
    for lbr in ((0, 1) if op == "GRU" else (0,))
    # peepholes with every other combination would double the LSTM cases: take half of them
    if not (peephole and initial != lens)
]


@pytest.mark.parametrize("op,direction,layout,lens,initial,peephole,lbr", CASES)
def test_matches_onnxruntime(op, direction, layout, lens, initial, peephole, lbr):
    kw = dict(direction=direction, lens=lens, initial=initial, peephole=peephole,
              seed=len(op) + 7 * layout + 3 * lens)
    if op == "GRU":
        kw["linear_before_reset"] = lbr
    T, B, I, H = 5, 3, 4, 6
    model, feeds, _ = make_model(op, T, B, I, H, layout=layout, **kw)
    want = onnxruntime_outputs(op, T, B, I, H, layout=layout, **kw)
    for got, ref in zip(ember_outputs(model, feeds), want):
        np.testing.assert_allclose(got, ref, **TOL)


@pytest.mark.parametrize("op,B,H,threads,lbr", [
    ("LSTM", 1, 13, 2, 0), ("LSTM", 2, 40, 2, 0), ("LSTM", 7, 40, 2, 0), ("LSTM", 17, 33, 2, 0),
    ("GRU", 1, 40, 2, 0), ("GRU", 5, 40, 2, 0), ("GRU", 17, 29, 2, 1), ("GRU", 2, 40, 2, 1),
    ("RNN", 1, 64, 2, 0), ("RNN", 20, 64, 2, 0), ("LSTM", 16, 48, 1, 0)])
def test_blocks_and_threads_match_onnxruntime(op, B, H, threads, lbr):
    """Awkward sizes through both product forms (row update below PANEL_MIN_BATCH, packed
    panels above, batches past one panel) and the per-thread unit blocks."""
    kw = dict(direction="bidirectional", lens=True, initial=True, seed=B + H)
    if op == "GRU":
        kw["linear_before_reset"] = lbr
    model, feeds, _ = make_model(op, 4, B, 5, H, **kw)
    sess = ember.load(model, threads=threads)
    assert runs_kernel(sess, feeds)
    want = onnxruntime_outputs(op, 4, B, 5, H, **kw)
    for got, ref in zip(sess.run(None, feeds), want):
        np.testing.assert_allclose(got, ref, **TOL)


@pytest.mark.parametrize("op,attrs", [
    ("LSTM", dict(clip=0.7)),
    ("LSTM", dict(input_forget=1)),
    ("GRU", dict(clip=0.5, linear_before_reset=1)),
    ("RNN", dict(clip=0.3)),
    ("RNN", dict(activations=["Relu"])),
    ("RNN", dict(activations=["LeakyRelu", "Affine"], activation_alpha=[0.2, 0.7],
                 activation_beta=[0.1], direction="bidirectional")),
    ("GRU", dict(activations=["HardSigmoid", "ScaledTanh"], activation_alpha=[0.3, 0.8],
                 activation_beta=[0.4, 1.2])),
    ("GRU", dict(activations=["Sigmoid", "Softsign"])),
    ("LSTM", dict(activations=["Sigmoid", "Elu", "Softplus"], activation_alpha=[0.9])),
    ("LSTM", dict(activations=["sigmoid", "ThresholdedRelu", "tanh"],
                  activation_alpha=[0.1])),
])
def test_attributes_match_onnxruntime(op, attrs):
    model, feeds, _ = make_model(op, 4, 3, 4, 5, initial=True, **attrs)
    want = onnxruntime_outputs(op, 4, 3, 4, 5, initial=True, **attrs)
    for got, ref in zip(ember_outputs(model, feeds), want):
        np.testing.assert_allclose(got, ref, **TOL)


def _torch_weights(op, w, d):
    """ONNX W, R, B of direction d in torch's gate order (ifgo / rzn)."""
    G = GATES[op]
    H = w["R"].shape[2]
    order = {"LSTM": [0, 2, 3, 1], "GRU": [1, 0, 2], "RNN": [0]}[op]   # torch gate k = ONNX gate

    def reorder(m):
        return np.concatenate([m[g * H:(g + 1) * H] for g in order])
    b = w["B"][d]
    return (reorder(w["W"][d]), reorder(w["R"][d]), reorder(b[:G * H]), reorder(b[G * H:]))


@pytest.mark.parametrize("op,bidirectional,batch_first", [
    ("LSTM", False, False), ("LSTM", True, True), ("GRU", True, False), ("GRU", False, True),
    ("RNN", True, False)])
def test_matches_torch(op, bidirectional, batch_first):
    T, B, I, H = 7, 4, 5, 8
    direction = "bidirectional" if bidirectional else "forward"
    attrs = {"linear_before_reset": 1} if op == "GRU" else {}
    model, feeds, w = make_model(op, T, B, I, H, direction=direction, layout=int(batch_first),
                                 initial=True, seed=11, **attrs)
    net = getattr(torch.nn, op)(I, H, bidirectional=bidirectional, batch_first=batch_first)
    with torch.no_grad():
        for d in range(2 if bidirectional else 1):
            sfx = "_reverse" if d else ""
            for name, value in zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"),
                                   _torch_weights(op, w, d)):
                getattr(net, f"{name}_l0{sfx}").copy_(torch.from_numpy(value))
        h0 = torch.from_numpy(feeds["h0"])
        if batch_first:
            h0 = h0.transpose(0, 1).contiguous()
        state = h0
        if op == "LSTM":
            c0 = torch.from_numpy(feeds["c0"])
            state = (h0, c0.transpose(0, 1).contiguous() if batch_first else c0)
        y, hn = net(torch.from_numpy(feeds["X"]), state)
    got = ember_outputs(model, feeds, threads=2)
    D = 2 if bidirectional else 1
    # ember's Y is [T, D, B, H] (layout 1: [B, T, D, H]); torch's [T, B, D·H] / [B, T, D·H]
    y_ember = got[0].reshape(B, T, D * H) if batch_first else \
        got[0].transpose(0, 2, 1, 3).reshape(T, B, D * H)
    np.testing.assert_allclose(y_ember, y.numpy(), **TOL)
    h_torch = hn[0] if op == "LSTM" else hn
    h_ember = got[1].transpose(1, 0, 2) if batch_first else got[1]
    np.testing.assert_allclose(h_ember, h_torch.numpy(), **TOL)
    if op == "LSTM":
        c_ember = got[2].transpose(1, 0, 2) if batch_first else got[2]
        np.testing.assert_allclose(c_ember, hn[1].numpy(), **TOL)


def test_fast_path_covers_the_common_cases():
    """The default activations in float32 take the kernel; another activation the reference."""
    for op, attrs, fast in [("LSTM", {"clip": 2.0}, True), ("GRU", {}, True),
                            ("RNN", {"activations": ["Tanh"]}, True),
                            ("RNN", {"activations": ["Relu"]}, False)]:
        model, feeds, _ = make_model(op, 4, 3, 4, 5, **attrs)
        assert runs_kernel(ember.load(model, threads=1), feeds) is fast, (op, attrs)


def test_outputs_are_optional():
    model, feeds, _ = make_model("LSTM", 4, 2, 3, 5, direction="bidirectional")
    want = onnxruntime_outputs("LSTM", 4, 2, 3, 5, direction="bidirectional")
    for keep in ([1], [0, 2], [2]):
        m = onnx.ModelProto()
        m.CopyFrom(model)
        node = m.graph.node[0]
        names = ["Y", "Y_h", "Y_c"]
        outs = [n if i in keep else "" for i, n in enumerate(names)]
        while outs[-1] == "":
            outs.pop()
        del node.output[:]
        node.output.extend(outs)
        del m.graph.output[:]
        m.graph.output.extend([helper.make_tensor_value_info(names[i], TensorProto.FLOAT, None)
                               for i in keep])
        got = ember_outputs(m, feeds)
        for g, i in zip(got, keep):
            np.testing.assert_allclose(g, want[i], **TOL)


def test_symbolic_sequence_and_batch():
    model, feeds, _ = make_model("GRU", 6, 2, 3, 4)
    x = model.graph.input[0].type.tensor_type.shape
    x.dim[0].dim_param, x.dim[1].dim_param = "seq", "batch"
    sess = ember.load(model, threads=1)
    for T, B in ((6, 2), (3, 5), (1, 1)):
        f = {"X": np.random.default_rng(T).standard_normal((T, B, 3)).astype(np.float32)}
        m2 = onnx.ModelProto()
        m2.CopyFrom(model)
        want = ort.InferenceSession(m2.SerializeToString(),
                                    providers=["CPUExecutionProvider"]).run(None, f)
        got = sess.run(None, f)
        assert got[0].shape == (T, 1, B, 4)
        for g, r in zip(got, want):
            np.testing.assert_allclose(g, r, **TOL)


# ---- bad input -------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [-1, 6])
def test_sequence_lens_out_of_range(bad):
    model, feeds, _ = make_model("LSTM", 5, 3, 4, 6, lens=True)
    sess = ember.load(model, threads=1)
    feeds["lens"][1] = bad
    with pytest.raises(ember.InputError, match=r"cell.*sequence_lens\[1\]"):
        sess.run(None, feeds)
    feeds["lens"][1] = 2
    sess.run(None, feeds)   # the Session still works


@pytest.mark.parametrize("tensor,shape", [("W", (1, 20, 4)), ("R", (1, 24, 5)),
                                          ("B", (1, 40)), ("P", (1, 17))])
def test_weights_not_matching_hidden_size(tensor, shape):
    model, _, _ = make_model("LSTM", 5, 3, 4, 6, peephole=True)
    for init in model.graph.initializer:
        if init.name == tensor:
            init.CopyFrom(onnx.numpy_helper.from_array(np.zeros(shape, np.float32), tensor))
    with pytest.raises(ember.ModelError, match=rf"cell.*{tensor} has shape .*expected"):
        ember.load(model)


@pytest.mark.parametrize("attrs,match", [
    (dict(activations=["Sigmoid", "Swish", "Tanh"]), "unknown activation 'Swish'"),
    (dict(activations=["Sigmoid", "Tanh"]), "expected 3 activations"),
    (dict(direction="sideways"), "direction"),
])
def test_bad_attributes(attrs, match):
    model, _, _ = make_model("LSTM", 5, 3, 4, 6, **attrs)
    with pytest.raises(ember.ModelError, match=match):
        ember.load(model)
