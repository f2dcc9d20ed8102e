"""The rewrite's semantic check: a fusion whose node says something other than what its
matched nodes compute (wrong slots, wrong activation) is refused, with its reason, and the
model is left as it was; the mislabelled models of :mod:`tests.graph_rewrites.mislabelled`
run their function bodies to the original's numbers while the registry's reference, on the
node's own inputs, disagrees."""

from __future__ import annotations

import dataclasses
from typing import Any, cast

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, numpy_helper

from onnxfuse import numerics, ops
from onnxfuse.graph_rewrites import EvaluatedGatedMLPFusion, FusePass, FuseResult, GatedMLPFusion
from onnxfuse.graph_rewrites.rules.gated_mlp import FAMILY
from tests.graph_rewrites.graphs import feeds, gated_mlp
from tests.graph_rewrites.mislabelled import FAULTS, WRONG_ACTIVATION, mislabelled_fused_model

_DTYPES: dict[int, str] = {TensorProto.FLOAT: "float32", TensorProto.FLOAT16: "float16", TensorProto.BFLOAT16: "bfloat16"}


class _Swapped(GatedMLPFusion):
    """A wrong pattern binding: gate and up exchanged (weights and biases)."""

    def rewrite(self, op: Any, x: ir.Value, w_gate: ir.Value, w_up: ir.Value, w_down: ir.Value,
                b_gate: ir.Value | None = None, b_up: ir.Value | None = None,
                b_down: ir.Value | None = None, **_: Any) -> Any:
        return super().rewrite(op, x, w_up, w_gate, w_down, b_up, b_gate, b_down)


class _WrongActivation(GatedMLPFusion):
    """A form table entry with the wrong ``activation``."""

    def __init__(self, form: str, *, biased: bool, gemm: bool = False) -> None:
        super().__init__(form, biased=biased, gemm=gemm)
        self.activation = WRONG_ACTIVATION[self.activation]


class _BadAttribute(GatedMLPFusion):
    """Writes an activation the op does not have: the reference cannot evaluate it."""

    def __init__(self, form: str, *, biased: bool, gemm: bool = False) -> None:
        super().__init__(form, biased=biased, gemm=gemm)
        self.activation = "no_such_activation"


class _SwappedHalves(EvaluatedGatedMLPFusion):
    """A packed fusion that gives the gate the up part's columns and the other way round."""

    def rewrite(self, op: Any, *args: Any, packed: Any = None, **kwargs: Any) -> Any:
        swapped = dataclasses.replace(packed, gate=packed.up, up=packed.gate)
        return super().rewrite(op, *args, packed=swapped, **kwargs)


class _WrongRecognition(EvaluatedGatedMLPFusion):
    """An activation recognised as the nearest other one (gelu_tanh and gelu differ by at
    most 4.7e-4)."""

    def rewrite(self, op: Any, *args: Any, activation: str = "", **kwargs: Any) -> Any:
        nearest_other = {"gelu_tanh": "gelu", "gelu": "gelu_tanh", "silu": "gelu"}
        return super().rewrite(op, *args, activation=nearest_other[activation], **kwargs)


def _fuse_with(fusion: GatedMLPFusion | EvaluatedGatedMLPFusion,
               model: onnx.ModelProto) -> tuple[FuseResult, onnx.ModelProto]:
    roots = (fusion.root_op,) if isinstance(fusion, GatedMLPFusion) else ("MatMul", "Add")
    family = dataclasses.replace(FAMILY, fusions=(fusion,),
                                 candidates=lambda node: [fusion] if node.op_type in roots else [])
    ir_model = ir.from_proto(model)
    result = cast(FuseResult, FusePass([family])(ir_model))
    return result, ir.to_proto(ir_model)


CASES = [  # (form in the graph, form of the fusion, biased, gemm)
    ("silu", "silu", False, False),
    ("silu", "silu", True, False),
    ("gelu_tanh_dec", "gelu_tanh_decomposed", True, False),
    ("quick_gelu", "quick_gelu", False, True),
    ("gelu", "gelu_default", True, True),
]


def _model(form: str, biased: bool, gemm: bool, dtype: int = TensorProto.FLOAT) -> onnx.ModelProto:
    return gated_mlp(form=form, biased=biased, gemm_alpha=1.0 if gemm else None, dtype=dtype)


@pytest.mark.parametrize("fault", [_Swapped, _WrongActivation])
@pytest.mark.parametrize(("form", "fusion_form", "biased", "gemm"), CASES)
def test_a_mislabelled_fusion_is_refused_with_its_reason(
        fault: type[GatedMLPFusion], form: str, fusion_form: str, biased: bool, gemm: bool) -> None:
    model = _model(form, biased, gemm)
    before = ir.to_proto(ir.from_proto(model)).SerializeToString()
    result, after = _fuse_with(fault(fusion_form, biased=biased, gemm=gemm), model)
    assert result.fused == ()
    assert not any(ops.is_fused(n) for n in after.graph.node) and not after.functions
    assert after.SerializeToString() == before  # nothing changed, no opset import added
    (miss,) = result.skipped
    assert miss.reason.startswith("semantic check failed: rel err "), miss.reason
    assert "float32" in miss.reason and "probe rows" in miss.reason
    # The same fusion, labelled right, fuses this model (the refusal is the fault's doing).
    good, _ = _fuse_with(GatedMLPFusion(fusion_form, biased=biased, gemm=gemm), model)
    assert len(good.fused) == 1 and good.skipped == ()


