"""The tanh unit: h_t = tanh(xw_t + h_{t-1} U^T + bh); bh = 0 (paper) or b_hh (torch)."""
import numpy as np

from .binary import _input_grad_step, _input_step
from .jit import _add_tn, _at, _carry, _copy, _matmul, _rows, _step, vtanh, _zero, kernel
from .scan import (arrays, bias_grad, bias_or_zeros, dA_buffer, dinp_buffers, dU_of, dUT_buffer,
                   input_grads)


@kernel
def tanh_forward(inp, UT, bh, h0, mask, out, tm, S, b0, b1):
    T, H = mask.shape[0], UT.shape[0]
    B = mask.shape[1]
    _copy(S[0, b0:b1], h0[b0:b1])
    a, xt = np.empty((B, H), UT.dtype), np.empty((B, H), UT.dtype)
    for t in range(T):
        lo, hi = _rows(mask, t, b0, b1)
        x = _input_step(inp, t, lo, hi, xt)
        _matmul(S[t, lo:hi], UT, a[lo:hi])
        for b in range(b0, b1):
            if mask[t, b]:
                o = _at(out, t, b, tm)
                for j in range(H):
                    v = vtanh(x[b, j] + (a[b, j] + bh[j]))
                    S[t + 1, b, j] = v
                    o[j] = v
            else:
                _carry(t, b, S, out, tm)


@kernel
def tanh_backward(dout, tm, dhT, U, mask, S, dA, dUT, dinp, b0, b1):
    """Fills dA, adds U's gradient transposed to dUT (zeroed by the caller) and the binary
    input's to dinp; returns dh0 (its rows b0..b1-1)."""
    T, H = S.shape[0] - 1, S.shape[2]
    dh = dhT.copy()
    prod = np.empty_like(dh)                          # dA_t U
    for t in range(T - 1, -1, -1):
        dA_t = _step(dA, t)
        for b in range(b0, b1):
            if mask[t, b]:
                go = _at(dout, t, b, tm)
                for j in range(H):
                    y = S[t + 1, b, j]
                    dA_t[b, j] = (dh[b, j] + go[j]) * (1 - y * y)
            else:
                _zero(dA_t[b])
        lo, hi = _rows(mask, t, b0, b1)
        _add_tn(S[t, lo:hi], dA_t[lo:hi], dUT)
        _input_grad_step(dinp, t, lo, hi, dA_t)
        _matmul(dA_t[lo:hi], U, prod[lo:hi])
        for b in range(lo, hi):
            if mask[t, b]:                # h_t depends on h_{t-1} only through the product
                _copy(dh[b], prod[b])
    return dh


class Tanh:
    """kernels.scan's interface to the loops above (see scan.py)."""
    weights = ("weight_hh", "bias_hh")

    @staticmethod
    def forward(inp, w, state, mask, tm, rows):
        U, (T, B, G, H), out, S = arrays(mask, w, tm)
        UT, bh = np.ascontiguousarray(U.T), bias_or_zeros(w, "bias_hh", G, U)
        rows.run(lambda b0, b1: tanh_forward(inp, UT, bh, state[0], mask, out, tm, S, b0, b1))
        return (out, S[T].copy()), (U, S, "bias_hh" in w)

    @staticmethod
    def backward(saved, grads, mask, tm, binary, rows):
        U, S, has_bias = saved
        dout, dhT = grads
        T, B, H = S[1:].shape
        dA = dA_buffer(binary, T, B, H, like=U)

        def run(b0, b1):
            dUT, dinp = dUT_buffer(binary, H, H, like=U), dinp_buffers(binary, H, like=U)
            return tanh_backward(dout, tm, dhT, U, mask, S, dA, dUT, dinp, b0, b1), dUT, dinp
        dh0, dUT, dinp = rows.combine(rows.run(run), rowwise=1)
        db = (bias_grad(binary, dA, dinp),) if has_bias else ()
        return (*input_grads(binary, dA, dinp), dU_of(binary, dUT, dA, S[:-1]), *db, dh0)
