"""The plugin's triton backend: ORT → native kernel → Python bridge → Triton kernel (under the
interpreter here), on ORT's own buffers; failures inside Python become ORT errors."""

from __future__ import annotations

import ctypes
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from onnx import TensorProto

from onnxfuse import ops
from onnxfuse.errors import UnsupportedError, UserError
from onnxfuse.kernels import ort as plugin
from onnxfuse.kernels.ort import _abi, _loader, bridge
from onnxfuse.kernels.triton.reference import fused_gated_mlp_reference
from onnxfuse.numerics import compare, tolerance
from onnxfuse.pipeline import sessions
from tests.helpers import Exports
from tests.kernels.plugin_models import op_model, run_model, run_op

pytestmark = pytest.mark.interpreter  # the triton backend on CPU, in this process


@pytest.fixture(scope="module")
def tiny_mlp(exports: Exports) -> tuple[Path, Path]:
    return exports.fused_pair("tiny", "mlp")


@pytest.fixture(autouse=True)
def _restore_kernel():
    yield
    bridge.set_kernel(None)
    bridge.install()


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_triton_backend_matches_the_original_graph_for_tiny(exports: Exports, dtype: str) -> None:
    src, fused = exports.fused_pair("tiny", "full", dtype)
    info = sessions.model_info(fused)
    assert len(info.fused_nodes) == 2
    options = plugin.session_options(backend="triton")
    for batch, seq in ((2, 7), (1, 5)):
        feeds, _ = sessions.make_inputs(sessions.model_info(src), batch, seq)
        before = bridge.calls(), bridge.kernel_runs("triton")
        got = run_model(fused, feeds, options)
        # Each fused node ran through the bridge: the Triton kernel, not the function body.
        assert bridge.calls() - before[0] == 2
        assert bridge.kernel_runs("triton") - before[1] == 2
        c = compare("logits", got, run_model(src, feeds), limit=tolerance(dtype))  # type: ignore[arg-type]
        assert c.passed, c.detail


def test_the_kernel_writes_into_ort_buffers_without_copying(tiny_mlp: tuple[Path, Path]) -> None:
    """The kernel gets ORT's own buffers: X is the very array we fed, and ``out`` is the output
    buffer we bound (an OrtValue of ours), so a bridge that handed the kernel a scratch copy and
    copied back afterwards fails on the pointer, and on what the buffer holds during the call."""
    import onnxruntime as ort

    src, fused = tiny_mlp
    feeds, _ = sessions.make_inputs(sessions.model_info(src), 1, 3)
    expected = run_model(src, feeds)
    sess = sessions.session(fused, options=plugin.session_options(backend="triton"))
    (name, x), = feeds.items()
    y = ort.OrtValue.ortvalue_from_numpy(np.full(expected.shape, np.nan, expected.dtype))
    binding = sess.io_binding()
    binding.bind_cpu_input(name, x)
    binding.bind_ortvalue_output(sess.get_outputs()[0].name, y)
    seen: list[tuple[int, int, bool, bool]] = []

    def spy(x, w_gate, w_up, w_down, *biases, activation, precision, out):  # type: ignore[no-untyped-def]
        out.copy_(fused_gated_mlp_reference(x, w_gate, w_up, w_down, *biases, activation=activation))
        # Written through `out`, visible in our buffer at once: no copy-back after the call.
        visible = bool(np.array_equal(y.numpy(), out.numpy()))
        seen.append((x.data_ptr(), out.data_ptr(), x.is_contiguous() and out.is_contiguous(), visible))

    bridge.set_kernel(spy)
    sess.run_with_iobinding(binding)
    (x_ptr, out_ptr, contiguous, visible), = seen
    assert x_ptr == x.ctypes.data and out_ptr == y.data_ptr() and contiguous and visible
    assert compare("y", y.numpy(), expected, limit=1e-5).passed


