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
from typing import Any, Protocol

__all__ = [
    "DOMAIN",
    "ELEMENT_TYPES",
    "FUSED_GATED_MLP",
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
    """One input slot of a fused op."""

    name: str
    shape: str
    optional: bool = False


@dataclasses.dataclass(frozen=True)
class Attribute:
    """A string attribute with a closed set of values; a value's code is its index."""

    name: str
    values: tuple[str, ...]
    default: str

    def code(self, value: str) -> int:
        """The code of ``value``.

        Raises:
            ValueError: ``value`` is not one of :attr:`values` (the message lists them).
        """
        if value not in self.values:
            raise ValueError(f"unknown {self.name} {value!r}: choose one of {', '.join(self.values)}")
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
    attributes: tuple[Attribute, ...]
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

    def attribute(self, name: str) -> Attribute:
        for attribute in self.attributes:
            if attribute.name == name:
                return attribute
        raise KeyError(f"{self.qualified_name} has no attribute {name!r}")

    def matches(self, node: _NodeLike) -> bool:
        """Whether ``node`` (anything with ``domain`` and ``op_type``) is a node of this op."""
        return node.domain == self.domain and node.op_type == self.op_type

    def describe(self, attributes: Mapping[str, str], present: Iterable[str]) -> str:
        """The formula of one node: its attribute values filled in, absent optional inputs'
        terms dropped (``present``: the names of the inputs the node gives)."""
        given = set(present)

        def optional_term(m: re.Match[str]) -> str:
            return m.group(1) if m.group(2) in given else ""

        text = re.sub(r"\[([^\[\]]*?(\w+))\]", optional_term, self.formula)
        values = {a.name: attributes.get(a.name, a.default) for a in self.attributes}
        return text.format(**values)


def _gated_mlp_reference(X: Any, W_gate: Any, W_up: Any, W_down: Any, B_gate: Any = None,
                         B_up: Any = None, B_down: Any = None, *, activation: str) -> tuple[Any]:
    """:data:`FUSED_GATED_MLP`'s ``Y``, in float64 (the :attr:`OpSpec.reference` of the op)."""
    import numpy as np

    from onnxfuse.numerics import erf64, matmul64, to_float64

    def project(x: Any, w: Any, b: Any) -> Any:
        y = matmul64(x, w)
        return y if b is None else y + to_float64(b)

    g, u = project(X, W_gate, B_gate), project(X, W_up, B_up)
    if activation == "silu":
        a = g / (1.0 + np.exp(-g))
    elif activation == "gelu":
        a = 0.5 * g * (1.0 + erf64(g / np.sqrt(2.0)))
    elif activation == "gelu_tanh":
        a = 0.5 * g * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (g + 0.044715 * g**3)))
    else:
        raise ValueError(f"the reference has no activation {activation!r}")
    return (project(a * u, W_down, B_down),)


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
    attributes=(Attribute("activation", ("silu", "gelu", "gelu_tanh"), "silu"),),
    formula="{activation}(X @ W_gate[ + B_gate]) * (X @ W_up[ + B_up]) @ W_down[ + B_down]",
    rules="onnxfuse.graph_rewrites.rules.gated_mlp",
    kernel="onnxfuse.kernels.triton.gated_mlp:fused_gated_mlp",
    reference=_gated_mlp_reference,
)
"""``Y = (act(X @ W_gate + B_gate) * (X @ W_up + B_up)) @ W_down + B_down``; weights in ONNX
MatMul layout [K, N]; the three biases are given all together or not at all."""

REGISTRY: tuple[OpSpec, ...] = (FUSED_GATED_MLP,)
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
                 "inputs": [{"name": i.name, "optional": i.optional} for i in s.inputs],
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
            lines += [
                f"constexpr const char* {p}_{a.name}_Name = {_c_string(a.name)};",
                f"constexpr const char* {p}_{a.name}_Values[] = {{{', '.join(map(_c_string, a.values))}}};",
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
