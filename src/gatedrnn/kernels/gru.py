"""The GRU: the paper's (Cho et al. 1406.1078v3: the reset gate before the product, h_t = (1 - z) h
+ z n, one bias per block) and torch.nn's (n = tanh(xw_n + r (U_n h + b_hn)), h_t = (1 - z) n +
z h)."""
import numpy as np

from .binary import _input_grad_step, _input_step
from .jit import (_add, _add_tn, _at, _carry, _copy, _matmul, _rows, vsigmoid, _step, vtanh,
                  _zero, kernel)
from .scan import (arrays, bias_grad, dA_buffer, dinp_buffers, dU_of, dUT_buffer, empty,
                   input_grads)


@kernel
def gru_forward(inp, UT_rz, UT_n, h0, mask, out, tm, S, Q, acts, b0, b1):
    """acts (T, B, 3H) holds r, z, n; Q (T, B, H) is r * h_{t-1}, the input of U_n."""
    T, B, H = Q.shape
    _copy(S[0, b0:b1], h0[b0:b1])
    a, an = np.empty((B, 2 * H), UT_rz.dtype), np.empty((B, H), UT_rz.dtype)
    xt = np.empty((B, 3 * H), UT_rz.dtype)
    for t in range(T):
        lo, hi = _rows(mask, t, b0, b1)
        x = _input_step(inp, t, lo, hi, xt)
        _matmul(S[t, lo:hi], UT_rz, a[lo:hi])
        for b in range(b0, b1):
            if b < lo or b >= hi:
                _zero(Q[t, b])          # finite: a dense input's dU sums dA_n^T Q over all rows
                continue
            for j in range(H):
                r = vsigmoid(x[b, j] + a[b, j])
                acts[t, b, j] = r
                acts[t, b, H + j] = vsigmoid(x[b, H + j] + a[b, H + j])
                Q[t, b, j] = r * S[t, b, j]
        _matmul(Q[t, lo:hi], UT_n, an[lo:hi])
        for b in range(b0, b1):
            if not mask[t, b]:
                _carry(t, b, S, out, tm)
                continue
            o = _at(out, t, b, tm)
            for j in range(H):
                n = vtanh(x[b, 2 * H + j] + an[b, j])
                z = acts[t, b, H + j]
                h = (1 - z) * S[t, b, j] + z * n
                acts[t, b, 2 * H + j] = n
                S[t + 1, b, j], o[j] = h, h


@kernel
def gru_backward(dout, tm, dhT, U_rz, U_n, mask, S, Q, acts, dA_rz, dA_n, dUT_rz, dUT_n,
                 dinp_rz, dinp_n, b0, b1):
    """Fills dA_rz (T, B, 2H) and dA_n (T, B, H), adds the gradients of U_rz and U_n
    transposed to dUT_rz and dUT_n (zeroed by the caller), and the binary input's to dinp_rz
    (r, z columns) and dinp_n; returns dh0."""
    T, B, H = Q.shape
    dh = dhT.copy()
    dq = np.empty((B, H), dout.dtype)                 # gradient of r * h_{t-1}
    prod = np.empty((B, H), dout.dtype)               # dA_rz,t U_rz
    for t in range(T - 1, -1, -1):
        dA_rz_t = _step(dA_rz, t)
        dA_n_t = _step(dA_n, t)
        for b in range(b0, b1):
            if not mask[t, b]:
                _zero(dA_rz_t[b])
                _zero(dA_n_t[b])
                continue
            go = _at(dout, t, b, tm)
            for j in range(H):
                z, n = acts[t, b, H + j], acts[t, b, 2 * H + j]
                gh = dh[b, j] + go[j]
                dA_rz_t[b, H + j] = gh * (n - S[t, b, j]) * z * (1 - z)
                dA_n_t[b, j] = gh * z * (1 - n * n)
                dh[b, j] = gh * (1 - z)
        lo, hi = _rows(mask, t, b0, b1)
        _add_tn(Q[t, lo:hi], dA_n_t[lo:hi], dUT_n)
        _input_grad_step(dinp_n, t, lo, hi, dA_n_t)
        _matmul(dA_n_t[lo:hi], U_n, dq[lo:hi])
        for b in range(lo, hi):
            if mask[t, b]:
                for j in range(H):
                    r = acts[t, b, j]
                    dA_rz_t[b, j] = dq[b, j] * S[t, b, j] * r * (1 - r)
                    dh[b, j] += dq[b, j] * r
        _add_tn(S[t, lo:hi], dA_rz_t[lo:hi], dUT_rz)
        _input_grad_step(dinp_rz, t, lo, hi, dA_rz_t)
        _matmul(dA_rz_t[lo:hi], U_rz, prod[lo:hi])
        _add(dh[lo:hi], prod[lo:hi])
    return dh


