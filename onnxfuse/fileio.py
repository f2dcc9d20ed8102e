"""Safe output handling: outputs are staged in a temporary folder beside their final place
and renamed into it only when complete, so a failed or killed run leaves nothing partial.
An existing output is replaced only with ``force``; an input is never an output."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from onnxfuse.errors import OutputError

__all__ = ["check_output", "staged_outputs"]


def check_output(path: str | os.PathLike[str], *, force: bool = False,
                 inputs: Sequence[str | os.PathLike[str]] = ()) -> Path:
    """Validate an output path before any expensive work; return it absolute.

    Raises:
        OutputError: the folder is missing or not writable, the path is a folder, it exists
            and ``force`` is false, or it names one of ``inputs``.
    """
    out = Path(path).expanduser().absolute()
    for inp in inputs:
        ip = Path(inp).expanduser().absolute()
        if out == ip or (out.exists() and ip.exists() and out.samefile(ip)):
            raise OutputError(f"output {out} is also an input: write to another path")
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


@contextlib.contextmanager
def staged_outputs(final: Path) -> Iterator[Path]:
    """Yield a private staging folder next to ``final``; the caller writes its files there
    under their final names. On success every file in it is renamed into ``final.parent``
    (the file named ``final.name`` last, so a reader never sees it before its companions);
    on any error the staging folder is removed and nothing is published."""
    try:
        stage = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    except OSError as e:
        raise OutputError(f"cannot write in {final.parent}: {e.strerror}; choose another "
                          "output folder") from None
    try:
        yield stage
        names = sorted(p.name for p in stage.iterdir())
        for name in sorted(names, key=lambda n: n == final.name):
            os.replace(stage / name, final.parent / name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
