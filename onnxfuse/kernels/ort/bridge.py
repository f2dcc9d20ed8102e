"""The plugin's ``triton`` backend: ORT's kernel calls back into Python to launch an op's kernel.

The native library exports ``onnxfuse_set_triton_callback``; :func:`install` hands it a
``ctypes.CFUNCTYPE`` callback. ``ctypes`` takes the GIL when ORT's thread calls it (ORT's Python
binding releases the GIL during ``run``), so no Python headers are needed. Each call
(:class:`onnxfuse.kernels.ort._abi.Call`) carries the op's id, its attribute codes, the element type
and ORT's own buffers as raw pointers plus shapes. The callback looks the op up in the registry
(:data:`onnxfuse.ops.REGISTRY`), wraps the buffers as torch tensors without copying (CPU:
``torch.frombuffer``; CUDA: ``__cuda_array_interface__``), and launches the op's Python kernel
(``OpSpec.kernel``, imported on first use: for FusedGatedMLP the Triton kernel) writing straight
into ORT's output buffer (on CUDA, on ORT's compute stream), then returns 0. An exception becomes
a non-zero return plus its message, which the library turns into an ORT error: that ``run``
raises, the process and the session survive.

On CPU the Triton kernel runs under Triton's interpreter, for verification at small sizes, not
speed: the process must start with ``TRITON_INTERPRET=1`` (the CLI sets it at entry when a command
runs Triton on CPU; library code only checks it, see :func:`onnxfuse.kernels.interpreting`).
"""

from __future__ import annotations

import ctypes
import importlib
import threading
from collections.abc import Callable
from typing import Any

from onnxfuse import ops
from onnxfuse.errors import KernelError
from onnxfuse.kernels.ort import _abi, _loader

__all__ = ["BRIDGE_VERSION", "Kernel", "calls", "install", "kernel_runs", "set_kernel", "uninstall"]

BRIDGE_VERSION = _abi.BRIDGE_VERSION
_IMPLS = {"matmul": 0, "naive": 1, "off": 2, "triton": 3}
_SPECS = {spec.op_id: spec for spec in ops.REGISTRY}
_DTYPES = {code: name for name, code in ops.ELEMENT_TYPES.items()}
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(_abi.Call))

# A kernel: (*inputs in slot order, None for an absent one, *, <attribute>=value..., precision, out) -> None
Kernel = Callable[..., Any]

_lock = threading.Lock()
_state: dict[str, Any] = {"callback": None, "kernel": None, "calls": 0}
_kernels: dict[int, Kernel] = {}


def _kernel(spec: ops.OpSpec) -> Kernel:
    """The op's Python kernel (``OpSpec.kernel``, ``"module:function"``), imported once."""
    if spec.op_id not in _kernels:
        if spec.kernel is None:
            raise KernelError(f"{spec.qualified_name} has no Python kernel for the triton backend: "
                              "use the default backend")
        module, _, function = spec.kernel.partition(":")
        _kernels[spec.op_id] = getattr(importlib.import_module(module), function)
    return _kernels[spec.op_id]


def _torch_dtype(elem_type: int) -> Any:
    import torch

    if elem_type not in _DTYPES:
        raise KernelError(f"element type {elem_type} is none of onnxfuse's "
                          f"{', '.join(ops.ELEMENT_TYPES)}: rebuild the plugin ({_loader.REBUILD})")
    return getattr(torch, _DTYPES[elem_type])


class _CudaBuffer:
    """A device pointer as an object torch can wrap without copying (bytes as uint8)."""

    def __init__(self, ptr: int, nbytes: int) -> None:
        self.__cuda_array_interface__ = {"shape": (nbytes,), "typestr": "|u1", "data": (ptr, False),
                                         "version": 3, "strides": None, "stream": None}


def _wrap(t: _abi.Tensor, dtype: Any, device: str) -> Any:
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


