"""Models: specs by exact name, real checkpoints, and exportable parts with seeded inputs."""

from __future__ import annotations

from onnxfuse.models._build import (
    PARTS,
    TORCH_DTYPES,
    Exportable,
    InputMaker,
    ModelSource,
    Part,
    build,
    check_part,
    make_token_inputs,
    past_names,
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
    "InputMaker",
    "ModelSource",
    "ModelSpec",
    "Part",
    "build",
    "check_part",
    "find_packaged_gguf",
    "get_spec",
    "load_pretrained",
    "make_token_inputs",
    "past_names",
    "resolve",
    "spec_names",
]
