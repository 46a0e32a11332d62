"""Neural machine translation with attention: human-readable dates → ISO dates (course 5, week 3).

Dates such as "the 3rd of March 2021", "3/3/21", "Tuesday, March 3, 2021" or "03.03.2021" are
generated here from a seeded generator (thirteen formats; dates from 1969 to 2068, so a
two-digit year reads as POSIX's strptime reads it: "21" is 2021, "85" is 1985; slashes put the
month first, dots the day). Preprocessing is the course's: lowercase, commas dropped, each
string padded to Tx = 30 characters and one-hot over the 37-character human vocabulary (space
. / digits, the 22 letters of English month and day names, <unk> and <pad>); the target
"YYYY-MM-DD" is Ty = 10 indices into the 11-character machine vocabulary (- and digits).

The model is the course's. A bidirectional LSTM (n_a per direction) reads the input into
a⟨1..Tx⟩; then, for t = 1..Ty, ``one_step_attention`` repeats the previous post-attention state
s⟨t−1⟩ Tx times, concatenates it with a, and scores each position by Dense(10, tanh) →
Dense(1, relu); a softmax over the Tx positions gives α⟨t,·⟩ and the context Σ α⟨t,t'⟩ a⟨t'⟩
feeds one step of the post-attention LSTM (hidden n_s, its (s, c) carried from step to step),
whose state Dense(11) scores the output character. One change from the course: the energy
layer's bias starts at 1, so its relu starts live (a negative start can kill it for every
position, leaving α uniform and the learning slow). The Python loop over Ty traces into one
static graph. The loss is the cross-entropy averaged over the batch and the Ty positions (the
course sums it over Ty: the same gradient up to a factor Ty, which Adam's step ignores).

Prints the exact-match accuracy on held-out dates, the translations of a few strings, and saves
the attention map (Ty × Tx α) of one of them as a PNG.

    python examples/nmt_attention.py [epochs] [attention.png]
"""
from __future__ import annotations

import datetime
import sys

import numpy as np

import ember
from ember import nn

from _common import write_png

F = nn.functional
TX, TY = 30, 10
LETTERS = "abcdefghijlmnoprstuvwy"     # every letter of the English month and day names
HUMAN_VOCAB = [" ", ".", "/"] + list("0123456789") + list(LETTERS) + ["<unk>", "<pad>"]
MACHINE_VOCAB = list("-0123456789")
HUMAN_INDEX = {ch: i for i, ch in enumerate(HUMAN_VOCAB)}
UNK, PAD = HUMAN_INDEX["<unk>"], HUMAN_INDEX["<pad>"]
FIRST_DAY = datetime.date(1969, 1, 1).toordinal()
LAST_DAY = datetime.date(2068, 12, 31).toordinal()
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
EXAMPLES = ["the 3rd of March 2021", "3/3/21", "Tuesday, March 3, 2021", "03.03.2021",
            "march 3 2021", "1 jan 1969", "Monday, 31 December 2068", "12/25/99"]


def ordinal(day: int) -> str:
    suffix = "th" if 11 <= day % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return f"{day}{suffix}"


def _fields(d: datetime.date) -> dict:
    month = MONTHS[d.month - 1]
    return dict(d=d.day, dd=f"{d.day:02d}", m=d.month, mm=f"{d.month:02d}", yyyy=d.year,
                yy=f"{d.year % 100:02d}", month=month, mon=month[:3],
                weekday=WEEKDAYS[d.weekday()], nth=ordinal(d.day))


FORMATS = ["{d} {mon} {yyyy}", "{d} {month} {yyyy}", "{dd} {mon} {yyyy}", "{month} {d}, {yyyy}",
           "{mon} {d}, {yyyy}", "{weekday}, {month} {d}, {yyyy}", "{weekday}, {d} {month} {yyyy}",
           "the {nth} of {month} {yyyy}", "{nth} {month} {yyyy}", "{m}/{d}/{yy}",
           "{dd}.{mm}.{yyyy}", "{dd}.{mm}.{yy}", "{yyyy}/{mm}/{dd}"]


