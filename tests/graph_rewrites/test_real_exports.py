"""Fusion on real exports: exact counts, plugin-free parity, idempotence, unfuse, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxfuse.graph_rewrites import RewriteConfig, rewrite
from onnxfuse.models import build
from onnxfuse.numerics import compare
from tests.conftest import run_cli
from tests.helpers import Exports, ort_run


def _feeds(model: str, part: str, dtype: str, batch: int = 2, seq: int = 9) -> dict[str, np.ndarray]:
    ex = build(model, part=part, dtype=dtype)  # type: ignore[arg-type]
    return {n: t.numpy() for n, t in zip(ex.input_names, ex.make_inputs(batch, seq), strict=True)}


def _export(exports: Exports, model: str, part: str = "full", exporter: str = "dynamo",
            dtype: str = "float32") -> Path:
    return exports.export(model, part, exporter, dtype, verify=dtype != "bfloat16").onnx_path


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
@pytest.mark.parametrize("model", ["tiny", "tiny-mistral", "tiny-qwen2"])
def test_one_fusion_per_layer(tmp_path: Path, exports: Exports, model: str, exporter: str, dtype: str) -> None:
    src = _export(exports, model, exporter=exporter, dtype=dtype)
    result = rewrite(RewriteConfig(src, tmp_path / "fused.onnx"))
    assert len(result.fused) == 2 and result.skipped == ()
    fused = onnx.load(str(tmp_path / "fused.onnx"))
    assert [n.op_type for n in fused.graph.node].count("FusedGatedMLP") == 2
    assert not {"Sigmoid"} & {n.op_type for n in fused.graph.node}
    onnx.checker.check_model(str(tmp_path / "fused.onnx"), full_check=True)
    onnx.shape_inference.infer_shapes(fused, strict_mode=True)
    if dtype == "float32":
        feeds = _feeds(model, "full", dtype)
        (got,) = ort_run(tmp_path / "fused.onnx", feeds)
        (want,) = ort_run(src, feeds)
        c = compare("logits", got, want, limit=1e-6)
        assert c.passed, c.detail


@pytest.mark.parametrize("model,activation", [
    ("tiny", "silu"), ("tiny-bias", "silu"), ("tiny-gelu", "gelu"), ("tiny-gemma", "gelu_tanh"),
    ("tiny-mistral", "silu"), ("tiny-qwen2", "silu")])
@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_isolated_mlps_fuse_once(tmp_path: Path, exports: Exports, model: str, activation: str,
                                 exporter: str) -> None:
    src = _export(exports, model, part="mlp", exporter=exporter)
    result = rewrite(RewriteConfig(src, tmp_path / "fused.onnx"))
    assert [n.activation for n in result.fused] == [activation]
    assert result.fused[0].biased == (model == "tiny-bias")
    feeds = _feeds(model, "mlp", "float32")
    (got,) = ort_run(tmp_path / "fused.onnx", feeds)
    (want,) = ort_run(src, feeds)
    assert compare("output", got, want, limit=1e-6).passed


@pytest.fixture(scope="module")
def tiny_pair(exports: Exports) -> tuple[Path, Path]:
    return exports.fused_pair("tiny")


def test_rewriting_a_fused_model_is_a_byte_identical_no_op(tiny_pair: tuple[Path, Path], tmp_path: Path) -> None:
    _, fused = tiny_pair
    again = tmp_path / "fused.onnx"  # same file name: the .onnx names its data file
    result = rewrite(RewriteConfig(fused, again))
    assert result.fused == () and result.skipped == ()
    assert again.read_bytes() == fused.read_bytes()
    assert Path(f"{again}.data").read_bytes() == Path(f"{fused}.data").read_bytes()


def test_nodes_outside_matches_are_unchanged(tiny_pair: tuple[Path, Path]) -> None:
    src, fused = tiny_pair
    original = onnx.load(str(src), load_external_data=False)
    new = onnx.load(str(fused), load_external_data=False)
    replaced = {r for n in new.graph.node if n.op_type == "FusedGatedMLP"
                for p in n.metadata_props if p.key == "onnxfuse.replaced" for r in p.value.split(",")}
    kept = [n for n in original.graph.node if n.name not in replaced]
    assert [n for n in new.graph.node if n.op_type != "FusedGatedMLP"] == kept


def test_unfuse_gives_the_original_numbers(tiny_pair: tuple[Path, Path], tmp_path: Path) -> None:
    src, fused = tiny_pair
    back = tmp_path / "back.onnx"
    assert rewrite(RewriteConfig(fused, back, unfuse=True)).unfused == 2
    assert "FusedGatedMLP" not in {n.op_type for n in onnx.load(str(back)).graph.node}
    feeds = _feeds("tiny", "full", "float32")
    assert np.array_equal(ort_run(back, feeds)[0], ort_run(src, feeds)[0])


def test_cli_rewrite_report_and_errors(tiny_pair: tuple[Path, Path], tmp_path: Path) -> None:
    src, _ = tiny_pair
    before = src.read_bytes()
    proc = run_cli(["rewrite", str(src), "-o", "f.onnx", "--json", "r.json"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["fused"] == 2 and len(report["nodes"]) == 2 and report["skipped"] == []
    assert {"name", "rule", "activation", "d", "d_ff", "replaced"} <= set(report["nodes"][0])
    assert src.read_bytes() == before
    for args, needle in [
        ([str(tmp_path / "missing.onnx"), "-o", "x.onnx"], "does not exist"),
        ([str(src), "-o", str(src)], "also an input"),
        ([str(tmp_path / "r.json"), "-o", "y.onnx"], "is not an ONNX model"),
        ([str(src), "-o", "f.onnx"], "--force"),
    ]:
        bad = run_cli(["rewrite", *args], cwd=tmp_path)
        assert bad.returncode == 2, bad.stderr
        assert needle in bad.stderr and len(bad.stderr.strip().splitlines()) == 1, bad.stderr


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("dynamo", [False, True])
def test_two_d_inputs_fuse_through_gemm(tmp_path: Path, bias: bool, dynamo: bool) -> None:
    import torch
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaMLP

    torch.manual_seed(0)
    mlp = LlamaMLP(LlamaConfig(hidden_size=16, intermediate_size=44, mlp_bias=bias,
                               num_attention_heads=2)).eval()
    src = tmp_path / "mlp2d.onnx"
    torch.onnx.export(mlp, (torch.randn(6, 16),), str(src), dynamo=dynamo, input_names=["x"],
                      output_names=["y"], dynamic_axes=None if dynamo else {"x": {0: "n"}, "y": {0: "n"}})
    result = rewrite(RewriteConfig(src, tmp_path / "fused.onnx"))
    assert len(result.fused) == 1 and result.fused[0].biased == bias
    fused = onnx.load(str(tmp_path / "fused.onnx"))
    onnx.checker.check_model(fused, full_check=True)
    # Weights are stored once: transposed for the op, read back through Transposes in the body.
    assert len(fused.graph.initializer) == (6 if bias else 3)
    x = np.random.default_rng(0).standard_normal((6, 16)).astype(np.float32)
    (got,) = ort_run(tmp_path / "fused.onnx", {"x": x})
    (want,) = ort_run(src, {"x": x})
    assert compare("y", got, want, limit=1e-6).passed
