"""``onnxfuse bench``: the unfused graph vs the fused graph vs torch eager, interleaved in one
run; medians with spread and ratios side by side, as tidy rows.

The method, since a 2-core CPU is noisy and its cases disturb each other:

- ORT sessions run without thread spinning (``session.intra_op.allow_spinning=0``): a spinning
  pool keeps a core busy after its run, and the next case timed against it lost 40-100%
  (seed MLP 2x16: 20-27 ms a run with spinning, 12 ms without), so the winner depended on
  the order of the cases.
- Each round runs every ORT case once, the order reversed every other round (ABBA), so no
  case always follows the same neighbour; torch eager runs last, then a pause (its OpenMP
  threads spin after a run too); a sample times enough calls for >= 10 ms.
- The speedup is paired: per round, unfused time / fused time; the estimate is the geometric
  mean of those ratios with a 95% confidence interval (Student t on the log ratios). When the
  interval is wider than +-5% the result says so (``noisy``) and the CLI warns: the machine
  was too noisy to tell.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

from onnxfuse import __version__
from onnxfuse.errors import UserError
from onnxfuse.fileio import check_output, write_report
from onnxfuse.pipeline import sessions
from onnxfuse.pipeline.configs import BenchConfig

__all__ = ["NOISE_LIMIT", "BenchConfig", "BenchResult", "Speedup", "bench", "paired_speedup"]

log = logging.getLogger(__name__)


# A speedup whose 95% interval is wider than this (relative half-width) cannot be told apart
# from the machine's noise at the precision people read these numbers with.
NOISE_LIMIT = 0.05
# Two-sided 95% Student t quantiles by degrees of freedom (then the normal's 1.96).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
         2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
         2.052, 2.048, 2.045, 2.042)
# Calls per sample: at least this long, so timer and scheduler noise stay small.
_SAMPLE_MS = 10.0
_MAX_CALLS = 64
# After torch eager, before the next round: its OpenMP pool spins for a while after a parallel
# region (libgomp's default wait policy), which would tax whichever case came next.
_TORCH_PAUSE_S = 0.05


@dataclasses.dataclass(frozen=True)
class Speedup:
    """A paired speedup: the geometric mean of per-round ratios with its 95% interval."""

    value: float
    low: float
    high: float
    rounds: int

    @property
    def noisy(self) -> bool:
        """Whether the interval is wider than +-:data:`NOISE_LIMIT` of the value."""
        return (self.high - self.low) / 2 > NOISE_LIMIT * self.value

    def as_dict(self) -> dict[str, object]:
        return {"value": self.value, "ci95": [self.low, self.high], "rounds": self.rounds, "noisy": self.noisy}


def paired_speedup(base_ms: list[float], other_ms: list[float]) -> Speedup:
    """``base / other`` from times measured in pairs (round i of each): geometric mean of the
    ratios, 95% interval from Student's t on their logs."""
    logs = [math.log(b / o) for b, o in zip(base_ms, other_ms, strict=True)]
    n = len(logs)
    mean = statistics.fmean(logs)
    if n < 2:
        return Speedup(math.exp(mean), 0.0, math.inf, n)
    half = (_T975[n - 2] if n - 2 < len(_T975) else 1.96) * statistics.stdev(logs) / math.sqrt(n)
    return Speedup(math.exp(mean), math.exp(mean - half), math.exp(mean + half), n)


@dataclasses.dataclass(frozen=True)
class BenchResult:
    cases: tuple[dict[str, object], ...]
    speedup: float  # unfused / fused (the first backend): paired, geometric mean
    speedups: dict[str, float] = dataclasses.field(default_factory=dict)  # per backend
    intervals: dict[str, Speedup] = dataclasses.field(default_factory=dict)  # per backend

    @property
    def noisy(self) -> bool:
        return any(s.noisy for s in self.intervals.values())

    def as_dict(self) -> dict[str, object]:
        first = next(iter(self.intervals.values()), None)
        return {"cases": list(self.cases), "speedup": self.speedup, "speedups": self.speedups,
                "speedup_ci95": [first.low, first.high] if first else None,
                "intervals": {b: s.as_dict() for b, s in self.intervals.items()},
                "noisy": self.noisy, "noise_limit": NOISE_LIMIT}


