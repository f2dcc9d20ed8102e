"""Numeric comparison and the one tolerance table of the project.

Every parity check in onnxfuse (export verification, fused vs unfused graphs, kernels vs
their reference) measures the same figures with :func:`compare` and judges relative L2
(``‖actual − expected‖ / ‖expected‖``) against :func:`tolerance`.
"""

from __future__ import annotations

import dataclasses
import math
import mmap
from typing import Literal

import numpy as np

__all__ = [
    "DTYPES",
    "Comparison",
    "DType",
    "Precision",
    "compare",
    "erf64",
    "format_mismatches",
    "matmul64",
    "matmul_nbits64",
    "to_float64",
    "tolerance",
]

DType = Literal["float32", "float16", "bfloat16"]
Precision = Literal["ieee", "tf32", "int8"]
DTYPES: tuple[DType, ...] = ("float32", "float16", "bfloat16")

# Ceilings on relative L2, one per (dtype, precision mode). See DESIGN.md "Parity".
_REL_L2: dict[tuple[DType, Precision], tuple[float, str]] = {
    ("float32", "ieee"): (1e-5, "reassociation only: float32 sums in another order"),
    ("float32", "tf32"): (1e-3, "TF32 keeps a 10-bit mantissa in the GEMM operands (GPU)"),
    ("float16", "ieee"): (5e-3, "float16 storage and rounding of intermediates (11-bit mantissa)"),
    ("float16", "tf32"): (5e-3, "float16 storage and rounding of intermediates (11-bit mantissa)"),
    ("bfloat16", "ieee"): (2e-2, "bfloat16 storage and rounding of intermediates (8-bit mantissa)"),
    ("bfloat16", "tf32"): (2e-2, "bfloat16 storage and rounding of intermediates (8-bit mantissa)"),
    # int4/int8 weights enter no row: a kernel dequantizes them exactly as the reference does.
    # What moves results is how ORT's MatMulNBits computes at accuracy_level 4: each GEMM's
    # input (X, then H for down) quantized to int8 per block of K (scale max|x|/127, rounding
    # error uniform in +-scale/2). Measured vs the float64 reference on Gaussian X, blocks
    # 16-128, 4 and 8 bits, d 64-512: rel L2 7.5e-3 to 1.9e-2 (grows with the block: a
    # longer block has a larger max); H of the down projection is heavier-tailed still.
    # Ceiling 5e-2, 2.6x the worst measured: a wrong nibble, zero point or scale gives O(1).
    **{(dtype, "int8"): (5e-2, "int8 inputs: MatMulNBits at accuracy_level 4 quantizes each GEMM's input "
                               "to int8 per block of K") for dtype in ("float32", "float16", "bfloat16")},
}


def tolerance(dtype: DType, precision: Precision = "ieee") -> float:
    """The relative-L2 ceiling for results computed in ``dtype`` under ``precision``."""
    try:
        return _REL_L2[(dtype, precision)][0]
    except KeyError:
        raise ValueError(
            f"no tolerance for dtype={dtype!r} precision={precision!r}; "
            f"dtypes are {', '.join(DTYPES)} and precisions ieee, tf32, int8"
        ) from None


def to_float64(array: object) -> np.ndarray:
    """Any numpy-convertible array (bfloat16 from ml_dtypes included) as float64."""
    arr = np.asarray(array)
    if arr.dtype.kind not in "fiub" and arr.dtype.name != "bfloat16":
        raise TypeError(f"cannot compare an array of dtype {arr.dtype}")
    return arr.astype(np.float64)


_BLOCK = 1 << 20
"""Elements of a weight :func:`matmul64` takes to float64 at a time (8 MiB)."""
_DROP_BYTES = 64 << 20
"""A mapped weight at least this large leaves no pages resident after :func:`matmul64`;
smaller ones stay (SmolLM2's 3.4 MiB weights, read twice by the rewrite's check, cost 0.1 s
more when dropped after the first read)."""


