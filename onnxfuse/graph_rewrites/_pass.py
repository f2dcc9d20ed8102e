"""The fusion pass: fuse every safe candidate of every family, report the near misses.

:class:`FusePass` is an ``onnx_ir`` in-place pass. It applies the families' rules with
onnxscript's public rule-set API, to a rule set of only the rule variants that match
somewhere in the model (see :func:`_select`) where the fused node passes the semantic check
(:mod:`._verify`), then finishes each new fused node through its family, found by the registry (:func:`onnxfuse.ops.find`), never by op name.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import cast

import onnx_ir as ir
import onnx_ir.passes.common as common_passes
import onnxscript.optimizer
from onnxscript.rewriter import RULE_NAME_TAG, pattern

from onnxfuse import ops
from onnxfuse.errors import UnsupportedError
from onnxfuse.graph_rewrites import _interpret, _scan, _verify
from onnxfuse.graph_rewrites._family import REFUSED, Family, FusedNode, NearMiss
from onnxfuse.graph_rewrites.rules import DEFAULT_FAMILIES

__all__ = ["FusePass", "FuseResult", "UnfusePass", "UnfuseResult", "fuse_model", "scan", "unfuse_model"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class _Refusal:
    """A match whose fusion failed the semantic check: its root and nodes, and the reason."""

    root: ir.Node
    nodes: tuple[str, ...]
    reason: str


def _select(model: ir.Model, families: Sequence[Family]) -> tuple[list[pattern.RewriteRule], list[_Refusal]]:
    """The rule variants to apply, in priority order, and the matches refused.

    A rule set tries every rule at every node; all the commuted variants of the gated MLP's
    forms (1,760) tried at every node of the 30-layer SmolLM2 export took 17 s. Here
    each family's pre-filter names the few fusions worth trying at a node, their variants are
    tried there (``RewriteRule.try_rewrite``, which runs the rule's check and builds the
    fused node without changing the graph), and the first that matches is kept: the rule set
    then holds one or two variants per model. At a node, the rule set tries them in priority
    order, the order in which this search tried them: the same variant wins.

    Each fused node built here is checked against the matched nodes (:func:`._verify.verify`)
    before anything is applied. A node that fails is marked (:data:`._family.REFUSED`), so no
    variant fuses it when the rule set is applied, and is returned with its reason.
    """
    rank = {id(f): i for i, f in enumerate(f for family in families for f in family.fusions)}
    found: dict[tuple[int, int], pattern.RewriteRule] = {}
    refused: list[_Refusal] = []
    owners: list[ir.Graph | ir.Function] = [model.graph, *model.functions.values()]
    # try_rewrite imports the fused op's opset where it matches: the rule set does that
    # again for what it fuses, and nothing else may change.
    imports = [(owner, dict(owner.opset_imports)) for owner in owners]
    for owner in owners:
        for node in ir.traversal.RecursiveGraphIterator(owner):
            graph = node.graph
            if graph is None:
                continue
            for family in families:
                matched = next(((rank[id(fusion)], i, rule, delta) for fusion in family.candidates(node)
                                for i, rule in enumerate(fusion.variants())
                                if (delta := rule.try_rewrite(model, graph, node)) is not None), None)
                if matched is None:
                    continue
                delta = matched[3]
                original = _interpret.in_order(delta.match.nodes)
                reason = _verify.verify(family.op, delta.new_nodes, original, delta.match.outputs, delta.new_outputs)
                if reason is None:
                    found[matched[:2]] = matched[2]
                else:
                    log.warning("%s not fused: %s", _scan.node_name(node), reason)
                    node.meta[REFUSED] = reason
                    refused.append(_Refusal(node, tuple(map(_scan.node_name, original)), reason))
                break
    for owner, saved in imports:
        owner.opset_imports.clear()
        owner.opset_imports.update(saved)
    return [found[key] for key in sorted(found)], refused


def _near_misses(scanned: list[NearMiss], refused: list[_Refusal]) -> list[NearMiss]:
    """The scan's near misses, with the semantic check's reason for the candidates it refused
    (and those the scan does not see added)."""
    reasons = {name: r.reason for r in refused for name in r.nodes}
    misses = [dataclasses.replace(m, reason=reasons[m.down]) if m.down in reasons else m for m in scanned]
    seen = {m.down for m in scanned}
    return misses + [NearMiss(_scan.node_name(r.root), r.nodes, r.reason) for r in refused
                     if seen.isdisjoint(r.nodes)]


@dataclasses.dataclass
class FuseResult(ir.passes.PassResult):
    """What :class:`FusePass` changed: the fused nodes it created, and the candidates it left."""

    fused: tuple[FusedNode, ...] = ()
    skipped: tuple[NearMiss, ...] = ()


@dataclasses.dataclass
class UnfuseResult(ir.passes.PassResult):
    """What :class:`UnfusePass` changed: how many fused nodes it inlined."""

    unfused: int = 0


def _check_opset(model: ir.Model) -> None:
    owners: tuple[ir.Model | ir.Function, ...] = (model, *model.functions.values())
    for owner in owners:
        version = owner.opset_imports.get(ops.DOMAIN, ops.OPSET_VERSION)
        if version != ops.OPSET_VERSION:
            raise UnsupportedError(
                f"the model imports the {ops.DOMAIN} opset version {version}; this onnxfuse "
                f"writes version {ops.OPSET_VERSION}: rewrite the original model, or upgrade onnxfuse")


def _import_opsets(model: ir.Model, function: ir.Function) -> None:
    """Give the function body an import of every domain its nodes use. onnxscript copies the
    model's imports under the nodes' own domain names: a model that imports the ONNX opset
    as "ai.onnx" (an alias of "") left the body's "" nodes with none (an invalid model)."""
    aliases = {"": "ai.onnx", "ai.onnx": ""}
    for domain in {n.domain for n in function}:
        version = model.opset_imports.get(domain, model.opset_imports.get(aliases.get(domain, domain)))
        if domain not in function.opset_imports and version is not None:
            function.opset_imports[domain] = version


