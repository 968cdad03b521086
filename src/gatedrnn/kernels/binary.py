"""Binary inputs (piano rolls: 3-7 of 88 notes on per step) projected by adding the columns of W
for the notes that are on, instead of a dense product: about 5% of its arithmetic, forward (xw)
and backward (dW) alike.

``project`` turns such an input into CSR (the column indices of its ones, per step and row) and
either projects it at once (``_Project``) or hands it to ``scan`` as a ``BinaryInput``, whose
kernels project each step while they run it (``_input_step``) and add its gradients while that
step's dA is in cache (``_input_grad_step``): no (T, B, G) array is written and read back.
Anything else takes one dense matmul (``dense_project``).
"""
import numpy as np
import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .jit import kernel
from .workspace import workspace


# -- the compiled loops -------------------------------------------------------------------------

# inp = (xw, ptr, cols, WT, bias): xw (T, B, G) holds every step's projection (dense inputs), or
# ptr is not empty and the input is binary (piano rolls), held as CSR over rows t * B + b
# (binary_csr): each step then adds the columns of W^T for its ones to the bias, while the
# kernel runs (no (T, B, G) array written and read again). The backward kernels take
# dinp = (ptr, cols, dWT, db) and add that input's gradients, x_t^T dA_t and dA_t's column sums.

@kernel
def _project_row(ptr, cols, WT, bias, r, out):
    """out (G,) = row r of x W^T + bias, for the binary x held as CSR (the columns of W^T for
    its ones added to the bias). WT (I, G) = W^T."""
    for g in range(out.shape[0]):
        out[g] = bias[g]
    for n in range(ptr[r], ptr[r + 1]):
        c = cols[n]
        for g in range(out.shape[0]):
            out[g] += WT[c, g]


@kernel
def _project_row_grad(ptr, cols, r, dout, dWT, db):
    """dWT (I, G) += x_r^T dout and db (G,) += dout, for row r of the binary x held as CSR and
    its output's gradient dout (G,)."""
    for g in range(dout.shape[0]):
        db[g] += dout[g]
    for n in range(ptr[r], ptr[r + 1]):
        c = cols[n]
        for g in range(dout.shape[0]):
            dWT[c, g] += dout[g]


@kernel
def _input_step(inp, t, lo, hi, xt):
    """Step t's x_t W^T + b, (B, G), for the rows lo..hi: xw[t], or xt filled from the CSR."""
    xw, ptr, cols, WT, bias = inp
    if ptr.shape[0] == 0:
        return xw[t]
    B = xt.shape[0]
    for b in range(lo, hi):
        _project_row(ptr, cols, WT, bias, t * B + b, xt[b])
    return xt


@kernel
def _input_grad_step(dinp, t, lo, hi, dA_t):
    """dWT += x_t^T dA_t and db += its column sums over the rows lo..hi, for a binary input."""
    ptr, cols, dWT, db = dinp
    if ptr.shape[0] == 0:
        return
    B = dA_t.shape[0]
    for b in range(lo, hi):
        _project_row_grad(ptr, cols, t * B + b, dA_t[b], dWT, db)


@kernel
def binary_csr(x, time_major, mask, ptr, cols):
    """The notes on in each step of x as CSR over rows t * B + b (ptr (T*B+1,), cols): x is
    (T, B, I) if time_major else (B, T, I); padded steps (mask[t, b] == 0) get no notes. Returns
    their count, or -1 if an unpadded step holds a value other than 0 and 1 (NaN included) or
    more ones than cols can hold."""
    T, B = mask.shape
    I = x.shape[2]
    n = 0
    for t in range(T):
        for b in range(B):
            ptr[t * B + b] = n
            if not mask[t, b]:
                continue
            row = x[t, b] if time_major else x[b, t]
            ones = 0
            zeros = 0
            for i in range(I):              # vectorized: integer sums only
                v = row[i]
                ones += v == 1
                zeros += v == 0
            if ones + zeros != I or n + ones >= cols.shape[0]:
                return -1
            if ones:
                for i in range(I):
                    cols[n] = i
                    n += row[i] != 0
    ptr[T * B] = n
    return n


@kernel
def binary_project(ptr, cols, WT, bias, out):
    """out (N, G) = x W^T + bias for the binary x held as CSR; WT (I, G) = W^T."""
    for r in range(out.shape[0]):
        _project_row(ptr, cols, WT, bias, r, out[r])


