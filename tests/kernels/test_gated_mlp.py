"""The Triton kernels against the float64 reference, under the interpreter on CPU (or
compiled, on a GPU): random odd shapes, poisoned outputs, NaN/Inf, determinism, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from onnxfuse.errors import KernelError
from onnxfuse.kernels.triton.gated_mlp import fused_gated_mlp
from onnxfuse.kernels.triton.reference import fused_gated_mlp_reference
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
    want = _reference(p).numpy()
    # Rows with a NaN or Inf operand and rows without, so both halves are judged: NaN/Inf at the
    # same places, and the finite rows within the table (a kernel that poisoned every row, or
    # none, fails).
    assert np.isnan(want).any() and np.isfinite(want).all(axis=-1).any()
    c = compare("y", _run(p).float().cpu().numpy(), want, limit=_limit(dtype_name))
    assert c.nan_mismatches == 0 and c.inf_mismatches == 0, c.detail
    assert c.passed, c.detail


def test_non_contiguous_input_and_output() -> None:
    p = _problem(np.random.default_rng(3), torch.float32)
    d = p["w_gate"].shape[0]  # type: ignore[union-attr]
    base = torch.randn(d, 7, 3, device=DEVICE)
    p["x"] = base.permute(2, 1, 0)  # [3, 7, d], not contiguous
    out = torch.full((d, 7, 3), float("nan"), device=DEVICE).permute(2, 1, 0)
    y = _run(p, out=out)
    # Judged through ``out`` itself (NaN-poisoned), not the return value: a launcher that
    # ignored ``out`` and returned a fresh tensor would leave it NaN.
    assert y is out
    c = compare("y", out.cpu().numpy(), _reference(p).numpy(), limit=_limit("float32"))
    assert c.passed, c.detail


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
    from onnxfuse.kernels.triton.configs import INTERPRETER_CONFIG

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
    from onnxfuse.kernels.triton.configs import interpreter_config

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


def _strided(t: torch.Tensor, layout: str) -> torch.Tensor:
    """``t``'s values in a non-contiguous view: ``transposed`` (a transposed copy's ``.t()``,
    or the last two dims swapped), ``gaps`` (every other element of the last dim and rows
    spaced wider than they are long) or ``expanded`` (a stride-0 leading dim of 1 row, for X)."""
    if layout == "transposed":
        return t.transpose(-1, -2).contiguous().transpose(-1, -2)
    if layout == "gaps":
        big = torch.full((*t.shape[:-1], t.shape[-1] * 2 + 3), float("nan"), dtype=t.dtype, device=t.device)
        big[..., 1:2 * t.shape[-1] + 1:2] = t
        return big[..., 1:2 * t.shape[-1] + 1:2]
    assert layout == "expanded" and t.shape[0] == 1
    return t[0].expand(*t.shape)


@pytest.mark.parametrize("x_layout", ["transposed", "gaps", "expanded"])
@pytest.mark.parametrize("dtype_name", ["float32", "float16", "bfloat16"])
def test_every_operand_may_be_a_strided_view(dtype_name: str, x_layout: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """All seven operands and the output passed as non-contiguous views (transposed, slices
    with gaps, a stride-0 leading dim of X) give the float64 reference's result, and the
    weights reach the kernel as they are (their own memory and strides, no per-call copy)."""
    from onnxfuse.kernels.triton import gated_mlp

    dtype = DTYPES[dtype_name]
    d, d_ff = 13, 37
    gen = torch.Generator().manual_seed(len(dtype_name) + len(x_layout))

    def t(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen) * scale).to(dtype).to(DEVICE)

    x = t(1 if x_layout == "expanded" else 3, 5, d)
    if x_layout == "expanded":
        x = x.expand(3, 5, d)
    plain = dict(x=x.contiguous(), w_gate=t(d, d_ff, scale=d**-0.5), w_up=t(d, d_ff, scale=d**-0.5),
                 w_down=t(d_ff, d, scale=d_ff**-0.5), b_gate=t(d_ff, scale=0.1), b_up=t(d_ff, scale=0.1),
                 b_down=t(d, scale=0.1), activation="gelu_tanh")
    views = dict(plain, x=_strided(x[:1] if x_layout == "expanded" else x, x_layout).expand(x.shape),
                 w_gate=_strided(plain["w_gate"], "transposed"), w_up=_strided(plain["w_up"], "gaps"),  # type: ignore[arg-type]
                 w_down=_strided(_strided(plain["w_down"], "gaps"), "transposed"),  # type: ignore[arg-type]
                 b_gate=_strided(plain["b_gate"], "gaps"), b_up=_strided(plain["b_up"], "gaps"),  # type: ignore[arg-type]
                 b_down=_strided(plain["b_down"], "gaps"))  # type: ignore[arg-type]
    for name, view in views.items():
        if isinstance(view, torch.Tensor):
            assert not view.is_contiguous() and torch.equal(view, plain[name]), name  # type: ignore[arg-type]
    launched: list[tuple[object, ...]] = []
    real = gated_mlp._gemm_kernel

    class Spy:
        def __getitem__(self, grid: object) -> object:
            def launch(*args: object, **kw: object) -> object:
                launched.append(args)
                return real[grid](*args, **kw)
            return launch

    monkeypatch.setattr(gated_mlp, "_gemm_kernel", Spy())
    out = _strided(torch.full(x.shape, float("nan"), dtype=dtype, device=DEVICE), "gaps")
    y = _run(views, out=out)
    assert y is out and not torch.isnan(out).any()
    c = compare("y", y.float().cpu().numpy(), _reference(plain).numpy(), limit=_limit(dtype_name))
    assert c.passed, c.detail
    gate_up, down = launched
    for arg, w in ((gate_up[1], views["w_gate"]), (gate_up[2], views["w_up"]), (down[1], views["w_down"])):
        assert arg is w, "a weight was copied or re-laid out before the launch"


def test_activation_codes_and_dtypes_come_from_the_registry() -> None:
    from onnxfuse import ops
    from onnxfuse.kernels.triton.gated_mlp import ACTIVATION_IDS
    from onnxfuse.kernels.triton.reference import TORCH_DTYPES, torch_dtype

    activation = ops.FUSED_GATED_MLP.attribute("activation")
    assert {name: activation.code(name) for name in activation.values} == ACTIVATION_IDS
    assert list(TORCH_DTYPES) == list(ops.ELEMENT_TYPES)
    assert torch_dtype("bfloat16") is torch.bfloat16
    with pytest.raises(KernelError, match=r"element type 'float64'.*float32, float16, bfloat16"):
        torch_dtype("float64")
