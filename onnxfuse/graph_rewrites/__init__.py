"""Graph rewrites: fuse gated MLPs into ``onnxfuse::FusedGatedMLP`` with function bodies."""

from __future__ import annotations

from onnxfuse.graph_rewrites._pass import (
    FusedNode,
    RewriteConfig,
    RewriteResult,
    fuse_model,
    rewrite,
    unfuse_model,
)
from onnxfuse.graph_rewrites._rules import ACTIVATION_FORMS, GatedMLPFusion, all_rules
from onnxfuse.graph_rewrites._scan import NearMiss, scan

__all__ = [
    "ACTIVATION_FORMS",
    "FusedNode",
    "GatedMLPFusion",
    "NearMiss",
    "RewriteConfig",
    "RewriteResult",
    "all_rules",
    "fuse_model",
    "rewrite",
    "scan",
    "unfuse_model",
]
