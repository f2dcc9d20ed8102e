"""The native ORT plugin: it builds, its kernel (not the function body) runs, and it matches
the original graph within the tolerance table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxfuse.exporters import ExportConfig, export
from onnxfuse.graph_rewrites import RewriteConfig, rewrite
from onnxfuse.kernels import ortlib
from onnxfuse.kernels.reference import fused_gated_mlp_reference
from onnxfuse.numerics import compare, tolerance
from onnxfuse.pipeline import sessions


@pytest.fixture(scope="session", autouse=True)
def library() -> Path:
    try:
        return ortlib.library_path()
    except Exception:
        return ortlib.build()  # make install builds it; a bare checkout builds it here


def _pair(tmp: Path, model: str, part: str, dtype: str = "float32") -> tuple[Path, Path]:
    src = tmp / f"{model}-{part}-{dtype}.onnx"
    export(ExportConfig(model, src, part=part, dtype=dtype))  # type: ignore[arg-type]
    fused = tmp / f"{model}-{part}-{dtype}-fused.onnx"
    rewrite(RewriteConfig(src, fused))
    return src, fused


def _run(path: Path, feeds: dict[str, np.ndarray], options: object = None) -> np.ndarray:
    return sessions.session(path, options=options).run(None, feeds)[0]


def test_the_plugin_kernel_runs_not_the_function_body(tmp_path: Path) -> None:
    src, fused = _pair(tmp_path, "tiny", "mlp")
    feeds, _ = sessions.make_inputs(sessions.model_info(src), 2, 5)
    plain = _run(fused, feeds)
    shifted = _run(fused, feeds, ortlib.session_options(cpu_kernel="matmul", debug_offset=1.0))
    np.testing.assert_allclose(shifted - plain, 1.0, rtol=0, atol=1e-5)
    assert np.array_equal(plain, _run(src, feeds))  # without the plugin: the function body


# The naive loops would take minutes on the seed shapes: seed runs the default kernel only.
@pytest.mark.parametrize("model,part,cpu_kernel", [
    *((m, p, k) for m, p in (("tiny", "mlp"), ("tiny", "full"), ("tiny-bias", "full"), ("tiny-gemma", "mlp"))
      for k in ("matmul", "naive")),
    ("seed", "mlp", "matmul"), ("seed", "full", "matmul")])
def test_plugin_matches_the_original_graph_fp32(tmp_path: Path, model: str, part: str, cpu_kernel: str) -> None:
    src, fused = _pair(tmp_path, model, part)
    for batch, seq in ((2, 16), (1, 37)):
        feeds, _ = sessions.make_inputs(sessions.model_info(src), batch, seq)
        got = _run(fused, feeds, ortlib.session_options(cpu_kernel=cpu_kernel))
        c = compare("y", got, _run(src, feeds), limit=1e-5)
        assert c.passed, c.detail


def test_plugin_matches_the_original_graph_fp16(tmp_path: Path) -> None:
    src, fused = _pair(tmp_path, "tiny", "full", "float16")
    feeds, _ = sessions.make_inputs(sessions.model_info(src), 2, 16)
    got = _run(fused, feeds, ortlib.session_options(cpu_kernel="matmul"))
    assert compare("logits", got, _run(src, feeds), limit=tolerance("float16")).passed


def test_cpu_default_leaves_nodes_to_their_function_body(tmp_path: Path) -> None:
    src, fused = _pair(tmp_path, "tiny", "mlp")
    feeds, _ = sessions.make_inputs(sessions.model_info(src), 2, 5)
    # A debug offset would show if the plugin kernel ran: with the CPU default it must not.
    got = _run(fused, feeds, ortlib.session_options(debug_offset=1.0))
    assert np.array_equal(got, _run(src, feeds))


def _op_model(dtype: int, d: int, dff: int, activation: str, biased: bool) -> tuple[onnx.ModelProto, list[np.ndarray]]:
    rng = np.random.default_rng(0)
    shapes = [(d, dff), (d, dff), (dff, d)] + ([(dff,), (dff,), (d,)] if biased else [])
    arrays = [(rng.standard_normal(s) * 0.2).astype(np.float32) for s in shapes]
    names = ["W_gate", "W_up", "W_down", "B_gate", "B_up", "B_down"][: len(arrays)]
    inits = []
    for name, a in zip(names, arrays, strict=True):
        t = numpy_helper.from_array(a, name)
        if dtype != TensorProto.FLOAT:
            import ml_dtypes

            np_dtype = np.float16 if dtype == TensorProto.FLOAT16 else ml_dtypes.bfloat16
            t = helper.make_tensor(name, dtype, a.shape, a.astype(np_dtype).view(np.uint16).tobytes(), raw=True)
        inits.append(t)
    node = helper.make_node("FusedGatedMLP", ["X", *names], ["Y"], domain="onnxfuse", activation=activation)
    graph = helper.make_graph([node], "op", [helper.make_tensor_value_info("X", dtype, [None, d])],
                              [helper.make_tensor_value_info("Y", dtype, [None, d])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid("onnxfuse", 1)],
                              ir_version=10)
    return model, arrays


@pytest.mark.parametrize("activation", ["silu", "gelu", "gelu_tanh"])
@pytest.mark.parametrize("biased", [False, True])
@pytest.mark.parametrize("dtype", [TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16])
def test_op_alone_matches_the_reference_in_every_type(dtype: int, activation: str, biased: bool) -> None:
    import ml_dtypes
    import torch

    model, arrays = _op_model(dtype, 24, 52, activation, biased)
    so = ortlib.session_options(cpu_kernel="matmul")
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((7, 24)).astype(np.float32)
    np_dtype = {TensorProto.FLOAT: np.float32, TensorProto.FLOAT16: np.float16,
                TensorProto.BFLOAT16: ml_dtypes.bfloat16}[dtype]
    xq = x.astype(np_dtype)
    if dtype == TensorProto.BFLOAT16:
        # numpy has no bfloat16 for ORT: bind raw 16-bit buffers typed as BFLOAT16.
        xv = ort.OrtValue.ortvalue_from_numpy_with_onnx_type(xq.view(np.uint16), dtype)
        out = np.zeros(x.shape, np.uint16)
        binding = sess.io_binding()
        binding.bind_ortvalue_input("X", xv)
        binding.bind_ortvalue_output("Y", ort.OrtValue.ortvalue_from_numpy_with_onnx_type(out, dtype))
        sess.run_with_iobinding(binding)
        y = out.view(ml_dtypes.bfloat16).astype(np.float32)
    else:
        y = sess.run(None, {"X": xq})[0].astype(np.float32)
    q = [torch.from_numpy(a.astype(np_dtype).astype(np.float32)) for a in arrays]
    ref = fused_gated_mlp_reference(torch.from_numpy(xq.astype(np.float32)), *q[:3], *(q[3:] or [None] * 3),
                                    activation=activation, compute_dtype=torch.float64)
    name = {TensorProto.FLOAT: "float32", TensorProto.FLOAT16: "float16", TensorProto.BFLOAT16: "bfloat16"}[dtype]
    c = compare("Y", y, ref.numpy(), limit=tolerance(name))  # type: ignore[arg-type]
    assert c.passed, c.detail


def test_bad_activation_is_an_ort_error_naming_it() -> None:
    model, _ = _op_model(TensorProto.FLOAT, 8, 12, "relu", False)
    with pytest.raises(Exception, match="unknown activation 'relu'"):
        ort.InferenceSession(model.SerializeToString(), ortlib.session_options(cpu_kernel="matmul"),
                             providers=["CPUExecutionProvider"])


def test_missing_library_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from onnxfuse.errors import UnsupportedError

    monkeypatch.setenv("ONNXFUSE_ORT_LIBRARY", str(tmp_path / "nope.so"))
    with pytest.raises(UnsupportedError, match="not built"):
        ortlib.session_options()
