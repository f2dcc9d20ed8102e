"""``onnxfuse parity``: the original graph vs the fused graph (vs torch eager), and, on a
failure, the first fused node that diverges.

Parity checks a kernel, not the function body. A fused node's model-local function IS the
original nodes, so a session that runs it compares the original with itself (rel L2 0.0 even
for a fused node whose W_gate and W_up are swapped; the plugin's kernel on that model, d=8,
d_ff=12: 0.16 on the output, 0.31 on the node).
So on CPU the default backend registers the library's exact native CPU kernel
(:data:`CPU_KERNEL`) rather than the plugin's CPU default (``off``: the function bodies,
which ``bench`` keeps, for speed); ``--backend none`` is the explicit function-body check (the
rewritten graph, no kernel). The report names what ran the fused nodes, and the plugin's
counters prove it: parity raises :class:`~onnxfuse.errors.KernelError` (an internal error,
never a pass) unless the kernel ran once per fused node per run of the fused graph.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any, cast

import numpy as np

from onnxfuse.errors import KernelError, UserError
from onnxfuse.exporters import SECOND_SHAPE
from onnxfuse.fileio import check_output, write_report
from onnxfuse.numerics import Comparison, DType, compare, tolerance
from onnxfuse.pipeline import sessions
from onnxfuse.pipeline.configs import ParityConfig

__all__ = ["CPU_KERNEL", "KernelRuns", "ParityConfig", "ParityResult", "parity"]

log = logging.getLogger(__name__)

# The default backend's CPU kernel under parity: ORT's own MatMul invoked by the plugin, exact
# (rel L2 5.6e-7 on the notebook MLP), 0.93-0.96x the unfused graph's speed, which parity can
# afford. (``naive`` loops would take minutes on the seed model's shapes.)
CPU_KERNEL = "matmul"


@dataclasses.dataclass(frozen=True)
class KernelRuns:
    """The plugin counter's proof that its kernel ran every fused node.

    Totals per kernel, not per node: a node of the main graph runs at most once per run of
    the graph, so ``counted == nodes x session_runs`` means every node ran the kernel every
    time. With fused nodes inside subgraphs (If / Loop bodies run 0..n times) only
    ``counted >= nodes x session_runs`` can be asked (``exact`` false).
    """

    counter: str
    nodes: int  # fused nodes of the main graph
    session_runs: int  # runs of the fused graph
    counted: int  # the counter's difference over those runs
    exact: bool

    @property
    def expected(self) -> int:
        return self.nodes * self.session_runs

    def as_dict(self) -> dict[str, object]:
        return {**dataclasses.asdict(self), "expected": self.expected}


@dataclasses.dataclass(frozen=True)
class ParityResult:
    passed: bool
    outputs: tuple[Comparison, ...]  # fused vs original, per output and shape
    torch: tuple[Comparison, ...]  # fused vs torch eager, where the source is known
    first_divergent: str | None
    nodes: tuple[Comparison, ...]  # per fused node, when localising
    implementation: str  # what ran every fused node (sessions.Implementation.name)
    fused_nodes: tuple[str, ...]  # the fused nodes of the main graph
    kernel_runs: KernelRuns | None  # None: the function body, which nothing counts

    def as_dict(self) -> dict[str, object]:
        def rows(cs: tuple[Comparison, ...]) -> list[dict[str, object]]:
            return [c.as_dict() for c in cs]
        return {"passed": self.passed, "outputs": rows(self.outputs), "torch": rows(self.torch),
                "first_divergent_node": self.first_divergent, "nodes": rows(self.nodes),
                "implementation": self.implementation, "fused_nodes": list(self.fused_nodes),
                "kernel_runs": self.kernel_runs.as_dict() if self.kernel_runs else None}


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
        KernelError: the plugin's counter says its kernel did not run every fused node.
    """
    original, fused = sessions.model_info(config.original), sessions.model_info(config.fused)
    if [i[0] for i in original.inputs] != [i[0] for i in fused.inputs]:
        raise UserError(f"the models take different inputs: {[i[0] for i in original.inputs]} vs "
                        f"{[i[0] for i in fused.inputs]}")
    report = check_output(config.report, force=config.force, inputs=[config.original, config.fused]) if config.report else None
    dtype = original.metadata.get("onnxfuse.dtype") or fused.dtype
    impl = sessions.implementation(config.backend, config.device, CPU_KERNEL)
    factory = sessions.plugin_options(config.backend, config.device, cpu_kernel=CPU_KERNEL)
    options = factory() if factory else None
    ref_sess = sessions.session(config.original, device=config.device)
    fused_sess = sessions.session(config.fused, device=config.device, options=options)
    log.info("fused nodes run on: %s", impl.name)
    counted_from = impl.runs()
    session_runs = 0
    outputs: list[Comparison] = []
    vs_torch: list[Comparison] = []
    feeds_for_localising = None
    first_feeds = None
    # A decoder with a KV cache: a prefill, then one decode step after a cache of 37.
    second = (1, 1, SECOND_SHAPE[1]) if sessions.is_decoder(original) else (*SECOND_SHAPE, 0)
    for batch, seq, past in ((config.batch, config.seq, 0), second):
        log.info("parity on batch=%d seq=%d%s", batch, seq, f" after a cache of {past}" if past else "")
        feeds, source = sessions.make_inputs(original, batch, seq, config.seed, past)
        shape = f"{batch}x{seq}" + (f"+{past}" if past else "")
        first_feeds = first_feeds or feeds
        want = sessions.run(ref_sess, feeds, config.original)
        got = sessions.run(fused_sess, feeds, config.fused)
        session_runs += 1
        for name, g, w in zip(original.outputs, got, want, strict=True):
            c = compare(f"{name}@{shape}", g, w, limit=_limit(dtype, name, config.rel_l2, config.device))
            outputs.append(c)
            if not c.passed and feeds_for_localising is None:
                feeds_for_localising = feeds
        if source is not None:
            for name, g, t in zip(original.outputs, got, _torch_outputs(source), strict=True):
                vs_torch.append(compare(f"{name}@{shape} vs torch", g, t,
                                        limit=_limit(dtype, name, config.rel_l2, config.device)))
    nodes: list[Comparison] = []
    first_divergent = None
    if config.per_node and feeds_for_localising is None:
        feeds_for_localising = first_feeds
    if feeds_for_localising is not None and fused.fused_outputs:
        nodes, first_divergent = _localise(config, original, fused, dtype, options, feeds_for_localising)
        session_runs += 1
    runs = _kernel_runs(impl, fused, session_runs, impl.runs() - counted_from)
    result = ParityResult(all(c.passed for c in outputs) and all(c.passed for c in vs_torch),
                          tuple(outputs), tuple(vs_torch), first_divergent, tuple(nodes),
                          impl.name, fused.fused_nodes, runs)
    if report is not None:
        write_report(report, result.as_dict())
    return result


def _kernel_runs(impl: sessions.Implementation, fused: sessions.ModelInfo, session_runs: int,
                 counted: int) -> KernelRuns | None:
    """The counter's proof, checked.

    Raises:
        KernelError: the kernel ran another number of times than the fused nodes did.
    """
    if impl.counter is None:
        return None
    runs = KernelRuns(impl.counter, len(fused.fused_nodes), session_runs, counted, fused.nested_fused == 0)
    if (counted != runs.expected) if runs.exact else (counted < runs.expected):
        raise KernelError(
            f"{fused.path}: {runs.nodes} fused node(s) x {session_runs} run(s) of the fused graph should have "
            f"run the {impl.name} kernel {'' if runs.exact else 'at least '}{runs.expected} time(s), but "
            f"{impl.counter} counted {counted}: something else ran the fused nodes (their function bodies?), so "
            "this parity would prove nothing; check that the plugin registers the kernel for this model's "
            "dtype and device, or use --backend none to check the function bodies")
    return runs


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


