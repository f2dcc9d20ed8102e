"""The fused-op registry: every fused op's contract, declared once.

Each :class:`OpSpec` says what a fused node of that op is: its domain, name and version, its
inputs (in slot order, with the optional ones marked), its attributes with their values (a
value's code is its index, which is what kernels and the native plugin receive), the element
types it takes, and the formula reports print. graph_rewrites, kernels, the native plugin
(through the C header :func:`c_header` writes at build time) and pipeline all read it; none
restates it.

This module imports nothing but the standard library: ``setup.py`` loads it by path to
generate the plugin's header before onnxfuse's dependencies exist.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Generic, Protocol, TypeVar

__all__ = [
    "DOMAIN",
    "ELEMENT_TYPES",
    "FUSED_GATED_MLP",
    "FUSED_GATED_MLP_NBITS",
    "OPSET_VERSION",
    "PRECISIONS",
    "REGISTRY",
    "Attribute",
    "Input",
    "OpSpec",
    "c_header",
    "contract",
    "find",
    "is_fused",
]

DOMAIN = "onnxfuse"
"""The ONNX domain of every fused op (one opset, one version: :data:`OPSET_VERSION`)."""
OPSET_VERSION = 1

ELEMENT_TYPES: dict[str, int] = {"float32": 1, "float16": 10, "bfloat16": 16}
"""Element types a fused op's float operands may have: name -> ONNX ``TensorProto`` code."""

PRECISIONS = ("tf32", "ieee")
"""float32 dot precisions of the Triton kernels (a session setting, not an attribute): a
precision's code is its index."""


@dataclasses.dataclass(frozen=True)
class Input:
    """One input slot of a fused op.

    Attributes:
        element_type: ``None``: the op's float type T (one of :attr:`OpSpec.element_types`,
            the same for every such input); else the one ONNX element type the slot takes
            (``"uint8"``: packed quantized weights and zero points).
    """

    name: str
    shape: str
    optional: bool = False
    element_type: str | None = None


V = TypeVar("V", str, int)


@dataclasses.dataclass(frozen=True)
class Attribute(Generic[V]):
    """An attribute with a closed set of values (strings, or integers such as a quantized
    weight's ``bits``); a value's code is its index. The ONNX attribute is a string or an int
    as its values are."""

    name: str
    values: tuple[V, ...]
    default: V

    @property
    def is_int(self) -> bool:
        return isinstance(self.default, int)

    def code(self, value: V) -> int:
        """The code of ``value``.

        Raises:
            ValueError: ``value`` is not one of :attr:`values` (the message lists them).
        """
        if value not in self.values:
            raise ValueError(f"unknown {self.name} {value!r}: choose one of {', '.join(map(str, self.values))}")
        return self.values.index(value)


class _NodeLike(Protocol):
    domain: str
    op_type: str


@dataclasses.dataclass(frozen=True)
class OpSpec:
    """One fused op's contract.

    Attributes:
        op_id: a small integer naming the op across the Python/C++ bridge (stable).
        op_type: the node's ``op_type`` (also the function's name).
        inputs: in slot order; optional inputs come after the required ones.
        formula: what the node computes, for reports: ``{attr}`` is replaced by the node's
            attribute value, and a ``[ ... NAME]`` part is kept only when input NAME is given.
        rules: the graph_rewrites module of the op's fusion family (it declares ``FAMILY``);
            the rewrite tries the families in registry order (``None``: nothing fuses into it).
        kernel: the Python kernel the native plugin's ``triton`` backend launches for a node,
            as ``"module:function"`` (imported when first called; ``None``: the op has none).
            It is called with the inputs in slot order (``None`` for an absent optional one),
            every attribute by name, ``precision=`` and ``out=``.
        reference: what a node computes, as numpy in float64: called with the inputs in slot
            order as arrays (``None`` for an absent optional one) and every attribute by
            name, it returns the outputs, in order. The rewrite checks every fusion it makes
            against it (``None``: the op is never fused). It may import numpy inside (this
            module imports only the standard library) and reads each weight one block at a
            time (weights may be a 7B model's).
    """

    op_id: int
    op_type: str
    inputs: tuple[Input, ...]
    outputs: tuple[str, ...]
    attributes: tuple[Attribute[Any], ...]
    formula: str
    rules: str | None = None
    kernel: str | None = None
    reference: Callable[..., tuple[Any, ...]] | None = None
    element_types: tuple[str, ...] = tuple(ELEMENT_TYPES)
    domain: str = DOMAIN
    version: int = OPSET_VERSION

    @property
    def qualified_name(self) -> str:
        return f"{self.domain}::{self.op_type}"

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(i.name for i in self.inputs)

    @property
    def required_inputs(self) -> int:
        """How many leading inputs every node gives."""
        return sum(1 for i in self.inputs if not i.optional)

    def attribute(self, name: str) -> Attribute[Any]:
        for attribute in self.attributes:
            if attribute.name == name:
                return attribute
        raise KeyError(f"{self.qualified_name} has no attribute {name!r}")

    def matches(self, node: _NodeLike) -> bool:
        """Whether ``node`` (anything with ``domain`` and ``op_type``) is a node of this op."""
        return node.domain == self.domain and node.op_type == self.op_type

    def describe(self, attributes: Mapping[str, object], present: Iterable[str]) -> str:
        """The formula of one node: its attribute values filled in, absent optional inputs'
        terms dropped (``present``: the names of the inputs the node gives)."""
        given = set(present)

        def optional_term(m: re.Match[str]) -> str:
            return m.group(1) if m.group(2) in given else ""

        text = re.sub(r"\[([^\[\]]*?(\w+))\]", optional_term, self.formula)
        values = {a.name: attributes.get(a.name, a.default) for a in self.attributes}
        return text.format(**values)


