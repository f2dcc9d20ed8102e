"""One version everywhere: the installed distribution's, in ``onnxfuse.__version__``, in
``onnxfuse --version`` and in every JSON report (DESIGN.md's CLI contract)."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import onnxfuse
from onnxfuse.fileio import write_report
from tests.conftest import run_cli


def test_version_is_the_installed_distributions() -> None:
    assert onnxfuse.__version__ == importlib.metadata.version("onnxfuse")
    proc = run_cli(["--version"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"onnxfuse {onnxfuse.__version__}"


def test_a_report_leads_with_the_version(tmp_path: Path) -> None:
    write_report(tmp_path / "r.json", {"passed": True, "path": tmp_path})
    text = (tmp_path / "r.json").read_text()
    report = json.loads(text)
    assert list(report) == ["onnxfuse_version", "passed", "path"]
    assert report["onnxfuse_version"] == onnxfuse.__version__ and report["path"] == str(tmp_path)
    assert text.endswith("}\n")


def test_the_rewrite_report_carries_the_version(tmp_path: Path) -> None:
    from onnxfuse.exporters import ExportConfig, export

    export(ExportConfig("tiny", tmp_path / "mlp.onnx", part="mlp", verify=False))
    proc = run_cli(["rewrite", str(tmp_path / "mlp.onnx"), "-o", str(tmp_path / "f.onnx"), "--json", str(tmp_path / "r.json")])
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "r.json").read_text())["onnxfuse_version"] == onnxfuse.__version__
