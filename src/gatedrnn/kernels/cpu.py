"""The recurrences of cells.py compiled with numba: loops over time, forward and backward
written out, for float32 and float64 arrays on the CPU. They are compiled at install
(kernels/aot.py), or just in time where that module is missing.

Only the part that must run step by step lives here. The input projection of all steps
(xw = x W^T + b, (T, B, G*H)) comes in precomputed, or, for a binary input (piano rolls), is
made step by step from the input held as CSR (_input_step). For such an input the backward
kernels also add U's gradient per step (S_t^T dA_t, one BLAS call while dA_t is in cache) and the
input's weight and bias gradients, so that dA need not be kept for all steps; otherwise dU is one
matmul over all steps done by torch afterwards, like the peepholes' and b_hh's reductions.
Conventions for every kernel:

    inp    (xw, ptr, cols, WT, bias): the input projection, see _input_step
    xw     (T, B, G*H)  input projection incl. biases, gate blocks in torch's order
    UT     (H, G*H)     weight_hh transposed (contiguous), for h @ U^T
    U      (G*H, H)     weight_hh, for dA @ U in the backward
    mask   (T, B)       uint8, 0 at padded steps: the state is carried, the output is 0
    out    (T, B, H)    the outputs if tm (time-major), else (B, T, H); dout likewise
    S      (T+1, B, H)  the state h before each step (S[0] = h0) and after the last one
    acts   (T, B, G*H)  the gates after their nonlinearity, saved for the backward (LSTM:
                        gate-major, (T, 4, B, H))
    dA     (T, B, G*H)  gradient of the pre-activations (= d xw); zero at padded steps. For a
                        binary input (1, B, G*H), one step's, reused (_step)
    dUT    (H, G*H)     U's gradient, transposed, summed step by step (binary input); (0, 0)
                        where the caller takes it from the whole dA in one matmul

The step equations are cells.py's, one line per gate; tests/test_kernels.py checks every output
and gradient against it.
"""
import ctypes
import glob
import os

import numpy as np
from llvmlite import binding, ir
from numba import njit, types
from numba.extending import get_cython_function_address, intrinsic, overload


# -- BLAS: the per-step products call the Fortran sgemm_ / dgemm_ that torch itself uses -------
# torch's x86 wheels carry MKL and export its sgemm_ / dgemm_; at these sizes MKL is 1.2-1.5x
# faster than the OpenBLAS behind numba's np.dot (32 x 195 @ 195 x 780: 150 vs 230 us). Where
# torch has none, scipy's OpenBLAS serves. The compiled code calls the names gatedrnn_sgemm /
# gatedrnn_dgemm, bound in each process (bind_blas, before the first call) to addresses, so that
# neither numba's on-disk cache nor the kernels compiled at install (kernels/aot.py) hold one.

