"""Minimal graphs for the rewriter bugs the property tests (test_properties.py) found."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper

from tests.graph_rewrites.graphs import D_FF, Builder, D, activation
from tests.helpers import fuse_proto, ort_run


def _model(b: Builder, outputs: list[str], inputs: list[onnx.ValueInfoProto] | None = None,
           opset: int = 20) -> onnx.ModelProto:
    """No shape inference: intermediate values carry no type, as in many exports."""
    graph = helper.make_graph(
        b.nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, D]), *(inputs or [])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, [None, None]) for o in outputs], b.inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)


def _gemm_mlp(b: Builder, x: str, w: list[str]) -> str:
    def proj(v: str, weight: str) -> str:
        return b.op("Gemm", [v, weight], transB=1)
    return proj(b.op("Mul", [activation(b, proj(x, w[0]), "silu"), proj(x, w[1])]), w[2])


def _matmul_mlp(b: Builder, x: str, w: list[str]) -> str:
    gate, up = b.op("MatMul", [x, w[0]]), b.op("MatMul", [x, w[1]])
    return b.op("MatMul", [b.op("Mul", [activation(b, gate, "silu"), up]), w[2]])


X = np.random.default_rng(3).standard_normal((3, D)).astype(np.float32)


def _assert_same(original: onnx.ModelProto, fused: onnx.ModelProto, **feeds: np.ndarray) -> None:
    for a, e in zip(ort_run(fused, {"x": X, **feeds}), ort_run(original, {"x": X, **feeds}), strict=True):
        assert np.array_equal(a, e)


def test_gemm_mlps_with_tied_weights_share_one_transposed_copy() -> None:
    # Was: the second fused node read "w__onnxfuse_T_1", a name no value had (invalid model).
    b = Builder()
    w = [b.weight(s) for s in [(D_FF, D), (D_FF, D), (D, D_FF)]]
    original = _model(b, [_gemm_mlp(b, _gemm_mlp(b, "x", w), w)])
    fused, nodes, _ = fuse_proto(original)
    assert len(nodes) == 2
    onnx.checker.check_model(fused, full_check=True)
    assert sorted(t.name for t in fused.graph.initializer) == sorted(f"{n}__onnxfuse_T" for n in w)
    _assert_same(original, fused)


def test_gemm_fusion_does_not_take_a_model_initializer_of_the_transposed_name() -> None:
    b = Builder()
    w = [b.weight(s) for s in [(D_FF, D), (D_FF, D), (D, D_FF)]]
    y = _gemm_mlp(b, "x", w)
    b.inits.append(onnx.numpy_helper.from_array(np.full((D,), 2.0, np.float32), f"{w[0]}__onnxfuse_T"))
    original = _model(b, [b.op("Add", [y, f"{w[0]}__onnxfuse_T"])])
    fused, nodes, _ = fuse_proto(original)
    assert len(nodes) == 1
    onnx.checker.check_model(fused, full_check=True)
    _assert_same(original, fused)


def test_gemm_weight_a_caller_may_override_is_not_fused_but_a_matmul_one_is() -> None:
    # Was: the Gemm fusion stored a transposed copy of an initializer that is also a graph
    # input, so feeding that input changed the original's output and not the fused one's.
    for mlp, shapes, fuses in ((_gemm_mlp, [(D_FF, D), (D_FF, D), (D, D_FF)], False),
                               (_matmul_mlp, [(D, D_FF), (D, D_FF), (D_FF, D)], True)):
        b = Builder()
        w = [b.weight(s) for s in shapes]
        override = helper.make_tensor_value_info(w[0], TensorProto.FLOAT, list(shapes[0]))
        original = _model(b, [mlp(b, "x", w)], [override])
        fused, nodes, skipped = fuse_proto(original)
        assert len(nodes) == int(fuses), (mlp, skipped)
        if not fuses:
            assert "caller may override" in skipped[0].reason
        _assert_same(original, fused, **{w[0]: np.ones(shapes[0], np.float32)})


def test_gemm_weights_that_are_transposes_are_a_near_miss_with_that_reason() -> None:
    b = Builder()
    w = [b.op("Transpose", [b.weight(s)], perm=[1, 0]) for s in [(D, D_FF), (D, D_FF), (D_FF, D)]]
    _, nodes, skipped = fuse_proto(_model(b, [_gemm_mlp(b, "x", w)]))
    assert nodes == [] and "is not an initializer or Constant" in skipped[0].reason


def test_fused_node_without_type_annotations_gets_its_type_from_the_weights() -> None:
    # Was: neither X (an Add of the input) nor the transposed weights had a type: the MLP was
    # not fused ("element types ... unknown"); once it was, its output got the type
    # Tensor(None), which onnx_ir cannot serialize.
    b = Builder()
    w = [b.op("Transpose", [b.weight(s)], perm=[1, 0]) for s in [(D_FF, D), (D_FF, D), (D, D_FF)]]
    original = _model(b, [b.op("Relu", [_matmul_mlp(b, b.op("Add", ["x", "x"]), w)])])
    fused, nodes, _ = fuse_proto(original)
    assert len(nodes) == 1
    (node,) = [n for n in fused.graph.node if n.op_type == "FusedGatedMLP"]
    (info,) = [v for v in fused.graph.value_info if v.name == node.output[0]]
    assert info.type.tensor_type.elem_type == TensorProto.FLOAT
    _assert_same(original, fused)


def test_dead_code_and_unused_optional_outputs_outside_the_match_stay() -> None:
    # Was: the pass ran onnx_ir's RemoveUnusedNodesPass, which also removed dead nodes that
    # were in the model before and emptied the names of unused optional outputs.
    b = Builder()
    w = [b.weight(s) for s in [(D, D_FF), (D, D_FF), (D_FF, D)]]
    b.op("Relu", ["x"])  # dead before the rewrite
    b.nodes.append(helper.make_node("Dropout", ["x"], ["dropped", "mask"], name="dropout"))
    original = _model(b, [_matmul_mlp(b, "dropped", w)])
    fused, nodes, _ = fuse_proto(original)
    assert len(nodes) == 1
    before = ir.to_proto(ir.from_proto(original)).graph.node[:2]
    assert [n.SerializeToString() for n in fused.graph.node[:2]] == [n.SerializeToString() for n in before]
    _assert_same(original, fused)
