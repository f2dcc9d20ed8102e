"""A bounds-checked walk over a GGUF file's structure, before gguf's reader (which
transformers uses) sees it.

gguf's reader trusts the counts and lengths it reads: on a truncated or forged header it
fails with whatever its parsing hits (``struct.error``, ``IndexError``), and on the real
SmolLM2 file it takes 7 s (a numpy view per vocabulary string), too slow to run twice.
This walk reads the same fields with ``struct`` (0.1 s on that file), checks every length
against the bytes left, and every tensor's data range against the file size.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path

from onnxfuse.errors import InvalidModelError

__all__ = ["check_gguf_structure"]

_MAX_DIMS = 4  # GGML_MAX_DIMS
# Value types of GGUF key/value pairs: fixed sizes, then STRING (8) and ARRAY (9).
_FIXED = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9


class _Reader:
    def __init__(self, data: mmap.mmap | bytes, path: Path) -> None:
        self.data, self.pos, self.path = data, 0, path

    def fail(self, what: str) -> InvalidModelError:
        return InvalidModelError(f"{self.path} is not a valid GGUF file: {what} (at byte {self.pos})")

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise self.fail(f"it ends before a field of {n} bytes")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return bytes(chunk)

    def u32(self) -> int:
        return int(struct.unpack("<I", self.take(4))[0])

    def u64(self) -> int:
        return int(struct.unpack("<Q", self.take(8))[0])

    def string(self) -> bytes:
        return self.take(self.u64())

    def value(self, kind: int, depth: int = 0) -> object:
        if kind in _FIXED:
            raw = self.take(_FIXED[kind])
            return int.from_bytes(raw, "little") if kind in (4, 10) else None
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY and depth < 2:  # arrays of arrays exist; deeper is forged
            elem, count = self.u32(), self.u64()
            if elem in _FIXED:
                self.take(_FIXED[elem] * count)
                return None
            if count > len(self.data) - self.pos:  # each element takes at least one byte
                raise self.fail(f"an array claims {count} elements")
            for _ in range(count):
                self.value(elem, depth + 1)
            return None
        raise self.fail(f"unknown value type {kind}")


def check_gguf_structure(path: Path) -> None:
    """Walk ``path``'s header, key/value pairs and tensor infos with bounds checks.

    Raises:
        InvalidModelError: the version is not 2 or 3, a length or count runs past the end
            of the file, a tensor has more than 4 dimensions, an unknown type, or data
            outside the file.
    """
    from gguf.constants import GGML_QUANT_SIZES

    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        r = _Reader(data, path)
        r.take(4)  # the magic, checked by the caller
        version = r.u32()
        if version not in (2, 3):
            raise r.fail(f"version {version} (onnxfuse reads versions 2 and 3)")
        tensors, pairs = r.u64(), r.u64()
        if tensors > len(data) or pairs > len(data):
            raise r.fail(f"it claims {tensors} tensors and {pairs} key/value pairs")
        alignment = 32
        for _ in range(pairs):
            key, kind = r.string(), r.u32()
            value = r.value(kind)
            if key == b"general.alignment" and isinstance(value, int):
                alignment = value
        if alignment < 1 or alignment & (alignment - 1):
            raise r.fail(f"general.alignment is {alignment}, not a power of two")
        infos = []
        for _ in range(tensors):
            name, dims = r.string(), r.u32()
            if dims > _MAX_DIMS:
                raise r.fail(f"tensor {name[:80]!r} has {dims} dimensions")
            shape = [r.u64() for _ in range(dims)]
            kind, offset = r.u32(), r.u64()
            if kind not in {int(k) for k in GGML_QUANT_SIZES}:
                raise r.fail(f"tensor {name[:80]!r} has unknown type {kind}")
            infos.append((name, shape, kind, offset))
        start = -(-r.pos // alignment) * alignment
        sizes = {int(k): v for k, v in GGML_QUANT_SIZES.items()}
        for name, shape, kind, offset in infos:
            count = 1
            for d in shape:
                count *= d
            block, size = sizes[kind]
            nbytes = -(-count // block) * size
            if start + offset + nbytes > len(data):
                raise r.fail(f"tensor {name[:80]!r} ({shape}) reads bytes past the end of the file")