def bind_blas():
    """(name, [sgemm_ address, dgemm_ address]) of torch's BLAS, else scipy's; binds the names
    gatedrnn_[sd]gemm of the just-in-time compiled kernels to them."""
    import torch
    for path in glob.glob(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.*")):
        try:
            lib = ctypes.CDLL(path)
            addresses = [ctypes.cast(getattr(lib, f"{t}gemm_"), ctypes.c_void_p).value for t in "sd"]
        except (OSError, AttributeError):
            continue
        name = "torch's BLAS" + (" (MKL)" if torch.backends.mkl.is_available() else "")
        break
    else:
        addresses = [get_cython_function_address("scipy.linalg.cython_blas", f"{t}gemm") for t in "sd"]
        name = "scipy's OpenBLAS"
    bind(addresses)
    return name, addresses


def bind(addresses):
    """Bind gatedrnn_sgemm / gatedrnn_dgemm to these addresses for the just-in-time compiler."""
    for t, address in zip("sd", addresses):
        binding.add_symbol(f"gatedrnn_{t}gemm", address)


_P = types.intp       # every Fortran BLAS argument is a pointer
_sgemm = types.ExternalFunction("gatedrnn_sgemm", types.void(*[_P] * 13))
_dgemm = types.ExternalFunction("gatedrnn_dgemm", types.void(*[_P] * 13))

# error_model="numpy": x / 0 gives inf instead of raising, which lets LLVM vectorize the loops.
# fastmath "contract" only: a * b + c may become one fused multiply-add (rounded once, so no less
# accurate); nothing assumes finite values or reorders sums. It makes exp / sigmoid / tanh below
# ~30% faster (their polynomials are chains of multiply-adds).
JIT = dict(cache=True, fastmath={"contract"}, nogil=True, error_model="numpy")


# -- exp, sigmoid and tanh that LLVM can vectorize (libm's are scalar calls, 5-40 ns each) ------
# One implementation per dtype (8 float32 or 4 float64 lanes per AVX2 instruction): float64 to
# 1-2 ulp (Taylor series to r^13), float32 to a few ulp (Cephes' expf / tanhf polynomials);
# tests/test_kernels.py checks them against numpy.

@intrinsic
def _pow2(typingctx, t):
    """2^n for t = n + 1.5 * 2^m (m = 52 float64, 23 float32): n sits in t's low mantissa bits."""
    bits, mant, bias = (64, 52, 1023) if t == types.float64 else (32, 23, 127)
    ftype = ir.DoubleType() if bits == 64 else ir.FloatType()

    def codegen(context, builder, sig, args):
        i = builder.bitcast(args[0], ir.IntType(bits))
        i = builder.shl(builder.add(i, ir.Constant(ir.IntType(bits), bias)),
                        ir.Constant(ir.IntType(bits), mant))
        return builder.bitcast(i, ftype)
    return t(t), codegen


_LOG2E = 1.4426950408889634
_F = np.float32
_LOG2E_F = _F(_LOG2E)
_ONE_F, _TWO_F = _F(1), _F(2)


def _exp64(x):
    """e^x = 2^n e^r, |r| <= ln2 / 2, e^r by its Taylor series to r^13 / 13!. x is clamped to
    [-700, 700] (e^-700 ~ 1e-304 stands for 0, e^700 ~ 1e304 for inf); NaN stays NaN."""
    xc = min(max(x, -700.0), 700.0)
    t = xc * _LOG2E + 6755399441055744.0                     # + 1.5 * 2^52 rounds n into t
    n = t - 6755399441055744.0
    r = (xc - n * 6.93147180369123816490e-01) - n * 1.90821492927058770002e-10  # fdlibm's ln2
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
    return p * _pow2(t)


_E32 = [_F(v) for v in (-87.0, 88.0, 12582912.0, 0.693359375, -2.12194440e-4, 1.9875691500e-4,
                        1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1,
                        5.0000001201e-1)]
(_LO_F, _HI_F, _SHIFT_F, _C1_F, _C2_F, _P0_F, _P1_F, _P2_F, _P3_F, _P4_F, _P5_F) = _E32


def _exp32(x):
    """Cephes' expf: e^x = 2^n (1 + r + r^2 P(r)), |r| <= ln2 / 2. x is clamped to [-87, 88]
    (e^-87 ~ 1.6e-38 stands for 0, e^88 ~ 1.7e38 for inf); NaN stays NaN. Exact limits would
    cost selects that stop LLVM vectorizing some loops (10x slower)."""
    xc = min(max(x, _LO_F), _HI_F)
    t = xc * _LOG2E_F + _SHIFT_F
    n = t - _SHIFT_F
    r = (xc - n * _C1_F) - n * _C2_F
    p = ((((_P0_F * r + _P1_F) * r + _P2_F) * r + _P3_F) * r + _P4_F) * r + _P5_F
    return ((p * r) * r + r + _ONE_F) * _pow2(t)


def _tanh64(x):
    """Cephes' tanh: a rational function below |x| = 0.625, 1 - 2 / (e^2|x| + 1) above."""
    ax = abs(x)
    z = ax * ax
    small = ax + ax * z * (((-9.64399179425052238628e-1 * z - 9.92877231001918586564e1) * z
                            - 1.61468768441708447952e3)
                           / (((z + 1.12811678491632931402e2) * z + 2.23548839060100448583e3) * z
                              + 4.84406305325125486048e3))
    y = small if ax < 0.625 else 1.0 - 2.0 / (_exp(2.0 * ax) + 1.0)
    return y if x >= 0 else -y


_T32 = [_F(v) for v in (0.625, -5.70498872745e-3, 2.06390887954e-2, -5.37397155531e-2,
                        1.33314422036e-1, -3.33332819422e-1)]
(_CUT_F, _Q0_F, _Q1_F, _Q2_F, _Q3_F, _Q4_F) = _T32


def _tanh32(x):
    """Cephes' tanhf: a polynomial below |x| = 0.625, 1 - 2 / (e^2|x| + 1) above."""
    ax = abs(x)
    z = ax * ax
    small = ((((_Q0_F * z + _Q1_F) * z + _Q2_F) * z + _Q3_F) * z + _Q4_F) * z * ax + ax
    y = small if ax < _CUT_F else _ONE_F - _TWO_F / (_exp(_TWO_F * ax) + _ONE_F)
    return y if x >= 0 else -y


# log(1 + e) for 0 <= e <= 1 as 2 atanh(s), s = e / (2 + e) <= 1/3: s times a polynomial in s^2
# with coefficients 2 / (2k + 1); the relative error stays a few ulp even for tiny e.

def _log1p_unit64(x):
    s = x / (2.0 + x)
    z = s * s
    p = 2.0 / 35                                  # to s^35: (1/9)^18 < 2^-56
    p = p * z + 2.0 / 33
    p = p * z + 2.0 / 31
    p = p * z + 2.0 / 29
    p = p * z + 2.0 / 27
    p = p * z + 2.0 / 25
    p = p * z + 2.0 / 23
    p = p * z + 2.0 / 21
    p = p * z + 2.0 / 19
    p = p * z + 2.0 / 17
    p = p * z + 2.0 / 15
    p = p * z + 2.0 / 13
    p = p * z + 2.0 / 11
    p = p * z + 2.0 / 9
    p = p * z + 2.0 / 7
    p = p * z + 2.0 / 5
    p = p * z + 2.0 / 3
    p = p * z + 2.0 / 1
    return p * s


_L32 = [_F(2.0 / (2 * k + 1)) for k in range(8, -1, -1)]    # to s^17: (1/9)^9 < 2^-28
(_L8_F, _L7_F, _L6_F, _L5_F, _L4_F, _L3_F, _L2_F, _L1_F, _L0_F) = _L32


def _log1p_unit32(x):
    s = x / (_TWO_F + x)
    z = s * s
    p = (((((((_L8_F * z + _L7_F) * z + _L6_F) * z + _L5_F) * z + _L4_F) * z + _L3_F) * z
          + _L2_F) * z + _L1_F) * z + _L0_F
    return p * s


def _sigmoid64(x):
    return 1.0 / (1.0 + _exp(-x))


def _sigmoid32(x):
    return _ONE_F / (_ONE_F + _exp(-x))


def _by_dtype(f32, f64):
    """A function numba compiles as f32 for float32 arguments and as f64 otherwise."""
    def stub(x):
        raise NotImplementedError("compiled code only")

    @overload(stub, jit_options=JIT)
    def _impl(x):
        return f32 if x == types.float32 else f64
    return stub


_exp = _by_dtype(_exp32, _exp64)
_sigmoid = _by_dtype(_sigmoid32, _sigmoid64)
_tanh = _by_dtype(_tanh32, _tanh64)
_log1p_unit = _by_dtype(_log1p_unit32, _log1p_unit64)


@njit(**JIT)
def _gemm(a, b, out, a_transposed, accumulate):
    """out = a @ b, or out += a^T @ b if a_transposed and accumulate (or any mix of the two),
    for C-contiguous 2-D arrays: a (M, K) or (K, M) transposed, b (K, N), out (M, N). BLAS
    writes into out (no temporary); the callers fold other additions into their loops."""
    M, N = out.shape
    K = b.shape[0]
    if M == 0 or K == 0:                  # every row of the step is padding
        if not accumulate:
            _zero(out)
        return
    # row-major out = op(a) b is column-major out^T = b^T op(a)^T: gemm("N", "N" or "T", N, M,
    # K, b, N, a, K or M, out, N)
    args = np.empty(6, np.int32)          # "N", "N"/"T", then the sizes; no array-from-list
    args[0], args[1] = 78, 84 if a_transposed else 78
    args[2], args[3], args[4], args[5] = N, M, K, M if a_transposed else K
    scale = np.empty(2, out.dtype)        # alpha = 1, beta
    scale[0], scale[1] = 1, 1 if accumulate else 0
    p = args.ctypes.data
    if scale.itemsize == 4:       # float32
        _sgemm(p, p + 4, p + 8, p + 12, p + 16, scale.ctypes.data, b.ctypes.data, p + 8,
               a.ctypes.data, p + 20, scale.ctypes.data + scale.itemsize, out.ctypes.data, p + 8)
    else:
        _dgemm(p, p + 4, p + 8, p + 12, p + 16, scale.ctypes.data, b.ctypes.data, p + 8,
               a.ctypes.data, p + 20, scale.ctypes.data + scale.itemsize, out.ctypes.data, p + 8)


@njit(**JIT)
def _matmul(a, b, out):
    """out = a @ b (C-contiguous 2-D arrays)."""
    _gemm(a, b, out, np.bool_(False), np.bool_(False))   # np.bool_: one _gemm for both callers
                                                         # (literal flags would compile two)


@njit(**JIT)
def _add_tn(a, b, out):
    """out += a^T @ b: a (K, M), b (K, N), out (M, N), C-contiguous. The backward kernels add
    each step's S_t^T dA_t to dU^T while dA_t is in cache."""
    _gemm(a, b, out, np.bool_(True), np.bool_(True))


@njit(**JIT)
def _copy(dst, src):
    """dst[...] = src[...] for C-contiguous arrays of the same size."""
    if dst.ndim == 1:                     # a row: no reshape (its checks cost ~40 ns a call)
        for k in range(dst.shape[0]):
            dst[k] = src[k]
        return
    d, s = dst.reshape(dst.size), src.reshape(src.size)
    for k in range(d.size):
        d[k] = s[k]


@njit(**JIT)
def _zero(dst):
    if dst.ndim == 1:
        for k in range(dst.shape[0]):
            dst[k] = 0
        return
    d = dst.reshape(dst.size)
    for k in range(d.size):
        d[k] = 0


@njit(**JIT)
def _add(dst, src):
    """dst[...] += src[...] for C-contiguous arrays of the same size."""
    if dst.ndim == 1:
        for k in range(dst.shape[0]):
            dst[k] += src[k]
        return
    d, s = dst.reshape(dst.size), src.reshape(src.size)
    for k in range(d.size):
        d[k] += s[k]


@njit(**JIT)
def _at(a, t, b, time_major):
    """Step t of sequence b in an output-shaped array: a (T, B, H) if time_major, else
    (B, T, H) (batch-first outputs are written in place, with no transposed copy)."""
    return a[t, b] if time_major else a[b, t]


@njit(**JIT)
def _step(a, t):
    """a[t], or a[0] where a holds one step: a backward kernel's dA when nothing reads it past
    the step (a binary input's gradients are added step by step), reused at every step."""
    return a[t] if a.shape[0] > 1 else a[0]


@njit(**JIT)
def _rows(mask, t):
    """The rows lo..hi-1 of step t that hold every sequence still running (mask[t, b] != 0).
    Rows outside are padding: the per-step products and gate loops skip them, so a batch of
    sequences sorted by length (data.batching) pays only for the steps it has, as a packed
    sequence would. Rows inside that are padding are handled one by one."""
    B = mask.shape[1]
    lo, hi = 0, B
    while lo < hi and not mask[t, lo]:
        lo += 1
    while hi > lo and not mask[t, hi - 1]:
        hi -= 1
    return lo, hi


@njit(**JIT)
def _flat(a, k0, k1):
    """Entries k0..k1-1 of the C-contiguous (B, H) array a, flattened: loops over them index
    from 0 (a loop from k0 would keep numba's negative-index check and not vectorize)."""
    return a.reshape(a.size)[k0:k1]


@njit(**JIT)
def _over_batch(P, B):
    """The peepholes P (3, H) repeated over the batch, (3, B, H): gate loops then read them flat."""
    PB = np.empty((P.shape[0], B, P.shape[1]), P.dtype)
    for k in range(P.shape[0]):
        for b in range(B):
            _copy(PB[k, b], P[k])
    return PB


@njit(**JIT)
def _carry(t, b, S, out, tm):
    """A padded step of sequence b: the state is carried, the output is zero."""
    _copy(S[t + 1, b], S[t, b])
    _zero(_at(out, t, b, tm))


# -- the input projection of a step --------------------------------------------------------------
# inp = (xw, ptr, cols, WT, bias): xw (T, B, G) holds every step's projection (dense inputs), or
# ptr is not empty and the input is binary (piano rolls), held as CSR over rows t * B + b
# (binary_csr): each step then adds the columns of W^T for its ones to the bias, while the
# kernel runs (no (T, B, G) array written and read again). The backward kernels take
# dinp = (ptr, cols, dWT, db) and add that input's gradients, x_t^T dA_t and dA_t's column sums.

@njit(**JIT)
def _project_row(ptr, cols, WT, bias, r, out):
    """out (G,) = row r of x W^T + bias, for the binary x held as CSR (the columns of W^T for
    its ones added to the bias). WT (I, G) = W^T."""
    for g in range(out.shape[0]):
        out[g] = bias[g]
    for n in range(ptr[r], ptr[r + 1]):
        c = cols[n]
        for g in range(out.shape[0]):
            out[g] += WT[c, g]


@njit(**JIT)
def _project_row_grad(ptr, cols, r, dout, dWT, db):
    """dWT (I, G) += x_r^T dout and db (G,) += dout, for row r of the binary x held as CSR and
    its output's gradient dout (G,)."""
    for g in range(dout.shape[0]):
        db[g] += dout[g]
    for n in range(ptr[r], ptr[r + 1]):
        c = cols[n]
        for g in range(dout.shape[0]):
            dWT[c, g] += dout[g]


@njit(**JIT)
def _input_step(inp, t, lo, hi, xt):
    """Step t's x_t W^T + b, (B, G), for the rows lo..hi: xw[t], or xt filled from the CSR."""
    xw, ptr, cols, WT, bias = inp
    if ptr.shape[0] == 0:
        return xw[t]
    B = xt.shape[0]
    for b in range(lo, hi):
        _project_row(ptr, cols, WT, bias, t * B + b, xt[b])
    return xt


@njit(**JIT)
def _input_grad_step(dinp, t, lo, hi, dA_t):
    """dWT += x_t^T dA_t and db += its column sums over the rows lo..hi, for a binary input."""
    ptr, cols, dWT, db = dinp
    if ptr.shape[0] == 0:
        return
    B = dA_t.shape[0]
    for b in range(lo, hi):
        _project_row_grad(ptr, cols, t * B + b, dA_t[b], dWT, db)


# -- tanh: h_t = tanh(xw_t + h_{t-1} U^T + bh); bh = 0 (paper) or b_hh (torch) ----------------

@njit(**JIT)
def tanh_forward(inp, UT, bh, h0, mask, out, tm, S):
    T, B, H = mask.shape[0], mask.shape[1], UT.shape[0]
    _copy(S[0], h0)
    a, xt = np.empty((B, H), UT.dtype), np.empty((B, H), UT.dtype)
    for t in range(T):
        lo, hi = _rows(mask, t)
        x = _input_step(inp, t, lo, hi, xt)
        _matmul(S[t, lo:hi], UT, a[lo:hi])
        for b in range(B):
            if mask[t, b]:
                o = _at(out, t, b, tm)
                for j in range(H):
                    v = _tanh(x[b, j] + (a[b, j] + bh[j]))
                    S[t + 1, b, j] = v
                    o[j] = v
            else:
                _carry(t, b, S, out, tm)


@njit(**JIT)
def tanh_backward(dout, tm, dhT, U, mask, S, dA, dUT, dinp):
    """Fills dA, adds U's gradient transposed to dUT (zeroed by the caller) and the binary
    input's to dinp; returns dh0."""
    T, B, H = S.shape[0] - 1, S.shape[1], S.shape[2]
    dh = dhT.copy()
    prod = np.empty_like(dh)                          # dA_t U
    for t in range(T - 1, -1, -1):
        dA_t = _step(dA, t)
        for b in range(B):
            if mask[t, b]:
                go = _at(dout, t, b, tm)
                for j in range(H):
                    y = S[t + 1, b, j]
                    dA_t[b, j] = (dh[b, j] + go[j]) * (1 - y * y)
            else:
                _zero(dA_t[b])
        lo, hi = _rows(mask, t)
        _add_tn(S[t, lo:hi], dA_t[lo:hi], dUT)
        _input_grad_step(dinp, t, lo, hi, dA_t)
        _matmul(dA_t[lo:hi], U, prod[lo:hi])
        for b in range(lo, hi):
            if mask[t, b]:                # h_t depends on h_{t-1} only through the product
                _copy(dh[b], prod[b])
    return dh


# -- LSTM (paper: diagonal peepholes P = (V_i, V_f, V_o), bh = 0; torch: P = 0, bh = b_hh) ----

@njit(**JIT)
def lstm_forward(inp, UT, bh, P, h0, c0, mask, out, tm, S, C, acts, tc):
    """acts (T, 4, B, H) holds i, f, g, o gate-major; C (T+1, B, H) the cell states; tc (T, B, H)
    tanh(c_t). Gate-major, every elementwise loop runs over the rows lo..hi-1 (_rows) at once,
    entries k0..k1-1 of B*H (long vectorized loops, no per-row remainders)."""
    T, B, H = tc.shape
    _copy(S[0], h0)
    _copy(C[0], c0)
    a, xt = np.empty((B, 4 * H), UT.dtype), np.empty((B, 4 * H), UT.dtype)
    PB = _over_batch(P, B)
    for t in range(T):
        lo, hi = _rows(mask, t)                 # the gate loops run over entries k0..k1-1
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
            i[k] = _sigmoid(i[k] + pi[k] * c_prev[k])
        for k in range(k1 - k0):
            f[k] = _sigmoid(f[k] + pf[k] * c_prev[k])
        for k in range(k1 - k0):
            g[k] = _tanh(g[k])
        for k in range(k1 - k0):
            c[k] = f[k] * c_prev[k] + i[k] * g[k]
        for k in range(k1 - k0):
            o[k] = _sigmoid(o[k] + po[k] * c[k])
        for k in range(k1 - k0):
            y[k] = _tanh(c[k])
        for k in range(k1 - k0):
            h[k] = o[k] * y[k]
        for b in range(B):
            if mask[t, b]:
                _copy(_at(out, t, b, tm), S[t + 1, b])
            else:
                _carry(t, b, S, out, tm)
                _copy(C[t + 1, b], C[t, b])


@njit(**JIT)
def lstm_backward(dout, tm, dhT, dcT, U, P, mask, S, C, acts, tc, dA, dUT, dP, dinp):
    """Fills dA (T, B, 4H), adds U's gradient transposed to dUT (H, 4H) and the peepholes'
    gradient per row to dP (3, B, H), both zeroed by the caller, and the binary input's to
    dinp; returns dh0, dc0. Gate-major flat loops like the forward."""
    T, B, H = tc.shape
    dh, dc = dhT.copy(), dcT.copy()
    held_h, held_c = np.empty_like(dh), np.empty_like(dc)   # padded rows: carried unchanged
    prod = np.empty_like(dh)                                  # dA_t U
    dG = np.empty((4, B, H), dout.dtype)                      # this step's dA, gate-major
    gout = np.empty((B, H), dout.dtype)                       # this step's dout, contiguous
    PB = _over_batch(P, B)
    for t in range(T - 1, -1, -1):
        dA_t = _step(dA, t)
        _copy(held_h, dh)
        _copy(held_c, dc)
        lo, hi = _rows(mask, t)                 # the gate loops run over entries k0..k1-1
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
        for b in range(B):
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


# -- GRU, paper: reset before the product; h_t = (1 - z) h + z n ----------------------------------

@njit(**JIT)
def gru_forward(inp, UT_rz, UT_n, h0, mask, out, tm, S, Q, acts):
    """acts (T, B, 3H) holds r, z, n; Q (T, B, H) is r * h_{t-1}, the input of U_n."""
    T, B, H = Q.shape
    _copy(S[0], h0)
    a, an = np.empty((B, 2 * H), UT_rz.dtype), np.empty((B, H), UT_rz.dtype)
    xt = np.empty((B, 3 * H), UT_rz.dtype)
    for t in range(T):
        lo, hi = _rows(mask, t)
        x = _input_step(inp, t, lo, hi, xt)
        _matmul(S[t, lo:hi], UT_rz, a[lo:hi])
        for b in range(B):
            if b < lo or b >= hi:
                _zero(Q[t, b])          # finite: a dense input's dU sums dA_n^T Q over all rows
                continue
            for j in range(H):
                r = _sigmoid(x[b, j] + a[b, j])
                acts[t, b, j] = r
                acts[t, b, H + j] = _sigmoid(x[b, H + j] + a[b, H + j])
                Q[t, b, j] = r * S[t, b, j]
        _matmul(Q[t, lo:hi], UT_n, an[lo:hi])
        for b in range(B):
            if not mask[t, b]:
                _carry(t, b, S, out, tm)
                continue
            o = _at(out, t, b, tm)
            for j in range(H):
                n = _tanh(x[b, 2 * H + j] + an[b, j])
                z = acts[t, b, H + j]
                h = (1 - z) * S[t, b, j] + z * n
                acts[t, b, 2 * H + j] = n
                S[t + 1, b, j], o[j] = h, h


@njit(**JIT)
def gru_backward(dout, tm, dhT, U_rz, U_n, mask, S, Q, acts, dA_rz, dA_n, dUT_rz, dUT_n,
                 dinp_rz, dinp_n):
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
        for b in range(B):
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
        lo, hi = _rows(mask, t)
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

@njit(**JIT)
def gru_torch_forward(inp, UT, bh, h0, mask, out, tm, S, HN, acts):
    """acts (T, B, 3H) holds r, z, n; HN (T, B, H) is U_n h_{t-1} + b_hn; bh = b_hh (3H)."""
    T, B, H = HN.shape
    _copy(S[0], h0)
    a, xt = np.empty((B, 3 * H), UT.dtype), np.empty((B, 3 * H), UT.dtype)
    for t in range(T):
        lo, hi = _rows(mask, t)
        x = _input_step(inp, t, lo, hi, xt)
        _matmul(S[t, lo:hi], UT, a[lo:hi])
        for b in range(B):
            if not mask[t, b]:
                _carry(t, b, S, out, tm)
                continue
            o = _at(out, t, b, tm)
            for j in range(H):
                r = _sigmoid(x[b, j] + (a[b, j] + bh[j]))
                z = _sigmoid(x[b, H + j] + (a[b, H + j] + bh[H + j]))
                hn = a[b, 2 * H + j] + bh[2 * H + j]
                n = _tanh(x[b, 2 * H + j] + r * hn)
                h = (1 - z) * n + z * S[t, b, j]
                acts[t, b, j], acts[t, b, H + j], acts[t, b, 2 * H + j] = r, z, n
                HN[t, b, j] = hn
                S[t + 1, b, j], o[j] = h, h


@njit(**JIT)
def gru_torch_backward(dout, tm, dhT, U, mask, S, HN, acts, dA, dHN, dUT, dinp):
    """Fills dA (= d xw) and dHN (d of U_n h + b_hn), adds U's gradient transposed to dUT
    (zeroed by the caller) and the binary input's to dinp; returns dh0."""
    T, B, H = HN.shape
    dh = dhT.copy()
    dhh = np.empty((B, 3 * H), dout.dtype)            # gradient of h_{t-1} U^T (+ b_hh)
    prod = np.empty((B, H), dout.dtype)               # dhh U
    for t in range(T - 1, -1, -1):
        dA_t = _step(dA, t)
        for b in range(B):
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
        lo, hi = _rows(mask, t)
        _add_tn(S[t, lo:hi], dhh[lo:hi], dUT)
        _input_grad_step(dinp, t, lo, hi, dA_t)
        _matmul(dhh[lo:hi], U, prod[lo:hi])
        _add(dh[lo:hi], prod[lo:hi])
    return dh


# -- input projection of binary inputs (piano rolls): xw = x W^T + b by adding W's columns ------
# A piano roll has 3-7 of its 88 notes on per step, so gathering the columns of the notes that are
# on does ~5% of a dense product's arithmetic, forward (xw) and backward (dW) alike.

@njit(**JIT)
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


@njit(**JIT)
def binary_project(ptr, cols, WT, bias, out):
    """out (N, G) = x W^T + bias for the binary x held as CSR; WT (I, G) = W^T."""
    for r in range(out.shape[0]):
        _project_row(ptr, cols, WT, bias, r, out[r])


@njit(**JIT)
def binary_project_grad(ptr, cols, dout, dWT, db):
    """dWT (I, G) += x^T dout and db (G,) += the column sums of dout, for the binary x held as
    CSR; both zeroed by the caller."""
    for r in range(dout.shape[0]):
        _project_row_grad(ptr, cols, r, dout[r], dWT, db)


# -- the Bernoulli output layer's NLL (piano rolls): one pass, forward and gradient ---------------

@njit(**JIT)
def _bernoulli_term(logit, y, zero, one):
    """-log p(y | sigmoid(logit)) = max(l, 0) - l y + log(1 + e^-|l|), and its derivative in l,
    sigmoid(l) - y. NaN in, NaN out (l y is NaN). zero, one: of the logits' dtype."""
    e = _exp(-abs(logit))
    s = one / (one + e)
    return max(logit, zero) - logit * y + _log1p_unit(e), (s if logit >= zero else e * s) - y


@njit(**dict(JIT, fastmath={"contract", "reassoc"}))
def bernoulli_nll(logits, target, nll, grad):
    """nll (N,) = per row the sum over D of the Bernoulli NLL of target (N, D) under logits
    (N, D); grad (N, D) = its derivative in the logits. The per-entry arithmetic is exact
    (_bernoulli_term, compiled with JIT's flags); only the row sum is reassociated, which lets
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
