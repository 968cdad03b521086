"""The recurrences of cells.py compiled with numba: loops over time, forward and backward
written out, for float32 and float64 arrays on the CPU.

Only the part that must run step by step lives here. The input projection of all steps
(xw = x W^T + b, (T, B, G*H)) comes in precomputed, and the gradients of W, U, b and the
peepholes are single matmuls / reductions over all steps done by torch afterwards from what the
kernels return. Conventions for every kernel:

    xw     (T, B, G*H)  input projection incl. biases, gate blocks in torch's order
    UT     (H, G*H)     weight_hh transposed (contiguous), for h @ U^T
    U      (G*H, H)     weight_hh, for dA @ U in the backward
    mask   (T, B)       uint8, 0 at padded steps: the state is carried, the output is 0
    S      (T+1, B, H)  the state h before each step (S[0] = h0) and after the last one
    acts   (T, B, G*H)  the gates after their nonlinearity, saved for the backward
    dA     (T, B, G*H)  gradient of the pre-activations (= d xw); zero at padded steps

The step equations are cells.py's, one line per gate; tests/test_kernels.py checks every output
and gradient against it.
"""
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

# m*k*n of a per-step product above which BLAS (np.dot) beats the plain loop below (measured
# on the 2-core machine: batch 32 at the music sizes is faster looped, speech sizes with BLAS).
BLAS_MIN = 1 << 17

# error_model="numpy": x / 0 gives inf instead of raising, which lets LLVM vectorize the loops.
JIT = dict(cache=True, fastmath=False, nogil=True, error_model="numpy")


# -- exp, sigmoid and tanh that LLVM can vectorize (libm's are scalar calls, 5-40 ns each) ------
# Computed in float64 for both dtypes: exp to 1 ulp, sigmoid and tanh to 2 ulp (float64),
# checked against numpy in tests/test_kernels.py.

@intrinsic
def _f64_bits(typingctx, x):
    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(64))
    return types.int64(types.float64), codegen


@intrinsic
def _bits_f64(typingctx, x):
    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.DoubleType())
    return types.float64(types.int64), codegen


_SHIFT = 6755399441055744.0          # 1.5 * 2^52: adding it rounds to an integer in the low bits
_LOG2E = 1.4426950408889634
_LN2_HI, _LN2_LO = 6.93147180369123816490e-01, 1.90821492927058770002e-10   # fdlibm's split


@njit(inline="always", **JIT)
def _exp(x):
    """e^x = 2^n e^r, |r| <= ln2 / 2, e^r by its Taylor series to r^13 / 13! (error < 1e-17)."""
    x = min(max(np.float64(x), -700.0), 700.0)
    t = x * _LOG2E + _SHIFT
    n = t - _SHIFT
    r = (x - n * _LN2_HI) - n * _LN2_LO
    p = 1.6059043836821613e-10                              # 1 / 13!
    p = p * r + 2.08767569878681e-09
    p = p * r + 2.505210838544172e-08
    p = p * r + 2.755731922398589e-07
    p = p * r + 2.7557319223985893e-06
    p = p * r + 2.48015873015873e-05
    p = p * r + 0.0001984126984126984
    p = p * r + 0.001388888888888889
    p = p * r + 0.008333333333333333
    p = p * r + 0.041666666666666664
    p = p * r + 0.16666666666666666
    p = p * r + 0.5
    p = p * r + 1.0
    p = p * r + 1.0                                          # 1 / 0!
    return p * _bits_f64((_f64_bits(t) + 1023) << 52)     # 2^n from n in t's low bits


@njit(inline="always", **JIT)
def _sigmoid(a):
    return 1.0 / (1.0 + _exp(-a))


@njit(inline="always", **JIT)
def _tanh(x):
    """Cephes' tanh: a rational function below |x| = 0.625, 1 - 2 / (e^2|x| + 1) above."""
    ax = abs(np.float64(x))
    z = ax * ax
    small = ax + ax * z * (((-9.64399179425052238628e-1 * z - 9.92877231001918586564e1) * z
                            - 1.61468768441708447952e3)
                           / (((z + 1.12811678491632931402e2) * z + 2.23548839060100448583e3) * z
                              + 4.84406305325125486048e3))
    y = small if ax < 0.625 else 1.0 - 2.0 / (_exp(2.0 * ax) + 1.0)
    return y if x >= 0 else -y


@njit(**JIT)
def _matmul_add(a, b, out):
    """out += a @ b for C-contiguous 2-D arrays a (M, K), b (K, N), out (M, N)."""
    M, K = a.shape
    N = b.shape[1]
    if M * K * N >= BLAS_MIN:
        out += np.dot(a, b)
        return
    for m in range(M):
        for k in range(K):
            v = a[m, k]
            if v != 0:
                for n in range(N):
                    out[m, n] += v * b[k, n]


# -- tanh: h_t = tanh(xw_t + h_{t-1} U^T + bh); bh = 0 (paper) or b_hh (torch) ----------------------------------------------------------

