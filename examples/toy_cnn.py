"""Example 1 — the toy 1-D CNN and the courses' hand-worked convolutions and max-pools.

The 1-D convolutions use ``nn.Conv1d`` on (N, C, L) inputs, with torch's weight shape
(out, in, k); ember lowers it to a 2-D conv of a height-1 view (kernel 1×k), which computes
exactly the same sums. Every figure is typed in from REFERENCE.md (worked by hand there) and
must come out of ember exactly — integer sums are exact in float32 whatever order the kernels
add them in.

    python examples/toy_cnn.py
"""
from __future__ import annotations

import numpy as np

import ember
from ember import nn

from _common import run

# ---- the worked examples (REFERENCE.md) ---------------------------------------------------------
X1 = [0, 0, 1, 1, 1, 0, 1, 0, 0, 0]
W1 = [-1, 1, -1]
CONV1_VALID = [-1, 0, -1, 0, -2, 1, -1, 0]
CONV1_RELU = [0, 0, 0, 0, 0, 1, 0, 0]

X2 = [[1, 0, 1, 0, 0], [1, 0, 1, 0, 1], [1, 1, 1, 0, 0], [1, 0, 1, 0, 1], [1, 0, 1, 0, 1]]
F2 = [[-1, -1, -1], [-1, 1, -1], [-1, -1, -1]]
CONV2_VALID = [[-7, -2, -4], [-5, -2, -5], [-7, -2, -5]]
CONV2_SAME = [[0, -4, 0, -3, -1], [-2, -7, -2, -4, 1], [-2, -5, -2, -5, -2],
              [-2, -7, -2, -5, 0], [0, -4, 0, -4, 0]]
CONV2_SAME_RELU_ONE_AT = (1, 4)

POOL_ONES_AT = [(1, 4), (3, 1)]          # a 6×6 map, 0 except these
POOL_3X3_S1 = [[0, 0, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 0, 0]]
POOL_3X3_S3 = [[0, 1], [1, 0]]


def with_weight(conv, weight):
    """Give a bias-free conv fixed weights (torch layout: out, in, k… )."""
    conv.load_state_dict({"weight": np.asarray(weight, np.float32).reshape(conv.weight.shape)})
    return conv


def conv1d(x, w, padding=0, relu=False):
    """A 1-D convolution with nn.Conv1d: input [1, 1, L], kernel [1, 1, k]."""
    layers = [with_weight(nn.Conv1d(1, 1, len(w), padding=padding, bias=False), w)]
    model = nn.Sequential(*layers, *([nn.ReLU()] if relu else []))
    x = np.asarray(x, np.float32).reshape(1, 1, -1)
    return run(model.eval().to_graph(x.shape), x).reshape(-1)


def conv2d(x, f, padding=0, relu=False):
    x = np.asarray(x, np.float32)[None, None]
    layers = [with_weight(nn.Conv2d(1, 1, 3, padding=padding, bias=False), f)]
    model = nn.Sequential(*layers, *([nn.ReLU()] if relu else []))
    return run(model.eval().to_graph(x.shape), x)[0, 0]


def max_pool(x, k, stride):
    x = np.asarray(x, np.float32)[None, None]
    return run(nn.MaxPool2d(k, stride).eval().to_graph(x.shape), x)[0, 0]


def pool_input():
    x = np.zeros((6, 6), np.float32)
    for i, j in POOL_ONES_AT:
        x[i, j] = 1
    return x


def check_worked_examples() -> None:
    np.testing.assert_array_equal(conv1d(X1, W1), CONV1_VALID)
    np.testing.assert_array_equal(conv1d(X1, W1, relu=True), CONV1_RELU)
    np.testing.assert_array_equal(conv2d(X2, F2), CONV2_VALID)
    np.testing.assert_array_equal(conv2d(X2, F2, padding=1), CONV2_SAME)
    relu = conv2d(X2, F2, padding=1, relu=True)
    assert relu.sum() == 1 and relu[CONV2_SAME_RELU_ONE_AT] == 1, relu
    np.testing.assert_array_equal(max_pool(pool_input(), 3, 1), POOL_3X3_S1)
    np.testing.assert_array_equal(max_pool(pool_input(), 3, 3), POOL_3X3_S3)


