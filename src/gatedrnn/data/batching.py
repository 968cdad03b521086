"""From sequences to padded minibatches.

An *example* is a pair (inputs (T, I), targets (T, D)) of float tensors: the model reads
inputs_<=t and predicts targets_t. For piano rolls, inputs_t = x_{t-1} (zeros at t = 0) and
targets_t = x_t, so every one of the T steps is predicted and counted in the NLL.
"""
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Batch:
    inputs: torch.Tensor    # (B, T, I), zero past each length
    targets: torch.Tensor   # (B, T, D)
    lengths: torch.Tensor   # (B,) int64

    @property
    def steps(self):
        return int(self.lengths.sum())

    def chunks(self, size=None):
        """Consecutive pieces of at most ``size`` steps, for truncated backpropagation through
        time (all of it as one piece when size is None)."""
        if size is None:
            return [self]
        T = self.inputs.shape[1]
        return [Batch(self.inputs[:, t:t + size], self.targets[:, t:t + size],
                      (self.lengths - t).clamp(0, size)) for t in range(0, T, size)]


def shifted_examples(seqs):
    """Sequences (T, D) -> examples predicting x_t from x_<t: inputs x_{t-1}, zeros at t = 0."""
    examples = []
    for seq in seqs:
        x = torch.as_tensor(np.asarray(seq), dtype=torch.float32)       # (T, D)
        inputs = torch.cat([x.new_zeros(1, x.shape[1]), x[:-1]])        # (T, D), shifted by one
        examples.append((inputs, x))
    return examples


def music_examples(rolls):
    """Piano rolls (T, 88) uint8 -> examples predicting x_t from x_<t."""
    return shifted_examples(rolls)


def token_examples(seqs, vocabulary_size):
    """Token sequences (T,) -> examples: inputs the previous token one-hot (T, V) (zeros at
    t = 0), targets the tokens (T,) int64."""
    examples = []
    for seq in seqs:
        y = torch.as_tensor(np.asarray(seq), dtype=torch.int64)         # (T,)
        inputs = torch.zeros(len(y), vocabulary_size)                   # (T, V)
        inputs[torch.arange(1, len(y)), y[:-1]] = 1
        examples.append((inputs, y))
    return examples


def pad(examples):
    lengths = torch.tensor([len(i) for i, _ in examples], dtype=torch.int64)
    inputs = torch.nn.utils.rnn.pad_sequence([i for i, _ in examples], batch_first=True)
    targets = torch.nn.utils.rnn.pad_sequence([t for _, t in examples], batch_first=True)
    return Batch(inputs, targets, lengths)


def length_sorted_batches(examples, batch_size, rng=None):
    """Minibatches of sequences of similar length (little padding). With ``rng`` the order of
    batches is shuffled and equal-length sequences are mixed; without it the order is fixed."""
    lengths = np.array([len(i) for i, _ in examples])
    tiebreak = rng.random(len(lengths)) if rng is not None else np.arange(len(lengths))
    order = np.lexsort((tiebreak, lengths))
    chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if rng is not None:
        chunks = [chunks[i] for i in rng.permutation(len(chunks))]
    return [pad([examples[j] for j in chunk]) for chunk in chunks]
