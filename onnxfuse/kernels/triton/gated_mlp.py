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

Decode sizes (at most 64 rows) use narrow-M tiles and split the down projection's K across
programs, reduced in a fixed order by :func:`_reduce_kernel` (deterministic, no atomics).
On a GPU each launch's tiles are autotuned per shape class (:mod:`onnxfuse.kernels.triton.tuning`,
candidates in :mod:`onnxfuse.kernels.triton.configs`); the interpreter uses fixed tiles. Not yet:
the candidates have not been timed on a GPU; none was available when this was written
(see benchmarks/NOTES.md).
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

try:  # Triton >= 3.4: host-side TMA descriptors
    from triton.tools.tensor_descriptor import TensorDescriptor as _TensorDescriptor
except ImportError:  # pragma: no cover - older Triton: TMA configs use the pointer kernel
    _TensorDescriptor = None

from onnxfuse import ops
from onnxfuse.errors import KernelError
from onnxfuse.kernels import interpreting
from onnxfuse.kernels.triton import tuning
from onnxfuse.kernels.triton.configs import (
    CANDIDATES,
    KernelConfig,
    interpreter_config,
    shape_class,
)
from onnxfuse.kernels.triton.reference import TORCH_DTYPES

__all__ = ["ACTIVATION_IDS", "KernelConfig", "check_out", "fused_gated_mlp", "interpreting"]

_ACTIVATION = ops.FUSED_GATED_MLP.attribute("activation")
ACTIVATION_IDS = {name: _ACTIVATION.code(name) for name in _ACTIVATION.values}
"""The registry's activation codes: the ``ACTIVATION`` constexpr that selects the epilogue."""
_SILU: tl.constexpr = tl.constexpr(ACTIVATION_IDS["silu"])
_GELU: tl.constexpr = tl.constexpr(ACTIVATION_IDS["gelu"])
_GELU_TANH: tl.constexpr = tl.constexpr(ACTIVATION_IDS["gelu_tanh"])


def _autotune(autotune: bool | None, x: torch.Tensor) -> bool:
    if autotune is not None:
        return autotune
    return x.is_cuda and not interpreting() and os.environ.get("ONNXFUSE_AUTOTUNE", "1") != "0"


def _device_name(x: torch.Tensor) -> str:
    return _device_label(x.device.index if x.is_cuda else None, interpreting())


def _capturing(x: torch.Tensor) -> bool:
    """Whether a CUDA graph is being captured on the current stream (no timing there)."""
    return x.is_cuda and torch.cuda.is_current_stream_capturing()


@functools.cache
def _device_label(cuda_index: int | None, interpreted: bool) -> str:
    where = "cpu" if cuda_index is None else f"cuda {torch.cuda.get_device_name(cuda_index)}"
    return f"{where}{' interpreter' if interpreted else ''}, triton {triton.__version__}"


def _constexprs(config: KernelConfig, *, gated: bool, biased: bool, activation: str,
                precision: str, upcast: bool) -> dict[str, object]:
    """The compile-time arguments both GEMM kernels take for one launch (``SPLIT_K`` apart,
    which only the pointer kernel has): what a launch passes and what the AOT build compiles.
    ``precision`` is the one the dot uses (``ieee`` for 16-bit inputs)."""
    return dict(GATED=gated, HAS_BIAS=biased, ACTIVATION=ACTIVATION_IDS[activation], UPCAST=upcast,
                PRECISION=precision, BLOCK_M=config.block_m, BLOCK_N=config.block_n,
                BLOCK_K=config.block_k, GROUP_M=config.group_m)


@triton.jit
def _activation(g, ACTIVATION: tl.constexpr):
    if ACTIVATION == _SILU:
        return g * tl.sigmoid(g)
    elif ACTIVATION == _GELU:  # erf
        return 0.5 * g * (1.0 + tl.math.erf(g * 0.7071067811865476))
    else:
        tl.static_assert(ACTIVATION == _GELU_TANH)
        z = 0.7978845608028654 * (g + 0.044715 * g * g * g)
        return 0.5 * g * (1.0 + (2.0 * tl.sigmoid(2.0 * z) - 1.0))  # tanh(z) = 2 sigmoid(2z) - 1


