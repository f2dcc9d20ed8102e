"""Every command refuses every hostile or malformed model: exit 2, one line on stderr, no
traceback, within 20 s, and no file outside the model's folder touched (audit hook).

The commands run in-process (``onnxfuse.pipeline.cli.main``) so that the whole corpus x
every command stays fast; a sample runs in real subprocesses (under strace where it is
installed, to cover native code's opens too).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.security import corpus, harness
from tests.security.audit import FileAudit

CASES = corpus.cases()
CHECKPOINTS = corpus.checkpoint_cases()
# The two sides of parity/bench take the hostile model in turn, beside a valid model.
_BENCH = ["--backend", "none", "--repeat", "1", "--warmup", "0", "--no-torch"]
COMMANDS = {
    "rewrite": lambda bad, good, out: ["rewrite", bad, "-o", f"{out}/o.onnx", "--json", f"{out}/r.json"],
    "parity-original": lambda bad, good, out: ["parity", bad, good, "--backend", "none", "--json", f"{out}/p.json"],
    "parity-fused": lambda bad, good, out: ["parity", good, bad, "--backend", "none"],
    "bench-original": lambda bad, good, out: ["bench", bad, good, *_BENCH, "--json", f"{out}/b.json"],
    "bench-fused": lambda bad, good, out: ["bench", good, bad, *_BENCH],
    "view": lambda bad, good, out: ["view", bad, "--no-browser"],
}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[tuple[corpus.Case, Path]], Path, Path]:
    """The corpus on disk, a valid model beside it, and an output folder."""
    harness.warm_up()
    root = tmp_path_factory.mktemp("corpus")
    good = corpus.good_model(root / "good")
    out = root / "out"
    out.mkdir()
    return [(c, corpus.build(c, root)) for c in CASES], good, out


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.lstat().st_size, p.lstat().st_mtime_ns)
            for p in folder.rglob("*")}


def test_corpus_has_the_promised_size() -> None:
    kinds = [c.kind for c in CASES]
    assert kinds.count("malformed") >= 100 and kinds.count("external") >= 20, kinds
    assert len({c.name for c in [*CASES, *CHECKPOINTS]}) == len(CASES) + len(CHECKPOINTS)
    print(f"corpus: {kinds.count('malformed')} malformed, {kinds.count('external')} external-data "
          f"attacks; x {len(COMMANDS)} commands = {len(CASES) * len(COMMANDS)} cases; "
          f"{len(CHECKPOINTS)} hostile checkpoints for export")


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_refuses_every_hostile_model(command: str, built) -> None:  # type: ignore[no-untyped-def]
    cases, good, out = built
    failures = []
    events = 0
    for case, path in cases:
        folder = path.parent
        before = _snapshot(folder)
        # The hook is live for every model a command must open to refuse: a regular file under
        # the 2 GiB limit. The others (missing, folder, FIFO, device link, oversized) are refused
        # from their stat alone, with no file event (the CLI used to read its own metadata on
        # every call, which hid that).
        opened = path.is_file() and not path.is_symlink() and path.stat().st_size < 2**31
        outcome = harness.run(COMMANDS[command](str(path), str(good), str(out)), [folder, good.parent], out)
        events += outcome.events
        problems = outcome.problems(case.expect)
        if opened and outcome.events == 0:
            problems.append("no file event: the audit hook was not live")
        if _snapshot(folder) != before:
            problems.append("the model's folder changed")
        if sorted(p.name for p in out.iterdir()):
            problems.append(f"output folder holds {sorted(p.name for p in out.iterdir())}")
        if problems:
            failures.append(f"{case.name}: {problems} stderr={outcome.stderr[:300]!r}")
    assert not failures, f"{len(failures)}/{len(cases)} cases:\n" + "\n".join(failures)
    print(f"{command}: {len(cases)} hostile models refused, {events} file events judged, 0 violations")
    if command == "view":
        assert not [t for t in threading.enumerate() if "netron" in repr(t).lower()]


@pytest.mark.parametrize("case", CHECKPOINTS, ids=[c.name for c in CHECKPOINTS])
def test_export_refuses_hostile_checkpoints(case: corpus.Case, tmp_path: Path) -> None:
    harness.warm_up()
    folder = tmp_path / "model"
    folder.mkdir()
    model = case.build(folder)
    out = tmp_path / "out"
    out.mkdir()
    # -q: export logs "building ..." before it loads a checkpoint; the error is the one line.
    outcome = harness.run(["export", "--model", str(model), "-o", str(out / "m.onnx"), "-q"], [folder], out)
    assert not outcome.problems(case.expect), (outcome.problems(case.expect), outcome.stderr)
    assert list(out.iterdir()) == []
    assert not list(tmp_path.rglob("*.ran"))  # no code from the checkpoint ran


RUNTIME = corpus.runtime_cases()


@pytest.mark.parametrize("case", RUNTIME, ids=[c.name for c in RUNTIME])
def test_parity_and_bench_refuse_models_that_cannot_run(case: corpus.Case, tmp_path: Path) -> None:
    """Valid models (view serves them, rewrite rewrites them) that ONNX Runtime cannot run,
    or that parity and bench cannot feed: exit 2, not an internal error. As the fused side,
    they get the original's inputs, which ORT refuses."""
    harness.warm_up()
    path = corpus.build(case, tmp_path)
    good = corpus.good_model(tmp_path / "good")
    out = _mkdir(tmp_path / "out")
    failures = []
    for side in ("parity-original", "parity-fused", "bench-original", "bench-fused"):
        # -q: parity logs its first shape before it runs the models; the error is the one line.
        argv = [*COMMANDS[side](str(path), str(good), str(out)), "-q"]
        outcome = harness.run(argv, [path.parent, good.parent], out)
        problems = outcome.problems(case.expect if side.endswith("original") else "ONNX Runtime cannot")
        if problems:
            failures.append(f"{side}: {problems} {outcome.stderr[:300]!r}")
    assert not failures, failures


