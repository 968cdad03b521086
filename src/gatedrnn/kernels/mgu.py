"""The minimal gated unit (Zhou et al. 2016): f = sigmoid(xw_f + U_f h), n = tanh(xw_h +
U_h (f * h)), h_t = (1 - f) h + f n; one bias per block, in xw. The GRU paper kernel with one
gate: f plays both the reset gate (before U_h) and the update gate."""
import numpy as np

from .binary import _input_grad_step, _input_step
from .jit import (_add, _add_tn, _at, _carry, _copy, _matmul, _rows, vsigmoid, _step, vtanh,
                  _zero, kernel)
from .scan import arrays, dA_buffer, dinp_buffers, dU_of, dUT_buffer, empty, input_grads


@kernel
def mgu_forward(inp, UT_f, UT_h, h0, mask, out, tm, S, Q, acts, b0, b1):
    """acts (T, B, 2H) holds f, n; Q (T, B, H) is f * h_{t-1}, the input of U_h."""
    T, B, H = Q.shape
    _copy(S[0, b0:b1], h0[b0:b1])
    a, an = np.empty((B, H), UT_f.dtype), np.empty((B, H), UT_f.dtype)
    xt = np.empty((B, 2 * H), UT_f.dtype)
    for t in range(T):
        lo, hi = _rows(mask, t, b0, b1)
        x = _input_step(inp, t, lo, hi, xt)
        _matmul(S[t, lo:hi], UT_f, a[lo:hi])
        for b in range(b0, b1):
            if b < lo or b >= hi:
                _zero(Q[t, b])          # finite: a dense input's dU sums dA_h^T Q over all rows
                continue
            for j in range(H):
                f = vsigmoid(x[b, j] + a[b, j])
                acts[t, b, j] = f
                Q[t, b, j] = f * S[t, b, j]
        _matmul(Q[t, lo:hi], UT_h, an[lo:hi])
        for b in range(b0, b1):
            if not mask[t, b]:
                _carry(t, b, S, out, tm)
                continue
            o = _at(out, t, b, tm)
            for j in range(H):
                n = vtanh(x[b, H + j] + an[b, j])
                f = acts[t, b, j]
                h = (1 - f) * S[t, b, j] + f * n
                acts[t, b, H + j] = n
                S[t + 1, b, j], o[j] = h, h


@kernel
def mgu_backward(dout, tm, dhT, U_f, U_h, mask, S, Q, acts, dA_f, dA_h, dUT_f, dUT_h, dinp_f,
                 dinp_h, b0, b1):
    """Fills dA_f and dA_h (T, B, H), adds the gradients of U_f and U_h transposed to dUT_f and
    dUT_h (zeroed by the caller), and the binary input's to dinp_f and dinp_h; returns dh0.

    With gh = dh_t + dout_t: dA_h = gh f (1 - n^2); dq = dA_h U_h (the gradient of f * h);
    dA_f = (gh (n - h) + dq h) f (1 - f); dh_{t-1} = gh (1 - f) + dq f + dA_f U_f."""
    T, B, H = Q.shape
    dh = dhT.copy()
    dq = np.empty((B, H), dout.dtype)                 # gradient of f * h_{t-1}
    prod = np.empty((B, H), dout.dtype)               # dA_f,t U_f
    for t in range(T - 1, -1, -1):
        dA_f_t = _step(dA_f, t)
        dA_h_t = _step(dA_h, t)
        for b in range(b0, b1):
            if not mask[t, b]:
                _zero(dA_f_t[b])
                _zero(dA_h_t[b])
                continue
            go = _at(dout, t, b, tm)
            for j in range(H):
                f, n = acts[t, b, j], acts[t, b, H + j]
                gh = dh[b, j] + go[j]
                dA_f_t[b, j] = gh * (n - S[t, b, j])    # d f through h_t; f * h's part below
                dA_h_t[b, j] = gh * f * (1 - n * n)
                dh[b, j] = gh * (1 - f)
        lo, hi = _rows(mask, t, b0, b1)
        _add_tn(Q[t, lo:hi], dA_h_t[lo:hi], dUT_h)
        _input_grad_step(dinp_h, t, lo, hi, dA_h_t)
        _matmul(dA_h_t[lo:hi], U_h, dq[lo:hi])
        for b in range(lo, hi):
            if mask[t, b]:
                for j in range(H):
                    f = acts[t, b, j]
                    dA_f_t[b, j] = (dA_f_t[b, j] + dq[b, j] * S[t, b, j]) * f * (1 - f)
                    dh[b, j] += dq[b, j] * f
        _add_tn(S[t, lo:hi], dA_f_t[lo:hi], dUT_f)
        _input_grad_step(dinp_f, t, lo, hi, dA_f_t)
        _matmul(dA_f_t[lo:hi], U_f, prod[lo:hi])
        _add(dh[lo:hi], prod[lo:hi])
    return dh


class MGU:
    """kernels.scan's interface to mgu_forward / mgu_backward (see scan.py)."""
    weights = ("weight_hh",)

    @staticmethod
    def forward(inp, w, state, mask, tm, rows):
        U, (T, B, G, H), out, S = arrays(mask, w, tm)
        Q, acts = empty(T, B, H, like=U), empty(T, B, G, like=U)
        UT = U.T
        UT_f, UT_h = np.ascontiguousarray(UT[:, :H]), np.ascontiguousarray(UT[:, H:])
        rows.run(lambda b0, b1: mgu_forward(inp, UT_f, UT_h, state[0], mask, out, tm, S, Q, acts,
                                            b0, b1))
        return (out, S[T].copy()), (U, S, Q, acts)

    @staticmethod
    def backward(saved, grads, mask, tm, binary, rows):
        U, S, Q, acts = saved
        dout, dhT = grads
        T, B, H = Q.shape
        dA_f, dA_h = dA_buffer(binary, T, B, H, like=dout), dA_buffer(binary, T, B, H, like=dout)
        U_f, U_h = U[:H], U[H:]

        def run(b0, b1):
            dUT_f, dUT_h = dUT_buffer(binary, H, H, like=U), dUT_buffer(binary, H, H, like=U)
            dinp_f, dinp_h = dinp_buffers(binary, H, like=U), dinp_buffers(binary, H, like=U)
            dh0 = mgu_backward(dout, tm, dhT, U_f, U_h, mask, S, Q, acts, dA_f, dA_h, dUT_f,
                               dUT_h, dinp_f, dinp_h, b0, b1)
            return dh0, dUT_f, dUT_h, dinp_f, dinp_h
        dh0, dUT_f, dUT_h, dinp_f, dinp_h = rows.combine(rows.run(run), rowwise=1)
        dA = np.concatenate([dA_f, dA_h], axis=2) if binary is None else None
        dU = np.concatenate([dU_of(binary, dUT_f, dA_f, S[:-1]), dU_of(binary, dUT_h, dA_h, Q)])
        return (*input_grads(binary, dA, dinp_f, dinp_h), dU, dh0)
