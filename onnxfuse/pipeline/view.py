"""Netron views: ``onnxfuse view`` serves a model on a loopback port; ``snapshot`` renders
Netron's view to PNG through headless Chromium (for reports and docs)."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from onnxfuse.errors import OutputError, UnsupportedError, UserError
from onnxfuse.fileio import staged_file
from onnxfuse.pipeline import sessions

if TYPE_CHECKING:
    from selenium.webdriver import Chrome

__all__ = ["chromium_path", "free_port", "serve", "snapshot"]

log = logging.getLogger(__name__)
_CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                   "--disable-background-networking", "--disable-component-update", "--disable-sync",
                   "--disable-dev-shm-usage")


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve(model: str | os.PathLike[str], port: int | None = None, *, browse: bool = False) -> Iterator[str]:
    """Serve ``model`` with Netron on 127.0.0.1 for the duration of the block; yield its URL.

    Raises:
        UserError: the model does not exist or is not an ONNX model; the port is taken.
    """
    import netron

    sessions.model_info(model)  # a clear error for a missing or broken file, before serving
    port = port or free_port()
    try:
        address = netron.start(os.fspath(model), ("127.0.0.1", port), browse=browse)
    except OSError as e:
        raise UserError(f"cannot serve on 127.0.0.1:{port}: {e.strerror}; choose another --port") from None
    host, bound = address if isinstance(address, tuple) else ("127.0.0.1", port)
    url = f"http://{host}:{bound}"
    try:
        yield url
    finally:
        netron.stop(address)


def chromium_path() -> str:
    """The Chromium (or Chrome) binary.

    Raises:
        UnsupportedError: none is installed.
    """
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    raise UnsupportedError("snapshots need Chromium: install it (Debian: apt-get install chromium "
                           "chromium-driver)")


def _driver(width: int, height: int) -> Chrome:
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        raise UnsupportedError("snapshots need selenium: pip install 'onnxfuse[view]'") from None
    driver_bin = shutil.which("chromedriver")
    if driver_bin is None:
        raise UnsupportedError("snapshots need chromedriver: apt-get install chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium_path()
    for flag in _CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--window-size={width},{height}")
    options.add_argument(f"--user-data-dir={tempfile.mkdtemp(prefix='onnxfuse-chromium-')}")
    return webdriver.Chrome(options=options, service=Service(executable_path=driver_bin))


def snapshot(model: str | os.PathLike[str], png: str | os.PathLike[str], *, width: int = 1600,
             height: int = 1200, timeout: float = 60.0, expect: str | None = None) -> list[str]:
    """Render Netron's view of ``model`` to ``png``; return the node labels it drew.

    Accepts Netron's cookie consent first, then waits until the graph is drawn (and, with
    ``expect``, until a node labelled ``expect`` is drawn).

    Raises:
        UnsupportedError: Chromium, chromedriver or selenium is missing.
        UserError: the graph did not render within ``timeout`` seconds.
    """
    from selenium.webdriver.common.by import By

    out = Path(png)
    with serve(model) as url:
        driver = _driver(width, height)
        try:
            driver.get(url)
            deadline = time.monotonic() + timeout
            labels: list[str] = []
            while time.monotonic() < deadline:
                for button in driver.find_elements(By.XPATH, "//button[normalize-space()='Accept']"):
                    if button.is_displayed():
                        button.click()
                labels = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "g.node text, .node-item-type text")
                          if e.text]
                if labels and (expect is None or expect in labels):
                    break
                time.sleep(0.25)
            else:
                raise UserError(f"Netron did not draw {expect or 'the graph'} within {timeout:.0f} s")
            time.sleep(0.5)  # let the last layout pass settle before the screenshot
            with staged_file(out) as tmp:
                if not driver.save_screenshot(os.fspath(tmp)):
                    raise OutputError(f"Chromium could not write the screenshot {out}: choose another output")
            return labels
        finally:
            driver.quit()
