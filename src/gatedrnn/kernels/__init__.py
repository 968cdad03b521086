"""Fast recurrences on the CPU: numba loops with the forward and the backward written out.

One idea per module:

- ``scan.py``: the recurrence as one torch.autograd.Function, its batch split across threads;
- ``tanh.py``, ``gru.py``, ``lstm.py``, ``mgu.py``, ``cifg.py``, ``mut1.py``: each unit's
  compiled loops over time (forward, backward);
- ``binary.py``: piano-roll inputs projected by adding W's columns, step by step in the loops;
- ``workspace.py``: the loops' large arrays, lent again instead of page-faulted in anew;
- ``parallel.py``: the recurrence of minGRU / minLSTM (a compiled pass; the log-space scan);
- ``bernoulli.py``: the Bernoulli output layer's NLL in one pass (heads.py wraps it);
- ``jit.py``: what the loops share (BLAS products, vectorizable exp / sigmoid / tanh, compiling
  and its on-disk cache).

The kernels are compiled just in time by numba, on first use: only those that run (one unit and
dtype at a time), once per machine, then loaded from numba's cache (jit.cache_dir()). What the
fast path cannot serve (CUDA or other devices, dtypes other than float32 / float64) runs the
unit's reference loop (cells.py) with one warning naming the reason; a double backward
recomputes the gradients with the reference loop (also with one warning). The reference loop is
the oracle: tests/test_kernels.py checks every output and gradient against it.
"""
import warnings
from contextlib import contextmanager

import torch

from . import jit
from .binary import BinaryInput, dense_project, project
from .cifg import CIFG
from .gru import GRUPaper, GRUTorch
from .lstm import LSTM
from .mgu import MGU
from .mut1 import MUT1
from .scan import Rows, scan, threads_for
from .tanh import Tanh

BACKENDS = ("fast", "reference")
DTYPES = (torch.float32, torch.float64)

__all__ = ["BACKENDS", "CIFG", "DTYPES", "BinaryInput", "GRUPaper", "GRUTorch", "LSTM", "MGU",
           "MUT1", "Rows", "Tanh", "dense_project", "info", "load", "project", "scan", "threads",
           "threads_for", "training_threads",
           "unsupported", "warn_once"]

_warned = set()


def warn_once(reason):
    if reason not in _warned:
        _warned.add(reason)
        warnings.warn(f"gatedrnn backend='fast': {reason}", RuntimeWarning, stacklevel=4)


_blas = None


def load():
    """Make the kernels callable in this process (bind their BLAS, once); returns the BLAS's
    name. Nothing is compiled here: numba compiles each kernel at its first call."""
    global _blas
    if _blas is None:
        _blas = jit.bind_blas()
    return _blas


def info():
    """What the benchmark prints about the kernels: numba's version, their BLAS, the cache."""
    import numba
    return {"numba": numba.__version__, "blas": load(), "cache_dir": jit.cache_dir(),
            "threads": torch.get_num_threads()}


@contextmanager
def threads(n):
    """torch's thread count, which the kernels follow (scan.Rows), set to ``n`` for a while."""
    was = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(was)


def training_threads(batch_size):
    """``threads`` for training at ``batch_size``: as many of torch's threads as the batches can
    use (threads_for). The kernels share a batch's rows between threads, and torch's own small
    products gain nothing from more (at batch 1, the paper's protocol, a second thread only
    waits, most of all on a busy machine). The command line and the sweep's workers train under
    it; the library itself takes torch's count as it is."""
    return threads(threads_for(batch_size))


def unsupported(*tensors, instead="the reference loop"):
    """Why the kernels cannot run on these tensors (saying that ``instead`` runs them), or None
    when they can."""
    for t in tensors:
        if t.device.type != "cpu":
            return f"{t.device.type} tensors are run by {instead} (the kernels are CPU only)"
        if t.dtype not in DTYPES:
            return f"dtype {t.dtype} is run by {instead} (kernels: float32, float64)"
        if t.dtype != tensors[0].dtype:
            return f"mixed dtypes {tensors[0].dtype} and {t.dtype} are run by {instead}"
    load()
    return None

