"""What a rule file declares: a fused-op family, its fusions, its pre-filter and its report.

A family is data: the registry entry of the op it writes (:mod:`onnxfuse.ops`), its fusions
in priority order, and the functions the pass calls at three points (which fusions may match
at a node, how to finish a fresh fused node, which unfused candidates to report). The pass
(:mod:`onnxfuse.graph_rewrites._pass`) reads nothing else from a rule file.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Sequence
from typing import Any

import onnx_ir as ir
from onnxscript.rewriter import pattern

from onnxfuse import ops
from onnxfuse.errors import first_line

__all__ = ["REFUSED", "Family", "FusedNode", "Fusion", "NearMiss", "StructureMatcher"]

REFUSED = "onnxfuse.refused"
"""``Node.meta`` key the pass sets on the root of a match that failed the semantic check (the
reason): every fusion's check then refuses that root."""


class Fusion(pattern.RewriteRuleClassBase):
    """A class-based rule whose parameters stay on the instance (onnxscript's ``rule()``
    builds a new instance and keeps only the rule), so the pass can select fusions by their
    parameters before any matching.

    Attributes:
        matcher: ``None`` to match :meth:`pattern` with onnxscript's matcher, one variant per
            operand order; or a factory of an onnxscript ``PatternMatcher`` that matches on
            its own (every operand order included), given the pattern: one variant.
    """

    matcher: Callable[[Any], pattern.PatternMatcher] | None = None

    def __init__(self, name: str | None = None, remove_nodes: bool = True,
                 as_function: bool = False) -> None:
        super().__init__(name, remove_nodes, as_function)
        self._per_thread = threading.local()

    def variants(self) -> list[pattern.RewriteRule]:
        """This fusion as onnxscript rules, one per operand order of its commutative ops
        (what ``RewriteRuleSet(..., commute=True)`` builds), in onnxscript's order.

        Built once per thread: commuting every gated-MLP form took 0.6 s, applying the
        rules to a three-layer test MLP 3 ms. The rules' matchers keep per-match state, so
        threads do not share them.
        """
        variants: list[pattern.RewriteRule] | None = getattr(self._per_thread, "variants", None)
        if variants is None:
            rule = pattern.RewriteRule(
                self.pattern, self.rewrite, self._check_unrefused, matcher=self.matcher, name=self.name,
                remove_nodes=self.remove_nodes, graph_pre_visitor=self.setup,
                graph_post_visitor=self.cleanup, as_function=self.as_function)
            variants = [rule] if self.matcher is not None else list(rule.commute())
            self._per_thread.variants = variants
        return variants

    def _check_unrefused(self, context: Any, **bindings: Any) -> Any:
        """:meth:`check`, after refusing a root the pass marked (:data:`REFUSED`)."""
        reason = context.root.meta.get(REFUSED)
        if reason is not None:
            return pattern.MatchResult().fail(reason, context.root)
        return self.check(context, **bindings)


Found = tuple[Sequence[ir.Node], dict[str, object]] | str
"""What a structural search returns at a node: the match's nodes and bindings, or the reason
there is none."""


class StructureMatcher(pattern.PatternMatcher):
    """onnxscript's matcher interface over a structural search ``find(node)`` (a fusion's
    ``matcher`` factory makes one per pattern): it adds the nodes and binds the values the
    search found; every operand order is the search's business. A search that raises (a
    malformed graph) is no match, never a crash."""

    def __init__(self, target: Any, find: Callable[[ir.Node], Found]) -> None:
        super().__init__(target)
        self.find = find

    def match(self, model: ir.Model, graph_or_function: ir.Graph | ir.Function, node: ir.Node, *,
              verbose: int = 0, remove_nodes: bool = True, tracer: Any = None) -> pattern.MatchResult:
        result = pattern.MatchResult()
        try:
            found = self.find(node)
        except Exception as e:  # a malformed graph
            return result.fail(f"cannot read the subgraph at {node.name or node.op_type}: {first_line(e)}", node)
        if isinstance(found, str):
            return result.fail(found, node)
        nodes, bindings = found
        for n in nodes:
            result.add_node(n)
        for name, value in bindings.items():
            result.bind(name, value)
        result.outputs.append(node.outputs[0])
        return result


@dataclasses.dataclass(frozen=True)
class FusedNode:
    """One fused node the pass created."""

    name: str
    rule: str
    activation: str
    d: int
    d_ff: int
    biased: bool
    replaced: tuple[str, ...]

    def as_dict(self) -> dict[str, object]:
        return {**dataclasses.asdict(self), "replaced": list(self.replaced)}


@dataclasses.dataclass(frozen=True)
class NearMiss:
    """A fusion-shaped subgraph left unfused, with the reason."""

    down: str
    nodes: tuple[str, ...]
    reason: str

    def as_dict(self) -> dict[str, object]:
        return {"down": self.down, "nodes": list(self.nodes), "reason": self.reason}


@dataclasses.dataclass(frozen=True)
class Family:
    """One fused-op family, as its rule file declares it.

    Attributes:
        op: the registry entry of the op the fusions write.
        fusions: every fusion, in priority order (at a node, the first that matches wins).
        candidates: the pre-filter: the fusions that may match with ``node`` as the root of
            the pattern, in :attr:`fusions` order (an empty list for most nodes). Must not
            leave out a fusion that matches; may name one that does not.
        finish: completes a fresh fused node (doc string, metadata, output type; the pass
            has named it and recorded the rule and the replaced nodes) and returns its report
            entry, given the node, its function body, the rule name and the names of the
            nodes it replaced.
        scan: every unfused candidate in a graph, with the reason.
    """

    op: ops.OpSpec
    fusions: tuple[Fusion, ...]
    candidates: Callable[[ir.Node], Sequence[Fusion]]
    finish: Callable[[ir.Node, ir.Function, str, tuple[str, ...]], FusedNode]
    scan: Callable[[ir.Graph], list[NearMiss]]
