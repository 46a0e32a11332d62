"""Training ember.nn's RNN/GRU/LSTM: the same SGD steps as torch give the same parameters.

Needs the gradients of the ONNX RNN/GRU/LSTM ops (backpropagation through time,
graph/ops/recurrent.py); until they are in, autodiff refuses these graphs and these tests fail
with "has no gradient rule".

Oracle: torch with the same state_dict. Tolerance: float32 on both sides, 8 time steps and a
few SGD steps: parameters agree to 1e-4 relative / 1e-5 absolute.
"""
import numpy as np
import pytest

import ember
import ember.nn as nn
import ember.nn.functional as F
from ember import optim

torch = pytest.importorskip("torch")

T, FEATURES, HIDDEN, CLASSES = 8, 4, 5, 3
CASES = [
    ("GRU", dict(num_layers=2)),
    ("GRU", dict(bidirectional=True)),
    ("LSTM", dict(num_layers=2, bidirectional=True)),
    ("LSTM", dict(bias=False)),
    ("RNN", dict(nonlinearity="relu", num_layers=2)),
]


def classifier(lib, kind, kwargs):
    """A recurrent layer (batch first) over the sequence, a Linear on the last step's output."""
    D = 2 if kwargs.get("bidirectional") else 1

    class Net(lib.Module):
        def __init__(self):
            super().__init__()
            self.rnn = getattr(lib, kind)(FEATURES, HIDDEN, batch_first=True, **kwargs)
            self.fc = lib.Linear(T * D * HIDDEN, CLASSES)

        def forward(self, x):
            out, _ = self.rnn(x)
            return self.fc(out.flatten(1) if lib is torch.nn else F.flatten(out))
    return Net()


@pytest.mark.parametrize("kind,kwargs", CASES)
def test_recurrent_training_matches_torch(kind, kwargs):
    torch.manual_seed(0)
    theirs = classifier(torch.nn, kind, kwargs)
    ours = classifier(nn, kind, kwargs)
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, T, FEATURES)).astype(np.float32)
    y = rng.integers(0, CLASSES, 6)
    trainer = ember.Trainer(ours, input_shape=(T, FEATURES), optimizer=optim.SGD(lr=0.2),
                            batch_size=6, clip_grad_norm=1.0)
    topt = torch.optim.SGD(theirs.parameters(), lr=0.2)
    for _ in range(3):
        topt.zero_grad()
        loss = torch.nn.functional.cross_entropy(theirs(torch.from_numpy(x)),
                                                 torch.from_numpy(y))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(theirs.parameters(), 1.0)
        topt.step()
        assert trainer.train_step(x, y) == pytest.approx(loss.item(), rel=1e-4)
    got = trainer.state_dict()
    for k, v in theirs.state_dict().items():
        np.testing.assert_allclose(got[k], v.detach().numpy(), rtol=1e-4, atol=1e-5,
                                   err_msg=k)
