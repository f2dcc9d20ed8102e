"""Gated-MLP families of transformers beyond the named specs: their MLP fuses, with the right
activation; a non-gated MLP (Arcee's ReLU²) is neither fused nor reported."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers

from onnxfuse.graph_rewrites import RewriteConfig, rewrite

_DIMS = dict(num_hidden_layers=1, hidden_size=64, intermediate_size=172, num_attention_heads=4,
             vocab_size=256, max_position_embeddings=256, pad_token_id=0, bos_token_id=1,
             eos_token_id=2)
FAMILIES = {
    "qwen3": ("silu", dict(num_key_value_heads=2, head_dim=16)),
    "gemma2": ("gelu_tanh", dict(num_key_value_heads=2, head_dim=16)),
    "olmo2": ("silu", {}),
    "granite": ("silu", {}),
    "cohere": ("silu", {}),
    "helium": ("silu", dict(head_dim=16)),
    "ernie4_5": ("silu", {}),
    "exaone4": ("silu", dict(num_key_value_heads=2)),
    "arcee": (None, {}),
}


class _MLP(torch.nn.Module):
    def __init__(self, mlp: torch.nn.Module) -> None:
        super().__init__()
        self.mlp = mlp

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.mlp(h)


@pytest.mark.parametrize("family", FAMILIES)
def test_family_mlp_fuses(tmp_path: Path, family: str) -> None:
    activation, extra = FAMILIES[family]
    config = transformers.AutoConfig.for_model(family, **_DIMS, **extra)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    src = tmp_path / f"{family}.onnx"
    dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("seq")}
    program = torch.onnx.export(_MLP(model.model.layers[0].mlp), (torch.randn(2, 5, 64),),
                                dynamo=True, input_names=["h"], output_names=["y"],
                                dynamic_shapes=(dims,), verbose=False)
    program.save(str(src))
    result = rewrite(RewriteConfig(src, tmp_path / "fused.onnx"))
    if activation is None:
        assert result.fused == () and result.skipped == ()
    else:
        assert [n.activation for n in result.fused] == [activation] and result.skipped == ()
