"""Find gated-MLP candidates that were not fused, and say why.

A candidate is ``MatMul(Mul(a, b), W)`` where ``a`` and ``b`` each lead back, through
element-wise ops, to a ``MatMul`` of one shared input. What makes it a near miss is
reported by the first failing test below, or by :func:`_safety.check_candidate`.
"""

from __future__ import annotations

import dataclasses

import onnx_ir as ir

from onnxfuse.graph_rewrites import _safety

__all__ = ["NearMiss", "backward_slice", "scan"]

# Ops an activation or a bias may be built of, between a projection and the product.
_ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Pow", "Sigmoid", "Tanh", "Erf", "Gelu", "Relu",
                "Swish", "QuickGelu", "FastGelu", "BiasGelu", "Cast", "Neg", "Exp", "HardSigmoid",
                "Softplus", "Identity"}
_SPLITTERS = {"Split", "Slice"}


@dataclasses.dataclass(frozen=True)
class NearMiss:
    """A gated-MLP-shaped subgraph left unfused."""

    down: str
    nodes: tuple[str, ...]
    reason: str

    def as_dict(self) -> dict[str, object]:
        return {"down": self.down, "nodes": list(self.nodes), "reason": self.reason}


def backward_slice(value: ir.Value, limit: int = 32) -> tuple[list[ir.Node], list[ir.Node]]:
    """Nodes between ``value`` and the projections it comes from: ``(interior, roots)``.

    Walks producers through element-wise ops; MatMul, Gemm, Split and Slice end the walk
    (the roots). Constant inputs are not followed."""
    interior: list[ir.Node] = []
    roots: list[ir.Node] = []
    stack = [value]
    while stack and len(interior) < limit:
        node = stack.pop().producer()
        if node is None or node in interior or node in roots:
            continue
        if node.op_type in ("MatMul", "Gemm") or node.op_type in _SPLITTERS:
            if not _standard(node, 1 if node.op_type in _SPLITTERS else 2):
                return interior, []
            roots.append(node)
            continue
        if node.op_type not in _ELEMENTWISE:
            return interior, []
        interior.append(node)
        stack.extend(v for v in node.inputs if v is not None and not _safety.is_constant(v))
    return interior, roots


def _standard(node: ir.Node, inputs: int) -> bool:
    """An ONNX-domain node with at least ``inputs`` inputs, the first present (a same-named
    op of another domain, or a malformed node, is no projection)."""
    return (node.domain in ("", "ai.onnx") and len(node.inputs) >= inputs
            and node.inputs[0] is not None)


def _name(node: ir.Node) -> str:
    return node.name or f"<{node.op_type}>"


def _reason(graph: ir.Graph, down: ir.Node, mul: ir.Node, sides: list[list[ir.Node]],
            roots: list[ir.Node]) -> str:
    """The first reason this candidate is not safe or not recognised."""
    outputs = set(graph.outputs)
    if any(r.op_type in _SPLITTERS for r in roots):
        splitter = next(r for r in roots if r.op_type in _SPLITTERS)
        return (f"packed gate/up projection ({splitter.op_type} {_name(splitter)} of one MatMul): "
                "not fused yet, the weight would have to be split at rewrite time")
    gemm = down.op_type == "Gemm"
    if {r.op_type for r in roots} | {down.op_type} not in ({"MatMul"}, {"Gemm"}):
        return "the projections mix MatMul and Gemm"
    if gemm and not all(_safety.gemm_attributes_ok(n) for n in [*roots, down]):
        return "a Gemm is not alpha=beta=1, transA=0, transB=1"
    x0, x1 = roots[0].inputs[0], roots[1].inputs[0]
    if x0 is not x1:
        return "gate and up projections read different inputs"
    a, b = mul.inputs[0], mul.inputs[1]
    if a is not None and b is not None and a.shape is not None and b.shape is not None \
            and list(a.shape) != list(b.shape):
        return f"the product Mul {_name(mul)} broadcasts: {list(a.shape)} * {list(b.shape)}"
    interior = [mul, *sides[0], *sides[1], *roots]
    members = {id(n) for n in [down, *interior]}
    for node in interior:
        for out in node.outputs:
            if out in outputs:
                return f"{out.name} (from {_name(node)}) is a graph output"
            for user, _ in out.uses():
                if id(user) not in members:
                    return f"{out.name} (from {_name(node)}) has another consumer: {_name(user)}"
    # The gate is the side with the activation: the one with more nodes.
    gate, up = (0, 1) if len(sides[0]) >= len(sides[1]) else (1, 0)
    weights = [roots[gate].inputs[1], roots[up].inputs[1], down.inputs[1]]
    if gemm:
        biases = [n.inputs[2] if len(n.inputs) > 2 else None for n in (roots[gate], roots[up], down)]
    else:
        biases = [_bias_after(roots[gate]), _bias_after(roots[up]), _bias_after(down)]
    if all(w is not None for w in weights):
        failure = _safety.check_candidate(
            x0, *weights, biases if any(b is not None for b in biases) else None,  # type: ignore[arg-type]
            gemm=gemm)
        if failure is not None:
            return failure.text
    ops = sorted({n.op_type for side in sides for n in side})
    if not ops:
        return "no activation between the projections and the product (a bilinear layer)"
    return f"the activation (ops: {', '.join(ops)}) is not one of silu, gelu, gelu_tanh in a known form"


def _bias_after(node: ir.Node) -> ir.Value | None:
    """The constant added right after ``node``'s output, if any."""
    users = list(node.outputs[0].uses())
    if len(users) != 1 or users[0][0].op_type != "Add":
        return None
    add = users[0][0]
    other = add.inputs[1 - users[0][1]] if len(add.inputs) == 2 else None
    return other if other is not None and _safety.is_constant(other) else None


def scan(graph: ir.Graph) -> list[NearMiss]:
    """Every unfused gated-MLP candidate in ``graph`` with the reason it was left alone."""
    found = []
    for down in graph:
        if down.op_type not in ("MatMul", "Gemm") or not _standard(down, 2):
            continue
        mul = down.inputs[0].producer()  # type: ignore[union-attr]
        if mul is None or mul.op_type != "Mul" or not _standard(mul, 2) or None in mul.inputs:
            continue
        sides, side_roots = zip(*(backward_slice(v) for v in mul.inputs), strict=True)  # type: ignore[arg-type]
        if any(len(r) != 1 for r in side_roots):
            continue  # a side that is not one projection (or a constant scale): not an MLP
        roots = [side_roots[0][0], side_roots[1][0]]
        if roots[0] is roots[1] and roots[0].op_type not in _SPLITTERS:
            continue  # both factors from one projection: not gated
        ordered = [n for n in graph if n in {*sides[0], *sides[1], *roots, mul, down}]
        found.append(NearMiss(_name(down), tuple(_name(n) for n in ordered),
                              _reason(graph, down, mul, list(sides), roots)))
    return found
