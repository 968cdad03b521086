"""The recurrence as one torch.autograd.Function over a unit's compiled loops, its batch split
across threads.

``scan(kernel, loop, xw, weights, state, mask)`` computes what the unit's reference loop computes
(outputs (T, B, H) and the final state) with forward and backward written out in numba
(kernels/tanh.py, gru.py, lstm.py, ...). The caller keeps the input projection (xw = x W^T + b
for all steps, one torch matmul) and weight noise outside, so autograd carries gradients through
them as in the reference; a binary input (``binary.project(..., fused=True)``) is instead
projected step by step by the kernels, which return the gradients of its (noisy) weight and bias.
``loop`` is the reference loop itself, used only for a double backward.

Threads. The rows of a batch are independent through the recurrence, so they are split into
``torch.get_num_threads()`` contiguous ranges (at least MIN_ROWS rows each) that run through all
time steps at once, each in its own thread (the kernels release the GIL); the gradients of the
weights are summed at the end. A batch of fewer than 2 * MIN_ROWS rows runs in the calling
thread.
"""
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from .binary import BinaryInput, dense_project, uint8_mask
from .jit import first_use, one_blas_thread
from .workspace import workspace

MIN_ROWS = 4        # rows per thread at least: fewer cost more in synchronisation than they save


# -- the batch's rows, split across threads -----------------------------------------------------

