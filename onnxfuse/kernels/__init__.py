"""Kernels: the torch reference of FusedGatedMLP, its Triton kernels, tuning and ahead-of-time
builds (:mod:`.triton`), and the native ONNX Runtime plugin (:mod:`.ort`: its loader, the Python bridge and the C++)
with its Python bridge (:mod:`.bridge`).

The Triton kernels are imported lazily (importing this package costs neither torch nor
Triton). Whether Triton compiles or interprets them (``TRITON_INTERPRET``) is decided once,
when the process starts (the test suite's conftest, the ``onnxfuse`` CLI, or the user's
environment); library code only reads it, through :func:`interpreting`.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["KernelConfig", "activate", "fused_gated_mlp", "fused_gated_mlp_reference", "interpreting"]

_LAZY = {"KernelConfig": "triton.configs", "fused_gated_mlp": "triton.gated_mlp",
         "activate": "triton.reference", "fused_gated_mlp_reference": "triton.reference"}


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET``); importing
    nothing, so the plugin's triton backend can ask before the kernels are imported."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
