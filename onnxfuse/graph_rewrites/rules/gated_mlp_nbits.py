"""Gated MLPs over block-quantized projections → ``onnxfuse::FusedGatedMLPNBits``.

``MatMulNBits(act(MatMulNBits(x, Qg, Sg[, Zg])) * MatMulNBits(x, Qu, Su[, Zu]), Qd, Sd[, Zd])``,
the form onnxruntime-genai's builder and ORT's quantizers write for int4 and int8 models
(``com.microsoft::MatMulNBits``: packed weights, per-block scales, optional packed zero points,
an optional bias input). The MLP is found by structure, as the float family's evaluated fusion
finds its own: the product's two factors, one of them a MatMulNBits output, the other an
element-wise subgraph of one, whose activation is recognised by what it computes
(:func:`~onnxfuse.graph_rewrites.rules.gated_mlp.recognise_activation`). The fused node reads
the very quantized tensors the projections read (nothing is copied or repacked); its function
body holds the original MatMulNBits nodes, so a model runs in any ORT with the contrib ops.

What it leaves, with the reason (:func:`check_candidate`, shared by the fusion and the
near-miss scan): projections that disagree on ``bits``, ``block_size`` or ``accuracy_level``
(the op carries one of each), a ``g_idx`` (act-order) input, zero points or biases on some
projections only, float zero points, weights that are not constants. A gated MLP that mixes
float and quantized projections stays with the float family's scan ("quantized projection").
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import onnx_ir as ir
from onnxscript.rewriter.pattern import MatchResult

from onnxfuse import ops
from onnxfuse.graph_rewrites import _safety, _scan
from onnxfuse.graph_rewrites._family import (
    Family,
    Found,
    FusedNode,
    Fusion,
    NearMiss,
    StructureMatcher,
)
from onnxfuse.graph_rewrites.rules.gated_mlp import Recognition, recognise_activation

__all__ = ["FAMILY", "GatedMLPNBitsFusion", "Projection", "check_candidate"]

_SPEC = ops.FUSED_GATED_MLP_NBITS
_ELEMENT_TYPES = frozenset(ir.DataType(ops.ELEMENT_TYPES[t]) for t in _SPEC.element_types)
_SHARED = ("bits", "block_size", "accuracy_level")
"""MatMulNBits attributes the op carries once for all three projections."""
_DEFAULTS = {"bits": 4, "accuracy_level": 0}
"""MatMulNBits' own defaults (block_size, K and N have none)."""
_INPUTS = 6
"""MatMulNBits' inputs: A, B, scales, zero_points, g_idx, bias."""


@dataclasses.dataclass(frozen=True)
class Projection:
    """One ``MatMulNBits`` node's operands and attributes (``None`` for an absent input or an
    attribute without a default)."""

    node: ir.Node
    x: ir.Value
    q: ir.Value
    scales: ir.Value
    zero_points: ir.Value | None
    g_idx: ir.Value | None
    bias: ir.Value | None
    attributes: dict[str, int | None]

    @property
    def k(self) -> int | None:
        return self.attributes["K"]

    @property
    def n(self) -> int | None:
        return self.attributes["N"]


def _projection(node: ir.Node | None) -> Projection | None:
    """``node`` as a MatMulNBits projection (its first three inputs present), or ``None``."""
    if node is None or not _scan.is_matmul_nbits(node) or not 3 <= len(node.inputs) <= _INPUTS:
        return None
    padded: list[ir.Value | None] = [*node.inputs, *[None] * (_INPUTS - len(node.inputs))]
    x, q, scales, zero_points, g_idx, bias = padded
    if x is None or q is None or scales is None:
        return None
    attributes: dict[str, int | None] = {}
    for name in ("K", "N", *_SHARED):
        attr = node.attributes.get(name)
        attributes[name] = attr.value if attr is not None and attr.type == ir.AttributeType.INT \
            else _DEFAULTS.get(name) if attr is None else None
    return Projection(node, x, q, scales, zero_points, g_idx, bias, attributes)


@dataclasses.dataclass(frozen=True)
class _Structure:
    """A quantized gated MLP found by structure: every node, the three projections and the
    activation."""

    nodes: tuple[ir.Node, ...]
    gate: Projection
    up: Projection
    down: Projection
    activation: str


