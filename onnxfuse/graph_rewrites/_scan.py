"""Generic walks for near-miss scans: the element-wise slice between a value and the
projections it comes from."""

from __future__ import annotations

from collections.abc import Sequence

import onnx_ir as ir

from onnxfuse.graph_rewrites import _safety

__all__ = ["SPLITTERS", "backward_slice", "is_elementwise", "is_matmul_nbits", "is_projection", "node_name", "quantized",
           "standard_node", "unremovable", "with_subgraph"]

# Ops an activation or a bias may be built of, between a projection and the product.
_ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Pow", "Sigmoid", "Tanh", "Erf", "Gelu", "Relu",
                "Swish", "QuickGelu", "FastGelu", "BiasGelu", "Cast", "Neg", "Exp", "HardSigmoid",
                "Softplus", "Identity", "Sqrt", "Reciprocal"}
SPLITTERS = frozenset({"Split", "Slice"})
# Projections with quantized weights (onnxruntime-genai writes int4 models with MatMulNBits).
_QUANTIZED_MATMULS = frozenset({("com.microsoft", "MatMulNBits"), ("com.microsoft", "MatMulBnb4")})


def is_elementwise(node: ir.Node) -> bool:
    """An op an activation or a bias may be built of (of any domain: QuickGelu, FastGelu, ...)."""
    return node.op_type in _ELEMENTWISE


def is_matmul_nbits(node: ir.Node | None) -> bool:
    """Whether ``node`` is a ``com.microsoft::MatMulNBits`` (a block-quantized projection)."""
    return node is not None and (node.domain, node.op_type) == ("com.microsoft", "MatMulNBits")


def is_projection(node: ir.Node) -> bool:
    """An ONNX MatMul or Gemm (with its first two inputs), or a quantized matmul."""
    if (node.domain, node.op_type) in _QUANTIZED_MATMULS:
        return len(node.inputs) >= 2 and node.inputs[0] is not None
    return node.op_type in ("MatMul", "Gemm") and standard_node(node, 2)


def quantized(node: ir.Node) -> str | None:
    """How ``node``, a projection, is quantized (a quantized matmul, or a MatMul or Gemm whose
    weight comes from a DequantizeLinear), or ``None`` for a float projection."""
    if (node.domain, node.op_type) in _QUANTIZED_MATMULS:
        return f"{node.domain}::{node.op_type} {node_name(node)}"
    source = _safety.dequantized(node.inputs[1]) if len(node.inputs) > 1 else None
    return f"{node_name(node)} reads {node_name(source)}" if source is not None else None


def backward_slice(value: ir.Value, limit: int = 32) -> tuple[list[ir.Node], list[ir.Node]]:
    """Nodes between ``value`` and the projections it comes from: ``(interior, roots)``.

    Walks producers through element-wise ops; MatMul, Gemm, quantized matmuls, Split and
    Slice end the walk (the roots). Constant inputs are not followed."""
    interior: list[ir.Node] = []
    roots: list[ir.Node] = []
    stack = [value]
    while stack and len(interior) < limit:
        node = stack.pop().producer()
        if node is None or node in interior or node in roots:
            continue
        if node.op_type in SPLITTERS:
            if not standard_node(node, 1):
                return interior, []
            roots.append(node)
            continue
        if node.op_type in ("MatMul", "Gemm") or (node.domain, node.op_type) in _QUANTIZED_MATMULS:
            if not is_projection(node):
                return interior, []
            roots.append(node)
            continue
        if node.op_type not in _ELEMENTWISE:
            return interior, []
        interior.append(node)
        stack.extend(v for v in node.inputs if v is not None and not _safety.is_constant(v))
    return interior, roots


def standard_node(node: ir.Node, inputs: int) -> bool:
    """An ONNX-domain node with at least ``inputs`` inputs, the first present (a same-named
    op of another domain, or a malformed node, is no projection or product)."""
    return _safety.is_standard(node) and len(node.inputs) >= inputs and node.inputs[0] is not None


def node_name(node: ir.Node) -> str:
    return node.name or f"<{node.op_type}>"


def with_subgraph(nodes: Sequence[ir.Node]) -> ir.Node | None:
    """The first node with a subgraph attribute. None of the matched ops has one; a
    (malformed) node with one cannot be copied into the function body."""
    return next((n for n in nodes if any(a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)
                                         for a in n.attributes.values())), None)


def unremovable(nodes: Sequence[ir.Node], output: ir.Value) -> str | None:
    """Why ``nodes`` cannot be replaced by one node computing ``output``: a value of theirs
    (other than ``output``) that is a graph output or has a consumer outside them."""
    members = {id(n) for n in nodes}
    for node in nodes:
        for value in node.outputs:
            if value is output:
                continue
            if value.is_graph_output():
                return f"{value.name} (from {node_name(node)}) is a graph output"
            for user, _ in value.uses():
                if id(user) not in members:
                    return f"{value.name} (from {node_name(node)}) has another consumer: {node_name(user)}"
    return None
