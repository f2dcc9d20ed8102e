"""The fusion rules: one file per fused-op family, and the order the pass tries them in.

A new family is a rule file here that declares a :class:`~onnxfuse.graph_rewrites._family.Family`
as ``FAMILY``, named by its op's registry entry (``OpSpec.rules``): :data:`DEFAULT_FAMILIES` is
read from the registry, in its order, so no list here restates it.
"""

from __future__ import annotations

import importlib

from onnxscript.rewriter import pattern

from onnxfuse import ops
from onnxfuse.errors import RewriteError
from onnxfuse.graph_rewrites._family import Family

__all__ = ["DEFAULT_FAMILIES", "all_rules"]


def _families() -> tuple[Family, ...]:
    families = []
    for spec in ops.REGISTRY:
        if spec.rules is not None:
            family: Family = importlib.import_module(spec.rules).FAMILY
            if family.op is not spec:
                raise RewriteError(f"{spec.rules}.FAMILY fuses into {family.op.qualified_name}, but the "
                                f"registry names it as the rules of {spec.qualified_name}")
            families.append(family)
    return tuple(families)


DEFAULT_FAMILIES: tuple[Family, ...] = _families()
"""Every family, in priority order: at a node, an earlier family's fusion wins."""


def all_rules() -> pattern.RewriteRuleSet:
    """Every fusion of every family with every operand order, as one onnxscript rule set
    (for onnxscript's own tools, and as the reference the pass's pre-filter is tested
    against: :class:`~onnxfuse.graph_rewrites.FusePass` applies only the variants that
    match, which is much faster)."""
    return pattern.RewriteRuleSet([v for family in DEFAULT_FAMILIES for f in family.fusions
                                   for v in f.variants()])
