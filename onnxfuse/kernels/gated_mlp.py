"""Triton kernels for ``onnxfuse::FusedGatedMLP``.

Idea: two launches. The first computes the gate and up projections of one output tile
together, with two accumulators over the same X tile (X is read once for both), then applies
the activation and the product in the epilogue and writes the intermediate H = act(gate) * up
once, in the input's dtype. The second is a plain tiled GEMM, H @ W_down (+ B_down). Both are
one kernel, :func:`_gemm_kernel`, specialised by the ``GATED`` constexpr.

Under the Triton interpreter (``TRITON_INTERPRET=1``), bfloat16 arithmetic and ``tl.dot`` on
bfloat16 operate on raw bits (triton issues #4972, #11584): the launcher then sets ``UPCAST``
and the kernel converts loaded operands to float32 before any arithmetic. Compiled kernels
keep bfloat16 operands for the tensor cores.

Not yet: a split-K / GEMV path for decode sizes and tuned configs measured on a GPU; no GPU
was available when this was written (see benchmarks/NOTES.md).
"""

from __future__ import annotations

import dataclasses
import os

import torch
import triton
import triton.language as tl

from onnxfuse import opset
from onnxfuse.errors import KernelError

__all__ = ["ACTIVATION_IDS", "KernelConfig", "fused_gated_mlp", "interpreting"]

# Activation encoding shared with the kernel (a constexpr selects the epilogue).
ACTIVATION_IDS = {"silu": 0, "gelu": 1, "gelu_tanh": 2}
PRECISIONS = ("tf32", "ieee")
_DTYPES = {torch.float32, torch.float16, torch.bfloat16}


@dataclasses.dataclass(frozen=True)
class KernelConfig:
    """Tile sizes of one launch.

    The interpreter's cost is per program (~20 ms each, measured on this 2-core CPU): 32-wide
    tiles cut a 111×23×45 problem from 0.85 s (16-wide) to 0.28 s, and odd shapes still
    exercise every mask. GPU configs are a conservative default until autotuned on a GPU
    (none was available).
    """

    block_m: int = 16
    block_n: int = 16
    block_k: int = 16
    group_m: int = 4
    num_warps: int = 4
    num_stages: int = 2


INTERPRETER_CONFIG = KernelConfig(block_m=32, block_n=32, block_k=32)
# A conservative compiled default for prefill-sized problems (to be replaced by measured
# autotune configs per shape class).
GPU_CONFIG = KernelConfig(block_m=128, block_n=128, block_k=32, group_m=8, num_warps=8, num_stages=3)


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@triton.jit
def _activation(g, ACTIVATION: tl.constexpr):
    if ACTIVATION == 0:  # silu
        return g * tl.sigmoid(g)
    elif ACTIVATION == 1:  # gelu (erf)
        return 0.5 * g * (1.0 + tl.math.erf(g * 0.7071067811865476))
    else:  # gelu_tanh; tanh(z) = 2 * sigmoid(2z) - 1
        z = 0.7978845608028654 * (g + 0.044715 * g * g * g)
        return 0.5 * g * (1.0 + (2.0 * tl.sigmoid(2.0 * z) - 1.0))


