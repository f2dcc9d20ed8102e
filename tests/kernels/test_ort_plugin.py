"""The native ORT plugin: it builds, its kernel (not the function body) runs, and it matches
the original graph within the tolerance table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto

from onnxfuse.errors import UserError
from onnxfuse.kernels import ort as plugin
from onnxfuse.kernels.ort import bridge
from onnxfuse.kernels.triton.reference import fused_gated_mlp_reference
from onnxfuse.numerics import compare, tolerance
from onnxfuse.pipeline import sessions
from tests.helpers import Exports
from tests.kernels.plugin_models import op_model, run_model, run_op


@pytest.fixture(scope="session", autouse=True)
def library() -> Path:
    return plugin.library_path()  # the package's install built it (setup.py); no fallback here


def test_the_plugin_kernel_runs_not_the_function_body(exports: Exports) -> None:
    src, fused = exports.fused_pair("tiny", "mlp")
    feeds, _ = sessions.make_inputs(sessions.model_info(src), 2, 5)
    plain = run_model(fused, feeds)
    shifted = run_model(fused, feeds, plugin.session_options(cpu_kernel="matmul", debug_offset=1.0))
    np.testing.assert_allclose(shifted - plain, 1.0, rtol=0, atol=1e-5)
    assert np.array_equal(plain, run_model(src, feeds))  # without the plugin: the function body


# The naive loops would take minutes on the seed shapes: seed runs the default kernel only.
@pytest.mark.parametrize("model,part,cpu_kernel", [
    *((m, p, k) for m, p in (("tiny", "mlp"), ("tiny", "full"), ("tiny-bias", "full"), ("tiny-gemma", "mlp"))
      for k in ("matmul", "naive")),
    ("seed", "mlp", "matmul"), ("seed", "full", "matmul")])
def test_plugin_matches_the_original_graph_fp32(exports: Exports, model: str, part: str, cpu_kernel: str) -> None:
    src, fused = exports.fused_pair(model, part)
    nodes = len(sessions.model_info(fused).fused_nodes)
    for batch, seq in ((2, 16), (1, 37)):
        feeds, _ = sessions.make_inputs(sessions.model_info(src), batch, seq)
        before = bridge.kernel_runs(cpu_kernel)
        got = run_model(fused, feeds, plugin.session_options(cpu_kernel=cpu_kernel))
        # The kernel ran every fused node (a library registering no kernel leaves them to their
        # function bodies, which would match the original by construction).
        assert bridge.kernel_runs(cpu_kernel) - before == nodes > 0
        c = compare("y", got, run_model(src, feeds), limit=1e-5)
        assert c.passed, c.detail


def test_plugin_matches_the_original_graph_fp16(exports: Exports) -> None:
    src, fused = exports.fused_pair("tiny", "full", "float16")
    feeds, _ = sessions.make_inputs(sessions.model_info(src), 2, 16)
    before = bridge.kernel_runs("matmul")
    got = run_model(fused, feeds, plugin.session_options(cpu_kernel="matmul"))
    assert bridge.kernel_runs("matmul") - before == len(sessions.model_info(fused).fused_nodes) > 0
    assert compare("logits", got, run_model(src, feeds), limit=tolerance("float16")).passed


def test_cpu_default_leaves_nodes_to_their_function_body(exports: Exports) -> None:
    src, fused = exports.fused_pair("tiny", "mlp")
    feeds, _ = sessions.make_inputs(sessions.model_info(src), 2, 5)
    # A debug offset would show if the plugin kernel ran: with the CPU default it must not.
    got = run_model(fused, feeds, plugin.session_options(debug_offset=1.0))
    assert np.array_equal(got, run_model(src, feeds))


@pytest.mark.parametrize("activation", ["silu", "gelu", "gelu_tanh"])
@pytest.mark.parametrize("biased", [False, True])
@pytest.mark.parametrize("dtype", [TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16])
@pytest.mark.parametrize("backend", ["matmul", pytest.param("triton", marks=pytest.mark.interpreter)])
def test_op_alone_matches_the_reference_in_every_type(backend: str, dtype: int, activation: str, biased: bool) -> None:
    """The op alone, every type and activation, with and without biases; ``triton``: ORT →
    plugin → Python bridge → Triton kernel (interpreted) on ORT's own buffers."""
    import ml_dtypes
    import torch

    model, arrays = op_model(dtype, 24, 52, activation, biased)
    so = (plugin.session_options(backend="triton") if backend == "triton"
          else plugin.session_options(cpu_kernel=backend))
    x = np.random.default_rng(1).standard_normal((7, 24)).astype(np.float32)
    before = bridge.calls()
    y = run_op(model, x, dtype, so)
    assert bridge.calls() - before == (1 if backend == "triton" else 0)
    np_dtype = {TensorProto.FLOAT: np.float32, TensorProto.FLOAT16: np.float16,
                TensorProto.BFLOAT16: ml_dtypes.bfloat16}[dtype]
    q = [torch.from_numpy(a.astype(np_dtype).astype(np.float32)) for a in arrays]
    ref = fused_gated_mlp_reference(torch.from_numpy(x.astype(np_dtype).astype(np.float32)), *q[:3],
                                    *(q[3:] or [None] * 3), activation=activation, compute_dtype=torch.float64)
    name = {TensorProto.FLOAT: "float32", TensorProto.FLOAT16: "float16", TensorProto.BFLOAT16: "bfloat16"}[dtype]
    c = compare("Y", y, ref.numpy(), limit=tolerance(name))  # type: ignore[arg-type]
    assert c.passed, c.detail


