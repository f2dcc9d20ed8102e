"""The Python API that mirrors the CLI: ``export``, ``fuse``, ``session``, ``compare``,
``bench``. Each takes the stage config's fields as typed keywords (same names and defaults
as :class:`~onnxfuse.exporters.ExportConfig`, :class:`~onnxfuse.graph_rewrites.RewriteConfig`,
:class:`~onnxfuse.pipeline.configs.ParityConfig` and
:class:`~onnxfuse.pipeline.configs.BenchConfig`; a test holds them equal), returns the stage's
frozen result, and raises the typed errors of :mod:`onnxfuse.errors`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from onnxfuse.exporters import ExportConfig, Exporter, ExportResult
from onnxfuse.exporters import export as _export
from onnxfuse.graph_rewrites import RewriteConfig, RewriteResult
from onnxfuse.models import Part
from onnxfuse.numerics import DType
from onnxfuse.pipeline import sessions
from onnxfuse.pipeline.bench import BenchResult
from onnxfuse.pipeline.bench import bench as _bench
from onnxfuse.pipeline.configs import Backend, BenchConfig, Device, GenerateConfig, ParityConfig
from onnxfuse.pipeline.genai import FolderRewrite, rewrite_any
from onnxfuse.pipeline.generate import GenerateResult
from onnxfuse.pipeline.generate import generate as _generate
from onnxfuse.pipeline.parity import ParityResult, parity

__all__ = ["bench", "compare_models", "export", "fuse", "generate", "session"]

PathLike = str | os.PathLike[str]


def _path(p: PathLike | None) -> Path | None:
    return None if p is None else Path(p)


def export(model: str, output: PathLike, *, part: Part = "full", exporter: Exporter = "dynamo",
           dtype: DType = "float32", opset: int | None = None, batch: int | None = None,
           seq: int | None = None, seed: int = 0, verify: bool = True, rel_l2: float | None = None,
           force: bool = False, mlp_layer: int = 0, with_past: bool = False) -> ExportResult:
    """``onnxfuse export``: export and verify ``model`` to ``output``
    (:class:`~onnxfuse.exporters.ExportConfig`'s fields)."""
    return _export(ExportConfig(model, Path(output), part=part, exporter=exporter, dtype=dtype,
                                opset=opset, batch=batch, seq=seq, seed=seed, verify=verify,
                                rel_l2=rel_l2, force=force, mlp_layer=mlp_layer,
                                with_past=with_past))


def fuse(model: PathLike, output: PathLike, *, report: PathLike | None = None, unfuse: bool = False,
         force: bool = False) -> RewriteResult | FolderRewrite:
    """``onnxfuse rewrite``: fuse every gated MLP of ``model`` (a file, or an onnxruntime-genai
    folder) into ``output`` (``unfuse``: inline fused nodes back instead)."""
    return rewrite_any(RewriteConfig(Path(model), Path(output), _path(report), unfuse=unfuse, force=force))


def session(model: PathLike, *, device: Device = "cpu", backend: Backend = "default",
            optimize: bool = True) -> Any:
    """An ONNX Runtime session on ``device`` whose fused nodes run on ``backend`` (``default``
    or ``triton``: the plugin registered; ``none``: plain ORT, function bodies), asserting
    that ORT really uses the device's provider."""
    factory = sessions.plugin_options(backend, device)
    return sessions.session(model, device=device, optimize=optimize, options=factory() if factory else None)


def compare_models(original: PathLike, fused: PathLike, *, device: Device = "cpu",
                   backend: Backend = "default", batch: int = 2, seq: int = 16, seed: int = 0,
                   rel_l2: Mapping[str, float] | None = None, report: PathLike | None = None,
                   per_node: bool = False, force: bool = False) -> ParityResult:
    """``onnxfuse parity`` (:class:`~onnxfuse.pipeline.configs.ParityConfig`'s fields;
    ``rel_l2=None``: no overrides)."""
    return parity(ParityConfig(Path(original), Path(fused), device=device, backend=backend,
                               batch=batch, seq=seq, seed=seed, rel_l2=dict(rel_l2 or {}),
                               report=_path(report), per_node=per_node, force=force))


def bench(original: PathLike, fused: PathLike, *, device: Device = "cpu", batch: int = 2,
          seq: int = 16, warmup: int = 3, repeat: int = 20, threads: int = 0, torch: bool = True,
          force: bool = False, report: PathLike | None = None,
          backends: tuple[Backend, ...] = ("default",), decode: int = 0) -> BenchResult:
    """``onnxfuse bench`` (:class:`~onnxfuse.pipeline.configs.BenchConfig`'s fields)."""
    return _bench(BenchConfig(Path(original), Path(fused), device=device, batch=batch, seq=seq,
                              warmup=warmup, repeat=repeat, threads=threads, torch=torch,
                              force=force, report=_path(report), backends=tuple(backends), decode=decode))


def generate(model: PathLike, *, prompt: str | None = None, ids: tuple[int, ...] | None = None,
             max_new_tokens: int = 32, stop_at_eos: bool = True, device: Device = "cpu",
             backend: Backend = "default", report: PathLike | None = None, force: bool = False) -> GenerateResult:
    """``onnxfuse generate``: greedy tokens from a decoder with a KV cache
    (:class:`~onnxfuse.pipeline.configs.GenerateConfig`'s fields)."""
    return _generate(GenerateConfig(Path(model), prompt=prompt, ids=None if ids is None else tuple(ids),
                                    max_new_tokens=max_new_tokens, stop_at_eos=stop_at_eos, device=device,
                                    backend=backend, report=_path(report), force=force))
