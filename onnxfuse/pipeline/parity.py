"""``onnxfuse parity``: the original graph vs the fused graph (vs torch eager), and, on a
failure, the first fused node that diverges."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any, cast

import numpy as np

from onnxfuse.errors import UserError
from onnxfuse.exporters import SECOND_SHAPE
from onnxfuse.fileio import check_output, write_report
from onnxfuse.numerics import Comparison, DType, compare, tolerance
from onnxfuse.pipeline import sessions
from onnxfuse.pipeline.configs import ParityConfig

__all__ = ["ParityConfig", "ParityResult", "parity"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ParityResult:
    passed: bool
    outputs: tuple[Comparison, ...]  # fused vs original, per output and shape
    torch: tuple[Comparison, ...]  # fused vs torch eager, where the source is known
    first_divergent: str | None
    nodes: tuple[Comparison, ...]  # per fused node, when localising

    def as_dict(self) -> dict[str, object]:
        def rows(cs: tuple[Comparison, ...]) -> list[dict[str, object]]:
            return [c.as_dict() for c in cs]
        return {"passed": self.passed, "outputs": rows(self.outputs), "torch": rows(self.torch),
                "first_divergent_node": self.first_divergent, "nodes": rows(self.nodes)}


def _limit(dtype: str, name: str, overrides: Mapping[str, float], device: str) -> float:
    if name in overrides:
        return overrides[name]
    # dtype is the model's metadata string, unchecked: tolerance refuses any value but a DType.
    return tolerance(cast(DType, dtype), "tf32" if device == "cuda" and dtype == "float32" else "ieee")


def _torch_outputs(source: Any) -> list[np.ndarray]:
    import torch

    ex, tensors = source
    with torch.no_grad():
        return [t.detach().to(torch.float64).numpy() for t in ex.module(*tensors)]


def parity(config: ParityConfig) -> ParityResult:
    """Run both graphs (and torch) on the same inputs; localise the first divergent node.

    Raises:
        UserError: missing or unreadable models, or models whose inputs differ.
    """
    original, fused = sessions.model_info(config.original), sessions.model_info(config.fused)
    if [i[0] for i in original.inputs] != [i[0] for i in fused.inputs]:
        raise UserError(f"the models take different inputs: {[i[0] for i in original.inputs]} vs "
                        f"{[i[0] for i in fused.inputs]}")
    report = check_output(config.report, force=config.force, inputs=[config.original, config.fused]) if config.report else None
    dtype = original.metadata.get("onnxfuse.dtype", "float32")
    factory = sessions.plugin_options(config.backend, config.device)
    options = factory() if factory else None
    ref_sess = sessions.session(config.original, device=config.device)
    fused_sess = sessions.session(config.fused, device=config.device, options=options)
    outputs: list[Comparison] = []
    vs_torch: list[Comparison] = []
    feeds_for_localising = None
    first_feeds = None
    for batch, seq in ((config.batch, config.seq), SECOND_SHAPE):
        log.info("parity on batch=%d seq=%d", batch, seq)
        feeds, source = sessions.make_inputs(original, batch, seq, config.seed)
        first_feeds = first_feeds or feeds
        want = sessions.run(ref_sess, feeds, config.original)
        got = sessions.run(fused_sess, feeds, config.fused)
        for name, g, w in zip(original.outputs, got, want, strict=True):
            c = compare(f"{name}@{batch}x{seq}", g, w, limit=_limit(dtype, name, config.rel_l2, config.device))
            outputs.append(c)
            if not c.passed and feeds_for_localising is None:
                feeds_for_localising = feeds
        if source is not None:
            for name, g, t in zip(original.outputs, got, _torch_outputs(source), strict=True):
                vs_torch.append(compare(f"{name}@{batch}x{seq} vs torch", g, t,
                                        limit=_limit(dtype, name, config.rel_l2, config.device)))
    nodes: list[Comparison] = []
    first_divergent = None
    if config.per_node and feeds_for_localising is None:
        feeds_for_localising = first_feeds
    if feeds_for_localising is not None and fused.fused_outputs:
        nodes, first_divergent = _localise(config, original, fused, dtype, options, feeds_for_localising)
    result = ParityResult(all(c.passed for c in outputs) and all(c.passed for c in vs_torch),
                          tuple(outputs), tuple(vs_torch), first_divergent, tuple(nodes))
    if report is not None:
        write_report(report, result.as_dict())
    return result


def _localise(config: ParityConfig, original: sessions.ModelInfo, fused: sessions.ModelInfo,
              dtype: str, options: Any, feeds: dict[str, np.ndarray]) -> tuple[list[Comparison], str | None]:
    """Expose every fused node's output (and the same value in the original graph, which the
    rewrite keeps by name) and compare them in graph order."""
    log.info("localising: exposing %d fused node outputs", len(fused.fused_outputs))
    names = list(fused.fused_outputs)
    ref = sessions.session(config.original, device=config.device, extra_outputs=names)
    new = sessions.session(config.fused, device=config.device, extra_outputs=names, options=options)
    want = dict(zip([o.name for o in ref.get_outputs()], sessions.run(ref, feeds, config.original), strict=True))
    got = dict(zip([o.name for o in new.get_outputs()], sessions.run(new, feeds, config.fused), strict=True))
    limit = _limit(dtype, "", {}, config.device)
    rows = [compare(node, got[value], want[value], limit=limit)
            for node, value in zip(fused.fused_nodes, names, strict=True)]
    first = next((r.name for r in rows if not r.passed), None)
    return rows, first


