"""The reference notebook's model, exported through the CLI with each exporter (acceptance)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.conftest import run_cli


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
@pytest.mark.parametrize("part", ["full", "mlp"])
def test_seed_export_matches_torch_on_both_shapes(tmp_path: Path, exporter: str, part: str) -> None:
    proc = run_cli(["export", "--model", "seed", "--exporter", exporter, "--part", part,
                    "-o", "seed.onnx"], cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr
    figures = re.findall(r"batch=(\d+)\s+seq=(\d+)\s+\S+\s+rel_l2=(\S+)", proc.stdout)
    assert [(b, s) for b, s, _ in figures] == [("2", "1024"), ("1", "37")]
    assert all(float(rel) <= 1e-5 for _, _, rel in figures), proc.stdout
    # The graph file stays small (Netron opens it at once); the weights are beside it.
    assert (tmp_path / "seed.onnx").stat().st_size < 2_000_000
    assert (tmp_path / "seed.onnx.data").stat().st_size > 100_000_000
    # Exactly one fusion per decoder layer (seed has one), in each exporter's graph.
    fused = run_cli(["rewrite", "seed.onnx", "-o", "fused.onnx", "--json", "r.json"], cwd=tmp_path)
    assert fused.returncode == 0, fused.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["fused"] == 1 and report["skipped"] == []
    assert (report["nodes"][0]["d"], report["nodes"][0]["d_ff"]) == (1024, 11008)
