"""The building blocks every kernel shares, compiled by numba: the per-step products (BLAS), an
exp / sigmoid / tanh that LLVM can vectorize, and small loops over rows.

Conventions of every kernel (kernels/tanh.py, gru.py, lstm.py, mgu.py, cifg.py, mut1.py):

    inp    (xw, ptr, cols, WT, bias): the input projection, see binary._input_step
    xw     (T, B, G*H)  input projection incl. biases, gate blocks in torch's order
    UT     (H, G*H)     weight_hh transposed (contiguous), for h @ U^T
    U      (G*H, H)     weight_hh, for dA @ U in the backward
    mask   (T, B)       uint8, 0 at padded steps: the state is carried, the output is 0
    out    (T, B, H)    the outputs if tm (time-major), else (B, T, H); dout likewise
    S      (T+1, B, H)  the state h before each step (S[0] = h0) and after the last one
    acts   (T, B, G*H)  the gates after their nonlinearity, saved for the backward
    dA     (T, B, G*H)  gradient of the pre-activations (= d xw); zero at padded steps. For a
                        binary input (1, B, G*H), one step's, reused (_step)
    dUT    (H, G*H)     U's gradient, transposed, summed step by step (binary input); (0, 0)
                        where the caller takes it from the whole dA in one matmul
    b0, b1              the rows this call runs: a batch is split into row ranges that run
                        in parallel threads (kernels/scan.py); every loop stays inside them

The step equations are cells.py's, one line per gate; tests/test_kernels.py checks every output
and gradient against the reference loop there.
"""
import ctypes
import glob
import os
import sys
import threading
from contextlib import contextmanager

import numpy as np
from llvmlite import binding, ir
from numba import njit, types
from numba.extending import get_cython_function_address, intrinsic, overload

# -- BLAS: the per-step products call the Fortran sgemm_ / dgemm_ that torch itself uses -------
# torch's x86 wheels carry MKL and export its sgemm_ / dgemm_; at these sizes MKL is 1.2-1.5x
# faster than the OpenBLAS behind numba's np.dot (32 x 195 @ 195 x 780: 150 vs 230 us). Where
# torch has none, scipy's OpenBLAS serves. The compiled code calls the names gatedrnn_sgemm /
# gatedrnn_dgemm, bound in each process (bind_blas, before the first call) to addresses, so that
# numba's on-disk cache holds none.

