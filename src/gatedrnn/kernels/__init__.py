"""Fast recurrences: one torch.autograd.Function over the compiled loops of kernels/cpu.py.

``scan(kernel, step, xw, weights, state, mask)`` computes what ``cells.reference_scan`` computes
(outputs (T, B, H) and the final state) for one unit and variant, with forward and backward
written out in numba. The caller keeps the input projection (xw = x W^T + b_ih for all steps, one
torch matmul) and weight noise outside, so autograd carries gradients through them as in the
reference; a binary input (``project(..., fused=True)``) is instead projected step by step by the
kernels, which return the gradients of its (noisy) weight and bias. What the fast path cannot
serve (no numba, CUDA or other non-CPU tensors, dtypes other than float32 / float64) goes to the
reference loop with one warning naming the reason; a double backward recomputes the gradients
with the reference loop (also with one warning).
"""
import math
import os
import sys
import threading
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

BACKENDS = ("fast", "reference")
DTYPES = (torch.float32, torch.float64)

_warned = set()


def warn_once(reason):
    if reason not in _warned:
        _warned.add(reason)
        warnings.warn(f"gatedrnn backend='fast': {reason}", RuntimeWarning, stacklevel=4)


def _load():
    """The kernels: those compiled at install (kernels/aot.py), else kernels.cpu's, compiled just
    in time on first use or loaded from numba's cache (one warning says so); None without
    numba."""
    global _cpu, BLAS
    if _cpu is None:
        cache = os.path.join(os.path.expanduser("~"), ".cache", "gatedrnn", "numba")
        if "NUMBA_CACHE_DIR" not in os.environ and not os.access(os.path.dirname(__file__), os.W_OK):
            os.environ["NUMBA_CACHE_DIR"] = cache   # package dir read-only: cache per user
        try:
            from . import aot, cpu
        except ImportError as e:
            _cpu = e
        else:
            BLAS, addresses = cpu.bind_blas()
            compiled, why = aot.load(addresses, cpu, warn_once)
            if compiled is None:
                warn_once(f"{why}: compiling the kernels just in time (about 20 s for the three "
                          f"units on first use, cached afterwards)")
            _cpu = compiled or cpu
            _one_blas_thread()
    return None if isinstance(_cpu, ImportError) else _cpu


def _one_blas_thread():
    """Where torch has no BLAS to lend, the kernels' products call scipy's OpenBLAS
    (cpu.bind_blas), which by default starts a thread per core: on a busy machine each per-step
    product then waits for the others (10-30x slower here). The kernels run on one core, so that
    BLAS gets one thread."""
    import ctypes
    import glob

    import scipy
    libs = os.path.join(os.path.dirname(os.path.dirname(scipy.__file__)), "scipy.libs")
    for path in glob.glob(os.path.join(libs, "libscipy_openblas*.so*")):
        lib = ctypes.CDLL(path)
        for name in ("scipy_openblas_set_num_threads", "openblas_set_num_threads"):
            if hasattr(lib, name):
                getattr(lib, name)(1)
                break


_cpu = None
BLAS = None         # which BLAS the kernels' products call (cpu.bind_blas), once loaded


def unsupported(*tensors):
    """Why the fast path cannot run on these tensors, or None when it can."""
    for t in tensors:
        if t.device.type != "cpu":
            return f"{t.device.type} tensors are run by the reference loop (the kernels are CPU only)"
        if t.dtype not in DTYPES:
            return f"dtype {t.dtype} is run by the reference loop (kernels: float32, float64)"
        if t.dtype != tensors[0].dtype:
            return f"mixed dtypes {tensors[0].dtype} and {t.dtype} are run by the reference loop"
    if _load() is None:
        return f"numba is not importable ({_cpu}); using the reference loop"
    return None


# A binary input with at most this fraction of ones is projected by adding W's columns
# (kernels.cpu.binary_project); denser or non-binary inputs take one dense matmul.
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