def _activate(g: Any, activation: str) -> Any:
    """``activation`` of ``g`` in float64 (every value of :data:`ACTIVATION`)."""
    import numpy as np

    from onnxfuse.numerics import erf64

    if activation == "silu":
        return g / (1.0 + np.exp(-g))
    if activation == "gelu":
        return 0.5 * g * (1.0 + erf64(g / np.sqrt(2.0)))
    if activation == "gelu_tanh":
        return 0.5 * g * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (g + 0.044715 * g**3)))
    raise ValueError(f"the reference has no activation {activation!r}")


def _gated_mlp_reference(X: Any, W_gate: Any, W_up: Any, W_down: Any, B_gate: Any = None,
                         B_up: Any = None, B_down: Any = None, *, activation: str) -> tuple[Any]:
    """:data:`FUSED_GATED_MLP`'s ``Y``, in float64 (the :attr:`OpSpec.reference` of the op)."""
    from onnxfuse.numerics import matmul64, to_float64

    def project(x: Any, w: Any, b: Any) -> Any:
        y = matmul64(x, w)
        return y if b is None else y + to_float64(b)

    g, u = project(X, W_gate, B_gate), project(X, W_up, B_up)
    return (project(_activate(g, activation) * u, W_down, B_down),)


def _gated_mlp_nbits_reference(X: Any, Q_gate: Any, S_gate: Any, Q_up: Any, S_up: Any, Q_down: Any,
                               S_down: Any, Z_gate: Any = None, Z_up: Any = None, Z_down: Any = None,
                               B_gate: Any = None, B_up: Any = None, B_down: Any = None, *,
                               activation: str, bits: int, block_size: int,
                               accuracy_level: int = 0) -> tuple[Any]:
    """:data:`FUSED_GATED_MLP_NBITS`'s ``Y``, in float64: each projection dequantized as ORT's
    ``com.microsoft::MatMulNBits`` defines it (:func:`onnxfuse.numerics.matmul_nbits64`).
    ``accuracy_level`` only allows a kernel to compute in lower precision (ORT's level 4
    quantizes X to int8): the reference is exact."""
    from onnxfuse.numerics import matmul_nbits64, to_float64

    d, d_ff = X.shape[-1], Q_gate.shape[0]

    def project(x: Any, q: Any, s: Any, z: Any, b: Any, k: int, n: int) -> Any:
        y = matmul_nbits64(x, q, s, z, k=k, n=n, bits=bits, block_size=block_size)
        return y if b is None else y + to_float64(b)

    g = project(X, Q_gate, S_gate, Z_gate, B_gate, d, d_ff)
    u = project(X, Q_up, S_up, Z_up, B_up, d, d_ff)
    return (project(_activate(g, activation) * u, Q_down, S_down, Z_down, B_down, d_ff, Q_down.shape[0]),)


