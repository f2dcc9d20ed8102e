"""The Python API that mirrors the CLI: ``export``, ``fuse``, ``session``, ``compare``,
``bench``. Each takes plain arguments, returns the stage's frozen result, and raises the
typed errors of :mod:`onnxfuse.errors`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from onnxfuse.exporters import ExportConfig, ExportResult
from onnxfuse.exporters import export as _export
from onnxfuse.graph_rewrites import RewriteConfig, RewriteResult, rewrite
from onnxfuse.pipeline import sessions
from onnxfuse.pipeline.bench import BenchConfig, BenchResult
from onnxfuse.pipeline.bench import bench as _bench
from onnxfuse.pipeline.parity import ParityConfig, ParityResult, parity

__all__ = ["bench", "compare_models", "export", "fuse", "session"]

PathLike = str | os.PathLike[str]


def export(model: str, output: PathLike, **options: Any) -> ExportResult:
    """``onnxfuse export``: export and verify ``model`` to ``output``.

    ``options`` are :class:`onnxfuse.exporters.ExportConfig` fields (``part``, ``exporter``,
    ``dtype``, ``opset``, ``batch``, ``seq``, ``seed``, ``verify``, ``force``, ...).
    """
    return _export(ExportConfig(model, Path(output), **options))


def fuse(model: PathLike, output: PathLike, *, report: PathLike | None = None,
         force: bool = False) -> RewriteResult:
    """``onnxfuse rewrite``: fuse every gated MLP of ``model`` into ``output``."""
    return rewrite(RewriteConfig(Path(model), Path(output), Path(report) if report else None, force=force))


def session(model: PathLike, *, device: str = "cpu", backend: str = "default",
            optimize: bool = True) -> Any:
    """An ONNX Runtime session on ``device`` whose fused nodes run on ``backend`` (``default``
    or ``triton``: the plugin registered; ``none``: plain ORT, function bodies), asserting
    that ORT really uses the device's provider."""
    factory = sessions.plugin_options(backend, device)
    return sessions.session(model, device=device, optimize=optimize, options=factory() if factory else None)


def compare_models(original: PathLike, fused: PathLike, **options: Any) -> ParityResult:
    """``onnxfuse parity``: ``options`` are :class:`ParityConfig` fields."""
    return parity(ParityConfig(Path(original), Path(fused), **options))


def bench(original: PathLike, fused: PathLike, **options: Any) -> BenchResult:
    """``onnxfuse bench``: ``options`` are :class:`BenchConfig` fields."""
    return _bench(BenchConfig(Path(original), Path(fused), **options))
