"""The native ONNX Runtime custom-op library that runs ``onnxfuse::FusedGatedMLP``.

Built from ``onnxfuse/kernels/ort`` (C++ against ORT's C API, version 21, so it loads in ORT
1.21 and newer) with CMake by the package's install (``setup.py`` runs ``ort/_build.py``; so do
``pip install .``, ``pip install -e .`` and ``make``), or by hand with :func:`build`. ORT
headers come from ``$ORT_INCLUDE_DIR``, else the system's ``onnxruntime/`` include folder,
else Debian trixie's ``libonnxruntime-dev`` fetched under an isolated apt configuration.

CPU kernel (``cpu_kernel="matmul"``): ORT's own MatMul through the C API's op invocation
(``Ort::Op``) for the three GEMMs, scratch from the kernel context's allocator, and one
vectorised activation × product pass on ORT's thread pool. It is exact (rel L2 5.6e-7 on the
notebook MLP) but measured 0.93–0.96× the unfused graph on this 2-core CPU: invoked MatMuls
never prepack their weights, and MLAS (which could) is not exported by the ORT wheel. So, as
DESIGN.md allows, CPU sessions default to ``cpu_kernel="off"``: the library registers no CPU
kernel and ORT runs the node's function body with its own (prepacked) kernels, 1.0× by
construction. ``matmul`` and ``naive`` (reference loops) are opt-in. ``debug_offset`` adds a
constant to every output (tests use it to prove that the plugin's kernel, not the function
body, ran). Settings are session config entries that ``RegisterCustomOps`` reads per session.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from onnxfuse import ops
from onnxfuse.errors import KernelError, UnsupportedError, UserError, first_line
from onnxfuse.kernels.ort import _abi, _build, _loader
from onnxfuse.kernels.ort._build import LIBRARY_NAME
from onnxfuse.kernels.ort._loader import REBUILD, library_path

__all__ = ["LIBRARY_NAME", "build", "library_path", "selected_kernel", "session_options"]

CPU_KERNELS = ("off", "matmul", "naive")
BACKENDS = ("default", "triton")
DEVICES = _abi.DEVICES


def build(dest: Path | None = None, *, build_type: str = "Release") -> Path:
    """Rebuild the library by hand (the package's install already builds it, through
    ``setup.py``) into ``dest`` (default: the package's ``_lib``). Returns its path.

    Raises:
        KernelError: no headers, no cmake / compiler, or the build failed (with its output).
    """
    try:
        return _build.build(dest or _loader.INSTALLED, build_type=build_type)
    except _build.BuildError as e:
        raise KernelError(str(e)) from e


def session_options(*, backend: str = "default", device: str = "cpu", cpu_kernel: str = "off",
                    precision: str = "tf32", debug_offset: float | None = None,
                    options: Any = None) -> Any:
    """ORT session options with the plugin registered.

    Args:
        backend: ``default`` (CPU: ``cpu_kernel``) or ``triton`` (the Python bridge launches the
            Triton kernel on ORT's buffers: compiled on CUDA, interpreted on CPU).
        device: ``cpu`` or ``cuda`` (registers the kernels for ORT's CUDA provider; both
            backends launch the Triton kernel there, on ORT's compute stream).
        cpu_kernel: the default backend's CPU kernel: ``off`` (the node's function body runs
            on ORT's own kernels), ``matmul`` or ``naive``.
        precision: float32 dot precision of the Triton kernel, ``tf32`` or ``ieee``.
        debug_offset: added to every output of the native CPU kernels (tests: proves they ran).
        options: the caller's own ``ort.SessionOptions`` to register the plugin in (the
            plugin reads its ``onnxfuse.*`` entries when registered; with ORT >= 1.23 an
            unknown one, a typo, is refused).

    Raises:
        UserError: a bad value (it names the value and the choices), or an unknown
            ``onnxfuse.*`` entry in ``options``; UnsupportedError: the
            library is not built, not built for this onnxfuse, or ORT cannot load it.
    """
    import onnxruntime as ort

    for name, value, choices in (("backend", backend, BACKENDS), ("device", device, DEVICES),
                                 ("cpu_kernel", cpu_kernel, CPU_KERNELS),
                                 ("precision", precision, ops.PRECISIONS)):
        if value not in choices:
            raise UserError(f"unknown {name} {value!r}: choose one of {', '.join(choices)}")
    if backend == "triton" or device == "cuda":
        _prepare_triton(device)
    so = options or ort.SessionOptions()
    for key, value in (("cpu_kernel", cpu_kernel), ("backend", backend), ("device", device),
                       ("precision", precision)):
        so.add_session_config_entry(f"onnxfuse.{key}", value)
    if debug_offset is not None:
        so.add_session_config_entry("onnxfuse.debug_offset", repr(float(debug_offset)))
    _loader.library()  # refuses a library built for another registry or bridge ABI
    try:
        so.register_custom_ops_library(str(library_path()))
    except Exception as e:
        if "INVALID_ARGUMENT" in str(e):  # a bad onnxfuse.* entry in the caller's own options
            raise UserError(f"the onnxfuse plugin refuses these session options: "
                            f"{first_line(e).rpartition('INVALID_ARGUMENT : ')[2]}") from e
        raise UnsupportedError(f"ONNX Runtime cannot load the onnxfuse plugin: {first_line(e)}; "
                               f"rebuild it ({REBUILD}) or run without it "
                               "(--backend none: fused models run their function bodies)") from e
    return so


def selected_kernel(*, backend: str = "default", device: str = "cpu", cpu_kernel: str = "off") -> str | None:
    """Which of the library's kernels runs the fused nodes of a session whose options
    :func:`session_options` made with these settings, as ``RegisterCustomOps`` decides it
    (plugin.cc, ``ReadConfig``): ``triton`` on CUDA or with the triton backend, else
    ``cpu_kernel`` (``matmul``, ``naive``), or ``None`` for ``off`` (the library registers
    nothing and ORT runs the nodes' function bodies). The name is the one
    :func:`onnxfuse.kernels.ort.bridge.kernel_runs` counts.

    Raises:
        UserError: a bad value (it names the value and the choices).
    """
    for name, value, choices in (("backend", backend, BACKENDS), ("device", device, DEVICES),
                                 ("cpu_kernel", cpu_kernel, CPU_KERNELS)):
        if value not in choices:
            raise UserError(f"unknown {name} {value!r}: choose one of {', '.join(choices)}")
    if backend == "triton" or device == "cuda":
        return "triton"
    return None if cpu_kernel == "off" else cpu_kernel


def _prepare_triton(device: str) -> None:
    """Install the bridge. On CPU the Triton kernels run under Triton's interpreter, a mode
    chosen once, when the process starts (``TRITON_INTERPRET=1``; Triton binds its own jitted
    helpers when it is imported): library code never sets it.

    Raises:
        UnsupportedError: ``device`` is ``cpu`` and the process does not interpret Triton.
    """
    from onnxfuse.kernels import interpreting
    from onnxfuse.kernels.ort import bridge

    if device == "cpu" and not interpreting():
        raise UnsupportedError(
            "the triton backend on device cpu runs the Triton kernels under Triton's interpreter, "
            "and TRITON_INTERPRET is not set: set TRITON_INTERPRET=1 before Python starts, or run "
            "the `onnxfuse` CLI (which sets it), or use --device cuda")
    bridge.install()

