"""Output distributions and their negative log-likelihood, in nats.

A head maps the recurrent output h_t (B, T, H) to the parameters of p(target_t | x_<t) and
scores targets under them. ``nll`` returns (B, T): one number per time step, summed over the
output dimensions (PAPER.md section 3: a music step's NLL sums the 88 notes' Bernoulli NLLs).
"""
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from . import kernels
from .kernels.jit import _exp, _log1p_unit, kernel
from .kernels.workspace import workspace


class BernoulliHead(nn.Module):
    """Independent Bernoulli outputs (piano rolls): a sigmoid per note, kept as logits.

    NLL per step = sum_d softplus(-l_d) if y_d = 1 else softplus(l_d), computed stably: by
    binary_cross_entropy_with_logits with ``backend="reference"``, by one compiled pass
    (bernoulli_nll below, same formula) with ``backend="fast"``.
    """

    def __init__(self, hidden_size, output_size, backend="fast"):
        super().__init__()
        self.proj = nn.Linear(hidden_size, output_size)
        self.backend = backend

    def forward(self, h):
        return self.proj(h)                                      # (B, T, D) logits

    def nll(self, logits, target):
        if self.backend == "fast":
            return bernoulli_nll(logits, target)
        return F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(-1)


def bernoulli_nll(logits, target):
    """F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(-1), the
    Bernoulli output layer's NLL per step, in one compiled pass that also keeps the gradient
    (sigmoid(logits) - target) for the backward. Where the kernels cannot serve
    (kernels.unsupported; or a target that needs a gradient or a shape other than the logits'),
    it is that torch expression."""
    reason = kernels.unsupported(logits, target)
    if reason or target.requires_grad or target.shape != logits.shape or logits.numel() == 0:
        if reason:
            kernels.warn_once(reason)
        return F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(-1)
    return _BernoulliNLL.apply(logits, target)


class _BernoulliNLL(torch.autograd.Function):

    @staticmethod
    def forward(ctx, logits, target):
        D = logits.shape[-1]
        flat = logits.detach().contiguous().numpy().reshape(-1, D)
        nll = np.empty(flat.shape[0], flat.dtype)
        grad = workspace.empty(flat.shape, flat.dtype)
        _bernoulli_nll(flat, target.detach().contiguous().numpy().reshape(-1, D), nll, grad)
        ctx.grad = torch.from_numpy(grad).view(logits.shape)
        return torch.from_numpy(nll).view(logits.shape[:-1])

    @staticmethod
    @once_differentiable
    def backward(ctx, dnll):
        return ctx.grad * dnll.unsqueeze(-1), None


@kernel
def _bernoulli_term(logit, y, zero, one):
    """-log p(y | sigmoid(logit)) = max(l, 0) - l y + log(1 + e^-|l|), and its derivative in l,
    sigmoid(l) - y. NaN in, NaN out (l y is NaN). zero, one: of the logits' dtype."""
    e = _exp(-abs(logit))
    s = one / (one + e)
    return max(logit, zero) - logit * y + _log1p_unit(e), (s if logit >= zero else e * s) - y


@kernel(fastmath={"contract", "reassoc"})
def _bernoulli_nll(logits, target, nll, grad):
    """nll (N,) = per row the sum over D of the Bernoulli NLL of target (N, D) under logits
    (N, D); grad (N, D) = its derivative in the logits. The per-entry arithmetic is exact
    (_bernoulli_term, compiled with the kernels' flags); only the row sum is reassociated, which lets
    it vectorize."""
    N, D = logits.shape
    zero, one = logits.dtype.type(0), logits.dtype.type(1)
    for r in range(N):
        acc = zero
        for d in range(D):
            v, g = _bernoulli_term(logits[r, d], target[r, d], zero, one)
            grad[r, d] = g
            acc += v
        nll[r] = acc


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
