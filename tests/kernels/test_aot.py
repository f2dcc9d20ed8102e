"""The kernels compile ahead of time for sm_80 and sm_90 on a machine without a GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

_SCRIPT = """
import dataclasses, json, sys
from onnxfuse.kernels.aot import compile_gated_mlp
rows = [dataclasses.asdict(compile_gated_mlp(int(sys.argv[1]), dtype, gated=gated, config=config))
        for dtype in ("bfloat16", "float16", "float32")
        for config, gated in (("prefill", True), ("prefill", False), ("decode", True),
                              ("decode_down", False))]
print(json.dumps(rows))
"""


@pytest.mark.parametrize("capability", [80, 90])
def test_kernels_compile_for_cuda_targets_without_a_gpu(capability: int) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, str(capability)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(rows) == 12
    for row in rows:
        assert row["target"] == f"cuda:{capability}"
        assert row["cubin_bytes"] > 10_000
        # Fits the smaller per-block shared memory of the targets (sm_80: 163 KiB; this
        # test caught a 216 KiB float32 decode config once).
        assert 0 < row["shared_bytes"] <= 163 * 1024, row


def test_aot_refuses_interpreter_mode() -> None:
    from onnxfuse.errors import KernelError
    from onnxfuse.kernels.aot import compile_gated_mlp

    if os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        pytest.skip("only meaningful in interpreter mode")
    with pytest.raises(KernelError, match="TRITON_INTERPRET"):
        compile_gated_mlp(90)