# -- GRU, torch: n = tanh(xw_n + r * (U_n h + b_hn)); h_t = (1 - z) n + z h -------------------------

@kernel
def gru_torch_forward(inp, UT, bh, h0, mask, out, tm, S, HN, acts, b0, b1):
    """acts (T, B, 3H) holds r, z, n; HN (T, B, H) is U_n h_{t-1} + b_hn; bh = b_hh (3H)."""
    T, B, H = HN.shape
    _copy(S[0, b0:b1], h0[b0:b1])
    a, xt = np.empty((B, 3 * H), UT.dtype), np.empty((B, 3 * H), UT.dtype)
    for t in range(T):
        lo, hi = _rows(mask, t, b0, b1)
        x = _input_step(inp, t, lo, hi, xt)
        _matmul(S[t, lo:hi], UT, a[lo:hi])
        for b in range(b0, b1):
            if not mask[t, b]:
                _carry(t, b, S, out, tm)
                continue
            o = _at(out, t, b, tm)
            for j in range(H):
                r = vsigmoid(x[b, j] + (a[b, j] + bh[j]))
                z = vsigmoid(x[b, H + j] + (a[b, H + j] + bh[H + j]))
                hn = a[b, 2 * H + j] + bh[2 * H + j]
                n = vtanh(x[b, 2 * H + j] + r * hn)
                h = (1 - z) * n + z * S[t, b, j]
                acts[t, b, j], acts[t, b, H + j], acts[t, b, 2 * H + j] = r, z, n
                HN[t, b, j] = hn
                S[t + 1, b, j], o[j] = h, h


@kernel
def gru_torch_backward(dout, tm, dhT, U, mask, S, HN, acts, dA, dHN, dUT, dinp, b0, b1):
    """Fills dA (= d xw) and dHN (d of U_n h + b_hn), adds U's gradient transposed to dUT
    (zeroed by the caller) and the binary input's to dinp; returns dh0."""
    T, B, H = HN.shape
    dh = dhT.copy()
    dhh = np.empty((B, 3 * H), dout.dtype)            # gradient of h_{t-1} U^T (+ b_hh)
    prod = np.empty((B, H), dout.dtype)               # dhh U
    for t in range(T - 1, -1, -1):
        dA_t = _step(dA, t)
        for b in range(b0, b1):
            if not mask[t, b]:
                _zero(dA_t[b])
                _zero(dHN[t, b])
                _zero(dhh[b])
                continue
            go = _at(dout, t, b, tm)
            for j in range(H):
                r, z, n = acts[t, b, j], acts[t, b, H + j], acts[t, b, 2 * H + j]
                gh = dh[b, j] + go[j]
                da_n = gh * (1 - z) * (1 - n * n)
                da_r = da_n * HN[t, b, j] * r * (1 - r)
                da_z = gh * (S[t, b, j] - n) * z * (1 - z)
                dA_t[b, j], dA_t[b, H + j], dA_t[b, 2 * H + j] = da_r, da_z, da_n
                dhh[b, j], dhh[b, H + j] = da_r, da_z
                dhh[b, 2 * H + j] = da_n * r
                dHN[t, b, j] = da_n * r
                dh[b, j] = gh * z
        lo, hi = _rows(mask, t, b0, b1)
        _add_tn(S[t, lo:hi], dhh[lo:hi], dUT)
        _input_grad_step(dinp, t, lo, hi, dA_t)
        _matmul(dhh[lo:hi], U, prod[lo:hi])
        _add(dh[lo:hi], prod[lo:hi])
    return dh


