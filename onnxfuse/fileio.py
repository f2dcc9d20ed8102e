"""Safe output handling: outputs are staged in a temporary folder beside their final place
and renamed into it only when complete, so a failed or killed run leaves nothing partial
(the old file, if any, stays intact). Every file the tool writes goes through here: models
and weights (:func:`staged_outputs`), one file (:func:`staged_file`, :func:`write_text`) and
JSON reports (:func:`write_report`, stamped with ``onnxfuse_version``).
An existing output is replaced only with ``force``; an input (a model or a weights file it
names) is never an output, whatever path, symlink or hard link names it.

A run killed with SIGKILL leaves its hidden staging folder (``.OUT.PID.XXXX.partial``)
behind; the next run that writes the same output removes those of dead processes."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import onnx

from onnxfuse._version import __version__
from onnxfuse.errors import OutputError

__all__ = ["check_output", "model_files", "remove_stale_stages", "staged_file", "staged_outputs", "write_report",
           "write_text"]

# Every .onnx output has its weights beside it in OUT.onnx.data.
_DATA_SUFFIX = ".data"


def model_files(path: str | os.PathLike[str]) -> tuple[Path, ...]:
    """``path`` and the external-data files its tensors name (initializers, attribute
    tensors, subgraphs, function bodies), read from the graph without loading weights.
    A file that is not an ONNX model gives ``(path,)``: its reader reports that error."""
    model_path = Path(path).expanduser().absolute()
    try:
        # Read only a regular file protobuf can parse: a FIFO would block and /dev/zero fill
        # memory before the model's reader (which refuses both) ever ran.
        st = model_path.stat()
        if not stat.S_ISREG(st.st_mode) or st.st_size >= 2**31:
            return (model_path,)
        model = onnx.load(os.fspath(model_path), load_external_data=False)
    except Exception:
        return (model_path,)
    locations: set[str] = set()
    graphs = [model.graph]
    nodes = [n for f in model.functions for n in f.node]
    while graphs or nodes:  # iterative: a hostile model may nest subgraphs arbitrarily deep
        if graphs:
            graph = graphs.pop()
            tensors = [*graph.initializer, *(t for s in graph.sparse_initializer
                                             for t in (s.values, s.indices))]
            nodes.extend(graph.node)
        else:
            attributes = nodes.pop().attribute
            tensors = [t for a in attributes for t in (*a.tensors, *([a.t] if a.HasField("t") else []))]
            graphs.extend(g for a in attributes for g in (*a.graphs, *([a.g] if a.HasField("g") else [])))
        # (a location that is not UTF-8 comes as bytes: read_model refuses that model)
        locations.update(e.value for t in tensors if t.data_location == onnx.TensorProto.EXTERNAL
                         for e in t.external_data if e.key == "location" and isinstance(e.value, str))
    return (model_path, *(model_path.parent / loc for loc in sorted(locations)))


def _entry(path: Path) -> Path:
    """The directory entry ``path`` names, with symlinked folders resolved."""
    try:
        return path.parent.resolve() / path.name
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL byte: no such entry
        return path


def _same_file(a: Path, b: Path) -> bool:
    """Whether writing ``a`` would replace ``b``: the same directory entry (through
    symlinked folders too), or the same file (symlink or hard link)."""
    if _entry(a) == _entry(b):
        return True
    try:
        return a.samefile(b)
    except (OSError, ValueError):  # one of them does not exist (or cannot)
        return False


def check_output(path: str | os.PathLike[str], *, force: bool = False,
                 inputs: Sequence[str | os.PathLike[str]] = ()) -> Path:
    """Validate an output path before any expensive work; return it absolute.

    ``inputs`` are the models the command reads: neither they nor the weights files they
    name may be written, as the output or, for a ``.onnx`` output, as its ``.onnx.data``.

    Raises:
        OutputError: the folder is missing or not writable, the path is a folder, it exists
            and ``force`` is false, or it or its weights file would replace an input file.
    """
    out = Path(path).expanduser().absolute()
    written = [out, out.with_name(out.name + _DATA_SUFFIX)] if out.suffix == ".onnx" else [out]
    for inp in inputs:
        files = model_files(inp)
        for w in written:
            hit = next((f for f in files if _same_file(w, f)), None)
            if hit is None:
                continue
            what = "is also an input" if hit == files[0] else f"would replace {hit}, read by input {files[0]}"
            name = out if w == out else f"{out} (its weights file {w.name})"
            raise OutputError(f"output {name} {what}: write to another path")
    if out.is_dir():
        raise OutputError(f"output {out} is a folder: name a file, e.g. {out / 'model.onnx'}")
    parent = out.parent
    if not parent.is_dir():
        raise OutputError(f"output folder {parent} does not exist: create it first")
    try:  # os.access says yes to root even on read-only or virtual file systems: try it
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as e:
        raise OutputError(f"cannot write in {parent}: {e.strerror}; choose another output "
                          "folder") from None
    if out.exists() and not force:
        raise OutputError(f"output {out} exists: pass --force to replace it")
    return out


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user's process
        pass
    return True


def remove_stale_stages(final: Path) -> None:
    """Remove the staging folders of runs killed before they could clean up (SIGKILL):
    those for ``final`` whose process no longer exists."""
    prefix = f".{final.name}."
    for entry in final.parent.glob(f"{glob.escape(prefix)}*.partial"):
        pid = entry.name[len(prefix):].split(".", 1)[0]
        if (pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid))
                and entry.is_dir() and not entry.is_symlink() and entry.stat().st_uid == os.getuid()):
            shutil.rmtree(entry, ignore_errors=True)


@contextlib.contextmanager
def staged_outputs(final: Path) -> Iterator[Path]:
    """Yield a private staging folder next to ``final``; the caller writes its files there
    under their final names. On success every file in it is renamed into ``final.parent``;
    on any error the staging folder is removed and nothing is published.

    An existing ``final`` is removed first and the file named ``final.name`` is renamed in
    last, so no reader, and no run killed between two renames, pairs a new weights file
    with an old model (or the reverse): ``final`` is absent, old or complete."""
    remove_stale_stages(final)
    try:
        stage = Path(tempfile.mkdtemp(prefix=f".{final.name}.{os.getpid()}.", suffix=".partial",
                                      dir=final.parent))
    except OSError as e:
        raise OutputError(f"cannot write in {final.parent}: {e.strerror}; choose another "
                          "output folder") from None
    try:
        yield stage
        names = sorted(p.name for p in stage.iterdir())
        if len(names) > 1:
            with contextlib.suppress(FileNotFoundError):
                (final.parent / final.name).unlink()
        for name in sorted(names, key=lambda n: n == final.name):
            os.replace(stage / name, final.parent / name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


@contextlib.contextmanager
def staged_file(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a staging path for one file; it replaces ``final`` only when the block ends
    without an error (else ``final``, old or absent, is left as it was).

    Example:
        >>> with staged_file(out / "plot.png") as tmp:
        ...     fig.savefig(tmp)
    """
    path = Path(final)
    with staged_outputs(path) as stage:
        yield stage / path.name


def write_text(final: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``final`` atomically (see :func:`staged_file`)."""
    with staged_file(final) as tmp:
        tmp.write_text(text)


def write_report(final: str | os.PathLike[str], data: Mapping[str, object]) -> None:
    """Write a JSON report to ``final`` atomically, its first key ``"onnxfuse_version"``
    (``onnxfuse.__version__``), as DESIGN.md's CLI contract asks of every report. Values JSON
    cannot hold (paths) are written as their ``str``."""
    text = json.dumps({"onnxfuse_version": __version__, **data}, indent=2, default=str)
    write_text(final, text + "\n")
