"""The plugin on ORT's CUDA provider: the Triton kernel, compiled, on ORT's compute stream and
ORT's device buffers. Needs a CUDA GPU and onnxruntime-gpu (run with ONNXFUSE_TEST_GPU=1);
skipped cleanly elsewhere."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto

from onnxfuse.kernels import ort as plugin
from onnxfuse.kernels.ort import bridge
from onnxfuse.numerics import compare, tolerance
from onnxfuse.pipeline import sessions
from tests.helpers import Exports
from tests.kernels.plugin_models import op_model

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True, scope="module")
def _cuda_provider() -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime has no CUDAExecutionProvider here (install onnxruntime-gpu)")


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_cuda_plugin_matches_the_original_graph(exports: Exports, dtype: str) -> None:
    src, fused = exports.fused_pair("tiny", "full", dtype)
    feeds, _ = sessions.make_inputs(sessions.model_info(src), 2, 16)
    want = sessions.session(src, device="cuda").run(None, feeds)[0]
    sess = sessions.session(fused, device="cuda", options=plugin.session_options(device="cuda"))
    before = bridge.calls()
    got = sess.run(None, feeds)[0]
    assert bridge.calls() - before == 2  # both fused nodes ran the Triton kernel
    limit = tolerance(dtype, "tf32" if dtype == "float32" else "ieee")  # type: ignore[arg-type]
    c = compare("logits", got, want, limit=limit)
    assert c.passed, c.detail
    for _ in range(20):  # stream ordering: the same answer every time
        assert np.array_equal(sess.run(None, feeds)[0], got)


def test_cuda_plugin_bf16_op_matches_the_reference() -> None:
    import ml_dtypes
    import onnxruntime as ort
    import torch

    from onnxfuse.kernels.triton.reference import fused_gated_mlp_reference

    model, arrays = op_model(TensorProto.BFLOAT16, 256, 704, "silu", False)
    sess = ort.InferenceSession(model.SerializeToString(), plugin.session_options(device="cuda"),
                                providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((33, 256)).astype(np.float32)
    xq = x.astype(ml_dtypes.bfloat16)
    binding = sess.io_binding()
    binding.bind_ortvalue_input("X", ort.OrtValue.ortvalue_from_numpy_with_onnx_type(xq.view(np.uint16), TensorProto.BFLOAT16))
    binding.bind_output("Y", "cpu")
    sess.run_with_iobinding(binding)
    y = binding.get_outputs()[0].numpy().view(ml_dtypes.bfloat16).astype(np.float32)
    q = [torch.from_numpy(a.astype(ml_dtypes.bfloat16).astype(np.float32)) for a in arrays]
    ref = fused_gated_mlp_reference(torch.from_numpy(xq.astype(np.float32)), *q, compute_dtype=torch.float64)
    assert compare("Y", y, ref.numpy(), limit=tolerance("bfloat16")).passed


def test_cuda_raising_kernel_is_an_ort_error_and_the_next_run_works(exports: Exports) -> None:
    src, fused = exports.fused_pair("tiny", "mlp")
    feeds, _ = sessions.make_inputs(sessions.model_info(src), 1, 4)
    sess = sessions.session(fused, device="cuda", options=plugin.session_options(device="cuda"))

    def boom(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise ValueError("cuda boom")

    bridge.set_kernel(boom)
    try:
        with pytest.raises(Exception, match="ValueError: cuda boom"):
            sess.run(None, feeds)
    finally:
        bridge.set_kernel(None)
    assert np.isfinite(sess.run(None, feeds)[0]).all()
