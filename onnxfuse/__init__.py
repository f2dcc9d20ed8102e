"""onnxfuse: take a Llama-family model to ONNX, fuse its gated MLPs into one node, run that
node in ONNX Runtime through a Triton-backed custom op, and prove nothing changed numerically.

The public API is imported lazily, so ``import onnxfuse`` (and ``onnxfuse --help``) stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from onnxfuse._version import __version__

__all__ = [  # noqa: RUF022 - grouped by home module
    # the installed distribution's version (`onnxfuse --version`, every JSON report)
    "__version__",
    # errors
    "ExportError",
    "InvalidModelError",
    "KernelError",
    "ModelNotFoundError",
    "OnnxfuseError",
    "OutputError",
    "ParityError",
    "RewriteError",
    "UnsupportedError",
    "UserError",
    # models
    "Exportable",
    "build",
    "spec_names",
    # the pipeline, mirroring the CLI
    "bench",
    "compare",
    "export",
    "fuse",
    "generate",
    "session",
    # stage configs and results (the CLI's options are the configs' fields)
    "ExportConfig",
    "ExportResult",
    "RewriteConfig",
    "RewriteResult",
    "ParityConfig",
    "ParityResult",
    "BenchConfig",
    "BenchResult",
    "GenerateConfig",
    "GenerateResult",
    "DemoConfig",
    # numerics
    "Comparison",
    "compare_arrays",
    "tolerance",
]

_HOMES: dict[str, str | tuple[str, str]] = {
    **dict.fromkeys(
        ("ExportError", "InvalidModelError", "KernelError", "ModelNotFoundError", "OnnxfuseError",
         "OutputError", "ParityError", "RewriteError", "UnsupportedError", "UserError"),
        "onnxfuse.errors"),
    **dict.fromkeys(("Exportable", "build", "spec_names"), "onnxfuse.models"),
    **dict.fromkeys(("ExportConfig", "ExportResult"), "onnxfuse.exporters"),
    **dict.fromkeys(("Comparison", "tolerance"), "onnxfuse.numerics"),
    **dict.fromkeys(("bench", "export", "fuse", "generate", "session"), "onnxfuse.pipeline.api"),
    "compare": ("onnxfuse.pipeline.api", "compare_models"),
    "compare_arrays": ("onnxfuse.numerics", "compare"),
    "ParityResult": "onnxfuse.pipeline.parity",
    **dict.fromkeys(("RewriteConfig", "RewriteResult"), "onnxfuse.graph_rewrites"),
    **dict.fromkeys(("ParityConfig", "BenchConfig", "DemoConfig", "GenerateConfig"), "onnxfuse.pipeline.configs"),
    "BenchResult": "onnxfuse.pipeline.bench",
    "GenerateResult": "onnxfuse.pipeline.generate",
}

if TYPE_CHECKING:
    from onnxfuse.errors import (
        ExportError,
        InvalidModelError,
        KernelError,
        ModelNotFoundError,
        OnnxfuseError,
        OutputError,
        ParityError,
        RewriteError,
        UnsupportedError,
        UserError,
    )
    from onnxfuse.exporters import ExportConfig, ExportResult
    from onnxfuse.graph_rewrites import RewriteConfig, RewriteResult
    from onnxfuse.models import Exportable, build, spec_names
    from onnxfuse.numerics import Comparison, tolerance
    from onnxfuse.numerics import compare as compare_arrays
    from onnxfuse.pipeline.api import bench, export, fuse, generate, session
    from onnxfuse.pipeline.api import compare_models as compare
    from onnxfuse.pipeline.bench import BenchResult
    from onnxfuse.pipeline.configs import BenchConfig, DemoConfig, GenerateConfig, ParityConfig
    from onnxfuse.pipeline.generate import GenerateResult
    from onnxfuse.pipeline.parity import ParityResult


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'onnxfuse' has no attribute {name!r}")
    module, attr = home if isinstance(home, tuple) else (home, name)
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
