"""ember.Trainer end to end: digits, history, batches, predict/evaluate, state_dict, gradient
checking against finite differences, bad input, NaN loss, L2, ONNX export and fine-tuning."""
from __future__ import annotations

import numpy as np
import pytest

import ember
from ember import nn, optim
from ember.optim import lr_scheduler


def digits():
    """sklearn's bundled digits (8×8), 80/20 split with seed 0; ember's copy without sklearn."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        from ember.datasets import load_digits as ember_digits, train_test_split as split
        X, y = ember_digits()
        return split(X, y, 0.2, seed=0)
    d = load_digits()
    X = (d.images / 16.0).astype(np.float32)[:, None]
    return train_test_split(X, d.target.astype(np.int64), test_size=0.2, random_state=0)


def lenet():
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(32 * 2 * 2, 64), nn.ReLU(), nn.Linear(64, 10))


def small_cnn(act=nn.ReLU):
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), act(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 10))


@pytest.fixture(scope="module")
def data():
    return digits()


@pytest.fixture(scope="module")
def trained(data):
    Xtr, Xte, ytr, yte = data
    t = ember.Trainer(lenet(), input_shape=(1, 8, 8), loss=nn.CrossEntropyLoss(),
                      optimizer=optim.Adam(lr=3e-3), batch_size=32, seed=0, threads=2,
                      scheduler=lr_scheduler.StepLR(step_size=8, gamma=0.5))
    history = t.fit(Xtr, ytr, epochs=12, validation_data=(Xte, yte), verbose=False)
    return t, history


def test_lenet_reaches_97_percent_on_digits(trained, data):
    t, history = trained
    Xtr, Xte, ytr, yte = data
    acc = t.evaluate(Xte, yte)["accuracy"]
    assert acc >= 0.97, history.history
    # accuracy computed here, independently of ember's metric code
    assert np.mean(t.predict(Xte).argmax(axis=1) == yte) == pytest.approx(acc)


def test_history_has_one_entry_per_epoch(trained):
    t, history = trained
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
        assert len(history.history[key]) == 12, key
    assert history.epoch == list(range(12))
    assert history.history["loss"][-1] < history.history["loss"][0]
    # StepLR(step_size=8, gamma=0.5), stepped once per epoch
    assert history.history["lr"] == [3e-3] * 8 + [1.5e-3] * 4
    assert t.epoch == 12 and t.global_step == 12 * int(np.ceil(1437 / 32))


def test_partial_last_batch_is_used(data):
    Xtr, _, ytr, _ = data
    X, y = Xtr[:100], ytr[:100]
    t = ember.Trainer(small_cnn(), input_shape=(1, 8, 8), optimizer=optim.SGD(lr=0.1),
                      batch_size=32, threads=1)
    seen = []
    inner = t._train_batch

    def counting(step):
        seen.append(step.batch)
        return inner(step)
    t._train_batch = counting
    t.fit(X, y, epochs=2, verbose=False)
    assert seen == [32, 32, 32, 4] * 2
    assert t.global_step == 8


def test_shuffle_visits_every_sample_once_per_epoch(data):
    """With lr = 0 nothing changes, so the model's per-sample outputs identify the samples."""
    Xtr, _, ytr, _ = data
    X, y = Xtr[:50], ytr[:50]
    t = ember.Trainer(small_cnn(), input_shape=(1, 8, 8), optimizer=optim.SGD(lr=0.0),
                      batch_size=16, threads=1)
    t.fit(X, y, epochs=1, verbose=False)     # compile every step first
    seen = []
    for step in t._steps.values():
        orig = step.run

        def run(orig=orig, step=step):
            seen.append(step.x.sum(axis=(1, 2, 3)).copy())
            return orig()
        step.run = run
    t.fit(X, y, epochs=1, verbose=False)
    got = np.sort(np.concatenate(seen))
    np.testing.assert_allclose(got, np.sort(X.sum(axis=(1, 2, 3))), rtol=1e-6)


def test_predict_and_evaluate_against_numpy(trained, data):
    t, _ = trained
    _, Xte, _, yte = data
    out = t.predict(Xte)
    assert out.shape == (len(Xte), 10) and out.dtype == np.float32
    # another batch size is another compiled plan (GEMM blocking): equal to float32 rounding
    np.testing.assert_allclose(t.predict(Xte, batch_size=7), out, rtol=1e-5, atol=1e-5)
    z = out.astype(np.float64)
    logp = z - z.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    ce = -logp[np.arange(len(yte)), yte].mean()
    res = t.evaluate(Xte, yte)
    assert res["loss"] == pytest.approx(ce, rel=1e-5)
    assert res["accuracy"] == pytest.approx(np.mean(out.argmax(1) == yte))


