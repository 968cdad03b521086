"""MUT1 (Jozefowicz et al. 2015), on an input projection without bias, xw = (x_z, x_r, x_x), and
its own bias (b_z, b_r, b_h) applied in the step:

    z = sigmoid(x_z + b_z);  r = sigmoid(x_r + U_r h + b_r)
    m = tanh(U_h (r * h) + tanh(x_x) + b_h);  h_t = m z + h (1 - z)

The GRU paper kernel's structure: r before the second product, z read from the input alone."""
import numpy as np

from .binary import _input_grad_step, _input_step
from .jit import (_add, _add_tn, _at, _carry, _copy, _matmul, _rows, vsigmoid, _step, vtanh,
                  _zero, kernel)
from .scan import arrays, dA_buffer, dinp_buffers, dU_of, dUT_buffer, empty, input_grads


@kernel
def mut1_forward(inp, UT_r, UT_h, bias, h0, mask, out, tm, S, Q, acts, b0, b1):
    """acts (T, B, 4H) holds z, r, m and u = tanh(x_x); Q (T, B, H) is r * h_{t-1}, the input
    of U_h; bias (3H) is (b_z, b_r, b_h)."""
    T, B, H = Q.shape
    _copy(S[0, b0:b1], h0[b0:b1])
    a, an = np.empty((B, H), UT_r.dtype), np.empty((B, H), UT_r.dtype)
    xt = np.empty((B, 3 * H), UT_r.dtype)
    for t in range(T):
        lo, hi = _rows(mask, t, b0, b1)
        x = _input_step(inp, t, lo, hi, xt)
        _matmul(S[t, lo:hi], UT_r, a[lo:hi])
        for b in range(b0, b1):
            if b < lo or b >= hi:
                _zero(Q[t, b])          # finite: a dense input's dU sums dpre^T Q over all rows
                continue
            for j in range(H):
                r = vsigmoid(x[b, H + j] + a[b, j] + bias[H + j])
                acts[t, b, H + j] = r
                Q[t, b, j] = r * S[t, b, j]
        _matmul(Q[t, lo:hi], UT_h, an[lo:hi])
        for b in range(b0, b1):
            if not mask[t, b]:
                _carry(t, b, S, out, tm)
                continue
            o = _at(out, t, b, tm)
            for j in range(H):
                z = vsigmoid(x[b, j] + bias[j])
                u = vtanh(x[b, 2 * H + j])
                m = vtanh(an[b, j] + u + bias[2 * H + j])
                h = m * z + S[t, b, j] * (1 - z)
                acts[t, b, j], acts[t, b, 2 * H + j], acts[t, b, 3 * H + j] = z, m, u
                S[t + 1, b, j], o[j] = h, h