@triton.jit
def _tile(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """(row tile, column tile) of program ``pid``, grouped: GROUP_M row tiles in a row share
    their B tiles in L2."""
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m
    return pid_m, pid_n


@triton.jit
def _epilogue(acc1, acc2, bias1_ptr, bias2_ptr, stride_bias1, stride_bias2, offs_n, mask_n,
              GATED: tl.constexpr, HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr):
    """acc1 (+ bias1), or act(acc1 + bias1) * (acc2 + bias2) if GATED; float32."""
    if HAS_BIAS:
        acc1 += tl.load(bias1_ptr + offs_n * stride_bias1, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        if GATED:
            acc2 += tl.load(bias2_ptr + offs_n * stride_bias2, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    if GATED:
        acc1 = _activation(acc1, ACTIVATION) * acc2
    return acc1


@triton.jit
def _gemm_kernel(
    # pointers
    a_ptr, b1_ptr, b2_ptr, bias1_ptr, bias2_ptr, c_ptr,
    # sizes
    M, N, K,
    # strides
    stride_am, stride_ak, stride_b1k, stride_b1n, stride_b2k, stride_b2n, stride_bias1, stride_bias2,
    stride_cm, stride_cn, stride_cs,
    # constexprs
    GATED: tl.constexpr, HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr, SPLIT_K: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """C = A @ B1 (+ bias1), or, if GATED, C = act(A @ B1 + bias1) * (A @ B2 + bias2).

    With SPLIT_K > 1 (not GATED), program (pid, s) sums only the s-th slice of K and stores
    its float32 partial at ``c_ptr + s * stride_cs``; :func:`_reduce_kernel` adds the
    partials (and the bias) in a fixed order, so results stay bitwise deterministic.
    """
    pid_m, pid_n = _tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    pid_k = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    # This program's slice of K, in whole BLOCK_K steps.
    k_per_split = tl.cdiv(tl.cdiv(K, BLOCK_K), SPLIT_K) * BLOCK_K
    k_start = pid_k * k_per_split
    k_end = min(K, k_start + k_per_split)
    offs_k = k_start + tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_n = offs_n < N
    a_ptrs = a_ptr + offs_m[:, None] * stride_am + offs_k[None, :] * stride_ak
    b1_ptrs = b1_ptr + offs_k[:, None] * stride_b1k + offs_n[None, :] * stride_b1n
    b2_ptrs = b2_ptr + offs_k[:, None] * stride_b2k + offs_n[None, :] * stride_b2n

    acc1 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(k_start, k_end, BLOCK_K):
        mask_k = (k0 - k_start + offs_k) < k_end
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
            b2_ptrs += BLOCK_K * stride_b2k
        a_ptrs += BLOCK_K * stride_ak
        b1_ptrs += BLOCK_K * stride_b1k

    acc1 = _epilogue(acc1, acc2, bias1_ptr, bias2_ptr, stride_bias1, stride_bias2, offs_n, mask_n,
                     GATED, HAS_BIAS and SPLIT_K == 1, ACTIVATION)
    c_ptrs = c_ptr + pid_k * stride_cs + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn
    tl.store(c_ptrs, acc1.to(c_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def _gemm_tma_kernel(
    a_desc, b1_desc, b2_desc, bias1_ptr, bias2_ptr, c_desc,
    M, N, K,
    stride_bias1, stride_bias2,
    GATED: tl.constexpr, HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """:func:`_gemm_kernel` (without split K) with tiles moved by the tensor memory
    accelerator: host-made tensor descriptors, loads and the store by TMA (out-of-bounds
    rows and columns read as zero and are not written), no pointer arrays or masks in
    registers. Needs 16-byte aligned bases and row strides (see :func:`_tma_eligible`)."""
    pid_m, pid_n = _tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    off_m = pid_m * BLOCK_M
    off_n = pid_n * BLOCK_N
    acc1 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        a = a_desc.load([off_m, k0])
        b1 = b1_desc.load([k0, off_n])
        if UPCAST:
            a = a.to(tl.float32)
            b1 = b1.to(tl.float32)
        acc1 = tl.dot(a, b1, acc1, input_precision=PRECISION)
        if GATED:
            b2 = b2_desc.load([k0, off_n])
            if UPCAST:
                b2 = b2.to(tl.float32)
            acc2 = tl.dot(a, b2, acc2, input_precision=PRECISION)
    offs_n = off_n + tl.arange(0, BLOCK_N)
    acc1 = _epilogue(acc1, acc2, bias1_ptr, bias2_ptr, stride_bias1, stride_bias2, offs_n, offs_n < N,
                     GATED, HAS_BIAS, ACTIVATION)
    c_desc.store([off_m, off_n], acc1.to(c_desc.dtype))


@triton.jit
def _reduce_kernel(
    partial_ptr, bias_ptr, c_ptr,
    M, N,
    stride_ps, stride_pm, stride_bias, stride_cm, stride_cn,
    SPLIT_K: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr,
):
    """C[m, n] = sum over s of partial[s, m, n] (+ bias[n]), summed in order s = 0, 1, ..."""
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < M * N
    m = offs // N
    n = offs % N
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for s in range(SPLIT_K):
        acc += tl.load(partial_ptr + s * stride_ps + m * stride_pm + n, mask=mask, other=0.0)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + n * stride_bias, mask=mask, other=0.0).to(tl.float32)
    tl.store(c_ptr + m * stride_cm + n * stride_cn, acc.to(c_ptr.dtype.element_ty), mask=mask)


def _validate(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor,
              biases: tuple[torch.Tensor | None, ...], activation: str, precision: str,
              out: torch.Tensor | None) -> tuple[int, int]:
    if activation not in ACTIVATION_IDS:
        raise KernelError(f"unknown activation {activation!r}: choose one of {', '.join(ACTIVATION_IDS)}")
    if precision not in ops.PRECISIONS:
        raise KernelError(f"unknown precision {precision!r}: choose one of {', '.join(ops.PRECISIONS)}")
    if x.dtype not in TORCH_DTYPES.values():
        raise KernelError(f"X has dtype {x.dtype}: the op takes {', '.join(TORCH_DTYPES)}")
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
    check_out(out, x)
    return int(d), int(d_ff)


def check_out(out: torch.Tensor | None, x: torch.Tensor) -> None:
    """A caller's ``out`` must match ``x`` in shape, type and device (it may be strided).

    Raises:
        KernelError: naming both.
    """
    if out is not None and (out.shape != x.shape or out.dtype != x.dtype or out.device != x.device):
        raise KernelError(f"out must be {tuple(x.shape)} {x.dtype} on {x.device}, got "
                          f"{tuple(out.shape)} {out.dtype} on {out.device}")


def _tma_eligible(*tensors: torch.Tensor) -> bool:
    """Whether TMA can address these 2-D tensors: Triton has tensor descriptors, unit inner
    strides, 16-byte aligned bases and non-zero row strides (transposed views, column gaps
    and broadcast rows take the pointer kernel)."""
    return _TensorDescriptor is not None and all(
        t.dim() == 2 and t.stride(1) == 1 and t.stride(0) > 0
        and (t.stride(0) * t.element_size()) % 16 == 0 and t.data_ptr() % 16 == 0 for t in tensors)


def _stride(t: torch.Tensor | None) -> int:
    """A bias's element stride; 1 for an absent one, which the kernel does not read (1, as
    for a contiguous bias, keeps the specialisation the AOT build compiles)."""
    return 1 if t is None else t.stride(0)


def _rows(y: torch.Tensor, m: int, d: int) -> tuple[torch.Tensor, bool]:
    """The output ``y`` as ``[m, d]`` to launch on, and whether it must be copied into ``y``
    afterwards: a view when its leading dims flatten (with any row and element strides), else
    a fresh buffer."""
    try:
        return y.view(m, d), False
    except RuntimeError:  # leading dims that no single row stride spans
        return torch.empty((m, d), dtype=y.dtype, device=y.device), True


def _launch(a: torch.Tensor, b1: torch.Tensor, b2: torch.Tensor | None, bias1: torch.Tensor | None,
            bias2: torch.Tensor | None, c: torch.Tensor, *, gated: bool, activation: str,
            precision: str, config: KernelConfig) -> None:
    M, K = a.shape
    N = b1.shape[1]
    upcast = interpreting() and a.dtype == torch.bfloat16
    split_k = 1 if gated else max(1, min(config.split_k, triton.cdiv(K, config.block_k)))
    constexprs = _constexprs(config, gated=gated, biased=bias1 is not None, activation=activation,
                             precision=precision if a.dtype == torch.float32 else "ieee", upcast=upcast)
    constexprs.update(num_warps=config.num_warps, num_stages=config.num_stages)
    operands = (a, b1, c) if b2 is None else (a, b1, b2, c)
    if config.tma and split_k == 1 and _tma_eligible(*operands):
        bm, bn, bk = config.block_m, config.block_n, config.block_k
        b_desc = _TensorDescriptor.from_tensor(b1, [bk, bn])
        _gemm_tma_kernel[(triton.cdiv(M, bm) * triton.cdiv(N, bn),)](
            _TensorDescriptor.from_tensor(a, [bm, bk]), b_desc,
            _TensorDescriptor.from_tensor(b2, [bk, bn]) if b2 is not None else b_desc,
            bias1 if bias1 is not None else b1, bias2 if bias2 is not None else b1,
            _TensorDescriptor.from_tensor(c, [bm, bn]), M, N, K,
            _stride(bias1), _stride(bias2), **constexprs)
        return
    target = c if split_k == 1 else torch.empty((split_k, M, N), dtype=torch.float32, device=a.device)
    stride_cs = 0 if split_k == 1 else target.stride(0)
    stride_cm, stride_cn = (c.stride(0), c.stride(1)) if split_k == 1 else (target.stride(1), target.stride(2))
    grid = (triton.cdiv(M, config.block_m) * triton.cdiv(N, config.block_n), split_k)
    _gemm_kernel[grid](
        a, b1, b2 if b2 is not None else b1, bias1 if bias1 is not None else b1,
        bias2 if bias2 is not None else b1, target,
        M, N, K,
        a.stride(0), a.stride(1), b1.stride(0), b1.stride(1),
        *(b2 if b2 is not None else b1).stride(), _stride(bias1), _stride(bias2),
        stride_cm, stride_cn, stride_cs,
        SPLIT_K=split_k, **constexprs,
    )
    if split_k > 1:
        block = 1024
        _reduce_kernel[(triton.cdiv(M * N, block),)](
            target, bias1 if bias1 is not None else c, c, M, N,
            target.stride(0), target.stride(1), _stride(bias1), c.stride(0), c.stride(1),
            SPLIT_K=split_k, HAS_BIAS=bias1 is not None, BLOCK=block,
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
    activation: str = ops.FUSED_GATED_MLP.attribute("activation").default,
    precision: str = "tf32",
    out: torch.Tensor | None = None,
    config: KernelConfig | None = None,
    down_config: KernelConfig | None = None,
    autotune: bool | None = None,
) -> torch.Tensor:
    """``Y = (act(X @ W_gate + B_gate) * (X @ W_up + B_up)) @ W_down + B_down`` on Triton.

    Args:
        x: ``[..., d]`` float32, float16 or bfloat16, any leading dims.
        w_gate, w_up: ``[d, d_ff]``; w_down: ``[d_ff, d]`` (ONNX MatMul layout), same dtype.
        b_gate, b_up, b_down: optional ``[d_ff]``, ``[d_ff]``, ``[d]`` (all or none).
        activation: ``silu``, ``gelu`` or ``gelu_tanh``.
        precision: for float32 inputs, ``tf32`` (tensor cores, default) or ``ieee``.
        out: optional output buffer (``x``'s shape and dtype), written in full.

        Every operand and ``out`` may be any strided view (transposed, sliced with gaps,
        broadcast): each reaches the kernels with its own strides, weights and biases without
        a copy. X and ``out`` are seen as ``[rows, d]``: a view when their leading dims
        flatten, else X is copied once (1/d_ff of the GEMMs' work) and the output goes
        through a buffer copied into ``out``.
        config, down_config: tile sizes of the gate/up and down launches (``config`` alone
            serves both); given, they are used as they are.
        autotune: time the shape class's candidate configs once per shape bucket and use
            the fastest (:mod:`onnxfuse.kernels.triton.tuning`). Default: on for CUDA tensors unless
            ``$ONNXFUSE_AUTOTUNE=0``; off under the interpreter, which then uses fixed tiles
            for its speed (:func:`interpreter_config`). Off on a GPU: each class's first
            candidate (:func:`onnxfuse.kernels.triton.configs.default_configs`).

    Raises:
        KernelError: a shape, dtype, device, activation or precision that does not fit.
    """
    biases = (b_gate, b_up, b_down)
    d, d_ff = _validate(x, w_gate, w_up, w_down, biases, activation, precision, out)
    y = out if out is not None else torch.empty_like(x)
    a = x.reshape(-1, d)
    if a.shape[0] == 0:
        return y
    m = a.shape[0]
    tune = _autotune(autotune, x)
    h = torch.empty((m, d_ff), dtype=x.dtype, device=x.device)
    y2, copy_back = _rows(y, m, d)
    stages = (  # (stage, launch, n, k, explicit config)
        ("gate_up", functools.partial(_launch, a, w_gate, w_up, b_gate, b_up, h, gated=True,
                                      activation=activation, precision=precision), d_ff, d, config),
        ("down", functools.partial(_launch, h, w_down, None, b_down, None, y2, gated=False,
                                   activation=activation, precision=precision), d, d_ff,
         down_config or config),
    )
    for stage, launch, n, k, explicit in stages:
        candidates = CANDIDATES[shape_class(m), stage]
        if explicit is not None:
            launch(config=explicit)
        elif tune:
            key = tuning.TuneKey(_device_name(x), str(x.dtype).removeprefix("torch."), precision,
                                 stage, tuning.token_bucket(m), n, k, b_gate is not None)

            def run(cfg: KernelConfig, launch: functools.partial[None] = launch) -> None:
                launch(config=cfg)

            tuning.tuner().choose(key, candidates, run, may_time=not _capturing(x))
        elif interpreting():
            launch(config=interpreter_config(m, n, k))
        else:
            launch(config=candidates[0])
    if copy_back:
        y.copy_(y2.view(y.shape))
    return y
