from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from onnxfuse.numerics import compare, tolerance


def test_tolerance_table() -> None:
    assert tolerance("float32") == 1e-5
    assert tolerance("float32", "tf32") == 1e-3
    assert tolerance("float16") == 5e-3
    assert tolerance("bfloat16") == 2e-2
    with pytest.raises(ValueError, match="float64"):
        tolerance("float64")  # type: ignore[arg-type]


def test_identical_arrays_pass_with_zero_error() -> None:
    x = np.random.default_rng(0).standard_normal((3, 5))
    c = compare("y", x, x, limit=0.0)
    assert c.passed and c.rel_l2 == 0 and c.max_abs == 0 and c.cosine == pytest.approx(1.0)


def test_rel_l2_is_measured_and_judged() -> None:
    rng = np.random.default_rng(1)
    e = rng.standard_normal(1000)
    a = e + 1e-3 * rng.standard_normal(1000)
    c = compare("y", a, e, limit=1e-2)
    assert c.passed
    assert c.rel_l2 == pytest.approx(np.linalg.norm(a - e) / np.linalg.norm(e))
    bad = compare("y", a, e, limit=1e-4)
    assert not bad.passed and "rel L2" in bad.detail and "vs" in bad.detail


def test_nan_and_inf_must_agree() -> None:
    e = np.array([1.0, np.nan, np.inf, 2.0])
    assert compare("y", e.copy(), e, limit=0).passed
    assert not compare("y", np.array([1.0, 0.0, np.inf, 2.0]), e, limit=1).passed
    assert not compare("y", np.array([1.0, np.nan, -np.inf, 2.0]), e, limit=1).passed


def test_shape_mismatch_fails() -> None:
    c = compare("y", np.zeros((2, 3)), np.zeros((3, 2)), limit=1)
    assert not c.passed and "shape" in c.detail


def test_bfloat16_is_compared_by_value() -> None:
    x = np.array([1.5, -2.25], dtype=ml_dtypes.bfloat16)
    assert compare("y", x, np.array([1.5, -2.25]), limit=0).passed