def project(x, weight, bias, mask=None, batch_first=False, fused=False):
    """``dense_project``, faster for piano rolls: a binary x (0/1, mostly 0) that needs no
    gradient is projected by adding the columns of W for the ones, forward and backward, read in
    the layout given (no transposed copy, no masked copy). Anything else goes to dense_project.

    With ``fused``, such an x comes back as a ``BinaryInput`` for ``scan``, whose kernels then
    project each step as they run it: the (T, B, G) projection and its gradient are never
    written to memory and read again."""
    T, B = (x.shape[1], x.shape[0]) if batch_first else x.shape[:2]
    if x.requires_grad or x.numel() == 0 or unsupported(x, weight, *(() if bias is None else (bias,))):
        return dense_project(x, weight, bias, mask, batch_first)
    ptr = _workspace.empty((T * B + 1,), np.int32)
    cols = _workspace.empty((max(1, int(x.numel() * SPARSE_MAX)),), np.int32)
    if _cpu.binary_csr(_numpy(x), not batch_first, _uint8_mask(mask, T, B), ptr, cols) < 0:
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
        W = _numpy(weight)
        G = W.shape[0]
        out = _empty(len(ptr) - 1, G, like=W)
        _cpu.binary_project(ptr, cols, np.ascontiguousarray(W.T), _numpy(bias), out)
        ctx.csr, ctx.shape = csr, weight.shape
        return torch.from_numpy(out)

    @staticmethod
    def backward(ctx, dout):
        ptr, cols = ctx.csr
        d = _numpy(dout)
        dWT = np.zeros((ctx.shape[1], ctx.shape[0]), d.dtype)
        db = np.zeros(ctx.shape[0], d.dtype)
        _cpu.binary_project_grad(ptr, cols, d, dWT, db)
        return (None, torch.from_numpy(dWT).T if ctx.needs_input_grad[1] else None,
                torch.from_numpy(db) if ctx.needs_input_grad[2] else None)


def bernoulli_nll(logits, target):
    """F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(-1), the
    Bernoulli output layer's NLL per step, in one compiled pass that also keeps the gradient
    (sigmoid(logits) - target) for the backward. Where the kernels cannot serve (see
    ``unsupported``; or a target that needs a gradient or a shape other than the logits'), it
    is that torch expression."""
    reason = unsupported(logits, target)
    if reason or target.requires_grad or target.shape != logits.shape or logits.numel() == 0:
        if reason:
            warn_once(reason)
        return F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(-1)
    return _BernoulliNLL.apply(logits, target)


class _BernoulliNLL(torch.autograd.Function):

    @staticmethod
    def forward(ctx, logits, target):
        D = logits.shape[-1]
        flat = _numpy(logits).reshape(-1, D)
        nll, grad = np.empty(flat.shape[0], flat.dtype), _empty(*flat.shape, like=flat)
        _cpu.bernoulli_nll(flat, _numpy(target).reshape(-1, D), nll, grad)
        ctx.grad = torch.from_numpy(grad).view(logits.shape)
        return torch.from_numpy(nll).view(logits.shape[:-1])

    @staticmethod
    @once_differentiable
    def backward(ctx, dnll):
        return ctx.grad * dnll.unsqueeze(-1), None


def _uint8_mask(mask, T, B):
    """The kernels' mask: (T, B) uint8 in C order (one compiled signature), all ones for None."""
    if mask is None:
        return np.ones((T, B), np.uint8)
    return np.ascontiguousarray(mask.cpu().numpy(), np.uint8)


