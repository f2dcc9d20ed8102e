"""Nothing lost (issue 7): every command leaves its inputs byte-identical, failed ones
included; an existing output is replaced only with --force; no input file (model or
weights, under any path, symlink or hard link) is ever an output; a run killed with SIGKILL
mid-write publishes nothing; the same command twice writes the same bytes.

Most commands run in-process through ``cli.main`` (the exit code and stderr a user sees,
without a fresh interpreter's start-up); the kill and the determinism tests need fresh
processes and run the CLI as a user does.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from onnxfuse.exporters import ExportConfig, export
from onnxfuse.fileio import model_files, staged_outputs
from onnxfuse.graph_rewrites import RewriteConfig, rewrite
from onnxfuse.pipeline.cli import main
from tests.conftest import run_cli
from tests.helpers import need_browser

Fingerprint = dict[str, tuple[str, int, int]]


def fingerprint(folder: Path) -> Fingerprint:
    """Every entry under ``folder``: content hash (or link target), mtime and inode."""
    prints = {}
    for p in sorted(folder.rglob("*")):
        st = p.lstat()
        if p.is_symlink():
            digest = "-> " + os.readlink(p)
        elif p.is_dir():
            digest = "dir"
        else:
            digest = hashlib.sha256(p.read_bytes()).hexdigest()
        prints[str(p.relative_to(folder))] = (digest, st.st_mtime_ns, st.st_ino)
    return prints


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A read-only-by-contract folder: the tiny export, its fusion, a Hugging Face
    checkpoint folder of tiny, and a file that is not a model."""
    folder = tmp_path_factory.mktemp("inputs")
    # TorchScript: 1 s in-process against 7-10 s for dynamo; either serves the file checks.
    export(ExportConfig("tiny", folder / "tiny.onnx", exporter="torchscript"))
    rewrite(RewriteConfig(folder / "tiny.onnx", folder / "fused.onnx"))
    from onnxfuse.models import build

    build("tiny").module.model.save_pretrained(folder / "hf")
    (folder / "junk.onnx").write_bytes(b"\x08\x07 not a model")
    return folder


@pytest.fixture
def copies(inputs: Path, tmp_path: Path) -> Path:
    """The tiny export and its fusion copied to ``tmp_path`` (tests that write next to them)."""
    for name in ("tiny.onnx", "tiny.onnx.data", "fused.onnx", "fused.onnx.data"):
        shutil.copy2(inputs / name, tmp_path / name)
    return tmp_path


def cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    """``onnxfuse ARGS -q`` in-process: the exit code and the stderr lines."""
    code = main([*args, "-q"])
    return code, capsys.readouterr().err.strip().splitlines()


def assert_refused(code: int, err: list[str], *needles: str) -> None:
    assert code == 2, err
    assert len(err) == 1 and "Traceback" not in err[0], err
    for needle in needles:
        assert needle in err[0], err[0]


def _args(template: list[str], **folders: Path) -> list[str]:
    """``template`` with each leading ``X/`` replaced by the folder named ``X``."""
    return [f"{folders[a[0]]}{a[1:]}" if a[:2] in {f"{k}/" for k in folders} else a for a in template]


# Each command, succeeding and failing, with inputs from `inputs` (I) and outputs in `out` (O).
COMMANDS: dict[str, tuple[list[str], int]] = {
    "export from a checkpoint folder": (["export", "--model", "I/hf", "--exporter", "torchscript",
                                         "-o", "O/e.onnx"], 0),
    "rewrite": (["rewrite", "I/tiny.onnx", "-o", "O/f.onnx", "--json", "O/r.json"], 0),
    "rewrite --unfuse": (["rewrite", "I/fused.onnx", "-o", "O/u.onnx", "--unfuse"], 0),
    "parity --json": (["parity", "I/tiny.onnx", "I/fused.onnx", "--backend", "none", "--json", "O/p.json"], 0),
    "bench --json": (["bench", "I/tiny.onnx", "I/fused.onnx", "--backend", "none", "--repeat", "1",
                      "--warmup", "0", "--no-torch", "--json", "O/b.json"], 0),
    "rewrite onto its input": (["rewrite", "I/tiny.onnx", "-o", "I/tiny.onnx", "--force"], 2),
    "rewrite of a non-model": (["rewrite", "I/junk.onnx", "-o", "O/f.onnx"], 2),
    "rewrite into a missing folder": (["rewrite", "I/tiny.onnx", "-o", "O/no/f.onnx"], 2),
    "parity of a non-model": (["parity", "I/tiny.onnx", "I/junk.onnx", "--json", "O/p.json"], 2),
    "parity report onto the weights": (["parity", "I/tiny.onnx", "I/fused.onnx", "--json",
                                        "I/tiny.onnx.data", "--force"], 2),
    "bench report onto a model": (["bench", "I/tiny.onnx", "I/fused.onnx", "--json", "I/fused.onnx",
                                   "--force"], 2),
    "export onto a checkpoint file": (["export", "--model", "I/hf", "-o", "I/hf/config.json"], 2),
    "snapshot onto its model": (["snapshot", "I/fused.onnx", "-o", "I/fused.onnx", "--force"], 2),
}