ACTIVATION: Attribute[str] = Attribute("activation", ("silu", "gelu", "gelu_tanh"), "silu")
"""The gated MLPs' activation (every gated-MLP op carries this one attribute)."""

FUSED_GATED_MLP = OpSpec(
    op_id=0,
    op_type="FusedGatedMLP",
    inputs=(
        Input("X", "[..., d]"),
        Input("W_gate", "[d, d_ff]"),
        Input("W_up", "[d, d_ff]"),
        Input("W_down", "[d_ff, d]"),
        Input("B_gate", "[d_ff]", optional=True),
        Input("B_up", "[d_ff]", optional=True),
        Input("B_down", "[d]", optional=True),
    ),
    outputs=("Y",),
    attributes=(ACTIVATION,),
    formula="{activation}(X @ W_gate[ + B_gate]) * (X @ W_up[ + B_up]) @ W_down[ + B_down]",
    rules="onnxfuse.graph_rewrites.rules.gated_mlp",
    kernel="onnxfuse.kernels.triton.gated_mlp:fused_gated_mlp",
    reference=_gated_mlp_reference,
)
"""``Y = (act(X @ W_gate + B_gate) * (X @ W_up + B_up)) @ W_down + B_down``; weights in ONNX
MatMul layout [K, N]; the three biases are given all together or not at all."""

FUSED_GATED_MLP_NBITS = OpSpec(
    op_id=1,
    op_type="FusedGatedMLPNBits",
    inputs=(
        Input("X", "[..., d]"),
        Input("Q_gate", "[d_ff, kb_d, blob]", element_type="uint8"),
        Input("S_gate", "[d_ff * kb_d]"),
        Input("Q_up", "[d_ff, kb_d, blob]", element_type="uint8"),
        Input("S_up", "[d_ff * kb_d]"),
        Input("Q_down", "[d, kb_ff, blob]", element_type="uint8"),
        Input("S_down", "[d * kb_ff]"),
        Input("Z_gate", "[d_ff * zb_d]", optional=True, element_type="uint8"),
        Input("Z_up", "[d_ff * zb_d]", optional=True, element_type="uint8"),
        Input("Z_down", "[d * zb_ff]", optional=True, element_type="uint8"),
        Input("B_gate", "[d_ff]", optional=True),
        Input("B_up", "[d_ff]", optional=True),
        Input("B_down", "[d]", optional=True),
    ),
    outputs=("Y",),
    attributes=(ACTIVATION, Attribute("bits", (2, 4, 8), 4), Attribute("block_size", (16, 32, 64, 128, 256), 32),
                Attribute("accuracy_level", (0, 1, 2, 3, 4), 0)),
    formula="{activation}(X @ W(Q_gate, S_gate[, Z_gate])[ + B_gate]) * (X @ W(Q_up, S_up[, Z_up])[ + B_up]) "
            "@ W(Q_down, S_down[, Z_down])[ + B_down]; int{bits}, block {block_size}",
    rules="onnxfuse.graph_rewrites.rules.gated_mlp_nbits",
    reference=_gated_mlp_nbits_reference,
)
"""The gated MLP over ``com.microsoft::MatMulNBits`` projections: each projection's packed
weight ``Q`` ([N, ceil(K / block_size), block_size * bits / 8] uint8), scales ``S`` (N x blocks,
type T) and optional packed zero points ``Z`` (uint8, N rows of ceil(blocks * bits / 8) bytes;
absent: 2^(bits-1)) exactly as MatMulNBits stores them, dequantized ``W[k, n] = (q - z) * s``.
One ``bits``, ``block_size`` and ``accuracy_level`` for all three projections; ``K`` and ``N``
are not attributes: gate and up take K = d (X's last dim), N = d_ff (Q_gate's rows), down the
reverse. Zero points and biases are each given for all three projections or for none. No
native kernel yet: every session runs the node's function body (the original MatMulNBits
nodes, ORT's own kernels)."""

REGISTRY: tuple[OpSpec, ...] = (FUSED_GATED_MLP, FUSED_GATED_MLP_NBITS)
"""Every fused op, in ``op_id`` order."""


def find(node: _NodeLike) -> OpSpec | None:
    """The spec of the fused op ``node`` is a node of, or ``None`` for any other node."""
    for spec in REGISTRY:
        if spec.matches(node):
            return spec
    return None


