"""Fused models that lie: a ``FusedGatedMLP`` node whose function body is the original MLP
but whose slots or ``activation`` say something else.

Run without the plugin (ORT inlines the body), such a model computes exactly what the
original does, so every comparison that runs the body passes; only a check that reads the
node's own inputs and attributes (the rewrite's semantic check, the op's kernel, the
registry's reference) sees the lie. Built by fusing a hand-built MLP and then editing the
fused node the way a wrong pattern binding would have written it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import onnx
import onnx_ir as ir
from onnx import TensorProto, helper

from onnxfuse import ops
from onnxfuse.graph_rewrites import fuse_model
from tests.graph_rewrites.graphs import gated_mlp

__all__ = ["FAULTS", "WRONG_ACTIVATION", "Fault", "mislabelled_fused_model", "write_mislabelled"]

Fault = Literal["swapped", "activation"]
FAULTS: tuple[Fault, ...] = ("swapped", "activation")
WRONG_ACTIVATION = {"silu": "gelu", "gelu": "silu", "gelu_tanh": "silu"}
"""The ``activation`` a mislabelled node claims, by the one its body computes."""

_SPEC = ops.FUSED_GATED_MLP
_SWAPS = [(_SPEC.input_names.index(a), _SPEC.input_names.index(b))
          for a, b in (("W_gate", "W_up"), ("B_gate", "B_up"))]


def mislabelled_fused_model(fault: Fault = "swapped", *, form: str = "silu", biased: bool = False,
                            dtype: int = TensorProto.FLOAT, layers: int = 1,
                            ) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """``(original, fused)``: a hand-built gated MLP (:func:`~tests.graph_rewrites.graphs.gated_mlp`
    with ``form``, ``biased``, ``dtype``, ``layers``) and its fused model with every fused
    node mislabelled, its function body still the original nodes.

    ``fault``: ``"swapped"`` puts W_up in W_gate's slot and W_gate in W_up's (B_up and B_gate
    too, when biased), in the node's inputs and in its function's formal inputs alike, as a
    wrong pattern binding writes them; ``"activation"`` writes :data:`WRONG_ACTIVATION`'s
    value instead of the right one.
    """
    original = gated_mlp(form=form, biased=biased, dtype=dtype, layers=layers)
    model = ir.from_proto(original)
    fused_nodes, _ = fuse_model(model)
    if len(fused_nodes) != layers:
        raise AssertionError(f"{form} fused {len(fused_nodes)} of {layers} layers")
    fused = ir.to_proto(model)
    functions = {(f.domain, f.name, f.overload): f for f in fused.functions}
    for node in fused.graph.node:
        if not ops.is_fused(node):
            continue
        if fault == "swapped":
            function = functions[(node.domain, node.op_type, node.overload)]
            for i, j in _SWAPS:
                if j < len(node.input):
                    node.input[i], node.input[j] = node.input[j], node.input[i]
                    function.input[i], function.input[j] = function.input[j], function.input[i]
        else:
            attr = next(a for a in node.attribute if a.name == "activation")
            node.attribute.remove(attr)
            node.attribute.append(helper.make_attribute(
                "activation", WRONG_ACTIVATION[attr.s.decode()]))
    return original, fused


def write_mislabelled(directory: Path, fault: Fault = "swapped", **kwargs: object) -> tuple[Path, Path]:
    """:func:`mislabelled_fused_model` saved as ``original.onnx`` and ``fused.onnx`` in
    ``directory`` (weights inline); returns both paths."""
    original, fused = mislabelled_fused_model(fault, **kwargs)  # type: ignore[arg-type]
    paths = directory / "original.onnx", directory / "fused.onnx"
    for model, path in zip((original, fused), paths, strict=True):
        onnx.save(model, path)
    return paths
