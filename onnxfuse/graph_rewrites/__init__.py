"""Graph rewrites: fuse gated MLPs into ``onnxfuse::FusedGatedMLP`` with function bodies.

One rule file per fused-op family under :mod:`.rules`; :class:`FusePass` and
:class:`UnfusePass` are ``onnx_ir`` passes over an in-memory model; :func:`rewrite` loads a
file, runs one of them, saves the result and writes the report.
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter import pattern

from onnxfuse.graph_rewrites._family import Family, FusedNode, Fusion, NearMiss
from onnxfuse.graph_rewrites._pass import (
    FusePass,
    FuseResult,
    UnfusePass,
    UnfuseResult,
    fuse_model,
    unfuse_model,
)
from onnxfuse.graph_rewrites._rewrite import RewriteConfig, RewriteResult, rewrite
from onnxfuse.graph_rewrites.rules import DEFAULT_FAMILIES
from onnxfuse.graph_rewrites.rules.gated_mlp import ACTIVATION_FORMS, GatedMLPFusion

__all__ = [
    "ACTIVATION_FORMS",
    "DEFAULT_FAMILIES",
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


def scan(graph: ir.Graph) -> list[NearMiss]:
    """Every unfused candidate of every family in ``graph``, with the reason it was left alone."""
    return [miss for family in DEFAULT_FAMILIES for miss in family.scan(graph)]


def all_rules() -> pattern.RewriteRuleSet:
    """Every fusion of every family with every operand order, as one onnxscript rule set
    (for use with onnxscript's own tools; :class:`FusePass` applies only the variants that
    match, which is much faster)."""
    return pattern.RewriteRuleSet([v for family in DEFAULT_FAMILIES for f in family.fusions
                                   for v in f.variants()])
