"""Kernels: the torch reference of FusedGatedMLP, its Triton kernels, ahead-of-time builds.

The ORT custom-op library (issue 5) will live here too.
"""

from __future__ import annotations

from onnxfuse.kernels.gated_mlp import KernelConfig, fused_gated_mlp, interpreting
from onnxfuse.kernels.reference import activate, fused_gated_mlp_reference

__all__ = ["KernelConfig", "activate", "fused_gated_mlp", "fused_gated_mlp_reference", "interpreting"]