def threads_for(B):
    """The threads a batch of B rows can use: torch's count, at most one per MIN_ROWS rows."""
    return max(1, min(torch.get_num_threads(), B // MIN_ROWS))


class Rows:
    """A batch's B rows as contiguous ranges, one per thread (threads_for)."""

    def __init__(self, B):
        k = threads_for(B)
        bounds = [B * i // k for i in range(k + 1)]
        self.ranges = list(zip(bounds[:-1], bounds[1:]))

    def run(self, fn):
        """[fn(b0, b1) for each range]: the first range in this thread, the others in the pool;
        each with its BLAS products on one thread (jit.one_blas_thread)."""
        def one(b0, b1):
            with one_blas_thread():
                return fn(b0, b1)
        if len(self.ranges) == 1:
            return [one(*self.ranges[0])]
        futures = [_pool(len(self.ranges) - 1).submit(one, *r) for r in self.ranges[1:]]
        first = one(*self.ranges[0])
        return [first, *(f.result() for f in futures)]

    def combine(self, parts, rowwise):
        """One result from the ranges' results (tuples): the first ``rowwise`` entries are arrays
        whose rows b0..b1-1 each range filled, joined; the others are sums (nested tuples entry
        by entry; an array that all ranges share is taken once)."""
        if len(parts) == 1:
            return parts[0]
        out = []
        for k, first in enumerate(parts[0]):
            values = [p[k] for p in parts]
            if k < rowwise:
                for (b0, b1), v in zip(self.ranges[1:], values[1:]):
                    first[b0:b1] = v[b0:b1]
                out.append(first)
            else:
                out.append(_total(values))
        return tuple(out)


def _total(values):
    if isinstance(values[0], tuple):
        return tuple(_total(list(v)) for v in zip(*values))
    if all(v is values[0] for v in values):
        return values[0]
    total = values[0].copy()
    for v in values[1:]:
        total += v
    return total


_pool_lock = threading.Lock()
_pool_threads = None        # (the pool, its size): one, grown to the most threads asked for


def _pool(n):
    """A pool of at least n worker threads, kept for the process."""
    global _pool_threads
    with _pool_lock:
        if _pool_threads is None or _pool_threads[1] < n:
            if _pool_threads is not None:
                _pool_threads[0].shutdown(wait=False)
            _pool_threads = ThreadPoolExecutor(n, thread_name_prefix="gatedrnn-kernels"), n
        return _pool_threads[0]


# -- the autograd function ------------------------------------------------------------------------

def scan(kernel, loop, xw, weights, state, mask, batch_first=False):
    """Outputs (T, B, H), or (B, T, H) with ``batch_first``, and the final state tuple of
    ``kernel`` (a class with ``weights``, ``forward`` and ``backward``, e.g. kernels.Tanh).

    xw: the input projection (T, B, G*H), or a ``BinaryInput`` that the kernels project step by
    step; weights: the dict of tensors the unit's step reads (weight_hh, and bias_hh / peephole
    where it has them); state: tuple of (B, H); mask (T, B) bool or None. ``loop(xw, state,
    weights, mask)`` is the unit's reference loop (outputs (T, B, H), final state), used only
    for a double backward.
    """
    binary = xw if isinstance(xw, BinaryInput) else None
    inputs = (xw,) if binary is None else (binary.weight, binary.bias)
    T, B = xw.shape[:2]
    names = tuple(n for n in kernel.weights if n in weights)
    call = _Call(kernel, loop, names, uint8_mask(mask, T, B), mask, not batch_first, binary)
    out = _Scan.apply(call, *inputs, *(weights[n] for n in names), *state)
    return out[0], tuple(out[1:])


class _Call:
    """What one forward hands to its backward besides tensors."""

    def __init__(self, kernel, loop, names, mask, mask_tensor, time_major, binary):
        self.kernel, self.loop, self.names = kernel, loop, names
        self.mask, self.mask_tensor, self.time_major = mask, mask_tensor, time_major
        self.binary = binary                      # a BinaryInput, or None: the input is xw
        self.n_inputs = 1 if binary is None else 2
        self.rows = Rows(mask.shape[1])
        self.saved = None


def _numpy(t):
    return t.detach().contiguous().numpy()


class _Scan(torch.autograd.Function):

    @staticmethod
    def forward(ctx, call, *tensors):
        n, k = call.n_inputs, len(call.names)
        w = dict(zip(call.names, (_numpy(t) for t in tensors[n:n + k])))
        state = [_numpy(s) for s in tensors[n + k:]]
        dtype = w["weight_hh"].dtype
        inp = inp_tuple(call.binary, [_numpy(t) for t in tensors[:n]], dtype)
        with first_use(call.kernel.__name__, dtype, "forward"):
            outputs, call.saved = call.kernel.forward(inp, w, state, call.mask, call.time_major,
                                                      call.rows)
        call.shapes = [o.shape for o in outputs]
        ctx.call = call
        ctx.save_for_backward(*tensors)
        return tuple(torch.from_numpy(o) for o in outputs)

    @staticmethod
    def backward(ctx, *grads):
        call = ctx.call
        if torch.is_grad_enabled():      # create_graph=True: a differentiable backward
            from . import warn_once
            warn_once("double backward: the gradients are recomputed with the reference loop")
            return (None, *_reference_vjp(call, ctx.saved_tensors, grads, ctx.needs_input_grad[1:]))
        dtype = call.saved[0].dtype
        grads = [np.zeros(shape, dtype) if g is None else _numpy(g)
                 for g, shape in zip(grads, call.shapes)]
        with first_use(call.kernel.__name__, dtype, "backward"):
            result = call.kernel.backward(call.saved, grads, call.mask, call.time_major,
                                          call.binary, call.rows)
        return (None, *(torch.from_numpy(r) if need else None
                        for r, need in zip(result, ctx.needs_input_grad[1:])))


def _reference_vjp(call, inputs, grads, needs):
    """The vector-Jacobian product of the reference loop, itself differentiable."""
    n, k = call.n_inputs, len(call.names)
    with torch.enable_grad():
        xw = inputs[0] if call.binary is None else dense_project(call.binary.dense(), *inputs[:2])
        weights, state = dict(zip(call.names, inputs[n:n + k])), inputs[n + k:]
        output, final = call.loop(xw, tuple(state), weights, call.mask_tensor)
        if not call.time_major:
            output = output.transpose(0, 1)
        pairs = [(o, g) for o, g in zip((output, *final), grads) if g is not None]
        wrt = [x for x, need in zip(inputs, needs) if need]
        got = iter(torch.autograd.grad([o for o, _ in pairs], wrt, [g for _, g in pairs],
                                       create_graph=True, allow_unused=True))
    return tuple(next(got) if need else None for need in needs)


# -- what the units' kernels share: numpy in, numpy out ---------------------------------------------
# forward(inp, w, state, mask, tm, rows) -> (outputs, saved); backward(saved, grads, mask, tm,
# binary, rows) -> the gradients of (the inputs, *the weights present, *state), in that order: the
# inputs are xw, or the weight and bias of a BinaryInput (binary). inp is the kernels' tuple
# (inp_tuple). The output (and its gradient) is (T, B, H) if tm (time-major), else (B, T, H).

_NO_CSR = np.empty(0, np.int32)


def empty(*shape, like):
    """np.empty(shape, like.dtype), from the workspace."""
    return workspace.empty(shape, like.dtype)


def inp_tuple(binary, inputs, dtype):
    """The kernels' input tuple (xw, ptr, cols, WT, bias) (binary._input_step): inputs is [xw],
    or the [weight, bias] of the BinaryInput ``binary``."""
    if binary is None:
        return (inputs[0], _NO_CSR, _NO_CSR, np.empty((0, 0), dtype), np.empty(0, dtype))
    weight, bias = inputs
    return (np.empty((0, 0, 0), dtype), *binary.csr, np.ascontiguousarray(weight.T), bias)


def dinp_buffers(binary, G, like):
    """The backward kernels' (ptr, cols, dWT, db) for the binary input, dWT (I, G) and db (G,)
    zeroed; for an xw input, empty."""
    if binary is None:
        return (_NO_CSR, _NO_CSR, np.empty((0, 0), like.dtype), np.empty(0, like.dtype))
    return (*binary.csr, np.zeros((binary.shape[2], G), like.dtype), np.zeros(G, like.dtype))


def dA_buffer(binary, T, B, G, like):
    """The backward kernels' dA (T, B, G); (1, B, G), reused at every step, for a binary input,
    whose gradients the kernels add step by step (jit._step)."""
    return empty(T if binary is None else 1, B, G, like=like)


def bias_grad(binary, dA, dinp):
    """dA's sums over steps and batch (a bias's gradient), (G,): for a binary input the kernels
    summed them into dinp's db."""
    return dA.sum((0, 1)) if binary is None else dinp[3].copy()


def dUT_buffer(binary, G, H, like):
    """The backward kernels' dUT: (H, G) zeros to add each step's S_t^T dA_t to, for a binary
    input (whose dA is one step's); else (0, 0), and the caller takes dU from the whole dA in
    one matmul (dU_of): per-step rank-B updates of a large U cost more than they save (batch 1
    at speech sizes: a 600 KB dU^T read and written 200 times)."""
    return np.zeros((H, G) if binary is not None else (0, 0), like.dtype)


def dU_of(binary, dUT, dA, S):
    """U's gradient (G, H): dUT^T as the kernel summed it, or sum over steps of dA_t^T S_t as one
    matmul over all T*B rows (dA (T, B, G), S (T, B, H))."""
    if binary is not None:
        return dUT.T
    G, H = dA.shape[-1], S.shape[-1]
    return (torch.from_numpy(dA).reshape(-1, G).T @ torch.from_numpy(S).reshape(-1, H)).numpy()


def input_grads(binary, dA, *dinps):
    """The gradients of the inputs: (dA,) for xw, else (dW, db) from the dinp tuples, whose
    columns are consecutive blocks of W's rows."""
    if binary is None:
        return (dA,)
    return (np.concatenate([d[2] for d in dinps], axis=1).T, np.concatenate([d[3] for d in dinps]))


def arrays(mask, w, tm):
    """weight_hh, (T, B, G, H), and what every kernel fills: the output, (T, B, H) if tm else
    (B, T, H), and the states S (T+1, B, H)."""
    U = w["weight_hh"]
    (T, B), (G, H) = mask.shape, U.shape
    out = empty(T, B, H, like=U) if tm else empty(B, T, H, like=U)
    return U, (T, B, G, H), out, empty(T + 1, B, H, like=U)


def bias_or_zeros(w, name, size, like):
    return w[name] if name in w else np.zeros(size, like.dtype)