@pytest.mark.parametrize(("fault", "kw"), [
    (_SwappedHalves, dict(packed="slice_shape")),
    (_SwappedHalves, dict(packed="split", opset=18, form="gelu_tanh_ts")),
    (_WrongRecognition, dict(form="gelu_tanh_ts", opset=18)),
    (_WrongRecognition, dict(form="silu_exp", packed="slice")),
], ids=["packed halves swapped", "packed gelu_tanh halves swapped", "gelu_tanh as gelu", "silu as gelu"])
def test_a_mislabelled_evaluated_fusion_is_refused(fault: type[EvaluatedGatedMLPFusion], kw: dict[str, Any]) -> None:
    model = gated_mlp(**kw)
    packed = "packed" in kw
    result, after = _fuse_with(fault(packed=packed), model)
    assert result.fused == () and not any(ops.is_fused(n) for n in after.graph.node)
    (miss,) = result.skipped
    assert miss.reason.startswith("semantic check failed: rel err "), miss.reason
    good, _ = _fuse_with(EvaluatedGatedMLPFusion(packed=packed), model)
    assert len(good.fused) == 1 and good.skipped == ()


@pytest.mark.parametrize("dtype", [TensorProto.FLOAT16, TensorProto.BFLOAT16])
def test_a_swapped_binding_is_refused_in_low_precision(dtype: int) -> None:
    result, after = _fuse_with(_Swapped("silu", biased=False), _model("silu", False, False, dtype))
    assert result.fused == () and not any(ops.is_fused(n) for n in after.graph.node)
    assert f"({_DTYPES[dtype]})" in result.skipped[0].reason


def test_a_fusion_the_reference_cannot_evaluate_is_a_near_miss() -> None:
    result, after = _fuse_with(_BadAttribute("silu", biased=False), _model("silu", False, False))
    assert result.fused == () and not any(ops.is_fused(n) for n in after.graph.node)
    (miss,) = result.skipped
    assert miss.reason.startswith("semantic check failed: cannot evaluate"), miss.reason
    assert "no_such_activation" in miss.reason


def test_only_the_refused_layer_stays_unfused() -> None:
    """A variant refused at one node still fuses the nodes where it is right: here a swapped
    binding with equal gate and up weights computes the same, so that layer fuses."""
    model = gated_mlp(form="silu", layers=2)
    inits = {t.name: t for t in model.graph.initializer}
    matmuls = [n for n in model.graph.node if n.op_type == "MatMul"]
    gate, up = (inits[n.input[1]] for n in matmuls[:2])  # the first layer's gate and up weights
    up.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(gate), up.name))
    result, after = _fuse_with(_Swapped("silu", biased=False), model)
    assert len(result.fused) == 1 and len(result.skipped) == 1
    assert result.skipped[0].reason.startswith("semantic check failed")
    assert sum(ops.is_fused(n) for n in after.graph.node) == 1
    fused_node = next(n for n in after.graph.node if ops.is_fused(n))
    assert set(fused_node.input[1:3]) == {gate.name, up.name}


def _run(model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return cast(np.ndarray, session.run(None, inputs)[0])


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize(("form", "biased"), [("silu", False), ("gelu", True)])
def test_mislabelled_models_run_their_body_but_not_their_label(fault: str, form: str, biased: bool) -> None:
    original, fused = mislabelled_fused_model(fault, form=form, biased=biased)  # type: ignore[arg-type]
    onnx.checker.check_model(fused, full_check=True)
    (node,) = [n for n in fused.graph.node if ops.is_fused(n)]
    inputs = feeds(original)
    expected = _run(original, inputs)  # x + Y: the graph adds the residual
    # The body is the original: without the plugin, the lie is invisible.
    np.testing.assert_array_equal(_run(fused, inputs), expected)
    # What the node says it computes, on its own inputs, is something else.
    inits = {t.name: numpy_helper.to_array(t) for t in fused.graph.initializer}
    args = [inputs["x"] if name == "x" else inits[name] for name in node.input]
    activation = next(a.s.decode() for a in node.attribute if a.name == "activation")
    assert ops.FUSED_GATED_MLP.reference is not None
    (claimed,) = ops.FUSED_GATED_MLP.reference(*args, activation=activation)
    c = numerics.compare("Y", claimed + inputs["x"], expected, limit=numerics.tolerance("float32"))
    assert not c.passed and c.rel_l2 > 1e-2, c
    # A correct fusion's label does agree (the comparison above can pass).
    model = ir.from_proto(original)
    FusePass()(model)
    right = next(n for n in ir.to_proto(model).graph.node if ops.is_fused(n))
    args = [inputs["x"] if name == "x" else inits[name] for name in right.input]
    (truth,) = ops.FUSED_GATED_MLP.reference(
        *args, activation=next(a.s.decode() for a in right.attribute if a.name == "activation"))
    assert numerics.compare("Y", truth + inputs["x"], expected, limit=numerics.tolerance("float32")).passed
