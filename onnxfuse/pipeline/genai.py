"""onnxruntime-genai model folders as input and output of ``onnxfuse rewrite``.

A genai folder holds ``genai_config.json``, the decoder model it names
(``model.decoder.filename``), its weights and the tokenizer files. ``rewrite_folder`` writes
a folder genai runs as it ran the original: the rewritten decoder under the same name, every
other file copied, the onnxfuse plugin placed inside the folder and named by
``model.decoder.session_options.custom_ops_library`` (genai refuses library paths with
``..``, and resolves a bare name against the folder). ``--unfuse`` removes the plugin again.

The folder is input like a model file: its config is read, never trusted. Refused with one
line (exit 2): a config over :data:`MAX_CONFIG_BYTES`, not JSON, not an object, nested too
deep, without a decoder file name; a path in it (any ``filename``, ``*_path``, ``*library*``
value) that is absolute or leaves the folder; a symlink or special file anywhere in the
folder. The output folder is staged beside its final place and renamed in whole.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any

from onnxfuse.errors import InvalidModelError, OutputError, UserError
from onnxfuse.fileio import check_output, model_files, remove_stale_stages, write_report
from onnxfuse.graph_rewrites import RewriteConfig, RewriteResult, rewrite
from onnxfuse.kernels import ort as plugin

__all__ = ["CONFIG_NAME", "MAX_CONFIG_BYTES", "FolderRewrite", "checked_path", "is_genai_folder", "read_config",
           "rewrite_any"]

CONFIG_NAME = "genai_config.json"
MAX_CONFIG_BYTES = 1 << 20
_MAX_DEPTH = 32
_PATH_KEYS = ("filename", "_path", "library", "_file")


@dataclass(frozen=True)
class FolderRewrite:
    """The rewrite of a genai folder: the decoder's own result plus the folder's files."""

    input: Path
    output: Path
    model: RewriteResult
    plugin: str | None  # the library's name inside the output folder, None once unfused
    copied: tuple[str, ...]

    def as_dict(self) -> dict[str, object]:
        return {**self.model.as_dict(), "input": str(self.input), "output": str(self.output),
                "model": str(self.model.output), "plugin": self.plugin, "copied": list(self.copied)}


def is_genai_folder(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names a folder (taken as a genai model folder), not a model file (a
    folder named ``*.onnx`` is a model path that is not a file: the model reader says so)."""
    p = Path(path)
    return p.suffix != ".onnx" and p.is_dir()


def _fail(folder: Path, what: str, fix: str) -> InvalidModelError:
    return InvalidModelError(f"{folder}: {what}: {fix}")


def _check_depth(value: Any, folder: Path, depth: int = 0) -> None:
    if depth > _MAX_DEPTH:
        raise _fail(folder, f"{CONFIG_NAME} nests deeper than {_MAX_DEPTH} levels", "fix the config")
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    for child in children:
        _check_depth(child, folder, depth + 1)


def checked_path(folder: Path, text: str, where: str) -> str:
    """``text`` as a relative path that stays inside ``folder``, or an error naming ``where``."""
    p = PurePosixPath(text.replace("\\", "/"))
    if not text or p.is_absolute() or ".." in p.parts or text.startswith("~"):
        raise _fail(folder, f"{CONFIG_NAME} {where} = {text[:200]!r} leaves the folder",
                    "name a file inside the model folder by a relative path")
    return str(p)


def _paths(value: Any, folder: Path, where: str = "") -> Iterator[tuple[str, str]]:
    """(where, path) for every string under a key that names a file."""
    if isinstance(value, dict):
        for k, v in value.items():
            here = f"{where}.{k}" if where else str(k)
            if isinstance(v, str) and any(key in str(k) for key in _PATH_KEYS):
                yield here, checked_path(folder, v, here)
            else:
                yield from _paths(v, folder, here)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, folder, f"{where}[{i}]")


