"""The package's install builds the native ORT plugin (onnxfuse/kernels/ort, CMake).

All metadata lives in pyproject.toml; this file only hooks the build. ``build_py`` runs
``onnxfuse/kernels/ort/_build.py`` after copying the Python files: into the wheel's
``onnxfuse/kernels/_lib/`` for ``pip install .``, into the source tree's for ``pip install -e .``
(PEP 660: setuptools' editable finder maps ``onnxfuse`` to the source folder, so
``onnxfuse.kernels.ort.library_path()``, which looks in ``onnxfuse/kernels/_lib``, finds it in both cases). A failed
build fails the install with CMake's output; ``ONNXFUSE_SKIP_ORT_BUILD=1`` installs without the
plugin (fused models then run their function bodies).

Why a setuptools hook rather than scikit-build-core: measured with scikit-build-core 1.1.2, its
editable modes do not fit. ``redirect`` (the default) installs the library in site-packages
while ``__file__`` points at the source, and its import hook sits before ``sys.path`` in
``sys.meta_path``: a checkout on ``sys.path`` (``python -m pytest`` from another worktree sharing
the venv) silently imports the installed tree instead. ``inplace`` runs CMake in the repository
root and leaves the library in the build root, not in the package. Setuptools' own editable
finder is appended after ``sys.path``, and the hook is ~30 lines.
"""

from __future__ import annotations

import os
import runpy
from pathlib import Path
from types import SimpleNamespace

from setuptools import Distribution, setup
from setuptools.command.build_py import build_py
from setuptools.errors import ExecError

_ROOT = Path(__file__).resolve().parent
# Loaded by path: importing the package would import torch, which is no build requirement.
ortbuild = SimpleNamespace(**runpy.run_path(str(_ROOT / "onnxfuse" / "kernels" / "ort" / "_build.py")))
_LIB = Path("onnxfuse", "kernels", "_lib", ortbuild.LIBRARY_NAME)


class BuildPyWithPlugin(build_py):
    """``build_py`` that also builds the ORT plugin (runs for wheels and editable installs)."""

    def run(self) -> None:
        super().run()
        target = _ROOT / _LIB if self.editable_mode else Path(self.build_lib) / _LIB
        if os.environ.get("ONNXFUSE_SKIP_ORT_BUILD") == "1":
            # No stale library from an earlier build (build/lib is reused) slips into the wheel.
            target.unlink(missing_ok=True)
            self.announce("ONNXFUSE_SKIP_ORT_BUILD=1: the ORT plugin is not built", level=3)
            return
        try:
            ortbuild.build(target)
        except ortbuild.BuildError as e:
            raise ExecError(f"{e}\n(set ONNXFUSE_SKIP_ORT_BUILD=1 to install onnxfuse without "
                            "its ORT plugin; fused models then run their function bodies)") from e


class BinaryDistribution(Distribution):
    """The wheel holds a native library: tag it for this platform, not ``py3-none-any``."""

    def has_ext_modules(self) -> bool:
        return True


# setup_requires becomes get_requires_for_build_wheel under PEP 517: cmake comes from PyPI
# only where the system has none recent enough.
setup(cmdclass={"build_py": BuildPyWithPlugin}, distclass=BinaryDistribution,
      setup_requires=ortbuild.cmake_requirements())
