"""The kernels of kernels/cpu.py compiled ahead of time, at install, so that first use compiles
nothing (numba's just-in-time compiling of the three units takes about 20 s).

setup.py builds ``gatedrnn.kernels._compiled`` with numba.pycc from ``extension()``: every kernel
below for float32 and float64, for the installing machine's CPU, each a thin entry that calls the
same numba function the just-in-time path runs (same options, so the same results to the bit).
``load`` returns them behind a check of every argument, since a compiled entry trusts its
arguments' dtype, dimensions and layout (a wrong one would read the wrong memory): a call the
compiled set does not cover goes to the just-in-time kernel instead, with one warning.
Where the module is missing (no C compiler at install), was built from other sources than these
files (an edited checkout: ``pip install -e .`` builds it again) or for another CPU, the kernels
are compiled just in time, as before, and cached by numba.
"""
import ctypes
import hashlib
import os

import numpy as np

# The arguments of each kernel, by code: F<n> an n-dimensional array of the kernel's dtype
# (float32 or float64), I1 int32 indices, M the (T, B) uint8 mask, b a bool, inp / dinp the
# input tuples of cpu.py (_input_step, _input_grad_step); every array C-contiguous. Then what
# the kernel returns: None, or the codes of its values.
KERNELS = {
    "tanh_forward": ("inp F2 F1 F2 M F3 b F3", None),
    "tanh_backward": ("F3 b F2 F2 M F3 F3 F2 dinp", "F2"),
    "lstm_forward": ("inp F2 F1 F2 F2 F2 M F3 b F3 F3 F4 F3", None),
    "lstm_backward": ("F3 b F2 F2 F2 F2 M F3 F3 F4 F3 F3 F2 F3 dinp", "F2 F2"),
    "gru_forward": ("inp F2 F2 F2 M F3 b F3 F3 F3", None),
    "gru_backward": ("F3 b F2 F2 F2 M F3 F3 F3 F3 F3 F2 F2 dinp dinp", "F2"),
    "gru_torch_forward": ("inp F2 F1 F2 M F3 b F3 F3 F3", None),
    "gru_torch_backward": ("F3 b F2 F2 M F3 F3 F3 F3 F3 F2 dinp", "F2"),
    "binary_csr": ("F3 b M I1 I1", "i8"),
    "binary_project": ("I1 I1 F2 F1 F2", None),
    "binary_project_grad": ("I1 I1 F2 F2 F1", None),
    "bernoulli_nll": ("F2 F2 F1 F2", None),
}
TUPLES = {"inp": "F3 I1 I1 F2 F1", "dinp": "I1 I1 F2 F1"}
DTYPES = {"f32": np.float32, "f64": np.float64}
HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = ("cpu.py", "aot.py", "blas_shim.c")      # what the compiled module is built from


def stamp():
    """A hash of SOURCES: the compiled module returns the one it was built from."""
    h = hashlib.sha256()
    for name in SOURCES:
        with open(os.path.join(HERE, name), "rb") as f:
            h.update(f.read())
    return int.from_bytes(h.digest()[:7], "big")


def machine():
    """The CPU the module is compiled for, as a hash of LLVM's name and features of this one: a
    module built on one machine (a cluster's shared home) must not run on another, whose CPU may
    lack an instruction it uses."""
    from llvmlite import binding
    h = hashlib.sha256(f"{binding.get_host_cpu_name()} "
                       f"{binding.get_host_cpu_features().flatten()}".encode())
    return int.from_bytes(h.digest()[:7], "big")


# -- at install: the numba.pycc extension ---------------------------------------------------------

def extension(shim):
    """The setuptools Extension ``gatedrnn.kernels._compiled`` (numba.pycc), with the C source
    ``shim`` (blas_shim.c, as a path relative to setup.py) linked in."""
    from numba.pycc import CC

    from . import cpu
    # Building runs no kernel, but numba's JIT finalizes the functions it compiles on the way,
    # which needs an address for every name they call: any will do (libc's abort).
    cpu.bind([ctypes.cast(ctypes.CDLL(None).abort, ctypes.c_void_p).value] * 2)
    cc = CC("_compiled", source_module=__name__)
    cc.target_cpu = "host"                    # built where it runs: the JIT's instruction set
    for name, (args, returns) in KERNELS.items():
        kernel = _entry(getattr(cpu, name))
        for suffix, dtype in DTYPES.items():
            cc.export(f"{name}_{suffix}", _signature(args, returns, dtype))(kernel)
    cc.export("stamp", "i8()")(_constant(stamp()))
    cc.export("machine", "i8()")(_constant(machine()))
    ext = cc.distutils_extension()
    ext.sources.append(shim)
    return ext