def random_dates(m: int, seed: int = 0):
    """m (human-readable string, ISO string) pairs, dates uniform over 1969–2068, formats
    uniform over FORMATS, each either capitalised as written or lowercased."""
    rng = np.random.default_rng(seed)
    days = rng.integers(FIRST_DAY, LAST_DAY + 1, m)
    formats = rng.integers(0, len(FORMATS), m)
    lower = rng.random(m) < 0.5
    pairs = []
    for day, f, low in zip(days, formats, lower):
        d = datetime.date.fromordinal(int(day))
        human = FORMATS[f].format(**_fields(d))
        pairs.append((human.lower() if low else human, d.isoformat()))
    return pairs


def encode_human(texts) -> np.ndarray:
    """One-hot (m, Tx, 37): lowercased, commas dropped, cut or padded to Tx; characters outside
    the vocabulary are <unk>."""
    idx = np.full((len(texts), TX), PAD, np.int64)
    for row, text in enumerate(texts):
        chars = text.lower().replace(",", "")[:TX]
        idx[row, :len(chars)] = [HUMAN_INDEX.get(ch, UNK) for ch in chars]
    return np.eye(len(HUMAN_VOCAB), dtype=np.float32)[idx]


def encode_machine(isos) -> np.ndarray:
    """(m, Ty) int64 indices into MACHINE_VOCAB."""
    return np.array([[MACHINE_VOCAB.index(ch) for ch in iso] for iso in isos], np.int64)


def decode_machine(indices) -> list:
    return ["".join(MACHINE_VOCAB[i] for i in row) for row in indices]


def dataset(m: int, seed: int = 0):
    """(X one-hot (m, Tx, 37), Y (m, Ty), the human strings)."""
    human, iso = zip(*random_dates(m, seed))
    return encode_human(human), encode_machine(iso), list(human)


class DateTranslator(nn.Module):
    """The course's attention model; ``forward(x)`` → scores (m, 11, Ty) (torch's layout for a
    cross-entropy over several positions), and also α (m, Ty, Tx) when ``return_attention``."""

    def __init__(self, n_a: int = 32, n_s: int = 64, attention_units: int = 10,
                 return_attention: bool = False):
        super().__init__()
        self.n_s, self.return_attention = n_s, return_attention
        self.encoder = nn.LSTM(len(HUMAN_VOCAB), n_a, bidirectional=True, batch_first=True)
        self.attention_hidden = nn.Linear(n_s + 2 * n_a, attention_units)
        self.attention_energy = nn.Linear(attention_units, 1)
        # Energies start in relu's live range. torch's default bias, drawn from ±0.32, can start
        # negative; then every position's relu may die, α stays uniform for good, and the model
        # learns the dates from the mean of a: slowly, with no alignment to show.
        self.attention_energy.bias = nn.Parameter(np.ones(1, np.float32))
        self.decoder = nn.LSTM(2 * n_a, n_s, batch_first=True)
        self.output_layer = nn.Linear(n_s, len(MACHINE_VOCAB))

    def one_step_attention(self, a, s_prev):
        """α⟨t,·⟩ (m, Tx) and the context Σ_t' α⟨t,t'⟩ a⟨t'⟩ (m, 1, 2·n_a) from a (m, Tx, 2·n_a)
        and s⟨t−1⟩ (m, 1, n_s)."""
        # RepeatVector(Tx) as a Concat of Tx copies: Concat has a gradient rule, Tile has none
        repeated = F.concat([s_prev] * TX, dim=1)
        e = F.tanh(self.attention_hidden(F.concat([repeated, a], dim=2)))
        energies = F.relu(self.attention_energy(e))                  # (m, Tx, 1)
        alpha = F.softmax(F.reshape(energies, [-1, TX]), dim=1)
        context = F.reshape(alpha, [-1, 1, TX]) @ a
        return alpha, context

    def zero_state(self, x):
        """(m, 1, n_s) zeros for a batch of any size: the course's s0 = 0. The traced batch is
        symbolic and ConstantOfShape needs a constant shape, so the zeros are the product of x's
        first (one-hot, finite) position with a zero matrix."""
        first = F.narrow(x, 1, 0, 1)                                  # (m, 1, 37)
        return first @ np.zeros((len(HUMAN_VOCAB), self.n_s), np.float32)

    def forward(self, x):
        a, _ = self.encoder(x)                                         # (m, Tx, 2·n_a)
        s = self.zero_state(x)
        state = None                                                   # the LSTM's own zeros
        scores, alphas = [], []
        for _ in range(TY):
            alpha, context = self.one_step_attention(a, s)
            s, state = self.decoder(context, state)                    # one step: (m, 1, n_s)
            scores.append(self.output_layer(s))                        # (m, 1, 11)
            alphas.append(F.reshape(alpha, [-1, 1, TX]))
        out = F.concat(scores, dim=1).transpose((0, 2, 1))             # (m, 11, Ty)
        if self.return_attention:
            return out, F.concat(alphas, dim=1)
        return out


