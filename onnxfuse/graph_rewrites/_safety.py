"""What is safe to fuse: constant 2-D weights of consistent shapes, one dtype, 1-D biases.

The fusion rules and the near-miss report both decide through :func:`check_candidate`, so a
rejected candidate always carries the same reason as the rule that refused it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import onnx_ir as ir

__all__ = ["Reason", "check_candidate", "constant_shape", "element_type", "gemm_attributes_ok",
           "is_constant"]


@dataclasses.dataclass(frozen=True)
class Reason:
    """Why a candidate is not fused, with the values or nodes at fault."""

    text: str
    sources: tuple[ir.Value | ir.Node, ...] = ()


def _producer_chain_constant(value: ir.Value) -> tuple[bool, tuple[int, ...] | None]:
    """Whether ``value`` is a constant weight (initializer, Constant, or a 2-D Transpose of
    one) and its static shape."""
    if value.is_initializer() or value.const_value is not None:
        shape = value.shape if value.shape is not None else (
            value.const_value.shape if value.const_value is not None else None)
        return True, _dims(shape)
    node = value.producer()
    if node is None:
        return False, None
    if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
        attr = node.attributes.get("value")
        tensor = attr.as_tensor() if attr is not None else None
        return tensor is not None, _dims(tensor.shape) if tensor is not None else None
    if node.op_type == "Transpose" and node.domain in ("", "ai.onnx") and node.inputs[0] is not None:
        perm = node.attributes.get("perm")
        if perm is not None and list(perm.as_ints()) != [1, 0]:
            return False, None
        ok, shape = _producer_chain_constant(node.inputs[0])
        return ok, tuple(reversed(shape)) if ok and shape is not None else None
    return False, None


def _dims(shape: object) -> tuple[int, ...] | None:
    if shape is None:
        return None
    dims = tuple(shape)  # type: ignore[call-overload]
    return dims if all(isinstance(d, int) for d in dims) else None


def is_constant(value: ir.Value) -> bool:
    return _producer_chain_constant(value)[0]


def constant_shape(value: ir.Value) -> tuple[int, ...] | None:
    return _producer_chain_constant(value)[1]


def element_type(value: ir.Value | None) -> ir.DataType | None:
    """The element type of ``value``, from its annotation, its constant, or the constant it
    is a Transpose of; ``None`` if unknown."""
    if value is None:
        return None
    if value.dtype is not None:
        return value.dtype
    if value.const_value is not None:
        return value.const_value.dtype
    # Without shape inference a Transpose of a weight (or a Constant) has no type annotation:
    # read it from the source, as _producer_chain_constant reads the shape.
    node = value.producer()
    if node is None or node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type == "Transpose":
        return element_type(node.inputs[0]) if node.inputs else None
    attr = node.attributes.get("value") if node.op_type == "Constant" else None
    return attr.as_tensor().dtype if attr is not None else None


def gemm_attributes_ok(node: ir.Node) -> bool:
    """Whether a Gemm computes ``A @ B.T + C`` exactly (alpha = beta = 1, transA = 0,
    transB = 1), the only Gemm a linear layer exports to."""
    def attr(name: str, default: float) -> float:
        a = node.attributes.get(name)
        return default if a is None else a.value  # type: ignore[no-any-return]
    return (attr("alpha", 1.0) == 1.0 and attr("beta", 1.0) == 1.0 and attr("transA", 0) == 0
            and attr("transB", 0) == 1)


def check_candidate(x: ir.Value, w_gate: ir.Value, w_up: ir.Value, w_down: ir.Value,
                    biases: Sequence[ir.Value | None] | None, *,
                    gemm: bool = False) -> Reason | None:
    """``None`` if fusing is safe, else the first :class:`Reason` it is not.

    ``gemm``: the weights are in Gemm(transB=1) layout, [N, K] instead of [K, N]."""
    weights = {"W_gate": w_gate, "W_up": w_up, "W_down": w_down}
    shapes: dict[str, tuple[int, ...]] = {}
    for role, w in weights.items():
        ok, shape = _producer_chain_constant(w)
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
    dtypes = {role: element_type(v) for role, v in weights.items()}
    if element_type(x) is not None:
        dtypes["X"] = element_type(x)
    if biases is not None:
        for role, b, size in zip(("B_gate", "B_up", "B_down"), biases, (d_ff, d_ff, d), strict=True):
            if b is None:
                return Reason(f"{role} is missing", ())
            if not is_constant(b):
                return Reason(f"{role} ({b.name}) is not a constant", (b,))
            if constant_shape(b) != (size,):
                return Reason(f"{role} ({b.name}) has shape {constant_shape(b)}, need ({size},)", (b,))
            dtypes[role] = element_type(b)
    if None in dtypes.values() or len(set(dtypes.values())) != 1:
        text = ", ".join(f"{k} {v.name if v is not None else '?'}" for k, v in dtypes.items())
        return Reason(f"element types disagree or are unknown: {text}", (x,))
    dtype = dtypes["W_gate"]
    if dtype not in (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16):
        return Reason(f"element type {dtype.name} is not float, float16 or bfloat16", (x,))  # type: ignore[union-attr]
    return None
