"""A Python audit hook (PEP 578) that judges every file event of a command run in-process.

While :meth:`FileAudit.watch` is active, each event below is checked against the case's
two folders; anything else is a violation:

- ``open``, ``os.listdir``, ``os.scandir``, ``glob.glob``, ``ctypes.dlopen`` (reads):
  allowed inside the model's folder (for a file: a regular file with one link, the same
  rule as the loader's, since a hard link is another name for a file that may lie
  anywhere), inside the output's folder, and inside the code the command runs on: the
  interpreter's and the virtualenv's prefixes (stdlib, site-packages: lazy imports and
  their data files such as ORT's and torch's shared libraries) and the onnxfuse package.
  Paths are resolved (``realpath``) before the check, so a symlink in either folder that
  leads outside is caught.
- ``open`` for writing and every call that changes the file system (``os.remove``,
  ``os.rename``, ``os.mkdir``, ``os.rmdir``, ``os.chmod``, ``os.link``, ``os.symlink``,
  ``os.truncate``, ``os.utime``, ``shutil.*``, ``tempfile.mk*``): allowed only inside the
  output's folder (outputs are staged there), and for ``.pyc`` files in ``__pycache__``
  folders of that code. Never in the model's folder: inputs are never modified.
- ``socket.bind`` / ``socket.connect``: never (``view`` must refuse before serving).
- ``subprocess.Popen``, ``os.system``, ``os.exec``, ``os.posix_spawn``, ``os.fork``: never.

Native code (ONNX Runtime, the onnx checker) does not raise audit events; the subprocess
test traces those opens with strace.
"""

from __future__ import annotations

import contextlib
import os
import sys
import sysconfig
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

_READS = {"open", "os.listdir", "os.scandir", "glob.glob", "ctypes.dlopen"}
_WRITES = {"os.remove", "os.rename", "os.mkdir", "os.rmdir", "os.chmod", "os.chown", "os.link",
           "os.symlink", "os.truncate", "os.utime", "shutil.rmtree", "shutil.copyfile",
           "shutil.copymode", "shutil.copystat", "shutil.copytree", "shutil.move",
           "shutil.chown", "tempfile.mkstemp", "tempfile.mkdtemp"}
_FORBIDDEN = {"socket.bind", "socket.connect", "subprocess.Popen", "os.system", "os.exec",
              "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "pty.spawn"}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def code_roots() -> tuple[str, ...]:
    """Where the running code lives: the interpreter's and the environment's prefixes, the
    stdlib and site-packages (wherever sysconfig puts them), and the onnxfuse package."""
    import onnxfuse

    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
             *(sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")),
             os.path.dirname(onnxfuse.__file__)}
    # onnxfuse's own metadata (its version): an editable install keeps it beside the package,
    # e.g. ./onnxfuse.egg-info in a fresh clone, outside site-packages.
    try:
        import importlib.metadata

        meta = getattr(importlib.metadata.distribution("onnxfuse"), "_path", None)
        if meta is not None:
            roots.add(os.fspath(meta))
    except importlib.metadata.PackageNotFoundError:
        pass
    return tuple(sorted({os.path.realpath(r) for r in roots}))


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


class FileAudit:
    """One hook per process (audit hooks cannot be removed); inactive outside ``watch``."""

    _installed: FileAudit | None = None

    def __init__(self) -> None:
        self.roots = code_roots()
        plugin = os.environ.get("ONNXFUSE_ORT_LIBRARY")
        # The plugin library, wherever ONNXFUSE_ORT_LIBRARY puts it; the kernel's mount table,
        # which transformers reads before each weight file (to avoid mmap on hf-mount).
        self.extra_files = {os.path.realpath("/proc/mounts"),
                            *([os.path.realpath(plugin)] if plugin else [])}
        self.models: tuple[str, ...] = ()
        self.output: str | None = None
        self.violations: list[str] = []
        self.events = 0  # events judged in the current (or last) watch
        self._local = threading.local()

    @classmethod
    def install(cls) -> FileAudit:
        if cls._installed is None:
            cls._installed = cls()
            sys.addaudithook(cls._installed._hook)
        return cls._installed

    @contextlib.contextmanager
    def watch(self, model_folders: Sequence[Path], output_folder: Path) -> Iterator[list[str]]:
        """Judge every event until the block ends; yield the list violations go to."""
        self.models = tuple(os.path.realpath(f) for f in model_folders)
        self.output = os.path.realpath(output_folder)
        # importlib.metadata (``onnxfuse --version`` is computed on every call) and the
        # import system list each sys.path folder: a listing of those folders themselves is
        # code lookup; opening a file there is still judged.
        self.listable = {os.path.realpath(p or os.curdir) for p in sys.path}
        self.violations = []
        self.events = 0
        try:
            yield self.violations
        finally:
            self.models, self.output = (), None

    def _hook(self, event: str, args: tuple[object, ...]) -> None:
        if self.output is None or getattr(self._local, "busy", False):
            return
        if event not in _READS and event not in _WRITES and event not in _FORBIDDEN:
            return
        self._local.busy = True
        try:
            self.events += 1
            problem = self._judge(event, args)
            if problem:
                self.violations.append(f"{event} {problem}")
        finally:
            self._local.busy = False

    def _judge(self, event: str, args: tuple[object, ...]) -> str | None:
        if event in _FORBIDDEN:
            return repr(args)[:200]
        write = event in _WRITES
        if event == "open":
            mode, flags = args[1], args[2]
            write = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and bool(flags & _WRITE_FLAGS))
        paths = [a for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))]
        if event in ("open", "os.listdir", "os.scandir", "glob.glob", "ctypes.dlopen", "os.chmod",
                     "os.mkdir", "os.remove", "os.rmdir", "os.truncate", "os.utime", "os.chown",
                     "shutil.rmtree", "tempfile.mkstemp", "tempfile.mkdtemp"):
            paths = paths[:1]  # the second argument is a mode or flags, not a path
        for raw in paths:
            name = os.fsdecode(raw)  # type: ignore[arg-type]
            if event == "ctypes.dlopen" and os.sep not in name:
                continue  # a bare soname ("libc.so.6"): the dynamic loader's search path
            path = os.path.realpath(name)
            if event in ("os.listdir", "os.scandir") and path in self.listable:
                continue
            problem = self._write(path) if write else self._read(path)
            if problem:
                return f"{path}: {problem}"
        return None

    def _read(self, path: str) -> str | None:
        if any(_inside(path, folder) for folder in self.models):
            if os.path.isfile(path) and os.stat(path).st_nlink > 1:
                return "a hard-linked file in the model's folder"
            return None
        if (self.output is not None and _inside(path, self.output)) or path in self.extra_files:
            return None
        if any(_inside(path, root) for root in self.roots):
            return None
        return "read outside the model's folder, the output's folder and the code"

    def _write(self, path: str) -> str | None:
        if self.output is not None and _inside(path, self.output):
            return None
        if (os.path.basename(os.path.dirname(path)) == "__pycache__" and ".pyc" in path
                and any(_inside(path, root) for root in self.roots)):
            return None
        return "written outside the output's folder"