def read_config(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """``folder``'s genai config, checked (see the module's docstring).

    Raises:
        ModelNotFoundError / InvalidModelError: no config, or one that fails a check.
    """
    root = Path(folder).expanduser().absolute()
    path = root / CONFIG_NAME
    try:
        st = path.lstat()
    except OSError:
        raise _fail(root, f"no {CONFIG_NAME}", "name an onnxruntime-genai model folder or an .onnx file") from None
    if not stat.S_ISREG(st.st_mode):
        raise _fail(root, f"{CONFIG_NAME} is not a regular file (a symlink?)", "copy the real file in")
    if st.st_size > MAX_CONFIG_BYTES:
        raise _fail(root, f"{CONFIG_NAME} is {st.st_size} bytes, over {MAX_CONFIG_BYTES}", "fix the config")
    try:
        config = json.loads(path.read_bytes())
    except (ValueError, RecursionError) as e:
        raise _fail(root, f"{CONFIG_NAME} is not valid JSON ({str(e)[:120]})", "fix the config") from None
    if not isinstance(config, dict):
        raise _fail(root, f"{CONFIG_NAME} is not a JSON object", "fix the config")
    _check_depth(config, root)
    list(_paths(config, root))
    decoder = config.get("model", {}).get("decoder") if isinstance(config.get("model"), dict) else None
    if not isinstance(decoder, dict) or not isinstance(decoder.get("filename"), str):
        raise _fail(root, f"{CONFIG_NAME} has no model.decoder.filename", "fix the config")
    options = decoder.get("session_options", {})
    if not isinstance(options, dict):
        raise _fail(root, f"{CONFIG_NAME} model.decoder.session_options is not an object", "fix the config")
    return config


def _walk_error(error: OSError) -> None:
    raise InvalidModelError(f"cannot read {error.filename}: {error.strerror}: make the model folder readable")


def _files(root: Path) -> list[Path]:
    """Every file under ``root`` (relative), refusing symlinks and special files, and any
    folder it cannot read (a copy without it would be silently incomplete)."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=_walk_error):
        for name in (*dirnames, *filenames):
            p = Path(dirpath) / name
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                raise _fail(root, f"{p.relative_to(root)} is a symlink", "copy the real file in")
            if name in filenames and not stat.S_ISREG(st.st_mode):
                raise _fail(root, f"{p.relative_to(root)} is not a regular file", "remove it")
            if name in filenames:
                found.append(p.relative_to(root))
    return found


def _copy_regular(src: Path, dst: Path) -> None:
    """Copy the regular file ``src`` (never through a symlink swapped in since it was listed)."""
    try:
        fd = os.open(src, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as e:
        raise InvalidModelError(f"cannot read {src}: {e.strerror} (a symlink?): copy the real file in") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise InvalidModelError(f"{src} is not a regular file: remove it")
        with open(dst, "wb") as g:
            shutil.copyfileobj(f, g, 1 << 20)
    shutil.copystat(src, dst, follow_symlinks=False)


@contextlib.contextmanager
def _staged_folder(final: Path, force: bool) -> Iterator[Path]:
    """A private folder beside ``final``, renamed to ``final`` when the block ends without error.
    An existing ``final`` is replaced only with ``force``, and only if it is a genai folder (it
    holds a genai_config.json): ``--force`` never deletes an unrelated folder. Stages of killed
    runs are removed first; if the last rename fails, the old folder is put back."""
    if final.is_symlink() or (final.exists() and not final.is_dir()):
        raise OutputError(f"output {final} exists and is not a folder: choose another output")
    if final.exists():
        if not force:
            raise OutputError(f"output {final} exists: pass --force to replace it")
        if not (final / CONFIG_NAME).is_file():
            raise OutputError(f"output {final} exists and is not an onnxruntime-genai folder (no {CONFIG_NAME}): "
                              "--force replaces only such a folder; choose another output")
    if not final.parent.is_dir():
        raise OutputError(f"output folder {final.parent} does not exist: create it first")
    remove_stale_stages(final)
    try:
        stage = Path(tempfile.mkdtemp(prefix=f".{final.name}.{os.getpid()}.", suffix=".partial", dir=final.parent))
    except OSError as e:
        raise OutputError(f"cannot write in {final.parent}: {e.strerror}; choose another output folder") from None
    try:
        yield stage
        old = None
        try:
            if final.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{final.name}.{os.getpid()}.", suffix=".partial",
                                            dir=final.parent))
                os.replace(final, old / final.name)
            os.replace(stage, final)
        except OSError as e:
            if old is not None and not final.exists():
                os.replace(old / final.name, final)  # put the old output back
            raise OutputError(f"cannot replace {final}: {e.strerror}; the old folder is unchanged") from None
        finally:
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def rewrite_folder(config: RewriteConfig) -> FolderRewrite:
    """Rewrite the genai folder ``config.input`` into the folder ``config.output``.

    Raises:
        UserError: a folder or config that fails a check, an output inside the input (or the
            reverse), an existing output without ``force``; what :func:`rewrite` raises.
    """
    src = Path(config.input).expanduser().absolute()
    out = Path(config.output).expanduser().absolute()
    real_src, real_out = src.resolve(), out.resolve()  # through symlinked folders too
    if real_out == real_src or real_out.is_relative_to(real_src) or real_src.is_relative_to(real_out):
        raise OutputError(f"output {out} overlaps the input folder {src}: write to another folder")
    genai = read_config(src)
    files = _files(src)
    decoder = genai["model"]["decoder"]
    model_name = checked_path(src, decoder["filename"], "model.decoder.filename")
    model_in = src / model_name
    if Path(model_name) not in files:
        raise _fail(src, f"the decoder {model_name} named by {CONFIG_NAME} is missing", "fix the config")
    options = decoder.setdefault("session_options", {})
    ours = plugin.library_path().name
    existing = options.get("custom_ops_library")
    if existing not in (None, ours):
        raise _fail(src, f"the decoder already loads the custom-op library {existing!r}, and genai "
                         "loads one per session", "rewrite a folder that loads none")
    report = check_output(config.report, force=config.force, inputs=[model_in]) if config.report else None
    model_inputs = {p.relative_to(src) for p in model_files(model_in) if p.is_relative_to(src)}
    skip = {Path(CONFIG_NAME), Path(ours), *model_inputs}
    # What the rewrite writes: the decoder and its weights beside it (NAME.data).
    written = {Path(model_name), Path(model_name + ".data")}
    clash = sorted(str(p) for p in (written & set(files)) - model_inputs - {Path(model_name)})
    if clash:
        raise _fail(src, f"{clash[0]} is not the decoder's weights file, but the rewritten decoder's weights "
                         "go there", "rename or remove it")
    with _staged_folder(out, config.force) as stage:
        (stage / model_name).parent.mkdir(parents=True, exist_ok=True)
        result = rewrite(replace(config, input=model_in, output=stage / model_name, report=None, force=False))
        copied = []
        for rel in sorted(files):
            if rel in skip or rel in written:
                continue
            (stage / rel).parent.mkdir(parents=True, exist_ok=True)
            _copy_regular(src / rel, stage / rel)
            copied.append(str(rel))
        if config.unfuse:
            options.pop("custom_ops_library", None)
            library = None
        else:
            shutil.copy2(plugin.library_path(), stage / ours)
            options["custom_ops_library"] = ours
            library = ours
        (stage / CONFIG_NAME).write_text(json.dumps(genai, indent=4) + "\n")
    result = replace(result, output=out / model_name)
    folder = FolderRewrite(src, out, result, library, tuple(copied))
    if report is not None:
        write_report(report, folder.as_dict())
    return folder


def rewrite_any(config: RewriteConfig) -> RewriteResult | FolderRewrite:
    """``onnxfuse rewrite``: a model file (:func:`~onnxfuse.graph_rewrites.rewrite`) or a genai
    folder (:func:`rewrite_folder`)."""
    if is_genai_folder(config.input):
        if Path(config.output).suffix == ".onnx":
            raise UserError(f"input {config.input} is a folder: name an output folder, not {config.output}")
        return rewrite_folder(config)
    return rewrite(config)