def exact_match(scores: np.ndarray, y: np.ndarray) -> float:
    """Fraction of rows whose Ty characters are all right."""
    return float((scores.argmax(axis=1) == y).all(axis=1).mean())


def train(m=10000, epochs=10, n_a=32, n_s=64, seed=0, lr=5e-3, batch_size=32,
          test_size=1000, threads=1):
    """(trainer, model, exact match on ``test_size`` held-out dates). One thread by default:
    each node of this model is small (a batch of 100, hidden sizes of tens), too little work per
    kernel call to pay for waking a second thread tens of times per step — on a busy 2-core
    machine two threads made a step ~8× slower."""
    x, y, _ = dataset(m + test_size, seed)
    model = DateTranslator(n_a, n_s)
    trainer = ember.Trainer(model, input_shape=(TX, len(HUMAN_VOCAB)),
                            loss=nn.CrossEntropyLoss(), optimizer=ember.optim.Adam(lr=lr),
                            batch_size=batch_size, seed=seed, clip_grad_norm=5.0,
                            threads=threads)
    trainer.fit(x[:m], y[:m], epochs=epochs, verbose=False)
    return trainer, model, exact_match(trainer.predict(x[m:]), y[m:])


def translate(trainer, model, texts):
    """(ISO strings, α (len(texts), Ty, Tx)) through the trained weights."""
    twin = DateTranslator(model.encoder.hidden_size, model.n_s,
                          model.attention_hidden.out_features, return_attention=True)
    twin.load_state_dict(trainer.state_dict())
    x = encode_human(texts)
    graph = twin.eval().to_graph(x.shape)
    scores, alpha = ember.Session(graph).run(None, {"input": x})
    return decode_machine(scores.argmax(axis=1)), alpha


def save_attention(path, alpha, text, iso, zoom=16):
    """The Ty × Tx map (rows: output characters, columns: input characters), dark where α is
    large; with matplotlib, labelled with both strings."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        write_png(path, (1 - alpha / alpha.max()).repeat(zoom, 0).repeat(zoom, 1))
        return
    chars = list(text.lower().replace(",", "")[:TX])
    fig, ax = plt.subplots(figsize=(9, 3.5))
    ax.imshow(alpha, cmap="Greys", aspect="auto")
    ax.set_xticks(range(TX), chars + [""] * (TX - len(chars)))
    ax.set_yticks(range(TY), list(iso))
    ax.set_title(f"attention: {text!r} → {iso}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run(m=10000, epochs=10, n_a=32, n_s=64, seed=0, png="nmt_attention.png",
        examples=EXAMPLES, test_size=1000, lr=5e-3):
    """Train, translate ``examples``, save the first one's attention map.
    Returns (held-out exact match, translations, α of the examples)."""
    trainer, model, accuracy = train(m, epochs, n_a, n_s, seed, lr, test_size=test_size)
    isos, alpha = translate(trainer, model, list(examples))
    save_attention(png, alpha[0], examples[0], isos[0])
    return accuracy, isos, alpha


if __name__ == "__main__":
    epochs = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    path = sys.argv[2] if len(sys.argv) > 2 else "nmt_attention.png"
    accuracy, isos, _ = run(epochs=epochs, png=path)
    print(f"dates → ISO, {epochs} epochs: exact match on 1,000 held-out dates {accuracy:.1%}")
    for text, iso in zip(EXAMPLES, isos):
        print(f"  {text!r:32} → {iso}")
    print(f"attention map of {EXAMPLES[0]!r}: {path}")