def test_the_audit_flags_what_it_must(tmp_path: Path) -> None:
    """The hook is only proof if it catches each kind of event it claims to judge."""
    model, out, outside = tmp_path / "model", tmp_path / "out", tmp_path / "outside"
    for folder in (model, out, outside):
        folder.mkdir()
    (outside / "secret").write_text("s")
    (model / "data").write_text("d")
    (model / "link").symlink_to(outside / "secret")
    os.link(outside / "secret", model / "hard")
    audit = FileAudit.install()
    with audit.watch([model], out) as violations:
        (model / "data").read_text()  # allowed: the model's folder
        (out / "o").write_text("o")  # allowed: the output's folder
        Path(os.__file__).read_text()  # allowed: the stdlib
        assert violations == []
        checks = [
            lambda: (outside / "secret").read_text(),
            lambda: (model / "link").read_text(),
            lambda: (model / "hard").read_text(),
            lambda: os.listdir(outside),
            lambda: (model / "new").write_text("x"),
            lambda: os.remove(model / "data"),
            lambda: os.rename(out / "o", model / "o"),
            lambda: socket.socket().bind(("127.0.0.1", 0)),
            lambda: subprocess.run(["true"], check=True),
        ]
        for i, check in enumerate(checks):
            check()
            assert len(violations) > i, f"check {i} was not flagged: {violations}"
    assert len(violations) == len(checks), violations


# A sample through real processes: the CLI's one line, end to end; for the external-data
# attacks, where strace is installed, proof that no native code (ORT, the onnx checker)
# opened the attack target either.
SAMPLE = {
    "rewrite": ("random-4096", lambda p, good, out: ["rewrite", p, "-o", f"{out}/o.onnx"]),
    "parity": ("external-dotdot", lambda p, good, out: ["parity", p, good, "--backend", "none"]),
    "bench": ("external-symlink-dir-outside", lambda p, good, out: ["bench", good, p, *_BENCH]),
    "view": ("external-data-file-is-fifo", lambda p, good, out: ["view", p, "--no-browser"]),
    "export": ("gguf-magic-only", lambda p, good, out: ["export", "--model", p, "-o", f"{out}/m.onnx"]),
}


@pytest.mark.parametrize("command", list(SAMPLE))
def test_subprocess_sample_one_line_no_traceback(command: str, tmp_path: Path) -> None:
    name, argv = SAMPLE[command]
    case = next(c for c in [*CASES, *CHECKPOINTS] if c.name == name)
    path = corpus.build(case, tmp_path) if case.kind != "checkpoint" else case.build(_mkdir(tmp_path / name / "model"))
    good = corpus.good_model(tmp_path / "good")
    out = _mkdir(tmp_path / "out")
    args = argv(str(path), str(good), str(out))
    # Native opens matter where the case aims at a file outside the folder.
    strace = shutil.which("strace") if case.kind == "external" else None
    trace = tmp_path / "trace.txt"
    if strace:
        cmd = [strace, "-f", "-qq", "-e", "trace=open,openat,openat2", "-o", str(trace),
               sys.executable, "-m", "onnxfuse.pipeline.cli", *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=harness.TIME_LIMIT_S * 3)
    else:
        proc = run_cli(args, timeout=harness.TIME_LIMIT_S * 3)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert case.expect in lines[0], lines[0]
    assert list(out.iterdir()) == []
    if strace:
        opened = re.findall(r'open(?:at2?)?\((?:AT_FDCWD, )?"([^"]*)"[^=]*= \d+', trace.read_text())
        assert opened, "strace saw no successful open"
        leaks = [p for p in opened if "outside" in Path(p).parts or p in ("/etc/passwd", "/dev/zero")]
        assert not leaks, leaks


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