def scan(kernel, step, xw, weights, state, mask, batch_first=False):
    """Outputs (T, B, H), or (B, T, H) with ``batch_first``, and the final state tuple of
    ``kernel`` (Tanh, LSTM, GRUPaper, GRUTorch).

    xw: the input projection (T, B, G*H), or a ``BinaryInput`` (``project(..., fused=True)``)
    that the kernels project step by step; weights: the dict of tensors the reference ``step``
    reads (weight_hh, and bias_hh / peephole where the variant has them); state: tuple of
    (B, H); mask (T, B) bool or None. ``step`` (the cell's reference step) is used only for a
    double backward.
    """
    binary = xw if isinstance(xw, BinaryInput) else None
    inputs = (xw,) if binary is None else (binary.weight, binary.bias)
    T, B = xw.shape[:2]
    names = tuple(n for n in kernel.weights if n in weights)
    ctx = _Call(kernel, step, names, _uint8_mask(mask, T, B), mask, not batch_first, binary)
    out = _Scan.apply(ctx, *inputs, *(weights[n] for n in names), *state)
    return out[0], tuple(out[1:])


class _Call:
    """What one forward hands to its backward besides tensors."""

    def __init__(self, kernel, step, names, mask, mask_tensor, time_major, binary):
        self.kernel, self.step, self.names = kernel, step, names
        self.mask, self.mask_tensor, self.time_major = mask, mask_tensor, time_major
        self.binary = binary                      # a BinaryInput, or None: the input is xw
        self.n_inputs = 1 if binary is None else 2
        self.saved = None


def _numpy(t):
    return t.detach().contiguous().numpy()


class _Scan(torch.autograd.Function):

    @staticmethod
    def forward(ctx, call, *tensors):
        n, k = call.n_inputs, len(call.names)
        w = dict(zip(call.names, (_numpy(t) for t in tensors[n:n + k])))
        state = [_numpy(s) for s in tensors[n + k:]]
        inp = _inp(call.binary, [_numpy(t) for t in tensors[:n]], w["weight_hh"].dtype)
        outputs, call.saved = call.kernel.forward(inp, w, state, call.mask, call.time_major)
        call.shapes = [o.shape for o in outputs]
        ctx.call = call
        ctx.save_for_backward(*tensors)
        return tuple(torch.from_numpy(o) for o in outputs)

    @staticmethod
    def backward(ctx, *grads):
        call = ctx.call
        if torch.is_grad_enabled():      # create_graph=True: a differentiable backward
            warn_once("double backward: the gradients are recomputed with the reference loop")
            return (None, *_reference_vjp(call, ctx.saved_tensors, grads, ctx.needs_input_grad[1:]))
        dtype = call.saved[0].dtype
        grads = [np.zeros(shape, dtype) if g is None else _numpy(g)
                 for g, shape in zip(grads, call.shapes)]
        result = call.kernel.backward(call.saved, grads, call.mask, call.time_major, call.binary)
        return (None, *(torch.from_numpy(r) if need else None
                        for r, need in zip(result, ctx.needs_input_grad[1:])))


def _reference_vjp(call, inputs, grads, needs):
    """The vector-Jacobian product of the reference loop, itself differentiable."""
    from ..cells import reference_scan
    n, k = call.n_inputs, len(call.names)
    with torch.enable_grad():
        xw = inputs[0] if call.binary is None else dense_project(call.binary.dense(), *inputs[:2])
        weights, state = dict(zip(call.names, inputs[n:n + k])), inputs[n + k:]
        output, final = reference_scan(call.step, xw, tuple(state), weights, call.mask_tensor)
        if not call.time_major:
            output = output.transpose(0, 1)
        pairs = [(o, g) for o, g in zip((output, *final), grads) if g is not None]
        wrt = [x for x, need in zip(inputs, needs) if need]
        got = iter(torch.autograd.grad([o for o, _ in pairs], wrt, [g for _, g in pairs],
                                       create_graph=True, allow_unused=True))
    return tuple(next(got) if need else None for need in needs)


# -- the kernels: numpy in, numpy out ---------------------------------------------------------------
# forward(inp, w, state, mask, tm) -> (outputs, saved); backward(saved, grads, mask, tm, binary)
# -> the gradients of (the inputs, *the weights present, *state), in that order: the inputs are
# xw, or the weight and bias of a BinaryInput (binary). inp is the kernels' tuple (_inp). The
# output (and its gradient) is (T, B, H) if tm (time-major), else (B, T, H).

