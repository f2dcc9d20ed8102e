"""Small models for the plugin tests: one-node FusedGatedMLP graphs, and runs in ORT with the plugin
(exported + fused pairs: the ``exports`` fixture, tests/helpers.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxfuse.pipeline import sessions


def run_model(path: Path, feeds: dict[str, np.ndarray], options: object = None) -> np.ndarray:
    return sessions.session(path, options=options).run(None, feeds)[0]


def op_model(dtype: int, d: int, dff: int, activation: str, biased: bool) -> tuple[onnx.ModelProto, list[np.ndarray]]:
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


def run_op(model: onnx.ModelProto, x: np.ndarray, dtype: int, options: object) -> np.ndarray:
    """Run a one-node model on ``x`` (float32, cast to ``dtype``); the output as float32."""
    import ml_dtypes
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    np_dtype = {TensorProto.FLOAT: np.float32, TensorProto.FLOAT16: np.float16,
                TensorProto.BFLOAT16: ml_dtypes.bfloat16}[dtype]
    xq = x.astype(np_dtype)
    if dtype != TensorProto.BFLOAT16:
        return sess.run(None, {"X": xq})[0].astype(np.float32)
    # numpy has no bfloat16 for ORT: bind raw 16-bit buffers typed as BFLOAT16.
    xv = ort.OrtValue.ortvalue_from_numpy_with_onnx_type(xq.view(np.uint16), dtype)
    out = np.zeros(x.shape, np.uint16)
    binding = sess.io_binding()
    binding.bind_ortvalue_input("X", xv)
    binding.bind_ortvalue_output("Y", ort.OrtValue.ortvalue_from_numpy_with_onnx_type(out, dtype))
    sess.run_with_iobinding(binding)
    return out.view(ml_dtypes.bfloat16).astype(np.float32)