def _structure(down_node: ir.Node) -> _Structure | str:
    """The quantized gated MLP that ``down_node`` ends, or why there is none it could fuse."""
    name = _scan.node_name
    down = _projection(down_node)
    mul = down.x.producer() if down is not None else None
    if down is None or mul is None or mul.op_type != "Mul" or not _scan.standard_node(mul, 2) \
            or len(mul.inputs) != 2 or None in mul.inputs:
        return f"{name(down_node)} does not project a product"
    reason = "neither factor of the product is a MatMulNBits projection"
    a, b = mul.inputs
    for gate_factor, up_factor in ((a, b), (b, a)):
        up = _projection(up_factor.producer() if up_factor is not None else None)
        if up is None or gate_factor is None:
            continue
        interior, roots = _scan.backward_slice(gate_factor)
        gate = _projection(roots[0]) if len(roots) == 1 else None
        if gate is None:
            reason = "the other factor is not an element-wise function of one MatMulNBits projection"
            continue
        if gate.node is up.node:
            return "both factors of the product come from one projection (not gated)"
        if not interior:
            return "no activation between the projections and the product (a bilinear layer)"
        try:
            recognition: Recognition | None = recognise_activation(interior, gate.node.outputs[0], gate_factor)
        except Exception:  # an op or a constant the probe cannot evaluate
            recognition = None
        if recognition is None or recognition.activation is None:
            ops_ = ", ".join(sorted({n.op_type for n in interior}))
            near = f" (nearest: {recognition.nearest}, max abs error {recognition.error:.2g} on [-6, 6])" \
                if recognition is not None else ""
            return (f"the activation (ops: {ops_}) is not one of "
                    f"{', '.join(_SPEC.attribute('activation').values)} in a known form{near}")
        if gate.x is not up.x:
            return "gate and up projections read different inputs"
        nodes = tuple(dict.fromkeys((down_node, mul, *interior, gate.node, up.node)))
        blocked = _scan.unremovable(nodes, down_node.outputs[0])
        if blocked is not None:
            return blocked
        return _Structure(nodes, gate, up, down, recognition.activation)
    return reason