class _Workspace:
    """The kernels' large arrays, lent again once nothing holds them.

    A fresh array of a few MB costs a page fault per 4 KB every time glibc has handed the last
    one back to the kernel, which it does or not depending on the process's history: a music
    LSTM forward + backward took 0 or 2,000 faults (13 or 18 ms) from one process to the next.
    Arrays of at least MIN bytes are therefore views of buffers kept here, in power-of-two size
    classes, at most PER_CLASS per class; a buffer is lent again when no array (no view, no
    torch tensor made from one) refers to it any more, which its reference count tells."""
    MIN, PER_CLASS = 1 << 16, 4

    def __init__(self):
        self.buffers = {}
        self.lock = threading.Lock()
        # what _refs reads for a buffer that only the pool holds, measured by the same code (the
        # interpreter's own references differ between Python versions)
        self.unheld = self._refs([np.empty(1, np.uint8)], 0)

    @staticmethod
    def _refs(kept, i):
        return sys.getrefcount(kept[i])

    def empty(self, shape, dtype):
        dtype = np.dtype(dtype)
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes < self.MIN:
            return np.empty(shape, dtype)
        size = 1 << (nbytes - 1).bit_length()
        with self.lock:
            kept = self.buffers.setdefault(size, [])
            for i in range(len(kept)):
                if self._refs(kept, i) == self.unheld:
                    buf = kept[i]
                    break
            else:
                buf = np.empty(size, np.uint8)
                if len(kept) < self.PER_CLASS:
                    kept.append(buf)
            return buf[:nbytes].view(dtype).reshape(shape)


_workspace = _Workspace()


def _empty(*shape, like):
    """np.empty(shape, like.dtype), from the workspace."""
    return _workspace.empty(shape, like.dtype)


_NO_CSR = np.empty(0, np.int32)


def _inp(binary, inputs, dtype):
    """The kernels' input tuple (xw, ptr, cols, WT, bias) (kernels.cpu._input_step): inputs is
    [xw], or the [weight, bias] of the BinaryInput ``binary``."""
    if binary is None:
        return (inputs[0], _NO_CSR, _NO_CSR, np.empty((0, 0), dtype), np.empty(0, dtype))
    weight, bias = inputs
    return (np.empty((0, 0, 0), dtype), *binary.csr, np.ascontiguousarray(weight.T), bias)


def _dinp(binary, G, like):
    """The backward kernels' (ptr, cols, dWT, db) for the binary input, dWT (I, G) and db (G,)
    zeroed; for an xw input, empty."""
    if binary is None:
        return (_NO_CSR, _NO_CSR, np.empty((0, 0), like.dtype), np.empty(0, like.dtype))
    return (*binary.csr, np.zeros((binary.shape[2], G), like.dtype), np.zeros(G, like.dtype))


def _dA(binary, T, B, G, like):
    """The backward kernels' dA (T, B, G); (1, B, G), reused at every step, for a binary input,
    whose gradients the kernels add step by step (kernels.cpu._step)."""
    return _empty(T if binary is None else 1, B, G, like=like)


def _dA_sums(binary, dA, dinp):
    """dA's sums over steps and batch (a bias's gradient), (G,): for a binary input the kernels
    summed them into dinp's db."""
    return dA.sum((0, 1)) if binary is None else dinp[3].copy()


def _dUT(binary, G, H, like):
    """The backward kernels' dUT: (H, G) zeros to add each step's S_t^T dA_t to, for a binary
    input (whose dA is one step's); else (0, 0), and the caller takes dU from the whole dA in
    one matmul (_dU): per-step rank-B updates of a large U cost more than they save (batch 1 at
    speech sizes: a 600 KB dU^T read and written 200 times)."""
    return np.zeros((H, G) if binary is not None else (0, 0), like.dtype)