def test_cli_triton_backend_on_cpu_needs_no_environment_set_up(tiny_mlp: tuple[Path, Path]) -> None:
    """A user's shell has no TRITON_INTERPRET, and triton may be imported (by torch) before the
    backend asks for the interpreter: the kernels must still run interpreted."""
    import os

    from tests.conftest import run_cli

    src, fused = tiny_mlp
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = run_cli(["parity", str(src), str(fused), "--backend", "triton", "--batch", "1", "--seq", "3"], env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "parity: passed" in proc.stdout
    # A library user chooses the interpreter when the process starts; triton imported first
    # (as torch does) then changes nothing: its own jitted helpers (tl.sigmoid) run interpreted.
    script = (
        "import triton, numpy as np, onnxfuse\n"
        f"s = onnxfuse.session({str(fused)!r}, backend='triton')\n"
        f"p = onnxfuse.session({str(fused)!r}, backend='none')\n"
        "x = {s.get_inputs()[0].name: np.random.default_rng(0).standard_normal((1, 3, 64)).astype(np.float32)}\n"
        "np.testing.assert_allclose(s.run(None, x)[0], p.run(None, x)[0], rtol=1e-4, atol=1e-5)\n"
        "print('ok')\n")
    proc = subprocess.run([sys.executable, "-c", script], env={**env, "TRITON_INTERPRET": "1"},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_triton_backend_on_cpu_without_the_interpreter_says_how_to_choose_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Library code never sets TRITON_INTERPRET (Triton binds its helpers when imported): a
    process that did not choose the interpreter at entry gets a user error naming the fixes."""
    import os

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(UnsupportedError, match=r"set TRITON_INTERPRET=1 before Python starts.*`onnxfuse` "
                                               r"CLI.*--device cuda"):
        plugin.session_options(backend="triton")
    assert "TRITON_INTERPRET" not in os.environ


def test_a_raising_python_kernel_is_an_ort_error_and_the_next_run_works(tiny_mlp: tuple[Path, Path]) -> None:
    src, fused = tiny_mlp
    feeds, _ = sessions.make_inputs(sessions.model_info(src), 2, 4)
    sess = sessions.session(fused, options=plugin.session_options(backend="triton"))

    def boom(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise ValueError("boom: planted failure 42")

    bridge.set_kernel(boom)
    with pytest.raises(Exception, match=r"triton backend\): ValueError: boom: planted failure 42") as info:
        sess.run(None, feeds)
    assert "RUNTIME_EXCEPTION" in str(info.value)
    bridge.set_kernel(None)
    got = sess.run(None, feeds)[0]
    assert compare("y", got, run_model(src, feeds), limit=1e-5).passed


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def test_runs_in_a_loop_do_not_leak(tiny_mlp: tuple[Path, Path]) -> None:
    """100 raising runs and 100 successful bridge runs grow RSS by less than 8 MiB. The successful
    ones launch a torch kernel through the same zero-copy wrappers (the interpreter would take
    ~0.15 s a run); a few real Triton runs come first so its caches are warm."""
    src, fused = tiny_mlp
    feeds, _ = sessions.make_inputs(sessions.model_info(src), 2, 4)
    sess = sessions.session(fused, options=plugin.session_options(backend="triton"))
    for _ in range(3):
        sess.run(None, feeds)

    def reference(x, w_gate, w_up, w_down, *biases, activation, precision, out):  # type: ignore[no-untyped-def]
        out.copy_(fused_gated_mlp_reference(x, w_gate, w_up, w_down, *biases, activation=activation))

    def boom(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("x" * 4000)  # longer than the error buffer: truncated, not overflowed

    bridge.set_kernel(reference)
    for _ in range(10):
        sess.run(None, feeds)
    start = _rss_mib()
    for _ in range(100):
        sess.run(None, feeds)
    bridge.set_kernel(boom)
    failures = 0
    for _ in range(100):
        try:
            sess.run(None, feeds)
        except Exception as e:
            failures += "RuntimeError: xxx" in str(e)
    grown = _rss_mib() - start
    assert failures == 100
    # Measured here: 1.2 MiB over the 200 runs (~6 KiB a run, the allocator settling). 8 MiB
    # is 40 KiB a run: a leak of a 131 KiB buffer per run (26 MiB) fails, which a bound of 5%
    # of the process's RSS (28 MiB at 557 MiB) let through.
    assert grown < 8.0, f"RSS grew {grown:.1f} MiB from {start:.1f} MiB over 200 runs"


def test_without_the_callback_the_run_fails_clearly(tiny_mlp: tuple[Path, Path]) -> None:
    src, fused = tiny_mlp
    feeds, _ = sessions.make_inputs(sessions.model_info(src), 1, 2)
    sess = sessions.session(fused, options=plugin.session_options(backend="triton"))
    bridge.uninstall()
    with pytest.raises(Exception, match=r"no Python kernel installed.*backend='triton'"):
        sess.run(None, feeds)


def test_bf16_through_the_bridge_matches_the_reference() -> None:
    """bfloat16 crosses the bridge as raw 16-bit buffers; the interpreter path upcasts."""
    import ml_dtypes

    model, arrays = op_model(TensorProto.BFLOAT16, 40, 72, "gelu_tanh", True)
    x = np.random.default_rng(3).standard_normal((2, 40)).astype(np.float32)
    y = run_op(model, x, TensorProto.BFLOAT16, plugin.session_options(backend="triton"))
    q = [torch.from_numpy(a.astype(ml_dtypes.bfloat16).astype(np.float32)) for a in arrays]
    ref = fused_gated_mlp_reference(torch.from_numpy(x.astype(ml_dtypes.bfloat16).astype(np.float32)),
                                    *q, activation="gelu_tanh", compute_dtype=torch.float64)
    assert compare("Y", y, ref.numpy(), limit=tolerance("bfloat16")).passed


def test_bad_shapes_are_ort_errors_naming_the_input() -> None:
    import onnxruntime as ort
    from onnx import numpy_helper

    model, _ = op_model(TensorProto.FLOAT, 8, 12, "silu", False)
    w_up = next(t for t in model.graph.initializer if t.name == "W_up")
    w_up.CopyFrom(numpy_helper.from_array(np.zeros((8, 13), np.float32), "W_up"))
    for options in (plugin.session_options(backend="triton"), plugin.session_options(cpu_kernel="matmul")):
        sess = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        with pytest.raises(Exception, match=r"W_up is \[8, 13\], expected \[8, 12\]"):
            sess.run(None, {"X": np.zeros((3, 8), np.float32)})


@pytest.mark.parametrize("kwargs,message", [
    ({"backend": "cuda"}, "unknown backend 'cuda': choose one of default, triton"),
    ({"device": "gpu"}, "unknown device 'gpu': choose one of cpu, cuda"),
    ({"cpu_kernel": "fast"}, "unknown cpu_kernel 'fast': choose one of off, matmul, naive"),
    ({"precision": "fp64"}, "unknown precision 'fp64': choose one of tf32, ieee"),
])
def test_bad_session_options_are_user_errors_naming_the_value(kwargs: dict[str, str], message: str) -> None:
    """The same mistake the CLI's --backend/--device refuse with exit 2 is a UserError here too."""
    with pytest.raises(UserError, match=message) as info:
        plugin.session_options(**kwargs)
    assert info.value.exit_code == 2


def test_unknown_config_entries_are_refused_by_the_library() -> None:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.add_session_config_entry("onnxfuse.backend", "fast")
    with pytest.raises(Exception, match=r"onnxfuse\.backend: unknown value fast"):
        so.register_custom_ops_library(str(plugin.library_path()))


def test_the_bridge_structs_match_the_library_abi_field_by_field() -> None:
    lib = _loader.library()
    built = json.loads(lib.onnxfuse_bridge_abi())
    assert built == _abi.layout()
    assert list(built["call"]["fields"]) == [name for name, *_ in _abi.Call._fields_]
    assert built["call"]["fields"]["inputs"][1] == max(len(s.inputs) for s in ops.REGISTRY) * ctypes.sizeof(_abi.Tensor)


def test_two_swapped_bridge_fields_are_refused() -> None:
    """A Python struct with ``op_id`` and ``elem_type`` swapped has the library's size, so only a
    field-by-field comparison can see it."""
    fields = list(_abi.Call._fields_)
    i, j = fields.index(("op_id", ctypes.c_int32)), fields.index(("elem_type", ctypes.c_int32))
    fields[i], fields[j] = fields[j], fields[i]
    swapped = type("SwappedCall", (ctypes.Structure,), {"_fields_": fields})
    assert ctypes.sizeof(swapped) == ctypes.sizeof(_abi.Call)
    lib = _loader.library()
    _loader.check(lib, plugin.library_path())  # the real structs pass
    with pytest.raises(UnsupportedError, match=r"^rebuild the plugin: .* lays out the bridge structs") as info:
        _loader.check(lib, plugin.library_path(), call=swapped)
    assert "call.op_id: library [offset, size] [4, 4], Python [8, 4]" in str(info.value)
    assert "call.elem_type: library [offset, size] [8, 4], Python [4, 4]" in str(info.value)


def test_the_library_was_built_from_this_registry() -> None:
    lib = _loader.library()
    assert json.loads(lib.onnxfuse_contract()) == ops.contract()
    assert lib.onnxfuse_contract().decode() == json.dumps(ops.contract(), sort_keys=True)


def test_a_library_built_from_another_registry_is_refused(monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    """The registry gains an activation the library was not built with: loading it (a fresh
    path: the loader checks each library once) is refused, naming the difference and the fix."""
    contract = ops.contract()
    changed = json.loads(json.dumps(contract))
    changed["ops"][0]["attributes"][0]["values"].append("relu")
    monkeypatch.setattr(ops, "contract", lambda: changed)
    copy = tmp_path / "libonnxfuse_ort.so"
    shutil.copy(plugin.library_path(), copy)
    monkeypatch.setenv("ONNXFUSE_ORT_LIBRARY", str(copy))
    with pytest.raises(UnsupportedError, match=r"rebuild the plugin: .* another fused-op registry .*"
                                               r"contract\.ops\[0\]\.attributes\[0\]\.values: library "
                                               r'\["silu", "gelu", "gelu_tanh"\], onnxfuse \["silu", "gelu", '
                                               r'"gelu_tanh", "relu"\]\); run `python -m onnxfuse'):
        plugin.session_options()
    monkeypatch.setattr(ops, "contract", lambda: contract)
    plugin.session_options()  # the same library, with the registry it was built from