def test_bad_activation_is_an_ort_error_naming_it() -> None:
    model, _ = op_model(TensorProto.FLOAT, 8, 12, "relu", False)
    with pytest.raises(Exception, match="unknown activation 'relu'"):
        ort.InferenceSession(model.SerializeToString(), plugin.session_options(cpu_kernel="matmul"),
                             providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("key", ["onnxfuse.cpu_kernl", "onnxfuse.Backend", "onnxfuse."])
def test_an_unknown_onnxfuse_config_key_is_refused_naming_it(key: str) -> None:
    """A typo in a caller's own options would otherwise be ignored (the kernel it meant to pick
    silently not picked). ORT >= 1.23 lists a session's entries; the wheel here is newer."""
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # others' keys pass
    options.add_session_config_entry(key, "naive")
    with pytest.raises(UserError, match=rf"unknown session config key {key}: .*onnxfuse.cpu_kernel"):
        plugin.session_options(cpu_kernel="matmul", options=options)
    # Through the C API alone (as onnxruntime-genai registers the library), the same refusal.
    with pytest.raises(Exception, match=rf"INVALID_ARGUMENT.*unknown session config key {key}"):
        options.register_custom_ops_library(str(plugin.library_path()))
    good = ort.SessionOptions()
    good.add_session_config_entry("onnxfuse.cpu_kernel", "naive")
    plugin.session_options(cpu_kernel="naive", options=good)


def test_missing_library_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from onnxfuse.errors import UnsupportedError

    monkeypatch.setenv("ONNXFUSE_ORT_LIBRARY", str(tmp_path / "nope.so"))
    with pytest.raises(UnsupportedError, match="not built"):
        plugin.session_options()


def test_broken_library_is_a_clear_error_and_the_function_body_still_runs(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, exports: Exports) -> None:
    from onnxfuse.errors import UnsupportedError
    from tests.conftest import run_cli

    broken = tmp_path / "libbroken.so"
    broken.write_bytes(b"\x7fELF" + bytes(range(256)) * 4)
    monkeypatch.setenv("ONNXFUSE_ORT_LIBRARY", str(broken))
    with pytest.raises(UnsupportedError, match="ONNX Runtime cannot load the onnxfuse plugin"):
        plugin.session_options()
    src, fused = exports.fused_pair("tiny", "mlp")
    proc = run_cli(["parity", str(src), str(fused)])
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "cannot load the onnxfuse plugin" in proc.stderr
    proc = run_cli(["parity", str(src), str(fused), "--backend", "none"])  # no plugin: function bodies
    assert proc.returncode == 0, proc.stderr