def _dU(binary, dUT, dA, S):
    """U's gradient (G, H): dUT^T as the kernel summed it, or sum over steps of dA_t^T S_t as one
    matmul over all T*B rows (dA (T, B, G), S (T, B, H))."""
    if binary is not None:
        return dUT.T
    G, H = dA.shape[-1], S.shape[-1]
    return (torch.from_numpy(dA).reshape(-1, G).T @ torch.from_numpy(S).reshape(-1, H)).numpy()


def _input_grads(binary, dA, *dinps):
    """The gradients of the inputs: (dA,) for xw, else (dW, db) from the dinp tuples, whose
    columns are consecutive blocks of W's rows."""
    if binary is None:
        return (dA,)
    return (np.concatenate([d[2] for d in dinps], axis=1).T, np.concatenate([d[3] for d in dinps]))


def _arrays(mask, w, tm):
    """weight_hh, (T, B, G, H), and what every kernel fills: the output, (T, B, H) if tm else
    (B, T, H), and the states S (T+1, B, H)."""
    U = w["weight_hh"]
    (T, B), (G, H) = mask.shape, U.shape
    out = _empty(T, B, H, like=U) if tm else _empty(B, T, H, like=U)
    return U, (T, B, G, H), out, _empty(T + 1, B, H, like=U)


def _bias(w, name, size, like):
    return w[name] if name in w else np.zeros(size, like.dtype)


class Tanh:
    """h_t = tanh(xw_t + U h_{t-1} (+ b_hh))."""
    weights = ("weight_hh", "bias_hh")

    @staticmethod
    def forward(inp, w, state, mask, tm):
        U, (T, B, G, H), out, S = _arrays(mask, w, tm)
        _cpu.tanh_forward(inp, np.ascontiguousarray(U.T), _bias(w, "bias_hh", G, U), state[0],
                          mask, out, tm, S)
        return (out, S[T].copy()), (U, S, "bias_hh" in w)

    @staticmethod
    def backward(saved, grads, mask, tm, binary):
        U, S, has_bias = saved
        dout, dhT = grads
        T, B, H = S[1:].shape
        dA, dUT = _dA(binary, T, B, H, like=U), _dUT(binary, H, H, like=U)
        dinp = _dinp(binary, H, U)
        dh0 = _cpu.tanh_backward(dout, tm, dhT, U, mask, S, dA, dUT, dinp)
        db = (_dA_sums(binary, dA, dinp),) if has_bias else ()
        return (*_input_grads(binary, dA, dinp), _dU(binary, dUT, dA, S[:-1]), *db, dh0)


class LSTM:
    """Graves (2013) with diagonal peepholes (paper), or torch.nn's LSTM (no peepholes, b_hh)."""
    weights = ("weight_hh", "bias_hh", "peephole")

    @staticmethod
    def forward(inp, w, state, mask, tm):
        U, (T, B, G, H), out, S = _arrays(mask, w, tm)
        P = w["peephole"] if "peephole" in w else np.zeros((3, H), U.dtype)
        tc, C = _empty(T, B, H, like=U), _empty(T + 1, B, H, like=U)
        acts = _empty(T, 4, B, H, like=U)
        _cpu.lstm_forward(inp, np.ascontiguousarray(U.T), _bias(w, "bias_hh", G, U), P,
                          state[0], state[1], mask, out, tm, S, C, acts, tc)
        return (out, S[T].copy(), C[T].copy()), (U, P, S, C, acts, tc, tuple(w))

    @staticmethod
    def backward(saved, grads, mask, tm, binary):
        U, P, S, C, acts, tc, names = saved
        dout, dhT, dcT = grads
        dA = _dA(binary, acts.shape[0], acts.shape[2], 4 * acts.shape[3], like=acts)
        dP = np.zeros((3, *acts.shape[2:]), acts.dtype)
        dUT = _dUT(binary, *U.shape, like=U)
        dinp = _dinp(binary, U.shape[0], U)
        dh0, dc0 = _cpu.lstm_backward(dout, tm, dhT, dcT, U, P, mask, S, C, acts, tc, dA, dUT, dP,
                                      dinp)
        extra = {"bias_hh": _dA_sums(binary, dA, dinp)} if "bias_hh" in names else {}
        if "peephole" in names:
            extra["peephole"] = dP.sum(1)
        return (*_input_grads(binary, dA, dinp), _dU(binary, dUT, dA, S[:-1]),
                *(extra[n] for n in names if n in extra), dh0, dc0)


