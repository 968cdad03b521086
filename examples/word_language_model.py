"""gatedrnn's GRU / LSTM as drop-in replacements for torch.nn's, in a word-level language model:
pytorch/examples' word_language_model model with ``gatedrnn.GRU(ninp, nhid, nlayers,
dropout=dropout)`` where it had ``nn.GRU(...)``. Same arguments, states (nlayers, B, H), dropout
between layers while training, the hidden state carried across batches and detached. (The
paper's GRU by default; ``variant="torch"`` gives nn.GRU's equations and state_dict.) Reads the
text file given, else sentences of a tiny grammar; no download. Prints perplexities.

    PYTHONPATH=src python3 examples/word_language_model.py [--model LSTM] [--epochs 8] [FILE]
"""
import argparse
import math
import random

import torch
import torch.nn.functional as F
from torch import nn

import gatedrnn

GRAMMAR = (["the cat", "the dog", "a bird"], ["sat on", "ran to", "slept by"],
           ["the mat", "the door", "the fire"])


class RNNModel(nn.Module):
    def __init__(self, rnn_type, ntoken, ninp, nhid, nlayers, dropout=0.5):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, ninp)
        self.rnn = getattr(gatedrnn, rnn_type)(ninp, nhid, nlayers, dropout=dropout)  # was nn.*
        self.decoder = nn.Linear(nhid, ntoken)

    def forward(self, input, hidden=None):                  # input (T, B) word ids
        output, hidden = self.rnn(self.drop(self.encoder(input)), hidden)
        return self.decoder(self.drop(output)), hidden      # logits (T, B, ntoken)


def toy_text(lines=400, seed=0):
    """Sentences of GRAMMAR, one or two clauses each: the validation split holds new ones."""
    r = random.Random(seed)
    return "\n".join(" and ".join(" ".join(r.choice(part) for part in GRAMMAR)
                                  for _ in range(r.randint(1, 2))) for _ in range(lines))


def tokenize(text):
    return [w for line in text.splitlines() for w in line.split() + ["<eos>"]]


def batchify(ids, bsz):                                     # (N,) -> (N // bsz, bsz)
    return ids[:len(ids) // bsz * bsz].view(bsz, -1).t().contiguous()


def run_epoch(model, data, bptt, lr=None, clip=0.25):
    """Mean NLL per word over ``data`` (T, B); trains with plain SGD when given ``lr``."""
    model.train(lr is not None)
    hidden, total = None, 0.0
    for i in range(0, data.size(0) - 1, bptt):
        y = data[i + 1:i + 1 + bptt]
        if isinstance(hidden, tuple):                       # repackage_hidden: detach
            hidden = tuple(h.detach() for h in hidden)
        elif hidden is not None:
            hidden = hidden.detach()
        with torch.set_grad_enabled(lr is not None):
            logits, hidden = model(data[i:i + len(y)], hidden)
            loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        if lr is not None:
            model.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), clip)
            for p in model.parameters():
                p.data.add_(p.grad, alpha=-lr)
        total += loss.item() * y.numel()
    return total / (data.size(0) - 1) / data.size(1)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("file", nargs="?", help="a text file (default: toy_text())")
    p.add_argument("--model", default="GRU", choices=["GRU", "LSTM"])
    for name, default in dict(emsize=32, nhid=64, nlayers=2, dropout=0.2, lr=5.0, epochs=8,
                              bptt=12, batch_size=8).items():
        p.add_argument("--" + name.replace("_", "-"), type=type(default), default=default)
    args = p.parse_args(argv)
    torch.manual_seed(1)
    words = tokenize(open(args.file, encoding="utf-8").read() if args.file else toy_text())
    vocab = {w: i for i, w in enumerate(dict.fromkeys(words))}
    ids = torch.tensor([vocab[w] for w in words])
    split = len(ids) * 9 // 10
    train, valid = batchify(ids[:split], args.batch_size), batchify(ids[split:], 1)
    model = RNNModel(args.model, len(vocab), args.emsize, args.nhid, args.nlayers, args.dropout)
    print(f"{len(words)} words, vocabulary {len(vocab)}; {model.rnn}")
    history = []
    for epoch in range(1, args.epochs + 1):
        train_ppl = math.exp(run_epoch(model, train, args.bptt, args.lr))
        valid_ppl = math.exp(run_epoch(model, valid, args.bptt))
        print(f"epoch {epoch} | train perplexity {train_ppl:.2f} | valid {valid_ppl:.2f}")
        history.append((epoch, train_ppl, valid_ppl))
    return history


if __name__ == "__main__":
    main()
