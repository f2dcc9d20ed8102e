"""`onnxfuse parity`: passing pairs, a planted fault found and named, the JSON contract."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

import onnxfuse
from tests.conftest import run_cli
from tests.helpers import Exports


@pytest.fixture(scope="module")
def pair(exports: Exports) -> tuple[Path, Path]:
    return exports.fused_pair("tiny")


def _plant_fault(fused: Path, out: Path, node_name: str) -> None:
    model = ir.load(fused)
    node = next(n for n in model.graph if n.name == node_name)
    w_down = node.inputs[3]
    data = w_down.const_value.numpy().copy()  # type: ignore[union-attr]
    data[0, 0] += 0.5
    w_down.const_value = ir.tensor(data, name=w_down.name)
    ir.save(model, out, external_data=out.name + ".data")


def test_parity_passes_and_follows_the_json_contract(pair: tuple[Path, Path], tmp_path: Path) -> None:
    original, fused = pair
    proc = run_cli(["parity", str(original), str(fused), "--json", str(tmp_path / "r.json")])
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["passed"] is True
    assert report["onnxfuse_version"] == onnxfuse.__version__
    assert [o["name"] for o in report["outputs"]] == ["logits@2x16", "logits@1x37"]
    for row in report["outputs"]:
        assert {"name", "max_abs", "rel_l2", "passed"} <= set(row) and row["passed"]
    assert len(report["torch"]) == 2 and all(r["passed"] for r in report["torch"])


def test_planted_fault_exits_1_and_names_the_node(pair: tuple[Path, Path], tmp_path: Path) -> None:
    _, fused = pair
    original = pair[0]
    bad = tmp_path / "bad.onnx"
    _plant_fault(fused, bad, "FusedGatedMLP_1")
    proc = run_cli(["parity", str(original), str(bad), "--json", str(tmp_path / "r.json")])
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "first divergent fused node: FusedGatedMLP_1" in proc.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["passed"] is False and report["first_divergent_node"] == "FusedGatedMLP_1"
    nodes = {n["name"]: n["passed"] for n in report["nodes"]}
    assert nodes == {"FusedGatedMLP_0": True, "FusedGatedMLP_1": False}
    assert np.isfinite([o["rel_l2"] for o in report["outputs"]]).all()


def test_parity_user_errors(pair: tuple[Path, Path], tmp_path: Path) -> None:
    original, _ = pair
    proc = run_cli(["parity", str(original), str(tmp_path / "missing.onnx")])
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_cuda_without_a_cuda_provider_is_one_clear_line(pair: tuple[Path, Path]) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    proc = run_cli(["parity", *map(str, pair), "--device", "cuda"])
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "onnxfuse parity: error: ONNX Runtime has no CUDAExecutionProvider here (got "
        "['CPUExecutionProvider']): install onnxruntime-gpu or use --device cpu"]


def test_triton_backend_passes_and_localises_a_fault(pair: tuple[Path, Path], tmp_path: Path) -> None:
    """ORT → plugin → Triton kernel (interpreted) for both fused nodes; with a planted fault the
    localisation (fused node outputs exposed, custom op in the graph) names the node."""
    original, fused = pair
    proc = run_cli(["parity", str(original), str(fused), "--backend", "triton", "--json", str(tmp_path / "r.json")])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads((tmp_path / "r.json").read_text())["passed"] is True
    bad = tmp_path / "bad.onnx"
    _plant_fault(fused, bad, "FusedGatedMLP_0")
    proc = run_cli(["parity", str(original), str(bad), "--backend", "triton", "--json", str(tmp_path / "bad.json")])
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert json.loads((tmp_path / "bad.json").read_text())["first_divergent_node"] == "FusedGatedMLP_0"


def test_a_decoder_with_a_cache_is_checked_at_a_prefill_and_a_decode_step(exports: Exports) -> None:
    """A with-past export: the second shape is one token after a cache of 37 positions (the
    source model's own cache), vs the original and vs torch, through the plugin's kernel."""
    from onnxfuse.pipeline.configs import ParityConfig
    from onnxfuse.pipeline.parity import parity

    src, fused = exports.fused_pair("tiny", with_past=True)
    result = parity(ParityConfig(src, fused))
    names = [c.name for c in result.outputs]
    assert "logits@2x16" in names and "logits@1x1+37" in names and "present.1.value@1x1+37" in names
    assert result.passed and {c.name for c in result.torch} >= {"logits@1x1+37 vs torch"}
    assert result.kernel_runs is not None and result.kernel_runs.nodes == 2
