"""``numerics.matmul64``: a float64 product read one block of the weight at a time (the
rewrite's semantic check and the registry's reference use it on 7B-sized weights)."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest

from onnxfuse import numerics


@pytest.mark.parametrize("dtype", [np.float32, np.float16, ml_dtypes.bfloat16])
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("block", [1, 7, 1 << 20])  # one element, odd blocks, one block
def test_matmul64_is_the_float64_product(dtype: type, transposed: bool, block: int,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(numerics, "_BLOCK", block)
    rng = np.random.default_rng(0)
    stored = rng.standard_normal((13, 11) if transposed else (11, 13)).astype(dtype)
    w = stored.T if transposed else stored  # a transposed view is read by whole columns
    x = rng.standard_normal((2, 3, 11))
    expected = x @ w.astype(np.float64)
    np.testing.assert_allclose(numerics.matmul64(x, w), expected, rtol=1e-13, atol=1e-13)


def test_matmul64_refuses_shapes_that_do_not_chain() -> None:
    with pytest.raises(ValueError, match=r"cannot multiply shapes \(2, 5\) and \(4, 3\)"):
        numerics.matmul64(np.ones((2, 5)), np.ones((4, 3)))


def test_erf64_is_math_erf() -> None:
    x = np.array([[-3.0, -0.5, 0.0], [1e-9, 0.7, 6.0]], dtype=np.float32)
    expected = np.array([[math.erf(float(v)) for v in row] for row in x])
    np.testing.assert_array_equal(numerics.erf64(x), expected)
