"""The autotuner: choices, memory, the cache file, failing candidates, and every GPU candidate
config computing the reference (under the interpreter on CPU, compiled on a GPU)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from triton.runtime.errors import OutOfResources

from onnxfuse.errors import KernelError
from onnxfuse.kernels.triton import tuning
from onnxfuse.kernels.triton.configs import CANDIDATES, KernelConfig, default_configs, shape_class
from onnxfuse.kernels.triton.gated_mlp import fused_gated_mlp
from onnxfuse.kernels.triton.reference import fused_gated_mlp_reference
from onnxfuse.numerics import compare, tolerance
from tests.conftest import has_cuda

DEVICE = "cuda" if has_cuda() else "cpu"
KEY = tuning.TuneKey("test-device", "float32", "ieee", "gate_up", 16, 40, 24, False)
A, B, C = (KernelConfig(block_m=m) for m in (16, 32, 64))


class FakeTimer:
    """Milliseconds per config label; records the order of runs."""

    def __init__(self, ms: dict[str, float]) -> None:
        self.ms = ms
        self.timed: list[str] = []

    def __call__(self, fn: Callable[[], None]) -> float:
        fn()
        self.timed.append(self.last)
        return self.ms[self.last]

    def run(self, config: KernelConfig) -> None:
        self.last = config.label()
        if self.ms.get(self.last) is None:
            raise RuntimeError(f"out of resources: {self.last}")


@pytest.fixture
def process_tuner() -> Iterator[None]:
    old = tuning.set_tuner(None)
    yield
    tuning.set_tuner(old)


def test_token_buckets() -> None:
    assert [tuning.token_bucket(n) for n in (1, 2, 3, 16, 17, 64, 65, 1500, 2048, 10**6)] == \
        [1, 2, 4, 16, 32, 64, 128, 2048, 2048, 8192]


def test_the_fastest_candidate_is_chosen_run_last_and_remembered() -> None:
    timer = FakeTimer({A.label(): 2.0, B.label(): 1.0, C.label(): 1.5})
    tuner = tuning.Tuner(timer=timer)
    runs: list[str] = []

    def run(config: KernelConfig) -> None:
        timer.run(config)
        runs.append(config.label())

    assert tuner.choose(KEY, (A, B, C), run) == B
    assert timer.timed == [A.label(), B.label(), C.label()]
    assert runs[-1] == B.label(), "the chosen config must run last: the output is its result"
    runs.clear()
    assert tuner.choose(KEY, (A, B, C), run) == B
    assert len(timer.timed) == 3, "a known key is not timed again"
    assert runs == [B.label()], "but its choice runs"


def test_without_timing_an_unknown_key_runs_the_default_and_is_not_remembered() -> None:
    timer = FakeTimer({A.label(): 2.0, B.label(): 1.0})
    tuner = tuning.Tuner(timer=timer)
    assert tuner.choose(KEY, (A, B), timer.run, may_time=False) == A
    assert timer.timed == [] and tuner.timings == {}
    assert tuner.choose(KEY, (A, B), timer.run) == B
    assert tuner.choose(KEY, (A, B), timer.run, may_time=False) == B, "a known choice is used"


def test_ties_go_to_the_earlier_candidate() -> None:
    timer = FakeTimer({A.label(): 1.0, B.label(): 1.0})
    assert tuning.Tuner(timer=timer).choose(KEY, (B, A), timer.run) == B


def test_failing_candidates_are_skipped_and_all_failing_is_a_kernel_error(caplog: pytest.LogCaptureFixture) -> None:
    timer = FakeTimer({A.label(): None, B.label(): 3.0})  # type: ignore[dict-item]
    tuner = tuning.Tuner(timer=timer)
    with caplog.at_level(logging.WARNING, logger="onnxfuse.kernels.triton.tuning"):
        assert tuner.choose(KEY, (A, B), timer.run) == B
    assert "out of resources" in str(tuner.timings[KEY][A.label()])
    assert f"candidate {A.label()} failed: RuntimeError: out of resources" in caplog.text, \
        "a failure other than OutOfResources is a warning"
    assert tuner.choice(KEY) == B.label()
    timer = FakeTimer({A.label(): None, B.label(): None})  # type: ignore[dict-item]
    with pytest.raises(KernelError, match=r"no candidate config runs for gate_up 40x24 .*out of resources"):
        tuning.Tuner(timer=timer).choose(KEY, (A, B), timer.run)


def test_the_cache_file_carries_choices_to_a_new_process(tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    cache = tmp_path / "sub" / "autotune.json"
    timer = FakeTimer({A.label(): 2.0, B.label(): 1.0})
    tuning.Tuner(timer=timer, cache_path=cache).choose(KEY, (A, B), timer.run)
    assert json.loads(cache.read_text()) == {KEY.text(): B.label()}
    assert [p.name for p in cache.parent.iterdir()] == ["autotune.json"], "no temporary file left"

    again = FakeTimer({A.label(): 0.5, B.label(): 1.0})
    assert tuning.Tuner(timer=again, cache_path=cache).choose(KEY, (A, B), again.run) == B
    assert again.timed == [], "a cached choice is not timed"
    # A choice that is no longer a candidate is timed afresh.
    assert tuning.Tuner(timer=again, cache_path=cache).choose(KEY, (A, C), again.run) == A

    cache.write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="onnxfuse.kernels.triton.tuning"):
        assert tuning.Tuner(timer=again, cache_path=cache).choose(KEY, (A, B), again.run) == A
    assert "ignoring the autotune cache" in caplog.text
    assert json.loads(cache.read_text()) == {KEY.text(): A.label()}, "rewritten whole"


def test_the_cache_path_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(tuning.CACHE_ENV, str(tmp_path / "env.json"))
    timer = FakeTimer({A.label(): 1.0})
    tuning.Tuner(timer=timer).choose(KEY, (A,), timer.run)
    assert (tmp_path / "env.json").is_file()


def _weights(d: int, d_ff: int, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(*s, generator=gen) * s[0] ** -0.5).to(DEVICE)
            for s in ((d, d_ff), (d, d_ff), (d_ff, d))]


def _check(x: torch.Tensor, ws: list[torch.Tensor], y: torch.Tensor) -> None:
    ref = fused_gated_mlp_reference(x.cpu(), *(w.cpu() for w in ws), compute_dtype=torch.float64)
    c = compare("y", y.float().cpu().numpy(), ref.numpy(), limit=tolerance("float32", "ieee"))
    assert c.passed, c.detail


def test_autotuned_launches_compute_the_reference_and_tune_once_per_bucket(
        process_tuner: None, monkeypatch: pytest.MonkeyPatch) -> None:
    # Two candidates per launch keep the interpreter quick; the timer prefers the second.
    monkeypatch.setitem(CANDIDATES, ("decode", "gate_up"), (KernelConfig(16, 32, 32), KernelConfig(32, 16, 16)))
    monkeypatch.setitem(CANDIDATES, ("decode", "down"), (KernelConfig(16, 32, 32, split_k=2), KernelConfig(16, 16, 16)))
    calls = []

    def second_is_faster(fn: Callable[[], None]) -> float:
        fn()
        calls.append(fn)
        return 2.0 if len(calls) % 2 else 1.0

    tuner = tuning.Tuner(timer=second_is_faster)
    tuning.set_tuner(tuner)
    ws = _weights(24, 40, 0)
    for rows in (5, 7, 9):  # 5 and 7 share the bucket 8; 9 is in 16
        x = torch.randn(rows, 24, device=DEVICE)
        _check(x, ws, fused_gated_mlp(x, *ws, precision="ieee", autotune=True,
                                      out=torch.full_like(x, float("nan"))))
    assert sorted((k.stage, k.bucket) for k in tuner.timings) == \
        [("down", 8), ("down", 16), ("gate_up", 8), ("gate_up", 16)]
    assert all(len(v) == 2 for v in tuner.timings.values())
    # Timed once per bucket: 2 candidates x 2 stages x 2 buckets. Rows 7 reuses the choices made
    # for rows 5 (a tuner that forgot its choices would time them again: 12 timings).
    assert len(calls) == 8


def test_autotune_defaults_off_under_the_interpreter(process_tuner: None) -> None:
    if DEVICE == "cuda":
        pytest.skip("the default is on for CUDA tensors")
    ws = _weights(8, 12, 1)
    fused_gated_mlp(torch.randn(3, 8), *ws)
    assert tuning.tuner().timings == {}


def test_shape_classes_and_defaults() -> None:
    assert shape_class(64) == "decode" and shape_class(65) == "prefill"
    assert default_configs(1) == (CANDIDATES["decode", "gate_up"][0], CANDIDATES["decode", "down"][0])
    assert default_configs(4096)[1].split_k == 1
    labels = [c.label() for cfgs in CANDIDATES.values() for c in cfgs]
    assert CANDIDATES["decode", "down"][0].label() == "16x64x64-g1-w4-s4-k8"
    assert all(len(set(c.label() for c in cfgs)) == len(cfgs) for cfgs in CANDIDATES.values()), labels


# On CPU float32 IEEE (the interpreter's cost); on a GPU the tensor-core paths users get.
CANDIDATE_DTYPES = ([("float32", "ieee")] if DEVICE == "cpu"
                    else [("float32", "tf32"), ("bfloat16", "tf32")])


@pytest.mark.parametrize("dtype_name,precision", CANDIDATE_DTYPES)
@pytest.mark.parametrize("cls_stage", list(CANDIDATES), ids=lambda k: "-".join(k))
def test_every_gpu_candidate_computes_the_reference(cls_stage: tuple[str, str], dtype_name: str,
                                                     precision: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each candidate's tiles on a shape odd against every tile (partial tiles in M, N and K)
    but with 16-byte rows, so the TMA tiles really run TMA; the output poisoned first. The
    gate/up candidates drive both launches."""
    from onnxfuse.kernels.triton import gated_mlp

    spy = _Spy(gated_mlp._gemm_tma_kernel)
    monkeypatch.setattr(gated_mlp, "_gemm_tma_kernel", spy)
    dtype = getattr(torch, dtype_name)
    cls, stage = cls_stage
    for i, config in enumerate(CANDIDATES[cls_stage]):
        rows = 20 if cls == "decode" else 200  # 2 row tiles, the last partial
        d, d_ff = (152, 312) if stage == "gate_up" else (40, 312)  # long K for the split-K tiles
        ws = [w.to(dtype) for w in _weights(d, d_ff, i)]
        x = torch.randn(rows, d, device=DEVICE).to(dtype)
        kw = dict(config=config) if stage == "gate_up" else dict(down_config=config, config=KernelConfig(32, 32, 32))
        before = spy.launches
        try:
            y = fused_gated_mlp(x, *ws, precision=precision, out=torch.full_like(x, float("nan")), **kw)  # type: ignore[arg-type]
        except OutOfResources:  # a float32 tile too big for this GPU: the tuner skips it too
            assert i > 0, f"the default {config.label()} must fit"
            continue
        assert spy.launches - before == (config.tma * (2 if stage == "gate_up" else 1)), config.label()
        ref = fused_gated_mlp_reference(x.cpu(), *(w.cpu() for w in ws), compute_dtype=torch.float64)
        c = compare("y", y.float().cpu().numpy(), ref.numpy(), limit=tolerance(dtype_name, precision))  # type: ignore[arg-type]
        assert c.passed, f"{config.label()}: {c.detail}"


