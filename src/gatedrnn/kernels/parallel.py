"""A parallel scan over time for units whose gates do not read h_{t-1} (minGRU, minLSTM).

Such a unit's recurrence is h_t = a_t * h_{t-1} + b_t with a_t, b_t known for every step before
the loop starts, so all steps can be computed at once (Blelloch 1990; in log space, Heinsen
2023, as Feng et al. 2024 do):

    h_t = A_t * h_0 + A_t * sum_{k<=t} b_k / A_k,     A_t = prod_{j<=t} a_j,

with the sum taken as exp(logcumsumexp(log b_k - log A_k)), which needs b_k > 0 (the units keep
their candidate state positive for this) but no sign on h_0, whose term is added apart. Plain
torch: it runs on any device and dtype, and autograd differentiates it.

It computes in float64 whatever the inputs' dtype: h_t = exp(log A_t + log sum(...)) adds two
terms of size |log A_t| (tens to hundreds within a chunk) and opposite signs, so float32 loses
about |log A_t| * 6e-8 of each h_t, and its backward more (tests/test_parity.py measured
gradients 1e-3 off the float32 reference loop at T = 300). In float64 it matches the float32
loop; it costs up to a third more time on the CPU, and twice the memory of what autograd keeps.
"""
import torch

CHUNK = 256     # steps scanned at once: log A_t grows with t, and with it the rounding of the sum


def log_space_scan(log_a, log_b, h0, mask=None):
    """h (T, B, H) with h_t = a_t * h_{t-1} + b_t, from log_a (T, B, H) (a in (0, 1]), log_b
    (T, B, H) and h0 (B, H). mask (T, B) bool or None: at a masked step the state is carried
    (a = 1, b = 0); the caller zeroes the outputs there."""
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