@kernel
def binary_project_grad(ptr, cols, dout, dWT, db):
    """dWT (I, G) += x^T dout and db (G,) += the column sums of dout, for the binary x held as
    CSR; both zeroed by the caller."""
    for r in range(dout.shape[0]):
        _project_row_grad(ptr, cols, r, dout[r], dWT, db)


# -- torch side ----------------------------------------------------------------------------------

# A binary input with at most this fraction of ones is projected by adding W's columns; denser or
# non-binary inputs take one dense matmul.
SPARSE_MAX = 1 / 8


def dense_project(x, weight, bias, mask=None, batch_first=False):
    """The input projection of all steps, xw = x W^T + bias (T, B, G), as one F.linear.

    x (T, B, I), or (B, T, I) with ``batch_first``; weight (G, I); bias (G,) or None; mask (T, B)
    bool or None. Padded steps (mask False) are projected as zero input, so that what they hold
    (NaN included) never reaches the arithmetic."""
    if batch_first:
        x = x.transpose(0, 1)
    if mask is not None:
        x = torch.where(mask.unsqueeze(2), x, 0.0)
    return F.linear(x, weight, bias)


def uint8_mask(mask, T, B):
    """The kernels' mask: (T, B) uint8 in C order (one compiled signature), all ones for None."""
    if mask is None:
        return np.ones((T, B), np.uint8)
    return np.ascontiguousarray(mask.cpu().numpy(), np.uint8)


def project(x, weight, bias, mask=None, batch_first=False, fused=False):
    """``dense_project``, faster for piano rolls: a binary x (0/1, mostly 0) that needs no
    gradient is projected by adding the columns of W for the ones, forward and backward, read in
    the layout given (no transposed copy, no masked copy). Anything else goes to dense_project.
    The caller has checked that the kernels can serve these tensors (kernels.unsupported).

    With ``fused``, such an x comes back as a ``BinaryInput`` for ``scan``, whose kernels then
    project each step as they run it."""
    T, B = (x.shape[1], x.shape[0]) if batch_first else x.shape[:2]
    if x.requires_grad or x.numel() == 0 or x.dtype != weight.dtype:
        return dense_project(x, weight, bias, mask, batch_first)
    ptr = workspace.empty((T * B + 1,), np.int32)
    cols = workspace.empty((max(1, int(x.numel() * SPARSE_MAX)),), np.int32)
    if binary_csr(x.detach().contiguous().numpy(), not batch_first, uint8_mask(mask, T, B), ptr, cols) < 0:
        return dense_project(x, weight, bias, mask, batch_first)
    if bias is None:
        bias = weight.new_zeros(weight.shape[0])
    if fused:
        return BinaryInput((ptr, cols), (T, B, x.shape[2]), weight, bias)
    return _Project.apply((ptr, cols), weight, bias).view(T, B, weight.shape[0])


class BinaryInput:
    """A binary input (T, B, I) held as CSR (row pointers and column indices of its ones over
    rows t * B + b) with the weight (G, I) and bias (G,) of its projection, for ``scan``."""

    def __init__(self, csr, shape, weight, bias):
        self.csr, self.shape, self.weight, self.bias = csr, shape, weight, bias

    def dense(self):
        """The input as a (T, B, I) tensor again (padded steps zero)."""
        ptr, cols = self.csr
        T, B, I = self.shape
        x = np.zeros((T * B, I), self.weight.detach().numpy().dtype)
        x[np.repeat(np.arange(T * B), np.diff(ptr)), cols[:ptr[-1]]] = 1
        return torch.from_numpy(x).view(T, B, I)


class _Project(torch.autograd.Function):
    """x W^T + b for a binary x held as CSR (row pointers, column indices of the ones)."""

    @staticmethod
    def forward(ctx, csr, weight, bias):
        ptr, cols = csr
        W = weight.detach().contiguous().numpy()
        out = workspace.empty((len(ptr) - 1, W.shape[0]), W.dtype)
        binary_project(ptr, cols, np.ascontiguousarray(W.T), bias.detach().contiguous().numpy(), out)
        ctx.csr, ctx.shape = csr, weight.shape
        return torch.from_numpy(out)

    @staticmethod
    @once_differentiable
    def backward(ctx, dout):
        ptr, cols = ctx.csr
        d = dout.detach().contiguous().numpy()
        dWT = np.zeros((ctx.shape[1], ctx.shape[0]), d.dtype)
        db = np.zeros(ctx.shape[0], d.dtype)
        binary_project_grad(ptr, cols, d, dWT, db)
        return (None, torch.from_numpy(dWT).T if ctx.needs_input_grad[1] else None,
                torch.from_numpy(db) if ctx.needs_input_grad[2] else None)