def matmul64(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``x @ w`` in float64 for a 2-D ``w`` of any float type, one block of ``w`` at a time
    (rows, or columns of a transposed view: whichever is contiguous), so a float64 copy of a
    whole weight (4x a bfloat16 one) is never made: checking a 7B model's layer holds 8 MiB
    more, not 360 MiB. A large ``w`` read from a memory map leaves none of its pages resident.

    Raises:
        ValueError: ``w`` is not 2-D or its rows do not match ``x``'s last dim.
    """
    if w.ndim != 2 or x.ndim < 1 or x.shape[-1] != w.shape[0]:
        raise ValueError(f"cannot multiply shapes {tuple(x.shape)} and {tuple(w.shape)}")
    x = to_float64(x)
    # einsum, not BLAS: a product of a few rows is memory-bound, and OpenBLAS's threads made
    # it 40x slower on 2 busy cores (SmolLM2's [4, 576] x [576, 1536]: 24 ms against 0.6 ms).
    if w.flags.f_contiguous and not w.flags.c_contiguous:  # a transposed view: whole columns
        out = np.empty((*x.shape[:-1], w.shape[1]))
        cols = max(1, _BLOCK // max(1, w.shape[0]))
        for n in range(0, w.shape[1], cols):
            out[..., n:n + cols] = np.einsum("...k,kn->...n", x, to_float64(w[:, n:n + cols]))
    else:
        out = np.zeros((*x.shape[:-1], w.shape[1]))
        rows = max(1, _BLOCK // max(1, w.shape[1]))
        for k in range(0, w.shape[0], rows):
            out += np.einsum("...k,kn->...n", x[..., k:k + rows], to_float64(w[k:k + rows]))
    if w.nbytes >= _DROP_BYTES:
        _drop_mapped_pages(w)
    return out


def _unpack(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """The first ``count`` ``bits``-bit values of each row of the uint8 array ``packed``
    ([rows, bytes]), low bits first in each byte (MatMulNBits' order), as int64."""
    per_byte = 8 // bits
    shifts = np.arange(per_byte, dtype=np.uint8) * bits
    values = (packed[..., None] >> shifts) & np.uint8((1 << bits) - 1)
    return values.reshape(packed.shape[0], -1)[:, :count].astype(np.int64)


def matmul_nbits64(x: np.ndarray, q: np.ndarray, scales: np.ndarray, zero_points: np.ndarray | None, *,
                   k: int, n: int, bits: int, block_size: int) -> np.ndarray:
    """``x @ W`` in float64, ``W`` [k, n] dequantized as ORT's ``com.microsoft::MatMulNBits``
    defines it: ``q`` holds, for each of the n columns, ceil(k / block_size) blocks of
    ``block_size`` values along k (the last block zero-padded), ``bits`` each, packed low bits
    first into uint8; ``scales`` one per column and block; ``zero_points`` (uint8) the same
    count of ``bits``-bit values, packed the same way, ceil(blocks * bits / 8) bytes per column
    (``None``: 2^(bits - 1) everywhere); ``W[kk, j] = (value - zero_point) * scale`` of the
    block of ``kk``. Dequantizes a few columns at a time (:data:`_BLOCK` elements).

    Raises:
        ValueError: a shape that does not hold such a weight.
    """
    if bits not in (2, 4, 8) or block_size < 1 or block_size * bits % 8:
        raise ValueError(f"bits={bits}, block_size={block_size}: MatMulNBits packs 2, 4 or 8 bits in whole bytes")
    blocks = -(-k // block_size)
    zp_bytes = -(-blocks * bits // 8)
    q = np.asarray(q)
    if q.dtype != np.uint8 or q.shape != (n, blocks, block_size * bits // 8):
        raise ValueError(f"packed weight {q.dtype} {tuple(q.shape)}, need uint8 {(n, blocks, block_size * bits // 8)} "
                         f"for K={k}, N={n}, bits={bits}, block_size={block_size}")
    s = to_float64(scales)
    if s.size != n * blocks:
        raise ValueError(f"scales of {s.size} values, need {n * blocks} (N x blocks)")
    s = s.reshape(n, blocks)
    z = None if zero_points is None else np.asarray(zero_points)
    if z is not None and (z.dtype != np.uint8 or z.size != n * zp_bytes):
        raise ValueError(f"zero points {z.dtype} of {z.size} values, need uint8 of {n * zp_bytes} (N x {zp_bytes} bytes)")
    x = to_float64(x)
    if x.shape[-1] != k:
        raise ValueError(f"cannot multiply shapes {tuple(x.shape)} and ({k}, {n})")
    out = np.empty((*x.shape[:-1], n))
    cols = max(1, _BLOCK // max(1, blocks * block_size))
    for j in range(0, n, cols):
        values = _unpack(q[j:j + cols].reshape(-1, q.shape[2]), bits, block_size).reshape(-1, blocks, block_size)
        zero = (_unpack(z.reshape(n, zp_bytes)[j:j + cols], bits, blocks) if z is not None
                else np.full((values.shape[0], blocks), 1 << (bits - 1), dtype=np.int64))
        w = ((values - zero[..., None]) * s[j:j + cols, :, None]).reshape(values.shape[0], -1)[:, :k]
        out[..., j:j + cols] = np.einsum("...k,nk->...n", x, w)
    return out


def _drop_mapped_pages(array: np.ndarray) -> None:
    """Tell the kernel this process no longer needs the pages of the memory map ``array``
    views, if any (they leave its resident set; a later read maps them again from the page
    cache). Three 224 MiB weights checked one after the other otherwise stay resident
    together: a Gemm-form MLP's rewrite peaked at 805 MiB against a bound of 848."""
    base: object = array
    while isinstance(base, np.ndarray | memoryview):
        base = base.base if isinstance(base, np.ndarray) else base.obj
    if isinstance(base, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
        base.madvise(mmap.MADV_DONTNEED)


_ERF = np.frompyfunc(math.erf, 1, 1)


def erf64(x: np.ndarray) -> np.ndarray:
    """The error function, elementwise, in float64 (numpy has none; ``math.erf`` is exact to
    the last bit)."""
    return np.asarray(_ERF(to_float64(x)), dtype=np.float64)


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Figures of one actual-vs-expected comparison (both taken to float64)."""

    name: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float
    rel_l2: float
    cosine: float
    nan_mismatches: int
    inf_mismatches: int
    limit: float
    passed: bool
    detail: str = ""

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def compare(
    name: str, actual: object, expected: object, *, limit: float, first: int = 3
) -> Comparison:
    """Compare ``actual`` to ``expected``; pass when shapes agree, NaN/Inf sit at the same
    places with the same signs, and the relative L2 of the finite part is ``<= limit``."""
    a, e = to_float64(actual), to_float64(expected)
    if a.shape != e.shape:
        return Comparison(
            name, tuple(e.shape), float("inf"), float("inf"), float("inf"), 0.0, 0, 0, limit,
            False, f"shape {tuple(a.shape)} != expected {tuple(e.shape)}",
        )
    nan_mis = int(np.count_nonzero(np.isnan(a) != np.isnan(e)))
    inf_mis = int(np.count_nonzero(np.isinf(a) != np.isinf(e)))
    both_inf = np.isinf(a) & np.isinf(e)
    inf_mis += int(np.count_nonzero(both_inf & (np.sign(a) != np.sign(e))))
    finite = np.isfinite(a) & np.isfinite(e)
    af, ef = a[finite], e[finite]
    diff = np.abs(af - ef)
    max_abs = float(diff.max()) if diff.size else 0.0
    max_rel = float((diff / np.maximum(np.abs(ef), np.finfo(np.float64).tiny)).max()) if diff.size else 0.0
    ref_norm = float(np.linalg.norm(ef))
    diff_norm = float(np.linalg.norm(af - ef))
    rel_l2 = diff_norm / ref_norm if ref_norm > 0 else (0.0 if diff_norm == 0 else float("inf"))
    a_norm = float(np.linalg.norm(af))
    cosine = float(np.dot(af, ef) / (a_norm * ref_norm)) if a_norm > 0 and ref_norm > 0 else float(a_norm == ref_norm)
    passed = nan_mis == 0 and inf_mis == 0 and rel_l2 <= limit
    detail = "" if passed else format_mismatches(a, e, limit=limit, first=first)
    return Comparison(
        name, tuple(e.shape), max_abs, max_rel, rel_l2, cosine, nan_mis, inf_mis, limit, passed,
        detail,
    )


def format_mismatches(actual: np.ndarray, expected: np.ndarray, *, limit: float, first: int = 3) -> str:
    """One line: rel L2 vs limit, NaN/Inf disagreement, and the worst elements with both values."""
    a, e = to_float64(actual), to_float64(expected)
    parts = [f"shape {tuple(e.shape)}"]
    nan_mis = np.isnan(a) != np.isnan(e)
    inf_mis = np.isinf(a) != np.isinf(e)
    if nan_mis.any():
        parts.append(f"NaN differs at {int(nan_mis.sum())} elements")
    if inf_mis.any():
        parts.append(f"Inf differs at {int(inf_mis.sum())} elements")
    finite = np.isfinite(a) & np.isfinite(e)
    with np.errstate(invalid="ignore"):
        diff = np.where(finite, np.abs(a - e), 0.0)
    if diff.size:
        ref = np.linalg.norm(np.where(finite, e, 0.0))
        rel = np.linalg.norm(diff) / ref if ref > 0 else float("inf")
        parts.append(f"rel L2 {rel:.3g} > limit {limit:.3g}" if rel > limit else f"rel L2 {rel:.3g}")
        worst = np.argsort(diff, axis=None)[::-1][:first]
        for flat in worst:
            idx = np.unravel_index(int(flat), e.shape)
            parts.append(f"at {tuple(int(i) for i in idx)}: {a[idx]:.6g} vs {e[idx]:.6g}")
    return "; ".join(parts)
