"""`onnxfuse bench`: interleaved cases and the JSON contract (timings are not asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import onnxfuse
from onnxfuse.exporters import ExportConfig, export
from onnxfuse.graph_rewrites import RewriteConfig, rewrite
from tests.conftest import run_cli
from tests.helpers import Exports


def test_bench_reports_cases_and_speedup(tmp_path: Path) -> None:
    export(ExportConfig("tiny", tmp_path / "mlp.onnx", part="mlp"))
    rewrite(RewriteConfig(tmp_path / "mlp.onnx", tmp_path / "fused.onnx"))
    proc = run_cli(["bench", str(tmp_path / "mlp.onnx"), str(tmp_path / "fused.onnx"), "--repeat", "3",
                    "--warmup", "1", "--json", str(tmp_path / "b.json"), "-q"])
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "b.json").read_text())
    assert [c["name"] for c in report["cases"]] == ["unfused", "fused[default]", "torch_eager"]
    for case in report["cases"]:
        assert case["median_ms"] > 0 and case["repeat"] == 3 and case["onnxruntime"]
    assert report["speedup"] > 0
    low, high = report["speedup_ci95"]
    assert low <= report["speedup"] <= high and report["intervals"]["default"]["rounds"] == 3
    assert isinstance(report["noisy"], bool) and report["noise_limit"] == 0.05
    assert report["onnxfuse_version"] == onnxfuse.__version__
    assert "speedup (unfused / fused[default]): " in proc.stdout and "95% CI [" in proc.stdout


def test_bench_times_every_backend_side_by_side(tmp_path: Path) -> None:
    export(ExportConfig("tiny", tmp_path / "mlp.onnx", part="mlp"))
    rewrite(RewriteConfig(tmp_path / "mlp.onnx", tmp_path / "fused.onnx"))
    proc = run_cli(["bench", str(tmp_path / "mlp.onnx"), str(tmp_path / "fused.onnx"), "--repeat", "2",
                    "--warmup", "1", "--backend", "all", "--no-torch", "--json", str(tmp_path / "b.json"), "-q"])
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "b.json").read_text())
    assert [c["name"] for c in report["cases"]] == ["unfused", "fused[none]", "fused[default]", "fused[triton]"]
    assert set(report["speedups"]) == {"none", "default", "triton"}
    assert report["speedup"] == report["speedups"]["none"]


def test_bench_refuses_an_unknown_backend(tmp_path: Path) -> None:
    proc = run_cli(["bench", "a.onnx", "b.onnx", "--backend", "default,fast"])
    assert proc.returncode == 2 and "unknown backend 'fast'" in proc.stderr


def test_the_paired_speedup_is_the_geometric_mean_of_ratios_with_a_t_interval() -> None:
    from onnxfuse.pipeline.bench import paired_speedup

    # Every round exactly 2x: the estimate is 2 and the interval has no width.
    s = paired_speedup([10.0, 20.0, 40.0], [5.0, 10.0, 20.0])
    assert s.value == pytest.approx(2.0) and s.low == pytest.approx(2.0) and s.high == pytest.approx(2.0)
    assert not s.noisy
    # Ratios 1.1 and 0.9 (logs +-0.1 and -0.105): geometric mean ~0.995, t(1) = 12.706 makes the
    # interval wide, and so noisy. A median of the cases' medians would not pair the rounds.
    s = paired_speedup([11.0, 9.0], [10.0, 10.0])
    assert s.value == pytest.approx((1.1 * 0.9) ** 0.5)
    assert s.low < 0.5 and s.high > 1.5 and s.noisy and s.rounds == 2
    # A machine hiccup in both cases of one round cancels in the pair.
    s = paired_speedup([10.0, 10.0, 100.0, 10.0], [10.0, 10.0, 100.0, 10.0])
    assert s.value == pytest.approx(1.0) and s.high - s.low == pytest.approx(0.0)


def test_bench_sessions_do_not_spin_and_torch_runs_last(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A spinning ORT pool, or torch's, taxes the case timed after it (measured: 12 ms -> 20-27
    ms on the seed MLP); the bench turns spinning off and pauses after torch."""
    from onnxfuse.pipeline import bench as bench_module
    from onnxfuse.pipeline import sessions

    export(ExportConfig("tiny", tmp_path / "mlp.onnx", part="mlp"))
    rewrite(RewriteConfig(tmp_path / "mlp.onnx", tmp_path / "fused.onnx"))
    made: list[object] = []
    real_session, real_run = sessions.session, sessions.run
    order: list[str] = []

    def session(path, **kw):  # type: ignore[no-untyped-def]
        made.append(kw["options"])
        return real_session(path, **kw)

    def run(sess, feeds, path):  # type: ignore[no-untyped-def]
        order.append(path.name)
        return real_run(sess, feeds, path)

    monkeypatch.setattr(sessions, "session", session)
    monkeypatch.setattr(sessions, "run", run)
    result = bench_module.bench(bench_module.BenchConfig(tmp_path / "mlp.onnx", tmp_path / "fused.onnx",
                                                          warmup=0, repeat=2))
    assert len(made) == 2
    for options in made:
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"  # type: ignore[attr-defined]
    # Round 1 unfused then fused, round 2 the reverse (calls per sample: 1 without warm-up).
    assert order == ["mlp.onnx", "fused.onnx", "fused.onnx", "mlp.onnx"]
    assert [c["name"] for c in result.cases][-1] == "torch_eager"


def test_decode_bench_times_generation_with_the_cache(exports: Exports, tmp_path: Path) -> None:
    """`--decode N` times N greedy tokens per case (ORT's cache through I/O binding, torch with
    its own cache): ms per decode step, tokens/s, and the paired speedup of the two."""
    src, fused = exports.fused_pair("tiny", with_past=True)
    proc = run_cli(["bench", str(src), str(fused), "--decode", "6", "--seq", "5", "--repeat", "3", "--warmup", "1",
                    "--json", str(tmp_path / "d.json"), "-q"])
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "d.json").read_text())
    assert [c["name"] for c in report["cases"]] == ["unfused", "fused[default]", "torch_eager"]
    for case in report["cases"]:
        assert case["decode_tokens"] == 6 and case["repeat"] == 3
        assert case["decode_tokens_per_s"] == pytest.approx(1e3 / case["median_ms"])
    assert "ms/token" in proc.stdout and "tokens/s" in proc.stdout


def test_decode_bench_of_a_model_without_a_cache_names_the_fix(exports: Exports) -> None:
    src, fused = exports.fused_pair("tiny", "mlp")
    proc = run_cli(["bench", str(src), str(fused), "--decode", "4", "-q"])
    assert proc.returncode == 2 and "export the model with --with-past" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
