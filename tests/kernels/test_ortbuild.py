"""The plugin's build step (run by setup.py on install): its requirements and its failures."""

from __future__ import annotations

from pathlib import Path

import pytest

from onnxfuse.errors import KernelError
from onnxfuse.kernels import ort as plugin
from onnxfuse.kernels.ort import _build


def test_cmake_comes_from_pypi_only_where_the_system_has_none(monkeypatch: pytest.MonkeyPatch,
                                                              tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no cmake on PATH
    assert _build.cmake_requirements() == ["cmake>=3.18"]
    old = tmp_path / "cmake"
    old.write_text("#!/bin/sh\necho 'cmake version 3.16.3'\n")
    old.chmod(0o755)
    assert _build.cmake_requirements() == ["cmake>=3.18"]
    old.write_text("#!/bin/sh\necho 'cmake version 3.25.1'\n")
    assert _build.cmake_requirements() == []


def test_a_header_folder_without_headers_is_a_clear_error(monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    monkeypatch.setenv("ORT_INCLUDE_DIR", str(tmp_path))
    with pytest.raises(KernelError, match=f"ORT_INCLUDE_DIR={tmp_path} holds no onnxruntime_cxx_api.h"):
        plugin.build(tmp_path / "out" / _build.LIBRARY_NAME)
    assert not (tmp_path / "out").exists()


def test_a_failing_compile_fails_with_the_compiler_output(monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    include = tmp_path / "include"
    include.mkdir()
    (include / "onnxruntime_cxx_api.h").write_text("#error not the real ORT header\n")
    monkeypatch.setenv("ORT_INCLUDE_DIR", str(include))
    with pytest.raises(KernelError, match=r"(?s)cmake --build.*not the real ORT header"):
        plugin.build(tmp_path / "out" / _build.LIBRARY_NAME)
    assert not (tmp_path / "out").exists()
