"""The plugin's ``triton`` backend: ORT's kernel calls back into Python to launch the Triton kernel.

The native library (:mod:`onnxfuse.kernels.ortlib`) exports ``onnxfuse_set_triton_callback``;
:func:`install` hands it a ``ctypes.CFUNCTYPE`` callback. ``ctypes`` takes the GIL when ORT's
thread calls it (ORT's Python binding releases the GIL during ``run``), so no Python headers
are needed. The callback receives ORT's own buffers as raw pointers plus shapes, wraps them as
torch tensors without copying (CPU: ``torch.frombuffer``; CUDA: ``__cuda_array_interface__``),
launches :func:`onnxfuse.kernels.triton.gated_mlp.fused_gated_mlp` writing straight into ORT's output
buffer (on CUDA, on ORT's compute stream) and returns 0. An exception becomes a non-zero
return plus its message, which the library turns into an ORT error: that ``run`` raises, the
process and the session survive.

On CPU the Triton kernel runs under Triton's interpreter (``TRITON_INTERPRET=1``, set before
the kernels are first imported): for verification at small sizes, not speed.

``ctypes.CDLL`` on the path ORT loaded shares the library's globals (same ``dlopen`` handle),
which is what makes the callback visible to ORT's kernels.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable
from typing import Any

from onnxfuse.errors import KernelError

__all__ = ["BRIDGE_VERSION", "Kernel", "calls", "install", "kernel_runs", "set_kernel", "uninstall"]

BRIDGE_VERSION = 1
_MAX_DIMS = 8
_ACTIVATIONS = ("silu", "gelu", "gelu_tanh")
_PRECISIONS = ("tf32", "ieee")
_IMPLS = {"matmul": 0, "naive": 1, "off": 2, "triton": 3}


class _Tensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("ndim", ctypes.c_int64),
                ("shape", ctypes.c_int64 * _MAX_DIMS)]


class _Call(ctypes.Structure):
    _fields_ = [("version", ctypes.c_int32), ("elem_type", ctypes.c_int32),
                ("activation", ctypes.c_int32), ("device", ctypes.c_int32),
                ("device_id", ctypes.c_int32), ("precision", ctypes.c_int32),
                ("stream", ctypes.c_void_p), ("inputs", _Tensor * 7), ("output", _Tensor),
                ("error", ctypes.c_char * 1024)]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(_Call))

# A kernel: (x, w_gate, w_up, w_down, b_gate, b_up, b_down, *, activation, precision, out) -> None
Kernel = Callable[..., Any]

_lock = threading.Lock()
_state: dict[str, Any] = {"lib": None, "callback": None, "kernel": None, "calls": 0}


def _triton_kernel(*args: Any, **kwargs: Any) -> None:
    from onnxfuse.kernels.triton.gated_mlp import fused_gated_mlp

    fused_gated_mlp(*args, **kwargs)


def _torch_dtype(elem_type: int) -> Any:
    import torch

    dtypes = {1: torch.float32, 10: torch.float16, 16: torch.bfloat16}
    if elem_type not in dtypes:
        raise KernelError(f"element type {elem_type} is not float, float16 or bfloat16")
    return dtypes[elem_type]


class _CudaBuffer:
    """A device pointer as an object torch can wrap without copying (bytes as uint8)."""

    def __init__(self, ptr: int, nbytes: int) -> None:
        self.__cuda_array_interface__ = {"shape": (nbytes,), "typestr": "|u1", "data": (ptr, False),
                                         "version": 3, "strides": None, "stream": None}


def _wrap(t: _Tensor, dtype: Any, device: str) -> Any:
    """ORT's buffer ``t`` as a torch tensor sharing its memory."""
    import torch

    shape = tuple(t.shape[i] for i in range(t.ndim))
    numel = 1
    for s in shape:
        numel *= s
    nbytes = numel * dtype.itemsize
    if nbytes == 0:
        return torch.empty(shape, dtype=dtype, device=device)
    if device == "cpu":
        raw = torch.frombuffer((ctypes.c_char * nbytes).from_address(t.data), dtype=torch.uint8)
    else:
        raw = torch.as_tensor(_CudaBuffer(t.data, nbytes), device=device)
    return raw.view(dtype).view(shape)