@kernel
def mut1_backward(dout, tm, dhT, U_r, U_h, mask, S, Q, acts, dA_z, dA_r, dA_x, dpre, dUT_r,
                  dUT_h, db, dinp_z, dinp_r, dinp_x, b0, b1):
    """Fills dA_z, dA_r, dA_x (the gradients of xw's blocks) and dpre (of m's pre-activation),
    each (T, B, H); adds the gradients of U_r and U_h transposed to dUT_r and dUT_h, the bias's
    to db (3H), all zeroed by the caller, and the binary input's to dinp_z, dinp_r, dinp_x;
    returns dh0.

    With gh = dh_t + dout_t: dpre = gh z (1 - m^2) (= d b_h); dA_x = dpre (1 - u^2), through
    tanh(x_x); dA_z = gh (m - h) z (1 - z) (= d b_z); dq = dpre U_h (the gradient of r * h);
    dA_r = dq h r (1 - r) (= d b_r); dh_{t-1} = gh (1 - z) + dq r + dA_r U_r."""
    T, B, H = Q.shape
    dh = dhT.copy()
    dq = np.empty((B, H), dout.dtype)                 # gradient of r * h_{t-1}
    prod = np.empty((B, H), dout.dtype)               # dA_r,t U_r
    for t in range(T - 1, -1, -1):
        dA_z_t, dA_r_t, dA_x_t = _step(dA_z, t), _step(dA_r, t), _step(dA_x, t)
        dpre_t = _step(dpre, t)
        for b in range(b0, b1):
            if not mask[t, b]:
                _zero(dA_z_t[b])
                _zero(dA_r_t[b])
                _zero(dA_x_t[b])
                _zero(dpre_t[b])
                continue
            go = _at(dout, t, b, tm)
            for j in range(H):
                z, m, u = acts[t, b, j], acts[t, b, 2 * H + j], acts[t, b, 3 * H + j]
                gh = dh[b, j] + go[j]
                dp = gh * z * (1 - m * m)
                dpre_t[b, j] = dp
                dA_x_t[b, j] = dp * (1 - u * u)
                dA_z_t[b, j] = gh * (m - S[t, b, j]) * z * (1 - z)
                dh[b, j] = gh * (1 - z)
        lo, hi = _rows(mask, t, b0, b1)
        _add_tn(Q[t, lo:hi], dpre_t[lo:hi], dUT_h)
        _input_grad_step(dinp_z, t, lo, hi, dA_z_t)
        _input_grad_step(dinp_x, t, lo, hi, dA_x_t)
        _matmul(dpre_t[lo:hi], U_h, dq[lo:hi])
        for b in range(lo, hi):
            if mask[t, b]:
                for j in range(H):
                    r = acts[t, b, H + j]
                    dA_r_t[b, j] = dq[b, j] * S[t, b, j] * r * (1 - r)
                    dh[b, j] += dq[b, j] * r
        _add_tn(S[t, lo:hi], dA_r_t[lo:hi], dUT_r)
        _input_grad_step(dinp_r, t, lo, hi, dA_r_t)
        _matmul(dA_r_t[lo:hi], U_r, prod[lo:hi])
        _add(dh[lo:hi], prod[lo:hi])
        for b in range(lo, hi):                       # padded rows hold zeros
            for j in range(H):
                db[j] += dA_z_t[b, j]
                db[H + j] += dA_r_t[b, j]
                db[2 * H + j] += dpre_t[b, j]
    return dh


class MUT1:
    """kernels.scan's interface to mut1_forward / mut1_backward (see scan.py)."""
    weights = ("weight_hh", "bias")

    @staticmethod
    def forward(inp, w, state, mask, tm, rows):
        U, (T, B, G, H), out, S = arrays(mask, w, tm)
        Q, acts = empty(T, B, H, like=U), empty(T, B, 4 * H, like=U)
        UT = U.T
        UT_r, UT_h = np.ascontiguousarray(UT[:, :H]), np.ascontiguousarray(UT[:, H:])
        rows.run(lambda b0, b1: mut1_forward(inp, UT_r, UT_h, w["bias"], state[0], mask, out, tm,
                                             S, Q, acts, b0, b1))
        return (out, S[T].copy()), (U, S, Q, acts)

    @staticmethod
    def backward(saved, grads, mask, tm, binary, rows):
        U, S, Q, acts = saved
        dout, dhT = grads
        T, B, H = Q.shape
        dA_z, dA_r, dA_x, dpre = (dA_buffer(binary, T, B, H, like=dout) for _ in range(4))
        U_r, U_h = U[:H], U[H:]

        def run(b0, b1):
            dUT_r, dUT_h = dUT_buffer(binary, H, H, like=U), dUT_buffer(binary, H, H, like=U)
            db = np.zeros(3 * H, U.dtype)
            dinp = tuple(dinp_buffers(binary, H, like=U) for _ in range(3))    # z, r, x
            dh0 = mut1_backward(dout, tm, dhT, U_r, U_h, mask, S, Q, acts, dA_z, dA_r, dA_x, dpre,
                                dUT_r, dUT_h, db, *dinp, b0, b1)
            return dh0, dUT_r, dUT_h, db, dinp
        dh0, dUT_r, dUT_h, db, dinp = rows.combine(rows.run(run), rowwise=1)
        dA = np.concatenate([dA_z, dA_r, dA_x], axis=2) if binary is None else None
        dU = np.concatenate([dU_of(binary, dUT_r, dA_r, S[:-1]), dU_of(binary, dUT_h, dpre, Q)])
        return (*input_grads(binary, dA, *dinp), dU, db, dh0)
