"""Exporters: torch.onnx export (dynamo / TorchScript), external data, verification.

:class:`ExportConfig` imports nothing heavy; the exporter itself (torch, onnx) is imported on
first use, so the CLI's option table (``onnxfuse export --help``) stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from onnxfuse.exporters._config import EXPORTERS, ExportConfig, Exporter

__all__ = [
    "EXPORTERS",
    "SECOND_PAST_SHAPE",
    "SECOND_SHAPE",
    "ExportConfig",
    "ExportResult",
    "Exporter",
    "VerifyShape",
    "export",
    "verify",
    "verify_shapes",
]

_LAZY = ("SECOND_PAST_SHAPE", "SECOND_SHAPE", "ExportResult", "VerifyShape", "export", "verify", "verify_shapes")

if TYPE_CHECKING:
    from onnxfuse.exporters._export import (
        SECOND_PAST_SHAPE,
        SECOND_SHAPE,
        ExportResult,
        VerifyShape,
        export,
        verify,
        verify_shapes,
    )


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module("onnxfuse.exporters._export"), name)
    globals()[name] = value
    return value
