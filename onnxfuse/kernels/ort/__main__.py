"""``python -m onnxfuse.kernels.ort``: rebuild the plugin into the package (prints its path)."""

from __future__ import annotations

import logging

from onnxfuse.kernels.ort import build

logging.basicConfig(level=logging.INFO, format="%(message)s")
print(build())  # noqa: T201 - the command's output