def bind_blas():
    """Bind the names gatedrnn_sgemm / gatedrnn_dgemm of the compiled kernels to torch's BLAS,
    else scipy's OpenBLAS (limited to one thread: see below); returns which."""
    import torch
    global _mkl_local
    for path in glob.glob(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.*")):
        try:
            lib = ctypes.CDLL(path)
            addresses = [ctypes.cast(getattr(lib, f"{t}gemm_"), ctypes.c_void_p).value for t in "sd"]
        except (OSError, AttributeError):
            continue
        name = "torch's BLAS" + (" (MKL)" if torch.backends.mkl.is_available() else "")
        _mkl_local = getattr(lib, "MKL_Set_Num_Threads_Local", None)   # the C interface
        break
    else:
        addresses = [get_cython_function_address("scipy.linalg.cython_blas", f"{t}gemm") for t in "sd"]
        name = "scipy's OpenBLAS"
        _one_openblas_thread()
    for t, address in zip("sd", addresses):
        binding.add_symbol(f"gatedrnn_{t}gemm", address)
    return name


_mkl_local = None      # MKL's mkl_set_num_threads_local, where torch's BLAS is MKL


@contextmanager
def one_blas_thread():
    """Around a kernel's call: its BLAS products in this thread on one thread. MKL follows
    torch's thread count, and a product of a step (32 x 36 @ 36 x 144, or a single row at batch
    1) shared between threads waits more than it computes (speech at batch 1 ran 2-7 times slower
    on 2 threads); the kernels share a batch's rows between threads instead (scan.Rows). The
    setting is MKL's per-thread one, restored after, so torch's own products keep theirs."""
    if _mkl_local is None:
        yield
        return
    before = _mkl_local(1)
    try:
        yield
    finally:
        _mkl_local(before)


def _one_openblas_thread():
    """scipy's OpenBLAS starts a thread per core by default: on a busy machine each per-step
    product then waits for the others (10-30x slower here). The kernels' products are small and
    run one per thread (scan.Rows), so that BLAS gets one thread."""
    import scipy
    libs = os.path.join(os.path.dirname(os.path.dirname(scipy.__file__)), "scipy.libs")
    for path in glob.glob(os.path.join(libs, "libscipy_openblas*.so*")):
        lib = ctypes.CDLL(path)
        for name in ("scipy_openblas_set_num_threads", "openblas_set_num_threads"):
            if hasattr(lib, name):
                getattr(lib, name)(1)
                break


_P = types.intp       # every Fortran BLAS argument is a pointer
_sgemm = types.ExternalFunction("gatedrnn_sgemm", types.void(*[_P] * 13))
_dgemm = types.ExternalFunction("gatedrnn_dgemm", types.void(*[_P] * 13))

# error_model="numpy": x / 0 gives inf instead of raising, which lets LLVM vectorize the loops.
# fastmath "contract" only: a * b + c may become one fused multiply-add (rounded once, so no less
# accurate); nothing assumes finite values or reorders sums. It makes exp / sigmoid / tanh below
# ~30% faster (their polynomials are chains of multiply-adds). nogil: the batch's row ranges run
# in parallel threads (scan.Rows).
JIT = dict(cache=True, fastmath={"contract"}, nogil=True, error_model="numpy")


# -- compiling: just in time, on first use, cached on disk -----------------------------------------
# numba compiles a kernel the first time it is called with new argument types (one unit, one
# dtype: about 4-10 s) and keeps the machine code in its on-disk cache, which later processes
# load. numba keys a cached function on its own file only, not on the files of the functions it
# calls, so the cache lives in a directory named by a hash of every kernel source (an edited
# helper here can never leave a stale kernel elsewhere).

KERNEL_SOURCES = ("jit.py", "binary.py", "tanh.py", "gru.py", "lstm.py", "mgu.py", "cifg.py",
                  "mut1.py", "parallel.py", "bernoulli.py")


def cache_dir():
    """Where the compiled kernels are kept: $NUMBA_CACHE_DIR, else the gatedrnn cache
    ($GATEDRNN_CACHE, default ~/.cache/gatedrnn) / numba, then a folder per version of the
    kernel sources."""
    import hashlib
    import numba
    here = os.path.dirname(os.path.abspath(__file__))
    h = hashlib.sha256(numba.__version__.encode())
    for name in KERNEL_SOURCES:
        with open(os.path.join(here, name), "rb") as f:
            h.update(f.read())
    root = os.environ.get("NUMBA_CACHE_DIR") or os.path.join(
        os.environ.get("GATEDRNN_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "gatedrnn"),
        "numba")
    return os.path.join(root, "gatedrnn-" + h.hexdigest()[:16])


_CACHE_DIR = None
FIRST_USE_SECONDS = "a few seconds"  # one unit and dtype's forward, or backward: 2-6 s here
_noticed = set()
NOTICE_AFTER = 3.0     # seconds a first call runs before first_use says it is compiling


@contextmanager
def first_use(*what):
    """Around a kernel's call: if it is the first of ``what`` (its words, e.g. "GRU", dtype,
    "forward") in this process and it is still running after 3 seconds (numba compiling, not
    loading from its cache: that takes about a second on a busy machine), say so in one line."""
    if what in _noticed:                  # every call after the first: one set lookup
        yield
        return
    _noticed.add(what)
    timer = threading.Timer(NOTICE_AFTER, lambda: print(
        f"gatedrnn: compiling the {' '.join(map(str, what))} kernel for this machine "
        f"({FIRST_USE_SECONDS}, once; cached in {_CACHE_DIR or cache_dir()})", file=sys.stderr,
        flush=True))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def kernel(fn=None, **options):
    """njit(**JIT, **options), cached in cache_dir(). numba has no per-function cache directory:
    its cache locator reads numba.config.CACHE_DIR (the NUMBA_CACHE_DIR setting) when a function
    is decorated, so that setting is ours for the decoration only, then the user's again."""
    if fn is None:
        return lambda f: kernel(f, **options)
    import numba
    global _CACHE_DIR
    if _CACHE_DIR is None:
        _CACHE_DIR = cache_dir()
    before = numba.config.CACHE_DIR
    numba.config.CACHE_DIR = _CACHE_DIR
    try:
        return njit(**{**JIT, **options})(fn)
    finally:
        numba.config.CACHE_DIR = before


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
    y = small if ax < 0.625 else 1.0 - 2.0 / (vexp(2.0 * ax) + 1.0)
    return y if x >= 0 else -y


_T32 = [_F(v) for v in (0.625, -5.70498872745e-3, 2.06390887954e-2, -5.37397155531e-2,
                        1.33314422036e-1, -3.33332819422e-1)]
(_CUT_F, _Q0_F, _Q1_F, _Q2_F, _Q3_F, _Q4_F) = _T32


def _tanh32(x):
    """Cephes' tanhf: a polynomial below |x| = 0.625, 1 - 2 / (e^2|x| + 1) above."""
    ax = abs(x)
    z = ax * ax
    small = ((((_Q0_F * z + _Q1_F) * z + _Q2_F) * z + _Q3_F) * z + _Q4_F) * z * ax + ax
    y = small if ax < _CUT_F else _ONE_F - _TWO_F / (vexp(_TWO_F * ax) + _ONE_F)
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
    return 1.0 / (1.0 + vexp(-x))


def _sigmoid32(x):
    return _ONE_F / (_ONE_F + vexp(-x))


def _by_dtype(f32, f64):
    """A function numba compiles as f32 for float32 arguments and as f64 otherwise."""
    def stub(x):
        raise NotImplementedError("compiled code only")

    @overload(stub, jit_options={**JIT, "cache": False})   # cached inside their callers
    def _impl(x):
        return f32 if x == types.float32 else f64
    return stub


# v for vectorizable: what the kernels call
vexp = _by_dtype(_exp32, _exp64)
vsigmoid = _by_dtype(_sigmoid32, _sigmoid64)
vtanh = _by_dtype(_tanh32, _tanh64)
vlog1p_unit = _by_dtype(_log1p_unit32, _log1p_unit64)


@kernel
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


@kernel
def _matmul(a, b, out):
    """out = a @ b (C-contiguous 2-D arrays)."""
    _gemm(a, b, out, np.bool_(False), np.bool_(False))   # np.bool_: one _gemm for both callers
                                                         # (literal flags would compile two)


@kernel
def _add_tn(a, b, out):
    """out += a^T @ b: a (K, M), b (K, N), out (M, N), C-contiguous. The backward kernels add
    each step's S_t^T dA_t to dU^T while dA_t is in cache."""
    _gemm(a, b, out, np.bool_(True), np.bool_(True))


@kernel
def _copy(dst, src):
    """dst[...] = src[...] for C-contiguous arrays of the same size."""
    if dst.ndim == 1:                     # a row: no reshape (its checks cost ~40 ns a call)
        for k in range(dst.shape[0]):
            dst[k] = src[k]
        return
    d, s = dst.reshape(dst.size), src.reshape(src.size)
    for k in range(d.size):
        d[k] = s[k]


@kernel
def _zero(dst):
    if dst.ndim == 1:
        for k in range(dst.shape[0]):
            dst[k] = 0
        return
    d = dst.reshape(dst.size)
    for k in range(d.size):
        d[k] = 0


@kernel
def _add(dst, src):
    """dst[...] += src[...] for C-contiguous arrays of the same size."""
    if dst.ndim == 1:
        for k in range(dst.shape[0]):
            dst[k] += src[k]
        return
    d, s = dst.reshape(dst.size), src.reshape(src.size)
    for k in range(d.size):
        d[k] += s[k]


@kernel
def _at(a, t, b, time_major):
    """Step t of sequence b in an output-shaped array: a (T, B, H) if time_major, else
    (B, T, H) (batch-first outputs are written in place, with no transposed copy)."""
    return a[t, b] if time_major else a[b, t]


@kernel
def _step(a, t):
    """a[t], or a[0] where a holds one step: a backward kernel's dA when nothing reads it past
    the step (a binary input's gradients are added step by step), reused at every step."""
    return a[t] if a.shape[0] > 1 else a[0]


@kernel
def _rows(mask, t, b0, b1):
    """The rows lo..hi-1 (within b0..b1-1) of step t that hold every sequence still running
    (mask[t, b] != 0). Rows outside are padding: the per-step products and gate loops skip them,
    so a batch of sequences sorted by length (data.batching) pays only for the steps it has, as
    a packed sequence would. Rows inside that are padding are handled one by one."""
    lo, hi = b0, b1
    while lo < hi and not mask[t, lo]:
        lo += 1
    while hi > lo and not mask[t, hi - 1]:
        hi -= 1
    return lo, hi


@kernel
def _flat(a, k0, k1):
    """Entries k0..k1-1 of the C-contiguous (B, H) array a, flattened: loops over them index
    from 0 (a loop from k0 would keep numba's negative-index check and not vectorize)."""
    return a.reshape(a.size)[k0:k1]


@kernel
def _over_batch(P, B):
    """The peepholes P (3, H) repeated over the batch, (3, B, H): gate loops then read them flat."""
    PB = np.empty((P.shape[0], B, P.shape[1]), P.dtype)
    for k in range(P.shape[0]):
        for b in range(B):
            _copy(PB[k, b], P[k])
    return PB


@kernel
def _carry(t, b, S, out, tm):
    """A padded step of sequence b: the state is carried, the output is zero."""
    _copy(S[t + 1, b], S[t, b])
    _zero(_at(out, t, b, tm))