def is_fused(node: _NodeLike) -> bool:
    """Whether ``node`` is a node of any registered fused op."""
    return find(node) is not None


def contract() -> dict[str, object]:
    """The registry as plain data: what the native plugin was built with must equal this
    (the plugin returns the same JSON, embedded from :func:`c_header`)."""
    return {
        "domain": DOMAIN, "version": OPSET_VERSION, "element_types": ELEMENT_TYPES,
        "precisions": list(PRECISIONS),
        "ops": [{"op_id": s.op_id, "op_type": s.op_type,
                 "inputs": [{"name": i.name, "optional": i.optional,
                             **({"element_type": i.element_type} if i.element_type else {})} for i in s.inputs],
                 "outputs": list(s.outputs),
                 "attributes": [{"name": a.name, "values": list(a.values), "default": a.default}
                                for a in s.attributes],
                 "element_types": list(s.element_types)} for s in REGISTRY],
    }


def _c_string(text: str) -> str:
    return json.dumps(text)  # a JSON string of ASCII text is a valid C string literal


def c_header() -> str:
    """The C++ header the native plugin is compiled with (``onnxfuse_ops.h``): the registry's
    facts as constants, and :func:`contract` as a string the plugin hands back for the test
    that C++ and Python agree."""
    lines = [
        "// Generated from onnxfuse/ops.py by onnxfuse.ops.c_header() at build time: do not edit.",
        "#pragma once",
        "#include <cstdint>",
        "",
        "namespace onnxfuse_ops {",
        f"constexpr const char* kDomain = {_c_string(DOMAIN)};",
        f"constexpr int kOpsetVersion = {OPSET_VERSION};",
        *(f"constexpr int32_t kElementType_{name} = {code};" for name, code in ELEMENT_TYPES.items()),
        f"constexpr const char* kPrecisions[] = {{{', '.join(map(_c_string, PRECISIONS))}}};",
        f"constexpr int kNumPrecisions = {len(PRECISIONS)};",
        f"constexpr int kMaxInputs = {max(len(s.inputs) for s in REGISTRY)};",
        f"constexpr int kMaxOutputs = {max(len(s.outputs) for s in REGISTRY)};",
        f"constexpr int kMaxAttributes = {max(len(s.attributes) for s in REGISTRY)};",
        "",
        "// X-macros: X(op_type) for every op; X(element type name) for every type an op takes.",
        f"#define ONNXFUSE_FOR_EACH_OP(X) {' '.join(f'X({s.op_type})' for s in REGISTRY)}",
        *(f"#define ONNXFUSE_{s.op_type}_FOR_EACH_ELEMENT_TYPE(X) "
          f"{' '.join(f'X({t})' for t in s.element_types)}" for s in REGISTRY),
    ]
    for spec in REGISTRY:
        p = f"k{spec.op_type}"
        lines += [
            "",
            f"// {spec.qualified_name}: {spec.formula}",
            f"constexpr int32_t {p}_Id = {spec.op_id};",
            f"constexpr const char* {p}_Name = {_c_string(spec.op_type)};",
            f"constexpr int {p}_NumInputs = {len(spec.inputs)};",
            f"constexpr int {p}_RequiredInputs = {spec.required_inputs};",
            f"constexpr const char* {p}_Inputs[] = {{{', '.join(_c_string(i.name) for i in spec.inputs)}}};",
            f"constexpr int {p}_NumOutputs = {len(spec.outputs)};",
            f"constexpr int {p}_NumAttributes = {len(spec.attributes)};",
        ]
        for a in spec.attributes:
            values = ", ".join(map(str, a.values)) if a.is_int else ", ".join(map(_c_string, a.values))
            lines += [
                f"constexpr const char* {p}_{a.name}_Name = {_c_string(a.name)};",
                f"constexpr {'int64_t' if a.is_int else 'const char*'} {p}_{a.name}_Values[] = {{{values}}};",
                f"constexpr int {p}_{a.name}_Count = {len(a.values)};",
                f"constexpr int {p}_{a.name}_Default = {a.values.index(a.default)};",
            ]
    lines += [
        "",
        f"constexpr const char* kContract = {_c_string(json.dumps(contract(), sort_keys=True))};",
        "}  // namespace onnxfuse_ops",
        "",
    ]
    return "\n".join(lines)
