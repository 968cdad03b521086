"""The LSTM: Graves (2013) with diagonal peepholes P = (V_i, V_f, V_o) and bh = 0 (paper), or
torch.nn's LSTM with P = 0 and bh = b_hh (torch)."""
import numpy as np

from .binary import _input_grad_step, _input_step
from .jit import (_add_tn, _at, _carry, _copy, _flat, _matmul, _over_batch, _rows, vsigmoid,
                  _step, vtanh, _zero, kernel)
from .scan import (arrays, bias_grad, bias_or_zeros, dA_buffer, dinp_buffers, dU_of, dUT_buffer,
                   empty, input_grads)


@kernel
def lstm_forward(inp, UT, bh, P, h0, c0, mask, out, tm, S, C, acts, tc, b0, b1):
    """acts (T, 4, B, H) holds i, f, g, o gate-major; C (T+1, B, H) the cell states; tc (T, B, H)
    tanh(c_t). Gate-major, every elementwise loop runs over the rows lo..hi-1 (_rows) at once,
    entries k0..k1-1 of B*H (long vectorized loops, no per-row remainders)."""
    T, B, H = tc.shape
    _copy(S[0, b0:b1], h0[b0:b1])
    _copy(C[0, b0:b1], c0[b0:b1])
    a, xt = np.empty((B, 4 * H), UT.dtype), np.empty((B, 4 * H), UT.dtype)
    PB = _over_batch(P, B)
    for t in range(T):
        lo, hi = _rows(mask, t, b0, b1)                 # the gate loops run over entries k0..k1-1
        k0, k1 = lo * H, hi * H
        x = _input_step(inp, t, lo, hi, xt)
        _matmul(S[t, lo:hi], UT, a[lo:hi])
        for k in range(4):
            for b in range(lo, hi):
                for j in range(H):
                    acts[t, k, b, j] = x[b, k * H + j] + (a[b, k * H + j] + bh[k * H + j])
        i, f = _flat(acts[t, 0], k0, k1), _flat(acts[t, 1], k0, k1)
        g, o = _flat(acts[t, 2], k0, k1), _flat(acts[t, 3], k0, k1)
        c_prev, c = _flat(C[t], k0, k1), _flat(C[t + 1], k0, k1)
        y, h = _flat(tc[t], k0, k1), _flat(S[t + 1], k0, k1)
        pi, pf, po = _flat(PB[0], k0, k1), _flat(PB[1], k0, k1), _flat(PB[2], k0, k1)
        for k in range(k1 - k0):
            i[k] = vsigmoid(i[k] + pi[k] * c_prev[k])
        for k in range(k1 - k0):
            f[k] = vsigmoid(f[k] + pf[k] * c_prev[k])
        for k in range(k1 - k0):
            g[k] = vtanh(g[k])
        for k in range(k1 - k0):
            c[k] = f[k] * c_prev[k] + i[k] * g[k]
        for k in range(k1 - k0):
            o[k] = vsigmoid(o[k] + po[k] * c[k])
        for k in range(k1 - k0):
            y[k] = vtanh(c[k])
        for k in range(k1 - k0):
            h[k] = o[k] * y[k]
        for b in range(b0, b1):
            if mask[t, b]:
                _copy(_at(out, t, b, tm), S[t + 1, b])
            else:
                _carry(t, b, S, out, tm)
                _copy(C[t + 1, b], C[t, b])


