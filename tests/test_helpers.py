"""The run's export cache (tests/helpers.py): one make per key, across processes too; failures
are not cached; a test writing into a shared entry is found."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import Exports

ROOT = Path(__file__).resolve().parents[1]

# Two processes ask for one key at once; the make takes a second, so they overlap.
_ASK = """
import sys, time
from pathlib import Path
from tests.helpers import Exports

def make(folder):
    with open(sys.argv[2], "a") as log:
        log.write("made\\n")
    time.sleep(1)
    (folder / "file").write_text("x")
    return str(folder / "file")

print(Exports(Path(sys.argv[1])).cached("key", make))
"""


def test_two_processes_asking_at_once_make_one_entry(tmp_path: Path) -> None:
    root, log = tmp_path / "cache", tmp_path / "makes.log"
    procs = [subprocess.Popen([sys.executable, "-c", _ASK, str(root), str(log)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outs]
    assert [out.strip() for out, _ in outs] == [str(root / "key" / "file")] * 2
    assert log.read_text() == "made\n"


def test_a_failed_make_caches_nothing(tmp_path: Path) -> None:
    exports = Exports(tmp_path)

    def fail(folder: Path) -> list[str]:
        (folder / "half").write_text("x")
        raise RuntimeError("planted")

    with pytest.raises(RuntimeError, match="planted"):
        exports.cached("key", fail)
    made: list[Path] = []

    def make(folder: Path) -> list[str]:
        made.append(folder)
        return sorted(p.name for p in folder.iterdir())

    assert exports.cached("key", make) == []  # the failed make's leftovers are gone
    assert exports.cached("key", make) == [] and made == [tmp_path / "key"]  # made once


@pytest.mark.parametrize("write", ["beside", "over"])
def test_a_write_into_a_finished_entry_is_found(tmp_path: Path, write: str) -> None:
    exports = Exports(tmp_path)

    def make(folder: Path) -> Path:
        (folder / "m.onnx").write_bytes(b"model")
        return folder / "m.onnx"

    model = exports.cached("key", make)
    exports.cached("other", make)
    assert exports.changed() == []
    if write == "beside":
        (model.parent / "out.onnx").write_bytes(b"a test's output")
    else:
        model.write_bytes(b"edited")
    assert exports.changed() == ["key"]
