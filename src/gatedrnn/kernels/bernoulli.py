"""The Bernoulli output layer's NLL (piano rolls), one compiled pass that also keeps its gradient;
heads.bernoulli_nll, beside the head, wraps it for autograd."""
from .jit import kernel, vexp, vlog1p_unit


@kernel
def _bernoulli_term(logit, y, zero, one):
    """-log p(y | sigmoid(logit)) = max(l, 0) - l y + log(1 + e^-|l|), and its derivative in l,
    sigmoid(l) - y. NaN in, NaN out (l y is NaN). zero, one: of the logits' dtype."""
    e = vexp(-abs(logit))
    s = one / (one + e)
    return max(logit, zero) - logit * y + vlog1p_unit(e), (s if logit >= zero else e * s) - y


@kernel(fastmath={"contract", "reassoc"})
def bernoulli_nll_loop(logits, target, nll, grad):
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
