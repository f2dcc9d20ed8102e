"""Every form that must fuse, and at least twelve near misses that must not (with reasons)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from onnxfuse.graph_rewrites import fuse_model, unfuse_model
from onnxfuse.numerics import compare
from tests.graph_rewrites.graphs import D_FF, Builder, D, feeds, gated_mlp
from tests.helpers import fuse_proto, ort_run, stored_weight_bytes


def _assert_same_numbers(original: onnx.ModelProto, fused: onnx.ModelProto, limit: float = 1e-6) -> None:
    inputs = feeds(original)
    for name, a, e in zip([o.name for o in original.graph.output], ort_run(fused, inputs),
                          ort_run(original, inputs), strict=True):
        c = compare(name, a, e, limit=limit)
        assert c.passed, c.detail


FUSING = [
    dict(form="silu"),
    dict(form="silu_rev"),
    dict(form="silu", product_order="up_first"),
    dict(form="silu_rev", product_order="up_first"),
    dict(form="silu", biased=True),
    dict(form="silu", product_order="up_first", biased=True),
    dict(form="silu", weights="constant"),
    dict(form="silu", weights="transpose"),
    dict(form="swish", opset=24),
    dict(form="swish_default", opset=24),
    dict(form="quick_gelu"),
    dict(form="gelu"),
    dict(form="gelu_none"),
    dict(form="gelu_tanh"),
    dict(form="gelu_erf_dec", opset=18),
    dict(form="gelu_tanh_dec", opset=18),
    dict(form="gelu", biased=True, product_order="up_first"),
    dict(form="silu", layers=3),
    dict(form="silu", dtype=TensorProto.FLOAT16),
    dict(form="silu", gemm_alpha=1.0),
    dict(form="gelu_tanh", gemm_alpha=1.0, biased=True),
    # What real exporters write that the forms' patterns miss: activations recognised by what
    # they compute, constants through Identity nodes, packed gate/up projections.
    dict(form="gelu_tanh_ts", opset=18),
    dict(form="gelu_tanh_ts_rev", opset=18, product_order="up_first"),
    dict(form="gelu_tanh_ts_identity", opset=18, biased=True),
    dict(form="silu_exp", layers=2),
    dict(form="silu", weights="identity"),
    dict(form="silu", biased=True, zero_biases_merged=True, layers=2),
    dict(form="gelu_tanh_ts", opset=18, biased=True, zero_biases_merged=True, layers=2),
    dict(form="silu", packed="split", opset=18),
    dict(form="gelu_tanh_ts", packed="split_axis2", opset=18, biased=True),
    dict(form="silu", packed="split_sizes"),
    dict(form="silu", packed="slice"),
    dict(form="silu", packed="slice_shape", layers=2),
    dict(form="silu", packed="slice", packed_order="up_first", biased=True),
    dict(form="silu", packed="slice_interleaved", packed_order="up_first"),
    dict(form="gelu_tanh_ts", packed="slice_shape", opset=18, dtype=TensorProto.FLOAT16),
]
ACTIVATION = {"silu": "silu", "silu_rev": "silu", "swish": "silu", "swish_default": "silu",
              "quick_gelu": "silu", "gelu": "gelu", "gelu_none": "gelu", "gelu_erf_dec": "gelu",
              "gelu_tanh": "gelu_tanh", "gelu_tanh_dec": "gelu_tanh", "gelu_tanh_ts": "gelu_tanh",
              "gelu_tanh_ts_rev": "gelu_tanh", "gelu_tanh_ts_identity": "gelu_tanh", "silu_exp": "silu"}


@pytest.mark.parametrize("kw", FUSING, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
def test_form_fuses_and_keeps_the_numbers(kw: dict[str, object]) -> None:
    original = gated_mlp(**kw)  # type: ignore[arg-type]
    fused, nodes, skipped = fuse_proto(original)
    layers = int(kw.get("layers", 1))  # type: ignore[call-overload]
    assert len(nodes) == layers and skipped == []
    ops = [n.op_type for n in fused.graph.node]
    assert ops.count("FusedGatedMLP") == layers
    # Only residual Adds (and the Constants, Transposes or Identities of weights) remain
    # beside the fused nodes.
    assert set(ops) <= {"FusedGatedMLP", "Add", "Transpose", "Constant", "Identity"}
    for node in nodes:
        assert node.activation == ACTIVATION[str(kw["form"])]
        assert (node.d, node.d_ff, node.biased) == (D, D_FF, bool(kw.get("biased")))
    # Every weight is stored once: re-stored ones (transposed, or a packed weight's parts)
    # replace the original, and function bodies read them back rather than embed it.
    assert stored_weight_bytes(fused) <= stored_weight_bytes(original)
    onnx.checker.check_model(fused, full_check=True)
    onnx.shape_inference.infer_shapes(fused, strict_mode=True)
    limit = 1e-6 if kw.get("dtype", TensorProto.FLOAT) == TensorProto.FLOAT else 1e-3
    _assert_same_numbers(original, fused, limit)


def test_fused_node_carries_doc_metadata_function_and_opset() -> None:
    fused, (node,), _ = fuse_proto(gated_mlp(form="silu", biased=True))
    (proto,) = [n for n in fused.graph.node if n.op_type == "FusedGatedMLP"]
    assert proto.domain == "onnxfuse" and "gated MLP" in proto.doc_string
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["onnxfuse.rule"] == node.rule and meta["onnxfuse.d"] == str(D)
    assert meta["onnxfuse.d_ff"] == str(D_FF) and len(meta["onnxfuse.replaced"].split(",")) == 9
    assert [f.name for f in fused.functions] == ["FusedGatedMLP"]
    assert {o.domain: o.version for o in fused.opset_import}["onnxfuse"] == 1
    # Dead initializers are gone: every initializer is read by some node.
    used = {i for n in fused.graph.node for i in n.input}
    assert all(t.name in used for t in fused.graph.initializer)
    # The fused output keeps its shape annotation (Netron shows it).
    assert any(v.name == proto.output[0] for v in [*fused.graph.value_info, *fused.graph.output])


def test_unfuse_restores_the_original_numbers_exactly() -> None:
    original = gated_mlp(form="gelu_tanh_dec", opset=18, biased=True, layers=2)
    model = ir.from_proto(original)
    fuse_model(model)
    assert unfuse_model(model) == 2
    restored = ir.to_proto(model)
    assert "FusedGatedMLP" not in {n.op_type for n in restored.graph.node}
    inputs = feeds(original)
    for a, e in zip(ort_run(restored, inputs), ort_run(original, inputs), strict=True):
        assert np.array_equal(a, e)


def test_fusing_twice_finds_nothing_new() -> None:
    model = ir.from_proto(gated_mlp(layers=2))
    assert len(fuse_model(model)[0]) == 2
    assert fuse_model(model) == ([], [])


# ----------------------------------------------------------------------------- near misses

def _extra_consumer(value: str):  # type: ignore[no-untyped-def]
    def mutate(b: Builder, v: dict[str, str]) -> list[onnx.ValueInfoProto]:
        out = b.op("Neg", [v[value]])
        return [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)]
    return mutate


def _graph_output(value: str):  # type: ignore[no-untyped-def]
    def mutate(b: Builder, v: dict[str, str]) -> list[onnx.ValueInfoProto]:
        return [helper.make_tensor_value_info(v[value], TensorProto.FLOAT, None)]
    return mutate


def _sigmoid_consumer(b: Builder, v: dict[str, str]) -> list[onnx.ValueInfoProto]:
    sig = next(n.output[0] for n in b.nodes if n.op_type == "Sigmoid")
    out = b.op("Neg", [sig])
    return [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)]


NEAR_MISSES = {
    "gate has another consumer": (dict(mutate=_extra_consumer("gate")), "another consumer"),
    "up has another consumer": (dict(mutate=_extra_consumer("up")), "another consumer"),
    "sigmoid has another consumer": (dict(mutate=_sigmoid_consumer), "another consumer"),
    "product is a graph output": (dict(mutate=_graph_output("prod")), "graph output"),
    "activation is a graph output": (dict(mutate=_graph_output("act")), "graph output"),
    "weights are graph inputs": (dict(weights="input"), "not a constant weight"),
    "down projection changes the width": (dict(w_down_shape=(D_FF, D + 3)), "weight shapes disagree"),
    "gate weight is 3-D": (dict(w_gate_shape=(1, D, D_FF)), "not 2-D"),
    "Tanh gate": (dict(form="tanh"), "not one of silu, gelu, gelu_tanh in a known form (nearest: "),
    "silu plus 1e-10 g^8 (agrees near 0 only)": (dict(form="silu_plus_x8"), "not one of silu, gelu, gelu_tanh"),
    "plain sigmoid gate (GLU)": (dict(form="sigmoid_only"), "not one of silu, gelu, gelu_tanh"),
    "Swish with alpha 2": (dict(form="swish_alpha2", opset=24), "not one of"),
    "QuickGelu with alpha 1.702": (dict(form="quick_gelu_1702"), "not one of"),
    "Relu gate": (dict(form="relu"), "not one of"),
    "broadcast product": (dict(w_up_shape=(D, 1)), "broadcasts"),
    "2-D bias": (dict(biased=True, bias_shape=(1, D_FF)), "has shape"),
    "Gemm with alpha 0.5": (dict(gemm_alpha=0.5), "alpha=beta=1"),
    "evaluated form: gate has another consumer": (dict(form="gelu_tanh_ts", opset=18,
                                                       mutate=_extra_consumer("gate")), "another consumer"),
    # A unary function of g only: a per-channel constant (even of ones) is refused.
    "activation with a per-channel constant": (dict(form="silu_per_channel"), "a constant that is not a scalar"),
    "packed, Tanh gate": (dict(packed="slice", form="tanh"), "not one of silu, gelu, gelu_tanh"),
    "packed split at the wrong offset": (dict(packed="slice", packed_bounds=((0, D_FF), (D_FF - 1, 2 * D_FF - 1))),
                                         "do not share out its 24 columns exactly once"),
    "packed weight wider than its parts": (dict(packed="slice", packed_width=2 * D_FF + 4,
                                                packed_bounds=((0, D_FF), (D_FF, 2 * D_FF))),
                                           "do not share out its 28 columns exactly once"),
    "packed split bounds read the batch size": (dict(packed="slice_by_batch"),
                                                 "takes other columns for another input shape"),
    "packed up part has another consumer": (dict(packed="split", opset=18, mutate=_extra_consumer("up")),
                                            "another consumer"),
    "quantized weights (DequantizeLinear)": (dict(weights="dequantize"), "quantized projection"),
    # Three MatMulNBits projections fuse into FusedGatedMLPNBits (tests/graph_rewrites/test_nbits.py).
}


@pytest.mark.parametrize("case", NEAR_MISSES)
def test_near_miss_stays_unfused_with_its_reason(case: str) -> None:
    kw, reason = NEAR_MISSES[case]
    original = gated_mlp(**kw)  # type: ignore[arg-type]
    fused, nodes, skipped = fuse_proto(original)
    assert nodes == []
    assert "FusedGatedMLP" not in {n.op_type for n in fused.graph.node}
    assert len(skipped) == 1, skipped
    assert reason in skipped[0].reason, skipped[0].reason
    assert skipped[0].nodes and skipped[0].down
    # Nothing outside a match changes: the graph is the original, node for node.
    assert [n.name for n in fused.graph.node] == [n.name for n in original.graph.node]
    _assert_same_numbers(original, fused, 0.0)


def test_gate_and_up_reading_different_inputs_is_a_near_miss() -> None:
    b = Builder()
    x2 = "x2"
    gate = b.op("MatMul", ["x", b.weight((D, D_FF))])
    up = b.op("MatMul", [x2, b.weight((D, D_FF))])
    prod = b.op("Mul", [b.op("Mul", [gate, b.op("Sigmoid", [gate])]), up])
    down = b.op("MatMul", [prod, b.weight((D_FF, D))])
    graph = helper.make_graph(b.nodes, "g", [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, D]),
        helper.make_tensor_value_info(x2, TensorProto.FLOAT, [2, D])],
        [helper.make_tensor_value_info(down, TensorProto.FLOAT, [2, D])], b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=10)
    _, nodes, skipped = fuse_proto(onnx.shape_inference.infer_shapes(model))
    assert nodes == [] and len(skipped) == 1 and "different inputs" in skipped[0].reason


def test_a_packed_weight_read_elsewhere_stays_and_the_parts_are_stored_beside_it() -> None:
    def other_reader(b: Builder, v: dict[str, str]) -> list[onnx.ValueInfoProto]:
        return [helper.make_tensor_value_info(b.op("MatMul", [v["x"], v["packed_weight"]]), TensorProto.FLOAT, None)]
    original = gated_mlp(packed="slice_shape", mutate=other_reader)
    packed = next(n.input[1] for n in original.graph.node if n.op_type == "MatMul")
    fused, nodes, skipped = fuse_proto(original)
    assert len(nodes) == 1 and skipped == []
    inits = {t.name: t for t in fused.graph.initializer}
    assert packed in inits  # the other MatMul still reads it
    (node,) = [n for n in fused.graph.node if n.op_type == "FusedGatedMLP"]
    assert [list(inits[name].dims) for name in node.input[1:3]] == [[D, D_FF], [D, D_FF]]
    onnx.checker.check_model(fused, full_check=True)
    _assert_same_numbers(original, fused)


def test_an_overridable_packed_weight_is_a_near_miss() -> None:
    original = gated_mlp(packed="split", opset=18)
    packed = next(n.input[1] for n in original.graph.node if n.op_type == "MatMul")
    original.graph.input.append(helper.make_tensor_value_info(packed, TensorProto.FLOAT, [D, 2 * D_FF]))
    fused, nodes, skipped = fuse_proto(original)
    assert nodes == [] and len(skipped) == 1
    assert "also a graph input" in skipped[0].reason, skipped[0].reason
    assert [n.name for n in fused.graph.node] == [n.name for n in original.graph.node]
