"""Tile configurations of the gated-MLP kernels: the interpreter's fixed ones and, for GPUs,
a short candidate list per shape class that the autotuner (:mod:`onnxfuse.kernels.triton.tuning`)
times on the device. Imports neither torch nor Triton.

Every GPU candidate is compiled ahead of time for sm_80 and sm_90 by the test suite (with
the specialisation Triton's JIT gives contiguous, aligned tensors) and checked there: no
register spills, ``cp.async`` pipelining, Hopper's ``HGMMA`` (wgmma) on sm_90, shared memory
within the target's limit for the class's first candidate (the default when not tuning).
Candidates that do not fit a GPU (float32 with deep 64-wide K stages) fail to launch there
and the tuner skips them.

The lists are starting points chosen from those static checks and the shapes (d = 4096,
d_ff = 11008: 86 column tiles of 128 for gate/up, 32 for down, on a 132-SM H100); they have
not been timed on a GPU yet (benchmarks/NOTES.md).
"""

from __future__ import annotations

import dataclasses

__all__ = ["CANDIDATES", "DECODE_MAX_TOKENS", "KernelConfig", "default_configs",
           "interpreter_config", "shape_class"]


@dataclasses.dataclass(frozen=True)
class KernelConfig:
    """Tile sizes of one launch.

    The interpreter's cost is per program (~20 ms each, measured on this 2-core CPU): 32-wide
    tiles cut a 111×23×45 problem from 0.85 s (16-wide) to 0.28 s, and odd shapes still
    exercise every mask.
    """

    block_m: int = 16
    block_n: int = 16
    block_k: int = 16
    group_m: int = 4
    num_warps: int = 4
    num_stages: int = 2
    split_k: int = 1
    # Move tiles with the tensor memory accelerator (Hopper and newer; no split K). Launches
    # whose tensors TMA cannot address (unaligned rows) use the pointer kernel instead.
    tma: bool = False

    def label(self) -> str:
        """``128x128x32-g8-w8-s3`` (``-k8`` for a split K, ``-tma`` for TMA tiles)."""
        split = f"-k{self.split_k}" if self.split_k > 1 else ""
        return (f"{self.block_m}x{self.block_n}x{self.block_k}-g{self.group_m}-w{self.num_warps}"
                f"-s{self.num_stages}{split}{'-tma' if self.tma else ''}")


INTERPRETER_CONFIG = KernelConfig(block_m=32, block_n=32, block_k=32)
# Large problems under the interpreter: its cost is per loop iteration and per element loaded
# (loads gather through pointer arrays), so wide N/K tiles and, for a few tokens, 16-row tiles
# cut the notebook MLP at 4 tokens from ~100 s (32-wide) to ~12 s on this CPU.
INTERPRETER_LARGE_DIM = 512


def interpreter_config(m: int, n: int, k: int) -> KernelConfig:
    """Tiles for an ``m×k @ k×n`` launch under the interpreter: 32-wide for small problems
    (tests: several tiles and every mask), 128-wide N/K once a dim reaches 512, 16 rows for at
    most 16 rows."""
    wide = max(n, k) >= INTERPRETER_LARGE_DIM
    return KernelConfig(block_m=16 if m <= 16 and wide else 32, block_n=128 if wide else 32,
                        block_k=128 if wide else 32)


# Decode (at most DECODE_MAX_TOKENS rows): a 128-row tile would be mostly masked and a thin
# grid cannot fill the GPU, so tiles are 16 rows and the down projection (N = d, K = d_ff: few
# output tiles, long K) splits K across programs.
DECODE_MAX_TOKENS = 64
_C = KernelConfig
CANDIDATES: dict[tuple[str, str], tuple[KernelConfig, ...]] = {
    # (class, stage): candidates, the first being the untuned default.
    ("prefill", "gate_up"): (
        _C(128, 128, 32, group_m=8, num_warps=8, num_stages=3),  # bf16: 72 KiB, 185 registers
        _C(128, 128, 32, group_m=8, num_warps=8, num_stages=4),
        _C(128, 128, 64, group_m=8, num_warps=8, num_stages=3),  # bf16: 144 KiB
        _C(128, 64, 64, group_m=8, num_warps=8, num_stages=4),
        _C(64, 128, 64, group_m=8, num_warps=4, num_stages=3),
        _C(128, 64, 32, group_m=8, num_warps=4, num_stages=4),
        _C(128, 128, 64, group_m=8, num_warps=8, num_stages=3, tma=True),
        _C(128, 128, 32, group_m=8, num_warps=8, num_stages=4, tma=True),
    ),
    ("prefill", "down"): (
        _C(128, 128, 32, group_m=8, num_warps=8, num_stages=3),
        _C(128, 128, 64, group_m=8, num_warps=8, num_stages=3),
        _C(128, 256, 64, group_m=8, num_warps=8, num_stages=3),
        _C(64, 128, 64, group_m=8, num_warps=4, num_stages=4),
        _C(128, 64, 64, group_m=8, num_warps=4, num_stages=4),
        _C(128, 128, 64, group_m=8, num_warps=8, num_stages=4, tma=True),
        _C(128, 256, 64, group_m=8, num_warps=8, num_stages=3, tma=True),
    ),
    ("decode", "gate_up"): (
        _C(16, 64, 64, group_m=1, num_warps=4, num_stages=4),
        _C(16, 32, 128, group_m=1, num_warps=4, num_stages=4),
        _C(16, 128, 64, group_m=1, num_warps=4, num_stages=4),
        _C(16, 64, 128, group_m=1, num_warps=4, num_stages=3),
    ),
    ("decode", "down"): (
        _C(16, 64, 64, group_m=1, num_warps=4, num_stages=4, split_k=8),
        _C(16, 64, 128, group_m=1, num_warps=8, num_stages=4, split_k=4),  # 4 warps spill on sm_90
        _C(16, 32, 128, group_m=1, num_warps=4, num_stages=4, split_k=8),
        _C(16, 128, 64, group_m=1, num_warps=4, num_stages=4, split_k=8),
        _C(16, 64, 64, group_m=1, num_warps=4, num_stages=4, split_k=1),
    ),
}
del _C


def shape_class(tokens: int) -> str:
    """``decode`` for at most :data:`DECODE_MAX_TOKENS` rows, else ``prefill``."""
    return "decode" if tokens <= DECODE_MAX_TOKENS else "prefill"


def default_configs(tokens: int) -> tuple[KernelConfig, KernelConfig]:
    """(gate/up, down) configs for ``tokens`` rows on a GPU without tuning: each class's first."""
    cls = shape_class(tokens)
    return CANDIDATES[cls, "gate_up"][0], CANDIDATES[cls, "down"][0]
