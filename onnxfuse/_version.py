"""The installed distribution's version, read once from its metadata (standard library
only, so that every layer, :mod:`onnxfuse.fileio` included, may import it)."""

from __future__ import annotations

from importlib import metadata

__all__ = ["__version__"]

try:
    __version__: str = metadata.version("onnxfuse")
except metadata.PackageNotFoundError:  # a source tree on sys.path, never installed
    __version__ = "0+unknown"  # PEP 440 local version: sorts below every release
