"""The LSTM with coupled input and forget gates (CIFG, Greff et al. 2017): the paper's LSTM
(kernels/lstm.py) with f = 1 - i and peepholes P = (V_i, V_o):

    i = sigmoid(a_i + V_i * c_{t-1});  c_t = (1 - i) c_{t-1} + i tanh(a_g)
    o = sigmoid(a_o + V_o * c_t);      h_t = o tanh(c_t)

with a = xw + U h_{t-1} (gate blocks i, g, o; one bias per block, in xw)."""
import numpy as np

from .binary import _input_grad_step, _input_step
from .jit import (_add_tn, _at, _carry, _copy, _flat, _matmul, _over_batch, _rows, vsigmoid,
                  _step, vtanh, _zero, kernel)
from .scan import arrays, dA_buffer, dinp_buffers, dU_of, dUT_buffer, empty, input_grads


@kernel
def cifg_forward(inp, UT, P, h0, c0, mask, out, tm, S, C, acts, tc, b0, b1):
    """acts (T, 3, B, H) holds i, g, o gate-major; C (T+1, B, H) the cell states; tc (T, B, H)
    tanh(c_t). Gate-major flat loops over the rows lo..hi-1, as lstm_forward."""
    T, B, H = tc.shape
    _copy(S[0, b0:b1], h0[b0:b1])
    _copy(C[0, b0:b1], c0[b0:b1])
    a, xt = np.empty((B, 3 * H), UT.dtype), np.empty((B, 3 * H), UT.dtype)
    PB = _over_batch(P, B)
    for t in range(T):
        lo, hi = _rows(mask, t, b0, b1)                 # the gate loops run over entries k0..k1-1
        k0, k1 = lo * H, hi * H
        x = _input_step(inp, t, lo, hi, xt)
        _matmul(S[t, lo:hi], UT, a[lo:hi])
        for k in range(3):
            for b in range(lo, hi):
                for j in range(H):
                    acts[t, k, b, j] = x[b, k * H + j] + a[b, k * H + j]
        i, g, o = _flat(acts[t, 0], k0, k1), _flat(acts[t, 1], k0, k1), _flat(acts[t, 2], k0, k1)
        c_prev, c = _flat(C[t], k0, k1), _flat(C[t + 1], k0, k1)
        y, h = _flat(tc[t], k0, k1), _flat(S[t + 1], k0, k1)
        pi, po = _flat(PB[0], k0, k1), _flat(PB[1], k0, k1)
        for k in range(k1 - k0):
            i[k] = vsigmoid(i[k] + pi[k] * c_prev[k])
        for k in range(k1 - k0):
            g[k] = vtanh(g[k])
        for k in range(k1 - k0):
            c[k] = (1 - i[k]) * c_prev[k] + i[k] * g[k]
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
def cifg_backward(dout, tm, dhT, dcT, U, P, mask, S, C, acts, tc, dA, dUT, dP, dinp, b0, b1):
    """Fills dA (T, B, 3H), adds U's gradient transposed to dUT (H, 3H) and the peepholes'
    gradient per row to dP (2, B, H), both zeroed by the caller, and the binary input's to
    dinp; returns dh0, dc0 (their rows b0..b1-1).

    With gh = dh_t + dout_t, y = tanh(c_t): dA_o = gh y o (1 - o); dc = dc_t + gh o (1 - y^2)
    + dA_o V_o; dA_i = dc (g - c_{t-1}) i (1 - i); dA_g = dc i (1 - g^2);
    dc_{t-1} = dc (1 - i) + dA_i V_i; dV_i += dA_i c_{t-1}, dV_o += dA_o c_t;
    dh_{t-1} = dA U."""
    T, B, H = tc.shape
    dh, dc = dhT.copy(), dcT.copy()
    held_h, held_c = np.empty_like(dh), np.empty_like(dc)   # padded rows: carried unchanged
    prod = np.empty_like(dh)                                  # dA_t U
    dG = np.empty((3, B, H), dout.dtype)                      # this step's dA, gate-major
    gout = np.empty((B, H), dout.dtype)                       # this step's dout, contiguous
    PB = _over_batch(P, B)
    for t in range(T - 1, -1, -1):
        dA_t = _step(dA, t)
        _copy(held_h[b0:b1], dh[b0:b1])
        _copy(held_c[b0:b1], dc[b0:b1])
        lo, hi = _rows(mask, t, b0, b1)                 # the gate loops run over entries k0..k1-1
        k0, k1 = lo * H, hi * H
        i, g, o = _flat(acts[t, 0], k0, k1), _flat(acts[t, 1], k0, k1), _flat(acts[t, 2], k0, k1)
        y, c_prev = _flat(tc[t], k0, k1), _flat(C[t], k0, k1)
        di, dg, do = _flat(dG[0], k0, k1), _flat(dG[1], k0, k1), _flat(dG[2], k0, k1)
        pi, po = _flat(PB[0], k0, k1), _flat(PB[1], k0, k1)
        dhf, dcf, go = _flat(dh, k0, k1), _flat(dc, k0, k1), _flat(gout, k0, k1)
        for b in range(lo, hi):
            _copy(gout[b], _at(dout, t, b, tm))
        for k in range(k1 - k0):
            gh = dhf[k] + go[k]
            do[k] = gh * y[k] * o[k] * (1 - o[k])
            dcn = dcf[k] + gh * o[k] * (1 - y[k] * y[k]) + do[k] * po[k]
            di[k] = dcn * (g[k] - c_prev[k]) * i[k] * (1 - i[k])
            dg[k] = dcn * i[k] * (1 - g[k] * g[k])
            dcf[k] = dcn * (1 - i[k]) + di[k] * pi[k]
        for b in range(lo, hi):
            if not mask[t, b]:                  # padding inside lo..hi: no gradient, dc carried
                for k in range(3):
                    _zero(dG[k, b])
                _copy(dc[b], held_c[b])
        dpi, dpo = _flat(dP[0], k0, k1), _flat(dP[1], k0, k1)
        c = _flat(C[t + 1], k0, k1)
        for k in range(k1 - k0):                # V_i sees c_{t-1}; V_o sees c_t
            dpi[k] += di[k] * c_prev[k]
            dpo[k] += do[k] * c[k]
        for b in range(b0, b1):
            if lo <= b < hi:
                for k in range(3):
                    _copy(dA_t[b, k * H:(k + 1) * H], dG[k, b])
            else:
                _zero(dA_t[b])
        _add_tn(S[t, lo:hi], dA_t[lo:hi], dUT)
        _input_grad_step(dinp, t, lo, hi, dA_t)
        _matmul(dA_t[lo:hi], U, prod[lo:hi])
        for b in range(lo, hi):
            _copy(dh[b], prod[b] if mask[t, b] else held_h[b])
    return dh, dc


