"""Netron in a real browser: `onnxfuse view` on a loopback port, driven by headless Chromium,
must draw the FusedGatedMLP node. Fails (does not skip) in CI when Chromium is missing."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import Exports, need_browser


@pytest.fixture(scope="module")
def fused_mlp(exports: Exports) -> Path:
    return exports.fused_pair("tiny", "mlp")[1]


def test_view_serves_and_chromium_draws_the_fused_node(fused_mlp: Path, tmp_path: Path) -> None:
    need_browser()
    from selenium.webdriver.common.by import By

    from onnxfuse.pipeline.view import _driver, free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "onnxfuse.pipeline.cli", "view", str(fused_mlp),
                             "--port", str(port), "--no-browser"], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert f"http://127.0.0.1:{port}" in line, line
        urllib.request.urlopen(f"http://127.0.0.1:{port}", timeout=10).read()
        driver = _driver(1400, 900)
        try:
            driver.get(f"http://127.0.0.1:{port}")
            deadline, labels = time.monotonic() + 60, []
            while time.monotonic() < deadline and "FusedGatedMLP" not in labels:
                for button in driver.find_elements(By.XPATH, "//button[normalize-space()='Accept']"):
                    if button.is_displayed():
                        button.click()
                labels = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "g.node text")]
                time.sleep(0.25)
            assert "FusedGatedMLP" in labels, labels
            driver.save_screenshot(str(tmp_path / "view.png"))
            assert (tmp_path / "view.png").stat().st_size > 10_000
        finally:
            driver.quit()
    finally:
        proc.send_signal(__import__("signal").SIGINT)
        assert proc.wait(timeout=20) == 0


def test_snapshot_command_writes_a_png(fused_mlp: Path, tmp_path: Path) -> None:
    need_browser()
    out = tmp_path / "snap.png"
    proc = subprocess.run([sys.executable, "-m", "onnxfuse.pipeline.cli", "snapshot", str(fused_mlp),
                           "-o", str(out), "--expect", "FusedGatedMLP", "-q"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_view_of_a_missing_model_is_a_user_error(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "onnxfuse.pipeline.cli", "view", str(tmp_path / "x.onnx"),
                           "--no-browser"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "does not exist" in proc.stderr