class GRUPaper:
    """Cho et al. 1406.1078v3: reset before the product, h_t = (1 - z) h + z n."""
    weights = ("weight_hh",)

    @staticmethod
    def forward(inp, w, state, mask, tm):
        U, (T, B, G, H), out, S = _arrays(mask, w, tm)
        Q, acts = _empty(T, B, H, like=U), _empty(T, B, G, like=U)
        UT = U.T
        _cpu.gru_forward(inp, np.ascontiguousarray(UT[:, :2 * H]), np.ascontiguousarray(UT[:, 2 * H:]),
                         state[0], mask, out, tm, S, Q, acts)
        return (out, S[T].copy()), (U, S, Q, acts)

    @staticmethod
    def backward(saved, grads, mask, tm, binary):
        U, S, Q, acts = saved
        dout, dhT = grads
        T, B, H = Q.shape
        dA_rz, dA_n = _dA(binary, T, B, 2 * H, like=dout), _dA(binary, T, B, H, like=dout)
        dUT_rz, dUT_n = _dUT(binary, 2 * H, H, like=U), _dUT(binary, H, H, like=U)
        dinp_rz, dinp_n = _dinp(binary, 2 * H, U), _dinp(binary, H, U)
        dh0 = _cpu.gru_backward(dout, tm, dhT, U[:2 * H], U[2 * H:], mask, S, Q, acts, dA_rz, dA_n,
                                dUT_rz, dUT_n, dinp_rz, dinp_n)
        dA = np.concatenate([dA_rz, dA_n], axis=2) if binary is None else None
        dU = np.concatenate([_dU(binary, dUT_rz, dA_rz, S[:-1]), _dU(binary, dUT_n, dA_n, Q)])
        return (*_input_grads(binary, dA, dinp_rz, dinp_n), dU, dh0)


class GRUTorch:
    """torch.nn.GRU: n = tanh(xw_n + r (U_n h + b_hn)), h_t = (1 - z) n + z h."""
    weights = ("weight_hh", "bias_hh")

    @staticmethod
    def forward(inp, w, state, mask, tm):
        U, (T, B, G, H), out, S = _arrays(mask, w, tm)
        HN, acts = _empty(T, B, H, like=U), _empty(T, B, G, like=U)
        _cpu.gru_torch_forward(inp, np.ascontiguousarray(U.T), w["bias_hh"], state[0], mask, out,
                               tm, S, HN, acts)
        return (out, S[T].copy()), (U, S, HN, acts)

    @staticmethod
    def backward(saved, grads, mask, tm, binary):
        U, S, HN, acts = saved
        dout, dhT = grads
        dA, dHN = _dA(binary, *acts.shape, like=acts), _empty(*HN.shape, like=HN)
        dUT = _dUT(binary, *U.shape, like=U)
        dinp = _dinp(binary, U.shape[0], U)
        dh0 = _cpu.gru_torch_backward(dout, tm, dhT, U, mask, S, HN, acts, dA, dHN, dUT, dinp)
        H = U.shape[1]
        db_hh = np.concatenate([_dA_sums(binary, dA, dinp)[:2 * H], dHN.sum((0, 1))])
        dhh = None if binary else np.concatenate([dA[..., :2 * H], dHN], axis=2)   # d(U h + b_hh)
        return (*_input_grads(binary, dA, dinp), _dU(binary, dUT, dhh, S[:-1]), db_hh, dh0)
