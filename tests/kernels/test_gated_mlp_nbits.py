"""The quantized gated MLP's Triton kernel (issue 16, first version) against the registry's
float64 reference, under the interpreter on CPU: random odd shapes, K padded and not, with
and without zero points and biases, 4 and 8 bits, NaN-poisoned outputs, bitwise reruns."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from onnxfuse import ops
from onnxfuse.errors import KernelError
from onnxfuse.kernels.triton.gated_mlp_nbits import fused_gated_mlp_nbits
from onnxfuse.numerics import compare, tolerance
from tests.conftest import has_cuda

DEVICE = "cuda" if has_cuda() else "cpu"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
SPEC = ops.FUSED_GATED_MLP_NBITS


def _problem(rng: np.random.Generator, dtype: torch.dtype) -> tuple[list[torch.Tensor | None], dict[str, object]]:
    bits = int(rng.choice([4, 8]))
    block_size = int(rng.choice([16, 32]))
    d = block_size * int(rng.integers(1, 3)) + int(rng.choice([0, 0, 5]))  # mostly whole blocks
    d_ff = int(rng.integers(1, 40)) | 1
    rows = int(rng.integers(1, 8)) | 1
    zero_points, biased = bool(rng.integers(2)), bool(rng.integers(2))

    def packed(k: int, n: int) -> list[torch.Tensor | None]:
        blocks = -(-k // block_size)
        q = torch.from_numpy(rng.integers(0, 256, (n, blocks, block_size * bits // 8), dtype=np.uint8))
        s = torch.from_numpy(rng.standard_normal(n * blocks) * (0.3 / (k**0.5 * (1 << (bits - 2))))).to(dtype)
        z = torch.from_numpy(rng.integers(0, 256, n * -(-blocks * bits // 8), dtype=np.uint8)) if zero_points else None
        return [q, s, z]

    gate, up, down = packed(d, d_ff), packed(d, d_ff), packed(d_ff, d)
    bias = [torch.from_numpy(rng.standard_normal(n) * 0.1).to(dtype) if biased else None for n in (d_ff, d_ff, d)]
    x = torch.from_numpy(rng.standard_normal((rows, d))).to(dtype)
    args = [x, gate[0], gate[1], up[0], up[1], down[0], down[1], gate[2], up[2], down[2], *bias]
    attributes = dict(activation=str(rng.choice(["silu", "gelu", "gelu_tanh"])), bits=bits, block_size=block_size)
    return [a.to(DEVICE) if a is not None else None for a in args], attributes


def _reference(args: list[torch.Tensor | None], attributes: dict[str, object]) -> np.ndarray:
    assert SPEC.reference is not None
    arrays = [a.cpu().float().numpy() if a is not None and a.is_floating_point() else
              a.cpu().numpy() if a is not None else None for a in args]
    (y,) = SPEC.reference(*arrays, **attributes)
    return np.asarray(y)


@pytest.mark.parametrize("dtype_name", list(DTYPES))
def test_random_odd_shapes_match_the_float64_reference(dtype_name: str) -> None:
    rng = np.random.default_rng(16 + list(DTYPES).index(dtype_name))
    for case in range(12):
        args, attributes = _problem(rng, DTYPES[dtype_name])
        x = args[0]
        assert x is not None
        poisoned = torch.full_like(x, float("nan"))
        y = fused_gated_mlp_nbits(*args, **attributes, out=poisoned)  # type: ignore[arg-type]
        assert y.data_ptr() == poisoned.data_ptr() and not torch.isnan(y).any(), f"case {case}: unwritten elements"
        c = compare("y", y.float().cpu().numpy(), _reference(args, attributes), limit=tolerance(dtype_name))  # type: ignore[arg-type]
        assert c.passed, f"case {case} {tuple(x.shape)} {attributes}: {c.detail}"
        assert torch.equal(fused_gated_mlp_nbits(*args, **attributes), y), "two runs differ"  # type: ignore[arg-type]


def test_bad_operands_are_refused_with_the_value() -> None:
    args, attributes = _problem(np.random.default_rng(0), torch.float32)
    with pytest.raises(KernelError, match="block_size 48 is not one of"):
        fused_gated_mlp_nbits(*args, **{**attributes, "block_size": 48})  # type: ignore[arg-type]
    bad = list(args)
    bad[1] = bad[1].float()  # type: ignore[union-attr]
    with pytest.raises(KernelError, match=r"Q_gate must be contiguous torch\.uint8"):
        fused_gated_mlp_nbits(*bad, **attributes)  # type: ignore[arg-type]
