"""Autotuning of the gated-MLP launches: time each candidate config of the shape class
(:data:`onnxfuse.kernels.triton.configs.CANDIDATES`) on the real inputs once, keep the fastest.

A choice is keyed by the device, Triton's version, the dtype, the precision, the launch
(``gate_up`` or ``down``), N, K, biases, and the number of rows rounded up to a power of two
(so prefill lengths 1,500 and 2,048 share one choice, and each decode batch size up to 64
has its own). Choices live for the process; with ``$ONNXFUSE_AUTOTUNE_CACHE`` naming a JSON
file they are also read from and written to it (atomically), so later processes skip the
timing and make the same choice.

A candidate that fails (too much shared memory for this GPU, a compiler error) is skipped;
if none runs, :class:`KernelError` carries the first failure. Timing runs write the launch's
real output, and the chosen config runs once more after them, so the result is always the
chosen config's. Different configs sum in different orders, so two processes that choose
differently can differ in the last bits; a fixed cache file, or ``autotune=False`` (each
class's first candidate), keeps results bitwise stable across processes.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from onnxfuse import fileio
from onnxfuse.errors import KernelError, OutputError
from onnxfuse.kernels.triton.configs import KernelConfig

__all__ = ["TuneKey", "Tuner", "set_tuner", "token_bucket", "tuner", "wall_quantiles"]

_LOG = logging.getLogger(__name__)
CACHE_ENV = "ONNXFUSE_AUTOTUNE_CACHE"
MAX_BUCKET = 8192


def token_bucket(tokens: int) -> int:
    """``tokens`` rounded up to a power of two, at most :data:`MAX_BUCKET`."""
    bucket = 1
    while bucket < tokens and bucket < MAX_BUCKET:
        bucket *= 2
    return bucket


@dataclasses.dataclass(frozen=True)
class TuneKey:
    """What a tuned choice depends on."""

    device: str
    dtype: str
    precision: str
    stage: str
    bucket: int
    n: int
    k: int
    biased: bool

    def text(self) -> str:
        return "|".join(str(v) for v in dataclasses.astuple(self))


def wall_quantiles(fn: Callable[[], None], quantiles: Sequence[float], runs: int = 5) -> list[float]:
    """Wall-clock quantiles in milliseconds of ``runs`` runs after one warm-up (CPU, where
    the interpreter runs)."""
    fn()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    samples.sort()
    return [samples[min(runs - 1, int(q * runs))] for q in quantiles]


def _wall_clock(fn: Callable[[], None]) -> float:
    return wall_quantiles(fn, [0.5], runs=3)[0]


def _cuda_timer(fn: Callable[[], None]) -> float:
    """Median milliseconds over warm runs on the current CUDA stream (``do_bench``)."""
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median"))


class Tuner:
    """Chooses and remembers the fastest candidate per :class:`TuneKey`.

    Args:
        timer: ``timer(fn) -> milliseconds``; default: ``do_bench`` for CUDA keys, the wall
            clock otherwise.
        cache_path: JSON file of earlier choices (default ``$ONNXFUSE_AUTOTUNE_CACHE``, or none).
    """

    def __init__(self, timer: Callable[[Callable[[], None]], float] | None = None,
                 cache_path: str | os.PathLike[str] | None = None) -> None:
        self._timer = timer
        env = os.environ.get(CACHE_ENV)
        self._cache_path = Path(cache_path) if cache_path is not None else Path(env) if env else None
        self._choices: dict[str, str] = {}
        self._loaded = False
        self._lock = threading.Lock()
        self.timings: dict[TuneKey, dict[str, float | str]] = {}  # per key: label -> ms or error

    def choose(self, key: TuneKey, candidates: Sequence[KernelConfig],
               run: Callable[[KernelConfig], None], *, may_time: bool = True) -> KernelConfig:
        """Run the fastest of ``candidates`` for ``key`` and return it. The first time (per
        process, or per cache file) each candidate is timed with ``run(config)``, which must
        launch the whole stage; then the choice is remembered. With ``may_time=False`` an
        unknown key runs the first candidate and nothing is timed or remembered."""
        by_label = {c.label(): c for c in candidates}
        with self._lock:
            self._load()
            known = by_label.get(self._choices.get(key.text(), ""))
        if known is not None:
            run(known)
            return known
        if not may_time:  # e.g. inside a CUDA graph capture: the default, not remembered
            run(candidates[0])
            return candidates[0]
        timer = self._timer or (_cuda_timer if key.device.startswith("cuda") else _wall_clock)
        results: dict[str, float | str] = {}
        for label, config in by_label.items():
            try:
                results[label] = float(timer(functools.partial(run, config)))
            except Exception as e:  # a candidate this GPU cannot run: skip it, keep the reason
                results[label] = f"{type(e).__name__}: {e}"
                # Too much shared memory for this GPU is expected of some tiles; anything
                # else is a bug worth seeing.
                level = logging.DEBUG if type(e).__name__ == "OutOfResources" else logging.WARNING
                _LOG.log(level, "autotune %s: candidate %s failed: %s", key.text(), label, results[label])
        timed = {label: ms for label, ms in results.items() if isinstance(ms, float)}
        if not timed:
            first = next(iter(results.values()), "no candidates")
            raise KernelError(f"no candidate config runs for {key.stage} {key.n}x{key.k} "
                              f"{key.dtype} on {key.device}: {first}")
        best = min(timed, key=lambda label: timed[label])  # ties: the earlier candidate
        _LOG.info("autotune %s: %s (%.3f ms; %d of %d candidates ran)", key.text(), best,
                  timed[best], len(timed), len(results))
        with self._lock:
            self.timings[key] = results
            self._choices[key.text()] = best
            self._save()
        run(by_label[best])
        return by_label[best]

    def choice(self, key: TuneKey) -> str | None:
        """The label of the config chosen for ``key`` (timed or from the cache file), if any."""
        with self._lock:
            self._load()
            return self._choices.get(key.text())

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        if self._cache_path is None or not self._cache_path.is_file():
            return
        try:
            data = json.loads(self._cache_path.read_text())
            self._choices.update({str(k): str(v) for k, v in data.items()})
        except (OSError, ValueError, AttributeError) as e:
            _LOG.warning("ignoring the autotune cache %s: %s", self._cache_path, e)

    def _save(self) -> None:
        if self._cache_path is None:
            return
        try:
            self._cache_path.parent.mkdir(parents=True, exist_ok=True)
            with fileio.staged_outputs(self._cache_path) as stage:  # atomic: whole or absent
                (stage / self._cache_path.name).write_text(json.dumps(self._choices, indent=1, sort_keys=True))
        except (OSError, OutputError) as e:
            _LOG.warning("cannot write the autotune cache %s: %s", self._cache_path, e)


_TUNER: Tuner | None = None


def tuner() -> Tuner:
    """The process's tuner (created on first use)."""
    global _TUNER
    if _TUNER is None:
        _TUNER = Tuner()
    return _TUNER


def set_tuner(new: Tuner | None) -> Tuner | None:
    """Replace the process's tuner (``None``: a fresh one on next use); returns the old one."""
    global _TUNER
    old, _TUNER = _TUNER, new
    return old