def check_candidate(found: _Structure) -> _safety.Reason | None:
    """``None`` if fusing is safe, else the first :class:`~._safety.Reason` it is not: one
    ``bits``, ``block_size`` and ``accuracy_level`` the op takes, no ``g_idx``, constant
    uint8 weights (and zero points, on all three projections or none) of the shapes K and N
    and the block size make, consistent K and N (gate and up: d -> d_ff; down: d_ff -> d),
    biases on all three or none, one float element type."""
    Reason = _safety.Reason
    roles = {"gate": found.gate, "up": found.up, "down": found.down}
    for role, p in roles.items():
        if p.g_idx is not None:
            return Reason(f"the {role} projection {_scan.node_name(p.node)} has a g_idx (act-order) input: "
                          f"{_SPEC.op_type} takes blocks in order", (p.node,))
        for attr in ("K", "N", *_SHARED):
            if p.attributes[attr] is None:
                return Reason(f"the {role} projection {_scan.node_name(p.node)} has no int attribute {attr}", (p.node,))
    for attr in _SHARED:
        values = {role: p.attributes[attr] for role, p in roles.items()}
        if len(set(values.values())) != 1:
            text = ", ".join(f"{role} {v}" for role, v in values.items())
            return Reason(f"the projections' {attr} differ ({text}): {_SPEC.op_type} carries one", ())
        allowed = _SPEC.attribute(attr).values
        if found.gate.attributes[attr] not in allowed:
            return Reason(f"{attr} {found.gate.attributes[attr]} is not one of {', '.join(map(str, allowed))}", ())
    d, d_ff = found.gate.k, found.gate.n
    if (found.up.k, found.up.n, found.down.k, found.down.n) != (d, d_ff, d_ff, d):
        sizes = ", ".join(f"{role} K={p.k} N={p.n}" for role, p in roles.items())
        return Reason(f"projection sizes disagree: {sizes} (need d -> d_ff, d -> d_ff, d_ff -> d)", ())
    bits, block_size = int(found.gate.attributes["bits"] or 0), int(found.gate.attributes["block_size"] or 0)
    if {p.zero_points is None for p in roles.values()} == {False, True}:
        return Reason("zero points on some projections only: give all three or none", ())
    if {p.bias is None for p in roles.values()} == {False, True}:
        return Reason("a bias on some projections only: give all three or none", ())
    dtypes: dict[str, ir.DataType | None] = {}
    for role, p in roles.items():
        k, n = int(p.k or 0), int(p.n or 0)
        blocks = -(-k // block_size)
        want = {"q": ((n, blocks, block_size * bits // 8), ir.DataType.UINT8),
                "scales": ((n * blocks,), None),
                "zero_points": ((n * -(-blocks * bits // 8),), ir.DataType.UINT8),
                "bias": ((n,), None)}
        for operand, (size, dtype) in want.items():
            value = getattr(p, operand)
            if value is None:
                continue
            shape = _safety.constant_shape(value)
            if not _safety.is_constant(value) or shape is None:
                return Reason(f"the {role} projection's {operand} ({value.name}) is not a constant of static "
                              "shape", (value,))
            if dtype is not None and _safety.element_type(value) != dtype:
                return Reason(f"the {role} projection's {operand} ({value.name}) is "
                              f"{_type_name(value)}, need {dtype.name} (packed)", (value,))
            if dtype is None:
                dtypes[f"{role} {operand}"] = _safety.element_type(value)
            if (shape if operand == "q" else (math.prod(shape),)) != size:
                return Reason(f"the {role} projection's {operand} ({value.name}) has shape {shape}, need "
                              f"{size if operand == 'q' else f'{size[0]} values'}", (value,))
    x = found.gate.x
    x_dims = x.shape
    if x_dims is not None and len(x_dims) >= 1 and isinstance(x_dims[-1], int) and x_dims[-1] != d:
        return Reason(f"input {x.name} has last dim {x_dims[-1]}, the projections need {d}", (x,))
    if _safety.element_type(x) is not None:
        dtypes["X"] = _safety.element_type(x)
    if None in dtypes.values() or len(set(dtypes.values())) != 1:
        text = ", ".join(f"{k} {v.name if v is not None else '?'}" for k, v in dtypes.items())
        return Reason(f"element types disagree or are unknown: {text}", (x,))
    if next(iter(dtypes.values())) not in _ELEMENT_TYPES:
        return Reason(f"element type {_type_name(found.gate.scales)} is not float, float16 or bfloat16", (x,))
    return None


def _type_name(value: ir.Value) -> str:
    dtype = _safety.element_type(value)
    return dtype.name if dtype is not None else "of unknown type"


def _find(node: ir.Node) -> Found:
    """:func:`_structure` at ``node`` as :class:`StructureMatcher` takes it: ``x`` and the
    structure."""
    found = _structure(node)
    return found if isinstance(found, str) else (found.nodes, {"x": found.gate.x, "structure": found})


class GatedMLPNBitsFusion(Fusion):
    """A gated MLP of three MatMulNBits projections (:func:`_structure`), whatever its operand
    orders, the activation recognised by what it computes.

    Attributes:
        root_op: the op type of the match's root (the down projection).
    """

    root_op = "MatMulNBits"

    def __init__(self) -> None:
        self.matcher = lambda target: StructureMatcher(target, _find)
        super().__init__(f"{_SPEC.op_type}[evaluated]", as_function=True)

    def pattern(self, op: Any, x: Any) -> Any:
        # The matcher matches (_find); the pattern names the value it binds.
        return op.FusedGatedMLPNBits(x, _domain=_SPEC.domain)

    def check(self, context: Any, x: ir.Value, structure: _Structure,  # type: ignore[override]  # named bindings
              **_: Any) -> MatchResult:
        result = MatchResult()
        nested = _scan.with_subgraph(context.nodes)
        if nested is not None:
            return result.fail(f"{nested.op_type} node {nested.name} has a subgraph attribute", nested)
        reason = check_candidate(structure)
        return result.fail(reason.text, reason.sources[0] if reason.sources else None) if reason else result

    def rewrite(self, op: Any, x: ir.Value, structure: _Structure, **_: Any) -> Any:
        p = (structure.gate, structure.up, structure.down)
        inputs: list[ir.Value | None] = [x, *(v for q in p for v in (q.q, q.scales))]
        inputs += [q.zero_points for q in p] + [q.bias for q in p]
        while inputs[-1] is None:
            inputs.pop()
        shared = {name: structure.gate.attributes[name] for name in _SHARED}
        return op.FusedGatedMLPNBits(*inputs, activation=structure.activation, **shared,
                                     _domain=_SPEC.domain, _version=_SPEC.version)


FUSION = GatedMLPNBitsFusion()


def candidates(node: ir.Node) -> list[Fusion]:
    """The fusion, where ``node`` is a MatMulNBits projecting a ``Mul`` down; else none."""
    product = node.inputs[0] if _scan.is_matmul_nbits(node) and node.inputs else None
    mul = product.producer() if product is not None else None
    return [FUSION] if mul is not None and mul.op_type == "Mul" else []


def finish(node: ir.Node, function: ir.Function, rule: str, replaced: tuple[str, ...]) -> FusedNode:
    """Document and type a fresh fused node; return its report entry."""
    names = _SPEC.input_names
    q_gate, q_down = node.inputs[names.index("Q_gate")], node.inputs[names.index("Q_down")]
    d_ff = (_safety.constant_shape(q_gate) or (0,))[0] if q_gate is not None else 0
    d = (_safety.constant_shape(q_down) or (0,))[0] if q_down is not None else 0
    attributes = {a.name: node.attributes[a.name].value if a.name in node.attributes else a.default
                  for a in _SPEC.attributes}
    present = [n for n, v in zip(names, node.inputs, strict=False) if v is not None]
    biased = "B_gate" in present
    formula = _SPEC.describe(attributes, present)
    node.doc_string = (f"onnxfuse: quantized gated MLP fused by {rule}: {formula}; d={d}, d_ff={d_ff}; "
                       f"the function {_SPEC.qualified_name} (overload {node.overload!r}) holds the "
                       "original MatMulNBits nodes")
    node.metadata_props.update({"onnxfuse.d": str(d), "onnxfuse.d_ff": str(d_ff)})
    # Y has the type of the scales (check_candidate knew it) and the shape of X, where known.
    x, y = node.inputs[0], node.outputs[0]
    scales = node.inputs[names.index("S_gate")]
    dtype = _safety.element_type(scales) if scales is not None else None
    if not y.dtype and dtype is not None:
        y.dtype = dtype
    if x is not None and y.shape is None and x.shape is not None:
        y.shape = x.shape
    return FusedNode(str(node.name), rule, str(attributes["activation"]), int(d), int(d_ff), biased, replaced)


def scan(graph: ir.Graph) -> list[NearMiss]:
    """Every unfused gated MLP whose three projections are MatMulNBits, with the reason it
    was left alone."""
    found = []
    for down in graph:
        mul = down.inputs[0].producer() if _scan.is_matmul_nbits(down) and down.inputs and down.inputs[0] else None
        if mul is None or mul.op_type != "Mul" or not _scan.standard_node(mul, 2) or None in mul.inputs:
            continue
        slices = [_scan.backward_slice(v) for v in mul.inputs if v is not None]
        roots = [r for _, rs in slices for r in rs]
        if len(roots) != 2 or roots[0] is roots[1] or not all(_scan.is_matmul_nbits(r) for r in roots):
            continue
        structure = _structure(down)
        if isinstance(structure, str):
            reason = structure
        else:
            failure = check_candidate(structure)
            reason = failure.text if failure is not None else "a quantized gated MLP no fusion matched"
        members = {id(n) for _, side in slices for n in side} | {id(r) for r in roots} | {id(mul), id(down)}
        nodes = tuple(_scan.node_name(n) for n in graph if id(n) in members)
        found.append(NearMiss(_scan.node_name(down), nodes, reason))
    return found


FAMILY = Family(op=_SPEC, fusions=(FUSION,), candidates=candidates, finish=finish, scan=scan)
"""The quantized gated-MLP family, as the pass reads it."""
