"""Rules of the code base that tools hold, not memory: each test names the rule it keeps."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "onnxfuse"
SOURCES = sorted(PACKAGE.rglob("*.py"))


def _environ_writes(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, key) of every write to ``os.environ[...]``: subscript assignment, ``setdefault``,
    ``update``, ``pop`` / ``del``, and ``os.putenv``."""
    writes = []
    for node in ast.walk(tree):
        targets: list[ast.expr] = []
        if isinstance(node, (ast.Assign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        elif isinstance(node, ast.Delete):
            targets = node.targets
        for t in targets:
            if isinstance(t, ast.Subscript) and ast.unparse(t.value).endswith("environ"):
                writes.append((node.lineno, ast.unparse(t.slice)))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = ast.unparse(node.func.value)
            if (owner.endswith("environ") and node.func.attr in ("setdefault", "update", "pop")) \
                    or (owner == "os" and node.func.attr == "putenv"):
                writes.append((node.lineno, ast.unparse(node.args[0]) if node.args else "?"))
    return sorted(writes)  # ast.walk is breadth-first: a del statement comes before a nested call


def test_library_code_never_sets_the_triton_interpreter() -> None:
    # Interpreter mode is decided once, at process entry (the CLI's main, tests' conftest):
    # library code only reads it (onnxfuse.kernels.interpreting), so Triton's own jitted helpers
    # are bound to the mode the process started in.
    offenders = [f"{path.relative_to(PACKAGE.parent)}:{line} writes {key}"
                 for path in SOURCES if path.name != "cli.py"
                 for line, key in _environ_writes(ast.parse(path.read_text()))
                 if "TRITON_INTERPRET" in key]
    assert offenders == []


def test_the_environment_check_sees_every_kind_of_write() -> None:
    # The check above would pass vacuously if it missed a spelling of a write.
    source = ("import os\nos.environ['TRITON_INTERPRET'] = '1'\nos.environ.setdefault('TRITON_INTERPRET', '1')\n"
              "os.putenv('TRITON_INTERPRET', '1')\ndel os.environ['TRITON_INTERPRET']\n")
    assert [line for line, _ in _environ_writes(ast.parse(source))] == [2, 3, 4, 5]


_IGNORE = re.compile(r"#\s*type:\s*ignore(?P<codes>\[[^\]]*\])?(?P<rest>.*)$")


def test_every_type_ignore_names_its_codes_and_a_reason() -> None:
    # mypy gates make lint; a silenced error must say which one and why.
    bare = []
    for path in SOURCES:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            m = _IGNORE.search(line)
            if m and (not m["codes"] or not re.search(r"#\s*\S", m["rest"])):
                bare.append(f"{path.relative_to(PACKAGE.parent)}:{number}: {line.strip()}")
    assert bare == []
