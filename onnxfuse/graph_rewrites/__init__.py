"""Graph rewrites: fuse gated MLPs into ``onnxfuse::FusedGatedMLP`` with function bodies.

One rule file per fused-op family under :mod:`.rules`; :class:`FusePass` and
:class:`UnfusePass` are ``onnx_ir`` passes over an in-memory model; :func:`rewrite` loads a
file, runs one of them, saves the result and writes the report.

:class:`RewriteConfig` imports nothing heavy; the rest (onnx, onnx_ir, onnxscript) is
imported on first use, so the CLI's option table (``onnxfuse rewrite --help``) stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from onnxfuse._lazy import lazy_attributes
from onnxfuse.graph_rewrites._config import RewriteConfig

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


_LAZY = {
    **dict.fromkeys(("Family", "FusedNode", "Fusion", "NearMiss"), "onnxfuse.graph_rewrites._family"),
    **dict.fromkeys(("FusePass", "FuseResult", "UnfusePass", "UnfuseResult", "fuse_model", "scan", "unfuse_model"),
                    "onnxfuse.graph_rewrites._pass"),
    **dict.fromkeys(("RewriteResult", "rewrite"), "onnxfuse.graph_rewrites._rewrite"),
    **dict.fromkeys(("DEFAULT_FAMILIES", "all_rules"), "onnxfuse.graph_rewrites.rules"),
    **dict.fromkeys(("ACTIVATION_FORMS", "EvaluatedGatedMLPFusion", "GatedMLPFusion"),
                    "onnxfuse.graph_rewrites.rules.gated_mlp"),
}

if TYPE_CHECKING:
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
    from onnxfuse.graph_rewrites._rewrite import RewriteResult, rewrite
    from onnxfuse.graph_rewrites.rules import DEFAULT_FAMILIES, all_rules
    from onnxfuse.graph_rewrites.rules.gated_mlp import (
        ACTIVATION_FORMS,
        EvaluatedGatedMLPFusion,
        GatedMLPFusion,
    )


__getattr__ = lazy_attributes(__name__, _LAZY)
