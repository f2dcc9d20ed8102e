"""Build the native ORT plugin (``ort/``) with CMake: the one build, run by the package's install.

``setup.py`` runs :func:`build` from its ``build_py`` step, so ``pip install .`` and
``pip install -e .`` both produce the library; :func:`onnxfuse.kernels.ort.build` runs it
by hand. Standard library only, and it imports nothing from onnxfuse: ``setup.py`` loads this
file by path inside pip's isolated build environment, where torch and the package's other
dependencies are absent (and must stay absent: never a build requirement).

The plugin's C++ reads the fused-op registry: CMake runs this file as a script
(``python _build.py ops-header OUT``) to write ``onnxfuse_ops.h`` from
:func:`onnxfuse.ops.c_header` into the build tree, and rebuilds when ``ops.py`` changes.
``ops.py`` imports only the standard library and is loaded by path, as this file is.

ORT headers: ``$ORT_INCLUDE_DIR``, else the system's ``onnxruntime/`` include folder, else
Debian trixie's ``libonnxruntime-dev`` fetched by ``ort/fetch_ort_headers.sh`` under an
isolated apt configuration (cached in ``_lib/ort-include``).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType

__all__ = ["CMAKE_MINIMUM", "LIBRARY_NAME", "BuildError", "build", "cmake_requirements",
           "write_ops_header"]

log = logging.getLogger(__name__)
LIBRARY_NAME = "libonnxfuse_ort.so"
CMAKE_MINIMUM = (3, 18)  # cmake_minimum_required in ort/CMakeLists.txt
_SOURCE = Path(__file__).parent  # CMakeLists.txt and the C++ sources
_HEADER_CACHE = Path(__file__).resolve().parent.parent / "_lib" / "ort-include"
_OPS = Path(__file__).resolve().parents[2] / "ops.py"


class BuildError(RuntimeError):
    """The plugin cannot be built; the message says why (with the tool's output) and the fix."""


def _system_cmake() -> tuple[int, ...] | None:
    exe = shutil.which("cmake")
    if exe is None:
        return None
    proc = subprocess.run([exe, "--version"], capture_output=True, text=True)
    found = re.search(r"(\d+)\.(\d+)", proc.stdout)
    return tuple(int(g) for g in found.groups()) if proc.returncode == 0 and found else None


def cmake_requirements() -> list[str]:
    """What the build needs from PyPI: ``cmake`` only where no recent enough one is on PATH."""
    found = _system_cmake()
    if found is not None and found >= CMAKE_MINIMUM:
        return []
    return ["cmake>={}.{}".format(*CMAKE_MINIMUM)]


def _headers(work: Path) -> Path:
    env = os.environ.get("ORT_INCLUDE_DIR")
    candidates = [Path(env)] if env else []
    candidates += [Path("/usr/include/onnxruntime"), Path("/usr/local/include/onnxruntime")]
    for c in candidates:
        if (c / "onnxruntime_cxx_api.h").is_file():
            return c
    if env:
        raise BuildError(f"ORT_INCLUDE_DIR={env} holds no onnxruntime_cxx_api.h: point it at "
                         "ONNX Runtime's include folder (the one holding onnxruntime_cxx_api.h)")
    cached = _HEADER_CACHE / "usr" / "include" / "onnxruntime"
    if not (cached / "onnxruntime_cxx_api.h").is_file():
        log.info("fetching ONNX Runtime headers (Debian trixie libonnxruntime-dev)")
        proc = subprocess.run(["bash", str(_SOURCE / "fetch_ort_headers.sh"),
                               str(_HEADER_CACHE), str(work / "apt")],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise BuildError("cannot fetch ONNX Runtime headers: "
                             f"{(proc.stderr.strip().splitlines() or ['?'])[-1]}; set ORT_INCLUDE_DIR")
    return cached


def _load_ops() -> ModuleType:
    # Registered under a private name while it runs: dataclasses look their module up in
    # sys.modules. Never "onnxfuse.ops": that would shadow the package's own import.
    name = "_onnxfuse_ops_for_build"
    spec = importlib.util.spec_from_file_location(name, _OPS)
    if spec is None or spec.loader is None:
        raise BuildError(f"cannot load the fused-op registry {_OPS}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[name]
    return module


def write_ops_header(path: Path) -> Path:
    """Write ``onnxfuse_ops.h`` (:func:`onnxfuse.ops.c_header`) at ``path``, unless it already
    holds exactly that (so CMake does not recompile for nothing). Returns ``path``."""
    text = _load_ops().c_header()
    if not path.is_file() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        staged = path.with_suffix(".tmp")
        staged.write_text(text)
        os.replace(staged, path)
    return path


def _excerpt(output: str, head: int = 2500, tail: int = 1500) -> str:
    # A compiler's first error is the cause (the rest cascade); CMake's is near the end.
    if len(output) <= head + tail:
        return output
    return f"{output[:head]}\n[... {len(output) - head - tail} characters ...]\n{output[-tail:]}"


def build(target: Path, *, build_type: str = "Release") -> Path:
    """Configure and build the library with CMake and place it at ``target`` (atomically).

    Raises:
        BuildError: no cmake, no headers, or the build failed (with its output).
    """
    if shutil.which("cmake") is None:
        raise BuildError("building the onnxfuse ORT plugin needs cmake (>= {}.{}) and a C++17 "
                         "compiler: install them (`pip install cmake`, your system's g++)"
                         .format(*CMAKE_MINIMUM))
    with tempfile.TemporaryDirectory(prefix="onnxfuse-ort-build-") as tmp:
        work = Path(tmp)
        include = _headers(work)
        for cmd in (["cmake", "-S", str(_SOURCE), "-B", str(work / "build"),
                     f"-DORT_INCLUDE_DIR={include}", f"-DCMAKE_BUILD_TYPE={build_type}",
                     f"-DPython3_EXECUTABLE={sys.executable}"],
                    ["cmake", "--build", str(work / "build"), "-j", str(os.cpu_count() or 2)]):
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            if proc.returncode != 0:
                raise BuildError(f"building the onnxfuse ORT plugin failed: {' '.join(cmd[:2])}:\n"
                                 f"{_excerpt(proc.stdout)}")
        target.parent.mkdir(parents=True, exist_ok=True)
        staged = target.with_suffix(".tmp")
        shutil.copy2(work / "build" / LIBRARY_NAME, staged)
        os.replace(staged, target)
    log.info("built %s", target)
    return target


if __name__ == "__main__":  # CMake's step: python _build.py ops-header OUT
    if len(sys.argv) != 3 or sys.argv[1] != "ops-header":
        sys.exit("usage: python _build.py ops-header OUT/onnxfuse_ops.h")
    write_ops_header(Path(sys.argv[2]))
