"""Models: specs by exact name, real checkpoints, and exportable parts with seeded inputs."""

from __future__ import annotations

from onnxfuse.models._build import (
    PARTS,
    TORCH_DTYPES,
    Exportable,
    ModelSource,
    Part,
    build,
    make_token_inputs,
    resolve,
)
from onnxfuse.models._checkpoints import PACKAGED, find_packaged_gguf, load_pretrained
from onnxfuse.models._specs import SPECS, ModelSpec, get_spec, spec_names

__all__ = [
    "PACKAGED",
    "PARTS",
    "SPECS",
    "TORCH_DTYPES",
    "Exportable",
    "ModelSource",
    "ModelSpec",
    "Part",
    "build",
    "find_packaged_gguf",
    "get_spec",
    "load_pretrained",
    "make_token_inputs",
    "resolve",
    "spec_names",
]