@pytest.mark.parametrize("name", COMMANDS)
def test_inputs_are_byte_identical_after_every_command(name: str, inputs: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    args, expected = COMMANDS[name]
    before = fingerprint(inputs)
    code, err = cli(_args(args, I=inputs, O=tmp_path), capsys)
    assert code == expected, err
    if expected == 2:
        assert_refused(code, err)
        assert list(tmp_path.iterdir()) == []
    assert fingerprint(inputs) == before


# A command of each kind whose output D/out.* is already there (D holds tiny and fused).
EXISTING: dict[str, list[str]] = {
    "export": ["export", "--model", "tiny", "--part", "mlp", "--no-verify", "-o", "D/out.onnx"],
    "rewrite": ["rewrite", "D/tiny.onnx", "-o", "D/out.onnx"],
    "rewrite --json": ["rewrite", "D/tiny.onnx", "-o", "D/f2.onnx", "--json", "D/out.json"],
    "parity --json": ["parity", "D/tiny.onnx", "D/fused.onnx", "--backend", "none", "--json", "D/out.json"],
    "bench --json": ["bench", "D/tiny.onnx", "D/fused.onnx", "--backend", "none", "--repeat", "1",
                     "--warmup", "0", "--no-torch", "--json", "D/out.json"],
    "snapshot": ["snapshot", "D/fused.onnx", "-o", "D/out.png"],
}


@pytest.mark.parametrize("kind", EXISTING)
def test_existing_output_is_replaced_only_with_force(kind: str, copies: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    args = _args(EXISTING[kind], D=copies)
    out = Path(next(a for a in args if Path(a).stem == "out"))
    out.write_bytes(b"precious")
    before = fingerprint(copies)
    assert_refused(*cli(args, capsys), str(out), "--force")
    assert fingerprint(copies) == before
    if kind == "snapshot":  # replacing it renders the graph: Chromium (CI has it)
        need_browser()
    code, err = cli([*args, "--force"], capsys)
    assert code == 0, err
    assert out.read_bytes() != b"precious" and out.stat().st_size > 0


# Each: an entry to make in D (symlink / hardlink / copy of a target, or a folder), a command that would
# write over an input file (run with --force), and the text its refusal must contain.
SAME_FILE: dict[str, tuple[tuple[str, str, str] | None, list[str], str]] = {
    "output is the input": (None, ["rewrite", "D/tiny.onnx", "-o", "D/tiny.onnx"], "is also an input"),
    "output is the input by another path": (
        ("folder", "", "sub"), ["rewrite", "D/tiny.onnx", "-o", "D/sub/../tiny.onnx"], "is also an input"),
    "output is a symlink to the input": (
        ("symlink", "tiny.onnx", "link.onnx"), ["rewrite", "D/tiny.onnx", "-o", "D/link.onnx"],
        "is also an input"),
    "output is a hard link of the input": (
        ("hardlink", "tiny.onnx", "hard.onnx"), ["rewrite", "D/tiny.onnx", "-o", "D/hard.onnx"],
        "is also an input"),
    "output through a symlinked folder": (
        ("symlink", ".", "alias"), ["rewrite", "D/tiny.onnx", "-o", "D/alias/tiny.onnx"],
        "is also an input"),
    "output's weights are the input's": (  # renamed.onnx still reads tiny.onnx.data
        ("copy", "tiny.onnx", "renamed.onnx"), ["rewrite", "D/renamed.onnx", "-o", "D/tiny.onnx"],
        "would replace"),
    "output's weights are a hard link of the input's": (
        ("hardlink", "tiny.onnx.data", "out.onnx.data"), ["rewrite", "D/tiny.onnx", "-o", "D/out.onnx"],
        "would replace"),
    "report is the input": (
        None, ["rewrite", "D/tiny.onnx", "-o", "D/out.onnx", "--json", "D/tiny.onnx"], "is also an input"),
    "parity report is the fused model's weights": (
        None, ["parity", "D/tiny.onnx", "D/fused.onnx", "--json", "D/fused.onnx.data"], "would replace"),
    "bench report is a symlink to a model": (
        ("symlink", "fused.onnx", "b.json"), ["bench", "D/tiny.onnx", "D/fused.onnx", "--json", "D/b.json"],
        "is also an input"),
}


@pytest.mark.parametrize("name", SAME_FILE)
def test_an_input_file_is_never_an_output_even_with_force(name: str, copies: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    link, template, needle = SAME_FILE[name]
    if link is not None:
        kind, target, alias = link
        if kind == "symlink":
            (copies / alias).symlink_to(target)
        elif kind == "hardlink":
            os.link(copies / target, copies / alias)
        elif kind == "copy":
            shutil.copy2(copies / target, copies / alias)
        else:
            (copies / alias).mkdir()
    before = fingerprint(copies)
    assert_refused(*cli([*_args(template, D=copies), "--force"], capsys), needle)
    assert fingerprint(copies) == before


def _big_model(path: Path) -> int:
    """A model with 256 MiB of weights (writing them takes a moment); returns their size."""
    x = ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape(["n", 1024]))
    w = ir.Value(name="w", const_value=ir.tensor(np.ones((1024, 65536), np.float32), name="w"))
    node = ir.Node("", "MatMul", [x, w], num_outputs=1)
    node.outputs[0].name = "y"
    node.outputs[0].type = ir.TensorType(ir.DataType.FLOAT)  # onnx.checker (read_model) needs it
    node.outputs[0].shape = ir.Shape(["n", 65536])
    graph = ir.Graph([x], node.outputs, nodes=[node], initializers=[w], opset_imports={"": 18}, name="big")
    ir.save(ir.Model(graph, ir_version=10), path, external_data=path.name + ".data")
    return 1024 * 65536 * 4


def test_a_run_killed_mid_write_publishes_nothing(tmp_path: Path) -> None:
    size = _big_model(tmp_path / "big.onnx")
    before = fingerprint(tmp_path)
    out = tmp_path / "out.onnx"
    args = [sys.executable, "-m", "onnxfuse.pipeline.cli", "rewrite", str(tmp_path / "big.onnx"), "-o", str(out), "-q"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    written = 0
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        # Killed as soon as the write phase has begun (its staging folder exists) and before
        # the weights are complete: on a loaded machine a poll can miss a narrower window.
        if any(tmp_path.glob(".out.onnx.*.partial")):
            staged = [p for p in tmp_path.glob(".out.onnx.*.partial/**/*") if p.is_file()]
            written = max((p.stat().st_size for p in staged), default=0)
            if written < size:
                proc.send_signal(signal.SIGKILL)
                break
        time.sleep(0.001)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"not killed mid-write ({written} of {size} bytes seen)"
    left = sorted(p.name for p in tmp_path.iterdir())
    # Nothing published; the killed run's hidden staging folder is all that is left.
    assert not out.exists() and not (tmp_path / "out.onnx.data").exists()
    assert [n for n in left if n not in before] == [f for f in left if f.startswith(".out.onnx.")]
    assert len([n for n in left if n not in before]) == 1
    assert {k: v for k, v in fingerprint(tmp_path).items() if k in before} == before
    # The next run publishes a complete output and removes the dead run's staging folder.
    again = run_cli(args[3:])
    assert again.returncode == 0, again.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data", "out.onnx", "out.onnx.data"]
    assert (tmp_path / "out.onnx.data").stat().st_size == size


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_the_same_export_twice_gives_the_same_bytes(exporter: str, tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        proc = run_cli(["export", "--model", "tiny", "--exporter", exporter, "-q", "-o", "m.onnx"],
                       cwd=tmp_path / name)
        assert proc.returncode == 0, proc.stderr
    for file in ("m.onnx", "m.onnx.data"):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes(), file


def test_the_same_rewrite_twice_gives_the_same_bytes(inputs: Path, tmp_path: Path) -> None:
    for name in ("a", "b"):  # the same output name: the model names its weights file
        (tmp_path / name).mkdir()
        proc = run_cli(["rewrite", str(inputs / "tiny.onnx"), "-o", "f.onnx", "-q"], cwd=tmp_path / name)
        assert proc.returncode == 0, proc.stderr
    for file in ("f.onnx", "f.onnx.data"):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes(), file


def test_only_dead_runs_staging_folders_are_removed(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    stale = tmp_path / f".m.onnx.{dead.pid}.x1.partial"
    live = tmp_path / f".m.onnx.{os.getppid()}.x2.partial"  # a running process: its run goes on
    other = tmp_path / f".n.onnx.{dead.pid}.x3.partial"  # another output's
    for folder in (stale, live, other):
        folder.mkdir()
        (folder / "m.onnx.data").write_bytes(b"partial")
    with staged_outputs(tmp_path / "m.onnx") as stage:
        (stage / "m.onnx").write_bytes(b"model")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["m.onnx", live.name, other.name])


def test_model_files_are_the_graph_and_every_weights_file_it_names(inputs: Path, tmp_path: Path) -> None:
    assert model_files(inputs / "tiny.onnx") == (inputs / "tiny.onnx", inputs / "tiny.onnx.data")
    assert model_files(inputs / "junk.onnx") == (inputs / "junk.onnx",)
    # Weights named inside a function body and inside a subgraph count too.
    def external(name: str, location: str) -> onnx.TensorProto:
        return onnx.TensorProto(name=name, data_type=onnx.TensorProto.FLOAT, dims=[1],
                                data_location=onnx.TensorProto.EXTERNAL, external_data=[
                                    onnx.StringStringEntryProto(key="location", value=location)])

    model = onnx.load(inputs / "fused.onnx", load_external_data=False)
    model.functions[0].node.append(onnx.helper.make_node(
        "Constant", [], ["c"], value=external("c", "in_function.bin")))
    sub = onnx.helper.make_graph([], "g", [], [], initializer=[external("s", "sub/in_graph.bin")])
    model.graph.node.append(onnx.helper.make_node("If", ["cond"], ["o"], then_branch=sub, else_branch=sub))
    onnx.save(model, tmp_path / "m.onnx")
    assert model_files(tmp_path / "m.onnx") == (
        tmp_path / "m.onnx", tmp_path / "fused.onnx.data", tmp_path / "in_function.bin",
        tmp_path / "sub/in_graph.bin")


class _Crash(Exception):
    pass


def test_a_failed_single_file_write_keeps_the_old_file(tmp_path: Path) -> None:
    from onnxfuse.fileio import staged_file, write_report

    out = tmp_path / "r.json"
    out.write_text("old\n")
    with pytest.raises(_Crash), staged_file(out) as tmp:
        tmp.write_text("half a rep")
        raise _Crash
    assert out.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["r.json"]
    write_report(out, {"passed": True})
    assert '"passed": true' in out.read_text()


def test_report_files_are_never_left_partial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo's HTML page and PNGs: a write that dies half-way leaves the previous file."""
    import matplotlib.figure

    from onnxfuse.pipeline import report

    html, png = tmp_path / "report.html", tmp_path / "errors.png"
    html.write_text("old page")
    png.write_bytes(b"old png")

    def half_then_crash(self: object, target: object, *args: object, **kwargs: object) -> None:
        Path(os.fspath(target)).write_bytes(b"\x89PNG half")  # type: ignore[arg-type]
        raise _Crash

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", half_then_crash)
    with pytest.raises(_Crash):
        report.error_histogram({"x": np.ones(4)}, png)
    with pytest.raises(_Crash):
        report.timing_bars([{"name": "a", "median_ms": 1.0, "p20_ms": 0.9, "p80_ms": 1.1}], png, "t")
    real_write_text = Path.write_text

    def half_text_then_crash(self: Path, text: str, *args: object, **kwargs: object) -> int:
        real_write_text(self, text[: len(text) // 2])
        raise _Crash

    monkeypatch.setattr(Path, "write_text", half_text_then_crash)
    with pytest.raises(_Crash):
        report.write_html({"model": "m", "summary": []}, {}, html)
    monkeypatch.undo()
    assert html.read_text() == "old page" and png.read_bytes() == b"old png"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["errors.png", "report.html"]
