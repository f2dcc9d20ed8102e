"""What to export (:class:`ExportConfig`): light on purpose (no torch or onnx), since
the CLI builds ``onnxfuse export --help`` from its fields."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

from onnxfuse.models import Part
from onnxfuse.numerics import DType

__all__ = ["EXPORTERS", "ExportConfig", "Exporter"]

Exporter = Literal["dynamo", "torchscript"]
EXPORTERS: tuple[Exporter, ...] = ("dynamo", "torchscript")


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """What to export and where.

    Attributes:
        model: spec name, ``smollm2``, checkpoint folder or ``.gguf`` file.
        output: the ``.onnx`` path; weights go beside it in ``<output>.data``.
        part: ``full`` model or one decoder layer's ``mlp``.
        exporter: ``dynamo`` (torch.export based) or ``torchscript``.
        dtype: element type of weights and activations.
        opset: ONNX opset; ``None`` takes the exporter's default.
        batch, seq: shape of the example (verification) inputs; spec defaults if ``None``.
        seed: seeds random weights and inputs.
        verify: run ONNX Runtime against torch eager (``onnx.checker`` always runs).
        rel_l2: the verification ceiling; ``None`` takes the tolerance table's for ``dtype``.
        force: replace an existing output.
        mlp_layer: the decoder layer whose MLP ``part="mlp"`` exports.
        with_past: export the decoder with a KV cache (``part="full"`` only): inputs
            ``input_ids``, ``attention_mask``, ``position_ids``, ``past_key_values.{i}.key/.value``;
            outputs ``logits``, ``present.{i}.key/.value`` (the names onnxruntime-genai and
            optimum use), verified at a prefill and a decode step.
    """

    model: str
    output: Path
    part: Part = "full"
    exporter: Exporter = "dynamo"
    dtype: DType = "float32"
    opset: int | None = None
    batch: int | None = None
    seq: int | None = None
    seed: int = 0
    verify: bool = True
    rel_l2: float | None = None
    force: bool = False
    mlp_layer: int = 0
    with_past: bool = False
