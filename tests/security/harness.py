"""Run an ``onnxfuse`` command in-process under the file audit, with a time limit."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from tests.security.audit import FileAudit

TIME_LIMIT_S = 20.0


@dataclasses.dataclass(frozen=True)
class Outcome:
    code: int | None  # None: still running after the time limit
    stdout: str
    stderr: str
    seconds: float
    violations: tuple[str, ...]
    events: int  # file events the audit judged

    def problems(self, expect: str) -> list[str]:
        """What breaks the contract for a refused input: exit 2, one line naming ``expect``,
        no traceback, within the time limit, no audit violation."""
        out = []
        lines = self.stderr.splitlines()
        if self.code is None:
            out.append(f"still running after {TIME_LIMIT_S:.0f} s")
        elif self.code != 2:
            out.append(f"exit {self.code}")
        if len(lines) != 1:
            out.append(f"{len(lines)} stderr lines")
        if "Traceback" in self.stderr:
            out.append("traceback")
        if expect not in self.stderr:
            out.append(f"stderr lacks {expect!r}")
        out += [f"audit: {v}" for v in self.violations]
        return out


def warm_up() -> None:
    """Import what the commands import, before any audit: third-party imports read files of
    their own once per process whatever the input (torch reads /proc/self/maps, onnxruntime
    /usr/lib/os-release, psutil /proc/stat, filelock /proc/sys/kernel/random/boot_id),
    which is not what the audit is about: what a command does with its input."""
    import filelock  # noqa: F401
    import onnxruntime  # noqa: F401
    import psutil  # noqa: F401
    import torch  # noqa: F401
    import transformers.modeling_utils
    import transformers.models.llama.modeling_llama  # noqa: F401

    import onnxfuse.exporters
    import onnxfuse.graph_rewrites
    import onnxfuse.pipeline.bench
    import onnxfuse.pipeline.parity
    import onnxfuse.pipeline.view  # noqa: F401


def run(argv: Sequence[str], model_folders: Sequence[Path], output_folder: Path) -> Outcome:
    """``onnxfuse ARGV`` in this process (a thread, so a hang is caught), stdout and stderr
    captured, every file event judged by the audit hook."""
    from onnxfuse.pipeline.cli import main

    audit = FileAudit.install()
    logger = logging.getLogger("onnxfuse")
    handlers, level = list(logger.handlers), logger.level
    result: list[int] = []
    out, err = io.StringIO(), io.StringIO()

    def target() -> None:
        try:
            result.append(main(list(argv)))
        except SystemExit as e:  # argparse
            result.append(e.code if isinstance(e.code, int) else 2)

    start = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
            audit.watch(model_folders, output_folder) as violations:
        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        thread.join(TIME_LIMIT_S)
    seconds = time.perf_counter() - start
    # main() adds a progress handler per call: restore the logger for the next case.
    logger.handlers[:] = handlers
    logger.setLevel(level)
    return Outcome(result[0] if result else None, out.getvalue(), err.getvalue(), seconds,
                   tuple(violations), audit.events)
