"""Output distributions and their negative log-likelihood, in nats.

A head maps the recurrent output h_t (B, T, H) to the parameters of p(target_t | x_<t) and
scores targets under them. ``nll`` returns (B, T): one number per time step, summed over the
output dimensions (PAPER.md section 3: a music step's NLL sums the 88 notes' Bernoulli NLLs).
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from . import kernels


class BernoulliHead(nn.Module):
    """Independent Bernoulli outputs (piano rolls): a sigmoid per note, kept as logits.

    NLL per step = sum_d softplus(-l_d) if y_d = 1 else softplus(l_d), computed stably: by
    binary_cross_entropy_with_logits with ``backend="reference"``, by one compiled pass
    (kernels.bernoulli_nll, same formula) with ``backend="fast"``.
    """

    def __init__(self, hidden_size, output_size, backend="fast"):
        super().__init__()
        self.proj = nn.Linear(hidden_size, output_size)
        self.backend = backend

    def forward(self, h):
        return self.proj(h)                                      # (B, T, D) logits

    def nll(self, logits, target):
        if self.backend == "fast":
            return kernels.bernoulli_nll(logits, target)
        return F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(-1)


class MixtureGaussianHead(nn.Module):
    """A mixture of K Gaussians with diagonal covariance over the D samples of a step (speech:
    K = 20, D = 10). Per step: mixture logits (K), means (K, D) and scales (K, D), where
    scale = softplus(raw) + min_scale so that it stays positive and bounded away from zero (on
    digital silence the likelihood would otherwise grow without bound).

    NLL per step = -logsumexp_k [log pi_k + sum_d log N(y_d; mu_kd, sigma_kd)].
    """

    def __init__(self, hidden_size, output_size, components=20, min_scale=1e-3):
        super().__init__()
        self.components, self.dims, self.min_scale = components, output_size, min_scale
        self.proj = nn.Linear(hidden_size, components * (1 + 2 * output_size))

    def forward(self, h):
        K, D = self.components, self.dims
        out = self.proj(h)                                       # (B, T, K (1 + 2D))
        logits = out[..., :K]                                    # (B, T, K)
        mean, raw = out[..., K:].unflatten(-1, (2, K, D)).unbind(-3)   # (B, T, K, D) each
        return logits, mean, F.softplus(raw) + self.min_scale

    def nll(self, params, target):
        logits, mean, scale = params
        z = (target.unsqueeze(-2) - mean) / scale                # (B, T, K, D)
        log_normal = -0.5 * z * z - torch.log(scale) - 0.5 * math.log(2 * math.pi)
        joint = F.log_softmax(logits, -1) + log_normal.sum(-1)   # (B, T, K)
        return -torch.logsumexp(joint, -1)


HEADS = {"bernoulli": BernoulliHead, "gmm": MixtureGaussianHead}
