"""Exporters: torch.onnx export (dynamo / TorchScript), external data, verification."""

from __future__ import annotations

from onnxfuse.exporters._export import (
    EXPORTERS,
    SECOND_PAST_SHAPE,
    SECOND_SHAPE,
    ExportConfig,
    Exporter,
    ExportResult,
    VerifyShape,
    export,
    verify,
    verify_shapes,
)

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