def test_state_dict_names_shapes_and_round_trip(trained, data):
    t, _ = trained
    _, Xte, _, _ = data
    sd = t.state_dict()
    assert list(sd) == ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean",
                        "1.running_var", "4.weight", "4.bias", "8.weight", "8.bias",
                        "10.weight", "10.bias"]
    assert sd["0.weight"].shape == (16, 1, 3, 3) and sd["8.weight"].shape == (64, 128)
    assert sd["10.weight"].shape == (10, 64) and sd["1.running_var"].shape == (16,)
    fresh = ember.Trainer(lenet(), input_shape=(1, 8, 8), threads=1)
    assert not np.allclose(fresh.predict(Xte), t.predict(Xte))
    fresh.load_state_dict(dict(sd, **{"1.num_batches_tracked": np.array(5)}))
    np.testing.assert_allclose(fresh.predict(Xte), t.predict(Xte), rtol=1e-5, atol=1e-5)
    sd["0.weight"][:] = 0                      # a copy: the trainer is not affected
    assert np.abs(t.state_dict()["0.weight"]).sum() > 0
    bad = t.state_dict()
    bad["8.weight"] = np.zeros((64, 127), np.float32)
    with pytest.raises(ember.ShapeError, match=r"8\.weight.*\(64, 127\).*\(64, 128\)"):
        fresh.load_state_dict(bad)
    missing = t.state_dict()
    del missing["0.bias"]
    with pytest.raises(ember.ModelError, match="missing keys.*0.bias"):
        fresh.load_state_dict(missing)


def _fd_trainer(l2=0.0):
    # smooth (tanh) so central differences are not spoiled by ReLU kinks or max-pool switches
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.Tanh(), nn.Flatten(),
                          nn.Linear(3 * 8 * 8, 10))
    return ember.Trainer(model, input_shape=(1, 8, 8), optimizer=optim.SGD(lr=0.1),
                         batch_size=64, seed=3, threads=1, l2=l2)


@pytest.mark.parametrize("l2", [0.0, 0.5])
def test_gradients_match_finite_differences_of_evaluate(data, l2):
    """Central differences of evaluate()'s loss (float32). The loss (~2.3) is computed in
    float32, rounding error ~3e-7, so with ε = 1e-2 the difference quotient is good to ~3e-5
    absolute; truncation error is ε²·f''' ~ 1e-5. Entries are compared where |g| is not tiny,
    and the courses' relative error ‖a−b‖/(‖a‖+‖b‖) must stay below 1e-3 (it is ~1e-2 when a
    gradient is wrong by a factor or a sign)."""
    Xtr, _, ytr, _ = data
    X, y = Xtr[:16], ytr[:16]
    t = _fd_trainer(l2)
    grads = t.gradients(X, y)
    rng = np.random.default_rng(0)
    eps = 1e-2
    for name, g in grads.items():
        p = t.params[name]
        idx = rng.choice(p.size, size=min(12, p.size), replace=False)
        num, ana = [], []
        for i in idx:
            old = p.flat[i]
            p.flat[i] = old + eps
            plus = t.evaluate(X, y)["loss"]
            p.flat[i] = old - eps
            minus = t.evaluate(X, y)["loss"]
            p.flat[i] = old
            num.append((plus - minus) / (2 * eps))
            ana.append(g.flat[i])
        num, ana = np.array(num), np.array(ana)
        rel = np.linalg.norm(num - ana) / (np.linalg.norm(num) + np.linalg.norm(ana))
        assert rel < 1e-3, (name, rel, num, ana)


