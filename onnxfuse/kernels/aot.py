"""Ahead-of-time compilation of the Triton kernels with ``triton.compile`` for given CUDA
targets, on any machine (no GPU needed: ptxas ships with the Triton wheel).

It catches GPU-only errors (layouts, shared memory, unsupported ops) on CPU-only CI, and its
cubins are the base of a later C++ launcher that needs no Python.
"""

from __future__ import annotations

import dataclasses

from onnxfuse.errors import KernelError

__all__ = ["CompiledKernel", "compile_gated_mlp"]

_TRITON_DTYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


@dataclasses.dataclass(frozen=True)
class CompiledKernel:
    """One compiled specialisation."""

    target: str
    config: str
    dtype: str
    gated: bool
    cubin_bytes: int
    shared_bytes: int
    num_warps: int
    name: str


def compile_gated_mlp(capability: int, dtype: str = "bfloat16", *, gated: bool = True,
                      biased: bool = True, activation: str = "silu",
                      config: str = "prefill") -> CompiledKernel:
    """Compile one specialisation of the gated-MLP GEMM kernel for ``cuda:<capability>``.

    Raises:
        KernelError: Triton is in interpreter mode (``TRITON_INTERPRET=1``), or the
            compilation fails (the message carries the compiler's).
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from onnxfuse.kernels.gated_mlp import ACTIVATION_IDS, GPU_CONFIGS, _gemm_kernel

    if not isinstance(_gemm_kernel, triton.runtime.JITFunction):
        raise KernelError("ahead-of-time compilation needs compiled Triton: unset TRITON_INTERPRET")
    if dtype not in _TRITON_DTYPES:
        raise KernelError(f"unknown dtype {dtype!r}: choose one of {', '.join(_TRITON_DTYPES)}")
    ptr = f"*{_TRITON_DTYPES[dtype]}"
    signature = {name: ptr for name in ("a_ptr", "b1_ptr", "b2_ptr", "bias1_ptr", "bias2_ptr", "c_ptr")}
    signature.update({name: "i32" for name in ("M", "N", "K", "stride_am", "stride_ak",
                                                "stride_bk", "stride_bn", "stride_cm", "stride_cn",
                                                "stride_cs")})
    if config not in GPU_CONFIGS:
        raise KernelError(f"unknown config {config!r}: choose one of {', '.join(GPU_CONFIGS)}")
    cfg = GPU_CONFIGS[config]
    if cfg.split_k > 1 and gated:
        raise KernelError(f"config {config!r} splits K: it is for the down projection (gated=False)")
    if cfg.split_k > 1:
        signature["c_ptr"] = "*fp32"  # split-K programs store float32 partials
    constexprs = dict(GATED=gated, HAS_BIAS=biased, ACTIVATION=ACTIVATION_IDS[activation],
                      UPCAST=False, PRECISION="tf32" if dtype == "float32" else "ieee",
                      SPLIT_K=cfg.split_k,
                      BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
                      GROUP_M=cfg.group_m)
    signature.update({name: "constexpr" for name in constexprs})
    source = ASTSource(_gemm_kernel, signature, constexprs=constexprs)
    try:
        kernel = triton.compile(source, target=GPUTarget("cuda", capability, 32),
                                options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages})
    except Exception as e:
        raise KernelError(f"Triton cannot compile the kernel for cuda:{capability} ({dtype}): {e}") from e
    return CompiledKernel(f"cuda:{capability}", config, dtype, gated, len(kernel.asm["cubin"]),
                          int(kernel.metadata.shared), cfg.num_warps, kernel.metadata.name)
