"""benchmarks/kernels.py: its arithmetic (checked by hand on round numbers, since the GPU run
that uses it cannot be checked here) and its no-GPU smoke path."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "kernels.py"


def _module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("bench_kernels", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_metrics_on_round_numbers() -> None:
    bench = _module()
    # n = d = d_ff = 1000, bf16: 6e9 FLOP; bytes 2 * (3e6 + 2e6 + 2e6) = 14e6.
    row = bench.metrics(1000, 1000, 1000, "bfloat16", ms=1.0, peak_tflops=10.0, peak_gbps=100.0)
    assert row["tflops"] == pytest.approx(6.0)
    assert row["gbps"] == pytest.approx(14.0)
    # Roofline time: max(6e9 / 10e12 s, 14e6 / 100e9 s) = max(0.6 ms, 0.14 ms) = 0.6 ms.
    assert row["pct_roofline"] == pytest.approx(60.0)
    assert row["pct_bandwidth"] == pytest.approx(14.0)
    assert row["pct_roofline_datasheet"] is None
    # Memory-bound: n = 1, tf32 (4-byte elements), d = d_ff = 1000: bytes 4 * (3e6 + 2e3 + 2e3).
    sheet = {"bfloat16": 20.0, "float16": 20.0, "tf32": 10.0, "gbps": 200.0}
    row = bench.metrics(1, 1000, 1000, "tf32", ms=0.2, peak_tflops=5.0, peak_gbps=100.0, sheet=sheet)
    nbytes = 4 * (3e6 + 4e3)
    assert row["pct_bandwidth"] == pytest.approx(100 * nbytes / 0.2e-3 / 100e9)
    assert row["pct_roofline"] == pytest.approx(100 * (nbytes / 100e9) / 0.2e-3)
    assert row["pct_bandwidth_datasheet"] == pytest.approx(row["pct_bandwidth"] / 2)


def test_datasheet_lookup_and_acceptance() -> None:
    bench = _module()
    assert bench.datasheet("NVIDIA H100 80GB HBM3")["gbps"] == 3350.0
    assert bench.datasheet("NVIDIA H200")["bfloat16"] == 989.4
    assert bench.datasheet("Tesla T4") is None
    rows = [
        dict(shape="notebook", dtype="bfloat16", impl="triton", speedup_vs_eager=1.4, pct_roofline=64.9),
        dict(shape="notebook", dtype="bfloat16", impl="eager", speedup_vs_eager=1.0, pct_roofline=99.0),
        dict(shape="llama7b-n1", dtype="bfloat16", impl="triton", pct_bandwidth=50.0),
        dict(shape="llama7b-n1", dtype="bfloat16", impl="triton-graph", pct_bandwidth=80.0),
    ]
    result = {point: (value, passed) for point, value, _, passed in bench.acceptance(rows)}
    assert result["notebook bfloat16 speedup_vs_eager (triton)"] == (1.4, True)
    assert result["notebook bfloat16 pct_roofline (triton)"] == (64.9, False), "eager's row must not count"
    assert result["notebook tf32 speedup_vs_eager (triton)"] == (None, False), "unmeasured is not a pass"
    assert result["llama7b-n1 bfloat16 pct_bandwidth (triton-graph)"] == (80.0, True)


def test_without_a_gpu_it_says_so_and_runs_the_smoke_case() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the script benchmarks instead")
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(SCRIPT.parents[1])})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "no CUDA GPU: no timings" in proc.stdout and "(ok)" in proc.stdout


def test_the_gpu_code_path_runs_end_to_end_as_a_dry_run(tmp_path: Path) -> None:
    """The benchmark's GPU path (tuning, every implementation, CUDA-graph rows for decode,
    metrics, acceptance, JSON) on CPU: tiny shapes, interpreter, wall clock, fake ceilings.
    The first GPU session must not find a typo in it."""
    out = tmp_path / "dry.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--json", str(out)], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(SCRIPT.parents[1])})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["dry_run"] is True and report["gpu"] == "cpu (dry run)"
    rows = report["rows"]
    # 2 shapes x 3 dtypes x 4 implementations, plus the 2 CUDA-graph rows of the decode shape.
    assert len(rows) == 2 * 3 * 4 + 3 * 2
    limits = {"bfloat16": 2e-2, "float16": 5e-3, "tf32": 1e-5}
    for r in rows:
        assert r["median_ms"] > 0 and r["p20_ms"] <= r["median_ms"] <= r["p80_ms"], r
        assert r["speedup_vs_eager"] > 0
        if r["impl"].startswith("triton"):
            assert r["rel_l2_vs_float64"] < limits[r["dtype"]], r
        if r["impl"] == "triton":
            assert set(r["configs"]) == {"gate_up", "down"}, r
    assert {r["impl"] for r in rows if r["n"] == 1} >= {"triton-graph", "eager-graph"}
    assert [a[0] for a in report["acceptance"]] == [
        "notebook bfloat16 speedup_vs_eager (triton)", "notebook bfloat16 pct_roofline (triton)",
        "notebook tf32 speedup_vs_eager (triton)", "llama7b-n1 bfloat16 pct_bandwidth (triton-graph)"]
    assert "acceptance: notebook bfloat16 pct_roofline (triton) = not measured (>= 65.0): FAIL" in proc.stdout


@pytest.mark.interpreter  # a dry run: the kernels on CPU
def test_a_failing_implementation_is_a_row_and_the_run_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """One implementation raising must not cost the others' figures; each shape is reported
    as soon as it is measured."""
    from onnxfuse.kernels.triton import gated_mlp

    bench = _module()
    real = gated_mlp.fused_gated_mlp

    def broken_when_fixed(*args: object, autotune: bool | None = None, **kw: object) -> object:
        if autotune is False:
            raise RuntimeError("planted")
        return real(*args, autotune=autotune, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(gated_mlp, "fused_gated_mlp", broken_when_fixed)
    reports: list[int] = []
    rows, _ = bench._bench([("t1", 1, 16, 24), ("t3", 3, 16, 24)], ("tf32",), dry_run=True,
                              report=lambda rows, meta: reports.append(len(rows)))
    assert reports == [6, 12], "a report after each shape"
    fixed = [r for r in rows if r["impl"] == "triton-fixed"]
    assert [r["error"] for r in fixed] == ["RuntimeError: planted"] * 2
    assert all("median_ms" in r for r in rows if r["impl"] != "triton-fixed")
    assert "FAILED: RuntimeError: planted" in bench._line(fixed[0])
    assert "FAIL: rel L2" in bench._line(dict(rows[0], rel_l2_vs_float64=0.5))
