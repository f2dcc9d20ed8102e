"""`onnxfuse demo` end to end on the tiny model, and its report opened in headless Chromium."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import onnxfuse
from tests.helpers import need_browser


def test_demo_writes_a_report_that_chromium_renders(tmp_path: Path) -> None:
    env = {**os.environ}
    env.pop("TRITON_INTERPRET", None)  # the CLI sets it itself on a machine without a GPU
    proc = subprocess.run([sys.executable, "-m", "onnxfuse.pipeline.cli", "demo", "--model", "tiny",
                           "--out", str(tmp_path / "demo")], capture_output=True, text=True,
                          timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "demo"
    report = json.loads((out / "report.json").read_text())
    assert report["onnxfuse_version"] == onnxfuse.__version__
    assert json.loads((out / "parity-mlp.json").read_text())["onnxfuse_version"] == onnxfuse.__version__
    steps = {s["step"]: s for s in report["summary"]}
    for step in ("export full", "rewrite full", "parity full", "export mlp", "rewrite mlp",
                 "parity mlp", "triton backend", "bench mlp"):
        assert steps[step]["ok"], steps[step]
    assert report["triton"]["mode"] == "interpreter" and report["triton"]["passed"]
    # Parity ran the plugin's native CPU kernel on every fused node (counted), not the function bodies.
    parity_mlp = json.loads((out / "parity-mlp.json").read_text())
    assert parity_mlp["implementation"] == "plugin cpu matmul" and "plugin cpu matmul" in steps["parity full"]["result"]
    assert parity_mlp["kernel_runs"]["counted"] == parity_mlp["kernel_runs"]["expected"] > 0
    assert report["triton"]["implementation"] == "triton (interpreter)"
    assert "report:" in proc.stdout and "triton backend" in proc.stdout
    # Fused nodes carry their parity figures (Netron shows node metadata).
    import onnx

    fused = onnx.load(str(out / "tiny-mlp-fused.onnx"))
    (node,) = [n for n in fused.graph.node if n.op_type == "FusedGatedMLP"]
    meta = {p.key: p.value for p in node.metadata_props}
    assert meta["onnxfuse.parity.passed"] == "true" and float(meta["onnxfuse.parity.rel_l2"]) <= 1e-5
    assert "onnxfuse.rule" in meta
    for png in ("errors.png", "timing.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"

    need_browser()
    assert (out / "graph-after.png").is_file() and (out / "graph-before.png").is_file()
    from selenium.webdriver.common.by import By

    from onnxfuse.pipeline.view import _driver

    driver = _driver(1200, 1600)
    try:
        driver.get((out / "report.html").as_uri())
        time.sleep(0.5)
        rows = driver.find_elements(By.CSS_SELECTOR, "#summary tbody tr")
        assert len(rows) == len(report["summary"])
        # Each rendered row reads as its step in report.json: name, result text, status.
        cells = [[td.text for td in row.find_elements(By.TAG_NAME, "td")] for row in rows]
        assert cells == [[s["step"], s["result"], "ok" if s["ok"] else "FAIL"] for s in report["summary"]]
        images = driver.find_elements(By.TAG_NAME, "img")
        assert len(images) == 4
        # Every image actually loaded (naturalWidth is 0 for a broken image).
        assert all(driver.execute_script("return arguments[0].naturalWidth", img) > 100 for img in images)
        driver.save_screenshot(str(tmp_path / "report.png"))
    finally:
        driver.quit()
