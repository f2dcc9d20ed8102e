"""Exporters: torch.onnx export (dynamo / TorchScript), external data, verification."""

from __future__ import annotations

from onnxfuse.exporters._export import (
    EXPORTERS,
    SECOND_SHAPE,
    ExportConfig,
    Exporter,
    ExportResult,
    VerifyShape,
    export,
    verify,
)

__all__ = [
    "EXPORTERS",
    "SECOND_SHAPE",
    "ExportConfig",
    "ExportResult",
    "Exporter",
    "VerifyShape",
    "export",
    "verify",
]
