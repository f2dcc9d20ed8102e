"""Where the native plugin lies, loading it, and refusing one this onnxfuse cannot talk to.

The one home of the library's path and ``ctypes`` handle: :mod:`onnxfuse.kernels.ort`
(session options) and :mod:`onnxfuse.kernels.ort.bridge` (the triton callback) both import it, and
it imports neither. :func:`library` checks, once per path, that the library was built from this
``onnxfuse/ops.py`` (its ``onnxfuse_contract()`` against :func:`onnxfuse.ops.contract`) and that
its bridge structs have the layout of :mod:`onnxfuse.kernels.ort._abi`, field by field.
``ctypes.CDLL`` on the path ORT loads shares the library's globals (same ``dlopen`` handle).
"""

from __future__ import annotations

import ctypes
import json
import os
import threading
from pathlib import Path
from typing import Any

from onnxfuse import ops
from onnxfuse.errors import UnsupportedError, first_line
from onnxfuse.kernels.ort import _abi
from onnxfuse.kernels.ort._build import LIBRARY_NAME

__all__ = ["INSTALLED", "REBUILD", "check", "library", "library_path"]

INSTALLED = Path(__file__).resolve().parent.parent / "_lib" / LIBRARY_NAME
"""Where the package's install (``setup.py``) and :func:`onnxfuse.kernels.ort.build` put it."""
REBUILD = "python -m onnxfuse.kernels.ort"
"""The command that rebuilds the library, for error messages."""

_lock = threading.Lock()
_loaded: dict[Path, ctypes.CDLL] = {}


def library_path() -> Path:
    """The built library: ``$ONNXFUSE_ORT_LIBRARY``, else the one the install built.

    Raises:
        UnsupportedError: it has not been built (the message says how).
    """
    env = os.environ.get("ONNXFUSE_ORT_LIBRARY")
    path = Path(env) if env else INSTALLED
    if not path.is_file():
        raise UnsupportedError(
            f"the onnxfuse ORT plugin is not built ({path} is missing): reinstall onnxfuse "
            f"(`pip install .`, `make install`) or run `{REBUILD}`; "
            "fused models still run without it (function bodies)")
    return path


def library() -> ctypes.CDLL:
    """The library at :func:`library_path`, loaded and checked (once per path).

    Raises:
        UnsupportedError: it is not built, cannot be loaded, or was built from another
            registry or bridge ABI than this onnxfuse's (the message says what differs).
    """
    path = library_path()
    with _lock:
        if path not in _loaded:
            lib = _open(path)
            check(lib, path)
            _loaded[path] = lib
        return _loaded[path]


def _open(path: Path) -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as e:
        raise UnsupportedError(f"ONNX Runtime cannot load the onnxfuse plugin: {first_line(e)}; "
                               f"rebuild it ({REBUILD}) or run without it "
                               "(--backend none: fused models run their function bodies)") from e
    try:
        lib.onnxfuse_contract.restype = ctypes.c_char_p
        lib.onnxfuse_bridge_abi.restype = ctypes.c_char_p
        lib.onnxfuse_set_triton_callback.argtypes = [ctypes.c_void_p]
        lib.onnxfuse_set_triton_callback.restype = ctypes.c_int
        lib.onnxfuse_kernel_runs.argtypes = [ctypes.c_int]
        lib.onnxfuse_kernel_runs.restype = ctypes.c_int64
    except AttributeError as e:
        raise UnsupportedError(f"rebuild the plugin: {path} was built by an older onnxfuse ({e}); "
                               f"run `{REBUILD}`") from e
    return lib


def _first_difference(built: Any, want: Any, where: str = "contract") -> str:
    if isinstance(built, dict) and isinstance(want, dict):
        for key in sorted(set(built) | set(want)):
            if built.get(key) != want.get(key):
                return _first_difference(built.get(key), want.get(key), f"{where}.{key}")
    elif isinstance(built, list) and isinstance(want, list) and len(built) == len(want):
        for i, (b, w) in enumerate(zip(built, want, strict=True)):
            if b != w:
                return _first_difference(b, w, f"{where}[{i}]")
    return f"{where}: library {json.dumps(built)}, onnxfuse {json.dumps(want)}"


def check(lib: ctypes.CDLL, path: Path, call: type[ctypes.Structure] = _abi.Call,
          tensor: type[ctypes.Structure] = _abi.Tensor) -> None:
    """Refuse ``lib`` unless it was built from this ``onnxfuse/ops.py`` and lays out the bridge
    structs as ``call`` and ``tensor`` do (tests pass other structs to show a change is caught).

    Raises:
        UnsupportedError: "rebuild the plugin: ..." naming the first difference.
    """
    built = lib.onnxfuse_contract().decode()
    want = json.dumps(ops.contract(), sort_keys=True)
    if built != want:
        raise UnsupportedError(
            f"rebuild the plugin: {path} was built from another fused-op registry than this "
            f"onnxfuse's ({_first_difference(json.loads(built), json.loads(want))}); run `{REBUILD}`")
    problems = _abi.mismatches(json.loads(lib.onnxfuse_bridge_abi()), _abi.layout(call, tensor))
    if problems:
        raise UnsupportedError(f"rebuild the plugin: {path} lays out the bridge structs differently "
                               f"from this onnxfuse ({'; '.join(problems)}); run `{REBUILD}`")