def test_l2_adds_exactly_its_term_to_loss_and_gradient(data):
    Xtr, _, ytr, _ = data
    X, y = Xtr[:20], ytr[:20]
    lam, m = 0.7, len(X)
    plain, reg = _fd_trainer(0.0), _fd_trainer(lam)
    reg.load_state_dict(plain.state_dict())
    weights = ["0.weight", "3.weight"]                 # rank ≥ 2: biases are not regularized
    sq = sum(float(np.sum(plain.params[w].astype(np.float64) ** 2)) for w in weights)
    diff = reg.evaluate(X, y)["loss"] - plain.evaluate(X, y)["loss"]
    assert diff == pytest.approx(lam / (2 * m) * sq, rel=1e-5)
    g0, g1 = plain.gradients(X, y), reg.gradients(X, y)
    for name in g0:
        extra = lam / m * plain.params[name] if name in weights else 0.0
        np.testing.assert_allclose(g1[name] - g0[name], extra, atol=1e-6, err_msg=name)
    # and the step uses it: SGD moves weights by −lr·(g + λ/m·W)
    before = reg.state_dict()
    reg.train_step(X, y)
    np.testing.assert_allclose(reg.params["0.weight"], before["0.weight"] - 0.1 * g1["0.weight"],
                               rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("case,match", [
    ("float_labels", "integer class labels"),
    ("label_range", r"label 10 .*outside \[0, 10\)"),
    ("negative_label", r"label -1 .*outside"),
    ("length", "16 samples but y has 15"),
    ("nan", "NaN"),
    ("shape", r"expects \(N,\) \+ \(1, 8, 8\)"),
    ("label_shape", "labels of shape"),
])
def test_bad_input_is_a_clear_error(data, case, match):
    Xtr, _, ytr, _ = data
    X, y = Xtr[:16].copy(), ytr[:16].copy()
    if case == "float_labels":
        y = y.astype(np.float64)
    elif case == "label_range":
        y[3] = 10
    elif case == "negative_label":
        y[0] = -1
    elif case == "length":
        y = y[:15]
    elif case == "nan":
        X[5, 0, 2, 2] = np.nan
    elif case == "shape":
        X = X.reshape(16, 1, 4, 16)
    elif case == "label_shape":
        y = y.reshape(16, 1)
    t = ember.Trainer(small_cnn(), input_shape=(1, 8, 8), threads=1)
    before = t.state_dict()
    for call in (lambda: t.fit(X, y, verbose=False), lambda: t.evaluate(X, y),
                 lambda: t.gradients(X, y)):
        with pytest.raises(ember.InputError, match=match):
            call()
    for k, v in t.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_regression_targets_must_be_float():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 1))
    t = ember.Trainer(model, input_shape=(4,), loss="mse", threads=1)
    X = np.ones((8, 4), np.float32)
    with pytest.raises(ember.InputError, match="float targets"):
        t.fit(X, np.ones(8, np.int64), verbose=False)
    t.fit(X, np.ones(8, np.float32), verbose=False)      # (N,) fits an (N, 1) output


def test_nan_loss_stops_with_the_step_and_leaves_parameters(data):
    Xtr, _, ytr, _ = data
    X, y = Xtr[:32], ytr[:32]
    t = ember.Trainer(lenet(), input_shape=(1, 8, 8), optimizer=optim.SGD(lr=1e30),
                      batch_size=16, threads=1)
    with pytest.raises(ember.TrainingError, match="step") as err:
        for _ in range(5):
            before = t.state_dict()
            opt_steps, step = t.optimizer.steps, t.global_step
            t.train_step(X, y)
    assert f"step {step}" in str(err.value)
    assert t.global_step == step and t.optimizer.steps == opt_steps
    for k, v in t.state_dict().items():          # params and running stats as before the step
        np.testing.assert_array_equal(v, before[k], err_msg=k)
    with pytest.raises(ember.TrainingError):     # fit stops the same way
        t.fit(X, y, epochs=1, verbose=False)


def test_progress_bar_shows_loss_and_accuracy(data, capsys):
    pytest.importorskip("tqdm")
    Xtr, _, ytr, _ = data
    t = ember.Trainer(small_cnn(), input_shape=(1, 8, 8), batch_size=32, threads=1)
    t.fit(Xtr[:64], ytr[:64], epochs=1, verbose=True)
    err = capsys.readouterr().err
    assert "Epoch 1" in err and "loss=" in err and "accuracy=" in err


def test_graph_is_an_inference_graph_with_current_parameters(trained, data):
    t, _ = trained
    _, Xte, _, _ = data
    sess = ember.Session(t.graph(), threads=1)
    (out,) = sess.run(None, {"input": Xte[:10]})
    np.testing.assert_allclose(out, t.predict(Xte[:10]), rtol=1e-5, atol=1e-5)


