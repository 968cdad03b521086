"""The recurrence of units whose gates do not read h_{t-1} (minGRU, minLSTM): h_t = a_t * h_{t-1}
+ b_t, with every a_t and b_t known before the loop starts.

Two ways to run it, the same numbers to rounding:

- ``log_space_scan``: all steps at once, a parallel scan in log space (Blelloch 1990; Heinsen
  2023, as Feng et al. 2024 do):

      h_t = A_t * h_0 + A_t * sum_{k<=t} b_k / A_k,     A_t = prod_{j<=t} a_j,

  the sum taken as exp(logcumsumexp(log b_k - log A_k)), which needs b_k > 0 (the units keep
  their candidate state positive for this) but no sign on h_0, whose term is added apart. Plain
  torch: it runs on any device, and autograd differentiates it. On a GPU this is the fast way.
  It computes in float64 whatever the inputs' dtype: h_t = exp(log A_t + log sum(...)) adds two
  terms of size |log A_t| (tens to hundreds within a chunk) and opposite signs, so float32
  would lose about |log A_t| * 6e-8 of each h_t, and its backward more (gradients 1e-3 off the
  float32 loop at T = 300).
- ``linear_scan``: one compiled pass over time, forward and backward written out, each step a
  multiply-add per entry. On a CPU this is much faster than the parallel scan (torch's CPU
  logcumsumexp alone takes about 80 ns an entry) and exact.

``recurrence`` picks the compiled pass where the kernels serve the tensors, else the parallel scan.
"""
import numpy as np
import torch

from .binary import uint8_mask
from .jit import kernel

CHUNK = 64      # steps scanned at once: log A_t grows with t, and with it the rounding of the sum


def recurrence(log_a, log_b, h0, mask=None, method="auto"):
    """h (T, B, H) with h_t = a_t * h_{t-1} + b_t, from log_a (T, B, H) (a in (0, 1]), log_b
    (T, B, H) and h0 (B, H); at a step where mask (T, B) is False the state is carried (a = 1,
    b = 0). method: "auto" (the compiled pass on CPU float32 / float64, else the parallel scan),
    "log" (the parallel scan) or "linear" (the compiled pass)."""
    from . import unsupported
    if method == "linear" or (method == "auto" and unsupported(log_a, log_b, h0) is None):
        return linear_scan(torch.exp(log_a), torch.exp(log_b), h0, mask)
    return log_space_scan(log_a, log_b, h0, mask)


def log_space_scan(log_a, log_b, h0, mask=None):
    """``recurrence`` as a parallel scan in log space, CHUNK steps at a time, in float64."""
    if log_a.dtype != torch.float64:                    # see the module's docstring
        return log_space_scan(log_a.double(), log_b.double(), h0.double(), mask).to(log_a.dtype)
    if mask is not None:
        m = mask.unsqueeze(-1)
        log_a = torch.where(m, log_a, 0.0)
        # b = 0 as a finite floor: -inf would make logcumsumexp's gradient NaN where a sequence
        # has no step yet; exp of the floor minus anything finite here is 0 all the same
        log_b = torch.where(m, log_b, torch.finfo(log_b.dtype).min / 4)
    outputs, h = [], h0
    for t0 in range(0, log_a.shape[0], CHUNK):
        a_star = torch.cumsum(log_a[t0:t0 + CHUNK], 0)                  # log A_t within the chunk
        part = torch.exp(a_star + torch.logcumsumexp(log_b[t0:t0 + CHUNK] - a_star, 0))
        part = part + torch.exp(a_star) * h
        outputs.append(part)
        h = part[-1]
    return torch.cat(outputs)


def linear_scan(a, b, h0, mask=None):
    """``recurrence`` from a and b themselves, one compiled pass each way (CPU)."""
    T, B = a.shape[:2]
    return _LinearScan.apply(a, b, h0, uint8_mask(mask, T, B))


class _LinearScan(torch.autograd.Function):

    @staticmethod
    def forward(ctx, a, b, h0, mask):
        a_, b_ = (t.detach().contiguous().numpy() for t in (a, b))
        S = np.empty((a_.shape[0] + 1, *a_.shape[1:]), a_.dtype)        # (T+1, B, H) states
        S[0] = h0.detach().numpy()
        _linear_forward(a_, b_, mask, S)
        ctx.saved = a_, S, mask
        ctx.save_for_backward(a, b, h0)
        return torch.from_numpy(S[1:])

    @staticmethod
    def backward(ctx, dh):
        if torch.is_grad_enabled():      # create_graph=True: a differentiable backward
            from . import warn_once
            warn_once("double backward: the recurrence's gradients are recomputed with a torch loop")
            a, b, h0 = ctx.saved_tensors
            with torch.enable_grad():
                h = _loop(a, b, h0, torch.from_numpy(ctx.saved[2]).bool())
                return (*torch.autograd.grad(h, (a, b, h0), dh, create_graph=True), None)
        a, S, mask = ctx.saved
        da, db = np.empty_like(a), np.empty_like(a)
        dh0 = _linear_backward(a, S, mask, dh.detach().contiguous().numpy(), da, db)
        return torch.from_numpy(da), torch.from_numpy(db), torch.from_numpy(dh0), None


def _loop(a, b, h0, mask):
    """``linear_scan``'s states as a plain torch loop (differentiable to any order)."""
    states, h = [], h0
    for t in range(a.shape[0]):
        m = mask[t].unsqueeze(-1)
        h = torch.where(m, a[t] * h + b[t], h)
        states.append(h)
    return torch.stack(states)


@kernel
def _linear_forward(a, b, mask, S):
    """S[t+1] = a[t] * S[t] + b[t], carried where mask[t] is 0."""
    T, B, H = a.shape
    for t in range(T):
        for r in range(B):
            if mask[t, r]:
                for j in range(H):
                    S[t + 1, r, j] = a[t, r, j] * S[t, r, j] + b[t, r, j]
            else:
                for j in range(H):
                    S[t + 1, r, j] = S[t, r, j]


@kernel
def _linear_backward(a, S, mask, dout, da, db):
    """Fills da, db from dout (T, B, H), the gradient of every S[t+1]; returns dh0."""
    T, B, H = a.shape
    g = np.zeros((B, H), a.dtype)                      # gradient of S[t+1] from later steps
    for t in range(T - 1, -1, -1):
        for r in range(B):
            if mask[t, r]:
                for j in range(H):
                    gt = g[r, j] + dout[t, r, j]
                    db[t, r, j] = gt
                    da[t, r, j] = gt * S[t, r, j]
                    g[r, j] = gt * a[t, r, j]
            else:                                      # carried: S[t+1] = S[t]
                for j in range(H):
                    g[r, j] += dout[t, r, j]
                    da[t, r, j] = 0
                    db[t, r, j] = 0
    return g
