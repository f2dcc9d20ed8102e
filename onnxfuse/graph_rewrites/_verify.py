"""The semantic check: every fusion is verified where it is made.

A fused node's function body is the original subgraph, so a fused model run without the
plugin computes what the original did, whatever the node claims: a node with W_gate and W_up
swapped in its slots (and in its function's formal inputs, as a wrong pattern binding would
produce), or with the wrong ``activation``, passes every comparison that runs the body. Only
the fused op's own kernel would read the slots and the attribute, and it may never run here.

So before a fusion is made, :func:`verify` evaluates the op's reference from the registry
(:attr:`onnxfuse.ops.OpSpec.reference`, on the fused node's own inputs in slot order and its
attributes) and the matched nodes themselves (a small numpy interpreter of the ONNX ops the
patterns match), both in float64, on a few probe rows, and compares them with the tolerance
of the model's element type (:func:`onnxfuse.numerics.tolerance`). Both read each weight one
block at a time (:func:`onnxfuse.numerics.matmul64`), and a weight's memory map is released
after the check, so a 7B model's layer costs a few milliseconds and no float64 copy.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import cast

import numpy as np
import onnx_ir as ir

from onnxfuse import numerics, ops
from onnxfuse.errors import first_line
from onnxfuse.graph_rewrites import _interpret, _safety

__all__ = ["PROBE_ROWS", "verify"]

log = logging.getLogger(__name__)

PROBE_ROWS = 2
"""Rows of the probe input. One would see a wrong weight or activation (every output element
depends on every weight and every intermediate column); the cost is reading the weights,
plus a product per row (4 rows cost SmolLM2's rewrite 0.2 s more than 2)."""
_PREFIX = "semantic check failed"
# The registry's element types are numerics.DType's values (tests/test_ops.py holds them equal).
_DTYPES = cast("dict[ir.DataType, numerics.DType]",
               {ir.DataType(code): name for name, code in ops.ELEMENT_TYPES.items()})


class _Constants:
    """The constant inputs of the matched nodes and of the fused node, as arrays (read once,
    shared by both sides); the memory maps of the external ones are released afterwards."""

    def __init__(self) -> None:
        self._arrays: dict[int, np.ndarray] = {}
        self._external: list[ir.ExternalTensor] = []

    def array(self, value: ir.Value) -> np.ndarray:
        found = self._arrays.get(id(value))
        if found is None:
            found = self._arrays[id(value)] = self._read(value)
        return found

    def _read(self, value: ir.Value) -> np.ndarray:
        source = value.meta.get(_safety.TRANSPOSED_FROM)
        if source is not None:  # a weight the rewrite stores transposed when the model is saved
            return self.array(source).T
        columns = value.meta.get(_safety.COLUMNS_OF)
        if columns is not None:  # a part of a packed weight the rewrite stores when it saves
            return self.array(columns[0])[:, columns[1]]
        tensor = value.const_value
        node = value.producer()
        if tensor is None and node is not None and _safety.is_standard(node):
            if node.op_type == "Constant" and "value" in node.attributes:
                tensor = node.attributes["value"].as_tensor()
            elif node.op_type == "Identity" and node.inputs and node.inputs[0] is not None:
                return self.array(node.inputs[0])
            elif node.op_type == "Transpose" and node.inputs and node.inputs[0] is not None:
                perm = node.attributes.get("perm")
                if perm is None or list(perm.as_ints()) == [1, 0]:
                    return self.array(node.inputs[0]).T
        if tensor is None:
            raise ValueError(f"{value.name} is neither the input nor a constant")
        if isinstance(tensor, ir.ExternalTensor):
            self._external.append(tensor)
        return tensor.numpy()

    def release(self) -> None:
        """Drop the arrays and release the memory maps (their pages would stay resident)."""
        self._arrays.clear()
        for tensor in self._external:
            try:
                tensor.release()
            except BufferError:  # an array of it is still referenced: it stays mapped
                log.debug("%s stays mapped after the semantic check", tensor.name)


def verify(spec: ops.OpSpec, new_nodes: Sequence[ir.Node], original: Sequence[ir.Node],
           outputs: Sequence[ir.Value], new_outputs: Sequence[ir.Value]) -> str | None:
    """``None`` when the fused node computes what the ``original`` nodes do, else the reason
    (``"semantic check failed: ..."``) the fusion must not be made.

    Args:
        spec: the registry entry of the fused node's op.
        new_nodes: the nodes that would replace ``original`` (the fused node among them),
            not yet in the graph.
        original: the matched nodes, in an order that evaluates them; they read one
            non-constant value.
        outputs: the values of ``original`` that ``new_outputs`` (outputs of ``fused``) replace.
        new_outputs: the outputs of ``fused`` that replace ``outputs``.

    A subgraph that cannot be evaluated (an op the interpreter lacks, a malformed node, a
    hostile model) fails the check with the reason: it never raises.
    """
    constants = _Constants()
    try:
        with np.errstate(all="ignore"):
            fused = next(n for n in new_nodes if spec.matches(n))
            return _verify(spec, fused, original, outputs, new_outputs, constants)
    except Exception as e:  # anything a malformed subgraph makes numpy or onnx_ir raise
        return f"{_PREFIX}: cannot evaluate {spec.op_type} against the matched nodes: {first_line(e)}"
    finally:
        constants.release()


def _verify(spec: ops.OpSpec, fused: ir.Node, original: Sequence[ir.Node],
            outputs: Sequence[ir.Value], new_outputs: Sequence[ir.Value],
            constants: _Constants) -> str | None:
    if spec.reference is None:
        return f"{_PREFIX}: {spec.qualified_name} has no reference to check a fusion against"
    produced = {id(v) for n in original for v in n.outputs}
    read = {id(v): v for n in original for v in n.inputs if v is not None and id(v) not in produced}
    variable = [v for v in read.values() if not _safety.is_constant(v)]
    if len(variable) != 1:
        return f"{_PREFIX}: the matched nodes read {len(variable)} non-constant values, not one"
    x = variable[0]
    if x not in fused.inputs:
        return f"{_PREFIX}: the fused node does not read the matched nodes' input {x.name}"
    dtype = _dtype([*outputs, *fused.inputs])
    if dtype is None:
        return f"{_PREFIX}: the element type is unknown or not one of {', '.join(ops.ELEMENT_TYPES)}"
    slot = list(fused.inputs).index(x)
    args: list[np.ndarray | None] = [None if v is None else constants.array(v) if v is not x else None
                                     for v in fused.inputs]
    rank = len(x.shape) if x.shape is not None else None
    probe = np.random.default_rng(0).standard_normal(_probe_shape(spec, slot, args, rank))
    args[slot] = probe
    args += [None] * (len(spec.inputs) - len(args))
    attributes = {a.name: fused.attributes[a.name].value if a.name in fused.attributes
                  else a.default for a in spec.attributes}
    actual = spec.reference(*args, **attributes)
    expected = _interpret.evaluate(original, {id(x): probe}, outputs, constants.array)
    limit = numerics.tolerance(dtype)
    for value, new, want in zip(outputs, new_outputs, expected, strict=True):
        got = actual[list(fused.outputs).index(new)]
        c = numerics.compare(value.name or "output", got, want, limit=limit)
        if not c.passed:
            return (f"{_PREFIX}: rel err {c.rel_l2:.3g} > {limit:g} ({dtype}) between "
                    f"{spec.op_type}({', '.join(f'{k}={v}' for k, v in attributes.items())})'s "
                    f"reference on its inputs and the matched nodes, on {PROBE_ROWS} probe rows")
    return None


def _dtype(values: Sequence[ir.Value | None]) -> numerics.DType | None:
    """The float element type of the first value whose type is known and not an integer (a
    quantized weight's uint8; the fusion's checks already made the float ones agree)."""
    for value in values:
        known = _safety.element_type(value)
        if known is not None and not known.is_integer():
            return _DTYPES.get(known)
    return None


def _probe_shape(spec: ops.OpSpec, slot: int, args: Sequence[np.ndarray | None],
                 rank: int | None = None) -> tuple[int, ...]:
    """The shape of a probe for input ``slot``, from the registry's shapes: ``...`` is
    :data:`PROBE_ROWS` rows, after leading 1s up to the input's ``rank`` where it is known
    (matched nodes may read an axis by a positive index: the dynamo exporter's ``Split`` of
    a packed projection at ``axis=2``); a named dim is read off a constant input that has it."""
    def dims(i: int) -> list[str]:
        return [d.strip() for d in spec.inputs[i].shape.strip("[]").split(",")]

    shape: list[int] = []
    named = len(dims(slot)) - 1
    for name in dims(slot):
        if name == "...":
            shape += [1] * max(0, (rank or 0) - named - 1) + [PROBE_ROWS]
            continue
        sizes = [a.shape[j] for i, a in enumerate(args) if a is not None and i < len(spec.inputs)
                 for j, d in enumerate(dims(i)) if d == name and j < a.ndim]
        if not sizes:
            raise ValueError(f"no constant input of {spec.op_type} gives dim {name} of {spec.inputs[slot].name}")
        shape.append(sizes[0])
    return tuple(shape)
