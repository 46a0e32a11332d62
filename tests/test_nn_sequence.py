"""ember.nn's sequence modules (Embedding, RNN/GRU/LSTM, MultiheadAttention,
scaled_dot_product_attention), Gather's gradient (GatherGrad, kernels/scatter) and
Trainer(clip_grad_norm=...).

Oracles: torch (the same state_dict gives the same outputs; the same SGD steps give the same
parameters), numpy's ``np.add.at`` for the scatter-add, onnxruntime for exports.
Tolerances: float32 on both sides; a recurrence of ≤ 12 steps or an attention block sums a few
hundred products per output, so outputs agree to 1e-5 absolute / 1e-4 relative; parameters
after a few SGD steps to 1e-5.
"""
import subprocess
import sys
import time

import numpy as np
import pytest

import ember
import ember.nn as nn
import ember.nn.functional as F
from ember import optim
from ember.graph.errors import InputError, ModelError, ShapeError

torch = pytest.importorskip("torch")

RTOL, ATOL = 1e-4, 1e-5


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def load_from_torch(module, tmod):
    module.load_state_dict({k: v.detach().numpy() for k, v in tmod.state_dict().items()})
    return module


def run_graph(graph, feeds):
    return ember.Session(graph, threads=2).run(None, feeds)


class Returns(nn.Module):
    """Wraps a module whose forward returns nested tuples: the flat list of its outputs."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, *xs):
        out = self.inner(*xs)
        flat = []

        def walk(o):
            if isinstance(o, (tuple, list)):
                for p in o:
                    walk(p)
            elif o is not None:
                flat.append(o)
        walk(out)
        return tuple(flat)


def flat_torch(out):
    if isinstance(out, (tuple, list)):
        return [a for o in out for a in flat_torch(o)]
    return [] if out is None else [out.detach().numpy()]


# ---- Embedding and GatherGrad ----------------------------------------------------------------
def test_embedding_matches_torch_and_names():
    torch.manual_seed(0)
    t = torch.nn.Embedding(10, 4, padding_idx=2)
    e = load_from_torch(nn.Embedding(10, 4, padding_idx=2), t)
    assert list(e.state_dict()) == list(t.state_dict()) == ["weight"]
    idx = np.array([[0, 2, 9, 1], [3, 3, -1, 5]], np.int64)
    g = nn.Sequential(e).eval().to_graph(input_shape=idx.shape, dtype="int64")
    np.testing.assert_array_equal(run_graph(g, {"input": idx})[0],
                                  t(torch.from_numpy(idx % 10)).detach().numpy())


def test_embedding_init_zeroes_padding_row_and_draws_normal():
    w = nn.Embedding(2000, 8, padding_idx=-1).init_parameters(0).state_dict()["weight"]
    assert np.all(w[-1] == 0)
    assert abs(w[:-1].mean()) < 0.05 and abs(w[:-1].std() - 1) < 0.05


@pytest.mark.parametrize("bad", [10, -11, 1 << 40])
def test_embedding_index_out_of_range_is_input_error(bad):
    g = nn.Embedding(10, 3).eval().to_graph(input_shape=(4,), dtype="int64")
    with pytest.raises(InputError, match="out of range"):
        run_graph(g, {"input": np.array([0, 1, bad, 2], np.int64)})


def test_embedding_refuses_bad_arguments():
    with pytest.raises(ValueError, match="padding_idx"):
        nn.Embedding(5, 2, padding_idx=5)
    with pytest.raises(ModelError, match="max_norm"):
        nn.Embedding(5, 2, max_norm=1.0)


def scatter_session(shape, idx_shape, axis, padding_idx=-1, idx_dtype=np.int64, threads=2):
    """A graph of one GatherGrad node (dY, indices) -> dX."""
    from ember.graph.builder import Builder
    b = Builder("scatter")
    dim_shape = tuple(shape[:axis]) + tuple(idx_shape) + tuple(shape[axis + 1:])
    dy = b.input("dy", dim_shape)
    idx = b.input("idx", idx_shape, np.dtype(idx_dtype).name)
    b.output(b.op("GatherGrad", [dy, idx], axis=axis, input_shape=list(shape),
                  padding_idx=padding_idx), "dx")
    return ember.Session(b.build(), threads=threads)


def add_at_reference(dy, idx, shape, axis, padding_idx):
    dim = shape[axis]
    rows = np.where(idx < 0, idx + dim, idx).reshape(-1)
    outer = int(np.prod(shape[:axis], dtype=np.int64))
    inner = int(np.prod(shape[axis + 1:], dtype=np.int64))
    src = dy.reshape(outer, rows.size, inner).astype(np.float64)
    dx = np.zeros((outer, dim, inner))
    keep = rows != padding_idx
    np.add.at(dx, (slice(None), rows[keep]), src[:, keep])
    return dx.reshape(shape)


@pytest.mark.parametrize("shape,idx_shape,axis,padding_idx,idx_dtype", [
    ((13, 7), (40,), 0, -1, np.int64),              # repeated rows, odd widths
    ((50, 130), (6, 33), 0, 3, np.int32),           # more than two column tiles, padding row
    ((3, 9, 5), (4, 4), 1, -1, np.int64),           # an inner axis: outer 3, inner 5
    ((2, 8), (5,), 1, 0, np.int64),                 # the last axis (inner 1)
    ((4, 3), (0,), 0, -1, np.int64),                # no indices: zeros
])
def test_gather_grad_kernel_matches_add_at(shape, idx_shape, axis, padding_idx, idx_dtype):
    rng = np.random.default_rng(1)
    dim = shape[axis]
    idx = rng.integers(-dim, dim, idx_shape).astype(idx_dtype)
    dy = rng.standard_normal(tuple(shape[:axis]) + idx_shape + tuple(shape[axis + 1:]))
    dy = dy.astype(np.float32)
    want = add_at_reference(dy, idx, shape, axis, padding_idx)
    for threads in (1, 2):
        got = scatter_session(shape, idx_shape, axis, padding_idx, idx_dtype, threads).run(
            None, {"dy": dy, "idx": idx})[0]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_gather_grad_out_of_range_writes_nothing():
    sess = scatter_session((6, 4), (3,), 0)
    dy = np.ones((3, 4), np.float32)
    with pytest.raises(InputError, match=r"index 6 .* size 6"):
        sess.run(None, {"dy": dy, "idx": np.array([0, 6, 1], np.int64)})
    with pytest.raises(InputError, match=r"index -7"):
        sess.run(None, {"dy": dy, "idx": np.array([-7, 0, 1], np.int64)})
    ok = sess.run(None, {"dy": dy, "idx": np.array([1, 1, 5], np.int64)})[0]
    np.testing.assert_array_equal(ok.sum(1), [0, 8, 0, 0, 0, 4])


def test_gather_gradient_by_finite_differences():
    """d/dW of sum(c · W[idx]) on an axis-1 Gather, against central differences."""
    from ember.graph.autodiff import backward
    from ember.graph.builder import Builder
    rng = np.random.default_rng(2)
    b = Builder("fd")
    w = b.parameter("w", (3, 5, 2), rng.standard_normal((3, 5, 2)))
    idx = np.array([[4, 0], [4, -1]], np.int64)
    c = rng.standard_normal((3, 2, 2, 2)).astype(np.float32)
    y = b.op("Gather", [w, idx], axis=1)
    b.output(b.op("ReduceSum", [y * c], keepdims=0), "loss")
    g = b.build()
    g.inputs.append("w")
    w0 = g.initializers.pop("w").astype(np.float64)
    gg, grads = backward(g, "loss", ["w"])
    got = ember.Session(gg).run([grads["w"]], {"w": w0.astype(np.float32)})[0]
    ref = ember.Session(g)
    fd = np.zeros_like(w0)
    for i in np.ndindex(w0.shape):
        e = np.zeros_like(w0)
        e[i] = 1e-2
        fd[i] = (ref.run(None, {"w": (w0 + e).astype(np.float32)})[0]
                 - ref.run(None, {"w": (w0 - e).astype(np.float32)})[0]) / 2e-2
    np.testing.assert_allclose(got, fd, rtol=1e-3, atol=1e-3)


# ---- RNN, GRU, LSTM --------------------------------------------------------------------------
RECURRENT_CASES = [
    # (class, kwargs, batched, with initial state)
    ("RNN", dict(num_layers=2, nonlinearity="relu"), True, True),
    ("RNN", dict(bidirectional=True, batch_first=True), True, False),
    ("GRU", dict(num_layers=2, bidirectional=True), True, True),
    ("GRU", dict(batch_first=True, bias=False), True, False),
    ("LSTM", dict(num_layers=2, batch_first=True, bidirectional=True), True, True),
    ("LSTM", dict(num_layers=3), True, False),
    ("LSTM", dict(bidirectional=True), False, True),
    ("GRU", dict(num_layers=2), False, False),
]


def recurrent_pair(kind, kwargs, input_size=5, hidden=6, seed=0):
    torch.manual_seed(seed)
    t = getattr(torch.nn, kind)(input_size, hidden, **kwargs)
    return load_from_torch(getattr(nn, kind)(input_size, hidden, **kwargs), t), t


@pytest.mark.parametrize("kind,kwargs,batched,with_state", RECURRENT_CASES)
def test_recurrent_matches_torch(kind, kwargs, batched, with_state):
    m, t = recurrent_pair(kind, kwargs)
    assert list(m.state_dict()) == list(t.state_dict())
    assert all(m.state_dict()[k].shape == tuple(v.shape) for k, v in t.state_dict().items())
    T, N, D = 7, 3, 2 if kwargs.get("bidirectional") else 1
    L = kwargs.get("num_layers", 1)
    x_shape = ((N, T) if kwargs.get("batch_first") else (T, N)) if batched else (T,)
    x = rand(*x_shape, 5, seed=1)
    h_shape = (L * D, N, 6) if batched else (L * D, 6)
    feeds = {"input": x}
    inputs = [("input", x.shape, "float32")]
    targs = [torch.from_numpy(x)]
    if with_state:
        hs = [rand(*h_shape, seed=2 + k) for k in range(2 if kind == "LSTM" else 1)]
        for k, h in enumerate(hs):
            inputs.append((f"h{k}", h.shape, "float32"))
            feeds[f"h{k}"] = h
        state = tuple(torch.from_numpy(h) for h in hs)
        targs.append(state if kind == "LSTM" else state[0])

    class Call(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = m

        def forward(self, x, *hs):
            if not hs:
                return Returns(self.rnn).forward(x)
            return Returns(self.rnn).forward(x, tuple(hs) if kind == "LSTM" else hs[0])

    wrapper = Call()
    wrapper.rnn = m
    g = wrapper.eval().trace_graph(inputs)
    got = run_graph(g, feeds)
    with torch.no_grad():
        want = flat_torch(t(*targs))
    assert len(got) == len(want)
    for a, w in zip(got, want):
        assert a.shape == w.shape
        np.testing.assert_allclose(a, w, rtol=RTOL, atol=ATOL)


def test_recurrent_init_is_torchs_uniform():
    sd = nn.LSTM(3, 25, bidirectional=True).init_parameters(0).state_dict()
    assert list(sd) == ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0",
                        "weight_ih_l0_reverse", "weight_hh_l0_reverse", "bias_ih_l0_reverse",
                        "bias_hh_l0_reverse"]
    w = np.concatenate([a.reshape(-1) for a in sd.values()])
    assert np.abs(w).max() <= 0.2 and np.abs(w).max() > 0.19    # U(±1/√25)


def test_recurrent_bad_input():
    m = nn.GRU(4, 3, num_layers=2)
    with pytest.raises(ShapeError, match="input_size. Expected 4, got 5"):
        m.eval().to_graph(input_shape=(6, 2, 5))
    with pytest.raises(ShapeError, match="rank 2"):
        m.eval().to_graph(input_shape=(6, 2, 1, 4))

    class WrongState(nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = m

        def forward(self, x, h):
            return self.gru(x, h)[0]
    with pytest.raises(ShapeError, match=r"hx of shape \(2, 2, 3\)"):
        WrongState().eval().trace_graph([("x", (6, 2, 4), "float32"),
                                         ("h", (1, 2, 3), "float32")])
    with pytest.raises(ValueError, match="nonlinearity"):
        nn.RNN(2, 2, nonlinearity="gelu")
    with pytest.raises(ModelError, match="proj_size"):
        nn.LSTM(2, 2, proj_size=1)


def training_dropouts(graph) -> int:
    """Dropout nodes in training mode (a constant true third input)."""
    return sum(n.op_type == "Dropout" and len(n.inputs) > 2 and bool(graph.initializers.get(
        n.inputs[2], False)) for n in graph.nodes)


@pytest.mark.parametrize("make,count", [
    (lambda: nn.LSTM(3, 4, num_layers=3, dropout=0.5, batch_first=True), 2),   # between layers
    (lambda: nn.MultiheadAttention(3, 1, dropout=0.5, batch_first=True), 1),   # on the weights
])
def test_dropout_in_training_form_only_when_training(make, count):
    """Eval mode writes Dropout's inference form, which a Trainer's to_training flips (it
    traces the model in eval mode)."""
    from ember.graph.autodiff import to_training

    class Call(nn.Module):
        def __init__(self):
            super().__init__()
            self.m = make()

        def forward(self, x):
            return self.m(*[x] * (1 if isinstance(self.m, nn.LSTM) else 3))[0]
    model = Call()
    ev = model.eval().to_graph(input_shape=(2, 5, 3))
    assert sum(n.op_type == "Dropout" for n in ev.nodes) == count
    assert training_dropouts(ev) == 0
    assert training_dropouts(model.train().to_graph(input_shape=(2, 5, 3))) == count
    assert training_dropouts(to_training(ev)) == count
    x = rand(2, 5, 3, seed=13)
    np.testing.assert_array_equal(run_graph(ev, {"input": x})[0],
                                  run_graph(model.eval().to_graph(input_shape=(2, 5, 3)),
                                            {"input": x})[0])


# ---- attention -------------------------------------------------------------------------------
MHA_CASES = [
    # (kwargs, self-attention, masks)
    (dict(), True, None),
    (dict(batch_first=True), False, "bool"),
    (dict(bias=False), True, "float"),
    (dict(batch_first=True), True, "padding"),
]


def mha_masks(kind, N, L, S, heads, rng):
    if kind == "bool":
        m = rng.random((L, S)) < 0.3
        m[:, 0] = False        # every row keeps one key: no all-masked (NaN) rows
        return dict(attn_mask=m)
    if kind == "float":
        return dict(attn_mask=rng.standard_normal((N * heads, L, S)).astype(np.float32))
    if kind == "padding":
        m = np.zeros((N, S), bool)
        m[0, -2:] = True
        return dict(key_padding_mask=m)
    return {}


@pytest.mark.parametrize("kwargs,self_attention,masks", MHA_CASES)
@pytest.mark.parametrize("average", [True, False])
def test_multihead_attention_matches_torch(kwargs, self_attention, masks, average):
    E, heads, N, L = 12, 3, 2, 5
    S = L if self_attention else 4
    torch.manual_seed(0)
    t = torch.nn.MultiheadAttention(E, heads, **kwargs).eval()
    m = load_from_torch(nn.MultiheadAttention(E, heads, **kwargs), t)
    assert list(m.state_dict()) == list(t.state_dict())
    rng = np.random.default_rng(3)
    bf = kwargs.get("batch_first", False)
    q = rand(*((N, L, E) if bf else (L, N, E)), seed=4)
    kv = q if self_attention else rand(*((N, S, E) if bf else (S, N, E)), seed=5)
    extra = mha_masks(masks, N, L, S, heads, rng)

    class Call(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = m

        def forward(self, q, *kv):
            k = v = kv[0] if kv else q
            return self.attn(q, k, v, average_attn_weights=average, **extra)

    inputs = [("q", q.shape, "float32")] + ([] if self_attention else
                                            [("kv", kv.shape, "float32")])
    feeds = {"q": q, **({} if self_attention else {"kv": kv})}
    got = run_graph(Call().eval().trace_graph(inputs), feeds)
    with torch.no_grad():
        tq, tkv = torch.from_numpy(q), torch.from_numpy(kv)
        textra = {k: torch.from_numpy(v) for k, v in extra.items()}
        want = flat_torch(t(tq, tkv, tkv, average_attn_weights=average, **textra))
    for a, w in zip(got, want):
        assert a.shape == w.shape
        np.testing.assert_allclose(a, w, rtol=RTOL, atol=ATOL)


def test_multihead_attention_init_and_refusals():
    sd = nn.MultiheadAttention(16, 4).init_parameters(0).state_dict()
    assert list(sd) == ["in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"]
    assert not sd["in_proj_bias"].any() and not sd["out_proj.bias"].any()
    bound = np.sqrt(6 / (16 + 48))                 # xavier_uniform of (3E, E)
    assert bound * 0.9 < np.abs(sd["in_proj_weight"]).max() <= bound
    with pytest.raises(ValueError, match="divisible"):
        nn.MultiheadAttention(10, 4)
    with pytest.raises(ModelError, match="kdim"):
        nn.MultiheadAttention(8, 2, kdim=4)


@pytest.mark.parametrize("case", ["plain", "causal", "bool", "float", "scale"])
def test_scaled_dot_product_attention_matches_torch(case):
    rng = np.random.default_rng(6)
    q, k, v = (rand(2, 3, 5, 8, seed=7), rand(2, 3, 6, 8, seed=8), rand(2, 3, 6, 4, seed=9))
    if case == "causal":
        k, v = k[:, :, :5], v[:, :, :5]
    kw = {"causal": dict(is_causal=True), "scale": dict(scale=0.3),
          "bool": dict(attn_mask=np.concatenate([np.ones((5, 1), bool),
                                                 rng.random((5, 5)) < 0.6], 1)),
          "float": dict(attn_mask=rng.standard_normal((5, 6)).astype(np.float32))}.get(case, {})

    class Attend(nn.Module):
        def forward(self, q, k, v):
            return F.scaled_dot_product_attention(q, k, v, **kw)
    g = Attend().trace_graph([("q", q.shape, "float32"), ("k", k.shape, "float32"),
                              ("v", v.shape, "float32")])
    got = run_graph(g, {"q": q, "k": k, "v": v})[0]
    tkw = {n: torch.from_numpy(a) if isinstance(a, np.ndarray) else a for n, a in kw.items()}
    want = torch.nn.functional.scaled_dot_product_attention(
        *(torch.from_numpy(a) for a in (q, k, v)), **tkw).numpy()
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


# ---- training against torch ------------------------------------------------------------------
def train_both(ours, theirs, x, y, steps, loss="cross_entropy", lr=0.5, clip=None, **trainer_kw):
    """``steps`` SGD steps on (x, y) in ember's Trainer and in torch (with
    ``clip_grad_norm_(clip)`` when clip is set); returns the Trainer after checking losses."""
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    trainer = ember.Trainer(ours.train(), input_shape=x.shape[1:], loss=loss,
                            optimizer=optim.SGD(lr=lr), batch_size=len(x), seed=0,
                            clip_grad_norm=clip, threads=2, **trainer_kw)
    topt = torch.optim.SGD(theirs.parameters(), lr=lr)
    tloss = torch.nn.functional.cross_entropy if loss == "cross_entropy" else \
        torch.nn.functional.mse_loss
    norms = []
    for _ in range(steps):
        topt.zero_grad()
        out = theirs(torch.from_numpy(x))
        lt = tloss(out, torch.from_numpy(y))
        lt.backward()
        if clip is not None:
            norms.append(float(torch.nn.utils.clip_grad_norm_(theirs.parameters(), clip)))
        topt.step()
        assert trainer.train_step(x, y) == pytest.approx(lt.item(), rel=1e-4)
    got = trainer.state_dict()
    for k, v in theirs.state_dict().items():
        np.testing.assert_allclose(got[k], v.detach().numpy(), rtol=1e-4, atol=1e-5,
                                   err_msg=k)
    return trainer, norms


class TorchBag(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(12, 5, padding_idx=0)
        self.fc = torch.nn.Linear(6 * 5, 3)

    def forward(self, x):
        return self.fc(self.emb(x.long()).flatten(1))


class Bag(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(12, 5, padding_idx=0)
        self.fc = nn.Linear(6 * 5, 3)

    def forward(self, x):
        return self.fc(F.flatten(self.emb(x)))


def test_embedding_training_matches_torch():
    """Repeated tokens sum their gradients; the padding row (token 0) never moves."""
    torch.manual_seed(0)
    theirs = TorchBag()
    with torch.no_grad():
        theirs.emb.weight[0] = 1.0       # a non-zero padding row: it must stay as it is
    rng = np.random.default_rng(0)
    x = rng.integers(0, 12, (8, 6)).astype(np.float32)
    x[:, -1] = 0
    y = rng.integers(0, 3, 8)
    trainer, _ = train_both(Bag(), theirs, x, y, steps=3)
    assert np.all(trainer.state_dict()["emb.weight"][0] == 1.0)


class TorchAttend(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = torch.nn.MultiheadAttention(8, 2, batch_first=True)
        self.fc = torch.nn.Linear(4 * 8, 2)

    def forward(self, x):
        a, _ = self.attn(x, x, x)
        return self.fc(a.flatten(1))


class Attend(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.fc = nn.Linear(4 * 8, 2)

    def forward(self, x):
        a, _ = self.attn(x, x, x)
        return self.fc(F.flatten(a))


def test_multihead_attention_training_matches_torch():
    torch.manual_seed(1)
    theirs = TorchAttend()
    x = rand(6, 4, 8, seed=2)
    y = rand(6, 2, seed=3)
    train_both(Attend(), theirs, x, y, steps=3, loss="mse", lr=0.1)


class TorchMLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Linear(5, 7), torch.nn.Linear(7, 3)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(5, 7), nn.Linear(7, 3)

    def forward(self, x):
        return self.fc2(F.tanh(self.fc1(x)))


def test_clip_grad_norm_matches_torch():
    """Gradient norms wander around max_norm (14–15.4 here): some steps are clipped, some
    are left alone, and both must match torch."""
    torch.manual_seed(2)
    x, y = rand(16, 5, seed=4), rand(16, 3, seed=5) * 20
    _, norms = train_both(MLP(), TorchMLP(), x, y, steps=12, loss="mse", lr=0.05, clip=14.6)
    assert sum(n > 14.6 for n in norms) >= 3 and sum(n < 14.6 for n in norms) >= 3


def test_clip_grad_norm_is_checked_and_checkpointed(tmp_path):
    for bad in (0, -1.0, float("inf"), "1", True):
        with pytest.raises(InputError, match="clip_grad_norm"):
            ember.Trainer(MLP(), input_shape=(5,), loss="mse", clip_grad_norm=bad)
    trainer = ember.Trainer(MLP(), input_shape=(5,), loss="mse", clip_grad_norm=0.25,
                            optimizer=optim.SGD(lr=0.1))
    x, y = rand(4, 5, seed=6), rand(4, 3, seed=7) * 50
    trainer.train_step(x, y)
    trainer.save(tmp_path / "t.ckpt")
    restored = ember.Trainer.restore(tmp_path / "t.ckpt")
    assert restored.clip_grad_norm == 0.25
    before = trainer.state_dict()
    trainer.train_step(x, y)
    restored.train_step(x, y)
    moved = np.sqrt(sum(np.sum((trainer.state_dict()[k] - before[k]) ** 2) for k in before))
    assert moved == pytest.approx(0.1 * 0.25, rel=1e-3)    # lr × max_norm: clipped
    for k, v in trainer.state_dict().items():
        np.testing.assert_array_equal(restored.state_dict()[k], v)


# ---- export ----------------------------------------------------------------------------------
class Tagger(nn.Module):
    """Embedding → 2-layer bidirectional LSTM → GRU → self-attention → a per-step Linear."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 6, padding_idx=0)
        self.lstm = nn.LSTM(6, 5, num_layers=2, batch_first=True, bidirectional=True)
        self.gru = nn.GRU(10, 8, batch_first=True)
        self.rnn = nn.RNN(8, 8, batch_first=True, nonlinearity="relu")
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        h, _ = self.lstm(self.emb(x))
        h, _ = self.gru(h)
        h, _ = self.rnn(h)
        a, _ = self.attn(h, h, h)
        return self.head(a)


