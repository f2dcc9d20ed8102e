"""The Triton kernels against the float64 reference, under the interpreter on CPU (or
compiled, on a GPU): random odd shapes, poisoned outputs, NaN/Inf, determinism, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from onnxfuse.errors import KernelError
from onnxfuse.kernels.gated_mlp import fused_gated_mlp
from onnxfuse.kernels.reference import fused_gated_mlp_reference
from onnxfuse.numerics import compare, tolerance
from tests.conftest import has_cuda

DEVICE = "cuda" if has_cuda() else "cpu"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
CASES_PER_DTYPE = {"float32": 200, "float16": 200, "bfloat16": 60}
CHUNK = 25


def _problem(rng: np.random.Generator, dtype: torch.dtype) -> dict[str, object]:
    lead = tuple(int(v) for v in rng.integers(1, 6, size=rng.integers(1, 4)))
    d, d_ff = int(rng.integers(1, 49)), int(rng.integers(1, 81))
    gen = torch.Generator().manual_seed(int(rng.integers(1 << 31)))

    def t(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen) * scale).to(dtype).to(DEVICE)

    biased = bool(rng.integers(2))
    return dict(
        x=t(*lead, d), w_gate=t(d, d_ff, scale=d**-0.5), w_up=t(d, d_ff, scale=d**-0.5),
        w_down=t(d_ff, d, scale=d_ff**-0.5),
        b_gate=t(d_ff, scale=0.1) if biased else None, b_up=t(d_ff, scale=0.1) if biased else None,
        b_down=t(d, scale=0.1) if biased else None,
        activation=str(rng.choice(["silu", "gelu", "gelu_tanh"])),
    )


def _run(p: dict[str, object], **kw: object) -> torch.Tensor:
    kw.setdefault("autotune", False)  # fixed configs (on a GPU: each class's first)
    return fused_gated_mlp(p["x"], p["w_gate"], p["w_up"], p["w_down"], p["b_gate"], p["b_up"],  # type: ignore[arg-type]
                           p["b_down"], activation=p["activation"], **kw)  # type: ignore[arg-type]


def _reference(p: dict[str, object]) -> torch.Tensor:
    return fused_gated_mlp_reference(
        *(v.cpu() if isinstance(v, torch.Tensor) else v for v in  # type: ignore[arg-type]
          (p["x"], p["w_gate"], p["w_up"], p["w_down"], p["b_gate"], p["b_up"], p["b_down"])),
        activation=p["activation"], compute_dtype=torch.float64)  # type: ignore[arg-type]


def _limit(dtype_name: str) -> float:
    # On CPU (interpreter) float32 is exact IEEE; on a GPU the default precision is TF32.
    return tolerance(dtype_name, "tf32" if DEVICE == "cuda" else "ieee")  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype_name,chunk", [
    (name, c) for name, n in CASES_PER_DTYPE.items() for c in range(n // CHUNK)])
def test_random_odd_shapes_match_float64_reference(dtype_name: str, chunk: int) -> None:
    dtype = DTYPES[dtype_name]
    rng = np.random.default_rng(1000 * list(DTYPES).index(dtype_name) + chunk)
    for case in range(CHUNK):
        p = _problem(rng, dtype)
        x = p["x"]
        poisoned = torch.full_like(x, float("nan"))  # type: ignore[arg-type]
        y = _run(p, out=poisoned)
        assert y.data_ptr() == poisoned.data_ptr()
        assert not torch.isnan(y).any(), f"case {case}: unwritten (NaN-poisoned) elements remain"
        ref = _reference(p)
        c = compare("y", y.float().cpu().numpy(), ref.numpy(), limit=_limit(dtype_name))
        assert c.passed, f"case {case} {tuple(x.shape)} {p['w_gate'].shape} {p['activation']}: {c.detail}"  # type: ignore[union-attr]
        if case % 5 == 0:
            assert torch.equal(_run(p), y), "two runs differ: the kernel is not deterministic"


@pytest.mark.parametrize("dtype_name", ["float32", "float16"])
def test_nan_and_inf_propagate_as_in_the_reference(dtype_name: str) -> None:
    p = _problem(np.random.default_rng(7), DTYPES[dtype_name])
    x = p["x"].clone()  # type: ignore[union-attr]
    x.view(-1)[0] = float("nan")
    x.view(-1)[-1] = float("inf")
    p["x"] = x
    c = compare("y", _run(p).float().cpu().numpy(), _reference(p).numpy(), limit=_limit(dtype_name))
    assert c.nan_mismatches == 0 and c.inf_mismatches == 0, c.detail
    assert np.isnan(_reference(p).numpy()).any()


def test_non_contiguous_input_and_output() -> None:
    p = _problem(np.random.default_rng(3), torch.float32)
    d = p["w_gate"].shape[0]  # type: ignore[union-attr]
    base = torch.randn(d, 7, 3, device=DEVICE)
    p["x"] = base.permute(2, 1, 0)  # [3, 7, d], not contiguous
    out = torch.full((d, 7, 3), float("nan"), device=DEVICE).permute(2, 1, 0)
    y = _run(p, out=out)
    assert compare("y", y.cpu().numpy(), _reference(p).numpy(), limit=_limit("float32")).passed


def test_empty_batch() -> None:
    p = _problem(np.random.default_rng(4), torch.float32)
    p["x"] = p["x"][..., :0, :]  # type: ignore[index]
    assert _run(p).shape == p["x"].shape  # type: ignore[union-attr]


@pytest.mark.parametrize("change,match", [
    (dict(activation="relu"), "unknown activation 'relu'"),
    (dict(precision="fp8"), "unknown precision 'fp8'"),
    (dict(x=torch.ones(2, 5, dtype=torch.float64)), "dtype torch.float64"),
    (dict(w_up=torch.ones(4, 7)), "weight shapes disagree"),
    (dict(w_down=torch.ones(6, 4, dtype=torch.float16)), "must match"),
    (dict(x=torch.ones(2, 3)), "last dim is 3"),
    (dict(out=torch.empty(2, 4, dtype=torch.float16)), "out must be"),
    (dict(b_gate=torch.ones(6)), "all three biases"),
])
def test_bad_inputs_raise_kernel_errors_naming_the_value(change: dict[str, object], match: str) -> None:
    args: dict[str, object] = dict(x=torch.ones(2, 4), w_gate=torch.ones(4, 6), w_up=torch.ones(4, 6),
                                   w_down=torch.ones(6, 4), b_gate=None, b_up=None, b_down=None,
                                   activation="silu", precision="tf32", out=None)
    args.update(change)
    with pytest.raises(KernelError, match=match):
        fused_gated_mlp(args["x"], args["w_gate"], args["w_up"], args["w_down"], args["b_gate"],  # type: ignore[arg-type]
                        args["b_up"], args["b_down"], activation=args["activation"],  # type: ignore[arg-type]
                        precision=args["precision"], out=args["out"])  # type: ignore[arg-type]


@pytest.mark.parametrize("split_k", [2, 3, 8])
@pytest.mark.parametrize("dtype_name", ["float32", "float16", "bfloat16"])
def test_split_k_down_projection_matches_and_is_deterministic(dtype_name: str, split_k: int) -> None:
    from onnxfuse.kernels.configs import INTERPRETER_CONFIG

    down = __import__("dataclasses").replace(INTERPRETER_CONFIG, split_k=split_k)
    rng = np.random.default_rng(split_k)
    for _ in range(4):
        p = _problem(rng, DTYPES[dtype_name])
        p["w_gate"], p["w_up"], p["w_down"] = (  # decode-like: few rows, long K for the down GEMM
            t.repeat(1, 2) if i < 2 else t.repeat(2, 1)
            for i, t in enumerate((p["w_gate"], p["w_up"], p["w_down"])))  # type: ignore[union-attr]
        for name in ("b_gate", "b_up"):
            if p[name] is not None:
                p[name] = p[name].repeat(2)  # type: ignore[union-attr]
        y = _run(p, down_config=down, out=torch.full_like(p["x"], float("nan")))  # type: ignore[arg-type]
        c = compare("y", y.float().cpu().numpy(), _reference(p).numpy(), limit=_limit(dtype_name))
        assert c.passed, c.detail
        assert torch.equal(_run(p, down_config=down), y)


@pytest.mark.parametrize("rows", [3, 40])
def test_wide_interpreter_tiles_match_the_reference(rows: int) -> None:
    """Dims from 512 up use 128-wide tiles under the interpreter (16 rows for few tokens):
    partial tiles in every direction, and the output poisoned first."""
    from onnxfuse.kernels.configs import interpreter_config

    assert interpreter_config(rows, 600, 520).block_k == 128
    assert interpreter_config(rows, 600, 520).block_m == (16 if rows <= 16 else 32)
    assert interpreter_config(rows, 80, 48) == interpreter_config(rows, 80, 48).__class__(block_m=32, block_n=32, block_k=32)
    gen = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, 520, generator=gen).to(DEVICE)
    w = [(torch.randn(*s, generator=gen) * 0.05).to(DEVICE) for s in ((520, 600), (520, 600), (600, 520))]
    y = fused_gated_mlp(x, *w, precision="ieee", out=torch.full_like(x, float("nan")))
    ref = fused_gated_mlp_reference(x.cpu(), *(t.cpu() for t in w), compute_dtype=torch.float64)
    c = compare("y", y.cpu().numpy(), ref.numpy(), limit=tolerance("float32"))
    assert c.passed, c.detail
