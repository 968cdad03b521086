"""The kernels' large arrays, lent again once nothing holds them.

A fresh array of a few MB costs a page fault per 4 KB every time glibc has handed the last one
back to the kernel, which it does or not depending on the process's history: a music LSTM
forward + backward took 0 or 2,000 faults (13 or 18 ms) from one process to the next. Arrays of
at least MIN bytes are therefore views of buffers kept here, in power-of-two size classes, at
most PER_CLASS per class; a buffer is lent again when no array (no view, no torch tensor made
from one) refers to it any more, which its reference count tells.
"""
import math
import sys
import threading

import numpy as np


class Workspace:
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
        """np.empty(shape, dtype), from a kept buffer where the array is large."""
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


workspace = Workspace()
