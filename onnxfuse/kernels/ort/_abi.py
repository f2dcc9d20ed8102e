"""The bridge's C ABI (``ort/bridge_abi.h``) mirrored with ctypes, sized by the fused-op registry.

The library describes its own layout (``onnxfuse_bridge_abi()``: every field's offset and size,
and the structs' sizes); :mod:`onnxfuse.kernels.ort._loader` compares it with :func:`layout` of
these structs when it loads the library, so a field added, moved or resized on one side only is
refused before any call crosses. Bump :data:`BRIDGE_VERSION` with ``ONNXFUSE_BRIDGE_VERSION``.
"""

from __future__ import annotations

import ctypes
from typing import Any

from onnxfuse import ops

__all__ = ["BRIDGE_VERSION", "DEVICES", "Call", "Tensor", "layout", "mismatches"]

BRIDGE_VERSION = 2
MAX_DIMS = 8
ERROR_BYTES = 1024
DEVICES = ("cpu", "cuda")
"""A call's ``device`` code is its index here."""

_MAX_INPUTS = max(len(s.inputs) for s in ops.REGISTRY)
_MAX_OUTPUTS = max(len(s.outputs) for s in ops.REGISTRY)
_MAX_ATTRIBUTES = max(1, *(len(s.attributes) for s in ops.REGISTRY))  # a C array has >= 1 element


class Tensor(ctypes.Structure):
    """``OnnxfuseTensor``: one of ORT's buffers (``data`` is NULL for an absent optional input)."""

    _fields_ = [("data", ctypes.c_void_p), ("ndim", ctypes.c_int64), ("shape", ctypes.c_int64 * MAX_DIMS)]


class Call(ctypes.Structure):
    """``OnnxfuseCall``: one kernel call of one fused node."""

    _fields_ = [("version", ctypes.c_int32), ("op_id", ctypes.c_int32), ("elem_type", ctypes.c_int32),
                ("device", ctypes.c_int32), ("device_id", ctypes.c_int32), ("precision", ctypes.c_int32),
                ("num_inputs", ctypes.c_int32), ("num_outputs", ctypes.c_int32),
                ("num_attributes", ctypes.c_int32), ("attributes", ctypes.c_int32 * _MAX_ATTRIBUTES),
                ("stream", ctypes.c_void_p), ("inputs", Tensor * _MAX_INPUTS),
                ("outputs", Tensor * _MAX_OUTPUTS), ("error", ctypes.c_char * ERROR_BYTES)]


def _struct_layout(struct: type[ctypes.Structure]) -> dict[str, Any]:
    fields = {name: [getattr(struct, name).offset, getattr(struct, name).size]
              for name, *_ in struct._fields_}
    return {"size": ctypes.sizeof(struct), "fields": fields}


def layout(call: type[ctypes.Structure] = Call, tensor: type[ctypes.Structure] = Tensor) -> dict[str, Any]:
    """The layout of ``call`` and ``tensor`` in the form ``onnxfuse_bridge_abi()`` returns:
    ``{"version", "call": {"size", "fields": {name: [offset, size]}}, "tensor": {...}}``."""
    return {"version": BRIDGE_VERSION, "call": _struct_layout(call), "tensor": _struct_layout(tensor)}


def mismatches(library: dict[str, Any], python: dict[str, Any]) -> list[str]:
    """Where two layouts differ, one line per field, struct size or version (empty: they agree)."""
    found = []
    if library.get("version") != python["version"]:
        found.append(f"bridge version: library {library.get('version')}, Python {python['version']}")
    for struct in ("call", "tensor"):
        lib, py = library.get(struct) or {}, python[struct]
        lib_fields, py_fields = lib.get("fields") or {}, py["fields"]
        for name in dict.fromkeys([*py_fields, *lib_fields]):
            got, want = lib_fields.get(name), py_fields.get(name)
            if got != want:
                found.append(f"{struct}.{name}: library [offset, size] {got}, Python {want}")
        if lib.get("size") != py["size"]:
            found.append(f"{struct} size: library {lib.get('size')}, Python {py['size']}")
    return found
