"""Exporters: torch.onnx export (dynamo / TorchScript), external data, verification.

:class:`ExportConfig` imports nothing heavy; the exporter itself (torch, onnx) is imported on
first use, so the CLI's option table (``onnxfuse export --help``) stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from onnxfuse._lazy import lazy_attributes
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


__getattr__ = lazy_attributes(__name__, dict.fromkeys(_LAZY, "onnxfuse.exporters._export"))
