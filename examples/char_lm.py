"""A character-level language model that invents dinosaur names, the sequence-models course's
"Dinosaurus Island" exercise.

The vocabulary is the course's: "\\n" (the end token, also fed as the first input) and the 26
letters. Each name is a sequence x = "\\n" + name, y = name + "\\n": at every step the model
reads one character and predicts the next (an embedding → LSTM → Linear over the 27
characters, softmax cross-entropy per step; steps past a name's end are ignored). Gradients are
clipped by norm (``Trainer(clip_grad_norm=5)``, torch's ``clip_grad_norm_``) — what keeps an
RNN's exploding gradients in check, the course's point (its numpy exercise clips each element to
[−5, 5]; clipping the norm keeps the gradient's direction). After training, names are sampled
one character at a time from the softmax (seeded) until the model emits "\\n".

The training names are bundled, not downloaded: dinosaur-like names built from the roots and
endings real genus names are made of (``names``) — a few hundred of them, so a model that
learned the language ends its inventions in "saurus", "raptor", "don", ….

    python examples/char_lm.py [epochs]
"""
from __future__ import annotations

import sys

import numpy as np

import ember
from ember import nn, optim
from ember.callbacks import Callback

VOCAB = "\n" + "abcdefghijklmnopqrstuvwxyz"
END = 0                       # index of "\n"
IGNORE = -100                 # label of the padding past a name's end

ROOTS = ("tyranno", "stego", "tricera", "brachio", "allo", "veloci", "diplo", "apato",
         "iguano", "ankylo", "pachy", "parasauro", "spino", "carno", "compso", "dilopho",
         "galli", "micro", "ovi", "maia", "troo", "protocera", "hetero", "cerato", "hadro",
         "lambeo", "corytho", "edmonto", "plateo", "mega", "gorgo", "albert", "deino",
         "utah", "giganto", "argentino", "sucho", "bary", "austro", "masso", "plesio", "ptero",
         "cryolopho", "nodo", "euoplo", "sauropel", "psittaco", "tenonto", "dryo", "ornitho")
ENDINGS = ("saurus", "raptor", "don", "ceratops", "mimus", "venator", "titan", "odon",
           "nykus", "lophus", "suchus", "pteryx", "cephale", "ceps", "sauria")


def names(count: int = 400, seed: int = 0) -> list[str]:
    """``count`` distinct root + ending names (of the 750 possible), drawn with ``seed``."""
    pairs = [r + e for r in ROOTS for e in ENDINGS]
    rng = np.random.default_rng(seed)
    return sorted(pairs[i] for i in rng.choice(len(pairs), count, replace=False))


def encode(words: list[str], length: int):
    """x (n, length) float32 character indices ("\\n" then the word, "\\n"-padded) and y
    (n, length) int64 next-character labels (the word then "\\n", then IGNORE)."""
    x = np.full((len(words), length), END, np.float32)
    y = np.full((len(words), length), IGNORE, np.int64)
    for i, w in enumerate(words):
        ids = [VOCAB.index(c) for c in w]
        x[i, 1:len(ids) + 1] = ids
        y[i, :len(ids) + 1] = ids + [END]
    return x, y


class CharLM(nn.Module):
    """(N, T) character indices → (N, 27, T) next-character logits (torch's CrossEntropyLoss
    layout: classes on axis 1)."""

    def __init__(self, vocab: int = len(VOCAB), embed: int = 16, hidden: int = 64):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.lstm = nn.LSTM(embed, hidden, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, x):
        h, _ = self.lstm(self.embed(x))
        return self.head(h).transpose((0, 2, 1))


def sample(trainer, count: int, length: int, seed: int = 0) -> list[tuple[str, bool]]:
    """``count`` names drawn character by character from the model's softmax: (name, ended),
    ``ended`` False when no "\\n" came within ``length`` steps. The LSTM is causal, so the
    logits at step t depend only on the characters fed up to t: each step reruns the prefix."""
    rng = np.random.default_rng(seed)
    x = np.full((count, length), END, np.float32)
    done = np.zeros(count, bool)
    out = [[] for _ in range(count)]
    for t in range(length):
        logits = trainer.predict(x)[:, :, t].astype(np.float64)
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        for i in np.flatnonzero(~done):
            c = int(rng.choice(len(VOCAB), p=p[i]))
            if c == END:
                done[i] = True
            else:
                out[i].append(VOCAB[c])
                if t + 1 < length:
                    x[i, t + 1] = c
        if done.all():
            break
    return [("".join(o), bool(d)) for o, d in zip(out, done)]


class PrintLoss(Callback):
    """Prints each epoch's mean loss as it ends."""

    def on_epoch_end(self, epoch, logs=None):
        print(f"epoch {epoch + 1:3d}: loss {logs['loss']:.4f}")


def main(epochs: int = 30, count: int = 400, samples: int = 10, hidden: int = 64, seed: int = 0,
         lr: float = 1e-2, batch_size: int = 32, verbose: bool = True) -> dict:
    words = names(count, seed)
    length = max(map(len, words)) + 1
    x, y = encode(words, length)
    trainer = ember.Trainer(CharLM(hidden=hidden), input_shape=(length,),
                            loss=nn.CrossEntropyLoss(ignore_index=IGNORE),
                            optimizer=optim.Adam(lr=lr), batch_size=batch_size, seed=seed,
                            clip_grad_norm=5.0)
    history = trainer.fit(x, y, epochs=epochs, verbose=False,
                          callbacks=[PrintLoss()] if verbose else None)
    losses = history.history["loss"]
    drawn = sample(trainer, samples, length, seed)
    known = set(words)
    return {"loss": losses, "samples": drawn, "words": words,
            "novel": sum(name not in known for name, _ in drawn),
            "endings": sum(name.endswith(ENDINGS) for name, _ in drawn)}


if __name__ == "__main__":
    r = main(int(sys.argv[1]) if len(sys.argv) > 1 else 30)
    print(f"loss {r['loss'][0]:.3f} → {r['loss'][-1]:.3f} "
          f"(uniform guessing: ln 27 = {np.log(27):.3f})")
    print("sampled names:")
    for name, ended in r["samples"]:
        print(f"  {name}{'' if ended else '  (no end token)'}")
    print(f"{r['novel']}/{len(r['samples'])} not in the training list; "
          f"{r['endings']}/{len(r['samples'])} end in a genus ending")