class GRUPaper:
    """kernels.scan's interface to gru_forward / gru_backward (see scan.py)."""
    weights = ("weight_hh",)

    @staticmethod
    def forward(inp, w, state, mask, tm, rows):
        U, (T, B, G, H), out, S = arrays(mask, w, tm)
        Q, acts = empty(T, B, H, like=U), empty(T, B, G, like=U)
        UT = U.T
        UT_rz, UT_n = np.ascontiguousarray(UT[:, :2 * H]), np.ascontiguousarray(UT[:, 2 * H:])
        rows.run(lambda b0, b1: gru_forward(inp, UT_rz, UT_n, state[0], mask, out, tm, S, Q, acts,
                                            b0, b1))
        return (out, S[T].copy()), (U, S, Q, acts)

    @staticmethod
    def backward(saved, grads, mask, tm, binary, rows):
        U, S, Q, acts = saved
        dout, dhT = grads
        T, B, H = Q.shape
        dA_rz, dA_n = dA_buffer(binary, T, B, 2 * H, like=dout), dA_buffer(binary, T, B, H, like=dout)
        U_rz, U_n = U[:2 * H], U[2 * H:]

        def run(b0, b1):
            dUT_rz, dUT_n = dUT_buffer(binary, 2 * H, H, like=U), dUT_buffer(binary, H, H, like=U)
            dinp_rz, dinp_n = dinp_buffers(binary, 2 * H, like=U), dinp_buffers(binary, H, like=U)
            dh0 = gru_backward(dout, tm, dhT, U_rz, U_n, mask, S, Q, acts, dA_rz, dA_n, dUT_rz,
                               dUT_n, dinp_rz, dinp_n, b0, b1)
            return dh0, dUT_rz, dUT_n, dinp_rz, dinp_n
        dh0, dUT_rz, dUT_n, dinp_rz, dinp_n = rows.combine(rows.run(run), rowwise=1)
        dA = np.concatenate([dA_rz, dA_n], axis=2) if binary is None else None
        dU = np.concatenate([dU_of(binary, dUT_rz, dA_rz, S[:-1]), dU_of(binary, dUT_n, dA_n, Q)])
        return (*input_grads(binary, dA, dinp_rz, dinp_n), dU, dh0)


class GRUTorch:
    """kernels.scan's interface to gru_torch_forward / gru_torch_backward (see scan.py)."""
    weights = ("weight_hh", "bias_hh")

    @staticmethod
    def forward(inp, w, state, mask, tm, rows):
        U, (T, B, G, H), out, S = arrays(mask, w, tm)
        HN, acts = empty(T, B, H, like=U), empty(T, B, G, like=U)
        UT = np.ascontiguousarray(U.T)
        rows.run(lambda b0, b1: gru_torch_forward(inp, UT, w["bias_hh"], state[0], mask, out, tm,
                                                  S, HN, acts, b0, b1))
        return (out, S[T].copy()), (U, S, HN, acts)

    @staticmethod
    def backward(saved, grads, mask, tm, binary, rows):
        U, S, HN, acts = saved
        dout, dhT = grads
        dA, dHN = dA_buffer(binary, *acts.shape, like=acts), empty(*HN.shape, like=HN)

        def run(b0, b1):
            dUT, dinp = dUT_buffer(binary, *U.shape, like=U), dinp_buffers(binary, U.shape[0], like=U)
            dh0 = gru_torch_backward(dout, tm, dhT, U, mask, S, HN, acts, dA, dHN, dUT, dinp, b0, b1)
            return dh0, dUT, dinp
        dh0, dUT, dinp = rows.combine(rows.run(run), rowwise=1)
        H = U.shape[1]
        db_hh = np.concatenate([bias_grad(binary, dA, dinp)[:2 * H], dHN.sum((0, 1))])
        dhh = None if binary is not None else np.concatenate([dA[..., :2 * H], dHN], axis=2)   # d(U h + b_hh)
        return (*input_grads(binary, dA, dinp), dU_of(binary, dUT, dhh, S[:-1]), db_hh, dh0)
