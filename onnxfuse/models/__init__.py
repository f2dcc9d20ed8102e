"""Models: specs by exact name, real checkpoints, and exportable parts with seeded inputs.

The specs (and ``Part``) import nothing heavy; the rest (torch, transformers) is imported on
first use, so the CLI's option tables (``onnxfuse export --help``) stay fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from onnxfuse._lazy import lazy_attributes
from onnxfuse.models._specs import PARTS, SPECS, ModelSpec, Part, get_spec, spec_names

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

_LAZY = {
    **dict.fromkeys(("TORCH_DTYPES", "Exportable", "InputMaker", "ModelSource", "build", "check_part",
                     "make_token_inputs", "past_names", "resolve"), "onnxfuse.models._build"),
    **dict.fromkeys(("PACKAGED", "find_packaged_gguf", "load_pretrained"), "onnxfuse.models._checkpoints"),
}

if TYPE_CHECKING:
    from onnxfuse.models._build import (
        TORCH_DTYPES,
        Exportable,
        InputMaker,
        ModelSource,
        build,
        check_part,
        make_token_inputs,
        past_names,
        resolve,
    )
    from onnxfuse.models._checkpoints import PACKAGED, find_packaged_gguf, load_pretrained


__getattr__ = lazy_attributes(__name__, _LAZY)