def _machine() -> dict[str, object]:
    import onnxruntime
    import torch

    return {"machine": platform.machine(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__, "torch": torch.__version__,
            "onnxfuse": __version__}


def _forward_runs(config: BenchConfig, made: dict[str, Any], feeds: dict[str, Any],
                  source: Any) -> dict[str, Callable[[], object]]:
    """One forward pass per call: each ORT session of ``made`` on ``feeds``, and torch eager."""
    paths = {name: config.original if name == "unfused" else config.fused for name in made}
    runs: dict[str, Callable[[], object]] = {
        name: functools.partial(sessions.run, sess, feeds, paths[name]) for name, sess in made.items()}
    if config.torch and source is not None:
        import torch

        ex, tensors = source

        def eager() -> object:
            with torch.no_grad():
                return ex.module(*tensors)
        runs["torch_eager"] = eager
    return runs


def _decode_runs(config: BenchConfig, info: sessions.ModelInfo, made: dict[str, Any], feeds: dict[str, Any],
                 source: Any) -> dict[str, Callable[[], object]]:
    """Greedy generation of ``config.decode`` tokens per call after the ``seq``-token prompt of
    ``feeds``, the cache kept in ORT (:mod:`onnxfuse.pipeline.generate`), and in torch eager
    with transformers' own cache; each call returns its mean milliseconds per decode step."""
    from onnxfuse.pipeline.generate import Decoder, greedy

    if not sessions.is_decoder(info):
        raise UserError(f"--decode times generation with a KV cache, and {config.original} has none "
                        "(inputs past_key_values.*): export the model with --with-past")
    prompt = [int(t) for t in feeds["input_ids"][0]]
    runs: dict[str, Callable[[], object]] = {}
    for name, sess in made.items():
        path = config.original if name == "unfused" else config.fused
        decoder = Decoder(path, sess, sessions.model_info(path))

        def step_ms(decoder: Decoder = decoder) -> float:
            _, _, steps = greedy(decoder, prompt, config.decode)
            return 1e3 * sum(steps) / max(len(steps), 1)
        runs[name] = step_ms
    lm = getattr(source[0].module, "model", None) if source is not None else None
    if config.torch and lm is not None:
        runs["torch_eager"] = functools.partial(_torch_decode_ms, lm, prompt, config.decode)
    return runs


def _torch_decode_ms(lm: Any, prompt: list[int], tokens: int) -> float:
    """Greedy decoding in torch eager with transformers' cache: mean ms per decode step."""
    import torch

    steps = []
    with torch.no_grad():
        out = lm(input_ids=torch.tensor([prompt]), use_cache=True)
        for _ in range(tokens - 1):
            token = out.logits[:, -1:].argmax(-1)
            start = time.perf_counter()
            out = lm(input_ids=token, cache=out.cache, use_cache=True)
            steps.append(time.perf_counter() - start)
    return 1e3 * sum(steps) / max(len(steps), 1)


def bench(config: BenchConfig) -> BenchResult:
    """Interleaved, paired timings of each case (see the module's docstring); ``speedup`` is
    unfused / fused with its 95% interval."""
    import onnxruntime as ort

    report = check_output(config.report, force=config.force, inputs=[config.original, config.fused]) if config.report else None
    original = sessions.model_info(config.original)

    def options(factory: Callable[[], Any] | None) -> Any:
        so = factory() if factory else ort.SessionOptions()
        if config.threads:
            so.intra_op_num_threads = config.threads
        for key in ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning"):
            so.add_session_config_entry(key, "0")  # see the module's docstring
        return so

    feeds, source = sessions.make_inputs(original, config.batch, config.seq)
    sessions_ = {"unfused": sessions.session(config.original, device=config.device, optimize=True,
                                             options=options(None))}
    for backend in dict.fromkeys(config.backends):
        factory = sessions.plugin_options(backend, config.device)
        sessions_[f"fused[{backend}]"] = sessions.session(config.fused, device=config.device, optimize=True,
                                                          options=options(factory))
    if config.torch and source is not None and config.threads:
        import torch

        torch.set_num_threads(config.threads)
    runs = (_decode_runs(config, original, sessions_, feeds, source) if config.decode
            else _forward_runs(config, sessions_, feeds, source))
    calls = {name: 1 for name in runs}
    times: dict[str, list[float]] = {name: [] for name in runs}
    onnx_cases = [name for name in runs if name != "torch_eager"]
    for round_ in range(config.warmup + config.repeat):
        order = onnx_cases if round_ % 2 == 0 else onnx_cases[::-1]
        if "torch_eager" in runs:  # last, then a pause: its OpenMP threads spin after a run
            order = [*order, "torch_eager"]
        for name in order:
            fn, n = runs[name], calls[name]
            start = time.perf_counter()
            for _ in range(n):
                own = fn()  # a decode case times its own steps (the prefill excluded)
            ms = own if isinstance(own, float) else (time.perf_counter() - start) * 1e3 / n
            if round_ >= config.warmup:
                times[name].append(ms)
            elif not config.decode:  # calibrate: enough calls for a sample of >= _SAMPLE_MS
                calls[name] = max(1, min(_MAX_CALLS, math.ceil(_SAMPLE_MS / max(ms, 1e-3))))
        if "torch_eager" in runs:
            time.sleep(_TORCH_PAUSE_S)
        log.debug("bench round %d/%d", round_ + 1, config.warmup + config.repeat)
    meta = _machine()
    median = {name: statistics.median(ts) for name, ts in times.items()}
    cases: list[dict[str, object]] = []
    for name, ts in times.items():
        qs = statistics.quantiles(ts, n=5) if len(ts) >= 2 else [ts[0]] * 4
        cases.append({"name": name, "median_ms": median[name], "p20_ms": qs[0], "p80_ms": qs[3],
                      "min_ms": min(ts), "repeat": len(ts), "device": config.device,
                      "batch": config.batch, "seq": config.seq, "model": original.source or config.original.name,
                      "calls_per_sample": calls[name], **meta,
                      **({"decode_tokens": config.decode, "decode_tokens_per_s": 1e3 / median[name]}
                         if config.decode else {}),
                      "speedup_vs_unfused": paired_speedup(times["unfused"], ts).value})
    intervals: dict[str, Speedup] = {b: paired_speedup(times["unfused"], times[f"fused[{b}]"])
                                     for b in dict.fromkeys(config.backends)}
    speedups = {b: s.value for b, s in intervals.items()}
    result = BenchResult(tuple(cases), speedups[config.backends[0]], speedups, intervals)
    for b, s in intervals.items():
        if s.noisy:
            log.warning("fused[%s]: speedup %.3f, 95%% interval [%.3f, %.3f] is wider than +-%.0f%%: the machine "
                        "is too noisy to tell; rerun with more --repeat, or on a quieter machine",
                        b, s.value, s.low, s.high, NOISE_LIMIT * 100)
    if report is not None:
        write_report(report, result.as_dict())
    return result
