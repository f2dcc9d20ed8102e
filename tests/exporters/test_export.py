"""Exports of the tiny models: files, dynamic axes, dtypes, opsets and verification."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from onnxfuse.errors import OutputError, ParityError, UnsupportedError, UserError
from onnxfuse.exporters import SECOND_SHAPE, ExportConfig, ExportResult, export
from tests.helpers import Exports


def _export(tmp_path: Path, model: str = "tiny", **kw: object) -> ExportResult:
    name = f"{model}-{kw.get('part', 'full')}-{kw.get('exporter', 'dynamo')}-{kw.get('dtype', 'float32')}.onnx"
    return export(ExportConfig(model, tmp_path / name, **kw))  # type: ignore[arg-type]


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def tiny_dynamo(exports: Exports) -> ExportResult:
    return exports.export("tiny")


def test_result_carries_paths_names_opset_and_figures(tiny_dynamo: ExportResult) -> None:
    r = tiny_dynamo
    assert r.onnx_path.is_file() and r.data_path is not None and r.data_path.is_file()
    assert r.data_path.name == r.onnx_path.name + ".data"
    assert r.input_names == ("input_ids", "attention_mask") and r.output_names == ("logits",)
    assert r.opset >= 18 and r.verified
    assert [(c.batch, c.seq) for c in r.checks] == [(2, 16), SECOND_SHAPE]
    for check in r.checks:
        (logits,) = check.outputs
        assert logits.passed and logits.rel_l2 <= 1e-5 and logits.limit == 1e-5
    assert _leftovers(r.onnx_path.parent) == []


def test_export_records_its_source(tiny_dynamo: ExportResult) -> None:
    header = onnx.load(str(tiny_dynamo.onnx_path), load_external_data=False)
    meta = {p.key: p.value for p in header.metadata_props}
    assert meta["onnxfuse.model"] == "tiny" and meta["onnxfuse.part"] == "full"
    assert (meta["onnxfuse.dtype"], meta["onnxfuse.seed"], meta["onnxfuse.exporter"]) == ("float32", "0", "dynamo")


def test_weights_are_external_and_axes_dynamic(tiny_dynamo: ExportResult) -> None:
    header = onnx.load(str(tiny_dynamo.onnx_path), load_external_data=False)
    assert tiny_dynamo.onnx_path.stat().st_size < tiny_dynamo.data_path.stat().st_size  # type: ignore[union-attr]
    external = [t for t in header.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert external and all(
        e.value == tiny_dynamo.onnx_path.name + ".data" for t in external for e in t.external_data
        if e.key == "location")
    for value in [*header.graph.input, *header.graph.output]:
        dims = value.type.tensor_type.shape.dim
        assert dims[0].dim_param and dims[1].dim_param, value.name


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
@pytest.mark.parametrize("model", ["tiny", "tiny-mistral", "tiny-qwen2"])
@pytest.mark.parametrize("part", ["full", "mlp"])
def test_families_export_and_verify_fp32(exports: Exports, model: str, exporter: str, part: str) -> None:
    r = exports.export(model, part, exporter)
    assert r.verified and all(o.rel_l2 <= 1e-5 for c in r.checks for o in c.outputs)


@pytest.mark.parametrize("model", ["tiny-bias", "tiny-gelu", "tiny-gemma", "tiny-phi3"])
def test_other_gated_mlp_families_export(exports: Exports, model: str) -> None:
    assert exports.export(model).verified


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
@pytest.mark.parametrize("part", ["full", "mlp"])
def test_float16_runs_in_ort_cpu_within_tolerance(exports: Exports, exporter: str, part: str) -> None:
    r = exports.export("tiny", part, exporter, "float16")
    for c in r.checks:
        for o in c.outputs:
            assert o.limit == 5e-3 and o.rel_l2 <= 5e-3 and o.passed


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
@pytest.mark.parametrize("part", ["full", "mlp"])
def test_bfloat16_names_the_missing_ort_kernel_and_leaves_nothing(tmp_path: Path, exporter: str, part: str) -> None:
    with pytest.raises(UnsupportedError, match=r"no kernel for (MatMul|Where|\w+)\(\d+\)") as info:
        _export(tmp_path, exporter=exporter, dtype="bfloat16", part=part)
    assert "--no-verify" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_bfloat16_without_verification_is_kept_and_checked(tmp_path: Path) -> None:
    r = _export(tmp_path, dtype="bfloat16", part="mlp", verify=False)
    assert r.checks == () and not r.verified
    model = onnx.load(str(r.onnx_path))
    onnx.checker.check_model(model, full_check=True)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.BFLOAT16


@pytest.mark.parametrize("exporter,opset", [("dynamo", 18), ("torchscript", 17)])
def test_opset_choice(tmp_path: Path, exporter: str, opset: int) -> None:
    assert _export(tmp_path, part="mlp", exporter=exporter, opset=opset).opset == opset


@pytest.mark.parametrize("kw,match", [
    (dict(exporter="torchscript", opset=21), "out of range"),
    (dict(opset=12), "out of range"),
    (dict(exporter="jit"), "unknown exporter"),
    (dict(dtype="float64"), "unknown dtype"),
    (dict(part="attn"), "unknown part"),
    (dict(batch=0), "must be >= 1"),
])
def test_bad_configs_are_user_errors(tmp_path: Path, kw: dict[str, object], match: str) -> None:
    with pytest.raises(UserError, match=match):
        _export(tmp_path, **kw)
    assert list(tmp_path.iterdir()) == []


def test_parity_failure_raises_and_publishes_nothing(tmp_path: Path) -> None:
    with pytest.raises(ParityError, match="rel L2"):
        _export(tmp_path, part="mlp", dtype="float16", rel_l2=1e-9)
    assert list(tmp_path.iterdir()) == []


def test_existing_output_needs_force(tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    out.write_bytes(b"user data")
    with pytest.raises(OutputError, match="--force"):
        export(ExportConfig("tiny", out, part="mlp"))
    assert out.read_bytes() == b"user data"
    r = export(ExportConfig("tiny", out, part="mlp", force=True))
    assert r.verified and onnx.load(str(out)).graph.node


def test_custom_example_shape(tmp_path: Path) -> None:
    r = _export(tmp_path, part="mlp", batch=3, seq=5)
    assert [(c.batch, c.seq) for c in r.checks] == [(3, 5), SECOND_SHAPE]


def test_batch_one_example_still_exports_dynamic_axes(tmp_path: Path) -> None:
    r = _export(tmp_path, part="mlp", batch=1, seq=1)
    assert r.verified