def _finish(model: ir.Model, family: Family, node: ir.Node, index: int) -> FusedNode:
    """Name and annotate a fresh fused node (the family documents it); return its report entry."""
    function = model.functions[(node.domain, node.op_type, node.overload)]
    _import_opsets(model, function)
    replaced = tuple(n.name or n.op_type for n in function if n.op_type != "Constant")
    rule = node.metadata_props.pop(RULE_NAME_TAG, family.op.op_type)
    # The root's output name is kept by the rewriter; derive a stable node name.
    node.name = f"{family.op.op_type}_{index}"
    node.metadata_props.update({"onnxfuse.rule": rule, "onnxfuse.replaced": ",".join(replaced)})
    return family.finish(node, function, rule, replaced)


def _strip_function_value_info(model: ir.Model) -> bool:
    """Drop type annotations inside our function bodies: onnx_ir writes them as the
    function's value_info but does not read them back, so keeping them would make a
    rewrite of a rewritten model differ by bytes. Types inside are inferred from the call.
    Returns whether there were any."""
    stripped = False
    for function in model.functions.values():
        if function.domain != ops.DOMAIN:
            continue
        for value in [*function.inputs, *(o for n in function for o in n.outputs)]:
            stripped |= value.type is not None or value.shape is not None
            value.type, value.shape = None, None
    return stripped


def _used(graph: ir.Graph) -> tuple[set[int], set[str]]:
    """Ids of the nodes and names of the initializers something reads (or a graph output)."""
    outputs = frozenset(graph.outputs)
    nodes = {id(n) for n in graph if any(o in outputs or o.uses() for o in n.outputs)}
    return nodes, {name for name, v in graph.initializers.items() if v.uses() or v in outputs}


