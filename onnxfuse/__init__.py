"""onnxfuse: take a Llama-family model to ONNX, fuse its gated MLPs into one node, run that
node in ONNX Runtime through a Triton-backed custom op, and prove nothing changed numerically.

The public API is imported lazily, so ``import onnxfuse`` (and ``onnxfuse --help``) stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [  # noqa: RUF022 - grouped by home module
    # errors
    "ExportError",
    "InvalidModelError",
    "KernelError",
    "ModelNotFoundError",
    "OnnxfuseError",
    "OutputError",
    "ParityError",
    "RewriteError",
    "UnsupportedError",
    "UserError",
    # models
    "Exportable",
    "build",
    "spec_names",
    # exporters
    "ExportConfig",
    "ExportResult",
    "export",
    # numerics
    "Comparison",
    "compare",
    "tolerance",
]

_HOMES = {
    **dict.fromkeys(
        ("ExportError", "InvalidModelError", "KernelError", "ModelNotFoundError", "OnnxfuseError",
         "OutputError", "ParityError", "RewriteError", "UnsupportedError", "UserError"),
        "onnxfuse.errors"),
    **dict.fromkeys(("Exportable", "build", "spec_names"), "onnxfuse.models"),
    **dict.fromkeys(("ExportConfig", "ExportResult", "export"), "onnxfuse.exporters"),
    **dict.fromkeys(("Comparison", "compare", "tolerance"), "onnxfuse.numerics"),
}

if TYPE_CHECKING:
    from onnxfuse.errors import (
        ExportError,
        InvalidModelError,
        KernelError,
        ModelNotFoundError,
        OnnxfuseError,
        OutputError,
        ParityError,
        RewriteError,
        UnsupportedError,
        UserError,
    )
    from onnxfuse.exporters import ExportConfig, ExportResult, export
    from onnxfuse.models import Exportable, build, spec_names
    from onnxfuse.numerics import Comparison, compare, tolerance


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'onnxfuse' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
