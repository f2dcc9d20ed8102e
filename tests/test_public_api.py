"""The package's public face is exactly what ``__all__`` declares, and every name resolves."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json

import numpy as np
import pytest

import onnxfuse

PUBLIC_MODULES = ["onnxfuse", "onnxfuse.errors", "onnxfuse.numerics", "onnxfuse.fileio",
                  "onnxfuse.ops", "onnxfuse.models", "onnxfuse.exporters", "onnxfuse.graph_rewrites",
                  "onnxfuse.kernels", "onnxfuse.pipeline.api", "onnxfuse.pipeline.configs"]


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_all_names_resolve(name: str) -> None:
    module = importlib.import_module(name)
    assert len(set(module.__all__)) == len(module.__all__)
    for attr in module.__all__:
        assert getattr(module, attr) is not None, f"{name}.{attr}"


def test_top_level_api_is_declared() -> None:
    assert set(dir(onnxfuse)) == set(onnxfuse.__all__)
    with pytest.raises(AttributeError):
        onnxfuse.not_a_name  # noqa: B018


def test_every_stage_config_is_public() -> None:
    for name in ("ExportConfig", "RewriteConfig", "ParityConfig", "BenchConfig", "DemoConfig"):
        assert name in onnxfuse.__all__
        assert dataclasses.is_dataclass(getattr(onnxfuse, name))


@pytest.mark.parametrize("function,config", [
    ("export", "ExportConfig"), ("fuse", "RewriteConfig"), ("compare", "ParityConfig"),
    ("bench", "BenchConfig"), ("generate", "GenerateConfig"),
])
def test_api_keywords_are_the_config_fields(function: str, config: str) -> None:
    """Each API function takes its config's optional fields as keywords, with the same defaults
    (``rel_l2=None`` stands for the config's empty mapping)."""
    params = {n: p for n, p in inspect.signature(getattr(onnxfuse, function)).parameters.items()
              if p.kind is inspect.Parameter.KEYWORD_ONLY}
    fields = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
              for f in dataclasses.fields(getattr(onnxfuse, config))
              if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING}
    assert set(params) == set(fields)
    for name, default in fields.items():
        assert params[name].default == default or (params[name].default is None and default == {}), name
        assert params[name].annotation != "Any", name


def test_error_exit_codes() -> None:
    assert onnxfuse.UserError("x").exit_code == 2
    assert onnxfuse.ModelNotFoundError("x").exit_code == 2
    assert onnxfuse.ParityError("x").exit_code == 1
    assert onnxfuse.ExportError("x").exit_code == 3


@pytest.mark.interpreter
def test_python_api_mirrors_the_cli(tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = onnxfuse.export("tiny", tmp_path / "m.onnx", part="mlp")
    fused = onnxfuse.fuse(result.onnx_path, tmp_path / "f.onnx")
    assert len(fused.fused) == 1
    parity = onnxfuse.compare(result.onnx_path, fused.output)
    assert parity.passed
    # The CLI on the same files gives the same answers (the same configs underneath).
    from tests.conftest import run_cli

    proc = run_cli(["rewrite", str(result.onnx_path), "-o", str(tmp_path / "cli.onnx"),
                    "--json", str(tmp_path / "rewrite.json")])
    assert proc.returncode == 0, proc.stderr
    cli_rewrite = json.loads((tmp_path / "rewrite.json").read_text())
    assert [n["name"] for n in cli_rewrite["nodes"]] == [n.name for n in fused.fused]
    proc = run_cli(["parity", str(result.onnx_path), str(fused.output), "--json", str(tmp_path / "parity.json")])
    assert proc.returncode == 0, proc.stderr
    cli_parity = json.loads((tmp_path / "parity.json").read_text())
    assert cli_parity["passed"] is parity.passed
    assert [o["rel_l2"] for o in cli_parity["outputs"]] == [o.rel_l2 for o in parity.outputs]
    timing = onnxfuse.bench(result.onnx_path, fused.output, repeat=2, warmup=1, torch=False)
    # Paired per round (the geometric mean of the per-round ratios), inside its own interval.
    interval = timing.intervals["default"]
    assert timing.speedup == interval.value and interval.low <= timing.speedup <= interval.high
    assert interval.rounds == 2
    assert {c["name"]: c["speedup_vs_unfused"] for c in timing.cases}["fused[default]"] == pytest.approx(timing.speedup)
    sess = onnxfuse.session(fused.output)
    assert sess.get_providers()[0] == "CPUExecutionProvider"
    from onnxfuse.kernels.ort import bridge

    before = bridge.calls()
    triton = onnxfuse.session(fused.output, backend="triton")
    name = triton.get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal((1, 3, 64)).astype(np.float32)
    np.testing.assert_allclose(triton.run(None, {name: x})[0], sess.run(None, {name: x})[0], rtol=1e-4, atol=1e-5)
    assert bridge.calls() == before + 1
