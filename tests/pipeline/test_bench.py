"""`onnxfuse bench`: interleaved cases and the JSON contract (timings are not asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import onnxfuse
from onnxfuse.exporters import ExportConfig, export
from onnxfuse.graph_rewrites import RewriteConfig, rewrite
from tests.conftest import run_cli


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
    assert report["onnxfuse_version"] == onnxfuse.__version__
    assert "speedup (unfused / fused)" in proc.stdout


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
