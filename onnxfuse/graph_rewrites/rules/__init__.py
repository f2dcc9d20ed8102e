"""The fusion rules: one file per fused-op family, and the order the pass tries them in.

A new family is a rule file here that declares a :class:`~onnxfuse.graph_rewrites._family.Family`
as ``FAMILY``, and its line in :data:`DEFAULT_FAMILIES`.
"""

from __future__ import annotations

from onnxfuse.graph_rewrites._family import Family
from onnxfuse.graph_rewrites.rules import gated_mlp

__all__ = ["DEFAULT_FAMILIES"]

DEFAULT_FAMILIES: tuple[Family, ...] = (gated_mlp.FAMILY,)
"""Every family, in priority order: at a node, an earlier family's fusion wins."""
