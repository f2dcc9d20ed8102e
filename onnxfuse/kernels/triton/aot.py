"""Ahead-of-time compilation of the Triton kernels with ``triton.compile`` for given CUDA
targets, on any machine (no GPU needed: ptxas, cuobjdump and nvdisasm ship with the Triton
wheel).

It catches GPU-only errors (layouts, shared memory, unsupported ops) on CPU-only CI, reads
what the GPU would run (registers, spills, tensor-core instructions, asynchronous copies) off
the cubin, and its cubins are the base of a later C++ launcher that needs no Python.

The specialisation is the one Triton's JIT gives a launch on contiguous, 16-byte aligned
tensors of the given problem size: integer arguments equal to 1 (the inner strides) become
constants and those divisible by 16 carry a divisibility hint, as do the pointers. Without
those hints Triton cannot prove 16-byte accesses, does not pipeline the loads with
``cp.async`` and reports a different kernel from the one that runs.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import TypedDict

from onnxfuse import ops
from onnxfuse.errors import KernelError
from onnxfuse.kernels.triton.configs import CANDIDATES, KernelConfig

__all__ = ["CompiledKernel", "compile_gated_mlp", "specialisation"]


@dataclasses.dataclass(frozen=True)
class CompiledKernel:
    """One compiled specialisation and what its cubin says (``None``: not inspected)."""

    target: str
    config: str
    dtype: str
    gated: bool
    cubin_bytes: int
    shared_bytes: int
    num_warps: int
    name: str
    registers: int | None = None
    stack_bytes: int | None = None  # per-thread stack frame: > 0 means spilled registers
    local_loads: int | None = None  # LDL instructions in the SASS
    mma: str | None = None  # the tensor-core instruction: HGMMA (wgmma), HMMA, or "none"
    mma_count: int | None = None
    async_copies: int | None = None  # LDGSTS (cp.async) + UTMALDG (TMA) instructions
    tma_copies: int | None = None  # UTMALDG alone


def specialisation(args: dict[str, object]) -> tuple[dict[str, str], dict[str, object],
                                                     dict[tuple[int, ...], list[list[object]]]]:
    """(signature, constexprs, attrs) for ``triton.compile`` from one launch's arguments.

    ``args`` maps each argument, in the kernel's order, to a pointer type (``"*bf16"``,
    assumed 16-byte aligned), a tensor descriptor type (``"tensordesc<bf16[128, 32]>"``), an
    ``int`` or, for a ``tl.constexpr``, a
    ``("constexpr", value)`` pair. Integers follow Triton's JIT: 1 becomes a constant,
    multiples of 16 get ``tt.divisibility = 16``.
    """
    signature: dict[str, str] = {}
    constexprs: dict[str, object] = {}
    attrs: dict[tuple[int, ...], list[list[object]]] = {}
    for i, (name, value) in enumerate(args.items()):
        if isinstance(value, tuple):
            signature[name] = "constexpr"
            constexprs[name] = value[1]
        elif isinstance(value, str):
            signature[name] = value
            if value.startswith("*"):  # a tensor descriptor carries no hints
                attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(value, bool) or not isinstance(value, int):
            raise KernelError(f"argument {name}={value!r}: give a pointer type, an int or ('constexpr', v)")
        elif value == 1:
            signature[name] = "constexpr"
            constexprs[name] = 1
        else:
            signature[name] = "i32" if -(2**31) <= value < 2**31 else "i64"
            if value % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
    return signature, constexprs, attrs


def _config(config: str | KernelConfig, gated: bool) -> KernelConfig:
    if isinstance(config, KernelConfig):
        return config
    classes = sorted({cls for cls, _ in CANDIDATES})
    if config not in classes:
        raise KernelError(f"unknown config {config!r}: choose one of {', '.join(classes)} or give a KernelConfig")
    return CANDIDATES[config, "gate_up" if gated else "down"][0]


def _tool(name: str) -> Path | None:
    import triton

    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    return path if path.is_file() and os.access(path, os.X_OK) else None


class _CubinFacts(TypedDict, total=False):
    """What :func:`_inspect` read from a cubin: the optional fields of :class:`CompiledKernel`."""

    registers: int
    stack_bytes: int
    local_loads: int
    mma: str
    mma_count: int
    async_copies: int
    tma_copies: int


def _inspect(cubin: bytes) -> _CubinFacts:
    """Registers and stack frame (cuobjdump), tensor-core ops, local loads and asynchronous
    copies (nvdisasm's SASS) of one cubin; empty if the tools are missing."""
    cuobjdump, nvdisasm = _tool("cuobjdump"), _tool("nvdisasm")
    if cuobjdump is None or nvdisasm is None:
        return {}
    with tempfile.TemporaryDirectory(prefix="onnxfuse-aot-") as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        usage = subprocess.run([str(cuobjdump), "--dump-resource-usage", str(path)],
                               capture_output=True, text=True, timeout=120).stdout
        sass = subprocess.run([str(nvdisasm), str(path)], capture_output=True, text=True,
                              timeout=120).stdout
    found = re.search(r"REG:(\d+) STACK:(\d+)", usage)
    if found is None or not sass:
        return {}
    counts = {op: len(re.findall(rf"\b{op}\b", sass)) for op in ("HGMMA", "HMMA", "LDGSTS", "UTMALDG", "LDL")}
    mma = "HGMMA" if counts["HGMMA"] else "HMMA" if counts["HMMA"] else "none"
    return {"registers": int(found[1]), "stack_bytes": int(found[2]), "local_loads": counts["LDL"],
            "mma": mma, "mma_count": counts[mma] if mma != "none" else 0,
            "async_copies": counts["LDGSTS"] + counts["UTMALDG"], "tma_copies": counts["UTMALDG"]}


def compile_gated_mlp(capability: int, dtype: str = "bfloat16", *, gated: bool = True,
                      biased: bool = True, activation: str = "silu",
                      config: str | KernelConfig = "prefill", tokens: int | None = None,
                      d: int = 4096, d_ff: int = 11008, inspect: bool = True) -> CompiledKernel:
    """Compile one specialisation of the gated-MLP GEMM kernel for ``cuda:<capability>``.

    ``config`` is a shape class (``prefill``, ``decode``: its default tiles for the gate/up
    launch if ``gated``, else the down launch) or a :class:`KernelConfig`. The problem is
    ``tokens`` rows (default 2048 for a prefill-sized tile, else 16) of Llama-7B's MLP
    (``d``, ``d_ff``): the gate/up launch is ``tokens×d @ d×d_ff``, the down launch
    ``tokens×d_ff @ d_ff×d``.

    Raises:
        KernelError: Triton is in interpreter mode (``TRITON_INTERPRET=1``), an unknown
            dtype, config or activation, or the compilation fails (the message carries the
            compiler's).
    """
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from onnxfuse.kernels.triton.gated_mlp import (
        ACTIVATION_IDS,
        _constexprs,
        _gemm_kernel,
        _gemm_tma_kernel,
    )

    if not isinstance(_gemm_kernel, triton.runtime.JITFunction):
        raise KernelError("ahead-of-time compilation needs compiled Triton: unset TRITON_INTERPRET")
    if dtype not in ops.ELEMENT_TYPES:
        raise KernelError(f"unknown dtype {dtype!r}: choose one of {', '.join(ops.ELEMENT_TYPES)}")
    if activation not in ACTIVATION_IDS:
        raise KernelError(f"unknown activation {activation!r}: choose one of {', '.join(ACTIVATION_IDS)}")
    cfg = _config(config, gated)
    if cfg.split_k > 1 and gated:
        raise KernelError(f"config {cfg.label()} splits K: it is for the down projection (gated=False)")
    m = tokens if tokens is not None else (2048 if cfg.block_m >= 64 else 16)
    n, k = (d_ff, d) if gated else (d, d_ff)
    elt = str(getattr(tl, dtype))  # Triton's name of the registry's type: fp32, fp16, bf16
    ptr = f"*{elt}"
    constants = _constexprs(cfg, gated=gated, biased=biased, activation=activation,
                            precision="tf32" if dtype == "float32" else "ieee", upcast=False)
    bm, bn, bk = cfg.block_m, cfg.block_n, cfg.block_k
    if cfg.tma:
        kernel_fn = _gemm_tma_kernel
        args: dict[str, object] = dict(
            a_desc=f"tensordesc<{elt}[{bm}, {bk}]>", b1_desc=f"tensordesc<{elt}[{bk}, {bn}]>",
            b2_desc=f"tensordesc<{elt}[{bk}, {bn}]>", bias1_ptr=ptr, bias2_ptr=ptr,
            c_desc=f"tensordesc<{elt}[{bm}, {bn}]>", M=m, N=n, K=k, stride_bias1=1, stride_bias2=1)
    else:
        kernel_fn = _gemm_kernel
        out = ptr if cfg.split_k == 1 else "*fp32"  # split-K programs store float32 partials
        args = dict(
            a_ptr=ptr, b1_ptr=ptr, b2_ptr=ptr, bias1_ptr=ptr, bias2_ptr=ptr, c_ptr=out, M=m, N=n, K=k,
            stride_am=k, stride_ak=1, stride_b1k=n, stride_b1n=1, stride_b2k=n, stride_b2n=1,
            stride_bias1=1, stride_bias2=1, stride_cm=n, stride_cn=1,
            stride_cs=0 if cfg.split_k == 1 else m * n)
        constants["SPLIT_K"] = cfg.split_k
    args.update({name: ("constexpr", value) for name, value in constants.items()})
    if set(args) != set(kernel_fn.arg_names):
        raise KernelError(f"internal: kernel arguments {kernel_fn.arg_names} != {list(args)}")
    # In the kernel's order: the hints are keyed by argument position.
    signature, constexprs, attrs = specialisation({name: args[name] for name in kernel_fn.arg_names})
    source = ASTSource(kernel_fn, signature, constexprs=constexprs, attrs=attrs)
    try:
        kernel = triton.compile(source, target=GPUTarget("cuda", capability, 32),
                                options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages})
    except Exception as e:
        raise KernelError(f"Triton cannot compile {cfg.label()} for cuda:{capability} ({dtype}): {e}") from e
    cubin = kernel.asm["cubin"]
    details = _inspect(cubin) if inspect else _CubinFacts()
    return CompiledKernel(f"cuda:{capability}", cfg.label(), dtype, gated, len(cubin),
                          int(kernel.metadata.shared), cfg.num_warps, kernel.metadata.name,
                          **details)