# ---- the toy 1-D CNN: input 5×1 → one 3-tap filter, pad 1 → ReLU → dense → 1 output ------------
TOY_X = np.array([1, 0, 0, 1, 0], np.float32)
TOY_Y = 1.0
TOY_WEIGHTS = {"0.weight": [-1, 1, -1], "0.bias": [0.0],
               "3.weight": [[0.5, -0.5, 0.25, 1.0, 0.1]], "3.bias": [0.2]}
TOY_PARAMS = (3 + 1) + (5 + 1)          # one filter of 3 taps + bias; dense 5 → 1 + bias


def build() -> nn.Sequential:
    """The toy net, with the fixed weights the hand computation below uses."""
    model = nn.Sequential(nn.Conv1d(1, 1, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(5, 1))
    shapes = {name: p.shape for name, p in model.named_parameters()}
    model.load_state_dict({k: np.asarray(v, np.float32).reshape(shapes[k])
                           for k, v in TOY_WEIGHTS.items()})
    return model


def toy_by_hand(x=TOY_X, y=TOY_Y, w=TOY_WEIGHTS):
    """Forward and backward of the toy net for squared loss (ŷ − y)², written out in numpy:
    the oracle for ember's forward, gradients and one SGD step."""
    k, b = np.array(w["0.weight"], float), w["0.bias"][0]
    v, c = np.array(w["3.weight"][0], float), w["3.bias"][0]
    xp = np.pad(np.asarray(x, float), 1)
    z = np.array([xp[i:i + 3] @ k for i in range(5)]) + b     # [1, −1, −1, 1, −1]
    r = np.maximum(z, 0)                                       # [1, 0, 0, 1, 0]
    y_hat = r @ v + c                                          # 1.7
    loss = (y_hat - y) ** 2                                    # 0.49
    d_yhat = 2 * (y_hat - y)                                   # 1.4
    dz = d_yhat * v * (z > 0)                                  # [0.7, 0, 0, 1.4, 0]
    grads = {"0.weight": np.array([dz @ xp[j:j + 5] for j in range(3)]),   # [0, 2.1, 0]
             "0.bias": np.array([dz.sum()]),                               # 2.1
             "3.weight": d_yhat * r, "3.bias": np.array([d_yhat])}
    return y_hat, loss, grads


def check_toy_forward() -> float:
    y_hat, _, _ = toy_by_hand()
    model = build()
    assert model.num_parameters() == TOY_PARAMS
    got = run(model.eval().to_graph((1, 1, 5)), TOY_X.reshape(1, 1, 5))
    assert got.shape == (1, 1)
    np.testing.assert_allclose(got[0, 0], y_hat, rtol=1e-6)
    return float(got[0, 0])


def train_one_step(lr: float = 0.1):
    """One SGD step with squared loss through ember.Trainer: returns (trainer, gradients,
    parameters after the step) for comparison with ``toy_by_hand``."""
    trainer = ember.Trainer(build(), input_shape=(1, 5), loss=nn.MSELoss(),
                            optimizer=ember.optim.SGD(lr=lr), batch_size=1, seed=0)
    x, y = TOY_X.reshape(1, 1, 5), np.array([[TOY_Y]], np.float32)
    grads = trainer.gradients(x, y)
    trainer.fit(x, y, epochs=1, shuffle=False, verbose=False)
    return trainer, grads, trainer.state_dict()


def check_toy_training(lr: float = 0.1) -> None:
    _, loss, expected = toy_by_hand()
    _, grads, after = train_one_step(lr)
    for name, g in expected.items():
        np.testing.assert_allclose(grads[name].reshape(-1), g.reshape(-1), rtol=1e-5,
                                   atol=1e-6, err_msg=name)
        before = np.asarray(TOY_WEIGHTS[name], float).reshape(-1)
        np.testing.assert_allclose(after[name].reshape(-1), before - lr * g.reshape(-1),
                                   rtol=1e-5, atol=1e-6, err_msg=name)


if __name__ == "__main__":
    check_worked_examples()
    print("worked convolutions and max-pools: all reproduced exactly")
    print(f"toy 1-D CNN: {TOY_PARAMS} parameters, ŷ = {check_toy_forward():.4f} for x = "
          f"{TOY_X.tolist()}, squared loss {toy_by_hand()[1]:.4f}")
    check_toy_training()
    print("one SGD step: gradients and updated weights match the hand computation")