@njit(**JIT)
def tanh_forward(xw, UT, bh, h0, mask, out, S):
    T, B, H = out.shape
    S[0] = h0
    a = np.empty((B, H), xw.dtype)
    for t in range(T):
        a[:] = xw[t] + bh
        _matmul_add(S[t], UT, a)
        for b in range(B):
            if mask[t, b]:
                for j in range(H):
                    v = _tanh(a[b, j])
                    S[t + 1, b, j] = v
                    out[t, b, j] = v
            else:
                S[t + 1, b] = S[t, b]
                out[t, b] = 0


@njit(**JIT)
def tanh_backward(dout, dhT, U, mask, S, dA):
    """Fills dA; returns dh0."""
    T, B, H = dout.shape
    dh = dhT.copy()
    for t in range(T - 1, -1, -1):
        for b in range(B):
            if mask[t, b]:
                for j in range(H):
                    y = S[t + 1, b, j]
                    dA[t, b, j] = (dh[b, j] + dout[t, b, j]) * (1 - y * y)
                    dh[b, j] = 0          # h_t depends on h_{t-1} only through the product
            else:
                dA[t, b] = 0
        _matmul_add(dA[t], U, dh)
    return dh


# -- LSTM (paper: diagonal peepholes P = (V_i, V_f, V_o), bh = 0; torch: P = 0, bh = b_hh) ----------------------------

@njit(**JIT)
def lstm_forward(xw, UT, bh, P, h0, c0, mask, out, S, C, acts, tc):
    """acts (T, B, 4H) holds i, f, g, o; C (T+1, B, H) the cell states; tc (T, B, H) tanh(c_t)."""
    T, B, H = out.shape
    S[0] = h0
    C[0] = c0
    a = np.empty((B, 4 * H), xw.dtype)
    for t in range(T):
        a[:] = xw[t] + bh
        _matmul_add(S[t], UT, a)
        for b in range(B):
            if not mask[t, b]:
                S[t + 1, b] = S[t, b]
                C[t + 1, b] = C[t, b]
                out[t, b] = 0
                acts[t, b] = 0
                continue
            # a few simple passes rather than one: each writes one or two arrays, so that
            # LLVM's alias checks stay few and the loops vectorize (3-5x faster here)
            for j in range(H):
                c = C[t, b, j]
                acts[t, b, j] = _sigmoid(a[b, j] + P[0, j] * c)
                acts[t, b, H + j] = _sigmoid(a[b, H + j] + P[1, j] * c)
                acts[t, b, 2 * H + j] = _tanh(a[b, 2 * H + j])
            for j in range(H):
                C[t + 1, b, j] = acts[t, b, H + j] * C[t, b, j] + acts[t, b, j] * acts[t, b, 2 * H + j]
            for j in range(H):
                c = C[t + 1, b, j]
                acts[t, b, 3 * H + j] = _sigmoid(a[b, 3 * H + j] + P[2, j] * c)
                tc[t, b, j] = _tanh(c)
            for j in range(H):
                out[t, b, j] = acts[t, b, 3 * H + j] * tc[t, b, j]
            S[t + 1, b] = out[t, b]


@njit(**JIT)
def lstm_backward(dout, dhT, dcT, U, P, mask, C, acts, tc, dA):
    """Fills dA; returns dh0, dc0."""
    T, B, H = dout.shape
    dh = dhT.copy()
    dc = dcT.copy()
    for t in range(T - 1, -1, -1):
        for b in range(B):
            if not mask[t, b]:
                dA[t, b] = 0
                continue
            for j in range(H):
                i, f = acts[t, b, j], acts[t, b, H + j]
                g, o = acts[t, b, 2 * H + j], acts[t, b, 3 * H + j]
                y, c_prev = tc[t, b, j], C[t, b, j]
                gh = dh[b, j] + dout[t, b, j]
                da_o = gh * y * o * (1 - o)
                dcn = dc[b, j] + gh * o * (1 - y * y) + da_o * P[2, j]
                da_i = dcn * g * i * (1 - i)
                da_f = dcn * c_prev * f * (1 - f)
                dA[t, b, j], dA[t, b, H + j] = da_i, da_f
                dA[t, b, 2 * H + j] = dcn * i * (1 - g * g)
                dA[t, b, 3 * H + j] = da_o
                dc[b, j] = dcn * f + da_i * P[0, j] + da_f * P[1, j]
                dh[b, j] = 0
        _matmul_add(dA[t], U, dh)
    return dh, dc


# -- GRU, paper: reset before the product; h_t = (1 - z) h + z n ----------------------------------