class CIFG:
    """kernels.scan's interface to the loops above (see scan.py)."""
    weights = ("weight_hh", "peephole")

    @staticmethod
    def forward(inp, w, state, mask, tm, rows):
        U, (T, B, G, H), out, S = arrays(mask, w, tm)
        P = w["peephole"]                                 # (2, H): V_i, V_o
        tc, C = empty(T, B, H, like=U), empty(T + 1, B, H, like=U)
        acts = empty(T, 3, B, H, like=U)
        UT = np.ascontiguousarray(U.T)
        rows.run(lambda b0, b1: cifg_forward(inp, UT, P, state[0], state[1], mask, out, tm, S, C,
                                             acts, tc, b0, b1))
        return (out, S[T].copy(), C[T].copy()), (U, P, S, C, acts, tc)

    @staticmethod
    def backward(saved, grads, mask, tm, binary, rows):
        U, P, S, C, acts, tc = saved
        dout, dhT, dcT = grads
        T, _, B, H = acts.shape
        dA = dA_buffer(binary, T, B, 3 * H, like=acts)
        dP = np.zeros((2, B, H), acts.dtype)           # per row: the ranges' rows are disjoint

        def run(b0, b1):
            dUT, dinp = dUT_buffer(binary, *U.shape, like=U), dinp_buffers(binary, 3 * H, like=U)
            dh0, dc0 = cifg_backward(dout, tm, dhT, dcT, U, P, mask, S, C, acts, tc, dA, dUT, dP,
                                     dinp, b0, b1)
            return dh0, dc0, dUT, dinp
        dh0, dc0, dUT, dinp = rows.combine(rows.run(run), rowwise=2)
        return (*input_grads(binary, dA, dinp), dU_of(binary, dUT, dA, S[:-1]), dP.sum(1), dh0, dc0)
