"""What real exporters write beyond the forms' patterns (issue 15), fused on real exports: the
TorchScript exporter at opset 18 (what optimum produces) writes Gemma's GELU-tanh with g³ as
two Muls, merges equal initializers into Identity nodes (a Llama with zero MLP biases), and
slices Phi-3's packed gate/up projection with bounds computed from its Shape; the dynamo
exporter splits it with ``Split(axis=2)``. Every MLP fuses, the function bodies give the
original's numbers, and the plugin's native kernel (which reads the fused node's own inputs:
the split weights, the recognised activation) is within DESIGN.md's table."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from onnxfuse.exporters import ExportConfig, ExportResult, export
from onnxfuse.graph_rewrites import RewriteConfig, rewrite
from onnxfuse.pipeline.configs import ParityConfig
from onnxfuse.pipeline.parity import parity
from tests.helpers import Exports, stored_weight_bytes


def _zero_bias_llama(exports: Exports) -> ExportResult:
    """``tiny-bias`` with its biases left at zero (transformers' own initialisation; the
    ``tiny-bias`` spec makes them random), saved as a checkpoint folder and exported by the
    TorchScript exporter at opset 18: every zero bias of a size is stored once, and read
    through Identity nodes everywhere else."""
    def make(folder: Path) -> ExportResult:
        import torch
        import transformers

        from onnxfuse.models import get_spec

        spec = get_spec("tiny-bias")
        config = transformers.AutoConfig.for_model(spec.family, **dict(spec.config))
        torch.manual_seed(0)
        model = transformers.AutoModelForCausalLM.from_config(config)
        assert not any(p.any() for n, p in model.named_parameters() if n.endswith(".bias"))
        model.save_pretrained(folder / "checkpoint")
        return export(ExportConfig(str(folder / "checkpoint"), folder / "zero-bias.onnx",
                                   exporter="torchscript", opset=18))
    return exports.cached("zero-bias-llama-torchscript-opset18", make)


# model -> (exporter, opset, the fused nodes' rule, activation, biased)
CASES = {
    "tiny-gemma": ("torchscript", 18, "FusedGatedMLP[evaluated]", "gelu_tanh", False),
    "tiny-phi3": ("torchscript", 18, "FusedGatedMLP[evaluated,packed]", "silu", False),
    "zero-bias": ("torchscript", 18, "FusedGatedMLP[silu,bias]", "silu", True),
    "tiny-phi3 dynamo": ("dynamo", None, "FusedGatedMLP[evaluated,packed]", "silu", False),
}


@pytest.mark.parametrize("case", CASES)
def test_every_mlp_fuses_and_keeps_the_numbers(tmp_path: Path, exports: Exports, case: str) -> None:
    exporter, opset, rule, activation, biased = CASES[case]
    if case == "zero-bias":
        src = _zero_bias_llama(exports).onnx_path
        assert "Identity" in {n.op_type for n in onnx.load(str(src), load_external_data=False).graph.node}
    else:
        src = exports.export(case.split()[0], exporter=exporter, opset=opset).onnx_path
    result = rewrite(RewriteConfig(src, tmp_path / "fused.onnx"))
    assert [(n.rule, n.activation, n.biased) for n in result.fused] == [(rule, activation, biased)] * 2
    assert result.skipped == ()
    fused = tmp_path / "fused.onnx"
    onnx.checker.check_model(str(fused), full_check=True)
    assert stored_weight_bytes(onnx.load(str(fused))) <= stored_weight_bytes(onnx.load(str(src)))
    # The function bodies: the original's numbers, through plain ORT (optimizations off).
    body = parity(ParityConfig(src, fused, backend="none", rel_l2={"logits": 1e-6}))
    assert body.passed, [c.detail for c in body.outputs]
    # The plugin's native kernel, on the fused nodes' own inputs and attributes.
    kernel = parity(ParityConfig(src, fused))
    assert kernel.passed, [c.detail for c in kernel.outputs]
    assert kernel.kernel_runs is not None and kernel.kernel_runs.counted == kernel.kernel_runs.expected > 0
    print(f"{case}: {[round(c.rel_l2, 10) for c in body.outputs]} (body), "
          f"{[round(c.rel_l2, 10) for c in kernel.outputs]} (kernel)")