@kernel
def lstm_backward(dout, tm, dhT, dcT, U, P, mask, S, C, acts, tc, dA, dUT, dP, dinp, b0, b1):
    """Fills dA (T, B, 4H), adds U's gradient transposed to dUT (H, 4H) and the peepholes'
    gradient per row to dP (3, B, H), both zeroed by the caller, and the binary input's to
    dinp; returns dh0, dc0 (their rows b0..b1-1). Gate-major flat loops like the forward."""
    T, B, H = tc.shape
    dh, dc = dhT.copy(), dcT.copy()
    held_h, held_c = np.empty_like(dh), np.empty_like(dc)   # padded rows: carried unchanged
    prod = np.empty_like(dh)                                  # dA_t U
    dG = np.empty((4, B, H), dout.dtype)                      # this step's dA, gate-major
    gout = np.empty((B, H), dout.dtype)                       # this step's dout, contiguous
    PB = _over_batch(P, B)
    for t in range(T - 1, -1, -1):
        dA_t = _step(dA, t)
        _copy(held_h[b0:b1], dh[b0:b1])
        _copy(held_c[b0:b1], dc[b0:b1])
        lo, hi = _rows(mask, t, b0, b1)                 # the gate loops run over entries k0..k1-1
        k0, k1 = lo * H, hi * H
        i, f = _flat(acts[t, 0], k0, k1), _flat(acts[t, 1], k0, k1)
        g, o = _flat(acts[t, 2], k0, k1), _flat(acts[t, 3], k0, k1)
        y, c_prev = _flat(tc[t], k0, k1), _flat(C[t], k0, k1)
        di, df = _flat(dG[0], k0, k1), _flat(dG[1], k0, k1)
        dg, do = _flat(dG[2], k0, k1), _flat(dG[3], k0, k1)
        pi, pf, po = _flat(PB[0], k0, k1), _flat(PB[1], k0, k1), _flat(PB[2], k0, k1)
        dhf, dcf, go = _flat(dh, k0, k1), _flat(dc, k0, k1), _flat(gout, k0, k1)
        for b in range(lo, hi):
            _copy(gout[b], _at(dout, t, b, tm))
        for k in range(k1 - k0):
            gh = dhf[k] + go[k]
            do[k] = gh * y[k] * o[k] * (1 - o[k])
            dcn = dcf[k] + gh * o[k] * (1 - y[k] * y[k]) + do[k] * po[k]
            di[k] = dcn * g[k] * i[k] * (1 - i[k])
            df[k] = dcn * c_prev[k] * f[k] * (1 - f[k])
            dg[k] = dcn * i[k] * (1 - g[k] * g[k])
            dcf[k] = dcn * f[k] + di[k] * pi[k] + df[k] * pf[k]
        for b in range(lo, hi):
            if not mask[t, b]:                  # padding inside lo..hi: no gradient, dc carried
                for k in range(4):
                    _zero(dG[k, b])
                _copy(dc[b], held_c[b])
        dpi, dpf, dpo = _flat(dP[0], k0, k1), _flat(dP[1], k0, k1), _flat(dP[2], k0, k1)
        c = _flat(C[t + 1], k0, k1)
        for k in range(k1 - k0):                # V_i, V_f see c_{t-1}; V_o sees c_t
            dpi[k] += di[k] * c_prev[k]
            dpf[k] += df[k] * c_prev[k]
            dpo[k] += do[k] * c[k]
        for b in range(b0, b1):
            if lo <= b < hi:
                for k in range(4):
                    _copy(dA_t[b, k * H:(k + 1) * H], dG[k, b])
            else:
                _zero(dA_t[b])
        _add_tn(S[t, lo:hi], dA_t[lo:hi], dUT)
        _input_grad_step(dinp, t, lo, hi, dA_t)
        _matmul(dA_t[lo:hi], U, prod[lo:hi])
        for b in range(lo, hi):
            _copy(dh[b], prod[b] if mask[t, b] else held_h[b])
    return dh, dc



class LSTM:
    """kernels.scan's interface to the loops above (see scan.py)."""
    weights = ("weight_hh", "bias_hh", "peephole")

    @staticmethod
    def forward(inp, w, state, mask, tm, rows):
        U, (T, B, G, H), out, S = arrays(mask, w, tm)
        P = w["peephole"] if "peephole" in w else np.zeros((3, H), U.dtype)
        tc, C = empty(T, B, H, like=U), empty(T + 1, B, H, like=U)
        acts = empty(T, 4, B, H, like=U)
        UT, bh = np.ascontiguousarray(U.T), bias_or_zeros(w, "bias_hh", G, U)
        rows.run(lambda b0, b1: lstm_forward(inp, UT, bh, P, state[0], state[1], mask, out, tm,
                                             S, C, acts, tc, b0, b1))
        return (out, S[T].copy(), C[T].copy()), (U, P, S, C, acts, tc, tuple(w))

    @staticmethod
    def backward(saved, grads, mask, tm, binary, rows):
        U, P, S, C, acts, tc, names = saved
        dout, dhT, dcT = grads
        T, _, B, H = acts.shape
        dA = dA_buffer(binary, T, B, 4 * H, like=acts)
        dP = np.zeros((3, B, H), acts.dtype)           # per row: the ranges' rows are disjoint

        def run(b0, b1):
            dUT, dinp = dUT_buffer(binary, *U.shape, like=U), dinp_buffers(binary, 4 * H, like=U)
            dh0, dc0 = lstm_backward(dout, tm, dhT, dcT, U, P, mask, S, C, acts, tc, dA, dUT, dP,
                                     dinp, b0, b1)
            return dh0, dc0, dUT, dinp
        dh0, dc0, dUT, dinp = rows.combine(rows.run(run), rowwise=2)
        extra = {"bias_hh": bias_grad(binary, dA, dinp)} if "bias_hh" in names else {}
        if "peephole" in names:
            extra["peephole"] = dP.sum(1)
        return (*input_grads(binary, dA, dinp), dU_of(binary, dUT, dA, S[:-1]),
                *(extra[n] for n in names if n in extra), dh0, dc0)
