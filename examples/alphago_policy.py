"""Example 5 — the AlphaGo-style policy network (Silver et al. 2016's SL policy net, 192 filters).

19×19×48 feature planes → conv 5×5 ×192 (pad 2) → ReLU → 11 × [conv 3×3 ×192 (pad 1) → ReLU]
→ 1×1 conv to one channel, no bias → + one learned bias per board point (a broadcast Add)
→ softmax over the 361 points. 3,882,793 parameters (REFERENCE.md).

Weights start from He initialization (see ``he_init``). The net returns the 361 logits
(``softmax=True`` appends the Softmax, for play); training uses cross-entropy on the logits. The synthetic positions are random stones; the move to learn is
the empty point with the most black neighbours — a local rule a conv stack can pick up.

    python examples/alphago_policy.py [steps]
"""
from __future__ import annotations

import sys

import numpy as np

import ember
from ember import nn
from ember.nn import functional as F

from _common import count_conv, run

BOARD, PLANES, FILTERS, HIDDEN_3X3 = 19, 48, 192, 11
POLICY_PARAMS = (count_conv(PLANES, FILTERS, 5) + HIDDEN_3X3 * count_conv(FILTERS, FILTERS, 3)
                 + count_conv(FILTERS, 1, 1, bias=False) + BOARD * BOARD)


class PolicyNet(nn.Module):
    def __init__(self, filters=FILTERS, hidden=HIDDEN_3X3, softmax=False):
        super().__init__()
        self.convs = nn.Sequential(nn.Conv2d(PLANES, filters, 5, padding=2), nn.ReLU())
        for _ in range(hidden):
            self.convs.append(nn.Conv2d(filters, filters, 3, padding=1))
            self.convs.append(nn.ReLU())
        self.head = nn.Conv2d(filters, 1, 1, bias=False)
        self.position_bias = nn.Parameter((1, 1, BOARD, BOARD), "zeros")
        self.softmax = softmax

    def forward(self, x):
        logits = F.flatten(self.head(self.convs(x)) + self.position_bias, 1)   # [N, 361]
        return F.softmax(logits, dim=1) if self.softmax else logits


def he_init(model: nn.Module, seed: int = 0) -> nn.Module:
    """He et al.'s N(0, 2/fan_in) conv weights and zero biases: twelve plain ReLU convs keep
    their signal this way (torch's default, U(±1/√fan_in), shrinks it layer after layer, so
    the untrained net's logits are almost flat and barely train)."""
    rng = np.random.default_rng(seed)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.weight.data = ember.init.kaiming_normal(m.weight.shape, nonlinearity="relu",
                                                      rng=rng)
            if m.bias is not None:
                m.bias.data = np.zeros(m.bias.shape, np.float32)
    return model


def build(softmax=False, seed=0) -> PolicyNet:
    return he_init(PolicyNet(softmax=softmax), seed)


def check() -> None:
    model = build(softmax=True)
    assert POLICY_PARAMS == 3_882_793 and model.num_parameters() == POLICY_PARAMS
    g = model.eval().to_graph((2, PLANES, BOARD, BOARD), seed=0)
    assert g.types["output"].shape == (2, BOARD * BOARD)
    assert any(n.op_type == "Add" and "position_bias" in n.inputs for n in g.nodes)
    x, _ = positions(2)
    probs = run(g, x)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)


def positions(n: int, seed: int = 0):
    """``n`` synthetic positions: planes 0/1/2 black, white, empty; plane 3 all ones (as in
    AlphaGo's features); the other planes zero. Label: the empty point with the most black
    4-neighbours (first in row-major order on ties)."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, PLANES, BOARD, BOARD), np.float32)
    y = np.zeros(n, np.int64)
    for k in range(n):
        stones = rng.choice(3, size=(BOARD, BOARD), p=[0.2, 0.2, 0.6])   # 0 black, 1 white
        for plane in range(3):
            x[k, plane] = stones == plane
        x[k, 3] = 1
        black = np.pad(x[k, 0], 1)
        neighbours = black[:-2, 1:-1] + black[2:, 1:-1] + black[1:-1, :-2] + black[1:-1, 2:]
        y[k] = np.argmax(np.where(x[k, 2] > 0, neighbours, -1).reshape(-1))
    return x, y


def train(steps: int = 6, batch_size: int = 8, seed: int = 0) -> list:
    """``steps`` Adam steps on one fixed batch of synthetic positions (one batch per epoch, so
    ``history["loss"]`` is each step's loss, measured before its update); returns those."""
    x, y = positions(batch_size, seed)
    trainer = ember.Trainer(build(seed=seed), input_shape=(PLANES, BOARD, BOARD),
                            loss=nn.CrossEntropyLoss(), optimizer=ember.optim.Adam(lr=1e-4),
                            batch_size=batch_size, seed=seed)
    return trainer.fit(x, y, epochs=steps, shuffle=False, verbose=False).history["loss"]


if __name__ == "__main__":
    check()
    print(f"policy net: {POLICY_PARAMS:,} parameters (REFERENCE.md: 3,882,793); softmax over "
          f"{BOARD * BOARD} points sums to 1")
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 6
    losses = train(steps)
    print(f"{steps} Adam steps on 8 synthetic positions: loss "
          + " → ".join(f"{v:.3f}" for v in losses))
