"""Graph rewrites: fuse gated MLPs into ``onnxfuse::FusedGatedMLP`` with function bodies.

One rule file per fused-op family under :mod:`.rules`; :class:`FusePass` and
:class:`UnfusePass` are ``onnx_ir`` passes over an in-memory model; :func:`rewrite` loads a
file, runs one of them, saves the result and writes the report.
"""

from __future__ import annotations

from onnxfuse.graph_rewrites._family import Family, FusedNode, Fusion, NearMiss
from onnxfuse.graph_rewrites._pass import (
    FusePass,
    FuseResult,
    UnfusePass,
    UnfuseResult,
    fuse_model,
    scan,
    unfuse_model,
)
from onnxfuse.graph_rewrites._rewrite import RewriteConfig, RewriteResult, rewrite
from onnxfuse.graph_rewrites.rules import DEFAULT_FAMILIES, all_rules
from onnxfuse.graph_rewrites.rules.gated_mlp import (
    ACTIVATION_FORMS,
    EvaluatedGatedMLPFusion,
    GatedMLPFusion,
)

__all__ = [
    "ACTIVATION_FORMS",
    "DEFAULT_FAMILIES",
    "EvaluatedGatedMLPFusion",
    "Family",
    "FusePass",
    "FuseResult",
    "FusedNode",
    "Fusion",
    "GatedMLPFusion",
    "NearMiss",
    "RewriteConfig",
    "RewriteResult",
    "UnfusePass",
    "UnfuseResult",
    "all_rules",
    "fuse_model",
    "rewrite",
    "scan",
    "unfuse_model",
]

