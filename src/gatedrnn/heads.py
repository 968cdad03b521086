"""Output distributions and their negative log-likelihood, in nats.

A head maps the recurrent output h_t (B, T, H) to the parameters of p(target_t | x_<t) and
scores targets under them. ``nll`` returns (B, T): one number per time step, summed over the
output dimensions (PAPER.md section 3: a music step's NLL sums the 88 notes' Bernoulli NLLs).
"""
import torch.nn.functional as F
from torch import nn


class BernoulliHead(nn.Module):
    """Independent Bernoulli outputs (piano rolls): a sigmoid per note, kept as logits.

    NLL per step = sum_d softplus(-l_d) if y_d = 1 else softplus(l_d), computed stably by
    binary_cross_entropy_with_logits.
    """

    def __init__(self, hidden_size, output_size):
        super().__init__()
        self.proj = nn.Linear(hidden_size, output_size)

    def forward(self, h):
        return self.proj(h)                                      # (B, T, D) logits

    def nll(self, logits, target):
        return F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(-1)


HEADS = {"bernoulli": BernoulliHead}
