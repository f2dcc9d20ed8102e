"""Helpers shared by the test modules: plain ORT sessions, the run-wide export cache, and the
browser check. Import them as ``from tests.helpers import ...``; the ``exports`` fixture
(tests/conftest.py) hands out the one :class:`Exports` of a run."""

from __future__ import annotations

import os
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import pytest

if TYPE_CHECKING:
    import numpy as np
    import onnx
    import onnxruntime as ort

    from onnxfuse.exporters import ExportResult
    from onnxfuse.graph_rewrites import FusedNode, NearMiss

T = TypeVar("T")

# ------------------------------------------------------------------------------ ORT

def ort_session(model: onnx.ModelProto | str | os.PathLike[str],
                options: ort.SessionOptions | None = None) -> ort.InferenceSession:
    """A CPU session with every graph optimization off: ORT's own fusions would otherwise
    rewrite the graph under test. One thread (two xdist workers share two cores); warnings
    off (every session of a graph with overridable initializers warns).

    Args:
        model: a model proto, or the path of a model file (its external data beside it).
        options: session options to start from (the plugin's, say); optimizations are
            turned off in them too.
    """
    import onnx
    import onnxruntime as ort

    options = options or ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else os.fspath(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def ort_run(model: onnx.ModelProto | str | os.PathLike[str], feeds: dict[str, np.ndarray],
            options: ort.SessionOptions | None = None) -> list[np.ndarray]:
    """Every output of ``model`` on ``feeds``, in a session of :func:`ort_session`."""
    return ort_session(model, options).run(None, feeds)


# ------------------------------------------------------------------------------ rewrites

def fuse_proto(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, list[FusedNode], list[NearMiss]]:
    """``fuse_model`` on a copy of ``proto``: the fused proto, the fused nodes, the near misses."""
    import onnx_ir as ir

    from onnxfuse.graph_rewrites import fuse_model

    model = ir.from_proto(proto)
    fused, skipped = fuse_model(model)
    return ir.to_proto(model), fused, skipped


def stored_weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes of every float tensor ``model`` stores: initializers, and Constant nodes in the
    graph and in function bodies (a weight embedded in a body is stored again). Integer
    tensors (shapes, indices) do not count."""
    from onnx import numpy_helper

    tensors = list(model.graph.initializer)
    for node in [*model.graph.node, *(n for f in model.functions for n in f.node)]:
        tensors += [a.t for a in node.attribute if a.name == "value" and node.op_type == "Constant"]
    arrays = [numpy_helper.to_array(t) for t in tensors]
    return sum(a.nbytes for a in arrays if a.dtype.kind == "f" or a.dtype.name == "bfloat16")


# ------------------------------------------------------------------------------ exports

class Exports:
    """Exports of the registry's models and their fusions, each made once per test run.

    Seven modules export the same small models: 72 exports in a run, 38 of them different.
    A dynamo export of ``tiny`` costs 9 s of CPU (the mlp part 2.5 s, torchscript 1.3 s;
    verification included, 2-core x86 machine). Each entry is made by the first test that asks
    for it, in whichever xdist worker runs that test, under a file lock: the other worker waits
    and reads the same files. The exporter's own tests read the ``ExportResult`` of that one
    export. A failed export caches nothing: the next test that asks tries again and fails the
    same way. The files are shared: read them, and write nowhere beside them (the fixture
    fails the run if a test does: :meth:`changed`). In those seven modules and the exporter's,
    the cache took the CPU time of ``pytest -n 2`` from 605 s to 364 s.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def export(self, model: str, part: str = "full", exporter: str = "dynamo", dtype: str = "float32",
               verify: bool = True, with_past: bool = False, opset: int | None = None) -> ExportResult:
        """``onnxfuse.exporters.export`` of ``model`` with these settings (the rest default)
        into a folder of its own, holding exactly what the export wrote (``with_past``: the
        decoder with a KV cache; ``opset`` ``None``: the exporter's own)."""
        from onnxfuse.exporters import ExportConfig, export

        name = _export_name(model, part, exporter, dtype, with_past) + (f"-opset{opset}" if opset is not None else "")
        key = name if verify else f"{name}-unverified"

        def make(folder: Path) -> ExportResult:
            return export(ExportConfig(model, folder / f"{name}.onnx", part=part,  # type: ignore[arg-type]
                                       exporter=exporter, dtype=dtype, verify=verify,  # type: ignore[arg-type]
                                       with_past=with_past, opset=opset))
        return self.cached(key, make)

    def fused_pair(self, model: str, part: str = "full", dtype: str = "float32",
                   exporter: str = "dynamo", with_past: bool = False) -> tuple[Path, Path]:
        """The verified export of :meth:`export` and its default rewrite ``fused.onnx``."""
        from onnxfuse.graph_rewrites import RewriteConfig, rewrite

        src = self.export(model, part, exporter, dtype, with_past=with_past).onnx_path

        def make(folder: Path) -> Path:
            rewrite(RewriteConfig(src, folder / "fused.onnx"))
            return folder / "fused.onnx"
        return src, self.cached(f"{_export_name(model, part, exporter, dtype, with_past)}-fused", make)

    def genai(self, family: str, precision: str = "fp32", **extra: str) -> Path:
        """onnxruntime-genai's builder model folder for ``family`` (llama, qwen2, mistral,
        phi3, gemma: the registry's tiny spec of each, :data:`tests.producers.GENAI_SPECS`) at
        ``precision`` with builder options ``extra`` (one of
        :data:`tests.producers.GENAI_BUILDS`); ``genai("llama", "hf")``: the Hugging Face
        folder it was built from. The first call builds them all, in one process."""
        from tests.producers import build_all, genai_key

        built = self.cached("producers", lambda folder: build_all(folder))
        key = f"hf-{family}" if precision == "hf" else genai_key(family, precision, tuple(extra.items()))
        if key not in built:
            raise KeyError(f"no build {key}: add it to tests.producers.GENAI_BUILDS")
        return built[key]

    def cached(self, key: str, make: Callable[[Path], T]) -> T:
        """``make(folder)``'s result for ``key``, made once per run.

        Args:
            key: names the entry and its folder ``root/key``.
            make: writes into the (empty) folder it is given; its result must pickle.
        """
        from filelock import FileLock

        folder, done = self.root / key, self.root / f"{key}.pickle"
        with FileLock(self.root / f"{key}.lock"):
            if done.exists():
                return pickle.loads(done.read_bytes())  # type: ignore[no-any-return]
            shutil.rmtree(folder, ignore_errors=True)  # left by a worker that died making it
            folder.mkdir()
            result = make(folder)
            (self.root / f"{key}.files").write_text(_listing(folder))
            staged = self.root / f".{key}.pickle.partial"
            staged.write_bytes(pickle.dumps(result))
            staged.replace(done)
            return result


    def changed(self) -> list[str]:
        """The finished entries whose folder no longer holds exactly what was made there (a test
        wrote beside or over a shared file)."""
        return sorted(files.stem for files in self.root.glob("*.files")
                      if (self.root / f"{files.stem}.pickle").exists()
                      and _listing(self.root / files.stem) != files.read_text())


def _export_name(model: str, part: str, exporter: str, dtype: str, with_past: bool) -> str:
    return f"{model}-{part}-{exporter}-{dtype}{'-past' if with_past else ''}"


def _listing(folder: Path) -> str:
    """Every file below ``folder``: its path, size and modification time, one a line."""
    return "".join(f"{p.relative_to(folder)} {p.stat().st_size} {p.stat().st_mtime_ns}\n"
                   for p in sorted(folder.rglob("*")) if p.is_file())


def exports_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run's export cache: beside the xdist workers' temporary folders, so that both
    workers find it; in the run's own temporary folder without xdist (its parent outlives the
    run, and a later run must not read exports of older code)."""
    base = tmp_path_factory.getbasetemp()
    return (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "exports"


# ------------------------------------------------------------------------------ browser

def need_browser() -> None:
    """Skip without Chromium and chromedriver; in CI, fail instead."""
    if shutil.which("chromium") and shutil.which("chromedriver"):
        return
    if os.environ.get("CI"):
        pytest.fail("CI must have chromium and chromedriver (.ci/run installs them)")
    pytest.skip("chromium/chromedriver not installed")
