"""What to rewrite (:class:`RewriteConfig`): light on purpose (no onnx, onnx_ir or onnxscript),
since the CLI builds ``onnxfuse rewrite --help`` from its fields."""

from __future__ import annotations

import dataclasses
from pathlib import Path

__all__ = ["RewriteConfig"]


@dataclasses.dataclass(frozen=True)
class RewriteConfig:
    """Rewrite ``input`` into ``output``; ``unfuse`` inlines fused nodes back instead."""

    input: Path
    output: Path
    report: Path | None = None
    unfuse: bool = False
    force: bool = False
