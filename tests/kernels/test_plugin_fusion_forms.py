"""Every hand-built fusion form runs through the plugin's kernels (the native CPU kernel and the
Triton bridge), not its function body, against the original graph within DESIGN.md's table."""

from __future__ import annotations

from typing import Any

import onnx_ir as ir
import pytest
from onnx import TensorProto

from onnxfuse.graph_rewrites import fuse_model
from onnxfuse.kernels import ort as plugin
from onnxfuse.numerics import compare, tolerance
from onnxfuse.pipeline import sessions
from tests.graph_rewrites.graphs import feeds, gated_mlp
from tests.graph_rewrites.test_fusion_forms import FUSING
from tests.graph_rewrites.test_properties import FUSING_FORMS
from tests.helpers import ort_run

_DTYPES = {TensorProto.FLOAT: "float32", TensorProto.FLOAT16: "float16"}
# The shapes are graphs.py's (d=8, d_ff=12) at batch 2 x seq 5: small enough for the Triton
# interpreter (about 0.1 s a launch).
_KERNELS: dict[str, dict[str, Any]] = {"plugin cpu matmul": dict(cpu_kernel="matmul"), "triton (interpreter)": dict(backend="triton")}



def test_every_fusing_form_is_in_the_list() -> None:
    assert set(FUSING_FORMS) <= {kw["form"] for kw in FUSING}  # type: ignore[index]


@pytest.mark.parametrize("kernel", [pytest.param(k, marks=[pytest.mark.interpreter] if "interpreter" in k else [])
                                    for k in _KERNELS])
@pytest.mark.parametrize("kw", FUSING, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
def test_the_plugin_kernel_runs_every_form_within_tolerance(kw: dict[str, Any], kernel: str) -> None:
    original = gated_mlp(**kw)
    model = ir.from_proto(original)
    fused_nodes, _ = fuse_model(model)
    assert len(fused_nodes) == kw.get("layers", 1)
    fused = ir.to_proto(model)
    settings = _KERNELS[kernel]
    impl = sessions.implementation(settings.get("backend", "default"), "cpu", settings.get("cpu_kernel", "off"))
    assert impl.name == kernel
    inputs = feeds(original)
    want = ort_run(original, inputs)
    before = impl.runs()
    got = ort_run(fused, inputs, plugin.session_options(**settings))
    assert impl.runs() - before == len(fused_nodes)  # each fused node ran the kernel once
    limit = tolerance(_DTYPES[kw.get("dtype", TensorProto.FLOAT)])  # type: ignore[arg-type]
    for name, g, w in zip([o.name for o in original.graph.output], got, want, strict=True):
        c = compare(name, g, w, limit=limit)
        assert c.passed, c.detail
