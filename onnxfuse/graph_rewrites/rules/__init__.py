"""The fusion rules: one file per fused-op family, and the order the pass tries them in.

A new family is a rule file here that declares a :class:`~onnxfuse.graph_rewrites._family.Family`
as ``FAMILY``, and its line in :data:`DEFAULT_FAMILIES`.
"""

from __future__ import annotations

from onnxscript.rewriter import pattern

from onnxfuse.graph_rewrites._family import Family
from onnxfuse.graph_rewrites.rules import gated_mlp

__all__ = ["DEFAULT_FAMILIES", "all_rules"]

DEFAULT_FAMILIES: tuple[Family, ...] = (gated_mlp.FAMILY,)
"""Every family, in priority order: at a node, an earlier family's fusion wins."""


def all_rules() -> pattern.RewriteRuleSet:
    """Every fusion of every family with every operand order, as one onnxscript rule set
    (for onnxscript's own tools, and as the reference the pass's pre-filter is tested
    against: :class:`~onnxfuse.graph_rewrites.FusePass` applies only the variants that
    match, which is much faster)."""
    return pattern.RewriteRuleSet([v for family in DEFAULT_FAMILIES for f in family.fusions
                                   for v in f.variants()])