def test_sequence_model_exports_to_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = Tagger().init_parameters(0)
    x = np.random.default_rng(1).integers(0, 20, (3, 7)).astype(np.float32)
    ember.export_onnx(model, tmp_path / "tagger.onnx", input_shape=(7,))
    want = run_graph(model.eval().to_graph(input_shape=("N", 7)), {"input": x})[0]
    sess = ort.InferenceSession(str(tmp_path / "tagger.onnx"))
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    onnx = pytest.importorskip("onnx")
    written = [n.op_type for n in onnx.load(str(tmp_path / "tagger.onnx")).graph.node]
    assert [written.count(op) for op in ("LSTM", "GRU", "RNN")] == [2, 1, 1]


def test_trained_embedding_attention_model_exports(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    rng = np.random.default_rng(2)
    x = rng.integers(0, 12, (8, 6)).astype(np.float32)
    y = rng.integers(0, 3, 8)
    trainer = ember.Trainer(Bag(), input_shape=(6,), optimizer=optim.SGD(lr=0.5),
                            batch_size=8, clip_grad_norm=1.0)
    trainer.fit(x, y, epochs=2, verbose=False)
    trainer.export_onnx(tmp_path / "bag.onnx")
    sess = ort.InferenceSession(str(tmp_path / "bag.onnx"))
    np.testing.assert_allclose(sess.run(None, {sess.get_inputs()[0].name: x})[0],
                               trainer.predict(x), rtol=RTOL, atol=ATOL)


# ---- a Python loop over time in forward -----------------------------------------------------
class LoopRNN(nn.Module):
    """An Elman RNN written as torch's RNNCell loop: one Gather, two Linears and a Tanh per
    step, unrolled into a static graph when traced."""

    def __init__(self, input_size=4, hidden=6, classes=3):
        super().__init__()
        self.ih, self.hh = nn.Linear(input_size, hidden), nn.Linear(hidden, hidden, bias=False)
        self.out = nn.Linear(hidden, classes)

    def forward(self, x):
        h = None
        for t in range(x.shape[1]):
            xt = x.builder.op("Gather", [x, np.array(t, np.int64)], axis=1)
            h = F.tanh(self.ih(xt) if h is None else self.ih(xt) + self.hh(h))
        return self.out(h)


class TorchLoopRNN(torch.nn.Module):
    def __init__(self, input_size=4, hidden=6, classes=3):
        super().__init__()
        self.ih = torch.nn.Linear(input_size, hidden)
        self.hh = torch.nn.Linear(hidden, hidden, bias=False)
        self.out = torch.nn.Linear(hidden, classes)

    def forward(self, x):
        h = torch.tanh(self.ih(x[:, 0]))
        for t in range(1, x.shape[1]):
            h = torch.tanh(self.ih(x[:, t]) + self.hh(h))
        return self.out(h)


def test_python_loop_over_200_steps_traces_and_matches_torch():
    torch.manual_seed(3)
    theirs = TorchLoopRNN()
    ours = load_from_torch(LoopRNN(), theirs)
    g = ours.eval().to_graph(input_shape=("N", 200, 4))
    assert sum(n.op_type == "Tanh" for n in g.nodes) == 200
    x = rand(5, 200, 4, seed=10) * 0.5
    with torch.no_grad():
        want = theirs(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(run_graph(g, {"input": x})[0], want, rtol=RTOL, atol=ATOL)


def test_python_loop_trains_like_torch():
    torch.manual_seed(4)
    x, y = rand(8, 12, 4, seed=11), np.random.default_rng(12).integers(0, 3, 8)
    train_both(LoopRNN(), TorchLoopRNN(), x, y, steps=3, lr=0.3)
