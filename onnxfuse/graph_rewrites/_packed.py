"""Packed projections: one MatMul whose output columns a ``Split`` or ``Slice`` nodes share out.

Exporters write the bounds in several ways: a ``Split`` with ``num_outputs`` or constant
sizes (onnxruntime-genai's builder), ``Slice`` nodes with constant bounds, or bounds computed
from the output's ``Shape`` (``Gather``, ``Add``, ``Div``, ``Mul``: the TorchScript exporter's
``chunk(2)``). :func:`columns` does not read them: it evaluates the splitters and the nodes
computing their bounds (:mod:`._interpret`) on a probe whose every row holds its column
numbers, for a few leading shapes, and reads off which columns each part took.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import onnx_ir as ir

from onnxfuse.graph_rewrites import _interpret, _safety, _scan

__all__ = ["Columns", "columns", "repack"]

# Ops the bounds of a Split or Slice may be computed with, from the packed value's Shape.
_BOUND_OPS = frozenset({"Shape", "Gather", "Add", "Sub", "Mul", "Div", "Cast", "Unsqueeze", "Squeeze",
                        "Concat", "Slice", "Identity"})
# Leading dims of the probes: two shapes per rank, so a bound that reads a leading dim is seen.
_LEADS = ((2, 3, 5), (7, 5, 3))
# Ranks tried when the input's rank is not annotated (TorchScript exports often leave it out).
_RANKS = (2, 3, 4)
_MAX_NODES = 32


@dataclasses.dataclass(frozen=True)
class Columns:
    """What the splitters of a packed value take.

    Attributes:
        nodes: the splitters and the nodes computing their bounds, in an order that evaluates them.
        parts: for each part asked about, the column indices of the packed value it holds.
    """

    nodes: tuple[ir.Node, ...]
    parts: tuple[np.ndarray, ...]


def _bound_nodes(packed: ir.Value, splitters: Sequence[ir.Node]) -> list[ir.Node] | _safety.Reason:
    """The nodes that compute the splitters' bounds from ``packed``'s shape and constants."""
    Reason = _safety.Reason
    found: list[ir.Node] = []
    stack = [v for s in splitters for v in s.inputs[1:] if v is not None]
    while stack:
        value = stack.pop()
        if value.const_value is not None:
            continue
        node = value.producer()
        if node is None or not _safety.is_standard(node) or node.op_type not in _BOUND_OPS:
            what = f"{node.op_type} {_scan.node_name(node)}" if node is not None else f"input {value.name}"
            return Reason(f"the bounds of the packed projection's split read {what}, not only its "
                          "shape and constants", (value,))
        if node in found:
            continue
        if len(found) == _MAX_NODES:
            return Reason(f"the bounds of the packed projection's split take over {_MAX_NODES} nodes", (value,))
        found.append(node)
        if node.op_type == "Shape":
            if node.inputs[0] is not packed:
                return Reason(f"the bounds of the packed projection's split read the shape of "
                              f"{node.inputs[0].name if node.inputs[0] else '?'}", (node,))
            continue
        stack.extend(v for v in node.inputs if v is not None)
    return found


def _constant(value: ir.Value) -> np.ndarray:
    tensor = value.const_value
    if tensor is None or value.is_graph_input():  # a graph input's initializer is only a default
        raise ValueError(f"{value.name} is not a constant")
    return tensor.numpy()


def _probe_columns(nodes: Sequence[ir.Node], packed: ir.Value, parts: Sequence[ir.Value], width: int,
                   lead: tuple[int, ...]) -> list[np.ndarray] | str:
    probe = np.broadcast_to(np.arange(width, dtype=np.float64), (*lead, width))
    results = _interpret.evaluate(nodes, {id(packed): probe}, parts, _constant)
    found = []
    for part, result in zip(parts, results, strict=True):
        result = np.asarray(result)
        if result.shape[:-1] != lead:
            return f"{part.name} is not a slice of the last axis (shape {result.shape} from {(*lead, width)})"
        cols = result.reshape(-1, result.shape[-1])[0] if result.size else np.zeros(0)
        if not np.array_equal(result, np.broadcast_to(cols, result.shape)):
            return f"{part.name} differs between rows"
        found.append(cols.astype(np.int64))
    return found


def _off_last_axis(node: ir.Node, rank: int | None) -> str | None:
    """Why ``node`` (a Split or Slice) may act on another axis than the last, or ``None``:
    probes of a few small leading shapes cannot see a bound on a leading axis that only a
    larger batch reaches (a Slice with axes [0, -1] and end 8 on axis 0)."""
    last = {-1} | ({rank - 1} if rank is not None else set())
    if node.op_type == "Split":
        axis = node.attributes.get("axis")
        value = 0 if axis is None else axis.as_int()
        return None if value in last else f"splits axis {value}"
    axes = node.inputs[3] if len(node.inputs) > 3 else None
    if axes is None or axes.const_value is None or axes.is_graph_input():
        return "has no constant axes (by default it slices the leading axes)"
    values = [int(a) for a in np.ravel(axes.const_value.numpy())]
    return None if values and all(a in last for a in values) else f"slices axes {values}"


def columns(packed: ir.Value, parts: Sequence[ir.Value], width: int, rank: int | None) -> Columns | _safety.Reason:
    """Which columns of ``packed`` (``width`` of them) each of ``parts`` holds.

    Args:
        packed: the packed projection's output.
        parts: outputs of ``Split`` or ``Slice`` nodes that read ``packed``.
        width: the size of ``packed``'s last axis.
        rank: ``packed``'s rank where known: the bounds are evaluated for it, else for ranks
            2, 3 and 4, and must agree.

    Returns a :class:`~._safety.Reason` when a part's splitter is not a Split or Slice of
    ``packed``, its bounds read anything but ``packed``'s shape and constants, or they take
    other columns for another leading shape.
    """
    Reason = _safety.Reason
    splitters: list[ir.Node] = []
    for part in parts:
        node = part.producer()
        if node is None or node.op_type not in _scan.SPLITTERS or not _safety.is_standard(node) \
                or not node.inputs or node.inputs[0] is not packed:
            return Reason(f"{part.name} is not a Split or Slice of {packed.name}", (part,))
        if node not in splitters:
            splitters.append(node)
    for node in splitters:
        off = _off_last_axis(node, rank)
        if off is not None:
            return Reason(f"{_scan.node_name(node)} {off}: a packed projection splits its last axis only",
                          (node,))
    bounds = _bound_nodes(packed, splitters)
    if isinstance(bounds, Reason):
        return bounds
    nodes = _interpret.in_order([*bounds, *splitters])
    agreed: list[np.ndarray] | None = None
    for r in (rank,) if rank is not None else _RANKS:
        for lead in {lead[:max(r - 1, 0)] for lead in _LEADS}:
            try:
                with np.errstate(all="ignore"):
                    found = _probe_columns(nodes, packed, parts, width, lead)
            except Exception as e:  # a bound that does not evaluate for this rank
                return Reason(f"the packed projection's split cannot be evaluated for rank {r}: {e}", tuple(splitters))
            if isinstance(found, str):
                return Reason(f"the packed projection's split: {found}", tuple(splitters))
            if agreed is not None and not all(np.array_equal(a, b) for a, b in zip(agreed, found, strict=True)):
                return Reason("the packed projection's split takes other columns for another input "
                              "shape", tuple(splitters))
            agreed = found
    if agreed is None:  # no rank was tried: a rank annotation of 0
        return Reason(f"{packed.name} has rank {rank}", (packed,))
    return Columns(tuple(nodes), tuple(agreed))


def repack(parts: Sequence[np.ndarray], width: int) -> tuple[list[int], np.ndarray | None] | None:
    """How to rebuild the packed value from its parts: ``(the parts' concatenation order, the
    column order to gather from that, or None where it is already in order)``; ``None``
    unless the parts share out all ``width`` columns exactly once.

    The parts are concatenated in the order of their first column, so contiguous halves in
    either order (gate first, or up first) need no gather."""
    joined = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    if joined.size != width or not np.array_equal(np.sort(joined), np.arange(width)):
        return None
    first = sorted(range(len(parts)), key=lambda i: int(parts[i][0]) if parts[i].size else -1)
    order = np.argsort(np.concatenate([parts[i] for i in first]))
    return first, None if np.array_equal(order, np.arange(width)) else order
