"""Triton kernel for ``onnxfuse::FusedGatedMLPNBits`` (issue 16): first version, for
correctness.

Idea: the float op's two launches (:mod:`onnxfuse.kernels.triton.gated_mlp`), with each weight
tile dequantized in the K loop instead of loaded: for a [BLOCK_K, BLOCK_N] tile of W, every
element's byte of the packed weight ``Q`` ([N, blocks, block_size * bits / 8] uint8) is
gathered, its ``bits`` taken out (low bits first), its block's zero point (packed the same
way, or 2^(bits-1)) subtracted and its block's scale applied, as ORT's ``MatMulNBits``
defines it. The gate/up launch keeps two accumulators over one X tile and applies the
activation and the product in the epilogue, writing H once; the down launch is the same
kernel over H, ungated.

Not yet: byte-wide loads (each element gathers its own byte, so a byte is read 8 / bits
times), a decode path (split K), autotuned tiles, the plugin's triton backend (the bridge
wraps every input as the float type). Tiles are fixed and small (the interpreter's); on a
GPU this is a correctness baseline, not a measured kernel.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from onnxfuse import ops
from onnxfuse.errors import KernelError
from onnxfuse.kernels.triton.gated_mlp import ACTIVATION_IDS, _activation, check_out
from onnxfuse.kernels.triton.reference import TORCH_DTYPES

__all__ = ["fused_gated_mlp_nbits"]

_SPEC = ops.FUSED_GATED_MLP_NBITS
_BLOCK_M, _BLOCK_N, _BLOCK_K = 16, 32, 16
"""Fixed tiles, sized for the interpreter (every shape of the tests runs in seconds)."""


@triton.jit
def _dequantized(q_ptr, s_ptr, z_ptr, offs_k, offs_n, mask, BLOCKS,
                 HAS_ZP: tl.constexpr, BITS: tl.constexpr, BLOCK_SIZE: tl.constexpr):
    """W[offs_k, offs_n] in float32, from MatMulNBits' packed weight, scales and zero points."""
    PER_BYTE: tl.constexpr = 8 // BITS
    BLOB: tl.constexpr = BLOCK_SIZE * BITS // 8
    block = offs_k[:, None] // BLOCK_SIZE
    inner = offs_k[:, None] % BLOCK_SIZE
    byte = tl.load(q_ptr + offs_n[None, :] * (BLOCKS * BLOB) + block * BLOB + inner // PER_BYTE,
                   mask=mask, other=0).to(tl.int32)
    value = (byte >> ((inner % PER_BYTE) * BITS)) & ((1 << BITS) - 1)
    scale = tl.load(s_ptr + offs_n[None, :] * BLOCKS + block, mask=mask, other=0.0).to(tl.float32)
    if HAS_ZP:
        zp_bytes = (BLOCKS * BITS + 7) // 8
        zbyte = tl.load(z_ptr + offs_n[None, :] * zp_bytes + block // PER_BYTE, mask=mask, other=0).to(tl.int32)
        zero = (zbyte >> ((block % PER_BYTE) * BITS)) & ((1 << BITS) - 1)
    else:
        zero = 1 << (BITS - 1)
    return (value - zero).to(tl.float32) * scale


@triton.jit
def _nbits_kernel(
    # pointers
    a_ptr, q1_ptr, s1_ptr, z1_ptr, q2_ptr, s2_ptr, z2_ptr, bias1_ptr, bias2_ptr, c_ptr,
    # sizes
    M, N, K, BLOCKS,
    # strides
    stride_am, stride_ak, stride_cm, stride_cn,
    # constexprs
    GATED: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_ZP: tl.constexpr, ACTIVATION: tl.constexpr,
    BITS: tl.constexpr, BLOCK_SIZE: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """C = A @ W1 (+ bias1), or, if GATED, act(A @ W1 + bias1) * (A @ W2 + bias2); W1, W2
    dequantized tile by tile in the K loop; float32 accumulation and epilogue."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    acc1 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        a = tl.load(a_ptr + offs_m[:, None] * stride_am + offs_k[None, :] * stride_ak,
                    mask=mask_m[:, None] & mask_k[None, :], other=0.0).to(tl.float32)
        w_mask = mask_k[:, None] & mask_n[None, :]
        w1 = _dequantized(q1_ptr, s1_ptr, z1_ptr, offs_k, offs_n, w_mask, BLOCKS, HAS_ZP, BITS, BLOCK_SIZE)
        acc1 = tl.dot(a, w1, acc1, input_precision=PRECISION)
        if GATED:
            w2 = _dequantized(q2_ptr, s2_ptr, z2_ptr, offs_k, offs_n, w_mask, BLOCKS, HAS_ZP, BITS, BLOCK_SIZE)
            acc2 = tl.dot(a, w2, acc2, input_precision=PRECISION)
    if HAS_BIAS:
        acc1 += tl.load(bias1_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        if GATED:
            acc2 += tl.load(bias2_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    if GATED:
        acc1 = _activation(acc1, ACTIVATION) * acc2
    tl.store(c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn, acc1.to(c_ptr.dtype.element_ty),
             mask=mask_m[:, None] & mask_n[None, :])


def _validate(x: torch.Tensor, projections: list[tuple[torch.Tensor, torch.Tensor]], zero_points: list[torch.Tensor | None],
              biases: list[torch.Tensor | None], bits: int, block_size: int, activation: str, precision: str,
              out: torch.Tensor | None) -> tuple[int, int]:
    if activation not in ACTIVATION_IDS:
        raise KernelError(f"unknown activation {activation!r}: choose one of {', '.join(ACTIVATION_IDS)}")
    if precision not in ops.PRECISIONS:
        raise KernelError(f"unknown precision {precision!r}: choose one of {', '.join(ops.PRECISIONS)}")
    for name, value in (("bits", bits), ("block_size", block_size)):
        allowed = _SPEC.attribute(name).values
        if value not in allowed:
            raise KernelError(f"{name} {value} is not one of {', '.join(map(str, allowed))}")
    if x.dtype not in TORCH_DTYPES.values() or x.dim() < 1:
        raise KernelError(f"X must be [..., d] of {', '.join(TORCH_DTYPES)}, got {x.dtype} {tuple(x.shape)}")
    d, d_ff = x.shape[-1], projections[0][0].shape[0]
    for role in ("zero points", "biases"):
        given = [v is not None for v in (zero_points if role == "zero points" else biases)]
        if any(given) and not all(given):
            raise KernelError(f"give all three {role} or none")
    for role, (q, s), z, b, (k, n) in zip(("gate", "up", "down"), projections, zero_points, biases,
                                          ((d, d_ff), (d, d_ff), (d_ff, d)), strict=True):
        blocks = -(-k // block_size)
        want = {"Q": (q, (n, blocks, block_size * bits // 8), torch.uint8), "S": (s, (n * blocks,), x.dtype),
                "Z": (z, (n * -(-blocks * bits // 8),), torch.uint8), "B": (b, (n,), x.dtype)}
        for name, (t, shape, dtype) in want.items():
            if t is None:
                continue
            got = tuple(t.shape) if name == "Q" else (t.numel(),)
            if got != shape or t.dtype != dtype or t.device != x.device or not t.is_contiguous():
                raise KernelError(f"{name}_{role} must be contiguous {dtype} {shape if name == 'Q' else f'of {shape[0]} values'} "
                                  f"on {x.device}, got {t.dtype} {tuple(t.shape)} on {t.device}")
    check_out(out, x)
    return int(d), int(d_ff)


def _launch(a: torch.Tensor, first: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None],
            second: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None] | None,
            c: torch.Tensor, *, activation: str, bits: int, block_size: int, precision: str) -> None:
    M, K = a.shape
    N = c.shape[1]
    q1, s1, z1, b1 = first
    q2, s2, z2, b2 = second if second is not None else first
    grid = (triton.cdiv(M, _BLOCK_M), triton.cdiv(N, _BLOCK_N))
    _nbits_kernel[grid](
        a, q1, s1, z1 if z1 is not None else q1, q2, s2, z2 if z2 is not None else q1,
        b1 if b1 is not None else s1, b2 if b2 is not None else s1, c,
        M, N, K, -(-K // block_size),
        a.stride(0), a.stride(1), c.stride(0), c.stride(1),
        GATED=second is not None, HAS_BIAS=b1 is not None, HAS_ZP=z1 is not None,
        ACTIVATION=ACTIVATION_IDS[activation], BITS=bits, BLOCK_SIZE=block_size,
        PRECISION=precision if a.dtype == torch.float32 else "ieee",
        BLOCK_M=_BLOCK_M, BLOCK_N=_BLOCK_N, BLOCK_K=_BLOCK_K,
    )


def fused_gated_mlp_nbits(
    x: torch.Tensor,
    q_gate: torch.Tensor, s_gate: torch.Tensor, q_up: torch.Tensor, s_up: torch.Tensor,
    q_down: torch.Tensor, s_down: torch.Tensor,
    z_gate: torch.Tensor | None = None, z_up: torch.Tensor | None = None, z_down: torch.Tensor | None = None,
    b_gate: torch.Tensor | None = None, b_up: torch.Tensor | None = None, b_down: torch.Tensor | None = None,
    *,
    activation: str = _SPEC.attribute("activation").default,
    bits: int = _SPEC.attribute("bits").default,
    block_size: int = _SPEC.attribute("block_size").default,
    accuracy_level: int = _SPEC.attribute("accuracy_level").default,
    precision: str = "tf32",
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``FusedGatedMLPNBits`` on Triton: the operands as ``MatMulNBits`` stores them
    (:data:`onnxfuse.ops.FUSED_GATED_MLP_NBITS`), contiguous; X ``[..., d]`` float32, float16
    or bfloat16. ``accuracy_level`` is accepted and ignored: the kernel dequantizes to float32
    and accumulates in float32 at every level. ``precision``: for float32 X, the dot's
    ``tf32`` (tensor cores, default; the interpreter computes ieee) or ``ieee``; 16-bit X always
    ``ieee`` (the dequantized tile is float32). ``out``: a buffer of X's shape and dtype.

    Raises:
        KernelError: a shape, dtype, device, activation, ``bits`` or ``block_size`` that does
            not fit.
    """
    projections = [(q_gate, s_gate), (q_up, s_up), (q_down, s_down)]
    zero_points, biases = [z_gate, z_up, z_down], [b_gate, b_up, b_down]
    d, d_ff = _validate(x, projections, zero_points, biases, bits, block_size, activation, precision, out)
    y = out if out is not None else torch.empty_like(x)
    a = x.reshape(-1, d)
    if a.shape[0] == 0:
        return y
    m = a.shape[0]
    h = torch.empty((m, d_ff), dtype=x.dtype, device=x.device)
    y2 = y.view(m, d) if y.is_contiguous() else torch.empty((m, d), dtype=x.dtype, device=x.device)
    launch = functools.partial(_launch, activation=activation, bits=bits, block_size=block_size, precision=precision)
    launch(a, (q_gate, s_gate, z_gate, b_gate), (q_up, s_up, z_up, b_up), h)
    launch(h, (q_down, s_down, z_down, b_down), None, y2)
    if y2.data_ptr() != y.data_ptr():
        y.copy_(y2.view(y.shape))
    return y