class _Spy:
    """Counts launches of a Triton kernel (``kernel[grid](...)``)."""

    def __init__(self, kernel: object) -> None:
        self.kernel, self.launches = kernel, 0

    def __getitem__(self, grid: object) -> object:
        self.launches += 1
        return self.kernel[grid]  # type: ignore[index]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("activation", ["silu", "gelu", "gelu_tanh"])
def test_tma_tiles_compute_the_reference_and_write_only_their_rows(
        dtype: torch.dtype, activation: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """TMA configs on 16-byte aligned rows: partial tiles in every direction (out-of-bounds
    loads read zero), the output a slice of a larger buffer whose other rows stay untouched
    (out-of-bounds stores are dropped); biases; both launches through the TMA kernel."""
    from onnxfuse.kernels.triton import gated_mlp

    spy = _Spy(gated_mlp._gemm_tma_kernel)
    monkeypatch.setattr(gated_mlp, "_gemm_tma_kernel", spy)
    rows, d, d_ff = 70, 40, 72  # rows: 40 * 2 = 80 B (fp16), 72 * 2 = 144 B: multiples of 16
    gen = torch.Generator().manual_seed(int(dtype.itemsize) + len(activation))
    ws = [(torch.randn(*s, generator=gen) * s[0] ** -0.5).to(dtype).to(DEVICE)
          for s in ((d, d_ff), (d, d_ff), (d_ff, d))]
    bs = [(torch.randn(s, generator=gen) * 0.1).to(dtype).to(DEVICE) for s in (d_ff, d_ff, d)]
    x = torch.randn(rows, d, generator=gen).to(dtype).to(DEVICE)
    big = torch.full((rows + 33, d), 12345.0, dtype=dtype, device=DEVICE)
    config = KernelConfig(32, 64, 32, group_m=2, tma=True)
    y = fused_gated_mlp(x, *ws, *bs, activation=activation, precision="ieee", out=big[:rows], config=config)
    assert spy.launches == 2, "both launches must take the TMA kernel"
    assert (big[rows:] == 12345.0).all(), "a TMA store wrote past the output's rows"
    ref = fused_gated_mlp_reference(x.cpu(), *(t.cpu() for t in ws + bs), activation=activation,
                                    compute_dtype=torch.float64)
    name = str(dtype).removeprefix("torch.")
    c = compare("y", y.float().cpu().numpy(), ref.numpy(), limit=tolerance(name, "ieee"))  # type: ignore[arg-type]
    assert c.passed, c.detail
    assert torch.equal(fused_gated_mlp(x, *ws, *bs, activation=activation, precision="ieee", config=config), y)


def test_tma_configs_fall_back_to_the_pointer_kernel_on_unaligned_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    from onnxfuse.kernels.triton import gated_mlp

    spy = _Spy(gated_mlp._gemm_tma_kernel)
    monkeypatch.setattr(gated_mlp, "_gemm_tma_kernel", spy)
    ws = _weights(21, 30, 5)  # 21 * 4 = 84 B rows: not a multiple of 16
    x = torch.randn(9, 21, device=DEVICE)
    y = fused_gated_mlp(x, *ws, precision="ieee", config=KernelConfig(16, 32, 32, tma=True))
    assert spy.launches == 0
    _check(x, ws, y)
    assert not gated_mlp._tma_eligible(torch.empty(4, 8)[:, :6].contiguous().t())


@pytest.mark.gpu
def test_autotuned_calls_inside_a_cuda_graph_capture(process_tuner: None) -> None:
    """A shape first seen during a capture runs the default tiles untimed; a tuned shape
    replays its choice. Both graphs compute the reference."""
    ws = _weights(256, 512, 7)
    for rows, pretune in ((8, False), (200, True)):
        x = torch.randn(rows, 256, device=DEVICE)
        # Warm up outside the capture (compiles the kernels), tuning only the second shape.
        fused_gated_mlp(x, *ws, precision="ieee", autotune=pretune)
        y = torch.full_like(x, float("nan"))
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fused_gated_mlp(x, *ws, precision="ieee", autotune=True, out=y)
        graph.replay()
        torch.cuda.synchronize()
        _check(x, ws, y)
    stages = sorted((k.stage, k.bucket) for k in tuning.tuner().timings)
    assert stages == [("down", 256), ("gate_up", 256)], "only the pre-tuned shape was timed"
