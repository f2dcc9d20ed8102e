"""``onnxfuse bench``: the unfused graph vs the fused graph vs torch eager, interleaved in one
run; medians with spread and ratios side by side, as tidy rows."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

from onnxfuse import __version__
from onnxfuse.fileio import check_output, write_report
from onnxfuse.pipeline import sessions
from onnxfuse.pipeline.configs import BenchConfig

__all__ = ["BenchConfig", "BenchResult", "bench"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class BenchResult:
    cases: tuple[dict[str, object], ...]
    speedup: float  # unfused median / fused median (the first backend)
    speedups: dict[str, float] = dataclasses.field(default_factory=dict)  # per backend

    def as_dict(self) -> dict[str, object]:
        return {"cases": list(self.cases), "speedup": self.speedup, "speedups": self.speedups}


def _machine() -> dict[str, object]:
    import onnxruntime
    import torch

    return {"machine": platform.machine(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__, "torch": torch.__version__,
            "onnxfuse": __version__}


def bench(config: BenchConfig) -> BenchResult:
    """Interleaved medians of each case; ``speedup`` is unfused / fused."""
    import onnxruntime as ort

    report = check_output(config.report, force=config.force, inputs=[config.original, config.fused]) if config.report else None
    original = sessions.model_info(config.original)

    def options(factory: Callable[[], Any] | None) -> Any:
        so = factory() if factory else ort.SessionOptions()
        if config.threads:
            so.intra_op_num_threads = config.threads
        return so

    feeds, source = sessions.make_inputs(original, config.batch, config.seq)
    runs: dict[str, Callable[[], object]] = {}
    unfused = sessions.session(config.original, device=config.device, optimize=True, options=options(None))
    runs["unfused"] = lambda: sessions.run(unfused, feeds, config.original)
    for backend in dict.fromkeys(config.backends):
        factory = sessions.plugin_options(backend, config.device)
        fused = sessions.session(config.fused, device=config.device, optimize=True, options=options(factory))
        runs[f"fused[{backend}]"] = functools.partial(sessions.run, fused, feeds, config.fused)
    if config.torch and source is not None:
        import torch

        ex, tensors = source
        if config.threads:
            torch.set_num_threads(config.threads)

        def eager() -> object:
            with torch.no_grad():
                return ex.module(*tensors)
        runs["torch_eager"] = eager
    times: dict[str, list[float]] = {name: [] for name in runs}
    for round_ in range(config.warmup + config.repeat):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            if round_ >= config.warmup:
                times[name].append((time.perf_counter() - start) * 1e3)
        log.debug("bench round %d/%d", round_ + 1, config.warmup + config.repeat)
    meta = _machine()
    median = {name: statistics.median(ts) for name, ts in times.items()}
    cases: list[dict[str, object]] = []
    for name, ts in times.items():
        qs = statistics.quantiles(ts, n=5) if len(ts) >= 2 else [ts[0]] * 4
        cases.append({"name": name, "median_ms": median[name], "p20_ms": qs[0], "p80_ms": qs[3],
                      "min_ms": min(ts), "repeat": len(ts), "device": config.device,
                      "batch": config.batch, "seq": config.seq, "model": original.source or config.original.name,
                      **meta, "speedup_vs_unfused": median["unfused"] / median[name]})
    speedups: dict[str, float] = {b: median["unfused"] / median[f"fused[{b}]"]
                                  for b in dict.fromkeys(config.backends)}
    result = BenchResult(tuple(cases), speedups[config.backends[0]], speedups)
    if report is not None:
        write_report(report, result.as_dict())
    return result
