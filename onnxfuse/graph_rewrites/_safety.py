"""Generic checks on matched values: constant weights, static shapes, element types, Gemm
attributes. A family's own safety rules (which shapes must agree, which dtypes it takes) live
in its rule file and build on these."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import onnx_ir as ir

__all__ = ["COLUMNS_OF", "TRANSPOSED_FROM", "Reason", "constant_shape", "dequantized", "element_type",
           "gemm_attributes_ok", "is_constant", "is_standard"]

TRANSPOSED_FROM = "onnxfuse.transposed_from"
"""``Value.meta`` key of an initializer a fusion stores transposed (computed when the model is
saved): the value it is the transpose of."""
COLUMNS_OF = "onnxfuse.columns_of"
"""``Value.meta`` key of an initializer a fusion stores as some columns of a packed weight
(computed when the model is saved): ``(the packed weight's value, the column indices)``."""


@dataclasses.dataclass(frozen=True)
class Reason:
    """Why a candidate is not fused, with the values or nodes at fault."""

    text: str
    sources: tuple[ir.Value | ir.Node, ...] = ()


def is_standard(node: ir.Node) -> bool:
    """Whether ``node`` is of the ONNX domain (``""`` or its alias ``"ai.onnx"``)."""
    return node.domain in ("", "ai.onnx")


def _producer_chain_constant(value: ir.Value) -> tuple[bool, tuple[int, ...] | None]:
    """Whether ``value`` is a constant weight (initializer, Constant, a 2-D Transpose of one,
    or an Identity of one: exporters write equal initializers once and the other uses as
    Identity nodes) and its static shape."""
    if value.is_initializer() or value.const_value is not None:
        shape = value.shape if value.shape is not None else (
            value.const_value.shape if value.const_value is not None else None)
        return True, _dims(shape)
    node = value.producer()
    if node is None:
        return False, None
    if node.op_type == "Constant" and is_standard(node):
        attr = node.attributes.get("value")
        tensor = attr.as_tensor() if attr is not None else None
        return tensor is not None, _dims(tensor.shape) if tensor is not None else None
    if node.op_type == "Identity" and is_standard(node) and node.inputs and node.inputs[0] is not None:
        return _producer_chain_constant(node.inputs[0])
    if node.op_type == "Transpose" and is_standard(node) and node.inputs and node.inputs[0] is not None:
        perm = node.attributes.get("perm")
        if perm is not None and list(perm.as_ints()) != [1, 0]:
            return False, None
        ok, dims = _producer_chain_constant(node.inputs[0])
        return ok, tuple(reversed(dims)) if ok and dims is not None else None
    return False, None


def _dims(shape: Iterable[object] | None) -> tuple[int, ...] | None:
    """The dimensions of ``shape`` if every one is static, else ``None``."""
    if shape is None:
        return None
    dims = tuple(shape)
    static = tuple(d for d in dims if isinstance(d, int))
    return static if len(static) == len(dims) else None


def is_constant(value: ir.Value) -> bool:
    return _producer_chain_constant(value)[0]


def constant_shape(value: ir.Value) -> tuple[int, ...] | None:
    return _producer_chain_constant(value)[1]


def element_type(value: ir.Value | None) -> ir.DataType | None:
    """The element type of ``value``, from its annotation, its constant, or the constant it
    is a Transpose or an Identity of; ``None`` if unknown."""
    if value is None:
        return None
    if value.dtype is not None:
        return value.dtype
    if value.const_value is not None:
        return value.const_value.dtype
    # Without shape inference a Transpose of a weight (or a Constant) has no type annotation:
    # read it from the source, as _producer_chain_constant reads the shape.
    node = value.producer()
    if node is None or not is_standard(node):
        return None
    if node.op_type in ("Transpose", "Identity"):
        return element_type(node.inputs[0]) if node.inputs else None
    attr = node.attributes.get("value") if node.op_type == "Constant" else None
    return attr.as_tensor().dtype if attr is not None else None


def gemm_attributes_ok(node: ir.Node) -> bool:
    """Whether a Gemm computes ``A @ B.T + C`` exactly (alpha = beta = 1, transA = 0,
    transB = 1), the only Gemm a linear layer exports to."""
    def attr(name: str, default: float) -> float:
        a = node.attributes.get(name)
        return default if a is None else a.value
    return (attr("alpha", 1.0) == 1.0 and attr("beta", 1.0) == 1.0 and attr("transA", 0) == 0
            and attr("transB", 0) == 1)


def dequantized(value: ir.Value | None) -> ir.Node | None:
    """The ``DequantizeLinear`` node ``value`` comes from (through Transposes and Identities),
    if any: a quantized weight, which a float-weight fusion must leave alone."""
    node = value.producer() if value is not None else None
    while node is not None and is_standard(node) and node.op_type in ("Transpose", "Identity") \
            and node.inputs and node.inputs[0] is not None:
        node = node.inputs[0].producer()
    return node if node is not None and node.op_type == "DequantizeLinear" else None