@triton.jit
def _gemm_kernel(
    # pointers
    a_ptr, b1_ptr, b2_ptr, bias1_ptr, bias2_ptr, c_ptr,
    # sizes
    M, N, K,
    # strides
    stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
    # constexprs
    GATED: tl.constexpr, HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """C = A @ B1 (+ bias1), or, if GATED, C = act(A @ B1 + bias1) * (A @ B2 + bias2)."""
    pid = tl.program_id(0)
    # Grouped ordering: GROUP_M row tiles share their B tiles in L2.
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_n = offs_n < N
    a_ptrs = a_ptr + offs_m[:, None] * stride_am + offs_k[None, :] * stride_ak
    b1_ptrs = b1_ptr + offs_k[:, None] * stride_bk + offs_n[None, :] * stride_bn
    b2_ptrs = b2_ptr + offs_k[:, None] * stride_bk + offs_n[None, :] * stride_bn

    acc1 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        mask_k = (k0 + offs_k) < K
        a = tl.load(a_ptrs, mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        b1 = tl.load(b1_ptrs, mask=mask_k[:, None] & mask_n[None, :], other=0.0)
        if UPCAST:
            a = a.to(tl.float32)
            b1 = b1.to(tl.float32)
        acc1 = tl.dot(a, b1, acc1, input_precision=PRECISION)
        if GATED:
            b2 = tl.load(b2_ptrs, mask=mask_k[:, None] & mask_n[None, :], other=0.0)
            if UPCAST:
                b2 = b2.to(tl.float32)
            acc2 = tl.dot(a, b2, acc2, input_precision=PRECISION)
            b2_ptrs += BLOCK_K * stride_bk
        a_ptrs += BLOCK_K * stride_ak
        b1_ptrs += BLOCK_K * stride_bk

    if HAS_BIAS:
        acc1 += tl.load(bias1_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        if GATED:
            acc2 += tl.load(bias2_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    if GATED:
        acc1 = _activation(acc1, ACTIVATION) * acc2

    c_ptrs = c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn
    tl.store(c_ptrs, acc1.to(c_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


def _validate(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor,
              biases: tuple[torch.Tensor | None, ...], activation: str, precision: str,
              out: torch.Tensor | None) -> tuple[int, int]:
    if activation not in ACTIVATION_IDS:
        raise KernelError(f"unknown activation {activation!r}: choose one of {', '.join(ACTIVATION_IDS)}")
    if precision not in PRECISIONS:
        raise KernelError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if x.dtype not in _DTYPES:
        raise KernelError(f"X has dtype {x.dtype}: the op takes float32, float16 or bfloat16")
    if x.dim() < 1:
        raise KernelError("X must have at least one dimension [..., d]")
    for name, w in (("W_gate", w_gate), ("W_up", w_up), ("W_down", w_down)):
        if w.dim() != 2:
            raise KernelError(f"{name} must be 2-D, got shape {tuple(w.shape)}")
        if w.dtype != x.dtype:
            raise KernelError(f"{name} has dtype {w.dtype}, X has {x.dtype}: they must match")
        if w.device != x.device:
            raise KernelError(f"{name} is on {w.device}, X on {x.device}: move them to one device")
    d, d_ff = w_gate.shape
    if x.shape[-1] != d:
        raise KernelError(f"X's last dim is {x.shape[-1]}, W_gate is {tuple(w_gate.shape)}: need [d={x.shape[-1]}, d_ff]")
    if tuple(w_up.shape) != (d, d_ff) or tuple(w_down.shape) != (d_ff, d):
        raise KernelError(f"weight shapes disagree: W_gate {tuple(w_gate.shape)}, W_up "
                          f"{tuple(w_up.shape)}, W_down {tuple(w_down.shape)}; need [d, d_ff], "
                          "[d, d_ff], [d_ff, d]")
    present = [b is not None for b in biases]
    if any(present) and not all(present):
        raise KernelError("give all three biases (B_gate, B_up, B_down) or none")
    for name, b, size in zip(("B_gate", "B_up", "B_down"), biases, (d_ff, d_ff, d), strict=True):
        if b is not None and (tuple(b.shape) != (size,) or b.dtype != x.dtype or b.device != x.device):
            raise KernelError(f"{name} must be [{size}] {x.dtype} on {x.device}, got "
                              f"{tuple(b.shape)} {b.dtype} on {b.device}")
    if out is not None and (out.shape != x.shape or out.dtype != x.dtype or out.device != x.device):
        raise KernelError(f"out must be {tuple(x.shape)} {x.dtype} on {x.device}, got "
                          f"{tuple(out.shape)} {out.dtype} on {out.device}")
    return int(d), int(d_ff)


def _launch(a: torch.Tensor, b1: torch.Tensor, b2: torch.Tensor | None, bias1: torch.Tensor | None,
            bias2: torch.Tensor | None, c: torch.Tensor, *, gated: bool, activation: str,
            precision: str, config: KernelConfig) -> None:
    M, K = a.shape
    N = b1.shape[1]
    upcast = interpreting() and a.dtype == torch.bfloat16
    grid = (triton.cdiv(M, config.block_m) * triton.cdiv(N, config.block_n),)
    _gemm_kernel[grid](
        a, b1, b2 if b2 is not None else b1, bias1 if bias1 is not None else b1,
        bias2 if bias2 is not None else b1, c,
        M, N, K,
        a.stride(0), a.stride(1), b1.stride(0), b1.stride(1), c.stride(0), c.stride(1),
        GATED=gated, HAS_BIAS=bias1 is not None, ACTIVATION=ACTIVATION_IDS[activation],
        UPCAST=upcast, PRECISION=precision if a.dtype == torch.float32 else "ieee",
        BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_K=config.block_k,
        GROUP_M=config.group_m, num_warps=config.num_warps, num_stages=config.num_stages,
    )


def fused_gated_mlp(
    x: torch.Tensor,
    w_gate: torch.Tensor,
    w_up: torch.Tensor,
    w_down: torch.Tensor,
    b_gate: torch.Tensor | None = None,
    b_up: torch.Tensor | None = None,
    b_down: torch.Tensor | None = None,
    *,
    activation: str = opset.DEFAULT_ACTIVATION,
    precision: str = "tf32",
    out: torch.Tensor | None = None,
    config: KernelConfig | None = None,
) -> torch.Tensor:
    """``Y = (act(X @ W_gate + B_gate) * (X @ W_up + B_up)) @ W_down + B_down`` on Triton.

    Args:
        x: ``[..., d]`` float32, float16 or bfloat16, any leading dims.
        w_gate, w_up: ``[d, d_ff]``; w_down: ``[d_ff, d]`` (ONNX MatMul layout), same dtype.
        b_gate, b_up, b_down: optional ``[d_ff]``, ``[d_ff]``, ``[d]`` (all or none).
        activation: ``silu``, ``gelu`` or ``gelu_tanh``.
        precision: for float32 inputs, ``tf32`` (tensor cores, default) or ``ieee``.
        out: optional output buffer (``x``'s shape and dtype), written in full.
        config: tile sizes; default: the interpreter's when interpreting, else the GPU's.

    Raises:
        KernelError: a shape, dtype, device, activation or precision that does not fit.
    """
    biases = (b_gate, b_up, b_down)
    d, d_ff = _validate(x, w_gate, w_up, w_down, biases, activation, precision, out)
    y = out if out is not None else torch.empty_like(x)
    a = x.reshape(-1, d)
    if a.shape[0] == 0:
        return y
    cfg = config or (INTERPRETER_CONFIG if interpreting() else GPU_CONFIG)
    h = torch.empty((a.shape[0], d_ff), dtype=x.dtype, device=x.device)
    _launch(a, w_gate, w_up, b_gate, b_up, h, gated=True, activation=activation,
            precision=precision, config=cfg)
    y2 = y.view(-1, d) if y.is_contiguous() else torch.empty_like(a)
    _launch(h, w_down, None, b_down, None, y2, gated=False, activation=activation,
            precision=precision, config=cfg)
    if not y.is_contiguous():
        y.copy_(y2.view(y.shape))
    return y
