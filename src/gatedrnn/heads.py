"""Output distributions and their negative log-likelihood, in nats.

A head maps the recurrent output h_t (B, T, H) to the parameters of p(target_t | x_<t), scores
targets under them and draws from them. ``nll`` returns (B, T): one number per time step, summed
over the output dimensions (a music step's NLL sums the 88 notes' Bernoulli NLLs, so a uniform
model scores 88 ln 2 = 61.0 per step). ``sample(h_t, generator, temperature)`` draws one step's
target (B, D) (tokens: (B,)) given h_t (B, H); ``from_config(config)`` builds the head of a
resolved model config.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from . import kernels
from .errors import UserError
from .kernels.bernoulli import bernoulli_nll_loop
from .kernels.workspace import workspace


class BernoulliHead(nn.Module):
    """Independent Bernoulli outputs (piano rolls): a sigmoid per note, kept as logits.

    NLL per step = sum_d softplus(-l_d) if y_d = 1 else softplus(l_d), computed stably: by
    binary_cross_entropy_with_logits with ``backend="reference"``, by one compiled pass
    (bernoulli_nll below: kernels/bernoulli.py's loop, same formula) with ``backend="fast"``.
    """

    def __init__(self, hidden_size, output_size, backend="fast"):
        super().__init__()
        self.proj = nn.Linear(hidden_size, output_size)
        self.backend = backend

    @classmethod
    def from_config(cls, config):
        return cls(config.hidden_size, config.output_size, backend=config.backend)

    def forward(self, h):
        return self.proj(h)                                      # (B, T, D) logits

    def nll(self, logits, target):
        if self.backend == "fast":
            return bernoulli_nll(logits, target)
        return F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(-1)

    @torch.no_grad()
    def sample(self, h_t, generator=None, temperature=1.0):
        """Every note drawn independently from sigmoid(logit / temperature), (B, D) 0/1."""
        p = torch.sigmoid(self(h_t) / _positive(temperature))
        return (torch.rand(p.shape, generator=generator, device=p.device, dtype=p.dtype) < p).to(p.dtype)


def bernoulli_nll(logits, target):
    """F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(-1), the
    Bernoulli output layer's NLL per step, in one compiled pass that also keeps the gradient
    (sigmoid(logits) - target) for the backward. Where the kernels cannot serve
    (kernels.unsupported; or a target that needs a gradient or a shape other than the logits'),
    it is that torch expression."""
    reason = kernels.unsupported(logits, target, instead="binary_cross_entropy_with_logits")
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
        bernoulli_nll_loop(flat, target.detach().contiguous().numpy().reshape(-1, D), nll, grad)
        ctx.grad = torch.from_numpy(grad).view(logits.shape)
        return torch.from_numpy(nll).view(logits.shape[:-1])

    @staticmethod
    @once_differentiable
    def backward(ctx, dnll):
        return ctx.grad * dnll.unsqueeze(-1), None


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

    @classmethod
    def from_config(cls, config):
        return cls(config.hidden_size, config.output_size, components=config.components)

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

    @torch.no_grad()
    def sample(self, h_t, generator=None, temperature=1.0):
        """A component k ~ softmax(logits / temperature), then y ~ N(mu_k, (temperature *
        sigma_k)^2), (B, D): temperature 1 draws from the model, lower is more conservative."""
        t = _positive(temperature)
        logits, mean, scale = self(h_t)                          # (B, K), (B, K, D), (B, K, D)
        k = torch.multinomial(torch.softmax(logits / t, -1), 1, generator=generator)   # (B, 1)
        pick = k.unsqueeze(-1).expand(-1, 1, self.dims)
        mu, sigma = mean.gather(1, pick).squeeze(1), scale.gather(1, pick).squeeze(1)
        noise = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + t * sigma * noise


class CategoricalHead(nn.Module):
    """A softmax over a vocabulary of V tokens (the characters of a text, any integer tokens):
    logits = W h_t + b, NLL per step = -log softmax(logits)[y_t] in nats (F.cross_entropy).
    Targets are (B, T) integer tokens."""

    def __init__(self, hidden_size, output_size):
        super().__init__()
        self.proj = nn.Linear(hidden_size, output_size)

    @classmethod
    def from_config(cls, config):
        return cls(config.hidden_size, config.output_size)

    def forward(self, h):
        return self.proj(h)                                      # (B, T, V) logits

    def nll(self, logits, target):
        V = logits.shape[-1]
        return F.cross_entropy(logits.reshape(-1, V), target.reshape(-1).long(),
                               reduction="none").view(target.shape)

    @torch.no_grad()
    def sample(self, h_t, generator=None, temperature=1.0):
        """One token per row, (B,), from softmax(logits / temperature)."""
        p = torch.softmax(self(h_t) / _positive(temperature), -1)
        return torch.multinomial(p, 1, generator=generator).squeeze(-1)


def _positive(temperature):
    if not (isinstance(temperature, (int, float)) and temperature > 0):
        raise UserError(f"temperature must be a positive number, got {temperature!r}")
    return float(temperature)


class NADEHead(nn.Module):
    """RNN-NADE (Boulanger-Lewandowski, Bengio & Vincent 2012, "Modeling temporal dependencies
    in high-dimensional sequences"): at each step a NADE (Larochelle & Murray 2011, "The neural
    autoregressive distribution estimator") over the D binary notes, whose biases follow the
    recurrent state h_t while its weights W (N x D) and V (D x N) are shared over time:

        b_v(t) = W_bv h_t + c_v                                      (D)
        b_h(t) = W_bh h_t + c_h                                      (N)
        a_d    = b_h(t) + W_{:, <d} v_<d                             (N)
        p(v_d = 1 | v_<d) = sigmoid(b_v,d(t) + V_d . sigmoid(a_d))
        p(v) = prod_d p(v_d | v_<d)

    N = nade_hidden. NLL per step = -log p(v) in nats, summed over the D notes (as for the
    Bernoulli head): sum_d softplus(-l_d) if v_d = 1 else softplus(l_d), with l_d the logit
    above, by binary_cross_entropy_with_logits (never log(sigmoid)). Teacher forcing gives all
    a_d at once, by an exclusive cumulative sum over d.

    Parameters: (H + 1) (D + N) + 2 D N (W_bv, c_v, W_bh, c_h, W, V) for H = hidden_size.
    Plain torch: both backends run the same code.
    """

    # 150: the NADE hidden units of Boulanger-Lewandowski et al. (2012) for RNN-NADE on these
    # four music sets, so that the head is the one whose NLLs they report.
    DEFAULT_NADE_HIDDEN = 150

    def __init__(self, hidden_size, output_size, nade_hidden=DEFAULT_NADE_HIDDEN):
        super().__init__()
        if isinstance(nade_hidden, bool) or not isinstance(nade_hidden, int) or nade_hidden < 1:
            raise UserError(f"nade_hidden must be a positive integer, got {nade_hidden!r}")
        self.dims, self.nade_hidden = output_size, nade_hidden
        self.visible_bias = nn.Linear(hidden_size, output_size)  # W_bv, c_v
        self.hidden_bias = nn.Linear(hidden_size, nade_hidden)   # W_bh, c_h
        self.W = nn.Parameter(torch.empty(nade_hidden, output_size))   # (N, D)
        self.V = nn.Parameter(torch.empty(output_size, nade_hidden))   # (D, N)
        self.reset_parameters()

    @classmethod
    def from_config(cls, config):
        return cls(config.hidden_size, config.output_size, nade_hidden=config.nade_hidden)

    def reset_parameters(self):
        """W and V as torch.nn.Linear initialises a weight: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
        self.visible_bias.reset_parameters()
        self.hidden_bias.reset_parameters()
        nn.init.uniform_(self.W, -self.dims ** -0.5, self.dims ** -0.5)
        nn.init.uniform_(self.V, -self.nade_hidden ** -0.5, self.nade_hidden ** -0.5)

    def forward(self, h):
        return self.visible_bias(h), self.hidden_bias(h)         # b_v (..., D), b_h (..., N)

    CHUNK_ENTRIES = 1 << 26      # (D, N) entries of a_d held at once: 256 MB in float32

    def logits(self, params, target):
        """l_d = b_v,d + V_d . sigmoid(a_d) for every note of every step, given v = target;
        computed for a bounded number of steps at a time (each step's a_d is (D, N): a
        pianomidi batch would otherwise hold gigabytes at once when evaluated)."""
        b_v, b_h = params
        shape, D = target.shape, target.shape[-1]
        rows = max(1, self.CHUNK_ENTRIES // (D * self.nade_hidden))
        b_v, b_h, v = b_v.reshape(-1, D), b_h.reshape(-1, self.nade_hidden), target.reshape(-1, D)
        return torch.cat([self._logits(b_v[i:i + rows], b_h[i:i + rows], v[i:i + rows])
                          for i in range(0, len(v), rows)]).view(shape)

    def _logits(self, b_v, b_h, v):
        """``logits`` of R steps: b_v (R, D), b_h (R, N), v (R, D)."""
        steps = v.unsqueeze(-1) * self.W.t()                     # (R, D, N): v_d W_{:, d}
        before = F.pad(steps.cumsum(-2)[..., :-1, :], (0, 0, 1, 0))   # (R, D, N): W_{:, <d} v_<d
        hidden = torch.sigmoid(b_h.unsqueeze(-2) + before)       # (R, D, N): sigmoid(a_d)
        return b_v + torch.einsum("rdn,dn->rd", hidden, self.V)  # (R, D)

    def nll(self, params, target):
        logits = self.logits(params, target)
        return F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(-1)

    @torch.no_grad()
    def sample(self, h_t, generator=None, temperature=1.0):
        """v ~ p(v | h_t) (B, D) as float 0/1, note by note. ``temperature`` divides every
        logit l_d before its sigmoid: 1 draws from the model, below 1 sharpens each conditional
        towards its likelier value, above 1 flattens it towards 1/2. The uniforms come from
        ``generator`` (on h_t's device), so a seeded generator gives the same notes."""
        temperature = _positive(temperature)
        b_v, a = self(h_t)                                       # (B, D), (B, N): a_1 = b_h
        v = torch.zeros_like(b_v)                                # (B, D)
        for d in range(self.dims):
            logit = b_v[..., d] + torch.sigmoid(a) @ self.V[d]   # (B,)
            u = torch.rand(logit.shape, generator=generator, device=logit.device, dtype=logit.dtype)
            v[..., d] = (u < torch.sigmoid(logit / temperature)).to(v.dtype)
            a = a + v[..., d, None] * self.W[:, d]               # a_{d+1} (B, N)
        return v


HEADS = {"bernoulli": BernoulliHead, "gmm": MixtureGaussianHead, "categorical": CategoricalHead,
         "nade": NADEHead}