def test_export_onnx_matches_predict_in_onnxruntime(trained, data, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    t, _ = trained
    _, Xte, _, _ = data
    path = tmp_path / "lenet.onnx"
    t.export_onnx(path)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (ref,) = sess.run(None, {sess.get_inputs()[0].name: Xte})
    np.testing.assert_allclose(t.predict(Xte), ref, atol=1e-5, rtol=1e-5)
    path2 = tmp_path / "module.onnx"
    ember.export_onnx(t, path2)
    assert path2.stat().st_size > 0


def test_from_onnx_fine_tunes_and_frozen_parameters_stay(trained, data, tmp_path):
    t, _ = trained
    Xtr, Xte, ytr, yte = data
    path = tmp_path / "lenet.onnx"
    t.export_onnx(path)
    # a harder task for the imported net: labels permuted, so the head must re-learn
    perm = np.roll(np.arange(10), 1)
    ytr2, yte2 = perm[ytr], perm[yte]
    ft = ember.Trainer.from_onnx(path, loss="cross_entropy", optimizer=optim.Adam(lr=1e-2),
                                 trainable=["*"], freeze=["0.*", "1.*", "4.*"], threads=2,
                                 batch_size=64)
    assert set(ft.trainable) == {"8.weight", "8.bias", "10.weight", "10.bias"}
    assert {"1.running_mean", "1.running_var"} <= set(ft.buffers)
    frozen = {k: v for k, v in ft.state_dict().items() if k.split(".")[0] in ("0", "1", "4")}
    assert len(frozen) == 8
    before = ft.evaluate(Xte, yte2)["loss"]
    ft.fit(Xtr, ytr2, epochs=3, verbose=False)
    after = ft.evaluate(Xte, yte2)["loss"]
    assert after < 0.5 * before
    sd = ft.state_dict()
    for k, v in frozen.items():
        if k.endswith(("running_mean", "running_var")):
            continue                             # buffers of a training-mode BN still update
        np.testing.assert_array_equal(sd[k], v, err_msg=k)


def _numpy_loss(kind, z, t):
    z, t = z.astype(np.float64), t.astype(np.float64)
    if kind == "mse":
        return np.mean((z - t) ** 2)
    if kind == "l1":
        return np.mean(np.abs(z - t))
    if kind == "huber":
        d = np.abs(z - t)
        return np.mean(np.where(d <= 1.0, 0.5 * d * d, d - 0.5))
    if kind == "bce_with_logits":
        return np.mean(np.maximum(z, 0) - z * t + np.log1p(np.exp(-np.abs(z))))
    logp = z - z.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    return -(t * logp).sum(1).mean()                      # probability targets


@pytest.mark.parametrize("kind", ["mse", "l1", "huber", "bce_with_logits", "probs"])
def test_other_losses_train_and_evaluate_like_numpy(kind):
    r = np.random.default_rng(0)
    X = r.normal(size=(96, 6)).astype(np.float32)
    w = r.normal(size=(6, 3))
    z = X @ w
    if kind == "bce_with_logits":
        y = (z > 0).astype(np.float32)
    elif kind == "probs":
        e = np.exp(z - z.max(1, keepdims=True))
        y = (e / e.sum(1, keepdims=True)).astype(np.float32)
    else:
        y = z.astype(np.float32)
    loss = "cross_entropy" if kind == "probs" else kind
    t = ember.Trainer(nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3)),
                      input_shape=(6,), loss=loss, optimizer=optim.Adam(lr=1e-2),
                      batch_size=16, threads=1)
    before = t.evaluate(X, y)["loss"]
    assert before == pytest.approx(_numpy_loss(kind, t.predict(X), y), rel=1e-5)
    h = t.fit(X, y, epochs=15, verbose=False)
    after = t.evaluate(X, y)
    assert after["loss"] == pytest.approx(_numpy_loss(kind, t.predict(X), y), rel=1e-5)
    # cross-entropy with soft targets cannot go below the targets' entropy
    floor = -np.mean((y * np.log(y)).sum(1)) if kind == "probs" else 0.0
    assert after["loss"] - floor < 0.5 * (before - floor)
    assert ("accuracy" in h.history) == (kind in ("bce_with_logits", "probs"))


def test_trainer_takes_a_builder_graph():
    from ember.graph.builder import Builder
    b = Builder("mlp", seed=0)
    x = b.input("x", ("N", 4))
    h = b.gemm(x, b.parameter("fc1.weight", (8, 4)), b.parameter("fc1.bias", (8,), "zeros"),
               transB=1).relu()
    b.output(b.gemm(h, b.parameter("fc2.weight", (2, 8)), b.parameter("fc2.bias", (2,), "zeros"),
                    transB=1), "y")
    r = np.random.default_rng(0)
    X = r.normal(size=(64, 4)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] > 0).astype(np.int64)
    t = ember.Trainer(b.build(), optimizer=optim.SGD(lr=0.2, momentum=0.9), batch_size=16,
                      threads=1)
    assert t.input_shape == (4,)
    assert list(t.state_dict()) == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    t.fit(X, y, epochs=20, verbose=False)
    assert t.evaluate(X, y)["accuracy"] > 0.9


def test_export_onnx_of_a_module(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    m = small_cnn()
    path = tmp_path / "m.onnx"
    ember.export_onnx(m, path, input_shape=(1, 8, 8))
    x = np.random.default_rng(0).normal(size=(5, 1, 8, 8)).astype(np.float32)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (ref,) = sess.run(None, {sess.get_inputs()[0].name: x})
    (out,) = ember.Session(m.eval().to_graph(input_shape=("N", 1, 8, 8))).run(None, {"input": x})
    np.testing.assert_allclose(out, ref, atol=1e-5)
    with pytest.raises(ember.ModelError, match="input_shape"):
        ember.export_onnx(m, path)
