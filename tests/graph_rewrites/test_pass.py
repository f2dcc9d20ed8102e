"""The fusion pass: its pre-filter loses no fusion the full rule set makes, and it is an
``onnx_ir`` pass that says what it changed."""

from __future__ import annotations

import itertools

import onnx_ir as ir
import pytest
from onnxscript.rewriter import RULE_NAME_TAG, pattern

from onnxfuse import ops
from onnxfuse.graph_rewrites import FusePass, FuseResult, UnfusePass, UnfuseResult, all_rules
from tests.graph_rewrites.graphs import EVALUATED_FORMS, PACKED, gated_mlp

# graphs.py form -> lowest opset with its ops (Gelu 20, Swish 24).
FORMS = {"silu": 20, "silu_rev": 20, "swish": 24, "swish_default": 24, "quick_gelu": 20,
         "gelu": 20, "gelu_none": 20, "gelu_tanh": 20, "gelu_erf_dec": 18, "gelu_tanh_dec": 18}
# Two MatMul layers, or one Gemm layer (graphs.py's Gemm form). Operand orders: test_fusion_forms.
# The evaluated fusion's forms and packed projections: MatMul layers only.
CASES = [dict(form=form, opset=opset, biased=biased, **layout)
         for (form, opset), biased, layout in itertools.product(
             FORMS.items(), (False, True), (dict(layers=2), dict(gemm_alpha=1.0)))] + [
    dict(form=form, opset=18, biased=biased, layers=2)
    for form, biased in itertools.product(EVALUATED_FORMS, (False, True))] + [
    dict(packed=packed, opset=18, biased=biased, layers=2)
    for packed, biased in itertools.product(PACKED, (False, True))] + [
    # MatMulNBits projections: the quantized family (FusedGatedMLPNBits).
    dict(form=form, weights="matmulnbits", layers=2) for form in ("silu", "gelu_tanh_dec")]


@pytest.fixture(scope="module")
def every_rule() -> pattern.RewriteRuleSet:
    return all_rules()


@pytest.mark.parametrize("kw", CASES, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
def test_pass_fuses_what_every_rule_at_every_node_fuses(every_rule: pattern.RewriteRuleSet,
                                                        kw: dict[str, object]) -> None:
    # The pass tries only the variants its pre-filter selects; onnxscript's own rule set of
    # every variant, tried at every node, is the reference: the same nodes, the same rule.
    proto = gated_mlp(**kw)  # type: ignore[arg-type]
    reference = ir.from_proto(proto)
    assert every_rule.apply_to_model(reference) == kw.get("layers", 1)
    expected = [n.metadata_props[RULE_NAME_TAG] for n in reference.graph if ops.is_fused(n)]
    model = ir.from_proto(proto)
    result = FusePass()(model)
    assert isinstance(result, FuseResult)
    assert [n.rule for n in result.fused] == expected


def test_fuse_pass_says_what_it_changed() -> None:
    model = ir.from_proto(gated_mlp(biased=True))
    first = FusePass()(model)
    assert isinstance(first, FuseResult)
    assert first.model is model and first.modified
    assert [(n.name, n.activation, n.biased) for n in first.fused] == [("FusedGatedMLP_0", "silu", True)]
    again = FusePass()(model)
    assert isinstance(again, FuseResult)
    assert not again.modified and again.fused == () and again.skipped == ()


def test_fuse_pass_reports_a_near_miss_and_changes_nothing() -> None:
    proto = gated_mlp(form="relu")
    model = ir.from_proto(proto)
    result = FusePass()(model)
    assert isinstance(result, FuseResult)
    assert not result.modified and result.fused == ()
    assert [m.reason for m in result.skipped] == [
        "the activation (ops: Relu) is not one of silu, gelu, gelu_tanh in a known form"]
    assert ir.to_proto(model).SerializeToString() == ir.to_proto(ir.from_proto(proto)).SerializeToString()


def test_unfuse_pass_counts_the_nodes_it_inlined() -> None:
    model = ir.from_proto(gated_mlp(layers=3))
    FusePass()(model)
    result = UnfusePass()(model)
    assert isinstance(result, UnfuseResult)
    assert result.modified and result.unfused == 3
    assert not any(ops.is_fused(n) for n in model.graph) and ops.DOMAIN not in model.opset_imports
    again = UnfusePass()(model)
    assert isinstance(again, UnfuseResult)
    assert not again.modified and again.unfused == 0
