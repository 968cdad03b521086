"""Builds the kernels ahead of time (src/gatedrnn/kernels/aot.py): all the package metadata is in
pyproject.toml. Without a C compiler the build says why and installs without them; the kernels
are then compiled just in time on first use."""
import importlib
import os
import sys
import types

from setuptools import setup
from setuptools.command.build_ext import build_ext   # before numba.pycc patches distutils'

HERE = os.path.dirname(os.path.abspath(__file__))


def kernels_aot():
    """gatedrnn.kernels.aot, imported without the package's __init__ (which needs torch, absent
    from the build environment)."""
    for name in ("gatedrnn", "gatedrnn.kernels"):
        package = types.ModuleType(name)
        package.__path__ = [os.path.join(HERE, "src", *name.split("."))]
        sys.modules[name] = package
    return importlib.import_module("gatedrnn.kernels.aot")


def not_compiled(e):
    print(f"gatedrnn: kernels not compiled at install ({type(e).__name__}: {e}); they will be "
          f"compiled on first use", file=sys.stderr)


class BuildKernels(build_ext):
    def build_extension(self, ext):
        try:
            os.makedirs(self.build_temp, exist_ok=True)
            objects, _ = ext._cc._compile_object_files(self.build_temp)   # numba -> object file
            ext.extra_objects = objects
            super().build_extension(ext)
        except Exception as e:        # noqa: BLE001 - any failure leaves the just-in-time path
            not_compiled(e)


def extensions():
    try:
        return [kernels_aot().extension("src/gatedrnn/kernels/blas_shim.c")]
    except Exception as e:            # noqa: BLE001 - e.g. a numba without numba.pycc
        not_compiled(e)
        return []


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildKernels})