@njit(**JIT)
def gru_forward(xw, UT_rz, UT_n, h0, mask, out, S, Q, acts):
    """acts (T, B, 3H) holds r, z, n; Q (T, B, H) is r * h_{t-1}, the input of U_n."""
    T, B, H = out.shape
    S[0] = h0
    a = np.empty((B, 2 * H), xw.dtype)
    an = np.empty((B, H), xw.dtype)
    for t in range(T):
        a[:] = xw[t, :, :2 * H]
        _matmul_add(S[t], UT_rz, a)
        for b in range(B):
            for j in range(H):
                r = _sigmoid(a[b, j])
                acts[t, b, j] = r
                acts[t, b, H + j] = _sigmoid(a[b, H + j])
                Q[t, b, j] = r * S[t, b, j]
        an[:] = xw[t, :, 2 * H:]
        _matmul_add(Q[t], UT_n, an)
        for b in range(B):
            if not mask[t, b]:
                S[t + 1, b] = S[t, b]
                out[t, b] = 0
                Q[t, b] = 0
                continue
            for j in range(H):
                n = _tanh(an[b, j])
                z = acts[t, b, H + j]
                h = (1 - z) * S[t, b, j] + z * n
                acts[t, b, 2 * H + j] = n
                S[t + 1, b, j], out[t, b, j] = h, h


@njit(**JIT)
def gru_backward(dout, dhT, U_rz, U_n, mask, S, acts, dA_rz, dA_n):
    """Fills dA_rz (T, B, 2H) and dA_n (T, B, H); returns dh0."""
    T, B, H = dout.shape
    dh = dhT.copy()
    dq = np.empty((B, H), dout.dtype)                 # gradient of r * h_{t-1}
    for t in range(T - 1, -1, -1):
        for b in range(B):
            if not mask[t, b]:
                dA_rz[t, b] = 0
                dA_n[t, b] = 0
                continue
            for j in range(H):
                z, n = acts[t, b, H + j], acts[t, b, 2 * H + j]
                gh = dh[b, j] + dout[t, b, j]
                dA_rz[t, b, H + j] = gh * (n - S[t, b, j]) * z * (1 - z)
                dA_n[t, b, j] = gh * z * (1 - n * n)
                dh[b, j] = gh * (1 - z)
        dq[:] = 0
        _matmul_add(dA_n[t], U_n, dq)
        for b in range(B):
            if mask[t, b]:
                for j in range(H):
                    r = acts[t, b, j]
                    dA_rz[t, b, j] = dq[b, j] * S[t, b, j] * r * (1 - r)
                    dh[b, j] += dq[b, j] * r
        _matmul_add(dA_rz[t], U_rz, dh)
    return dh


# -- GRU, torch: n = tanh(xw_n + r * (U_n h + b_hn)); h_t = (1 - z) n + z h -------------------------

@njit(**JIT)
def gru_torch_forward(xw, UT, bh, h0, mask, out, S, HN, acts):
    """acts (T, B, 3H) holds r, z, n; HN (T, B, H) is U_n h_{t-1} + b_hn; bh = b_hh (3H)."""
    T, B, H = out.shape
    S[0] = h0
    a = np.empty((B, 3 * H), xw.dtype)
    for t in range(T):
        a[:] = bh
        _matmul_add(S[t], UT, a)
        for b in range(B):
            if not mask[t, b]:
                S[t + 1, b] = S[t, b]
                out[t, b] = 0
                acts[t, b] = 0
                HN[t, b] = 0
                continue
            for j in range(H):
                r = _sigmoid(xw[t, b, j] + a[b, j])
                z = _sigmoid(xw[t, b, H + j] + a[b, H + j])
                hn = a[b, 2 * H + j]
                n = _tanh(xw[t, b, 2 * H + j] + r * hn)
                h = (1 - z) * n + z * S[t, b, j]
                acts[t, b, j], acts[t, b, H + j], acts[t, b, 2 * H + j] = r, z, n
                HN[t, b, j] = hn
                S[t + 1, b, j], out[t, b, j] = h, h


@njit(**JIT)
def gru_torch_backward(dout, dhT, U, mask, S, HN, acts, dA, dHN):
    """Fills dA (= d xw) and dHN (d of U_n h + b_hn); returns dh0."""
    T, B, H = dout.shape
    dh = dhT.copy()
    dhh = np.empty((B, 3 * H), dout.dtype)            # gradient of h_{t-1} U^T (+ b_hh)
    for t in range(T - 1, -1, -1):
        for b in range(B):
            if not mask[t, b]:
                dA[t, b] = 0
                dHN[t, b] = 0
                dhh[b] = 0
                continue
            for j in range(H):
                r, z, n = acts[t, b, j], acts[t, b, H + j], acts[t, b, 2 * H + j]
                gh = dh[b, j] + dout[t, b, j]
                da_n = gh * (1 - z) * (1 - n * n)
                da_r = da_n * HN[t, b, j] * r * (1 - r)
                da_z = gh * (S[t, b, j] - n) * z * (1 - z)
                dA[t, b, j], dA[t, b, H + j], dA[t, b, 2 * H + j] = da_r, da_z, da_n
                dhh[b, j], dhh[b, H + j] = da_r, da_z
                dhh[b, 2 * H + j] = da_n * r
                dHN[t, b, j] = da_n * r
                dh[b, j] = gh * z
        _matmul_add(dhh, U, dh)
    return dh
