"""Gated MLPs, ``down(act(gate(x)) * up(x))``, → ``onnxfuse::FusedGatedMLP``.

Everything this family decides is here: the activation forms it recognises, the pattern
(one :class:`GatedMLPFusion` per form, bias and projection kind; onnxscript's ``commute()``
covers every operand order of the Muls and Adds), what is safe to fuse
(:func:`check_candidate`, shared by the rule and the near-miss report, so a rejected
candidate carries the same reason in both), the pre-filter that picks the fusions worth
trying at a node, how a fresh fused node is finished, and the near-miss scan.

What the forms' patterns miss, :class:`EvaluatedGatedMLPFusion` finds by structure: the
activation recognised by what it computes (any element-wise subgraph of the gate), and
packed gate/up projections (one MatMul, then ``Split`` or ``Slice``), whose weight the
rewrite splits.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter.pattern import MatchResult

from onnxfuse import ops
from onnxfuse.graph_rewrites import _interpret, _packed, _safety, _scan
from onnxfuse.graph_rewrites._family import (
    Family,
    Found,
    FusedNode,
    Fusion,
    NearMiss,
    StructureMatcher,
)

__all__ = ["ACTIVATION_FORMS", "FAMILY", "ActivationForm", "EvaluatedGatedMLPFusion", "GatedMLPFusion",
           "check_candidate", "recognise_activation"]

_SPEC = ops.FUSED_GATED_MLP
_ELEMENT_TYPES = frozenset(ir.DataType(ops.ELEMENT_TYPES[t]) for t in _SPEC.element_types)
_SQRT_2 = math.sqrt(2.0)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


# ----------------------------------------------------------------------- activation forms

def _silu_mul(op: Any, g: Any) -> Any:
    return op.Mul(g, op.Sigmoid(g))


def _swish(op: Any, g: Any) -> Any:
    return op.Swish(g, alpha=1.0)


def _swish_default(op: Any, g: Any) -> Any:
    # No attribute: alpha defaults to 1.0, a silu. Refuse any other attribute, or this would
    # also match Swish(alpha=2.0).
    return op.Swish(g, _allow_other_attributes=False)


def _quick_gelu(op: Any, g: Any) -> Any:
    return op.QuickGelu(g, alpha=1.0, _domain="com.microsoft")


def _gelu_op(op: Any, g: Any) -> Any:
    return op.Gelu(g, approximate="none")


def _gelu_op_default(op: Any, g: Any) -> Any:
    # No attribute: approximate defaults to "none". Refuse any other attribute, or this
    # would also match Gelu(approximate="tanh").
    return op.Gelu(g, _allow_other_attributes=False)


def _gelu_tanh_op(op: Any, g: Any) -> Any:
    return op.Gelu(g, approximate="tanh")


def _gelu_erf(op: Any, g: Any) -> Any:
    # 0.5 * g * (1 + erf(g / sqrt(2))), as torch's decomposition and the TorchScript
    # exporter write it below opset 20.
    return op.Mul(op.Mul(g, op.Add(op.Erf(op.Div(g, _SQRT_2)), 1.0)), 0.5)


def _gelu_tanh(op: Any, g: Any) -> Any:
    # 0.5 * g * (1 + tanh(sqrt(2/pi) * (g + 0.044715 * g^3)))
    inner = op.Mul(_SQRT_2_OVER_PI, op.Add(g, op.Mul(0.044715, op.Pow(g, 3.0))))
    return op.Mul(op.Mul(0.5, g), op.Add(op.Tanh(inner), 1.0))


@dataclasses.dataclass(frozen=True)
class ActivationForm:
    """One way a graph writes an activation.

    Attributes:
        pattern: builds the form's pattern from the gate value.
        activation: the fused op's ``activation`` attribute for it.
        key_op: an op type only this form's pattern has among the forms of a different
            ``key_op``: the pre-filter tries the form where its key op lies between the
            projections and the product.
    """

    pattern: Callable[[Any, Any], Any]
    activation: str
    key_op: str


ACTIVATION_FORMS: dict[str, ActivationForm] = {
    "silu": ActivationForm(_silu_mul, "silu", "Sigmoid"),
    "swish": ActivationForm(_swish, "silu", "Swish"),
    "swish_default": ActivationForm(_swish_default, "silu", "Swish"),
    "quick_gelu": ActivationForm(_quick_gelu, "silu", "QuickGelu"),
    "gelu": ActivationForm(_gelu_op, "gelu", "Gelu"),
    "gelu_default": ActivationForm(_gelu_op_default, "gelu", "Gelu"),
    "gelu_tanh": ActivationForm(_gelu_tanh_op, "gelu_tanh", "Gelu"),
    "gelu_erf_decomposed": ActivationForm(_gelu_erf, "gelu", "Erf"),
    "gelu_tanh_decomposed": ActivationForm(_gelu_tanh, "gelu_tanh", "Tanh"),
}
"""Every activation form this family fuses, by name (the name appears in the rule name)."""


# ------------------------------------------------------------------------------ the rule

class GatedMLPFusion(Fusion):
    """``MatMul(act(MatMul(x, Wg) [+ Bg]) * (MatMul(x, Wu) [+ Bu]), Wd) [+ Bd]`` → one node.

    Weights may be initializers, Constant outputs or ``Transpose(perm=[1, 0])`` of either;
    the fused node reads the same values, so no weight is copied.

    With ``gemm``, the three projections are ``Gemm(x, W, [B], transB=1)`` (exporters emit
    these for 2-D inputs). The op wants [K, N] weights, so the rewrite stores each weight
    transposed once, and the function body reads it back through a Transpose (see
    :func:`_untranspose_function`), so the weights are still stored once.

    Attributes:
        form: the key of :data:`ACTIVATION_FORMS`.
        biased: the three projections add a bias.
        gemm: the projections are Gemms rather than MatMuls.
        activation: the fused node's ``activation`` attribute.
        key_op: the form's key op (:class:`ActivationForm`).
        root_op: the op type of the pattern's last node (where the matcher starts).
    """

    def __init__(self, form: str, *, biased: bool, gemm: bool = False) -> None:
        self.form = form
        self.biased = biased
        self.gemm = gemm
        self._form = ACTIVATION_FORMS[form]
        self.activation = self._form.activation
        self.key_op = self._form.key_op
        self.root_op = "Gemm" if gemm else "Add" if biased else "MatMul"
        flags = (",bias" if biased else "") + (",gemm" if gemm else "")
        super().__init__(f"{_SPEC.op_type}[{form}{flags}]", as_function=True)

    def pattern(self, op: Any, x: Any, w_gate: Any, w_up: Any, w_down: Any, b_gate: Any,
                b_up: Any, b_down: Any) -> Any:
        act = self._form.pattern
        if self.gemm:
            def proj(v: Any, w: Any, b: Any) -> Any:
                return op.Gemm(v, w, b, transB=1) if self.biased else op.Gemm(v, w, transB=1)
            product = op.Mul(act(op, proj(x, w_gate, b_gate)), proj(x, w_up, b_up))
            return proj(product, w_down, b_down)
        gate = op.MatMul(x, w_gate)
        up = op.MatMul(x, w_up)
        if self.biased:
            gate, up = op.Add(gate, b_gate), op.Add(up, b_up)
        down = op.MatMul(op.Mul(act(op, gate), up), w_down)
        return op.Add(down, b_down) if self.biased else down

    # onnxscript calls check(context, **bindings): the pattern's variables as named parameters
    # are its documented form, narrower than the base's check(op, *args, **kwargs).
    def check(self, context: Any, x: ir.Value, w_gate: ir.Value,  # type: ignore[override]  # named bindings
              w_up: ir.Value, w_down: ir.Value, b_gate: ir.Value | None = None,
              b_up: ir.Value | None = None, b_down: ir.Value | None = None,
              **_: Any) -> MatchResult:
        result = MatchResult()
        nested = _scan.with_subgraph(context.nodes)
        if nested is not None:
            return result.fail(f"{nested.op_type} node {nested.name} has a subgraph attribute", nested)
        if self.gemm:
            for node in context.nodes:
                if node.op_type == "Gemm" and not _safety.gemm_attributes_ok(node):
                    return result.fail("a Gemm is not alpha=beta=1, transA=0, transB=1", node)
        reason = check_candidate(
            x, w_gate, w_up, w_down, (b_gate, b_up, b_down) if self.biased else None,
            gemm=self.gemm,
        )
        return result.fail(reason.text, reason.sources[0] if reason.sources else None) if reason else result

    def rewrite(self, op: Any, x: ir.Value, w_gate: ir.Value, w_up: ir.Value, w_down: ir.Value,
                b_gate: ir.Value | None = None, b_up: ir.Value | None = None,
                b_down: ir.Value | None = None, **_: Any) -> Any:
        weights = [w_gate, w_up, w_down]
        if self.gemm:
            weights = [_transposed(op, w) for w in weights]
        inputs: list[ir.Value | None] = [x, *weights]
        if self.biased:
            inputs += [b_gate, b_up, b_down]
        return op.FusedGatedMLP(*inputs, activation=self.activation, _domain=_SPEC.domain,
                                _version=_SPEC.version)


FUSIONS: tuple[GatedMLPFusion, ...] = tuple(
    GatedMLPFusion(form, biased=b, gemm=g)
    for form in ACTIVATION_FORMS for b in (False, True) for g in (False, True))
"""Every form, biased and not, MatMul and Gemm, in priority order."""


# ------------------------------------------------------- activations, by what they compute

_PROBE = np.concatenate([np.linspace(-6.0, 6.0, 241), [-100.0, -40.0, -20.0, 20.0, 40.0, 100.0]])
"""Where an activation subgraph is evaluated: densely over [-6, 6], where the op's activations
differ most (silu and gelu by up to 0.19), and at a few far points, where every one of them is
0 or x to well within the limit below, but a subgraph that only agrees near 0 (a high power
of g added) does not."""
_RECOGNISED_WITHIN = 1e-3
"""The largest difference (max abs on :data:`_PROBE`) between a subgraph and the activation
it is recognised as. What rounding the constants to the model's type costs a correct
subgraph (gelu_tanh's 0.044715 and sqrt(2/pi) in bfloat16: 3.4e-4; float16: 1.4e-5) passes;
the nearest other activation an exporter writes (gelu against quick_gelu) is 2e-2 away.
gelu and gelu_tanh are 4.7e-4 apart: the nearer one is chosen, and the semantic check then
holds the fusion to the model type's own tolerance."""
_MAX_ACTIVATION_NODES = 32


def _activation_table() -> dict[str, np.ndarray]:
    """Every activation of the op on :data:`_PROBE`, from the registry's reference: with
    ``X = [g, 1]``, ``W_gate = [[1], [0]]``, ``W_up = [[0], [1]]`` and ``W_down = [[1]]``, the
    op computes ``act(g) * 1``."""
    reference = _SPEC.reference
    if reference is None:  # the registry gives the op a reference: this is a broken registry
        raise ValueError(f"{_SPEC.qualified_name} has no reference")
    x = np.stack([_PROBE, np.ones_like(_PROBE)], axis=1)
    unit_gate, unit_up, unit_down = np.array([[1.0], [0.0]]), np.array([[0.0], [1.0]]), np.array([[1.0]])
    return {name: reference(x, unit_gate, unit_up, unit_down, activation=name)[0][:, 0]
            for name in _SPEC.attribute("activation").values}


_ACTIVATIONS = _activation_table()


@dataclasses.dataclass(frozen=True)
class Recognition:
    """What an activation subgraph computes, against each activation of the op.

    Attributes:
        activation: the activation it computes (within :data:`_RECOGNISED_WITHIN`), or ``None``.
        nearest: the nearest activation of the op.
        error: the max abs difference from ``nearest`` on the probe (``inf``: not finite).
    """

    activation: str | None
    nearest: str
    error: float


def recognise_activation(nodes: Sequence[ir.Node], g: ir.Value, out: ir.Value) -> Recognition:
    """Evaluate ``nodes`` (element-wise, reading only ``g`` and scalar constants) from ``g`` to
    ``out`` in float64 on a dense probe, and name the op's activation they compute.

    Raises:
        ValueError: a node the interpreter does not evaluate, or a result of another size.
    """
    (y,) = _interpret.evaluate(_interpret.in_order(nodes), {id(g): _PROBE}, [out], _scalar)
    y = np.ravel(y)
    if y.shape != _PROBE.shape:
        raise ValueError(f"the activation gives {y.size} values for {_PROBE.size}")
    errors = {name: float(np.max(np.abs(y - ref))) if np.all(np.isfinite(y)) else math.inf
              for name, ref in _ACTIVATIONS.items()}
    nearest = min(errors, key=lambda name: errors[name])
    within = errors[nearest] <= _RECOGNISED_WITHIN
    return Recognition(nearest if within else None, nearest, errors[nearest])


def _scalar(value: ir.Value) -> np.ndarray:
    tensor = value.const_value
    if tensor is None or tensor.size != 1 or value.is_graph_input():  # an input's initializer: a default only
        raise ValueError(f"{value.name} is not a scalar constant")
    return tensor.numpy()


# ----------------------------------------------------------- gated MLPs, by structure

@dataclasses.dataclass(frozen=True)
class _Part:
    """How one factor of the product is projected from X.

    Attributes:
        value: the factor (after its bias, if any).
        source: the projection's output, or the packed projection's part, before the bias.
        nodes: its own nodes: the MatMul (not for a packed part) and the bias Add.
        x: the projection's input.
        weight: the MatMul's weight (for a packed part, the packed MatMul's).
        bias: the constant the bias Add adds.
        packed: for a packed part, the packed MatMul whose output a Split or Slice shares out.
    """

    value: ir.Value
    source: ir.Value
    nodes: tuple[ir.Node, ...]
    x: ir.Value
    weight: ir.Value
    bias: ir.Value | None
    packed: ir.Node | None = None


def _matmul(node: ir.Node | None) -> tuple[ir.Value, ir.Value] | None:
    """``(x, W)`` when ``node`` is an ONNX ``MatMul(x, W)``."""
    if node is None or node.op_type != "MatMul" or not _safety.is_standard(node) or len(node.inputs) != 2:
        return None
    x, w = node.inputs
    return (x, w) if x is not None and w is not None else None


def _split_bias(node: ir.Node | None) -> tuple[ir.Value, ir.Value] | None:
    """``(bias, projected)`` when ``node`` is ``Add(projected, bias)`` (either order) with a
    constant 1-D ``bias`` and ``projected`` from a MatMul (as wide as its weight, where its
    shape is known: a scalar added inside an activation is no bias), a Split or a Slice."""
    if node is None or node.op_type != "Add" or not _scan.standard_node(node, 2) or len(node.inputs) != 2:
        return None
    for b, v in ((node.inputs[1], node.inputs[0]), (node.inputs[0], node.inputs[1])):
        if b is None or v is None or not _safety.is_constant(b):
            continue
        shape = _safety.constant_shape(b)
        producer = v.producer()
        if shape is None or len(shape) != 1 or producer is None:
            continue
        operands = _matmul(producer)
        width = _safety.constant_shape(operands[1]) if operands is not None else None
        if (operands is not None and (not width or width[-1] == shape[0])) or producer.op_type in _scan.SPLITTERS:
            return b, v
    return None


def _part(value: ir.Value) -> _Part | None:
    """``value`` as a projection's output (``MatMul(x, W)`` or a Split/Slice part of one,
    then an optional bias Add), or ``None``."""
    node = value.producer()
    bias, source = None, value
    nodes: tuple[ir.Node, ...] = ()
    biased = _split_bias(node)
    if biased is not None and node is not None:
        bias, source = biased
        nodes, node = (node,), source.producer()
    operands = _matmul(node)
    if operands is not None and node is not None:
        return _Part(value, source, (node, *nodes), *operands, bias)
    if node is not None and node.op_type in _scan.SPLITTERS and _scan.standard_node(node, 1):
        packed = node.inputs[0].producer() if node.inputs[0] is not None else None
        operands = _matmul(packed)
        if operands is not None:
            return _Part(value, source, nodes, *operands, bias, packed)
    return None


def _activation_nodes(factor: ir.Value) -> tuple[list[ir.Node], _Part] | str:
    """The element-wise nodes from a projection ``g`` to ``factor``, reading only ``g`` and
    scalar constants, and ``g``'s projection; or why ``factor`` is not such an activation."""
    nodes: list[ir.Node] = []
    gate: _Part | None = None
    seen: set[int] = set()
    stack = [factor]
    while stack:
        value = stack.pop()
        if id(value) in seen:
            continue
        seen.add(id(value))
        part = _part(value)
        if part is not None:
            if gate is not None and gate.value is not value:
                return f"the activation reads two projections ({gate.value.name}, {value.name})"
            gate = part
            continue
        if value.const_value is not None:
            if value.is_graph_input():
                return f"the activation reads {value.name}, an initializer a caller can override (a graph input)"
            if value.const_value.size != 1:
                return f"the activation reads {value.name}, a constant that is not a scalar"
            continue
        node = value.producer()
        if node is None:
            return f"the activation reads {value.name}, which is no projection"
        if not _scan.is_elementwise(node) or len(node.outputs) != 1:
            return (f"{node.op_type} {_scan.node_name(node)} lies between the projections and the "
                    "product, and is not an element-wise op")
        if len(nodes) == _MAX_ACTIVATION_NODES:
            return f"the activation has over {_MAX_ACTIVATION_NODES} nodes"
        nodes.append(node)
        stack.extend(v for v in node.inputs if v is not None)
    if gate is None:
        return "the activation reads no projection"
    if not nodes:
        return "no activation between the projections and the product (a bilinear layer)"
    return nodes, gate


def _activation_reason(nodes: Sequence[ir.Node], recognition: Recognition | None) -> str:
    op_types = ", ".join(sorted({n.op_type for n in nodes}))
    text = (f"the activation (ops: {op_types}) is not one of "
            f"{', '.join(_SPEC.attribute('activation').values)} in a known form")
    if recognition is None:
        return text
    return f"{text} (nearest: {recognition.nearest}, max abs error {recognition.error:.2g} on [-6, 6])"


@dataclasses.dataclass(frozen=True)
class PackedWeight:
    """A packed gate/up weight and the columns of it each part projects with."""

    weight: ir.Value
    gate: np.ndarray
    up: np.ndarray


@dataclasses.dataclass(frozen=True)
class _Structure:
    """A gated MLP found by structure: every node, and what the fused node takes."""

    nodes: tuple[ir.Node, ...]
    x: ir.Value
    gate: _Part
    up: _Part
    w_down: ir.Value
    b_down: ir.Value | None
    activation: str
    packed: PackedWeight | None


def _down(root: ir.Node) -> tuple[ir.Value, ir.Value, ir.Value | None, tuple[ir.Node, ...]] | None:
    """``(product, W_down, B_down, the nodes)`` when ``root`` ends a projection."""
    down, b_down = root, None
    tail: tuple[ir.Node, ...] = (root,)
    if root.op_type == "Add":
        biased = _split_bias(root)
        producer = biased[1].producer() if biased is not None else None
        if biased is None or producer is None:
            return None
        down, b_down, tail = producer, biased[0], (root, producer)
    operands = _matmul(down)
    return (*operands, b_down, tail) if operands is not None else None


def _structure(root: ir.Node) -> _Structure | str:
    """The gated MLP that ends at ``root``, or why there is none it could fuse."""
    found = _down(root)
    if found is None:
        return f"{_scan.node_name(root)} does not project a product"
    product, w_down, b_down, tail = found
    mul = product.producer()
    a, b = mul.inputs if mul is not None and len(mul.inputs) == 2 else (None, None)
    if mul is None or mul.op_type != "Mul" or not _safety.is_standard(mul) or a is None or b is None:
        return f"{_scan.node_name(root)} does not project a product"
    reason = "neither factor of the product is a projection"
    for gate_factor, up_factor in ((a, b), (b, a)):
        up = _part(up_factor)
        if up is None:
            continue
        walked = _activation_nodes(gate_factor)
        if isinstance(walked, str):
            reason = walked
            continue
        act_nodes, gate = walked
        if gate.source is up.source:
            return "both factors of the product come from one projection (not gated)"
        try:
            recognition: Recognition | None = recognise_activation(act_nodes, gate.value, gate_factor)
        except Exception:  # an op or a constant the probe cannot evaluate
            recognition = None
        if recognition is None or recognition.activation is None:
            return _activation_reason(act_nodes, recognition)
        packed: PackedWeight | None = None
        extra: tuple[ir.Node, ...] = ()
        if (gate.packed is None) != (up.packed is None):
            return "one of gate and up is a part of a packed projection, the other is not"
        if gate.packed is not None:
            unpacked = _packed_parts(gate, up)
            if isinstance(unpacked, str):
                return unpacked
            packed, extra = unpacked
        elif gate.x is not up.x:
            return "gate and up projections read different inputs"
        nodes = tuple(dict.fromkeys((*tail, mul, *act_nodes, *gate.nodes, *up.nodes, *extra)))
        blocked = _scan.unremovable(nodes, root.outputs[0])
        if blocked is not None:
            return blocked
        return _Structure(nodes, gate.x, gate, up, w_down, b_down, recognition.activation, packed)
    return reason


def _packed_parts(gate: _Part, up: _Part) -> tuple[PackedWeight, tuple[ir.Node, ...]] | str:
    """The packed weight and its columns for gate and up, and the nodes that split it."""
    if gate.packed is None or up.packed is not gate.packed:
        return "gate and up are parts of different packed projections"
    matmul, weight, source = gate.packed, gate.weight, gate.packed.outputs[0]
    shape = _safety.constant_shape(weight) if _safety.is_constant(weight) else None
    if shape is None or len(shape) != 2:
        return f"the packed weight {weight.name} is not a constant 2-D weight with a static shape"
    x_shape = gate.x.shape
    columns = _packed.columns(source, [gate.source, up.source], shape[1],
                              len(x_shape) if x_shape is not None else None)
    if isinstance(columns, _safety.Reason):
        return columns.text
    if _packed.repack(columns.parts, shape[1]) is None:
        return (f"the packed projection's parts do not share out its {shape[1]} columns exactly "
                f"once (gate takes {columns.parts[0].size}, up {columns.parts[1].size})")
    return PackedWeight(weight, *columns.parts), (matmul, *columns.nodes)


def _find(node: ir.Node, packed: bool) -> Found:
    """:func:`_structure` at ``node`` as :class:`StructureMatcher` takes it: the pattern's
    variables and the activation (and, for a packed projection, :class:`PackedWeight`)."""
    found = _structure(node)
    if isinstance(found, str):
        return found
    if (found.packed is not None) != packed:
        return "packed" if found.packed is not None else "not packed"
    return found.nodes, {**_bindings(found), "activation": found.activation}


def _bindings(found: _Structure) -> dict[str, object]:
    """What :class:`EvaluatedGatedMLPFusion`'s check takes, from a structure."""
    biased = found.gate.bias is not None or found.up.bias is not None or found.b_down is not None
    return {"x": found.x, "w_gate": found.gate.weight, "w_up": found.up.weight, "w_down": found.w_down,
            "b_gate": found.gate.bias, "b_up": found.up.bias, "b_down": found.b_down, "biased": biased,
            "packed": found.packed}


class EvaluatedGatedMLPFusion(Fusion):
    """A gated MLP found by structure (:func:`_structure`), whatever its operand orders, with
    the activation recognised by what it computes (:func:`recognise_activation`).

    The forms of :data:`ACTIVATION_FORMS` are tried first; this fuses what they miss: an
    activation written in another arrangement (the TorchScript exporter's GELU-tanh at opset
    18, with g³ as two Muls), scalars through Identity nodes, and — with ``packed`` — gate
    and up taken from one packed MatMul by a ``Split`` or two ``Slice``s (Phi-3). The rewrite
    splits a packed weight into W_gate and W_up initializers (computed when the model is
    saved, as Gemm weights are transposed); the function body rebuilds the packed weight from
    them (:func:`_repack_function`), so every weight is stored once.

    Attributes:
        packed: fuse packed projections (else separate ones).
        root_op: ``None``: it may end at a MatMul or at a bias Add.
    """

    root_op = None

    def __init__(self, *, packed: bool) -> None:
        self.packed = packed
        self.matcher = lambda target: StructureMatcher(target, lambda node: _find(node, packed))
        super().__init__(f"{_SPEC.op_type}[evaluated{',packed' if packed else ''}]", as_function=True)

    def pattern(self, op: Any, x: Any, w_gate: Any, w_up: Any, w_down: Any, b_gate: Any, b_up: Any,
                b_down: Any) -> Any:
        # The matcher matches (_find); the pattern names the values it binds.
        return op.FusedGatedMLP(x, w_gate, w_up, w_down, b_gate, b_up, b_down, _domain=_SPEC.domain)

    def check(self, context: Any, x: ir.Value, w_gate: ir.Value,  # type: ignore[override]  # named bindings
              w_up: ir.Value, w_down: ir.Value, b_gate: ir.Value | None = None,
              b_up: ir.Value | None = None, b_down: ir.Value | None = None, biased: bool = False,
              packed: PackedWeight | None = None, **_: Any) -> MatchResult:
        result = MatchResult()
        nested = _scan.with_subgraph(context.nodes)
        if nested is not None:
            return result.fail(f"{nested.op_type} node {nested.name} has a subgraph attribute", nested)
        reason = _evaluated_reason(x, w_gate, w_up, w_down, b_gate, b_up, b_down, biased, packed)
        return result.fail(reason.text, reason.sources[0] if reason.sources else None) if reason else result

    def rewrite(self, op: Any, x: ir.Value, w_gate: ir.Value, w_up: ir.Value, w_down: ir.Value,
                b_gate: ir.Value | None = None, b_up: ir.Value | None = None,
                b_down: ir.Value | None = None, biased: bool = False, activation: str = "",
                packed: PackedWeight | None = None, **_: Any) -> Any:
        if packed is not None:
            w_gate = _columns(op, packed.weight, packed.gate, "gate")
            w_up = _columns(op, packed.weight, packed.up, "up")
        inputs: list[ir.Value | None] = [x, w_gate, w_up, w_down]
        if biased:
            inputs += [b_gate, b_up, b_down]
        return op.FusedGatedMLP(*inputs, activation=activation, _domain=_SPEC.domain, _version=_SPEC.version)


EVALUATED: tuple[EvaluatedGatedMLPFusion, ...] = (EvaluatedGatedMLPFusion(packed=False),
                                                  EvaluatedGatedMLPFusion(packed=True))
"""Separate and packed projections, by structure; tried after :data:`FUSIONS`."""


def _evaluated_reason(x: ir.Value, w_gate: ir.Value, w_up: ir.Value, w_down: ir.Value,
                      b_gate: ir.Value | None, b_up: ir.Value | None, b_down: ir.Value | None,
                      biased: bool, packed: PackedWeight | None) -> _safety.Reason | None:
    """:func:`check_candidate` for a structure's bindings: a packed weight must be one the
    rewrite can split (its value, which no caller can replace), and its parts are checked as
    the weights they become."""
    Reason = _safety.Reason
    if packed is not None:
        weight = packed.weight
        source = _safety.dequantized(weight)
        if source is not None:
            return Reason(f"quantized projection: the packed weight {weight.name} comes from "
                          f"{_scan.node_name(source)}", (weight,))
        if weight.const_value is None:
            return Reason(f"the packed weight {weight.name} is not an initializer or Constant: "
                          "the rewrite splits it", (weight,))
        if weight.is_graph_input():
            return Reason(f"the packed weight {weight.name} is also a graph input, so a caller may "
                          "override it: the rewrite would store split copies", (weight,))
        w_gate, w_up = (ir.Value(name=f"{weight.name}[:, {part}]", const_value=_columns_tensor(weight, cols))
                        for part, cols in (("gate", packed.gate), ("up", packed.up)))
    return check_candidate(x, w_gate, w_up, w_down, (b_gate, b_up, b_down) if biased else None)


# -------------------------------------------------------------------------------- safety

def check_candidate(x: ir.Value, w_gate: ir.Value, w_up: ir.Value, w_down: ir.Value,
                    biases: Sequence[ir.Value | None] | None, *,
                    gemm: bool = False) -> _safety.Reason | None:
    """``None`` if fusing is safe, else the first :class:`~._safety.Reason` it is not:
    constant 2-D weights of consistent shapes, one element type the op takes, 1-D biases.

    ``gemm``: the weights are in Gemm(transB=1) layout, [N, K] instead of [K, N]."""
    Reason = _safety.Reason
    weights = {"W_gate": w_gate, "W_up": w_up, "W_down": w_down}
    shapes: dict[str, tuple[int, ...]] = {}
    for role, w in weights.items():
        source = _safety.dequantized(w)
        if source is not None:
            return Reason(f"quantized projection: {role} ({w.name}) comes from {_scan.node_name(source)}; "
                          f"{_SPEC.op_type} takes float weights", (w,))
        ok, shape = _safety.is_constant(w), _safety.constant_shape(w)
        if not ok:
            return Reason(f"{role} ({w.name}) is not a constant weight", (w,))
        # A Gemm fusion stores each weight transposed at rewrite time: it needs the value
        # itself, and one no caller can replace (an initializer that is also a graph input
        # can be fed another value; the copy would silently ignore it).
        if gemm and w.const_value is None:
            return Reason(f"{role} ({w.name}) is not an initializer or Constant: a Gemm fusion "
                          "stores it transposed", (w,))
        if gemm and w.is_graph_input():
            return Reason(f"{role} ({w.name}) is also a graph input, so a caller may override it: "
                          "a Gemm fusion would store a transposed copy", (w,))
        if shape is None or len(shape) != 2:
            return Reason(f"{role} ({w.name}) is not 2-D with a static shape: {shape}", (w,))
        shapes[role] = tuple(reversed(shape)) if gemm else shape
    (d, d_ff), (d_u, d_ff_u), (d_ff_d, d_d) = shapes["W_gate"], shapes["W_up"], shapes["W_down"]
    if (d, d_ff) != (d_u, d_ff_u) or (d_ff_d, d_d) != (d_ff, d):
        return Reason(f"weight shapes disagree: W_gate {shapes['W_gate']}, W_up {shapes['W_up']}, "
                      f"W_down {shapes['W_down']} (need [d, d_ff], [d, d_ff], [d_ff, d])",
                      (w_gate, w_up, w_down))
    # X's shape and type are often not annotated inside TorchScript exports: the MatMuls
    # already constrain them, so check only what is known.
    x_dims = x.shape
    if x_dims is not None and len(x_dims) >= 1 and isinstance(x_dims[-1], int) and x_dims[-1] != d:
        return Reason(f"input {x.name} has last dim {x_dims[-1]}, the weights need {d}", (x,))
    dtypes = {role: _safety.element_type(v) for role, v in weights.items()}
    if _safety.element_type(x) is not None:
        dtypes["X"] = _safety.element_type(x)
    if biases is not None:
        for role, b, size in zip(("B_gate", "B_up", "B_down"), biases, (d_ff, d_ff, d), strict=True):
            if b is None:
                return Reason(f"{role} is missing", ())
            if not _safety.is_constant(b):
                return Reason(f"{role} ({b.name}) is not a constant", (b,))
            if _safety.constant_shape(b) != (size,):
                return Reason(f"{role} ({b.name}) has shape {_safety.constant_shape(b)}, need ({size},)", (b,))
            dtypes[role] = _safety.element_type(b)
    dtype = dtypes["W_gate"]
    if dtype is None or len(set(dtypes.values())) != 1:
        text = ", ".join(f"{k} {v.name if v is not None else '?'}" for k, v in dtypes.items())
        return Reason(f"element types disagree or are unknown: {text}", (x,))
    if dtype not in _ELEMENT_TYPES:
        return Reason(f"element type {dtype.name} is not float, float16 or bfloat16", (x,))
    return None


# ------------------------------------- weights the rewrite stores: transposed, or split

TRANSPOSED_SUFFIX = "__onnxfuse_T"


def _stored(op: Any, w: ir.Value, suffix: str, key: str, derived: object, reuse: Callable[[object], bool],
            compute: Callable[[np.ndarray], np.ndarray], shape: tuple[int, ...]) -> ir.Value:
    """An initializer holding ``compute(w)``, named after ``w``, marked ``meta[key] = derived``;
    an earlier one whose mark ``reuse`` accepts is shared (tied weights).

    Lazy: the value is computed when the model is saved, one weight at a time, and the
    source's memory map is released right after, so a rewrite holds at most one weight and
    its copy (issue 7's bound: peak RSS < 1.5 x the largest tensor + 512 MiB). Computed
    eagerly, a Gemm-form MLP of 3 x 224 MiB weights peaked at 1470 MiB.
    """
    tensor = w.const_value
    if tensor is None:  # the checks refuse a weight with no constant value to store
        raise ValueError(f"{w.name} has no constant value to store")
    base = name = f"{w.name}{suffix}"
    initializers = w.graph.initializers if w.graph is not None else {}
    for i in itertools.count(1):
        existing = initializers.get(name)
        if existing is None:
            break
        if key in existing.meta and reuse(existing.meta[key]):
            return existing
        name = f"{base}_{i}"  # a model's own initializer of that name, or another part: not this
    final = name

    def make() -> ir.TensorProtocol:
        data = np.ascontiguousarray(compute(tensor.numpy()))
        if isinstance(tensor, ir.ExternalTensor):
            tensor.release()  # its mapped pages would stay resident
        return ir.tensor(data, dtype=tensor.dtype, name=final)

    value: ir.Value = op.initializer(ir.LazyTensor(make, dtype=tensor.dtype, shape=ir.Shape(shape), name=name),
                                     name=name)
    value.meta[key] = derived
    return value


def _transposed(op: Any, w: ir.Value) -> ir.Value:
    """An initializer holding ``w`` transposed: the only copy (the original goes), shared by
    every fused node that reads ``w`` (tied weights); see :func:`_stored`."""
    shape = tuple(reversed(w.const_value.shape.numpy())) if w.const_value is not None else ()
    return _stored(op, w, TRANSPOSED_SUFFIX, _safety.TRANSPOSED_FROM, w, lambda mark: mark is w,
                   lambda a: a.T, shape)


def _columns_tensor(w: ir.Value, columns: np.ndarray) -> ir.LazyTensor:
    """The ``columns`` of ``w`` as a lazy tensor (for the checks: nothing reads it)."""
    tensor = w.const_value
    if tensor is None:  # _evaluated_reason refuses a packed weight with no constant value
        raise ValueError(f"{w.name} has no constant value to split")
    return ir.LazyTensor(lambda: ir.tensor(tensor.numpy()[:, columns]), dtype=tensor.dtype,
                         shape=ir.Shape((tensor.shape.numpy()[0], columns.size)))


def _columns(op: Any, w: ir.Value, columns: np.ndarray, role: str) -> ir.Value:
    """An initializer holding the ``columns`` of a packed weight ``w`` (the original goes
    unless something else reads it), named after it and ``role`` (the two parts of one fusion
    are in none of the graph's initializers yet, so they need names of their own); see
    :func:`_stored`."""
    tensor = w.const_value
    shape = (tensor.shape.numpy()[0], columns.size) if tensor is not None else ()

    def same(mark: object) -> bool:
        return isinstance(mark, tuple) and mark[0] is w and np.array_equal(mark[1], columns)
    return _stored(op, w, f"__onnxfuse_{role}", _safety.COLUMNS_OF, (w, columns), same,
                   lambda a: a[:, columns], shape)


def _untranspose_function(function: ir.Function) -> None:
    """In a Gemm fusion's body, read each weight back from the transposed copy the fused
    node gets (``Transpose(W_T)``) instead of embedding the original as a Constant: the
    weights are then stored once in the model."""
    inputs = {v.name: v for v in function.inputs}
    for node in list(function):
        if node.op_type != "Constant" or "value" not in node.attributes:
            continue
        tensor = node.attributes["value"].as_tensor()
        source = inputs.get(f"{tensor.name}{TRANSPOSED_SUFFIX}")
        if source is None:
            continue
        transpose = ir.Node("", "Transpose", [source], [ir.AttrInt64s("perm", [1, 0])],
                            name=f"{tensor.name}_transpose")
        function.insert_before(node, transpose)
        ir.convenience.replace_all_uses_with(node.outputs[0], transpose.outputs[0])
        function.remove(node, safe=True)


def _repack_function(node: ir.Node, function: ir.Function) -> None:
    """In a packed fusion's body, rebuild the packed weight from the two parts the fused node
    gets (``Concat`` of W_gate and W_up in the order they lie in it, then a ``Gather`` of the
    columns if they were interleaved) instead of embedding the original as a Constant: the
    weights are then stored once."""
    marks = [v.meta.get(_safety.COLUMNS_OF) if v is not None else None for v in node.inputs[1:3]]
    if any(not isinstance(m, tuple) for m in marks):
        return
    (source, gate), (_, up) = marks  # type: ignore[misc]  # two (value, columns) marks, as checked
    tensor = source.const_value
    found = _packed.repack([gate, up], gate.size + up.size)
    for constant in list(function):
        if constant.op_type != "Constant" or "value" not in constant.attributes \
                or constant.attributes["value"].as_tensor() is not tensor or found is None:
            continue
        first, order = found
        concat = ir.Node("", "Concat", [function.inputs[1 + i] for i in first], [ir.AttrInt64("axis", 1)],
                         name=f"{source.name}_repack")
        function.insert_before(constant, concat)
        packed = concat.outputs[0]
        if order is not None:
            indices = ir.Node("", "Constant", [], [ir.AttrTensor("value", ir.tensor(order))],
                              name=f"{source.name}_order")
            gather = ir.Node("", "Gather", [packed, indices.outputs[0]], [ir.AttrInt64("axis", 1)],
                             name=f"{source.name}_reorder")
            function.insert_before(constant, [indices, gather])
            packed = gather.outputs[0]
        ir.convenience.replace_all_uses_with(constant.outputs[0], packed)
        function.remove(constant, safe=True)


# ----------------------------------------------------------------------- the pre-filter

def _product_of(node: ir.Node) -> ir.Node | None:
    """The ``Mul`` whose product ``node`` projects down, if ``node`` can end a gated MLP
    (``MatMul(Mul(..), W)``, or a bias ``Add`` after one)."""
    if not _safety.is_standard(node):
        return None
    if node.op_type == "Add":
        for v in node.inputs:
            producer = v.producer() if v is not None else None
            if producer is not None and producer.op_type == "MatMul":
                return _product_of(producer)
        return None
    if node.op_type not in ("MatMul", "Gemm") or not node.inputs or node.inputs[0] is None:
        return None
    producer = node.inputs[0].producer()
    return producer if producer is not None and producer.op_type == "Mul" else None


_BY_KEY: dict[tuple[str, str], list[GatedMLPFusion]] = {}
for _fusion in FUSIONS:
    _BY_KEY.setdefault((_fusion.root_op, _fusion.key_op), []).append(_fusion)


def candidates(node: ir.Node) -> list[Fusion]:
    """The fusions that may match with ``node`` as their root: none unless ``node`` projects
    a product down; then those of its op type whose activation's key op lies between the
    projections and the product, then the evaluated fusion of its layout (separate or packed
    projections; both where the walk back did not reach the projections).

    Why: a rule set tries every rule at every node, and the commuted variants of all forms
    number 1,760; tried everywhere, that took 17 s on the 30-layer SmolLM2 export. A
    structural test and the key op leave a handful of variants at a few nodes per layer.
    """
    product = _product_of(node)
    if product is None:
        return []
    interior, roots = _scan.backward_slice(product.outputs[0])
    found: list[Fusion] = []
    for key_op in dict.fromkeys(n.op_type for n in interior):
        found += _BY_KEY.get((node.op_type, key_op), ())
    if node.op_type in ("MatMul", "Add"):
        packed = {r.op_type in _scan.SPLITTERS for r in roots} or {False, True}
        found += [f for f in EVALUATED if f.packed in packed]
    return found


# ------------------------------------------------------------------- finishing a node

def finish(node: ir.Node, function: ir.Function, rule: str, replaced: tuple[str, ...]) -> FusedNode:
    """Document and type a fresh fused node; return its report entry."""
    _untranspose_function(function)
    _repack_function(node, function)
    w_gate = node.inputs[1]  # the rewrite always gives the fused node its W_gate
    shape = _safety.constant_shape(w_gate) if w_gate is not None else None
    d, d_ff = shape if shape is not None else (0, 0)
    activation = node.attributes["activation"].as_string()
    biased = len(node.inputs) > _SPEC.required_inputs
    formula = _SPEC.describe({"activation": activation}, _SPEC.input_names[:len(node.inputs)])
    node.doc_string = (f"onnxfuse: gated MLP fused by {rule}: {formula}; d={d}, d_ff={d_ff}; "
                       f"the function {_SPEC.qualified_name} (overload {node.overload!r}) holds "
                       "the original nodes")
    node.metadata_props.update({"onnxfuse.d": str(d), "onnxfuse.d_ff": str(d_ff)})
    # Y has the type of W_gate (check_candidate knew it) and the shape of X, where known.
    x, y = node.inputs[0], node.outputs[0]
    dtype = _safety.element_type(w_gate)
    if not y.dtype and dtype is not None:
        y.dtype = dtype
    if x is not None and y.shape is None and x.shape is not None:
        y.shape = x.shape
    return FusedNode(str(node.name), rule, activation, int(d), int(d_ff), biased, replaced)


# ------------------------------------------------------------------------- near misses

def _reason(graph: ir.Graph, down: ir.Node, mul: ir.Node, sides: list[list[ir.Node]],
            roots: list[ir.Node]) -> str:
    """The first reason this candidate is not safe or not recognised."""
    name = _scan.node_name
    outputs = set(graph.outputs)
    for node in [*roots, down]:
        projection = node.inputs[0].producer() if node.op_type in _scan.SPLITTERS and node.inputs[0] else node
        how = _scan.quantized(projection) if projection is not None and _scan.is_projection(projection) else None
        if how is not None:
            return f"quantized projection ({how}): {_SPEC.op_type} takes float weights, so nothing is fused"
    if any(r.op_type in _scan.SPLITTERS for r in roots):
        return _structure_reason(down)
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
        return f"the product Mul {name(mul)} broadcasts: {list(a.shape)} * {list(b.shape)}"
    interior = [mul, *sides[0], *sides[1], *roots]
    members = {id(n) for n in [down, *interior]}
    for node in interior:
        for out in node.outputs:
            if out in outputs:
                return f"{out.name} (from {name(node)}) is a graph output"
            for user, _ in out.uses():
                if id(user) not in members:
                    return f"{out.name} (from {name(node)}) has another consumer: {name(user)}"
    # The gate is the side with the activation: the one with more nodes.
    gate, up = (0, 1) if len(sides[0]) >= len(sides[1]) else (1, 0)
    weights = [roots[gate].inputs[1], roots[up].inputs[1], down.inputs[1]]
    if gemm:
        biases = [n.inputs[2] if len(n.inputs) > 2 else None for n in (roots[gate], roots[up], down)]
    else:
        biases = [_bias_after(roots[gate]), _bias_after(roots[up]), _bias_after(down)]
    w_gate, w_up, w_down = weights
    if x0 is not None and w_gate is not None and w_up is not None and w_down is not None:
        failure = check_candidate(x0, w_gate, w_up, w_down,
                                  biases if any(b is not None for b in biases) else None, gemm=gemm)
        if failure is not None:
            return failure.text
    if not any(sides):
        return "no activation between the projections and the product (a bilinear layer)"
    if gemm:
        return _activation_reason([n for side in sides for n in side], None)
    return _structure_reason(down)


def _structure_reason(down: ir.Node) -> str:
    """Why the evaluated fusion leaves the MLP that ``down`` (or the bias Add after it) ends."""
    users = list(down.outputs[0].uses())
    root = users[0][0] if len(users) == 1 and _split_bias(users[0][0]) is not None else down
    found = _structure(root)
    if isinstance(found, str):
        return found
    failure = _evaluated_reason(**_bindings(found))  # type: ignore[arg-type]  # the bindings' types
    return failure.text if failure is not None else "a gated MLP no fusion matched"


def _bias_after(node: ir.Node) -> ir.Value | None:
    """The constant added right after ``node``'s output, if any."""
    users = list(node.outputs[0].uses())
    if len(users) != 1 or users[0][0].op_type != "Add":
        return None
    add = users[0][0]
    other = add.inputs[1 - users[0][1]] if len(add.inputs) == 2 else None
    return other if other is not None and _safety.is_constant(other) else None


def scan(graph: ir.Graph) -> list[NearMiss]:
    """Every unfused gated-MLP candidate in ``graph`` with the reason it was left alone.

    A candidate is ``MatMul(Mul(a, b), W)`` (a Gemm or a quantized matmul too) where ``a``
    and ``b`` each lead back, through element-wise ops, to a projection of one shared input
    (a MatMul, Gemm or quantized matmul, or a Split or Slice part of a packed one).
    """
    found = []
    for down in graph:
        if not _scan.is_projection(down):
            continue
        product = down.inputs[0]  # present: is_projection checked it
        mul = product.producer() if product is not None else None
        if mul is None or mul.op_type != "Mul" or not _scan.standard_node(mul, 2) or None in mul.inputs:
            continue
        factors = [v for v in mul.inputs if v is not None]  # all of them, as just checked
        sides, side_roots = zip(*(_scan.backward_slice(v) for v in factors), strict=True)
        if any(len(r) != 1 for r in side_roots):
            continue  # a side that is not one projection (or a constant scale): not an MLP
        roots = [side_roots[0][0], side_roots[1][0]]
        if all(map(_scan.is_matmul_nbits, (*roots, down))):
            continue  # three MatMulNBits projections: the quantized family's (rules/gated_mlp_nbits.py)
        if roots[0] is roots[1] and roots[0].op_type not in _scan.SPLITTERS:
            continue  # both factors from one projection: not gated
        ordered = [n for n in graph if n in {*sides[0], *sides[1], *roots, mul, down}]
        found.append(NearMiss(_scan.node_name(down), tuple(_scan.node_name(n) for n in ordered),
                              _reason(graph, down, mul, list(sides), roots)))
    return found


FAMILY = Family(op=_SPEC, fusions=(*FUSIONS, *EVALUATED), candidates=candidates, finish=finish, scan=scan)
"""The gated-MLP family, as the pass reads it."""
