"""Model specs: frozen data, looked up by exact name."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Literal

from onnxfuse.errors import ModelNotFoundError

__all__ = ["PARTS", "SPECS", "ModelSpec", "Part", "get_spec", "spec_names"]

# What `export --part` exports: the whole model, or one decoder layer's MLP.
Part = Literal["full", "mlp"]
PARTS: tuple[Part, ...] = ("full", "mlp")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A model built from a transformers config with seeded random weights.

    Attributes:
        name: the exact name users type.
        family: the transformers ``model_type`` (``llama``, ``mistral``, ...).
        config: keyword arguments of the family's config class.
        batch: batch size of the example inputs.
        seq: sequence length of the example inputs.
        description: one line for listings.
    """

    name: str
    family: str
    config: Mapping[str, Any]
    batch: int
    seq: int
    description: str


def _spec(name: str, family: str, batch: int, seq: int, description: str, **config: Any) -> ModelSpec:
    return ModelSpec(name, family, MappingProxyType(config), batch, seq, description)


# Test-size dims shared by every tiny spec: d_ff = 172 is not a multiple of any block size.
_TINY = dict(
    num_hidden_layers=2, hidden_size=64, intermediate_size=172, num_attention_heads=4,
    vocab_size=256, max_position_embeddings=256,
)

SPECS: Mapping[str, ModelSpec] = MappingProxyType({s.name: s for s in (
    _spec(
        "seed", "llama", 2, 1024,
        "the reference notebook's Llama: 1 layer, d=1024, d_ff=11008, 4 heads, vocab 32000",
        num_hidden_layers=1, vocab_size=32000, hidden_size=1024, intermediate_size=11008,
        max_position_embeddings=2048, num_attention_heads=4,
    ),
    _spec("tiny", "llama", 2, 16, "seed's architecture at test size: 2 layers, d=64, d_ff=172",
          **_TINY),
    _spec("tiny-bias", "llama", 2, 16, "tiny with mlp_bias=True (biased gate/up/down)",
          mlp_bias=True, **_TINY),
    _spec("tiny-gelu", "llama", 2, 16, "tiny with an erf-GELU gate (hidden_act=gelu)",
          hidden_act="gelu", **_TINY),
    _spec("tiny-mistral", "mistral", 2, 16, "tiny Mistral: grouped KV heads (2), SiLU-gated MLP",
          num_key_value_heads=2, **_TINY),
    _spec("tiny-qwen2", "qwen2", 2, 16, "tiny Qwen2: grouped KV heads (2), QKV bias, SiLU-gated MLP",
          num_key_value_heads=2, **_TINY),
    _spec("tiny-gemma", "gemma", 2, 16, "tiny Gemma: tanh-GELU-gated MLP, head_dim 16",
          num_key_value_heads=2, head_dim=16, hidden_activation="gelu_pytorch_tanh", **_TINY),
    _spec("tiny-phi3", "phi3", 2, 16, "tiny Phi-3: packed gate/up projection (one MatMul, then a split)",
          num_key_value_heads=4, pad_token_id=0, bos_token_id=1, eos_token_id=2,
          original_max_position_embeddings=256, **_TINY),  # = max: Phi-3-mini-4k's rope, no long-rope
    # Over protobuf's 2 GiB limit in float32 (2.21 GB): two decoder layers of Llama-3-8B's
    # shape. vocab = d_ff, so no tensor is larger than one MLP weight (224 MiB), the tensor
    # the rewrite's memory bound is stated in (benchmarks/large_model.py).
    _spec("wide-2g", "llama", 2, 16,
          "synthetic Llama over 2 GiB: 2 layers, d=4096, d_ff=14336, 32/8 heads, vocab 14336",
          num_hidden_layers=2, hidden_size=4096, intermediate_size=14336,
          num_attention_heads=32, num_key_value_heads=8, vocab_size=14336,
          max_position_embeddings=256),
)})


def spec_names() -> tuple[str, ...]:
    """Every spec name, sorted."""
    return tuple(sorted(SPECS))


def get_spec(name: str) -> ModelSpec:
    """The spec called exactly ``name``.

    Raises:
        ModelNotFoundError: no spec has that name; the message lists the valid ones.
    """
    try:
        return SPECS[name]
    except KeyError:
        raise ModelNotFoundError(
            f"unknown model {name!r}: valid names are {', '.join(spec_names())}, 'smollm2', "
            "a Hugging Face checkpoint folder, or a .gguf file"
        ) from None