def _remove_left_dead(graph: ir.Graph, used_before: tuple[set[int], set[str]]) -> None:
    """Remove what only the fused subgraphs read (Constant or Transpose nodes of Gemm weights,
    which the fused node reads re-stored; scalars of decomposed activations, now in the
    function body), and nothing else: dead code and unused optional outputs that were in the
    model before stay as they were (onnx_ir's RemoveUnusedNodesPass would also remove those)."""
    nodes, initializers = used_before
    outputs = frozenset(graph.outputs)
    for node in reversed(graph):
        if id(node) in nodes and not any(o in outputs or o.uses() for o in node.outputs):
            graph.remove(node, safe=True)
    for name in initializers:
        value = graph.initializers.get(name)
        if value is not None and not (value.uses() or value in outputs or value.is_graph_input()):
            del graph.initializers[name]


class FusePass(ir.passes.InPlacePass):
    """Fuse every safe candidate of the given families (default: every family, in
    :data:`~onnxfuse.graph_rewrites.rules.DEFAULT_FAMILIES` order) into its fused op, with
    the original nodes as a model-local function; report the candidates left unfused.

    Only the fused subgraphs and what only they read change: every other node, initializer,
    dead node and unused optional output stays as it was.

    Raises:
        UnsupportedError: the model imports another version of the onnxfuse opset.
    """

    def __init__(self, families: Sequence[Family] = DEFAULT_FAMILIES) -> None:
        super().__init__()
        self.families = tuple(families)

    def call(self, model: ir.Model) -> FuseResult:
        _check_opset(model)
        before = {id(n) for n in model.graph if ops.is_fused(n)}
        used_before = _used(model.graph)
        # What the rule set does first, so that the search matches what the rules will see
        # (a Constant node's output then has its value).
        for owner in (model.graph, *model.functions.values()):
            onnxscript.optimizer.basic_constant_propagation(owner)
        variants, refused = _select(model, self.families)
        count = pattern.RewriteRuleSet(variants).apply_to_model(model) if variants else 0
        for refusal in refused:
            refusal.root.meta.pop(REFUSED, None)
        fused: list[FusedNode] = []
        if count:
            model.opset_imports[ops.DOMAIN] = ops.OPSET_VERSION
            family_of = {family.op: family for family in self.families}
            existing = sum(1 for n in model.graph if ops.is_fused(n) and id(n) in before)
            for node in model.graph:
                spec = ops.find(node)
                if spec is not None and id(node) not in before:
                    fused.append(_finish(model, family_of[spec], node, existing + len(fused)))
            _remove_left_dead(model.graph, used_before)
        stripped = _strip_function_value_info(model)
        skipped = tuple(_near_misses(scan(model.graph, self.families), refused))
        return FuseResult(model, bool(count) or stripped, tuple(fused), skipped)


class UnfusePass(ir.passes.InPlacePass):
    """Inline every fused node's function back into standard ops (and every other call of a
    model-local function, as ``onnx_ir``'s InlinePass does), drop the onnxfuse opset import
    and what the inlining left unused."""

    def call(self, model: ir.Model) -> UnfuseResult:
        count = sum(1 for n in model.graph if ops.is_fused(n))
        if count:
            common_passes.InlinePass()(model)
            model.opset_imports.pop(ops.DOMAIN, None)
            common_passes.RemoveUnusedNodesPass()(model)
        return UnfuseResult(model, bool(count), count)


def fuse_model(model: ir.Model) -> tuple[list[FusedNode], list[NearMiss]]:
    """Fuse in place (:class:`FusePass`); return the new fused nodes and the unfused near misses.

    Raises:
        UnsupportedError: the model imports another version of the onnxfuse opset.
    """
    result = cast(FuseResult, FusePass()(model))
    return list(result.fused), list(result.skipped)


def unfuse_model(model: ir.Model) -> int:
    """Inline every fused node's function back into standard ops (:class:`UnfusePass`);
    return how many."""
    return cast(UnfuseResult, UnfusePass()(model)).unfused


def scan(graph: ir.Graph, families: Sequence[Family] = DEFAULT_FAMILIES) -> list[NearMiss]:
    """Every unfused candidate of every family in ``graph``, with the reason it was left alone."""
    return [miss for family in families for miss in family.scan(graph)]