def _entry(kernel):
    """An exportable function of one argument, the tuple of the kernel's arguments (numba.pycc
    takes no *args), that calls the numba kernel: it is compiled with the kernel's own options."""
    def call(args):
        return kernel(*args)
    return call


def _constant(value):
    def get():
        return value
    return get


def _signature(args, returns, dtype):
    """The numba signature (tuple of the arguments) -> returns, for float arrays of dtype: the
    types of what _spec says."""
    from numba import from_dtype, types

    def numba_type(s):
        if s is bool:
            return types.boolean
        if s is int:
            return types.int64
        if isinstance(s[0], np.dtype):
            return types.Array(from_dtype(s[0]), s[1], "C")
        return types.Tuple([numba_type(x) for x in s])
    ret = [] if returns is None else [numba_type(s) for s in _spec(returns, dtype)]
    ret = types.void if not ret else ret[0] if len(ret) == 1 else types.Tuple(ret)
    return ret(numba_type(_spec(args, dtype)))


# -- at run time: the compiled kernels behind their argument check --------------------------------

def load(addresses, fallback, warn):
    """An object with cpu.py's kernel names calling the compiled module; None and why not where
    it is missing or stale. addresses: [sgemm_, dgemm_] (cpu.bind_blas); fallback: the module
    of just-in-time kernels (cpu) for calls the compiled set does not cover; warn(reason)."""
    try:
        from . import _compiled
    except ImportError as e:
        return None, f"no kernels compiled at install ({e})"
    try:
        same = _compiled.stamp() == stamp()
    except OSError:                   # a source missing from the installed package
        same = False
    if not same:
        return None, "the kernels compiled at install were built from older sources than kernels/"
    if _compiled.machine() != machine():
        from llvmlite import binding
        return None, (f"the kernels compiled at install were built for another CPU than this "
                      f"one ({binding.get_host_cpu_name()})")
    ctypes.CDLL(_compiled.__file__).gatedrnn_set_blas(*(ctypes.c_void_p(a) for a in addresses))
    return Compiled(_compiled, fallback, warn), None


class Compiled:
    """The compiled kernels, called as cpu.py's are: kernel(*args)."""

    def __init__(self, module, fallback, warn):
        for name, (args, _) in KERNELS.items():
            entries = [(_spec(args, dtype), getattr(module, f"{name}_{suffix}"))
                       for suffix, dtype in DTYPES.items()]
            setattr(self, name, _checked(name, entries, getattr(fallback, name), warn))


def _spec(codes, dtype):
    """What each code (KERNELS) stands for: (np.dtype, ndim) for a C-contiguous array, bool, int
    for an int64 scalar, or a tuple of specs."""
    def one(code):
        if code in TUPLES:
            return tuple(one(c) for c in TUPLES[code].split())
        if code == "b":
            return bool
        if code == "i8":
            return int
        dt = {"F": np.dtype(dtype), "I": np.dtype(np.int32), "M": np.dtype(np.uint8)}[code[0]]
        return dt, 2 if code == "M" else int(code[1])
    return tuple(one(c) for c in codes.split())


def _fits(spec, args):
    """Whether args match spec (_spec): the compiled entry may run on them."""
    if len(spec) != len(args):
        return False
    for s, a in zip(spec, args):
        if s is bool:
            if not isinstance(a, (bool, np.bool_)):
                return False
        elif isinstance(s[0], np.dtype):
            if not (isinstance(a, np.ndarray) and a.dtype == s[0] and a.ndim == s[1]
                    and a.flags.carray):          # C-contiguous, aligned and writeable
                return False
        elif not (isinstance(a, tuple) and _fits(s, a)):
            return False
    return True


def _checked(name, entries, fallback, warn):
    def call(*args):
        for spec, entry in entries:
            if _fits(spec, args):
                return entry(args)
        warn(f"{name}: arguments the kernels compiled at install do not cover "
             f"({_describe(args)}); compiled just in time instead")
        return fallback(*args)
    call.__name__ = name
    return call


def _describe(args):
    return ", ".join(f"({_describe(a)})" if isinstance(a, tuple) else
                     f"{a.dtype}{list(a.shape)}{'' if a.flags.c_contiguous else ' strided'}"
                     if isinstance(a, np.ndarray) else type(a).__name__ for a in args)