def _arguments(call: _abi.Call, spec: ops.OpSpec, device: str) -> tuple[list[Any], dict[str, Any]]:
    """The kernel's positional inputs and keyword arguments for ``call`` of op ``spec``."""
    if call.num_attributes != len(spec.attributes) or call.num_inputs > len(spec.inputs) \
            or call.num_outputs != len(spec.outputs):
        raise KernelError(f"the plugin calls {spec.qualified_name} with {call.num_inputs} inputs, "
                          f"{call.num_outputs} outputs and {call.num_attributes} attributes, the registry "
                          f"declares {len(spec.inputs)}, {len(spec.outputs)} and {len(spec.attributes)}: "
                          f"rebuild the plugin ({_loader.REBUILD})")
    dtype = _torch_dtype(call.elem_type)
    inputs = [_wrap(call.inputs[i], dtype, device) if i < call.num_inputs and call.inputs[i].data else None
              for i in range(len(spec.inputs))]
    outputs = [_wrap(call.outputs[i], dtype, device) for i in range(call.num_outputs)]
    kwargs: dict[str, Any] = {a.name: a.values[call.attributes[i]] for i, a in enumerate(spec.attributes)}
    kwargs["precision"] = ops.PRECISIONS[call.precision]
    kwargs["out"] = outputs[0] if len(outputs) == 1 else tuple(outputs)
    return inputs, kwargs


def _callback(call_ptr: Any) -> int:
    call = call_ptr.contents
    try:
        if call.version != BRIDGE_VERSION:
            raise KernelError(f"the library speaks bridge version {call.version}, Python {BRIDGE_VERSION}: "
                              f"rebuild the plugin ({_loader.REBUILD})")
        spec = _SPECS.get(call.op_id)
        if spec is None:
            raise KernelError(f"the plugin calls op id {call.op_id}, which the registry lacks: "
                              f"rebuild the plugin ({_loader.REBUILD})")
        device = f"cuda:{call.device_id}" if _abi.DEVICES[call.device] == "cuda" else "cpu"
        inputs, kwargs = _arguments(call, spec, device)
        kernel = _state["kernel"] or _kernel(spec)
        if device != "cpu":
            import torch

            with torch.cuda.device(call.device_id), \
                    torch.cuda.stream(torch.cuda.ExternalStream(call.stream or 0, device=device)):
                kernel(*inputs, **kwargs)
        else:
            kernel(*inputs, **kwargs)
        _state["calls"] += 1
        return 0
    except BaseException as e:  # nothing may unwind into ORT's C++ frames
        message = f"{type(e).__name__}: {e}".encode(errors="replace")[:_abi.ERROR_BYTES - 1]
        ctypes.memmove(ctypes.addressof(call) + _abi.Call.error.offset, message + b"\0", len(message) + 1)
        return 1


def install(kernel: Kernel | None = None) -> None:
    """Install the Python callback into the plugin (idempotent). ``kernel`` replaces every op's
    Python kernel (tests use it to make the kernel raise); ``None`` keeps the current one.

    Raises:
        UnsupportedError: the library is not built, or not built for this onnxfuse.
    """
    with _lock:
        lib = _loader.library()
        if kernel is not None:
            _state["kernel"] = kernel
        if _state["callback"] is None:
            callback = _CALLBACK(_callback)
            _state["callback"] = callback  # kept alive: the library holds its address
            lib.onnxfuse_set_triton_callback(ctypes.cast(callback, ctypes.c_void_p))


def set_kernel(kernel: Kernel | None) -> None:
    """Replace every op's Python kernel the bridge launches (``None``: each op's own)."""
    _state["kernel"] = kernel


def uninstall() -> None:
    """Remove the callback: triton-backend runs then fail with a clear ORT error."""
    with _lock:
        _loader.library().onnxfuse_set_triton_callback(None)
        _state["callback"] = None


def calls() -> int:
    """How many kernel calls the bridge has completed successfully in this process."""
    return int(_state["calls"])


def kernel_runs(impl: str) -> int:
    """How many times the plugin ran its ``impl`` kernel (``matmul``, ``naive``, ``triton``) in
    this process: proof of which kernel ran."""
    return int(_loader.library().onnxfuse_kernel_runs(_IMPLS[impl]))