def _callback(call_ptr: Any) -> int:
    call = call_ptr.contents
    try:
        if call.version != BRIDGE_VERSION:
            raise KernelError(f"the library speaks bridge version {call.version}, Python {BRIDGE_VERSION}: "
                              "rebuild the plugin (python -m onnxfuse.kernels.ortlib)")
        dtype = _torch_dtype(call.elem_type)
        device = f"cuda:{call.device_id}" if call.device == 1 else "cpu"
        args = [_wrap(call.inputs[i], dtype, device) if call.inputs[i].data else None for i in range(7)]
        out = _wrap(call.output, dtype, device)
        kwargs = {"activation": _ACTIVATIONS[call.activation], "precision": _PRECISIONS[call.precision],
                  "out": out}
        kernel = _state["kernel"] or _triton_kernel
        if call.device == 1:
            import torch

            with torch.cuda.device(call.device_id), \
                    torch.cuda.stream(torch.cuda.ExternalStream(call.stream or 0, device=device)):
                kernel(*args, **kwargs)
        else:
            kernel(*args, **kwargs)
        _state["calls"] += 1
        return 0
    except BaseException as e:  # nothing may unwind into ORT's C++ frames
        message = f"{type(e).__name__}: {e}".encode(errors="replace")[:1023]
        ctypes.memmove(ctypes.addressof(call) + _Call.error.offset, message + b"\0", len(message) + 1)
        return 1


def _library() -> Any:
    from onnxfuse.kernels import ortlib

    if _state["lib"] is None:
        path = ortlib.library_path()
        try:
            lib = ctypes.CDLL(str(path))
            lib.onnxfuse_set_triton_callback.argtypes = [ctypes.c_void_p]
            lib.onnxfuse_set_triton_callback.restype = ctypes.c_int
            lib.onnxfuse_kernel_runs.argtypes = [ctypes.c_int]
            lib.onnxfuse_kernel_runs.restype = ctypes.c_int64
            lib.onnxfuse_bridge_call_size.restype = ctypes.c_int64
        except (OSError, AttributeError) as e:
            raise KernelError(f"cannot load the triton bridge of {path}: {e}; rebuild the plugin "
                              "(python -m onnxfuse.kernels.ortlib)") from e
        if lib.onnxfuse_bridge_call_size() != ctypes.sizeof(_Call):
            raise KernelError(f"{path} lays out the bridge call in {lib.onnxfuse_bridge_call_size()} bytes, "
                              f"this onnxfuse in {ctypes.sizeof(_Call)}: rebuild the plugin "
                              "(python -m onnxfuse.kernels.ortlib)")
        _state["lib"] = lib
    return _state["lib"]


def install(kernel: Kernel | None = None) -> None:
    """Install the Python callback into the plugin (idempotent). ``kernel`` replaces the Triton
    kernel (tests use it to make the kernel raise); ``None`` keeps the current one."""
    with _lock:
        lib = _library()
        if kernel is not None:
            _state["kernel"] = kernel
        if _state["callback"] is None:
            _state["callback"] = _CALLBACK(_callback)  # kept alive: the library holds its address
            version = lib.onnxfuse_set_triton_callback(ctypes.cast(_state["callback"], ctypes.c_void_p))
            if version != BRIDGE_VERSION:
                raise KernelError(f"the plugin speaks bridge version {version}, this onnxfuse "
                                  f"{BRIDGE_VERSION}: rebuild it (python -m onnxfuse.kernels.ortlib)")


def set_kernel(kernel: Kernel | None) -> None:
    """Replace the Python kernel the bridge launches (``None``: the Triton kernel)."""
    _state["kernel"] = kernel


def uninstall() -> None:
    """Remove the callback: triton-backend runs then fail with a clear ORT error."""
    with _lock:
        if _state["lib"] is not None:
            _state["lib"].onnxfuse_set_triton_callback(None)
        _state["callback"] = None


def calls() -> int:
    """How many kernel calls the bridge has completed successfully in this process."""
    return int(_state["calls"])


def kernel_runs(impl: str) -> int:
    """How many times the plugin ran its ``impl`` kernel (``matmul``, ``naive``, ``triton``) in
    this process: proof of which kernel ran."""
    return int(_library().onnxfuse_kernel_runs(_IMPLS[impl]))
