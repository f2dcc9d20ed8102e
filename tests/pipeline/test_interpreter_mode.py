"""Triton's interpreter mode is decided once, at process entry, by the CLI: on for a command
that runs Triton kernels on CPU, untouched otherwise (library code never sets it)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from onnxfuse.exporters import ExportConfig, export
from onnxfuse.graph_rewrites import RewriteConfig, rewrite
from tests.conftest import run_cli


@pytest.mark.parametrize("argv,interpret", [
    (["parity", "a.onnx", "b.onnx", "--backend", "triton"], True),
    (["parity", "a.onnx", "b.onnx"], False),
    (["parity", "a.onnx", "b.onnx", "--backend", "triton", "--device", "cuda"], False),
    (["bench", "a.onnx", "b.onnx", "--backend", "default,triton"], True),
    (["bench", "a.onnx", "b.onnx", "--backend", "all", "--device", "cuda"], False),
    (["bench", "a.onnx", "b.onnx"], False),
    (["demo"], True),
    (["export", "--model", "tiny", "-o", "m.onnx"], False),
])
def test_the_cli_sets_interpreter_mode_only_for_triton_on_cpu(
        argv: list[str], interpret: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    from onnxfuse.pipeline import cli

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    cmd = cli._COMMANDS[argv[0]]
    assert cmd.config is not None
    args = cli._parser(argv[0]).parse_args(argv)
    cli._use_interpreter(cmd, cli._config_from_args(cmd.config(), cmd.options, args))
    assert os.environ.get("TRITON_INTERPRET") == ("1" if interpret else None)


def test_parity_with_triton_on_cpu_runs_in_a_clean_environment(tmp_path: Path) -> None:
    """No TRITON_INTERPRET in the environment: the CLI must set it before triton is imported."""
    export(ExportConfig("tiny", tmp_path / "mlp.onnx", part="mlp", verify=False))
    rewrite(RewriteConfig(tmp_path / "mlp.onnx", tmp_path / "fused.onnx"))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = run_cli(["parity", str(tmp_path / "mlp.onnx"), str(tmp_path / "fused.onnx"),
                    "--backend", "triton", "-q"], env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "parity: passed" in proc.stdout
